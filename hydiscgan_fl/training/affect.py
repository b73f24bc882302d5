"""Training and evaluation of the affect task's recurrent model (plain PyTorch): one client's round, the
central baseline, predictions and the CCC loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data.affect import AffectWindows
from hydiscgan_fl.metrics import ValidationSelection, affect_metrics
from hydiscgan_fl.models import build_affect_model
from hydiscgan_fl.training.data import minibatches
from hydiscgan_fl.training.loops import adam, seeded
from hydiscgan_fl.training.losses import proximal_term


@dataclass(frozen=True)
class AffectTensors:
    """Model inputs (z-scored AU frames, their validity) and targets of some windows, on a device."""

    frames: torch.Tensor  # (N, T, 17)
    valid: torch.Tensor  # (N, T) bool
    targets: torch.Tensor  # (N, 2)

    @classmethod
    def of(cls, windows: AffectWindows, device: torch.device) -> AffectTensors:
        return cls(torch.as_tensor(windows.au, device=device), torch.as_tensor(windows.valid, device=device),
                   torch.as_tensor(windows.targets, device=device))

    def __len__(self) -> int:
        return len(self.targets)


def ccc_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - CCC, per column (valence, arousal) with population moments, averaged over the columns."""
    mp, mt = preds.mean(dim=0), targets.mean(dim=0)
    vp, vt = preds.var(dim=0, unbiased=False), targets.var(dim=0, unbiased=False)
    cov = ((preds - mp) * (targets - mt)).mean(dim=0)
    ccc = 2.0 * cov / (vp + vt + (mp - mt) ** 2 + 1e-8)
    return (1.0 - ccc).mean()


def affect_loss(preds: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "ccc":
        return ccc_loss(preds, targets)
    if kind == "mse":
        return nn.functional.mse_loss(preds, targets)
    raise ValueError(f"unknown affect-loss {kind!r}; use 'ccc' or 'mse'")


def train_affect(model: nn.Module, data: AffectTensors, cfg: HyDiscGANConfig, epochs: int, seed: int,
                 proximal_mu: float = 0.0,
                 on_epoch: Callable[[int, nn.Module], None] | None = None) -> dict[str, float]:
    """`epochs` epochs of Adam (lr-msa, a fresh optimiser, as the paper re-creates it each round) on the
    affect loss; FedProx's proximal term when proximal_mu > 0. Returns the mean training loss."""
    rng = seeded(seed)
    optimizer = adam(model.parameters(), cfg.lr_msa, cfg)
    anchors = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    losses = []
    for epoch in range(epochs):
        model.train()
        for index in minibatches(len(data), cfg.batch_size, rng):  # >= 2 windows per batch: CCC needs spread
            loss_task = affect_loss(model(data.frames[index], data.valid[index]), data.targets[index], cfg.affect_loss)
            loss = loss_task if anchors is None else loss_task + proximal_term(list(model.parameters()), anchors,
                                                                               proximal_mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss_task.item())
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return {"loss_task": float(np.mean(losses))}


@torch.no_grad()
def predict_affect(model: nn.Module, data: AffectTensors, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(data.frames[i:i + batch_size], data.valid[i:i + batch_size])
                      for i in range(0, len(data), batch_size)]).cpu().numpy()


def evaluate_affect(model: nn.Module, data: AffectTensors) -> dict[str, float]:
    return affect_metrics(predict_affect(model, data), data.targets.cpu().numpy())


@dataclass(frozen=True)
class AffectCentralResult:
    metrics: dict[str, float]  # test metrics at the selected step
    selected_step: int  # epoch group (local-epochs epochs) best on the validation participants
    valid: dict[str, float]


def run_affect_central(cfg: HyDiscGANConfig, device: torch.device,
                       progress: Callable[[int, int, dict[str, float]], None] | None = None) -> AffectCentralResult:
    """The central baseline: the same model trained on every training participant's windows in one place,
    rounds-msa x local-epochs epochs (the federated budget), evaluated after every local-epochs epochs
    (a round's worth), the step selected on the validation participants."""
    windows = cfg.load_affect()
    train, valid, test = (AffectTensors.of(windows.split_subset(s), device) for s in ("train", "valid", "test"))
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_affect_model(windows.input_dim, cfg).to(device)
    selection = ValidationSelection("affect")

    def on_epoch(epoch: int, trained: nn.Module) -> None:
        if epoch % cfg.local_epochs == 0:
            step = epoch // cfg.local_epochs
            test_metrics = evaluate_affect(trained, test)
            selection.offer(step, evaluate_affect(trained, valid), test_metrics)
            if progress is not None:
                progress(step, cfg.rounds_msa, test_metrics)

    train_affect(model, train, cfg, cfg.rounds_msa * cfg.local_epochs, cfg.seed, on_epoch=on_epoch)
    return AffectCentralResult(selection.test, int(selection.step or 0), selection.valid)
