"""Tensors for training: per-speaker standardised audio/visual, sequences pooled by the model (and kept as
steps for models that read them), optional simulated misalignment and missing modalities (with their
presence mask), minibatch order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import MultimodalDataset, standardize_per_speaker
from hydiscgan_fl.data.misalign import Misalignment
from hydiscgan_fl.data.missing import MODALITIES, Missingness
from hydiscgan_fl.data.sequences import masked_mean
from hydiscgan_fl.models.registry import msa_family, presence_input
from hydiscgan_fl.models.steps import Input, StepTensors

# (N, T, D) sequences and their valid lengths (N,) -> (N, D) utterance vectors: an MSA family's pooling.
Pool = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TensorView:
    """How a run turns a dataset into tensors: the MSA family's pooling, whether M also reads the steps of
    sequence modalities (its `reads_steps`), the simulated misalignment of audio/visual (or None), and the
    simulated missing modalities (or None) as seen by the client with seeding key `client_key` (None: not a
    client, e.g. the server's validation and test data, which no client-level draw touches)."""

    pool: Pool = masked_mean
    keep_steps: bool = False
    misalignment: Misalignment | None = None
    missingness: Missingness | None = None
    client_key: int | None = None


def tensor_view(cfg: HyDiscGANConfig, client_key: int | None = None) -> TensorView:
    """The run's view; `client_key` for a client's own training data. With simulated missing modalities the
    fedavg-multimodal baseline, whose M reads the real audio/visual, needs a family that reads presence masks
    (refused here, at the start of a run; `registry.presence_input` guards every other path)."""
    family = msa_family(cfg)
    misalignment = Misalignment(cfg.misalign_rate, cfg.misalign_shift, cfg.seed)
    missingness = Missingness(cfg.missing_rate, cfg.missing_modality_rate, cfg.missing_client_audio,
                              cfg.missing_client_visual, cfg.seed)
    if missingness.active and cfg.method == "fedavg-multimodal" and not family.reads_presence:
        raise ValueError(f"msa-model {cfg.msa_model!r} reads no presence masks, so it would take the zeros of a "
                         "missing modality for data: method 'fedavg-multimodal' with simulated missing modalities "
                         "(missing-*) needs a family that reads them, e.g. 'fsrf'")
    return TensorView(family.pool, family.reads_steps, misalignment if misalignment.active else None,
                      missingness if missingness.active else None, client_key)


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
    # (N, 3) bool: whether each utterance holds its text, audio, visual (data.missing); None: all of them.
    # A missing modality's values are zeros and must be ignored by whatever reads this mask.
    present: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.text.shape[0]

    def rows(self, index: torch.Tensor) -> UtteranceTensors:
        return UtteranceTensors(self.text[index], self.audio[index], self.visual[index], self.labels[index],
                                {name: steps.rows(index) for name, steps in self.steps.items()},
                                None if self.present is None else self.present[index])

    def msa_input(self, name: str) -> Input:
        """What M reads of modality `name`: its steps when kept, else its utterance vectors."""
        return self.steps.get(name, getattr(self, name))

    def msa_inputs(self) -> tuple[Input, Input, Input]:
        return self.msa_input("text"), self.msa_input("audio"), self.msa_input("visual")

    def holds(self, name: str) -> torch.Tensor:
        """(N,) bool: which utterances hold modality `name` (needs `present`)."""
        return self.present[:, MODALITIES.index(name)]

    def only(self, names: Iterable[str]) -> UtteranceTensors:
        """These utterances as if only the modalities `names` were present (a test-time modality subset): the
        others are marked missing in the presence mask and their audio/visual values zeroed, with no valid
        step. Text stays in the tensors like any missing text (data.missing): what reads text alone keeps it."""
        kept = set(names)
        if unknown := kept - set(MODALITIES):
            raise ValueError(f"unknown modalities {sorted(unknown)}; choose from {list(MODALITIES)}")
        dropped = {name for name in MODALITIES[1:] if name not in kept}
        device = self.text.device
        present = torch.ones(len(self), len(MODALITIES), dtype=torch.bool, device=device) if self.present is None \
            else self.present
        present = present & torch.tensor([name in kept for name in MODALITIES], device=device)
        steps = {name: StepTensors(torch.zeros_like(s.values), torch.zeros_like(s.lengths)) if name in dropped else s
                 for name, s in self.steps.items()}
        vectors = [torch.zeros_like(getattr(self, name)) if name in dropped else getattr(self, name)
                   for name in MODALITIES]
        return UtteranceTensors(*vectors, self.labels, steps, present)

    def read_by(self, msa: torch.nn.Module, layout=None) -> torch.Tensor:  # noqa: ANN001 - a VideoLayout
        """M(t, a, v) on these real modalities, with the presence mask when some modality is missing."""
        return msa(*self.msa_inputs(), layout, **presence_input(msa, self.present))


def modality_steps(dataset: MultimodalDataset, name: str,
                   view: TensorView = TensorView()) -> tuple[np.ndarray, np.ndarray | None]:
    """Modality `name` before pooling, and its lengths (None for vectors): audio/visual standardised per
    speaker on the device that holds them (no shared statistics; over valid steps), then misaligned, then
    their missing steps removed (sequences; whole missing modalities are `presence`'s)."""
    values, lengths = getattr(dataset, name), dataset.lengths.get(name)
    if name == "text" or not values.shape[-1]:
        return values, lengths
    values = standardize_per_speaker(values, dataset.speakers, lengths=lengths)
    if view.misalignment is not None:
        if lengths is None:
            values = view.misalignment.vectors(values, dataset.videos, dataset.positions, name)
        else:
            values, lengths = view.misalignment.sequences(values, lengths, dataset.ids, name)
    if view.missingness is not None and view.missingness.rate and lengths is not None:
        values, lengths = view.missingness.drop_steps(values, lengths, dataset.ids, name)
    return values, lengths


def modality_tensors(dataset: MultimodalDataset, name: str, device: torch.device,
                     view: TensorView = TensorView(), present: np.ndarray | None = None,
                     ) -> tuple[torch.Tensor, StepTensors | None]:
    """Modality `name` on `device` (see `modality_steps`): one vector per utterance (sequences pooled by
    `view.pool`), and its steps when it is a sequence modality and `view.keep_steps` (else None). Rows whose
    `present` (N,) is False hold zeros and no valid step."""
    values, lengths = modality_steps(dataset, name, view)
    return _tensors(values, lengths, view, device, present)


def _tensors(values: np.ndarray, lengths: np.ndarray | None, view: TensorView, device: torch.device,
             present: np.ndarray | None) -> tuple[torch.Tensor, StepTensors | None]:
    if present is not None and not present.all():
        values = np.where(present.reshape(-1, *([1] * (values.ndim - 1))), values, 0.0).astype(np.float32)
        lengths = None if lengths is None else np.where(present, lengths, 0)
    vectors = _as_tensor(values if lengths is None else view.pool(values, lengths), device)
    if not view.keep_steps or lengths is None:
        return vectors, None
    return vectors, StepTensors(_as_tensor(values, device), torch.tensor(np.asarray(lengths), dtype=torch.long, device=device))


def to_tensors(dataset: MultimodalDataset, device: torch.device, view: TensorView = TensorView()) -> UtteranceTensors:
    """Every modality (`modality_tensors`; `view` is the run's `tensor_view(cfg)`), the labels and, with
    simulated missing modalities, the presence mask, on `device`."""
    raw = {name: modality_steps(dataset, name, view) for name in MODALITIES}
    present = None
    if view.missingness is not None:
        present = view.missingness.presence(dataset.ids, {name: lengths for name, (_, lengths) in raw.items()},
                                            view.client_key)
    # The text is kept even where the mask says missing: it is shareable, and what reads text alone keeps it
    # (data.missing); models that read the mask ignore it there.
    tensors = {name: _tensors(values, lengths, view, device,
                              None if present is None or name == "text" else present[:, column])
               for column, (name, (values, lengths)) in enumerate(raw.items())}
    steps = {name: kept for name, (_, kept) in tensors.items() if kept is not None}
    return UtteranceTensors(*(tensors[name][0] for name in MODALITIES), _as_tensor(dataset.labels, device), steps,
                            None if present is None else torch.as_tensor(present, device=device))


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
