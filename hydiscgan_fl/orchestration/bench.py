"""`hydiscgan bench`: HyDiscGAN against its baselines in one command.

    hydiscgan bench --dataset mosi-bclstm --methods text-only,hydiscgan --msa-models mlp,context-gru --seeds 5 --out DIR
    hydiscgan bench --dataset synthetic-seq --missing 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7 --msa-models mlp --out DIR  (the
        missing-modality grid: hydiscgan_fl.orchestration.missing_bench)

Methods (same model family; every method gets rounds-msa x local-epochs epochs over the training data,
the alignment stage is extra for the GAN methods):

- text-only           central, text only at train and test time;
- hydiscgan           federated HyDiscGAN (the main job, through Flower's simulation), text only at test;
- hydiscgan-<ablation>  federated HyDiscGAN with one ingredient removed (ABLATIONS, docs/ablations.md):
                      no-adv, no-contrastive, no-recon, no-adv-msa (that loss weight 0), frozen-g (G frozen
                      after stage 1), zero-fakes (M fed zeros instead of G(t)), no-align (stage 1 skipped);
- hydiscgan-mean-pred, hydiscgan-mean-fake  federated HyDiscGAN tested with the mean of K=10 predictions over
                      sampled z, or M on the mean of K=10 fakes (run-config inference), instead of z = 0;
- distill             federated text model, each client distilling its own multimodal teacher into it;
- multitask           federated text model that also predicts the client's audio/visual from text;
- hydiscgan-central   HyDiscGAN's models and losses with all training data in one place;
- fedavg-multimodal   federated M(t, a, v) with FedAvg, real audio/visual at test (violates the privacy goal);
- central-multimodal  central M(t, a, v) on real audio/visual (the privacy-violating upper bound).

Every method runs with every model of --msa-models (the run config's msa-model: a registry name or
'package.module:NAME'), at the same budget; the model is a column of the table.
Federated methods run through LocalFederation on --num-clients simulated SuperNodes with the speaker
partition. Every method reports the test metrics of the round (federated, hydiscgan-central) or epoch
group (text-only, central-multimodal) that is best on the validation speakers (`selected_step`).
Writes DIR/summary.csv (one row per method, model and seed; rows already there are skipped, so an
interrupted benchmark resumes), DIR/summary.md (the parameter counts of every model; mean ± std and the 95%
t-interval over seeds, and each method's paired difference to text-only of the same model with its 95%
interval), DIR/metrics.png, DIR/rounds.png, and keeps each
federated run directory under DIR/runs/.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError
from hydiscgan_fl.data.sequences import masked_mean
from hydiscgan_fl.metrics import HIGHER_IS_BETTER, mean_interval, paired_difference
from hydiscgan_fl.models import (AFFECT_MODELS, MSA_MODELS, build_federated_models, build_shared_models,
                                  parameter_counts)
from hydiscgan_fl.orchestration.affect_bench import affect_config, run_affect_bench
from hydiscgan_fl.orchestration.bench_process import benchmark_process, machine
from hydiscgan_fl.orchestration.flwr_runner import FederatedRunError, LocalFederation
from hydiscgan_fl.orchestration.missing_bench import METHODS as MISSING_METHODS
from hydiscgan_fl.orchestration.missing_bench import parse_rates, run_missing_bench
from hydiscgan_fl.orchestration.result_table import append_row, check_header, pyplot, read_rows
from hydiscgan_fl.orchestration.schedule import SCHEDULE_KEYS, add_schedule_arguments, schedule_overrides
from hydiscgan_fl.privacy.attacks import speaker_attack
from hydiscgan_fl.training import UtteranceTensors, pick_device, tensor_view, to_tensors
from hydiscgan_fl.training.central import generated_features, real_features, run_central

# Most privacy-preserving first; the federated ones are the run-config `method` of the same name, or a
# variant of HyDiscGAN with the run-config keys of FEDERATED_VARIANTS.
# HyDiscGAN with one ingredient removed: the run-config keys that remove it (docs/ablations.md).
ABLATIONS = {"hydiscgan-no-adv": {"lambda-adv": 0.0},
             "hydiscgan-no-contrastive": {"lambda-contrastive": 0.0},
             "hydiscgan-no-recon": {"lambda-recon": 0.0},
             "hydiscgan-no-adv-msa": {"lambda-adv-msa": 0.0},
             "hydiscgan-frozen-g": {"ablation": "frozen-generator"},
             "hydiscgan-zero-fakes": {"ablation": "zero-fakes"},
             "hydiscgan-no-align": {"rounds-align": 0}}
# HyDiscGAN's inference-time choices other than z = 0 (run-config inference).
INFERENCES = {"hydiscgan-mean-pred": {"inference": "mean-pred:10"},
              "hydiscgan-mean-fake": {"inference": "mean-fake:10"}}
METHODS = ("text-only", "hydiscgan", *ABLATIONS, *INFERENCES, "hydiscgan-server-msa", "hydiscgan-float16",
           "hydiscgan-server-msa-float16", "hydiscgan-server-msa-zero-fakes",
           "hydiscgan-secaggplus", "hydiscgan-central", "distill", "multitask", "fedavg-multimodal",
           "central-multimodal")
# What a bench without --methods runs: HyDiscGAN against its baselines; ablations and variants on request.
DEFAULT_METHODS = ("text-only", "hydiscgan", "hydiscgan-central", "fedavg-multimodal", "central-multimodal")
FEDERATED_VARIANTS = {"hydiscgan": {"method": "hydiscgan"},
                      **{name: {"method": "hydiscgan", **keys} for name, keys in {**ABLATIONS, **INFERENCES}.items()},
                      "hydiscgan-server-msa": {"method": "hydiscgan", "msa-site": "server"},
                      "hydiscgan-float16": {"method": "hydiscgan", "transport-dtype": "float16"},
                      # The cheapest recipe for a client: stage 1 only, sent in half precision.
                      "hydiscgan-server-msa-float16": {"method": "hydiscgan", "msa-site": "server",
                                                       "transport-dtype": "float16"},
                      # Does the server-side stage gain through G's fakes? The same schedule with M fed zeros.
                      "hydiscgan-server-msa-zero-fakes": {"method": "hydiscgan", "msa-site": "server",
                                                          "ablation": "zero-fakes"},
                      "hydiscgan-secaggplus": {"method": "hydiscgan", "secure-aggregation": "secaggplus"},
                      "distill": {"method": "distill"},
                      "multitask": {"method": "multitask"},
                      "fedavg-multimodal": {"method": "fedavg-multimodal"}}
FEDERATED_METHODS = tuple(FEDERATED_VARIANTS)
METRIC_COLUMNS = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7", "mae", "corr", "acc2", "f1")
MISALIGN_KEYS = ("misalign-rate", "misalign-shift")  # simulated misalignment (hydiscgan_fl.data.misalign)
# Per client: mean over rounds, and the whole run (summed over the client's rounds, mean over clients).
COST_COLUMNS = ("client_bytes_up_per_round", "client_bytes_down_per_round", "client_train_s_per_round",
                "client_bytes_per_run", "client_train_s_per_run")
COLUMNS = ("dataset", "method", "model", "seed", *METRIC_COLUMNS, "selected_step", "speaker_attack_acc",
           "speaker_attack_chance", *COST_COLUMNS, "wall_s")
# Compared with text-only of the same model seed by seed in summary.md (those present in the table).
PAIRED_COLUMNS = ("acc2", "f1", "mae", "corr")
REFERENCE = "text-only"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="benchmark HyDiscGAN against text-only, central and multimodal baselines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=("sentiment", "affect"), default="sentiment",
                        help="sentiment (this help) or affect: the recurrent affect models, central and federated "
                             "(hydiscgan_fl.orchestration.affect_bench; default: %(default)s)")
    parser.add_argument("--affect-models", type=_affect_model_list, default=tuple(AFFECT_MODELS.entries),
                        help="--task affect: comma-separated affect-model names (default: all)")
    parser.add_argument("--aggregation", default="mean",
                        help="--task affect: the federated runs' aggregation rule (default: %(default)s, unweighted)")
    parser.add_argument("--dataset", default="mosi-bclstm",
                        help="mosi-bclstm, synthetic or mmsa:<path to .pkl>; with --task affect affect-synthetic "
                             "(the default there) or openface:<dir> (default: %(default)s)")
    parser.add_argument("--data-dir", default="", help="folder holding mosi-bclstm/ (default: the checkout's data/)")
    parser.add_argument("--methods", type=_method_list, default=DEFAULT_METHODS,
                        help=f"comma-separated subset of {','.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})")
    parser.add_argument("--msa-models", type=msa_model_list, default=(HyDiscGANConfig().msa_model,),
                        help="comma-separated MSA models (run-config msa-model: registry names such as "
                             f"{','.join(MSA_MODELS.entries)}, or 'package.module:NAME'); every method runs with "
                             "each (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="run seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder (default: %(default)s)")
    parser.add_argument("--num-clients", type=int, default=8,
                        help="simulated SuperNodes of the federated methods (default: %(default)s)")
    add_schedule_arguments(parser)
    parser.add_argument("--misalign-rate", type=float, default=0.0,
                        help="run-config misalign-rate: share of audio/visual steps dropped (default: %(default)s)")
    parser.add_argument("--misalign-shift", type=int, default=0,
                        help="run-config misalign-shift: largest roll of audio/visual steps (default: %(default)s)")
    parser.add_argument("--missing", type=_missing_rates, default=None, metavar="RATES",
                        help="run the missing-modality grid instead (hydiscgan_fl.orchestration.missing_bench): "
                             "comma-separated missing rates, e.g. 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7; --msa-models' first "
                             "model is that of hydiscgan-central and text-only")
    parser.add_argument("--missing-methods", type=_missing_method_list, default=MISSING_METHODS, metavar="METHODS",
                        help=f"with --missing: comma-separated subset of {','.join(MISSING_METHODS)} (default: all)")
    parser.add_argument("--set", type=_assignment, action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="a run-config key for every run of the benchmark (and of the --missing grid), e.g. "
                             "--set fsrf-lambda-distill=3; repeatable; values as in --run-config (TOML), bare words "
                             "are strings; the keys the benchmark sets itself are refused")
    parser.set_defaults(handler=run)


def _names_from(choices: Collection[str], what: str):
    """An argparse type: a comma-separated, de-duplicated list of names from `choices` (read when parsing, so a
    registry's live entries work; `what` names them in the error)."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {unknown}; choose from {','.join(choices)}")
        return names
    return parse


_method_list = _names_from(METHODS, "method")
_missing_method_list = _names_from(MISSING_METHODS, "grid method")
_affect_model_list = _names_from(AFFECT_MODELS.entries, "affect model")


# run-config keys that the benchmark sets itself (its own options, each method, each seed and run directory)
BENCH_KEYS = ("dataset", "data-dir", "seed", "msa-model", "method", "output-dir", "missing-rate", *SCHEDULE_KEYS,
              "misalign-rate", "misalign-shift")


def _assignment(text: str) -> tuple[str, Any]:
    """`--set KEY=VALUE`: the value read as a TOML value (3, 0.5, true, "x"), or as a string if it is not one."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    if key in BENCH_KEYS:
        raise argparse.ArgumentTypeError(f"--set {key}: the benchmark sets {key} itself (use its own option)")
    try:
        return key, tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        return key, value.strip()


def _missing_rates(text: str) -> tuple[float, ...]:
    try:
        return parse_rates(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def msa_model_list(text: str) -> tuple[str, ...]:
    models = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not models:
        raise argparse.ArgumentTypeError("name at least one MSA model")
    for model in models:
        try:
            HyDiscGANConfig.from_run_config({"msa-model": model})
            MSA_MODELS.get(model)
        except (ConfigError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return models


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    if args.task == "affect":
        return run_affect(args, out)
    if args.missing is not None:
        return run_missing(args, out)
    try:
        base = _base_config(args)
        if base.dataset.startswith("partitions:"):
            raise ConfigError("--dataset must name a full dataset (audio/visual included), not a partitions folder")
        if args.seeds < 1 or args.num_clients < 1:
            raise ConfigError("--seeds and --num-clients must be >= 1")
        out.mkdir(parents=True, exist_ok=True)
        _check_settings(out, {"dataset": base.dataset, "num-clients": args.num_clients,
                              **{key: base.to_run_config()[key] for key in SCHEDULE_KEYS},
                              # only when set, so that folders written before these keys existed still resume
                              **{key: base.to_run_config()[key] for key in MISALIGN_KEYS if base.to_run_config()[key]},
                              **({"set": dict(args.overrides)} if args.overrides else {})})
        check_header(out / "summary.csv", COLUMNS)
        _check_combinations(base, args.methods, args.msa_models)
    except (ConfigError, DataError, OSError, ValueError) as err:
        print(f"hydiscgan bench: error: {err}", file=sys.stderr)
        return 2
    done = {(row["method"], row["model"], int(row["seed"])) for row in read_rows(out / "summary.csv")}
    federation: LocalFederation | None = None
    try:
        with benchmark_process():
            for seed in range(args.seeds):
                for model in args.msa_models:
                    for method in args.methods:
                        label = f"{method} {model} seed {seed}"
                        if (method, model, seed) in done:
                            print(f"[{label}] already in summary.csv, skipped", flush=True)
                            continue
                        cfg = base.model_copy(update={"seed": seed, "msa_model": model})
                        started = time.time()
                        if method in FEDERATED_METHODS:
                            federation = federation or LocalFederation()
                            row = federated_row(federation, method, cfg, args.num_clients, out, label,
                                                dict(args.overrides))
                        else:
                            row = central_row(method, cfg, label)
                        row.update({"dataset": base.dataset, "method": method, "model": model, "seed": seed,
                                    "wall_s": time.time() - started})
                        append_row(out / "summary.csv", row, COLUMNS)
                        print(f"[{label}] done in {row['wall_s']:.0f} s: acc2={row['acc2']:.4f} speaker attack="
                              f"{row['speaker_attack_acc']:.3f} (chance {row['speaker_attack_chance']:.3f})",
                              flush=True)
            report = write_report(out, raw_feature_attack(base), model_parameters(base, args.msa_models))
    except FederatedRunError as err:
        print(f"hydiscgan bench: a federated run failed: {err}", file=sys.stderr)
        return 1
    finally:
        if federation is not None:
            federation.close()
    print(report)
    print(f"results in {out}")
    return 0


def run_affect(args: argparse.Namespace, out: Path) -> int:
    try:
        if args.overrides:
            raise ConfigError("--set applies to the sentiment benchmark and the --missing grid, not to --task affect")
        base = affect_config(args)
        if args.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
    except (ConfigError, DataError) as err:
        print(f"hydiscgan bench: error: {err}", file=sys.stderr)
        return 2
    started = time.time()
    try:
        with benchmark_process():
            report = run_affect_bench(base, args.affect_models, args.seeds, out)
    except FederatedRunError as err:
        print(f"hydiscgan bench: a federated run failed: {err}", file=sys.stderr)
        return 1
    print(report)
    print(f"results in {out} ({time.time() - started:.0f} s)")
    return 0


def run_missing(args: argparse.Namespace, out: Path) -> int:
    started = time.time()
    try:
        base = _base_config(args)
        if args.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        with benchmark_process():
            report = run_missing_bench(base, args.missing, args.msa_models[0], args.seeds, out, args.missing_methods,
                                       dict(args.overrides))
    except (ConfigError, DataError, ValueError) as err:
        print(f"hydiscgan bench: error: {err}", file=sys.stderr)
        return 2
    print(report)
    print(f"results in {out} ({time.time() - started:.0f} s)")
    return 0


def _base_config(args: argparse.Namespace) -> HyDiscGANConfig:
    """The validated run config shared by every method and seed (dataset, data dir, schedule)."""
    dataset = args.dataset
    if dataset.startswith("mmsa:"):
        dataset = "mmsa:" + str(Path(dataset[5:]).expanduser().resolve())
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else ""
    return HyDiscGANConfig.from_run_config({"dataset": dataset, "data-dir": data_dir, **schedule_overrides(args),
                                            "misalign-rate": args.misalign_rate, "misalign-shift": args.misalign_shift,
                                            **dict(args.overrides)})


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """One output folder holds one dataset and schedule, so that resumed rows are comparable."""
    path = out / "bench.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            raise ConfigError(f"{out} holds a benchmark with other settings {previous}; these are {settings}. "
                              "Use another --out.")
    else:
        path.write_text(json.dumps(settings, indent=2) + "\n")


def _check_combinations(base: HyDiscGANConfig, methods: tuple[str, ...], models: tuple[str, ...]) -> None:
    """Build every federated method's models with every model before the first run, so that a combination
    that cannot run (e.g. multitask with a family whose text-only model exposes no features) fails at start,
    not hours into the benchmark."""
    dims = base.load_dataset().dims
    for model in models:
        for method in (m for m in methods if m in FEDERATED_VARIANTS):
            cfg = HyDiscGANConfig.from_run_config({**base.to_run_config(), "msa-model": model,
                                                   **FEDERATED_VARIANTS[method]})
            try:
                build_federated_models(dims, cfg, 0)
            except ValueError as err:
                raise ConfigError(f"{method} cannot run with msa-model {model}: {err}") from None


def model_parameters(cfg: HyDiscGANConfig, models: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Trainable parameters of each model's networks (G, M, the text-only model, a client's E and D)."""
    dims = cfg.load_dataset().dims
    return {model: parameter_counts(dims, cfg.model_copy(update={"msa_model": model})) for model in models}


# -- one row ------------------------------------------------------------------------------------------
def central_row(method: str, cfg: HyDiscGANConfig, label: str) -> dict[str, Any]:
    def progress(unit: str, done: int, total: int, metrics: dict[str, float]) -> None:
        print(f"[{label}] {unit} {done}/{total} test acc2={metrics['acc2']:.4f}", flush=True)

    result = run_central(method, cfg, progress)
    return {**result.metrics, "selected_step": result.selected_step, **_attack(result.inference_features, cfg)}


class RoundProgress:
    """Turns a federated run's server log into `[method seed s] round r/R (stage) test acc2=x` lines.

    The log is re-read while it grows, so a line may come twice or cut short: each round is printed once,
    from a complete line of the ServerApp's round record (server_app.round_recorder, ending in ';')."""

    _ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
    _RECORDED = re.compile(r"round \d+ \(([\w-]+)\) recorded: (?:.*[ ,])?acc2=([-+0-9.eE]+|nan)[,;]")

    def __init__(self, label: str):
        self.label = label
        self.round, self.total, self.stage, self.printed = 0, 0, "", 0

    def __call__(self, line: str) -> None:
        line = _ANSI.sub("", line)
        if match := self._ROUND.search(line):
            self.round, self.total = int(match[1]), int(match[2])
        elif self.round > self.printed and (match := self._RECORDED.search(line)):
            self.printed, self.stage = self.round, match[1]
            print(f"[{self.label}] round {self.round}/{self.total} ({self.stage}) test acc2={float(match[2]):.4f}",
                  flush=True)


def federated_row(federation: LocalFederation, method: str, cfg: HyDiscGANConfig, num_clients: int, out: Path,
                  label: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One federated run; `overrides`: the --set run-config keys."""
    run_config = {key: value for key, value in cfg.to_run_config().items() if key in
                  ("dataset", "data-dir", "seed", "msa-model", *SCHEDULE_KEYS, *MISALIGN_KEYS, *(overrides or {}))}
    run_config.update({**FEDERATED_VARIANTS[method],
                       "output-dir": str(run_group(out, method, cfg.msa_model, cfg.seed))})
    outcome = federation.run(run_config, num_clients, progress=RoundProgress(label))
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    train = _train_tensors(cfg)
    variant = FEDERATED_VARIANTS[method]
    if variant["method"] == "fedavg-multimodal":
        features = real_features(train)
    elif variant["method"] == "hydiscgan" and variant.get("ablation") != "zero-fakes":  # G of the selected round
        checkpoint = torch.load(outcome.run_dir / "checkpoint.pt", weights_only=True)
        shared = build_shared_models(checkpoint["dims"], HyDiscGANConfig.from_run_config(checkpoint["config"]), 0)
        shared.generator.load_state_dict(checkpoint["generator"])
        features = generated_features(shared.generator.to(train.text.device), train.text)
    else:  # M reads text only (and zeros): distill, multitask, zero-fakes
        features = train.text.cpu().numpy()
    return {**{key: summary[key] for key in METRIC_COLUMNS if key in summary},
            "selected_step": summary["selected_round"], **_attack(features, cfg), **client_cost(outcome.run_dir)}


def run_group(out: Path, method: str, model: str, seed: int) -> Path:
    """Where the run directories of one federated method, model and seed go."""
    return out / "runs" / f"{method}-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}-seed{seed}"


def _train_tensors(cfg: HyDiscGANConfig) -> UtteranceTensors:
    dataset = cfg.load_dataset()
    return to_tensors(dataset.split_subset("train"), pick_device(), tensor_view(cfg))


def _attack(features: np.ndarray, cfg: HyDiscGANConfig) -> dict[str, float]:
    """Speaker identification from what a method consumes at inference, on the training speakers'
    utterances (attack-trained on some of each speaker's utterances, tested on the others)."""
    speakers = cfg.load_dataset().split_subset("train").speakers
    result = speaker_attack(features, speakers, seed=cfg.seed)
    return {key: result[key] for key in ("speaker_attack_acc", "speaker_attack_chance")}


def raw_feature_attack(cfg: HyDiscGANConfig) -> dict[str, Any]:
    """The attack on raw (not standardised) audio‖visual of the training utterances, seed 0: a reference for
    how much speaker identity the clients' recordings carry before per-speaker standardisation."""
    train = cfg.load_dataset().split_subset("train")
    raw = [train.audio, train.visual]  # sequences: their masked means (unstandardised)
    raw = [masked_mean(values, train.lengths.get(name)) for name, values in zip(("audio", "visual"), raw)]
    return speaker_attack(np.concatenate(raw, axis=1), train.speakers, seed=0)


def client_cost(run_dir: Path) -> dict[str, float]:
    """Per client: the mean over rounds of bytes up/down and train seconds (metrics.csv; a round without
    client work counts as 0), and the whole run's bytes up + down and train seconds, summed over each
    client's rounds in clients.csv and averaged over clients."""
    rounds = pd.read_csv(run_dir / "metrics.csv")
    if not (run_dir / "clients.csv").exists():  # msa-site "server" with no alignment round: no client work
        return {column: 0.0 for column in COST_COLUMNS}
    per_client = pd.read_csv(run_dir / "clients.csv").groupby("node_id")
    return {
        "client_bytes_up_per_round": float(rounds["bytes_up_per_client"].mean()),
        "client_bytes_down_per_round": float(rounds["bytes_down_per_client"].mean()),
        "client_train_s_per_round": float(rounds["client_train_s_mean"].mean()),
        "client_bytes_per_run": float((per_client["bytes_up"].sum() + per_client["bytes_down"].sum()).mean()),
        "client_train_s_per_run": float(per_client["train_s"].sum().mean()),
    }


# -- summary.md and plots -----------------------------------------------------------------------------
def groups(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The (method, model) pairs in the table: models in order of appearance, methods in METHODS order."""
    models = list(dict.fromkeys(table["model"]))
    present = set(zip(table["method"], table["model"]))
    return [(method, model) for model in models for method in METHODS if (method, model) in present]


def rows_of(table: pd.DataFrame, method: str, model: str) -> pd.DataFrame:
    return table[(table["method"] == method) & (table["model"] == model)]


def write_report(out: Path, raw_attack: dict[str, Any], parameters: dict[str, dict[str, int]]) -> str:
    """summary.md (parameter counts per model; mean ± std and 95% interval over seeds per method and model;
    paired differences to text-only of the same model) and the plots, from everything in summary.csv."""
    table = pd.read_csv(out / "summary.csv", dtype={"model": str})
    pairs = groups(table)
    shown = [c for c in (*METRIC_COLUMNS, "speaker_attack_acc", "speaker_attack_chance", *COST_COLUMNS, "wall_s")
             if table[c].notna().any()]
    settings = json.loads((out / "bench.json").read_text())
    lines = [
        f"# HyDiscGAN benchmark: {settings['dataset']}",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}",
        f"- seeds: {', '.join(str(s) for s in sorted(set(table['seed'])))}; "
        f"schedule: {settings['rounds-align']} alignment + {settings['rounds-msa']} MSA rounds x "
        f"{settings['local-epochs']} local epochs; federated methods on {settings['num-clients']} simulated "
        "clients (speaker partition)",
        "- test metrics at each run's round or epoch group that is best on the validation speakers "
        "(acc2 for binary labels, mae for continuous ones); validation speakers (valid-fraction, valid-from: "
        "held-out speakers for mosi-bclstm, training speakers otherwise, MMSA's own valid split) are on no client",
        "- mean ± sample std over seeds [95% Student-t interval of the mean] (n = number of seeds); client_*_per_round "
        "per client and round, client_*_per_run per client over the whole run (bytes up + down)",
        "",
        *parameter_lines(parameters),
        "",
        "| method | model | n | " + " | ".join(shown) + " |",
        "|---|---|---|" + "---|" * len(shown),
    ]
    for method, model in pairs:
        rows = rows_of(table, method, model)
        cells = [_mean_std(rows[c], c) for c in shown]
        lines.append(f"| {method} | {model} | {len(rows)} | " + " | ".join(cells) + " |")
    # which ingredient carries HyDiscGAN's gain: each ablation and inference choice against the full recipe
    ablations = paired_lines(table, pairs, "hydiscgan", (*ABLATIONS, *INFERENCES))
    lines += ["", *paired_lines(table, pairs), *(["", *ablations] if ablations else []),
              *cost_ratio_lines(table, pairs)]
    lines += ["", *NOTES,
              f"- reference: the same attack on the raw, unstandardised audio‖visual of the training utterances "
              f"reaches {raw_attack['speaker_attack_acc']:.4f} (chance {raw_attack['speaker_attack_chance']:.4f}, "
              f"{raw_attack['num_speakers']} speakers, seed 0): the clients' recordings identify their speakers.",
              "", "![metrics](metrics.png)", "", "![test acc2 per round](rounds.png)", ""]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text)
    plot_metrics(table, pairs, out / "metrics.png")
    plot_rounds(table, out, settings, out / "rounds.png")
    return text


def parameter_lines(parameters: dict[str, dict[str, int]]) -> list[str]:
    """Trainable parameters of the networks each model builds (registry.parameter_counts)."""
    if not parameters:
        return []
    names = list(next(iter(parameters.values())))
    return ["Trainable parameters per model (G and M are federated; client_private: a client's E and D, never "
            "sent):", "", "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            *(f"| {model} | " + " | ".join(f"{counts[name]:,}" for name in names) + " |"
              for model, counts in parameters.items())]


def paired_lines(table: pd.DataFrame, pairs: list[tuple[str, str]], reference: str = REFERENCE,
                 methods: tuple[str, ...] | None = None) -> list[str]:
    """The table of each method's (of `methods`, default all) difference to `reference` of the same model on
    the same seed, with its 95% t-interval and a reading that calls a method better or worse only when the
    interval excludes zero."""
    columns = [c for c in PAIRED_COLUMNS if table[c].notna().any()]
    others = [(method, model) for method, model in pairs if method != reference and (reference, model) in pairs
              and (methods is None or method in methods)]
    if not others or not columns:
        return []

    def by_seed(method: str, model: str, column: str) -> dict[int, float]:
        rows = rows_of(table, method, model)
        rows = rows[rows[column].notna()]
        return dict(zip(rows["seed"].astype(int), rows[column].astype(float)))

    lines = [f"Paired difference to {reference} of the same model (method - {reference}, same seed): mean "
             "[95% t-interval] (n); 'better'/'worse' only where the interval excludes zero (for mae lower is "
             "better).", "",
             "| method | model | " + " | ".join(f"Δ {c}" for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for method, model in others:
        cells = []
        for column in columns:
            diff = paired_difference(by_seed(method, model, column), by_seed(reference, model, column))
            cells.append(f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}] (n={diff['n']}) "
                         f"{_reading(diff, column)}")
        lines.append(f"| {method} | {model} | " + " | ".join(cells) + " |")
    return lines


def cost_ratio_lines(table: pd.DataFrame, pairs: list[tuple[str, str]]) -> list[str]:
    """Each HyDiscGAN variant's whole-run client bytes (up + down) as a share of fedavg-multimodal's with the
    same model."""
    if not table["client_bytes_per_run"].notna().any():
        return []
    mean_bytes = table.groupby(["method", "model"])["client_bytes_per_run"].mean()
    ratios = [f"{method} ({model}) {mean_bytes[(method, model)] / mean_bytes[('fedavg-multimodal', model)]:.2f}"
              for method, model in pairs
              if method.startswith("hydiscgan") and method in FEDERATED_VARIANTS and ("fedavg-multimodal", model) in pairs
              and pd.notna(mean_bytes.get((method, model)))]
    return ["", "Client bytes per run (up + down, mean over seeds) relative to fedavg-multimodal of the same model: "
            + ", ".join(ratios) + "."] if ratios else []


def _reading(diff: dict[str, Any], column: str) -> str:
    if not diff["excludes_zero"]:
        return "no difference shown"
    higher = diff["mean"] > 0
    return "better" if higher == HIGHER_IS_BETTER.get(column, True) else "worse"


NOTES = (
    "Notes:",
    "- acc2/f1: binary labels are scored directly; for continuous labels they are the non0 versions "
    "(negative vs positive, zeros excluded), as in recent MSA papers; has0/non0, acc5/acc7, mae and corr "
    "follow MMSA's metricsTop. Regression columns are empty on binary labels.",
    "- text-only, the hydiscgan methods, distill and multitask use only text at test time; fedavg-multimodal "
    "and central-multimodal need the real audio/visual of the test utterances (they violate the privacy goal).",
    "- speaker_attack_acc: a speaker-identification MLP trained on what the method consumes at inference "
    "(text; G(t, 0) = fake audio‖visual; or the real audio‖visual), on the training speakers' utterances, "
    "tested on held-out utterances of the same speakers; speaker_attack_chance is the majority-class rate. "
    "Real features are standardised per speaker, which removes each speaker's mean, so the attack on them is "
    "far weaker than on raw features (see the reference below); values below chance are an artefact of that "
    "centring (a speaker's attack-train and held-out utterances then have opposite means).",
    "- client cost: federated methods only, from each run's metrics.csv under runs/.",
)


def _mean_std(values: pd.Series, column: str) -> str:
    summary = mean_interval(values.dropna().astype(float).tolist())
    if summary["n"] == 0:
        return ""
    mean, std = summary["mean"], summary["std"] if summary["n"] > 1 else 0.0
    if column.startswith("client_bytes"):
        return f"{mean / 1e3:.1f} kB ± {std / 1e3:.1f}"
    if column.endswith("_s") or "_s_per_" in column:
        return f"{mean:.1f} ± {std:.1f}"
    interval = f" [{summary['low']:.4f}, {summary['high']:.4f}]" if summary["n"] > 1 else ""
    return f"{mean:.4f} ± {std:.4f}{interval}"


def _label(method: str, model: str, table: pd.DataFrame) -> str:
    return method if table["model"].nunique() == 1 else f"{method} ({model})"


def plot_metrics(table: pd.DataFrame, pairs: list[tuple[str, str]], target: Path) -> None:
    """Mean with error bars (std over seeds) per method and model, one panel per metric; seeds as small dots."""
    plt = pyplot()
    panels = [c for c in ("acc2", "f1", "mae", "corr", "acc7", "speaker_attack_acc") if table[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, column in zip(axes[0], panels, strict=True):
        for x, (method, model) in enumerate(pairs):
            values = rows_of(table, method, model)[column].dropna()
            color = f"C{x % 10}"
            ax.scatter([x] * len(values), values, s=8, color=color, alpha=0.5)
            ax.errorbar(x, values.mean(), yerr=values.std() if len(values) > 1 else 0.0, fmt="o", capsize=4,
                        color=color)
        if column == "speaker_attack_acc":
            ax.axhline(table["speaker_attack_chance"].mean(), color="k", linestyle="--", linewidth=1, label="chance")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(pairs)), [_label(method, model, table) for method, model in pairs], rotation=40,
                      ha="right", fontsize=7)
        ax.set_title(column)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def round_curves(out: Path, method: str, model: str, seeds: list[int]) -> pd.DataFrame:
    """test_acc2 per round (columns: seeds) from the newest finished run of each seed under runs/."""
    curves = {}
    for seed in seeds:
        finished = sorted(p.parent for p in run_group(out, method, model, seed).glob("*/summary.json"))
        if finished:
            curves[seed] = pd.read_csv(finished[-1] / "metrics.csv").set_index("round")["test_acc2"]
    return pd.DataFrame(curves)


def plot_rounds(table: pd.DataFrame, out: Path, settings: dict[str, Any], target: Path) -> None:
    """Test acc2 per round of the federated methods (mean ± std over seeds); central methods' validation-selected
    acc2 dashed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for number, (method, model) in enumerate(groups(table)):
        rows, color, label = rows_of(table, method, model), f"C{number % 10}", _label(method, model, table)
        if method in FEDERATED_METHODS:
            curves = round_curves(out, method, model, sorted(rows["seed"]))
            if curves.empty:
                continue
            mean, std = curves.mean(axis=1), curves.std(axis=1).fillna(0.0)
            ax.plot(mean.index, mean, marker=".", color=color, label=label)
            ax.fill_between(mean.index, mean - std, mean + std, color=color, alpha=0.2)
        else:
            ax.axhline(rows["acc2"].mean(), color=color, linestyle="--", linewidth=1, label=f"{label} (selected)")
    if "hydiscgan" in set(table["method"]) and settings["rounds-align"]:
        ax.axvline(settings["rounds-align"] + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(settings["rounds-align"] + 0.7, ax.get_ylim()[0], "hydiscgan: MSA stage ->", fontsize=7,
                va="bottom", color="grey")
    ax.set_xlabel("round")
    ax.set_ylabel("test acc2")
    ax.set_title(f"{settings['dataset']}: test acc2 per round")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
