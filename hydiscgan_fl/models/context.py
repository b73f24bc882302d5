"""The ``context-gru`` family: a bidirectional GRU over a video's utterances, one output per utterance.

As bc-LSTM (Poria et al., ACL 2017): each utterance vector is projected, a BiGRU reads the video's
utterances in order, and a per-utterance head reads the GRU state beside the utterance's own projection.
M reads [t; a; v] per utterance (in HyDiscGAN [t; G(t)], so from text alone at test time); its text-only
family member reads t. Padding never changes an output (models/recurrent.py).
"""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.models.networks import _mlp
from hydiscgan_fl.models.recurrent import MaskedBiRNN
from hydiscgan_fl.models.video_layout import VideoLayout


class ContextGRU(nn.Module):
    """Per-utterance outputs from utterance vectors (N, in_dim) of whole videos laid out by a VideoLayout."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
        self.gru = MaskedBiRNN("gru", hidden, hidden // 2)
        self.feature_dim = hidden + 2 * (hidden // 2)
        self.head = _mlp(self.feature_dim, hidden, 1, dropout)

    def features(self, rows: torch.Tensor, layout: VideoLayout | None) -> torch.Tensor:
        """(N, feature_dim) per utterance: its video's GRU state beside its own projection (what the head
        reads; the multitask baseline's auxiliary head reads it too)."""
        if layout is None:
            raise ValueError("the context-gru model reads whole videos: it needs the VideoLayout of its rows")
        projected = self.project(rows)
        context = self.gru(layout.pad(projected), layout.lengths)
        return torch.cat([layout.unpad(context), projected], dim=1)

    def readout(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features).squeeze(1)

    def read(self, rows: torch.Tensor, layout: VideoLayout | None) -> torch.Tensor:
        return self.readout(self.features(rows, layout))


class ContextGRUMSA(ContextGRU):
    """M(t, a, v, layout) of the context-gru family."""

    def __init__(self, dims: dict[str, int], hidden: int, dropout: float):
        super().__init__(dims["text"] + dims["audio"] + dims["visual"], hidden, dropout)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor,
                layout: VideoLayout | None = None) -> torch.Tensor:
        return self.read(torch.cat([text, audio, visual], dim=1), layout)


class ContextGRUTextOnly(ContextGRU):
    """The text-only member of the context-gru family."""

    def forward(self, text: torch.Tensor, layout: VideoLayout | None = None) -> torch.Tensor:
        return self.read(text, layout)
