"""Tensors for training: per-speaker standardised audio/visual, minibatch order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hydiscgan_fl.data import MultimodalDataset, standardize_per_speaker


def pick_device() -> torch.device:
    """CUDA when present (Ray gives each client its GPU fraction), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class UtteranceTensors:
    text: torch.Tensor
    audio: torch.Tensor
    visual: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.text.shape[0]

    def rows(self, index: torch.Tensor) -> UtteranceTensors:
        return UtteranceTensors(self.text[index], self.audio[index], self.visual[index], self.labels[index])


def to_tensors(dataset: MultimodalDataset, device: torch.device) -> UtteranceTensors:
    """Audio/visual are standardised per speaker on the device that holds them (no shared statistics)."""
    audio = standardize_per_speaker(dataset.audio, dataset.speakers) if dataset.audio.shape[1] else dataset.audio
    visual = standardize_per_speaker(dataset.visual, dataset.speakers) if dataset.visual.shape[1] else dataset.visual
    as_tensor = lambda a: torch.tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
    return UtteranceTensors(as_tensor(dataset.text), as_tensor(audio), as_tensor(visual), as_tensor(dataset.labels))


def minibatches(num_rows: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches; a trailing batch of one row is merged into the previous one
    because the contrastive loss needs at least two utterances."""
    order = torch.randperm(num_rows, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches
