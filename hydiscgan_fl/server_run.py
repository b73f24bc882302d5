"""What the server does around the federated rounds, without Flower: data, evaluation, reports.

The server holds the shareable part only: text and labels of the training and test utterances.
Audio and visual features are dropped as soon as the dataset is read, so no server code can use them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import load_dataset
from hydiscgan_fl.metrics import summary_metrics
from hydiscgan_fl.models import build_shared_models
from hydiscgan_fl.run_files import RunDirectory
from hydiscgan_fl.training import pick_device, predict, predict_text_only, train_text_only


@dataclass(frozen=True)
class TextSplit:
    """Text features and labels of one split: what the server may hold."""

    text: torch.Tensor
    labels: torch.Tensor


class ServerRun:
    """One HyDiscGAN run on the server side: initial weights, per-round evaluation, final report."""

    def __init__(self, cfg: HyDiscGANConfig, run_name: str = ""):
        self.cfg = cfg
        self.started = time.time()
        self.device = pick_device()
        dataset = load_dataset(cfg.dataset, cfg.resolved_data_dir(), cfg.seed)
        # A server view (dataset "partitions:<dir>") holds no audio/visual columns; it carries the clients' widths.
        self.dims = dict(getattr(dataset, "feature_dims", None) or dataset.dims)
        self.label_kind = dataset.label_kind
        self.num_train_speakers = len(set(dataset.split_subset("train").speakers))
        self.train = self._text_split(dataset, "train")
        self.test = self._text_split(dataset, "test")
        del dataset  # audio and visual stop here
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.dataset).stem}-seed{cfg.seed}{run_name}")
        self.run_dir = RunDirectory(cfg.resolved_output_dir(), name)
        self.run_dir.write_json("config.json", cfg.to_run_config())
        self.last_metrics: dict[str, float] = {}

    def _text_split(self, dataset, split: str) -> TextSplit:
        part = dataset.split_subset(split)
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        return TextSplit(as_tensor(part.text), as_tensor(part.labels))

    def initial_state(self) -> dict[str, torch.Tensor]:
        return build_shared_models(self.dims, self.cfg, self.cfg.seed).state_dict()

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Test metrics of y_hat = M(t, G(t, 0)) on the held-out speakers (text only)."""
        shared = build_shared_models(self.dims, self.cfg, self.cfg.seed).to(self.device)
        shared.load_state_dict(state)
        preds = predict(shared, self.test.text, self.label_kind)
        return summary_metrics(preds, self.test.labels.cpu().numpy(), self.label_kind)

    def record_round(self, round_row: dict[str, Any], clients: list[Any], state: dict[str, torch.Tensor],
                     round_started: float) -> dict[str, float]:
        metrics = self.evaluate(state)
        self.last_metrics = metrics
        row = {"stage": round_row.pop("stage"), "round": round_row.pop("round")}
        row.update({f"test_{key}": value for key, value in metrics.items()})
        row.update({key.replace("-", "_"): value for key, value in round_row.items()})
        row["wall_s"] = time.time() - round_started
        self.run_dir.add_round(row, clients)
        return metrics

    def text_only_baseline(self) -> dict[str, float]:
        """A text-only model with M's family, optimiser and epoch budget (rounds-msa x local-epochs)."""
        epochs = self.cfg.rounds_msa * self.cfg.local_epochs
        model = train_text_only(self.train.text, self.train.labels, self.label_kind, self.cfg, epochs, self.cfg.seed)
        preds = predict_text_only(model, self.test.text, self.label_kind)
        return summary_metrics(preds, self.test.labels.cpu().numpy(), self.label_kind)

    def finish(self, state: dict[str, torch.Tensor], num_clients: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json and checkpoint.pt; return the summary."""
        final = self.evaluate(state)
        baseline = self.text_only_baseline()
        summary: dict[str, Any] = {
            "dataset": self.cfg.dataset,
            "label_kind": self.label_kind,
            "num_clients": num_clients,
            "rounds_align": self.cfg.rounds_align,
            "rounds_msa": self.cfg.rounds_msa,
            **final,
            **{f"text_only_{key}": value for key, value in baseline.items()},
            "wall_s": time.time() - self.started,
            **extra,
        }
        self.run_dir.write_json("summary.json", summary)
        cpu_state = {key: value.detach().cpu() for key, value in state.items()}
        self.run_dir.save_checkpoint({
            "generator": {k.removeprefix("generator."): v for k, v in cpu_state.items() if k.startswith("generator.")},
            "msa": {k.removeprefix("msa."): v for k, v in cpu_state.items() if k.startswith("msa.")},
            "dims": dict(self.dims),
            "config": self.cfg.to_run_config(),
        })
        return summary
