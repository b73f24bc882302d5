"""Recurrent affect models: a window of per-frame inputs (z-scored AU intensities) -> (valence, arousal).

The seed paper compares RNN, LSTM, GRU and their bidirectional forms, stacked. Here one class covers them:
the recurrent cell, its direction, depth (affect-layers) and width (affect-hidden) are the registry entry's
and the run config's. The outputs over the window's valid frames are mean-pooled (untracked frames do not
count) and a linear head with tanh maps them to the [-1, 1] targets.
"""

from __future__ import annotations

import torch
from torch import nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentAffectModel(nn.Module):
    def __init__(self, input_dim: int, cell: str, bidirectional: bool, layers: int, hidden: int, dropout: float):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; use one of {sorted(CELLS)}")
        self.rnn = CELLS[cell](input_dim, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional,
                               dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 2)

    def forward(self, frames: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """frames (N, T, D), valid (N, T) bool -> (N, 2) valence, arousal in [-1, 1]."""
        outputs, _ = self.rnn(frames)
        weights = valid.to(outputs.dtype).unsqueeze(-1)
        pooled = (outputs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return torch.tanh(self.head(pooled))
