"""The federated part of HyDiscGAN: G and M, built from the run config's registry entries."""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models.components import SHARED_COMPONENTS
from hydiscgan_fl.models.registry import build_generator, msa_family
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

    def predict(self, text: torch.Tensor, layout: VideoLayout | None = None,
                msa_text: StepTensors | None = None) -> torch.Tensor:
        """Text-only inference: y_hat = M(t, G(t, z=0)); `layout` when M needs context (whole videos);
        `msa_text`: the text's steps, when M reads them (G reads the utterance vectors `text`)."""
        fake_audio, fake_visual = self.generator(text)
        return self.msa(text if msa_text is None else msa_text, fake_audio, fake_visual, layout)


def build_shared_models(dims: dict[str, int], cfg: HyDiscGANConfig, seed: int) -> SharedModels:
    torch.manual_seed(seed)
    return SharedModels(dims, cfg)
