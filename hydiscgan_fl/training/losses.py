"""Loss terms of HyDiscGAN's two stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hydiscgan_fl.models.registry import presence_input


def info_nce(fake: torch.Tensor, real: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive alignment: fake_i must match real_i; the other reals of the batch are negatives.

    Symmetric (fake->real and real->fake), on cosine similarities, as in CLIP-style objectives.
    """
    fake = F.normalize(fake, dim=1)
    real = F.normalize(real, dim=1)
    logits = fake @ real.T / temperature
    targets = torch.arange(fake.shape[0], device=fake.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def row_mean(per_row: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The mean over a batch's rows of per-row losses, each row weighted 0 or 1 by `weights` (None: all 1),
    divided by the whole batch size: a row's share never depends on which other rows are kept (DP-SGD's
    per-utterance clipping assumes a mean over the batch). Rows weighted 0 are utterances missing the modality."""
    return per_row.mean() if weights is None else (per_row * weights).sum() / per_row.shape[0]


def per_utterance_alignment(fake: torch.Tensor, real: torch.Tensor, temperature: float,
                            weights: torch.Tensor | None = None) -> torch.Tensor:
    """The contrastive term under utterance-level DP: mean over utterances of (1 - cos(fake_i, real_i)) / T.

    InfoNCE's loss for utterance i is -cos_ii / T plus a log-partition over the *other* utterances of the
    batch, so one utterance's gradient depends on its neighbours and per-utterance clipping would not
    bound its influence. This keeps the positive-pair term (shifted by 1/T to be >= 0) and drops the
    in-batch negatives, so the loss of a batch is the mean of per-utterance losses. Without negatives
    nothing in this term stops fakes from bunching together; the reconstruction and real/fake terms,
    both per utterance, still separate them.
    """
    return row_mean((1.0 - F.cosine_similarity(fake, real, dim=1)) / temperature, weights)


def real_fake_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """The discriminator's binary cross-entropy: real -> 1, fake -> 0 (over the rows `weights` keeps)."""
    if weights is None:
        return F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)) + (
            F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        )
    per_row = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits), reduction="none") + (
        F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits), reduction="none"))
    return row_mean(per_row, weights)


def fool_loss(fake_logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's non-saturating adversarial loss: make D call the fakes real (over the rows `weights` keeps)."""
    if weights is None:
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    return row_mean(F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits), reduction="none"),
                    weights)


def reconstruction_loss(fake: torch.Tensor, real: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between fake and real features (over the rows `weights` keeps)."""
    if weights is None:
        return F.mse_loss(fake, real)
    return row_mean((fake - real).pow(2).mean(dim=1), weights)


def sentiment_loss(outputs: torch.Tensor, labels: torch.Tensor, label_kind: str) -> torch.Tensor:
    """BCE on logits for binary labels; L1 for continuous sentiment (the MMSA convention)."""
    if label_kind == "binary":
        return F.binary_cross_entropy_with_logits(outputs, labels)
    return F.l1_loss(outputs, labels)


def proximal_term(params: list[torch.Tensor], anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's (mu/2)·||w - w_global||^2 over the federated parameters."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, label_kind: str) -> torch.Tensor:
    """The student's loss towards the teacher's outputs: BCE on logits to the teacher's probabilities for
    binary labels; L1 to the teacher's scores for continuous ones (the task loss with the teacher as label)."""
    if label_kind == "binary":
        return F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
    return F.l1_loss(student, teacher)


def msa_objective(msa: nn.Module, inputs: Sequence, layout, present: torch.Tensor | None,  # noqa: ANN001
                  labels: torch.Tensor, label_kind: str) -> dict[str, torch.Tensor]:
    """The loss terms of one training step of M on `inputs` (text, audio, visual), to be added up: {"task":
    the sentiment loss} for most families; a family whose M has `training_losses` (models.registry) returns its
    own weighted terms, "task" among them. `present`: the (N, 3) presence mask, None when nothing is missing."""
    def task_loss(outputs: torch.Tensor) -> torch.Tensor:
        return sentiment_loss(outputs, labels, label_kind)

    own = getattr(msa, "training_losses", None)
    if own is not None:
        return own(*inputs, layout, present, task_loss=task_loss)
    return {"task": task_loss(msa(*inputs, layout, **presence_input(msa, present)))}
