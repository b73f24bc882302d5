"""What the searches are judged by besides M: a finished run's G and M, the texts, realism (a client's
discriminators, nearest real neighbour) and a second, independently trained M."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import MultimodalDataset
from hydiscgan_fl.metrics import ValidationSelection, summary_metrics
from hydiscgan_fl.models import ClientDiscriminators, build_shared_models, needs_context
from hydiscgan_fl.models.registry import msa_family
from hydiscgan_fl.training import predict_multimodal, to_tensors, train_multimodal
from hydiscgan_fl.training.data import UtteranceTensors


@dataclass(frozen=True)
class FinishedRun:
    """A run directory's checkpoint (the validation-selected round's G and M) and the server's text view."""

    run_dir: Path
    cfg: HyDiscGANConfig
    dims: dict[str, int]
    generator: torch.nn.Module
    msa: torch.nn.Module
    text_view: MultimodalDataset  # text and labels only (the server's view)

    @property
    def label_kind(self) -> str:
        return self.text_view.label_kind

    @classmethod
    def load(cls, run_dir: Path) -> FinishedRun:
        path = Path(run_dir) / "checkpoint.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no checkpoint.pt, is {run_dir} a finished run directory?")
        checkpoint = torch.load(path, weights_only=True)
        missing = {"generator", "msa", "dims", "config"} - set(checkpoint)
        if missing:
            raise ValueError(f"{path}: keys {sorted(missing)} missing")
        cfg = HyDiscGANConfig.from_run_config(checkpoint["config"])
        if cfg.method != "hydiscgan":
            raise ConfigError(f"{path}: method {cfg.method!r} has no generator to search")
        if needs_context(cfg):
            raise ConfigError(f"{path}: msa-model {cfg.msa_model!r} reads whole videos; evolve searches one "
                              "utterance at a time and needs a per-utterance M (msa-model mlp)")
        shared = build_shared_models(checkpoint["dims"], cfg, cfg.seed)
        shared.generator.load_state_dict(checkpoint["generator"])
        shared.msa.load_state_dict(checkpoint["msa"])
        return cls(Path(run_dir), cfg, dict(checkpoint["dims"]), shared.generator.eval(), shared.msa.eval(),
                   cfg.load_dataset(text_only=True))

    def text_rows(self, split: str, count: int) -> np.ndarray:
        """`count` utterances of `split` spread evenly over it (all when count is 0 or larger), by index:
        the same texts for every search seed and method."""
        size = len(self.text_view.split_subset(split).text)
        if size == 0:
            raise ValueError(f"split {split!r} of {self.cfg.dataset} is empty")
        if count <= 0 or count >= size:
            return np.arange(size)
        return np.unique(np.linspace(0, size - 1, count).round().astype(int))

    def texts(self, split: str, rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        part = self.text_view.split_subset(split)
        return torch.tensor(part.text[rows], dtype=torch.float32), np.asarray(part.labels[rows])


class RealismJudge:
    """How real G(t, z) looks, two ways.

    - nearest-real-neighbour distance: the root-mean-square distance per feature from the fake audio‖visual
      to the closest real (per-speaker standardised) audio‖visual of a reference split. This reads real
      private features: an evaluation-only privilege no HyDiscGAN server has.
    - discriminator score: mean of sigmoid(D_a) and sigmoid(D_v), the probability a client's own
      discriminators (E and D saved in its client-state) give to "real". Also evaluation-only: D never
      leaves its client."""

    def __init__(self, reference: UtteranceTensors | None, discriminators: ClientDiscriminators | None):
        self.reference = None if reference is None else torch.cat([reference.audio, reference.visual], dim=1)
        self.discriminators = None if discriminators is None else discriminators.eval()

    @torch.no_grad()
    def nearest_real_distance(self, audio: torch.Tensor, visual: torch.Tensor) -> np.ndarray | None:
        if self.reference is None:
            return None
        fake = torch.cat([audio, visual], dim=1)
        return (torch.cdist(fake, self.reference).min(dim=1).values / fake.shape[1] ** 0.5).cpu().numpy()

    @torch.no_grad()
    def discriminator_real_probability(self, text: torch.Tensor, audio: torch.Tensor,
                                       visual: torch.Tensor) -> np.ndarray | None:
        if self.discriminators is None:
            return None
        logit_audio, logit_visual = self.discriminators.logits(audio, visual, text)
        return (0.5 * (torch.sigmoid(logit_audio) + torch.sigmoid(logit_visual))).cpu().numpy()


def real_reference(run: FinishedRun, split: str) -> UtteranceTensors:
    """Real per-speaker standardised features of `split` (evaluation-only: reads private audio/visual)."""
    return to_tensors(run.cfg.load_dataset().split_subset(split), torch.device("cpu"))


@torch.no_grad()
def _fakes(generator: torch.nn.Module, text: torch.Tensor, labels: torch.Tensor, seed: int | None) -> UtteranceTensors:
    """(t, G(t, z), y) with z ~ N(0, I) drawn once from `seed`; z = 0 (inference) when seed is None."""
    generator.eval()
    noise = (None if seed is None else
             torch.randn(text.shape[0], generator.noise_dim, generator=torch.Generator().manual_seed(seed)))
    audio, visual = generator(text, noise)
    return UtteranceTensors(text, audio, visual, labels)


def _cat(first: UtteranceTensors, second: UtteranceTensors) -> UtteranceTensors:
    return UtteranceTensors(*(torch.cat([getattr(first, name), getattr(second, name)])
                              for name in ("text", "audio", "visual", "labels")))


@dataclass(frozen=True)
class TrainedMSA:
    """An M trained centrally on fakes, its selected epoch and its validation and test metrics there."""

    msa: torch.nn.Module
    selected_epoch: int
    valid: dict[str, float]
    test: dict[str, float]


def train_msa_on_fakes(run: FinishedRun, seed: int, extra: UtteranceTensors | None = None) -> TrainedMSA:
    """A fresh M of the run's family (initialised from `seed`), trained centrally, stage-2 style, on what
    the server holds: the training text and labels with the run's G's fakes G(t, z), z ~ N(0, I) drawn
    once from `seed`, plus `extra` rows if given; rounds-msa x local-epochs epochs, the epoch selected on
    the validation speakers with G(t, 0) as at inference (test metrics at that epoch, never used to
    choose)."""
    as_tensor = lambda a: torch.tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    split = {name: run.text_view.split_subset(name) for name in ("train", "valid", "test")}
    train_data = _fakes(run.generator, as_tensor(split["train"].text), as_tensor(split["train"].labels), seed)
    if extra is not None:
        train_data = _cat(train_data, extra)
    evaluation = {name: _fakes(run.generator, as_tensor(split[name].text), as_tensor(split[name].labels), None)
                  for name in ("valid", "test")}
    torch.manual_seed(seed)
    msa = msa_family(run.cfg).build(run.dims, run.cfg)
    selection = ValidationSelection(run.label_kind)
    best: dict[str, torch.Tensor] = {}

    def metrics(model: torch.nn.Module, name: str) -> dict[str, float]:
        preds = predict_multimodal(model, evaluation[name], run.label_kind)
        return summary_metrics(preds, split[name].labels, run.label_kind)

    def on_epoch(epoch: int, model: torch.nn.Module) -> None:
        if selection.offer(epoch, metrics(model, "valid"), metrics(model, "test")):
            best.update({key: value.detach().clone() for key, value in model.state_dict().items()})

    train_multimodal(msa, train_data, run.cfg, run.cfg.rounds_msa * run.cfg.local_epochs, seed, run.label_kind,
                     on_epoch=on_epoch)
    if best:
        msa.load_state_dict(best)
    return TrainedMSA(msa.eval(), int(selection.step or 0), dict(selection.valid), dict(selection.test))
