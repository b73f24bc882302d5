"""Tensors for training: per-speaker standardised audio/visual, sequences pooled by the model, minibatch order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hydiscgan_fl.data import MultimodalDataset, standardize_per_speaker
from hydiscgan_fl.data.sequences import masked_mean

# (N, T, D) sequences and their valid lengths (N,) -> (N, D) utterance vectors: an MSA family's pooling.
Pool = Callable[[np.ndarray, np.ndarray], np.ndarray]


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


def utterance_vectors(dataset: MultimodalDataset, name: str, pool: Pool = masked_mean) -> np.ndarray:
    """One vector per utterance of modality `name`: audio/visual standardised per speaker on the device that
    holds them (no shared statistics; over the valid steps of sequences), then sequences pooled by `pool`."""
    values, lengths = getattr(dataset, name), dataset.lengths.get(name)
    if name != "text" and values.shape[-1]:
        values = standardize_per_speaker(values, dataset.speakers, lengths=lengths)
    return values if lengths is None else pool(values, lengths)


def to_tensors(dataset: MultimodalDataset, device: torch.device, pool: Pool = masked_mean) -> UtteranceTensors:
    """Utterance vectors of every modality (see `utterance_vectors`; `pool` is the MSA family's pooling,
    registry.msa_family(cfg).pool) and the labels, on `device`."""
    as_tensor = lambda a: torch.tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
    vectors = (as_tensor(utterance_vectors(dataset, name, pool)) for name in ("text", "audio", "visual"))
    return UtteranceTensors(*vectors, as_tensor(dataset.labels))


def minibatches(num_rows: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches; a trailing batch of one row is merged into the previous one
    because the contrastive loss needs at least two utterances."""
    order = torch.randperm(num_rows, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches
