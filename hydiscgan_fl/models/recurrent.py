"""A stacked bidirectional LSTM or GRU over padded sequences, without packing.

`nn.LSTM`/`nn.GRU` read variable-length sequences correctly only when packed, and on CPU a packed sequence
leaves the fused kernel for a step-by-step loop (several times slower forwards and backwards: the
context-gru and lmr-cbt families spent most of a client's round there). Here each direction runs the fused
kernel on the whole padded batch: the forward one as is, the backward one on each sequence reversed
within its valid length. A valid step then reads only valid steps, in the order packing would give, so the
function is that of the packed bidirectional module; the outputs at padding are undefined (callers mask
them).
"""

from __future__ import annotations

import torch
from torch import nn

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def reversal_index(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, steps) step indices that reverse each row's first `lengths[i]` steps and leave its padding in place
    (applying it twice gives the identity)."""
    position = torch.arange(steps, device=lengths.device).unsqueeze(0)
    lengths = lengths.to(position.device).unsqueeze(1)
    return torch.where(position < lengths, lengths - 1 - position, position)


def _reorder(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return values.gather(1, index.unsqueeze(-1).expand_as(values))


class MaskedBiRNN(nn.Module):
    """(N, T, in_dim) steps and their valid lengths -> (N, T, 2 hidden): the outputs of
    `nn.LSTM`/`nn.GRU(in_dim, hidden, layers, bidirectional=True, dropout=dropout)` on the packed sequences.

    The weights are initialised from the same random draws as that module's (one is built and copied, and the
    per-direction modules are built without drawing), so a seed gives the same initial model either way."""

    def __init__(self, cell: str, in_dim: int, hidden: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        kind = _CELLS[cell]
        template = kind(in_dim, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        with torch.random.fork_rng(devices=[]):  # the per-direction modules' own draws would shift later layers'
            self.layers = nn.ModuleList(
                nn.ModuleList(kind(in_dim if layer == 0 else 2 * hidden, hidden, batch_first=True) for _ in range(2))
                for layer in range(layers))
        with torch.no_grad():
            for layer, directions in enumerate(self.layers):
                for module, suffix in zip(directions, ("", "_reverse"), strict=True):
                    for name in _WEIGHTS:
                        getattr(module, f"{name}_l0").copy_(getattr(template, f"{name}_l{layer}{suffix}"))
        self.dropout = nn.Dropout(dropout)  # between layers, as in nn.LSTM/nn.GRU

    def forward(self, steps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        reverse = reversal_index(lengths, steps.shape[1])
        out = steps
        for layer, (ahead, behind) in enumerate(self.layers):
            if layer:
                out = self.dropout(out)
            out = torch.cat([ahead(out)[0], _reorder(behind(_reorder(out, reverse))[0], reverse)], dim=2)
        return out
