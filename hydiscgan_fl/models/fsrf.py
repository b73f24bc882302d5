"""The ``fsrf`` family, built from what is known of FSRF (Liu et al., ICME 2025, arXiv 2510.16086: factorisation-
guided semantic recovery for MSA with missing modalities; no code was found, its loss forms were not recovered).

1. **Per-modality projection**: each modality's steps (or its vector, a sequence of one step) through
   Linear + LayerNorm + GELU, masked mean over the valid steps: h_m.
2. **Factorisation** of h_m into a *shared* part s_m = S(h_m) (one network S for all three modalities, so the
   parts live in one space), a *specific* part p_m = P_m(h_m) and a *noise* part n_m = N_m(h_m), with
   - similarity: central moment discrepancy (CMD, Zellinger et al. 2017, moments 1..5) between the shared
     parts of every pair of modalities, over the utterances that hold both;
   - orthogonality: ||ŝ^T p̂||² between each modality's shared and specific batch matrices (rows L2-normalised);
   - reconstruction: MSE between D_m(s_m + p_m + n_m) and h_m (h_m detached: the projection is not pulled
     towards what is easy to rebuild);
   - noise separation: the same orthogonality between the noise part and each of the shared and specific parts.
3. **Fusion from the shared and specific parts only** (the noise part never reaches the head): the mean of the
   shared parts of the present modalities, and one specific slot per modality; a missing modality's slot is
   *recovered* from that pooled shared part (R_m, an MLP per modality). This is the only way a missing
   modality reaches a prediction: its own values are never read (`torch.where`, not a multiplication, so
   not even a NaN there could leak).
4. **Self-distillation** between two views of each training sample: the task loss on both views, and MSE
   between their outputs (predictions) and KL between the softmax of their fused representations
   (representation distributions), the teacher side detached. `fsrf-distill-teacher` "view" (default): both
   views drop every present modality with probability `fsrf-view-drop` (at least one kept) and the terms are
   symmetric; "complete": the teacher is the sample with every modality it holds and the student one such
   masked view (complete -> incomplete, one direction). Members without distillation always train on two
   masked views.

Every loss term has its weight in the run config (`fsrf-lambda-*`). Ablations (registry): `fsrf-nofact` (h_m is
both "shared" and "specific": no factorisation, no factorisation losses), `fsrf-nodistill` (no distillation
terms) and `fsrf-dropout`, the plain backbone trained on the same randomly masked views with the task loss
only (random modality dropout). Inputs are read per utterance (sequence data: its steps; utterance vectors: one
step), so the family does not need whole videos. The text-only member is the text projection and a head.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data.missing import MODALITIES
from hydiscgan_fl.models.steps import Input, lay_out, masked_mean
from hydiscgan_fl.models.video_layout import VideoLayout


def central_moment_discrepancy(x: torch.Tensor, y: torch.Tensor, moments: int = 5) -> torch.Tensor:
    """CMD between two samples (rows) of features: ||E x - E y|| + sum over k = 2..moments of the distance
    between their k-th central moments (per feature). 0 for identical samples."""
    mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
    loss = _norm(mean_x - mean_y)
    centred_x, centred_y = x - mean_x, y - mean_y
    for order in range(2, moments + 1):
        loss = loss + _norm(centred_x.pow(order).mean(dim=0) - centred_y.pow(order).mean(dim=0))
    return loss


def _norm(v: torch.Tensor) -> torch.Tensor:
    # the Euclidean norm with a finite gradient at 0 (identical moments)
    return (v.pow(2).sum() + 1e-12).sqrt() - 1e-6


def orthogonality(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of the squared entries of â^T b̂, where â, b̂ are the (rows, features) matrices with each row
    L2-normalised: 0 when every feature column of one is orthogonal (over the rows) to every column of the
    other."""
    return (F.normalize(a, dim=1).T @ F.normalize(b, dim=1)).pow(2).mean()


