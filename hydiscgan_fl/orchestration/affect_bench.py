"""`hydiscgan bench --task affect`: the recurrent affect models, central against federated.

    hydiscgan bench --task affect --affect-models rnn,lstm,gru,bilstm,bigru --seeds 5 --out DIR

For every model (run-config affect-model), method and seed:

- central    the model trained on every training participant's windows in one place, rounds-msa x
             local-epochs epochs, evaluated every local-epochs epochs (hydiscgan_fl.training.affect);
- federated  `flwr run` with one SuperNode per training participant and the same budget (rounds-msa rounds
             of local-epochs epochs), aggregated by --aggregation (default "mean": unweighted, the paper's).

Both report the test CCC (valence, arousal, their mean) at the step best on the validation participants.
Writes DIR/summary.csv (one row per method, model and seed; rows already there are skipped, so an
interrupted benchmark resumes) and DIR/summary.md: mean ± std and 95% interval over seeds, the paired
difference federated - central per model, and the identity attack (level 1 measured): participant
identification from raw AU windows, per-participant z-scored AU windows, the model's input windows and
the audio stream, beside its chance level.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data.affect import AffectWindows
from hydiscgan_fl.metrics import paired_difference
from hydiscgan_fl.orchestration.bench_process import machine
from hydiscgan_fl.orchestration.flwr_runner import LocalFederation
from hydiscgan_fl.orchestration.result_table import append_row, difference_cell, interval_cell, read_rows
from hydiscgan_fl.privacy.attacks import speaker_attack
from hydiscgan_fl.training import pick_device
from hydiscgan_fl.training.affect import run_affect_central

METHODS = ("central", "federated")
METRICS = ("ccc_valence", "ccc_arousal", "ccc_mean", "mse")
COLUMNS = ("dataset", "method", "model", "seed", *METRICS, "selected_step", "wall_s")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class AffectRoundProgress:
    """`[label] round r/R test ccc_mean=x` from the federated run's log (server_app.round_recorder lines)."""

    _RECORDED = re.compile(r"round (\d+) \(affect\) recorded: (?:.*[ ,])?ccc_mean=([-+0-9.eE]+|nan)[,;]")

    def __init__(self, label: str, total: int):
        self.label, self.total, self.printed = label, total, 0

    def __call__(self, line: str) -> None:
        match = self._RECORDED.search(_ANSI.sub("", line))
        if match and int(match[1]) > self.printed:
            self.printed = int(match[1])
            print(f"[{self.label}] round {self.printed}/{self.total} test ccc_mean={float(match[2]):.4f}", flush=True)


def run_affect_bench(base: HyDiscGANConfig, models: tuple[str, ...], seeds: int, out: Path) -> str:
    """Every model x method x seed not yet in DIR/summary.csv, then summary.md; returns its text."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in base.to_run_config().items() if key not in ("seed", "affect-model")}
    settings_path = out / "bench.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{out} holds a benchmark with other settings; use another --out")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    done = {(row["method"], row["model"], int(row["seed"])) for row in read_rows(out / "summary.csv")}
    federation: LocalFederation | None = None
    try:
        for seed in range(seeds):
            for model in models:
                cfg = base.model_copy(update={"seed": seed, "affect_model": model})
                for method in METHODS:
                    label = f"{method} {model} seed {seed}"
                    if (method, model, seed) in done:
                        print(f"[{label}] already in summary.csv, skipped", flush=True)
                        continue
                    started = time.time()
                    if method == "central":
                        row = central_row(cfg, label)
                    else:
                        federation = federation or LocalFederation()
                        row = federated_row(federation, cfg, out, label)
                    row.update({"dataset": cfg.dataset, "method": method, "model": model, "seed": seed,
                                "wall_s": time.time() - started})
                    append_row(out / "summary.csv", row, COLUMNS)
                    print(f"[{label}] done in {row['wall_s']:.0f} s: CCC valence {row['ccc_valence']:.3f}, "
                          f"arousal {row['ccc_arousal']:.3f}", flush=True)
    finally:
        if federation is not None:
            federation.close()
    return write_affect_report(out, identity_attack(base.model_copy(update={"seed": 0})))


def central_row(cfg: HyDiscGANConfig, label: str) -> dict[str, Any]:
    def progress(step: int, total: int, metrics: dict[str, float]) -> None:
        print(f"[{label}] epoch group {step}/{total} test ccc_mean={metrics['ccc_mean']:.4f}", flush=True)

    result = run_affect_central(cfg, pick_device(), progress)
    return {**result.metrics, "selected_step": result.selected_step}


def federated_row(federation: LocalFederation, cfg: HyDiscGANConfig, out: Path, label: str) -> dict[str, Any]:
    participants = len(cfg.load_affect().split_subset("train").participant_list())
    run_dir = out / "runs" / f"federated-{cfg.affect_model}-seed{cfg.seed}"
    run_config = {**cfg.to_run_config(), "output-dir": str(run_dir)}
    outcome = federation.run(run_config, participants, progress=AffectRoundProgress(label, cfg.rounds_msa))
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    return {**{key: summary[key] for key in METRICS}, "selected_step": summary["selected_round"]}


# -- level 1 measured: who is behind an AU window? ----------------------------------------------------
def window_statistics(frames: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per window and channel the mean and std over valid frames: (N, T, D) -> (N, 2D)."""
    weights = valid[..., None].astype(np.float64)
    count = np.maximum(weights.sum(axis=1), 1.0)
    mean = (frames * weights).sum(axis=1) / count
    std = np.sqrt(((frames - mean[:, None]) ** 2 * weights).sum(axis=1) / count)
    return np.concatenate([mean, std], axis=1)


def identity_views(windows: AffectWindows) -> dict[str, np.ndarray]:
    """What an attacker may see of a window: raw AUs (window statistics), per-participant z-scored AUs (the
    same statistics), the model's input itself (the z-scored frames, flattened) and the audio stream."""
    views = {"raw AU (window mean, std)": window_statistics(windows.raw_au, windows.valid),
             "z-scored AU (window mean, std)": window_statistics(windows.au, windows.valid),
             "model input (z-scored AU frames)": windows.au.reshape(len(windows), -1)}
    if windows.raw_audio.shape[2]:
        every = np.ones(windows.valid.shape, bool)
        views["raw audio (window mean, std)"] = window_statistics(windows.raw_audio, every)
        views["z-scored audio (window mean, std)"] = window_statistics(windows.audio, every)
    return views


def identity_attack(cfg: HyDiscGANConfig) -> dict[str, dict[str, Any]]:
    """The speaker attack (hydiscgan_fl.privacy.attacks) on every participant's windows, per view: the
    attacker knows some windows of each participant and names the participant of the others."""
    windows = cfg.load_affect()
    return {name: speaker_attack(features, windows.participants, seed=cfg.seed)
            for name, features in identity_views(windows).items()}


# -- summary.md -------------------------------------------------------------------------------------------
def write_affect_report(out: Path, attack: dict[str, dict[str, Any]]) -> str:
    table = pd.read_csv(out / "summary.csv", dtype={"model": str})
    models = list(dict.fromkeys(table["model"]))
    lines = [f"# Affect benchmark ({table['dataset'].iloc[0]})", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}",
             f"- settings: {_settings_line(json.loads((out / 'bench.json').read_text()))}", "",
             "Test CCC at the step best on the validation participants: mean ± std over seeds [95% interval].", "",
             "| model | method | seeds | CCC valence | CCC arousal | CCC mean | wall s |",
             "|---|---|---|---|---|---|---|"]
    for model in models:
        for method in METHODS:
            rows = table[(table["model"] == model) & (table["method"] == method)]
            if len(rows):
                lines.append(f"| {model} | {method} | {len(rows)} | "
                             + " | ".join(interval_cell(rows[c].tolist()) for c in ("ccc_valence", "ccc_arousal", "ccc_mean"))
                             + f" | {rows['wall_s'].mean():.0f} |")
    lines += ["", "Paired by seed, federated - central [95% interval]:", "",
              "| model | CCC valence | CCC arousal | CCC mean | seeds |", "|---|---|---|---|---|"]
    for model in models:
        diffs = [paired_difference(*(_by_seed(table, model, method, column) for method in ("federated", "central")))
                 for column in ("ccc_valence", "ccc_arousal", "ccc_mean")]
        if diffs[0]["n"]:
            lines.append(f"| {model} | " + " | ".join(difference_cell(d) for d in diffs) + f" | {diffs[0]['n']} |")
    lines += ["", "Identity attack (participant identification from one window; seed 0):", "",
              "| what the attacker sees | accuracy | chance |", "|---|---|---|"]
    for name, result in attack.items():
        lines.append(f"| {name} | {result['speaker_attack_acc']:.3f} | {result['speaker_attack_chance']:.3f} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def _by_seed(table: pd.DataFrame, model: str, method: str, column: str) -> dict[int, float]:
    rows = table[(table["model"] == model) & (table["method"] == method)]
    return dict(zip(rows["seed"].astype(int), rows[column].astype(float)))


# The run-config keys that shape an affect run (bench.json keeps all of them, for resume).
SHOWN_SETTINGS = ("dataset", "rounds-msa", "local-epochs", "batch-size", "lr-msa", "weight-decay", "dropout",
                  "aggregation", "valid-fraction", "affect-layers", "affect-hidden", "affect-loss", "affect-window")


def _settings_line(settings: dict[str, Any]) -> str:
    return ", ".join(f"{key}={settings[key]}" for key in SHOWN_SETTINGS if key in settings)



def affect_config(args: argparse.Namespace) -> HyDiscGANConfig:
    """The validated run config of every affect run: dataset and schedule from the command line."""
    overrides = {key: value for key, value in (("rounds-msa", args.rounds_msa), ("local-epochs", args.local_epochs))
                 if value is not None}
    dataset = args.dataset if args.dataset != "mosi-bclstm" else "affect-synthetic"
    return HyDiscGANConfig.from_run_config({"task": "affect", "dataset": dataset, "aggregation": args.aggregation,
                                            "rounds-msa": 10, "local-epochs": 5, **overrides})
