"""Adversarial identity unlearning: a gradient-reversal layer and a client-private speaker adversary.

After Jaiswal & Mower Provost (AAAI 2020): an adversary predicts a sensitive attribute (here the
speaker) from a representation (here G(t, z)'s fake audio and visual features) through a
gradient-reversal layer (GRL) of strength lambda. The adversary minimises its cross-entropy as usual;
the GRL hands the generator minus lambda times that gradient, so G learns to make its fakes carry less
speaker identity. The adversary predicts the client's own speakers, lives in the client's
``context.state`` and is never sent.
"""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, strength: float) -> torch.Tensor:  # noqa: ANN001 - autograd ctx
        ctx.strength = strength
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.strength * grad_output, None


def reverse_gradient(inputs: torch.Tensor, strength: float) -> torch.Tensor:
    """Identity forward; backward multiplies the incoming gradient by -strength."""
    return _ReverseGradient.apply(inputs, strength)


class GradientReversal(nn.Module):
    """The GRL as a layer (no parameters)."""

    def __init__(self, strength: float):
        super().__init__()
        self.strength = float(strength)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(inputs, self.strength)

    def extra_repr(self) -> str:
        return f"strength={self.strength}"


class SpeakerAdversary(nn.Module):
    """Predicts the client's local speaker id from [fake audio; fake visual], behind a GRL."""

    def __init__(self, feature_dim: int, num_speakers: int, hidden: int, strength: float):
        super().__init__()
        if num_speakers < 2:
            raise ValueError(f"a speaker adversary needs at least 2 speakers, got {num_speakers}")
        self.reverse = GradientReversal(strength)
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Linear(hidden, num_speakers))

    def forward(self, fake_audio: torch.Tensor, fake_visual: torch.Tensor) -> torch.Tensor:
        """Speaker logits; gradients reaching the fakes are reversed and scaled by the GRL."""
        return self.net(self.reverse(torch.cat([fake_audio, fake_visual], dim=1)))


def build_speaker_adversary(dims: dict[str, int], num_speakers: int, cfg: HyDiscGANConfig,
                            seed: int) -> SpeakerAdversary:
    torch.manual_seed(seed)
    return SpeakerAdversary(dims["audio"] + dims["visual"], num_speakers, cfg.hidden_dim, cfg.adv_lambda)