@dataclass(frozen=True)
class FSRFWeights:
    """The loss weights (run-config fsrf-lambda-*), the views' drop probability (fsrf-view-drop) and which
    view teaches (fsrf-distill-teacher)."""

    sim: float
    orth: float
    recon: float
    noise: float
    distill: float
    distribution: float
    view_drop: float
    teacher: str = "view"

    @classmethod
    def of(cls, cfg: HyDiscGANConfig) -> FSRFWeights:
        return cls(cfg.fsrf_lambda_sim, cfg.fsrf_lambda_orth, cfg.fsrf_lambda_recon, cfg.fsrf_lambda_noise,
                   cfg.fsrf_lambda_distill, cfg.fsrf_lambda_distribution, cfg.fsrf_view_drop, cfg.fsrf_distill_teacher)


class ModalityProjection(nn.Module):
    """Linear + LayerNorm + GELU on every step, then the masked mean over the valid steps: (N, width)."""

    def __init__(self, in_dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU())

    def forward(self, value: Input) -> torch.Tensor:
        sequence = lay_out({"m": value}, None).sequences["m"]
        return masked_mean(self.net(sequence.steps), sequence.mask)


def _part(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.Tanh())


def _head(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(width, 1))


@dataclass(frozen=True)
class Parts:
    """Per modality (N, width): the projection h, and the shared, specific and noise parts (without
    factorisation, shared and specific are h itself and there is no noise part)."""

    projected: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    specific: dict[str, torch.Tensor]
    noise: dict[str, torch.Tensor] | None


class FSRF(nn.Module):
    """M(t, a, v, layout=None, present=None) of the fsrf family; see the module docstring.

    `present` (N, 3) bool says which of text, audio, visual each utterance holds (None: all). Training
    goes through `training_losses` (the registry's hook for a family's own loss terms)."""

    def __init__(self, dims: dict[str, int], width: int, dropout: float, weights: FSRFWeights,
                 factorise: bool = True, distill: bool = True):
        super().__init__()
        self.weights, self.factorise, self.distill = weights, factorise, distill
        self.project = nn.ModuleDict({m: ModalityProjection(dims[m], width) for m in MODALITIES})
        if factorise:
            self.shared = _part(width)  # one network for every modality
            self.specific = nn.ModuleDict({m: _part(width) for m in MODALITIES})
            self.noise = nn.ModuleDict({m: _part(width) for m in MODALITIES})
            self.decode = nn.ModuleDict({m: nn.Linear(width, width) for m in MODALITIES})
        self.recover = nn.ModuleDict({m: nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
                                      for m in MODALITIES})
        self.head = _head(4 * width, width, dropout)

    def parts(self, text: Input, audio: Input, visual: Input) -> Parts:
        projected = {m: self.project[m](value) for m, value in zip(MODALITIES, (text, audio, visual))}
        if not self.factorise:
            return Parts(projected, projected, projected, None)
        return Parts(projected, {m: self.shared(h) for m, h in projected.items()},
                     {m: self.specific[m](h) for m, h in projected.items()},
                     {m: self.noise[m](h) for m, h in projected.items()})

    def fuse(self, parts: Parts, present: torch.Tensor) -> torch.Tensor:
        """(N, 4 width): the mean shared part over the present modalities, then each modality's specific
        part, or its recovery from that mean where the modality is missing. An utterance with nothing present
        reads zeros (its prediction is the model's prior)."""
        shared = torch.stack([parts.shared[m] for m in MODALITIES], dim=1)
        mask = present.unsqueeze(-1)
        pooled = torch.where(mask, shared, 0.0).sum(dim=1) / present.sum(dim=1, keepdim=True).clamp_min(1)
        slots = [torch.where(present[:, i:i + 1], parts.specific[m], self.recover[m](pooled))
                 for i, m in enumerate(MODALITIES)]
        return torch.cat([pooled, *slots], dim=1)

    def readout(self, fused: torch.Tensor) -> torch.Tensor:
        return self.head(fused).squeeze(1)

    def forward(self, text: Input, audio: Input, visual: Input, layout: VideoLayout | None = None,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """One output per utterance (`layout` is ignored: the family reads utterances, not videos)."""
        parts = self.parts(text, audio, visual)
        return self.readout(self.fuse(parts, _all_present(parts, present)))

    def training_losses(self, text: Input, audio: Input, visual: Input, layout: VideoLayout | None = None,
                        present: torch.Tensor | None = None, *, task_loss) -> dict[str, torch.Tensor]:  # noqa: ANN001
        """The loss terms of one training step, each weighted: "task" (`task_loss` of the outputs, mean over
        the two views) and the family's own terms (see the module docstring)."""
        parts = self.parts(text, audio, visual)
        present = _all_present(parts, present)
        losses = self.factor_losses(parts, present) if self.factorise else {}
        complete = self.distill and self.weights.teacher == "complete"
        views = [self.fuse(parts, present if complete else self.view(present)), self.fuse(parts, self.view(present))]
        outputs = [self.readout(fused) for fused in views]
        losses["task"] = 0.5 * (task_loss(outputs[0]) + task_loss(outputs[1]))
        if self.distill:
            w = self.weights
            # (student, teacher) pairs: the masked view learns from the complete one, or both views from each other
            pairs = [(1, 0)] if complete else [(0, 1), (1, 0)]
            losses["fsrf_distill"] = w.distill * sum(F.mse_loss(outputs[s], outputs[t].detach())
                                                     for s, t in pairs) / len(pairs)
            losses["fsrf_distribution"] = w.distribution * sum(_kl(views[s], views[t]) for s, t in pairs) / len(pairs)
        return losses

    def factor_losses(self, parts: Parts, present: torch.Tensor) -> dict[str, torch.Tensor]:
        """Similarity, orthogonality, reconstruction and noise separation, each over the utterances that hold
        the modalities involved (a term with fewer than two such utterances counts 0)."""
        w, zero = self.weights, present.new_zeros((), dtype=torch.float32)
        sim, orth, recon, noise = [], [], [], []
        for (i, m), (j, k) in itertools.combinations(enumerate(MODALITIES), 2):
            both = present[:, i] & present[:, j]
            if both.sum() >= 2:
                sim.append(central_moment_discrepancy(parts.shared[m][both], parts.shared[k][both]))
        for i, m in enumerate(MODALITIES):
            rows = present[:, i]
            if rows.sum() < 2:
                continue
            s, p, n = parts.shared[m][rows], parts.specific[m][rows], parts.noise[m][rows]
            orth.append(orthogonality(s, p))
            recon.append(F.mse_loss(self.decode[m](s + p + n), parts.projected[m][rows].detach()))
            noise.append(orthogonality(n, s) + orthogonality(n, p))
        mean = lambda terms: torch.stack(terms).mean() if terms else zero  # noqa: E731
        return {"fsrf_sim": w.sim * mean(sim), "fsrf_orth": w.orth * mean(orth), "fsrf_recon": w.recon * mean(recon),
                "fsrf_noise": w.noise * mean(noise)}

    def view(self, present: torch.Tensor) -> torch.Tensor:
        """A randomly masked view: each present modality dropped with probability view-drop, at least one kept
        (drawn from torch's global generator, which the training loops seed)."""
        keep = present & (torch.rand(present.shape, device=present.device) >= self.weights.view_drop)
        empty = ~keep.any(dim=1) & present.any(dim=1)
        if empty.any():
            choice = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0).argmax(dim=1)
            keep[empty, choice[empty]] = True
        return keep


def _all_present(parts: Parts, present: torch.Tensor | None) -> torch.Tensor:
    rows = parts.projected["text"].shape[0]
    if present is None:
        return torch.ones(rows, len(MODALITIES), dtype=torch.bool, device=parts.projected["text"].device)
    if present.shape != (rows, len(MODALITIES)) or present.dtype != torch.bool:
        raise ValueError(f"present must be a (rows, 3) bool mask of text, audio, visual, got {tuple(present.shape)} "
                         f"{present.dtype}")
    return present


def _kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher) || softmax(student)) per row, averaged; the teacher side carries no gradient."""
    return F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher.detach(), dim=1), reduction="batchmean")


class FSRFTextOnly(nn.Module):
    """The text-only member of the fsrf family: the text projection and a head."""

    def __init__(self, text_dim: int, width: int, dropout: float):
        super().__init__()
        self.project = ModalityProjection(text_dim, width)
        self.head = _head(width, width, dropout)

    def forward(self, text: Input, layout: VideoLayout | None = None) -> torch.Tensor:
        return self.head(self.project(text)).squeeze(1)
