"""Tensors for training: per-speaker standardised audio/visual, sequences pooled by the model (and kept as
steps for models that read them), optional simulated misalignment, minibatch order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import MultimodalDataset, standardize_per_speaker
from hydiscgan_fl.data.misalign import Misalignment
from hydiscgan_fl.data.sequences import masked_mean
from hydiscgan_fl.models.registry import msa_family
from hydiscgan_fl.models.steps import Input, StepTensors

# (N, T, D) sequences and their valid lengths (N,) -> (N, D) utterance vectors: an MSA family's pooling.
Pool = Callable[[np.ndarray, np.ndarray], np.ndarray]
MODALITIES = ("text", "audio", "visual")


@dataclass(frozen=True)
class TensorView:
    """How a run turns a dataset into tensors: the MSA family's pooling, whether M also reads the steps of
    sequence modalities (its `reads_steps`), and the simulated misalignment of audio/visual (or None)."""

    pool: Pool = masked_mean
    keep_steps: bool = False
    misalignment: Misalignment | None = None


def tensor_view(cfg: HyDiscGANConfig) -> TensorView:
    family = msa_family(cfg)
    misalignment = Misalignment(cfg.misalign_rate, cfg.misalign_shift, cfg.seed)
    return TensorView(family.pool, family.reads_steps, misalignment if misalignment.active else None)


def pick_device() -> torch.device:
    """CUDA when present (Ray gives each client its GPU fraction), else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class UtteranceTensors:
    """Utterance vectors of every modality (what G, E, D and utterance-level models read), labels, and for
    step-reading models the steps of the sequence modalities (`steps`, by modality name)."""

    text: torch.Tensor
    audio: torch.Tensor
    visual: torch.Tensor
    labels: torch.Tensor
    steps: dict[str, StepTensors] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.text.shape[0]

    def rows(self, index: torch.Tensor) -> UtteranceTensors:
        return UtteranceTensors(self.text[index], self.audio[index], self.visual[index], self.labels[index],
                                {name: steps.rows(index) for name, steps in self.steps.items()})

    def msa_input(self, name: str) -> Input:
        """What M reads of modality `name`: its steps when kept, else its utterance vectors."""
        return self.steps.get(name, getattr(self, name))

    def msa_inputs(self) -> tuple[Input, Input, Input]:
        return self.msa_input("text"), self.msa_input("audio"), self.msa_input("visual")


def modality_steps(dataset: MultimodalDataset, name: str,
                   view: TensorView = TensorView()) -> tuple[np.ndarray, np.ndarray | None]:
    """Modality `name` before pooling, and its lengths (None for vectors): audio/visual standardised per
    speaker on the device that holds them (no shared statistics; over valid steps), then misaligned."""
    values, lengths = getattr(dataset, name), dataset.lengths.get(name)
    if name == "text" or not values.shape[-1]:
        return values, lengths
    values = standardize_per_speaker(values, dataset.speakers, lengths=lengths)
    if view.misalignment is not None:
        if lengths is None:
            values = view.misalignment.vectors(values, dataset.videos, dataset.positions, name)
        else:
            values, lengths = view.misalignment.sequences(values, lengths, dataset.ids, name)
    return values, lengths


def modality_tensors(dataset: MultimodalDataset, name: str, device: torch.device,
                     view: TensorView = TensorView()) -> tuple[torch.Tensor, StepTensors | None]:
    """Modality `name` on `device` (see `modality_steps`): one vector per utterance (sequences pooled by
    `view.pool`), and its steps when it is a sequence modality and `view.keep_steps` (else None)."""
    values, lengths = modality_steps(dataset, name, view)
    vectors = _as_tensor(values if lengths is None else view.pool(values, lengths), device)
    if not view.keep_steps or lengths is None:
        return vectors, None
    return vectors, StepTensors(_as_tensor(values, device), torch.tensor(np.asarray(lengths), dtype=torch.long, device=device))


def to_tensors(dataset: MultimodalDataset, device: torch.device, view: TensorView = TensorView()) -> UtteranceTensors:
    """Every modality (`modality_tensors`; `view` is the run's `tensor_view(cfg)`) and the labels, on `device`."""
    tensors = {name: modality_tensors(dataset, name, device, view) for name in MODALITIES}
    steps = {name: kept for name, (_, kept) in tensors.items() if kept is not None}
    return UtteranceTensors(*(tensors[name][0] for name in MODALITIES), _as_tensor(dataset.labels, device), steps)


def _as_tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float32), device=device)


def minibatches(num_rows: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A shuffled epoch of index batches; a trailing batch of one row is merged into the previous one
    because the contrastive loss needs at least two utterances."""
    order = torch.randperm(num_rows, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches
