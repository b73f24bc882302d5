"""A user's own MSA model family: linear early fusion (logistic regression on [t; a; v] for binary labels).

Select it with the run config `msa-model="examples.my_model:LINEAR"`. An entry builds M(t, a, v, layout)
from the feature dims and the text-only member of its family from the text dim (hydiscgan_fl.models.registry).
"""

from __future__ import annotations

import torch
from torch import nn

from hydiscgan_fl.models import MSAFamily


class LinearFusion(nn.Module):
    """One linear layer over [t; a; v]; reads no context (`layout` is ignored)."""

    def __init__(self, dims: dict[str, int]):
        super().__init__()
        self.linear = nn.Linear(dims["text"] + dims["audio"] + dims["visual"], 1)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor,
                layout=None) -> torch.Tensor:  # noqa: ANN001
        return self.linear(torch.cat([text, audio, visual], dim=1)).squeeze(1)


class LinearText(nn.Module):
    """The family's text-only member: one linear layer over t."""

    def __init__(self, text_dim: int):
        super().__init__()
        self.linear = nn.Linear(text_dim, 1)

    def forward(self, text: torch.Tensor, layout=None) -> torch.Tensor:  # noqa: ANN001
        return self.linear(text).squeeze(1)


LINEAR = MSAFamily(build=lambda dims, cfg: LinearFusion(dims),
                   build_text_only=lambda text_dim, cfg: LinearText(text_dim), needs_context=False)
