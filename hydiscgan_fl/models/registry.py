"""Model registries: the generator G and the MSA model M are chosen by name in the run config.

``generator-model`` and ``msa-model`` name an entry of :data:`GENERATORS` / :data:`MSA_MODELS`, or
a user's entry as ``package.module:NAME`` (like aggregation rules), NAME being a :class:`GeneratorEntry` /
:class:`MSAFamily` instance. Interfaces the training code relies on:

- G: ``G(text, noise=None) -> (fake_audio, fake_visual)``, per utterance, with ``noise_dim`` and
  ``sample_noise(batch, generator)`` (see :class:`ConditionalGenerator`);
- M: ``M(text, audio, visual, layout=None) -> (N,)`` outputs, one per row; the text-only member of its
  family ``B(text, layout=None) -> (N,)``. ``layout`` (a :class:`VideoLayout`) is given exactly when the
  family ``needs_context``: its rows are then whole videos.
- Sequence data (a modality stored as (N, T, D) steps with valid lengths): the family's ``pool`` turns
  each utterance's valid steps into one vector before M (and G, E, D) see it. ``mlp`` and ``context-gru``
  take the masked mean over valid steps; G generates such pooled vectors, and D and E compare them with the
  pooled real sequences. A family that ``reads_steps`` (``lmr-cbt``, ``cfn-sr`` and their ablations) also
  gets the steps themselves as :class:`~hydiscgan_fl.models.steps.StepTensors` in M's text input (and in
  the multimodal baselines its audio/visual inputs); G's fakes reach it as pooled vectors.
- Missing modalities (hydiscgan_fl.data.missing): a family that ``reads_presence`` (``fsrf`` and its
  ablations) takes ``M(text, audio, visual, layout, present=mask)``, the (N, 3) bool mask of text, audio,
  visual, and must not let a missing modality's values change an output; M of another family refuses real
  audio/visual with a mask (``presence_input``). HyDiscGAN's M reads G's fakes, complete, so any family serves.
- A family's own loss terms: when M has ``training_losses(text, audio, visual, layout=None, present=None, *,
  task_loss)``, the training loops (``hydiscgan_fl.training.losses.msa_objective``) take its dict of weighted
  terms, "task" among them (``task_loss(outputs)`` is the run's sentiment loss), in place of the plain
  sentiment loss of ``M(...)``, and add them up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import inspect

import numpy as np
import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data.sequences import masked_mean
from hydiscgan_fl.models.affect import RecurrentAffectModel
from hydiscgan_fl.models.components import GENERATOR, MSA
from hydiscgan_fl.models.cfn_sr import CFNSR, CFNSRTextOnly
from hydiscgan_fl.models.context import ContextGRUMSA, ContextGRUTextOnly
from hydiscgan_fl.models.fsrf import FSRF, FSRFTextOnly, FSRFWeights
from hydiscgan_fl.models.lmr_cbt import LMRCBT, LMRCBTTextOnly
from hydiscgan_fl.models.networks import ClientDiscriminators, ConditionalGenerator, MSAModel, TextOnlyModel
from hydiscgan_fl.plugins import is_import_path, load_import_path

Dims = dict[str, int]


@dataclass(frozen=True)
class GeneratorEntry:
    build: Callable[[Dims, HyDiscGANConfig], nn.Module]  # G from the feature dims
    # modality -> prefix of the state-dict keys of G's head that only that modality's stage-1 terms train: with
    # clients missing modalities, each head is aggregated by the examples of its modality (strategies.aggregation
    # .generator_parts); G without such heads ({}) is aggregated whole, by the examples of either modality
    modality_heads: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MSAFamily:
    build: Callable[[Dims, HyDiscGANConfig], nn.Module]  # M(t, a, v, layout) from the feature dims
    build_text_only: Callable[[int, HyDiscGANConfig], nn.Module]  # the family's text-only model from the text dim
    needs_context: bool  # reads whole videos (batches of videos, a VideoLayout), not independent utterances
    # (N, T, D) steps and valid lengths (N,) -> (N, D) utterance vectors, for modalities stored as sequences
    pool: Callable[[np.ndarray, np.ndarray], np.ndarray] = masked_mean
    # M (not G, E, D) also reads the steps of sequence modalities: StepTensors (models.steps) in place of the
    # pooled text (and, in the multimodal baselines, audio/visual); G's fakes stay pooled vectors
    reads_steps: bool = False
    # M takes present=(N, 3) bool (text, audio, visual) and ignores what is missing (data.missing)
    reads_presence: bool = False


Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
    """Entries of one kind by name; `get` also resolves 'package.module:NAME'."""

    def __init__(self, key: str, entry_type: type, entries: dict[str, Entry]):
        self.key, self.entry_type, self.entries = key, entry_type, dict(entries)

    def get(self, name: str) -> Entry:
        if is_import_path(name):
            entry = load_import_path(name, self.key)
            if not isinstance(entry, self.entry_type):
                raise ValueError(f"{self.key} {name!r} is a {type(entry).__name__}, not a "
                                 f"{self.entry_type.__module__}.{self.entry_type.__name__}")
            return entry
        if name not in self.entries:
            raise ValueError(f"unknown {self.key} {name!r}; use one of {sorted(self.entries)} or "
                             f"'package.module:NAME' (a {self.entry_type.__name__})")
        return self.entries[name]


GENERATORS: Registry[GeneratorEntry] = Registry("generator-model", GeneratorEntry, {
    "mlp": GeneratorEntry(lambda dims, cfg: ConditionalGenerator(dims["text"], dims["audio"], dims["visual"],
                                                                 cfg.noise_dim, cfg.hidden_dim, cfg.dropout),
                          modality_heads={"audio": "audio_head.", "visual": "visual_head."}),
})

MSA_MODELS: Registry[MSAFamily] = Registry("msa-model", MSAFamily, {
    "mlp": MSAFamily(build=lambda dims, cfg: MSAModel(dims, cfg.hidden_dim, cfg.dropout),
                     build_text_only=lambda text_dim, cfg: TextOnlyModel(text_dim, cfg.hidden_dim, cfg.dropout),
                     needs_context=False),
    "context-gru": MSAFamily(build=lambda dims, cfg: ContextGRUMSA(dims, cfg.hidden_dim, cfg.dropout),
                             build_text_only=lambda text_dim, cfg: ContextGRUTextOnly(text_dim, cfg.hidden_dim,
                                                                                      cfg.dropout),
                             needs_context=True),
}
    # The seed papers' fusion models (models/lmr_cbt.py, models/cfn_sr.py) and their ablations. Width
    # hidden-dim / 2. Per video on utterance-vector data (needs_context), per utterance on sequence data.
    | {name: MSAFamily(build=lambda dims, cfg, cross=cross: LMRCBT(dims, cfg.hidden_dim // 2, cfg.dropout,
                                                                  cross_modal=cross),
                       build_text_only=lambda text_dim, cfg: LMRCBTTextOnly(text_dim, cfg.hidden_dim // 2, cfg.dropout),
                       needs_context=True, reads_steps=True)
       for name, cross in (("lmr-cbt", True), ("lmr-cbt-nocross", False))}
    | {name: MSAFamily(build=lambda dims, cfg, residual=residual: CFNSR(dims, cfg.hidden_dim // 2, cfg.dropout,
                                                                       residual=residual),
                       build_text_only=lambda text_dim, cfg: CFNSRTextOnly(text_dim, cfg.hidden_dim // 2, cfg.dropout),
                       needs_context=True, reads_steps=True)
       for name, residual in (("cfn-sr", True), ("cfn-sr-nores", False))}
    # FSRF (models/fsrf.py) for missing modalities, width hidden-dim / 2, per utterance; ablations without
    # factorisation, without self-distillation, and the backbone trained with random modality dropout only.
    | {name: MSAFamily(build=lambda dims, cfg, factorise=factorise, distill=distill: FSRF(
                           dims, cfg.hidden_dim // 2, cfg.dropout, FSRFWeights.of(cfg), factorise, distill),
                       build_text_only=lambda text_dim, cfg: FSRFTextOnly(text_dim, cfg.hidden_dim // 2, cfg.dropout),
                       needs_context=False, reads_steps=True, reads_presence=True)
       for name, factorise, distill in (("fsrf", True, True), ("fsrf-nofact", False, True),
                                        ("fsrf-nodistill", True, False), ("fsrf-dropout", False, False))})


@dataclass(frozen=True)
class AffectModelEntry:
    build: Callable[[int, HyDiscGANConfig], nn.Module]  # (N, T, D) frames, (N, T) valid -> (N, 2), from D


def _recurrent(cell: str, bidirectional: bool) -> AffectModelEntry:
    return AffectModelEntry(lambda input_dim, cfg: RecurrentAffectModel(
        input_dim, cell, bidirectional, cfg.affect_layers, cfg.affect_hidden, cfg.dropout))


# The affect task's model (run-config affect-model): the seed paper's recurrent variants, depth and width
# from affect-layers and affect-hidden.
AFFECT_MODELS: Registry[AffectModelEntry] = Registry("affect-model", AffectModelEntry, {
    "rnn": _recurrent("rnn", False), "lstm": _recurrent("lstm", False), "gru": _recurrent("gru", False),
    "bilstm": _recurrent("lstm", True), "bigru": _recurrent("gru", True)})


def build_affect_model(input_dim: int, cfg: HyDiscGANConfig) -> nn.Module:
    return AFFECT_MODELS.get(cfg.affect_model).build(input_dim, cfg)


def msa_family(cfg: HyDiscGANConfig) -> MSAFamily:
    return MSA_MODELS.get(cfg.msa_model)


def reads_steps(cfg: HyDiscGANConfig) -> bool:
    """Whether the run's M reads the steps of sequence modalities (models.steps), beside pooled vectors."""
    return msa_family(cfg).reads_steps


