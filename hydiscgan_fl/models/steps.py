"""Sequence inputs of step-reading MSA models, and how they are laid out as masked sequences.

A modality reaches a step-reading model (its registry entry ``reads_steps``) as :class:`StepTensors`, the
(N, T, D) steps of each utterance with valid lengths, or as (N, D) vectors (utterance-level data, or G's
fake audio/visual: G generates one pooled vector per utterance). :func:`lay_out` turns the inputs into
masked sequences in one of two ways:

- **per utterance** (any input has steps, or no video layout): each utterance is a sequence; a vector is a
  sequence of one step. One output per utterance, read from summaries over its valid steps.
- **per video** (all inputs are vectors and a :class:`VideoLayout` is given, e.g. bundled MOSI): the
  utterances of a video are the steps; one output per utterance, read at its step.

Padding is zeroed and masked everywhere, so it never changes an output. A row of length 0 is one zero step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hydiscgan_fl.models.video_layout import VideoLayout


@dataclass(frozen=True)
class StepTensors:
    """(N, T, D) steps (zeros in padding) and valid lengths (N,) of one modality."""

    values: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        if self.values.dim() != 3 or self.lengths.shape != self.values.shape[:1]:
            raise ValueError(f"steps must be (N, T, D) with lengths (N,), got {tuple(self.values.shape)} and "
                             f"{tuple(self.lengths.shape)}")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        return int(self.values.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.values.device

    def rows(self, index: torch.Tensor) -> StepTensors:
        return StepTensors(self.values[index], self.lengths[index])

    __getitem__ = rows  # index like a tensor of rows


Input = torch.Tensor | StepTensors


def input_dim(value: Input) -> int:
    """Feature width of vectors (N, D) or steps."""
    return value.dim if isinstance(value, StepTensors) else int(value.shape[1])


@dataclass(frozen=True)
class Sequence:
    """A modality laid out as (B, T, D) steps, zero in padding, and its (B, T) mask of valid steps."""

    steps: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class Laid:
    """The inputs as masked sequences; `video` is the layout when the sequences are videos (per-video mode)."""

    sequences: dict[str, Sequence]
    video: VideoLayout | None

    def summary(self, steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One (N, D) row per utterance from (B, T, D) per-step features: the masked mean over a sequence
        per utterance, or the utterance's own step per video."""
        if self.video is not None:
            return self.video.unpad(steps)
        return masked_mean(steps, mask)


def masked_mean(steps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(steps.dtype).unsqueeze(-1)
    return (steps * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _as_sequence(value: Input, name: str) -> Sequence:
    if isinstance(value, StepTensors):
        steps, lengths = value.values, value.lengths.to(value.values.device)
        if steps.shape[1] == 0:
            steps = steps.new_zeros(steps.shape[0], 1, steps.shape[2])
        positions = torch.arange(steps.shape[1], device=steps.device)[None, :]
        valid = positions < lengths[:, None]
        # a row of length 0 is one zero step (attention needs a valid key; its padding is zeroed first)
        return Sequence(steps * valid.unsqueeze(-1).to(steps.dtype), positions < lengths.clamp_min(1)[:, None])
    if value.dim() != 2:
        raise ValueError(f"{name}: expected (N, D) vectors or StepTensors, got shape {tuple(value.shape)}")
    return Sequence(value.unsqueeze(1), torch.ones(value.shape[0], 1, dtype=torch.bool, device=value.device))


def lay_out(inputs: dict[str, Input], layout: VideoLayout | None) -> Laid:
    """The inputs as masked sequences, per video or per utterance (see the module docstring)."""
    rows = {len(value) for value in inputs.values()}
    if len(rows) != 1:
        raise ValueError(f"inputs have different numbers of rows: { {k: len(v) for k, v in inputs.items()} }")
    if layout is not None and not any(isinstance(value, StepTensors) for value in inputs.values()):
        return Laid({name: Sequence(layout.pad(value), layout.mask) for name, value in inputs.items()}, layout)
    return Laid({name: _as_sequence(value, name) for name, value in inputs.items()}, None)


def sinusoidal_positions(steps: int, width: int, device: torch.device) -> torch.Tensor:
    """(steps, width) sinusoidal position encodings (Vaswani et al.)."""
    position = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    encoding = torch.zeros(steps, width, device=device)
    encoding[:, 0::2] = torch.sin(position * rate)
    encoding[:, 1::2] = torch.cos(position * rate)[:, : width // 2]
    return encoding
