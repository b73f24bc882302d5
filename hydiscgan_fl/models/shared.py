"""The federated models, built from the run config's registry entries: G and M of HyDiscGAN (and of the
fedavg-multimodal baseline, which federates M only), or the text model of the privileged-information
baselines (distill, multitask)."""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models.components import MSA, SHARED_COMPONENTS
from hydiscgan_fl.models.registry import build_generator, build_text_only_model, msa_family
from hydiscgan_fl.models.steps import StepTensors
from hydiscgan_fl.models.video_layout import VideoLayout


class SharedModels(nn.Module):
    """G (`generator-model`) and M (`msa-model`). state_dict keys are prefixed 'generator.' and 'msa.'."""

    COMPONENTS = SHARED_COMPONENTS

    def __init__(self, dims: dict[str, int], cfg: HyDiscGANConfig):
        super().__init__()
        family = msa_family(cfg)
        self.generator = build_generator(dims, cfg)
        self.msa = family.build(dims, cfg)
        self.needs_context = family.needs_context
        # Ablation "zero-fakes": M reads zeros of the fakes' shapes, and G never reaches it.
        self.zero_fakes = cfg.ablation == "zero-fakes"
        self.fake_dims = (dims["audio"], dims["visual"])

    def fakes(self, text: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """What M reads in place of audio/visual: G(t, z) (z = 0 when `noise` is None), or zeros under the
        zero-fakes ablation (G is then not run, so no gradient reaches it)."""
        if self.zero_fakes:
            return tuple(text.new_zeros(text.shape[0], dim) for dim in self.fake_dims)
        return self.generator(text, noise)

    def predict(self, text: torch.Tensor, layout: VideoLayout | None = None,
                msa_text: StepTensors | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Text-only inference: y_hat = M(t, G(t, z)), z = 0 unless `noise` is given; `layout` when M needs
        context (whole videos); `msa_text`: the text's steps, when M reads them (G reads the vectors `text`)."""
        return self.read_fakes(text, *self.fakes(text, noise), layout, msa_text)

    def read_fakes(self, text: torch.Tensor, fake_audio: torch.Tensor, fake_visual: torch.Tensor,
                   layout: VideoLayout | None = None, msa_text: StepTensors | None = None) -> torch.Tensor:
        """M(t, fake audio, fake visual)."""
        return self.msa(text if msa_text is None else msa_text, fake_audio, fake_visual, layout)


class StudentModels(nn.Module):
    """The federated part of the privileged-information baselines (method distill, multitask): the text-only
    model of M's family, under M's name (state-dict keys 'msa.*'), so that the run's global state, the
    per-component aggregation rules and the checkpoint treat it as the MSA model."""

    COMPONENTS = (MSA,)

    def __init__(self, dims: dict[str, int], cfg: HyDiscGANConfig):
        super().__init__()
        family = msa_family(cfg)
        self.msa = build_text_only_model(dims["text"], cfg)
        self.needs_context = family.needs_context
        if cfg.method == "multitask" and not hasattr(self.msa, "features"):
            raise ValueError(f"msa-model {cfg.msa_model!r}: its text-only model has no `features(text, layout)` "
                             "for the multitask baseline's auxiliary head to read; use 'mlp' or 'context-gru'")


def build_shared_models(dims: dict[str, int], cfg: HyDiscGANConfig, seed: int) -> SharedModels:
    torch.manual_seed(seed)
    return SharedModels(dims, cfg)


def build_federated_models(dims: dict[str, int], cfg: HyDiscGANConfig, seed: int) -> SharedModels | StudentModels:
    """What the run's method federates: StudentModels for distill and multitask, else SharedModels."""
    if cfg.method in ("distill", "multitask"):
        torch.manual_seed(seed)
        return StudentModels(dims, cfg)
    return build_shared_models(dims, cfg, seed)
