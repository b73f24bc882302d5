"""Generator, encoders, discriminators and the MLP family of MSA models (sizes come from HyDiscGANConfig)."""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig


def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


class ConditionalGenerator(nn.Module):
    """G(t, z): fake audio and fake visual features conditioned on text.

    One shared trunk over [t; z] with one head per modality. At evaluation and inference z = 0, the
    mode of the noise prior, so a text always maps to the same features (a choice; the paper is silent).
    """

    def __init__(self, text_dim: int, audio_dim: int, visual_dim: int, noise_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.noise_dim = noise_dim
        self.trunk = nn.Sequential(
            nn.Linear(text_dim + noise_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
        )
        self.audio_head = nn.Linear(hidden, audio_dim)
        self.visual_head = nn.Linear(hidden, visual_dim)

    def forward(self, text: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if noise is None:
            noise = text.new_zeros(text.shape[0], self.noise_dim)
        hidden = self.trunk(torch.cat([text, noise], dim=1))
        return self.audio_head(hidden), self.visual_head(hidden)

    def sample_noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(batch, self.noise_dim, generator=generator, device=device)


class FeatureEncoder(nn.Module):
    """E_m: embeds real or fake features of one modality (client-side, private)."""

    def __init__(self, in_dim: int, hidden: int, embed_dim: int, dropout: float):
        super().__init__()
        self.net = _mlp(in_dim, hidden, embed_dim, dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class Discriminator(nn.Module):
    """D_m(E_m(x), t): real-vs-fake logit of one modality, conditioned on the text."""

    def __init__(self, embed_dim: int, text_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = _mlp(embed_dim + text_dim, hidden, 1, dropout)

    def forward(self, embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([embedding, text], dim=1)).squeeze(1)


class ClientDiscriminators(nn.Module):
    """Everything a client keeps to itself: E_a, E_v, D_a, D_v."""

    def __init__(self, dims: dict[str, int], cfg: HyDiscGANConfig):
        super().__init__()
        hidden, embed, drop = cfg.hidden_dim, cfg.embed_dim, cfg.dropout
        self.encoder_audio = FeatureEncoder(dims["audio"], hidden, embed, drop)
        self.encoder_visual = FeatureEncoder(dims["visual"], hidden, embed, drop)
        self.disc_audio = Discriminator(embed, dims["text"], hidden, drop)
        self.disc_visual = Discriminator(embed, dims["text"], hidden, drop)

    def logits(self, audio: torch.Tensor, visual: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.disc_audio(self.encoder_audio(audio), text), self.disc_visual(self.encoder_visual(visual), text))


class MSAModel(nn.Module):
    """M(t, a, v): late fusion of per-modality projections, then an MLP head with one output.

    The output is a logit for binary labels and the sentiment score for continuous labels.
    """

    def __init__(self, dims: dict[str, int], hidden: int, dropout: float):
        super().__init__()
        proj = hidden // 2
        self.proj_text = nn.Sequential(nn.Linear(dims["text"], proj), nn.LayerNorm(proj), nn.GELU())
        self.proj_audio = nn.Sequential(nn.Linear(dims["audio"], proj), nn.LayerNorm(proj), nn.GELU())
        self.proj_visual = nn.Sequential(nn.Linear(dims["visual"], proj), nn.LayerNorm(proj), nn.GELU())
        self.head = _mlp(3 * proj, hidden, 1, dropout)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor,
                layout=None) -> torch.Tensor:  # noqa: ANN001
        """One output per utterance; `layout` (whole videos) is ignored: this model reads no context."""
        fused = torch.cat([self.proj_text(text), self.proj_audio(audio), self.proj_visual(visual)], dim=1)
        return self.head(fused).squeeze(1)


class TextOnlyModel(nn.Module):
    """The text-only baseline: the text branch and head of MSAModel's family, without audio/visual."""

    def __init__(self, text_dim: int, hidden: int, dropout: float):
        super().__init__()
        proj = hidden // 2
        self.proj_text = nn.Sequential(nn.Linear(text_dim, proj), nn.LayerNorm(proj), nn.GELU())
        self.head = _mlp(proj, hidden, 1, dropout)
        self.feature_dim = proj

    def features(self, text: torch.Tensor, layout=None) -> torch.Tensor:  # noqa: ANN001 - ignored, as in MSAModel
        """(N, feature_dim): what the head reads (the multitask baseline's auxiliary head reads it too)."""
        return self.proj_text(text)

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(1)

    def forward(self, text: torch.Tensor, layout=None) -> torch.Tensor:  # noqa: ANN001
        return self.readout(self.features(text, layout))


def build_client_discriminators(dims: dict[str, int], cfg: HyDiscGANConfig, seed: int) -> ClientDiscriminators:
    torch.manual_seed(seed)
    return ClientDiscriminators(dims, cfg)
