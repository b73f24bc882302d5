"""EvoGAN's fitness for HyDiscGAN: how closely M's predicted sentiment distribution for (t, G(t, z))
matches a target distribution.

fitness = 1 - 1/2 * sum_c |p_c - target_c|, one minus the total-variation distance (1 is a perfect match).

M's predicted distribution p:
- binary labels: M outputs a logit; p = (1 - sigmoid, sigmoid), i.e. (negative, positive);
- continuous labels: M outputs a score; p spreads it over the 7 Acc-7 bins -3..3 (the score clipped to
  [-3, 3]) by linear interpolation between the two nearest bins (1.3 -> 0.7 on bin 1, 0.3 on bin 2), so
  its arg-max is the Acc-7 bin (rounding) and the fitness varies smoothly with the score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ACC7_BINS = np.arange(-3, 4, dtype=np.float64)


SHIFT_PREFIX = "shift:"


def parse_target(text: str, label_kind: str) -> np.ndarray:
    """A target distribution from the command line: binary labels: 'p_negative,p_positive' (e.g. 0.7,0.3);
    continuous labels: 7 comma-separated bin weights for -3..3, or one target score (its bin mix).
    (A relative target 'shift:DELTA' is resolved per text by `TextConditionedJudge.shifted_target`.)"""
    try:
        values = np.array([float(part) for part in text.split(",")], dtype=np.float64)
    except ValueError:
        raise ValueError(f"--target {text!r}: comma-separated numbers expected") from None
    if label_kind == "regression" and values.size == 1:
        return score_distribution(values)[0]
    expected = 2 if label_kind == "binary" else 7
    if values.size != expected or (values < 0).any() or abs(values.sum() - 1.0) > 1e-6:
        kind = ("2 probabilities (negative, positive)" if label_kind == "binary"
                else "7 bin weights for -3..3 or one score")
        raise ValueError(f"--target {text!r}: {label_kind} labels need {kind}, non-negative and summing to 1")
    return values


def score_distribution(scores: np.ndarray) -> np.ndarray:
    """Scores [...] -> distributions [..., 7] over the Acc-7 bins by linear interpolation (module docstring)."""
    clipped = np.clip(np.asarray(scores, dtype=np.float64), -3.0, 3.0)[..., None]
    return np.clip(1.0 - np.abs(clipped - ACC7_BINS), 0.0, 1.0)


def output_distribution(outputs: np.ndarray, label_kind: str) -> np.ndarray:
    """M's raw outputs [...] -> predicted distributions [..., C] (module docstring)."""
    if label_kind == "binary":
        positive = 1.0 / (1.0 + np.exp(-np.asarray(outputs, dtype=np.float64)))
        return np.stack([1.0 - positive, positive], axis=-1)
    return score_distribution(outputs)


def match_fitness(distribution: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1 - total-variation distance between predicted distributions [..., C] and the target ([C], or
    per text [T, 1, C] against [T, B, C])."""
    return 1.0 - 0.5 * np.abs(distribution - target).sum(axis=-1)


class TextConditionedJudge:
    """Genomes z -> G(t, z) -> M(t, G(t, z)) for a fixed set of texts, one problem per text.

    `generator(text, noise)` returns (fake audio, fake visual); `msa(text, audio, visual)` one output per
    row. Both are put in eval mode (no dropout) and used without gradients."""

    def __init__(self, generator: nn.Module, msa: nn.Module, text: torch.Tensor, label_kind: str):
        self.generator, self.msa = generator.eval(), msa.eval()
        self.text, self.label_kind = text, label_kind

    @torch.no_grad()
    def features(self, genomes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(text, fake audio, fake visual) with one row per genome, genomes [T, B, D] flattened."""
        problems, batch, _ = genomes.shape
        if problems != self.text.shape[0]:
            raise ValueError(f"{problems} problems for {self.text.shape[0]} texts")
        text = self.text.repeat_interleave(batch, dim=0)
        noise = torch.as_tensor(genomes.reshape(problems * batch, -1), dtype=text.dtype, device=text.device)
        audio, visual = self.generator(text, noise)
        return text, audio, visual

    @torch.no_grad()
    def outputs(self, genomes: np.ndarray, msa: nn.Module | None = None) -> np.ndarray:
        """M's raw outputs [T, B] (logits or scores; another M, e.g. the second judge, with `msa`)."""
        text, audio, visual = self.features(genomes)
        return (msa or self.msa).eval()(text, audio, visual).cpu().numpy().reshape(genomes.shape[:2])

    def distribution(self, genomes: np.ndarray, msa: nn.Module | None = None) -> np.ndarray:
        """M's predicted distributions [T, B, C]."""
        return output_distribution(self.outputs(genomes, msa), self.label_kind)

    def shifted_target(self, delta: float) -> np.ndarray:
        """Per-text targets [T, 1, C]: the distribution of M's output at z = 0 moved by `delta` (logit or
        score units), a counterfactual nudge ("this text read 0.5 more negative")."""
        zero = np.zeros((self.text.shape[0], 1, self.generator.noise_dim))
        return output_distribution(self.outputs(zero) + delta, self.label_kind)

    def fitness(self, target: np.ndarray, msa: nn.Module | None = None):
        """The fitness function genomes [T, B, D] -> [T, B] for `target` (under `msa` if given)."""
        return lambda genomes: match_fitness(self.distribution(genomes, msa), target)
