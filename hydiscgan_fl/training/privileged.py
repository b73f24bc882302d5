"""The federated privileged-information baselines: a client uses its real audio/visual at training time
only, and what is federated (and tested, from text alone) is the text-only model of M's family.

- ``distill``: the client trains a multimodal teacher M(t, a, v) of M's family on its own utterances
  (once, the first time it is sampled, for M's whole budget rounds-msa x local-epochs epochs; kept in the
  client's state, never sent), then each round trains the text student on the task loss plus
  lambda-distill x the distillation loss towards the teacher's outputs on the same utterances.
- ``multitask``: the text model also predicts the utterance's standardised audio‖visual features from
  its own features (`features(text, layout)`) through a client-private linear head; the auxiliary loss
  (mean squared error, weight lambda-multitask) shapes the shared text representation. No adversary, no
  generator at test time.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.training.data import UtteranceTensors
from hydiscgan_fl.training.loops import adam, mean_of_history, seeded
from hydiscgan_fl.training.losses import distillation_loss, proximal_term, sentiment_loss
from hydiscgan_fl.training.videos import Videos, batches


def build_multitask_head(feature_dim: int, dims: dict[str, int], seed: int) -> nn.Linear:
    """The client-private auxiliary head: the text model's features -> audio‖visual features."""
    torch.manual_seed(seed)
    return nn.Linear(feature_dim, dims["audio"] + dims["visual"])


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, model: nn.Module,
          anchors: list[torch.Tensor] | None, proximal_mu: float) -> None:
    """One optimiser step on `loss`, plus FedProx's proximal term to the round's received weights."""
    if anchors is not None:
        loss = loss + proximal_term(list(model.parameters()), anchors, proximal_mu)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def local_distill(
    student: nn.Module,
    teacher: nn.Module,
    data: UtteranceTensors,
    cfg: HyDiscGANConfig,
    epochs: int,
    seed: int,
    label_kind: str,
    proximal_mu: float = 0.0,
    videos: Videos | None = None,
) -> dict[str, float]:
    """One distill round on a client: the text student B(t) on the task loss plus lambda-distill times the
    distillation loss towards the frozen teacher's M(t, a, v) outputs. Returns mean losses."""
    rng = seeded(seed)
    teacher.eval()
    optimizer = adam(student.parameters(), cfg.lr_msa, cfg)
    anchors = [p.detach().clone() for p in student.parameters()] if proximal_mu > 0 else None
    history: dict[str, list[float]] = defaultdict(list)
    student.train()
    for _ in range(epochs):
        for index, layout in batches(len(data), cfg.batch_size, rng, videos, data.text.device):
            batch = data.rows(index)
            with torch.no_grad():
                targets = teacher(*batch.msa_inputs(), layout)
            outputs = student(batch.msa_input("text"), layout)
            loss_task = sentiment_loss(outputs, batch.labels, label_kind)
            loss = loss_task
            if cfg.lambda_distill > 0:  # weight 0: the term is not computed (the student is a text-only model)
                loss_distill = distillation_loss(outputs, targets, label_kind)
                loss = loss + cfg.lambda_distill * loss_distill
                history["loss_distill"].append(loss_distill.item())
            _step(optimizer, loss, student, anchors, proximal_mu)
            history["loss_task"].append(loss_task.item())
    return mean_of_history(history)


def local_multitask(
    model: nn.Module,
    head: nn.Linear,
    data: UtteranceTensors,
    cfg: HyDiscGANConfig,
    epochs: int,
    seed: int,
    label_kind: str,
    proximal_mu: float = 0.0,
    videos: Videos | None = None,
) -> dict[str, float]:
    """One multitask round on a client: the text model on the task loss plus lambda-multitask times the
    mean squared error of `head(model.features(t))` to the real standardised audio‖visual. The head is
    trained with the model (same optimiser settings) and stays on the client. Returns mean losses."""
    rng = seeded(seed)
    optimizer = adam([*model.parameters(), *head.parameters()], cfg.lr_msa, cfg)
    anchors = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    history: dict[str, list[float]] = defaultdict(list)
    model.train()
    head.train()
    for _ in range(epochs):
        for index, layout in batches(len(data), cfg.batch_size, rng, videos, data.text.device):
            batch = data.rows(index)
            features = model.features(batch.msa_input("text"), layout)
            loss_task = sentiment_loss(model.readout(features), batch.labels, label_kind)
            loss = loss_task
            if cfg.lambda_multitask > 0:  # weight 0: the term is not computed, the head not trained
                loss_aux = F.mse_loss(head(features), torch.cat([batch.audio, batch.visual], dim=1))
                loss = loss + cfg.lambda_multitask * loss_aux
                history["loss_multitask"].append(loss_aux.item())
            _step(optimizer, loss, model, anchors, proximal_mu)
            history["loss_task"].append(loss_task.item())
    return mean_of_history(history)
