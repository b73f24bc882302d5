"""What the server does around the federated rounds, without Flower: data, evaluation, reports.

HyDiscGAN's server holds the shareable part only: text and labels of the training, validation and test
utterances. It loads the text-only view of the dataset (`cfg.load_dataset(text_only=True)`), whose loader
opens no audio or video file (see hydiscgan_fl.data for what each dataset spec reads), so no audio or
visual array ever exists in the ServerApp process. The one exception is the privacy-VIOLATING
fedavg-multimodal baseline (method "fedavg-multimodal"): its M(t, a, v) is selected and tested on real
audio/visual, so its server loads every modality and keeps those of the validation and test splits.
The privileged-information baselines (method "distill", "multitask") federate the text-only model of M's
family (under M's name) and are tested from text alone, like HyDiscGAN.

Model selection: after every round the server evaluates on the validation speakers (carved from the
training speakers, on no client; valid-fraction) and on the test speakers, and writes both to
metrics.csv. The reported round is the best on validation (hydiscgan_fl.metrics.SELECTION_METRIC);
summary.json gives the test metrics at that round (and, labelled last_*, at the last round), and
checkpoint.pt holds that round's G and M. The text-only baseline selects its epoch the same way.

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
from hydiscgan_fl.metrics import ValidationSelection, summary_metrics
from hydiscgan_fl.models import (
    GENERATOR,
    MSA,
    StudentModels,
    VideoLayout,
    build_federated_models,
    build_shared_models,
    needs_context,
    parameter_counts,
)
from hydiscgan_fl.models.steps import StepTensors
from hydiscgan_fl.run_files import RunDirectory, load_state
from hydiscgan_fl.training import (
    UtteranceTensors,
    local_msa,
    pick_device,
    predict,
    predict_multimodal,
    predict_text_only,
    tensor_view,
    to_tensors,
    train_text_only,
)
from hydiscgan_fl.training.data import modality_tensors
from hydiscgan_fl.training.videos import Videos, full_layout


# Keys a resumed run may set differently from the run it continues (where things are, not what is computed).
RESUMABLE_CHANGES = ("resume-from", "stop-after-round", "output-dir", "data-dir", "round-timeout-s")


@dataclass(frozen=True)
class TextSplit:
    """Text features and labels of one split: what the server may hold; for context models (msa-model)
    also the layout of its whole videos."""

    text: torch.Tensor
    labels: torch.Tensor
    layout: VideoLayout | None = None
    steps: StepTensors | None = None  # the text's steps, for an M that reads them (registry `reads_steps`)

    @property
    def msa_text(self) -> torch.Tensor | StepTensors:
        return self.text if self.steps is None else self.steps


class ServerRun:
    """One HyDiscGAN run on the server side: initial weights, per-round evaluation, final report."""

    # The shared components written to checkpoint.pt (the affect task has M only).
    components: tuple[str, ...] = (GENERATOR, MSA)

    def __init__(self, cfg: HyDiscGANConfig, run_name: str = ""):
        self.cfg = cfg
        self.started = time.time()
        self.device = pick_device()
        self._load_data()
        self.last_round = min(cfg.stop_after_round or cfg.total_rounds, cfg.total_rounds)  # of this Flower run
        self.resumed = self._resumed_state() if cfg.resume_from else None
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(cfg.dataset).stem}-seed{cfg.seed}{run_name}")
        self.run_dir = RunDirectory(cfg.resolved_output_dir(), name)
        self.run_dir.write_json("config.json", cfg.to_run_config())
        # The best round on validation so far, and its shared components (what checkpoint.pt will hold).
        self.selection = ValidationSelection(self.label_kind)
        self.selected_state: dict[str, torch.Tensor] | None = None
        if self.resumed:
            self.run_dir.restore_rows(self.resumed["metrics_rows"], self.resumed["client_rows"])
            if self.resumed.get("selected"):
                saved = self.resumed["selected"]
                self.selection = ValidationSelection(self.label_kind, saved["round"], saved["valid"], saved["test"])
                self.selected_state = dict(saved["arrays"])
        # The name under which clients save their private state: the first run's, kept across resumes.
        self.lineage = self.resumed["lineage"] if self.resumed else self.run_dir.path.name

    def _load_data(self) -> None:
        """The server's data (text and labels of every split), dims, label kind and training ids."""
        cfg = self.cfg
        multimodal = cfg.method == "fedavg-multimodal"  # the privacy-violating baseline: all modalities
        dataset = cfg.load_dataset(text_only=not multimodal)
        # The text-only view holds no audio/visual columns; it carries the clients' widths.
        self.dims = dict(getattr(dataset, "feature_dims", None) or dataset.dims)
        self.label_kind = dataset.label_kind
        self.train_ids = dataset.split_subset("train").ids.tolist()  # shareable metadata, checked by the clients
        self.train = self._text_split(dataset, "train")
        self.valid = self._text_split(dataset, "valid")
        self.test = self._text_split(dataset, "test")
        self.valid_multimodal = self._multimodal_split(dataset, "valid") if multimodal else None
        self.test_multimodal = self._multimodal_split(dataset, "test") if multimodal else None
        # Context models (msa-model) read whole videos: the video structure of the text is shareable metadata.
        self.train_videos = Videos.of(dataset.split_subset("train")) if needs_context(cfg) else None
        self.param_counts = parameter_counts(self.dims, cfg)
        print("parameters: " + ", ".join(f"{name}={count:,}" for name, count in self.param_counts.items())
              + f" (msa-model={cfg.msa_model}, generator-model={cfg.generator_model})")
        del dataset

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
        rows so far, the config, the clients' state name and the validation-selected round with its G and M.
        Clients' RNGs derive from seed and round."""
        self.run_dir.save_state({
            "round": server_round,
            "stage": self.cfg.stage_of_round(server_round),
            "lineage": self.lineage,
            "config": self.cfg.to_run_config(),
            "arrays": {key: value.detach().cpu() for key, value in state.items()},
            "strategy": strategy_state,
            "selected": None if self.selection.step is None else {
                "round": self.selection.step, "valid": self.selection.valid, "test": self.selection.test,
                "arrays": self.selected_state},
        })

    def _text_split(self, dataset, split: str) -> TextSplit:
        part = dataset.split_subset(split)
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        layout = full_layout(Videos.of(part) if needs_context(self.cfg) else None, self.device)
        vectors, steps = modality_tensors(part, "text", self.device, tensor_view(self.cfg))
        return TextSplit(vectors, as_tensor(part.labels), layout, steps)

    def _multimodal_split(self, dataset, split: str) -> UtteranceTensors:
        """Real (per-speaker standardised) audio/visual of a split: for the fedavg-multimodal baseline only."""
        part = dataset.split_subset(split)
        if not (part.dims["audio"] and part.dims["visual"]):
            raise DataError(f"method fedavg-multimodal evaluates on real {split} audio/visual, which dataset "
                            f"{self.cfg.dataset!r} does not hold on the server")
        return to_tensors(part, self.device, tensor_view(self.cfg))

    def initial_state(self) -> dict[str, torch.Tensor]:
        """G and M; M alone for fedavg-multimodal (it has no generator); the text model (as M) for distill and
        multitask; the saved ones when resuming."""
        if self.resumed:
            return dict(self.resumed["arrays"])
        state = build_federated_models(self.dims, self.cfg, self.cfg.seed).state_dict()
        if self.test_multimodal is not None:
            return {key: value for key, value in state.items() if key.startswith("msa.")}
        return state

    def evaluate(self, state: dict[str, torch.Tensor], split: str = "test") -> dict[str, float]:
        """Metrics on the held-out speakers of `split` ("valid" or "test"): from text only for HyDiscGAN
        (y_hat = M(t, G(t, z)) as the run's `inference` says; the draws of z seeded by `seed`) and for the
        distill and multitask baselines (their text model); y_hat = M(t, a, v) on real audio/visual for the
        fedavg-multimodal baseline.

        With a personalised ("local") component the server holds no model that clients use (its copy is
        the last global one, never trained further): it reports no metrics rather than wrong ones."""
        if self.cfg.local_components:
            return {}
        text = {"valid": self.valid, "test": self.test}[split]
        shared = build_federated_models(self.dims, self.cfg, self.cfg.seed).to(self.device)
        if isinstance(shared, StudentModels):
            shared.load_state_dict(state)
            preds = predict_text_only(shared.msa, text.msa_text, self.label_kind, text.layout)
        elif self.test_multimodal is None:
            shared.load_state_dict(state)
            preds = predict(shared, text.text, self.label_kind, text.layout, text.steps, self.cfg.inference_draws,
                            self.cfg.seed)
        else:
            real = {"valid": self.valid_multimodal, "test": self.test_multimodal}[split]
            shared.msa.load_state_dict({key.removeprefix("msa."): value for key, value in state.items()})
            preds = predict_multimodal(shared.msa, real, self.label_kind, text.layout)
        return summary_metrics(preds, text.labels.cpu().numpy(), self.label_kind)

    def train_msa(self, state: dict[str, torch.Tensor], server_round: int) -> tuple[dict[str, torch.Tensor],
                                                                                   dict[str, float]]:
        """msa-site "server": one round of stage 2 on the server's own training text and labels (local-epochs
        epochs): M trained and G fine-tuned on the sentiment loss, y_hat = M(t, G(t, z)). The server holds
        no audio/video and no discriminator (those never leave the clients), so there is no frozen-D term
        (lambda-adv-msa does not apply here). Returns the new G and M and the mean training loss."""
        shared = build_shared_models(self.dims, self.cfg, self.cfg.seed).to(self.device)
        shared.load_state_dict(state)
        no_features = self.train.text.new_zeros((len(self.train.text), 0))  # G makes the fakes; no real a/v
        steps = {} if self.train.steps is None else {"text": self.train.steps}  # for an M that reads steps
        data = UtteranceTensors(self.train.text, no_features, no_features, self.train.labels, steps)
        seed = self.cfg.seed * 1_000_003 + server_round * 7919
        losses = local_msa(shared, None, data, self.cfg, self.cfg.local_epochs, seed, self.label_kind,
                           videos=self.train_videos)
        return shared.state_dict(), {f"loss-{key.removeprefix('loss_')}": value for key, value in losses.items()}

    def record_round(self, round_row: dict[str, Any], clients: list[Any], state: dict[str, torch.Tensor],
                     round_started: float) -> dict[str, float]:
        """Evaluate on validation and test, keep the round if it is the best on validation, write its row.
        Returns the test metrics and, prefixed valid_, the validation ones."""
        valid, test = self.evaluate(state, "valid"), self.evaluate(state, "test")
        row = {"stage": round_row.pop("stage"), "round": round_row.pop("round")}
        if self.selection.offer(row["round"], valid, test):
            self.selected_state = {key: value.detach().cpu().clone() for key, value in state.items()}
        row.update({f"valid_{key}": value for key, value in valid.items()})
        row.update({f"test_{key}": value for key, value in test.items()})
        if self.selection.step is not None:
            row["selected_round"] = self.selection.step
        row.update({key.replace("-", "_"): value for key, value in round_row.items()})
        row["wall_s"] = time.time() - round_started
        self.run_dir.add_round(row, clients)
        return {**test, **{f"valid_{key}": value for key, value in valid.items()}}

    def text_only_baseline(self) -> dict[str, Any]:
        """A text-only model with M's family, optimiser and epoch budget (rounds-msa x local-epochs), its
        epoch selected on validation: the test metrics at that epoch, `selected_epoch`, the validation
        metrics there (valid_*) and the test metrics after the last epoch (last_*)."""
        epochs = self.cfg.rounds_msa * self.cfg.local_epochs
        selection = ValidationSelection(self.label_kind)

        def metrics(model: torch.nn.Module, split: TextSplit) -> dict[str, float]:
            preds = predict_text_only(model, split.msa_text, self.label_kind, split.layout)
            return summary_metrics(preds, split.labels.cpu().numpy(), self.label_kind)

        def on_epoch(epoch: int, model: torch.nn.Module) -> None:
            selection.offer(epoch, metrics(model, self.valid), metrics(model, self.test))

        model = train_text_only(self.train.msa_text, self.train.labels, self.label_kind, self.cfg, epochs, self.cfg.seed,
                                videos=self.train_videos, on_epoch=on_epoch)
        return {**selection.test, "selected_epoch": selection.step,
                **{f"valid_{key}": value for key, value in selection.valid.items()},
                **{f"last_{key}": value for key, value in metrics(model, self.test).items()}}

    def baseline_summary(self) -> dict[str, Any]:
        """The baseline reported beside the federated model in summary.json: the text-only model."""
        return {f"text_only_{key}": value for key, value in self.text_only_baseline().items()}

    def finish(self, state: dict[str, torch.Tensor], num_clients: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json and checkpoint.pt (the validation-selected round's G and M); return the summary.

        Unprefixed metrics are the test metrics at `selected_round`, the best round on validation by
        `selection_metric`; valid_* are that round's validation metrics; last_* the test metrics at
        `last_round`; text_only_* the same for the text-only baseline (its `text_only_selected_epoch`)."""
        last = self.evaluate(state, "test")
        summary: dict[str, Any] = {
            "dataset": self.cfg.dataset,
            "label_kind": self.label_kind,
            "num_clients": num_clients,
            "rounds_align": self.cfg.rounds_align,
            "rounds_msa": self.cfg.rounds_msa,
            "selection_metric": f"valid_{self.selection.metric}",
            "last_round": self.last_round,
            **{f"last_{key}": value for key, value in last.items()},
            **self.baseline_summary(),
            "wall_s": time.time() - self.started,
            "param_counts": self.param_counts,
            **extra,
        }
        if self.selection.step is not None:
            summary.update({**self.selection.test, "selected_round": self.selection.step,
                            **{f"valid_{key}": value for key, value in self.selection.valid.items()}})
        if self.cfg.local_components:
            summary["personalised"] = (f"{', '.join(self.cfg.local_components)} stayed on the clients: no test metrics, "
                                       "the server holds no model the clients use (docs/aggregation.md)")
        self.run_dir.write_json("summary.json", summary)
        selected = self.selected_state if self.selected_state is not None else state
        cpu_state = {key: value.detach().cpu() for key, value in selected.items()}
        self.run_dir.save_checkpoint({
            **{name: {k.removeprefix(f"{name}."): v for k, v in cpu_state.items() if k.startswith(f"{name}.")}
               for name in self.components},
            "round": self.selection.step if self.selected_state is not None else self.last_round,
            "dims": dict(self.dims),
            "config": self.cfg.to_run_config(),
        })
        return summary