def needs_context(cfg: HyDiscGANConfig) -> bool:
    """Whether the run's M reads whole videos (then clients hold whole videos, batches are videos)."""
    return msa_family(cfg).needs_context


def presence_input(msa: nn.Module, present: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The keyword arguments that hand M a presence mask (data.missing): {} when nothing is missing; an error
    naming M when it cannot read one (it would take a missing modality's zeros for data)."""
    if present is None:
        return {}
    if "present" not in inspect.signature(msa.forward).parameters:
        raise ValueError(f"the MSA model {type(msa).__name__} reads no presence masks, so it would take the zeros of "
                         "a missing modality for data: with real audio/visual and simulated missing modalities "
                         "(missing-*), use an msa-model that reads them, e.g. 'fsrf'")
    return {"present": present}


def generator_heads(cfg: HyDiscGANConfig) -> dict[str, str] | None:
    """With simulated missing modalities in a HyDiscGAN run: each modality's prefix of G's head in the
    global arrays ('generator.audio_head.'), for the strategy to aggregate G part by part; else None."""
    if not (cfg.simulates_missing and cfg.method == "hydiscgan"):
        return None
    heads = GENERATORS.get(cfg.generator_model).modality_heads
    return {modality: f"{GENERATOR}.{prefix}" for modality, prefix in heads.items()}


def build_generator(dims: Dims, cfg: HyDiscGANConfig) -> nn.Module:
    return GENERATORS.get(cfg.generator_model).build(dims, cfg)


def build_text_only_model(text_dim: int, cfg: HyDiscGANConfig) -> nn.Module:
    return msa_family(cfg).build_text_only(text_dim, cfg)


def parameter_counts(dims: Dims, cfg: HyDiscGANConfig) -> dict[str, int]:
    """Trainable parameters of every model a run builds: G and M (federated), the text-only baseline, and
    the encoders and discriminators each client keeps to itself."""
    models = {GENERATOR: build_generator(dims, cfg), MSA: msa_family(cfg).build(dims, cfg),
              "text_only": build_text_only_model(dims["text"], cfg), "client_private": ClientDiscriminators(dims, cfg)}
    return {name: sum(p.numel() for p in model.parameters() if p.requires_grad) for name, model in models.items()}
