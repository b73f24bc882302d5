"""What the server does around the federated rounds, without Flower: data, evaluation, reports.

HyDiscGAN's server holds the shareable part only: text and labels of the training and test utterances.
Audio and visual features are dropped as soon as the dataset is read, so no server code can use them.
The one exception is the privacy-violating fedavg-multimodal baseline (method "fedavg-multimodal"),
whose M(t, a, v) needs real audio/visual at test time: its server also keeps the test split's.

Every round the server saves its state (state.pt, see `save_state`); with `resume-from` a new run
starts from the state of a previous run directory and continues its rounds (docs/aggregation.md).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError
from hydiscgan_fl.metrics import summary_metrics
from hydiscgan_fl.models import GENERATOR, MSA, build_shared_models, needs_context, parameter_counts
from hydiscgan_fl.run_files import RunDirectory, load_state
from hydiscgan_fl.training import (
    UtteranceTensors,
    pick_device,
    predict,
    predict_multimodal,
    predict_text_only,
    to_tensors,
    train_text_only,
)
from hydiscgan_fl.training.videos import Videos, full_layout


# Keys a resumed run may set differently from the run it continues (where things are, not what is computed).
RESUMABLE_CHANGES = ("resume-from", "stop-after-round", "output-dir", "data-dir", "round-timeout-s")


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
        dataset = cfg.load_dataset()
        # A server view (dataset "partitions:<dir>") holds no audio/visual columns; it carries the clients' widths.
        self.dims = dict(getattr(dataset, "feature_dims", None) or dataset.dims)
        self.label_kind = dataset.label_kind
        self.num_train_speakers = len(set(dataset.split_subset("train").speakers))
        self.train_ids = dataset.split_subset("train").ids.tolist()  # shareable metadata, checked by the clients
        self.train = self._text_split(dataset, "train")
        self.test = self._text_split(dataset, "test")
        self.test_multimodal = self._multimodal_test_split(dataset) if cfg.method == "fedavg-multimodal" else None
        # Context models (msa-model) read whole videos: the video structure of the text is shareable metadata.
        context = needs_context(cfg)
        self.train_videos = Videos.of(dataset.split_subset("train")) if context else None
        self.test_layout = full_layout(Videos.of(dataset.split_subset("test")) if context else None, self.device)
        self.param_counts = parameter_counts(self.dims, cfg)
        print("parameters: " + ", ".join(f"{name}={count:,}" for name, count in self.param_counts.items())
              + f" (msa-model={cfg.msa_model}, generator-model={cfg.generator_model})")
        del dataset  # audio and visual stop here (HyDiscGAN's server is text-only: test_multimodal is None)
        self.last_round = min(cfg.stop_after_round or cfg.total_rounds, cfg.total_rounds)  # of this Flower run
        self.resumed = self._resumed_state() if cfg.resume_from else None
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.dataset).stem}-seed{cfg.seed}{run_name}")
        self.run_dir = RunDirectory(cfg.resolved_output_dir(), name)
        self.run_dir.write_json("config.json", cfg.to_run_config())
        self.last_metrics: dict[str, float] = {}
        if self.resumed:
            self.run_dir.restore_rows(self.resumed["metrics_rows"], self.resumed["client_rows"])
        # The name under which clients save their private state: the first run's, kept across resumes.
        self.lineage = self.resumed["lineage"] if self.resumed else self.run_dir.path.name

    def _resumed_state(self) -> dict[str, Any]:
        """The saved state of `resume-from`, after checking that this run computes the same thing."""
        try:
            state = load_state(Path(self.cfg.resume_from))
        except FileNotFoundError as err:
            raise ConfigError(f"resume-from: {err}") from None
        saved, now = state["config"], self.cfg.to_run_config()
        changed = sorted(key for key in set(saved) | set(now)
                         if key not in RESUMABLE_CHANGES and saved.get(key) != now.get(key))
        if changed:
            was = ", ".join(f"{key}={saved.get(key)!r}" for key in changed)
            raise ConfigError(f"resume-from {self.cfg.resume_from}: run-config keys {changed} differ from the "
                              f"saved run's ({was})")
        if state["round"] >= self.last_round:
            raise ConfigError(f"resume-from {self.cfg.resume_from}: nothing to run, round {state['round']} is saved "
                              f"and this run would end at round {self.last_round}")
        return state

    def save_state(self, server_round: int, state: dict[str, torch.Tensor], strategy_state: dict[str, Any]) -> None:
        """state.pt after `server_round`: global G and M, the strategy's state (rules, sampler RNG), the
        rows so far, the config and the clients' state name. Clients' RNGs derive from seed and round."""
        self.run_dir.save_state({
            "round": server_round,
            "stage": self.cfg.stage_of_round(server_round),
            "lineage": self.lineage,
            "config": self.cfg.to_run_config(),
            "arrays": {key: value.detach().cpu() for key, value in state.items()},
            "strategy": strategy_state,
        })

    def _text_split(self, dataset, split: str) -> TextSplit:
        part = dataset.split_subset(split)
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        return TextSplit(as_tensor(part.text), as_tensor(part.labels))

    def _multimodal_test_split(self, dataset) -> UtteranceTensors:
        """Real (per-speaker standardised) test audio/visual: for the fedavg-multimodal baseline only."""
        part = dataset.split_subset("test")
        if not (part.dims["audio"] and part.dims["visual"]):
            raise DataError(f"method fedavg-multimodal evaluates on real test audio/visual, which dataset "
                            f"{self.cfg.dataset!r} does not hold on the server")
        return to_tensors(part, self.device)

    def initial_state(self) -> dict[str, torch.Tensor]:
        """G and M; M alone for fedavg-multimodal (it has no generator); the saved ones when resuming."""
        if self.resumed:
            return dict(self.resumed["arrays"])
        state = build_shared_models(self.dims, self.cfg, self.cfg.seed).state_dict()
        if self.test_multimodal is not None:
            return {key: value for key, value in state.items() if key.startswith("msa.")}
        return state

    def evaluate(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Test metrics on the held-out speakers: y_hat = M(t, G(t, 0)) from text only for HyDiscGAN;
        y_hat = M(t, a, v) on real test audio/visual for the fedavg-multimodal baseline.

        With a personalised ("local") component the server holds no model that clients use (its copy is
        the last global one, never trained further): it reports no test metrics rather than wrong ones."""
        if self.cfg.local_components:
            return {}
        shared = build_shared_models(self.dims, self.cfg, self.cfg.seed).to(self.device)
        if self.test_multimodal is None:
            shared.load_state_dict(state)
            preds = predict(shared, self.test.text, self.label_kind, self.test_layout)
        else:
            shared.msa.load_state_dict({key.removeprefix("msa."): value for key, value in state.items()})
            preds = predict_multimodal(shared.msa, self.test_multimodal, self.label_kind, self.test_layout)
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
        model = train_text_only(self.train.text, self.train.labels, self.label_kind, self.cfg, epochs, self.cfg.seed,
                                videos=self.train_videos)
        preds = predict_text_only(model, self.test.text, self.label_kind, self.test_layout)
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
            "param_counts": self.param_counts,
            **extra,
        }
        if self.cfg.local_components:
            summary["personalised"] = (f"{', '.join(self.cfg.local_components)} stayed on the clients: no test metrics, "
                                       "the server holds no model the clients use (docs/aggregation.md)")
        self.run_dir.write_json("summary.json", summary)
        cpu_state = {key: value.detach().cpu() for key, value in state.items()}
        self.run_dir.save_checkpoint({
            **{name: {k.removeprefix(f"{name}."): v for k, v in cpu_state.items() if k.startswith(f"{name}.")}
               for name in (GENERATOR, MSA)},
            "dims": dict(self.dims),
            "config": self.cfg.to_run_config(),
        })
        return summary
