"""`hydiscgan bench --missing RATES`: the missing-modality grid (docs/missing-modalities.md).

    hydiscgan bench --dataset synthetic-seq --missing 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7 --msa-models mlp --seeds 5 --out DIR

For every within-modality missing rate r (run-config missing-rate: each audio/visual step, or a video's
utterance for utterance vectors, missing with probability r at train, validation and test time), method
(METHODS) and seed, one central run (hydiscgan_fl.training.central) whose test metrics are also taken with
only each of the seven non-empty modality subsets present (SUBSETS), at the epoch group or round best on the
validation speakers (all modalities present at rate r):

- fsrf, fsrf-nofact, fsrf-nodistill  M(t, a, v) of that fsrf family member on the real audio/visual, reading
                     the presence mask (central-multimodal);
- fsrf-dropout       the same backbone trained on randomly masked views with the task loss only (plain
                     random modality dropout);
- hydiscgan-central  HyDiscGAN's models and losses on the pooled training data (each modality's D, E and head
                     of G trained on the utterances that hold it), text only at test time;
- text-only          the text-only model (text is never dropped by r, so its rows repeat across r).

The last two use the M of --msa-models (its first entry) and predict from text alone: they score NaN on the
subsets without text, and the same on every subset with it. Every method is central so that the grid is
like for like; HyDiscGAN with missing modalities through Flower is covered by tests/test_missing_modalities.py.

Writes DIR/summary.csv (one row per rate, method, model, seed and subset; a rate, method, model and seed
already there is skipped, so an interrupted grid resumes), DIR/summary.md (per method and subset the mean
over r, mean ± std [95% interval] over seeds, of acc2 and F1, and of MAE, corr and acc7 on continuous labels;
acc2 against r for all modalities and for text alone; paired differences by seed, averaged over r, of each
metric and of the validation metrics) and DIR/missing.png (acc2 against r, a panel per subset).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.metrics import paired_difference
from hydiscgan_fl.orchestration.bench_process import machine
from hydiscgan_fl.orchestration.result_table import (append_row, check_header, difference_cell, interval_cell, pyplot,
                                                     read_rows)
from hydiscgan_fl.orchestration.schedule import SCHEDULE_KEYS
from hydiscgan_fl.training.central import run_central

FSRF_METHODS = ("fsrf", "fsrf-nofact", "fsrf-nodistill", "fsrf-dropout")  # each is also its msa-model
METHODS = (*FSRF_METHODS, "hydiscgan-central", "text-only")
#: test-time modality subsets: name -> the modalities present
SUBSETS = {"tav": ("text", "audio", "visual"), "ta": ("text", "audio"), "tv": ("text", "visual"),
           "av": ("audio", "visual"), "t": ("text",), "a": ("audio",), "v": ("visual",)}
METRICS = ("acc2", "f1", "mae", "corr", "acc7")
VALID_METRICS = ("acc2", "mae")  # also kept on the validation speakers, to choose settings without the test set
COLUMNS = ("dataset", "missing_rate", "method", "model", "seed", "subset", *METRICS,
           *(f"valid_{metric}" for metric in VALID_METRICS), "selected_step", "wall_s")
# (method, reference): the paired differences of the report; the ablations against the dropout backbone and
# the full model, and the head-to-head with what predicts from text alone.
COMPARISONS = (("fsrf", "fsrf-dropout"), ("fsrf-nofact", "fsrf-dropout"), ("fsrf-nodistill", "fsrf-dropout"),
               ("fsrf", "fsrf-nofact"), ("fsrf", "fsrf-nodistill"), ("fsrf", "hydiscgan-central"),
               ("fsrf", "text-only"), ("hydiscgan-central", "text-only"))


def parse_rates(text: str) -> tuple[float, ...]:
    """`--missing 0,0.1,...`: distinct missing rates in [0, 1), in the order given."""
    try:
        rates = tuple(dict.fromkeys(float(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise ValueError(f"--missing takes comma-separated rates such as 0,0.1,0.2, got {text!r}") from None
    if not rates or any(not 0.0 <= rate < 1.0 for rate in rates):
        raise ValueError(f"--missing rates must lie in [0, 1), got {text!r}")
    return rates


def run_missing_bench(base: HyDiscGANConfig, rates: tuple[float, ...], model: str, seeds: int, out: Path,
                      methods: tuple[str, ...] = METHODS, overrides: dict[str, Any] | None = None) -> str:
    """Every rate x method (of `methods`) x seed not yet in DIR/summary.csv, then summary.md and missing.png
    (from every row there); returns the report's text. `overrides`: the run-config keys set in `base` by
    --set (recorded with the folder's settings)."""
    out.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": base.dataset, "model": model, **{key: base.to_run_config()[key] for key in SCHEDULE_KEYS},
                **({"set": overrides} if overrides else {})}
    check_header(out / "summary.csv", COLUMNS)
    settings_path = out / "bench.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{out} holds a missing-modality grid with other settings "
                         f"{json.loads(settings_path.read_text())}; these are {settings}. Use another --out.")
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    done = {(float(row["missing_rate"]), row["method"], int(row["seed"])) for row in read_rows(out / "summary.csv")}
    for seed in range(seeds):
        for rate in rates:
            for method in methods:
                label = f"{method} r={rate:g} seed {seed}"
                if (rate, method, seed) in done:
                    print(f"[{label}] already in summary.csv, skipped", flush=True)
                    continue
                msa_model = method if method in FSRF_METHODS else model
                cfg = HyDiscGANConfig.from_run_config({**base.to_run_config(), "seed": seed, "missing-rate": rate,
                                                       "msa-model": msa_model})
                started = time.time()
                result = run_central("central-multimodal" if method in FSRF_METHODS else method, cfg,
                                     test_subsets=SUBSETS)
                wall = time.time() - started
                for subset in SUBSETS:
                    append_row(out / "summary.csv",
                               {"dataset": base.dataset, "missing_rate": rate, "method": method, "model": msa_model,
                                "seed": seed, "subset": subset, "selected_step": result.selected_step, "wall_s": wall,
                                **{metric: result.metrics.get(f"{metric}@{subset}") for metric in METRICS},
                                **{f"valid_{metric}": result.metrics.get(f"valid_{metric}@{subset}")
                                   for metric in VALID_METRICS}}, COLUMNS)
                print(f"[{label}] done in {wall:.0f} s: acc2 {result.metrics['acc2@tav']:.4f} (all), "
                      f"{result.metrics['acc2@t']:.4f} (text alone)", flush=True)
    return write_missing_report(out)


# -- the report ----------------------------------------------------------------------------------------
def per_seed(table: pd.DataFrame, method: str, subsets: tuple[str, ...], metric: str) -> dict[int, float]:
    """Seed -> `metric` of `method` averaged over the rates and `subsets` (NaN if any is NaN: a text-only
    method has no value without text)."""
    rows = table[(table["method"] == method) & table["subset"].isin(subsets)]
    return {int(seed): float(group[metric].mean(skipna=False)) for seed, group in rows.groupby("seed")}


def write_missing_report(out: Path) -> str:
    table = pd.read_csv(out / "summary.csv", dtype={"model": str})
    settings = json.loads((out / "bench.json").read_text())
    metrics = [m for m in METRICS if table[m].notna().any()]  # MAE, corr and acc7 on continuous labels only
    # the paired differences on the validation speakers too: a setting is chosen there, never on the test set
    valid = [f"valid_{m}" for m in VALID_METRICS if f"valid_{m}" in table and table[f"valid_{m}"].notna().any()]
    paired = [*metrics, *valid]
    methods = [m for m in METHODS if m in set(table["method"])]
    rates = sorted(set(table["missing_rate"]))
    subsets = (*SUBSETS, "all")
    lines = [f"# Missing-modality grid: {settings['dataset']}", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {machine()}",
             f"- missing-rate r in {', '.join(f'{r:g}' for r in rates)} (train, validation and test); seeds "
             f"{', '.join(str(s) for s in sorted(set(table['seed'])))}; schedule: {settings['rounds-msa']} x "
             f"{settings['local-epochs']} epochs ({settings['rounds-align']} alignment rounds first for "
             f"hydiscgan-central); hydiscgan-central and text-only use M = {settings['model']}; every method central",
             "- each run's test metrics at the step best on the validation speakers (all modalities present at rate "
             "r), then with only the subset's modalities present (t text, a audio, v visual); 'all': the mean "
             "over the seven subsets; methods that predict from text alone have no value without text", ""]
    for metric in metrics:
        lines += [f"{metric}, averaged over r: mean ± std [95% interval] over seeds", "",
                  "| method | " + " | ".join(subsets) + " |", "|---|" + "---|" * len(subsets)]
        for method in methods:
            cells = [interval_cell(list(per_seed(table, method, _subsets(s), metric).values())) for s in subsets]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    for subset in ("tav", "t"):
        lines += [f"{metrics[0]} against r with {'all modalities' if subset == 'tav' else 'text alone'} present "
                  "(mean over seeds)", "", "| r | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for rate in rates:
            rows = table[(table["missing_rate"] == rate) & (table["subset"] == subset)]
            means = [rows[rows["method"] == m][metrics[0]].mean() for m in methods]
            lines.append(f"| {rate:g} | " + " | ".join("" if np.isnan(v) else f"{v:.3f}" for v in means) + " |")
        lines.append("")
    for metric in paired:
        lines += [f"Paired by seed, method − reference, {metric} averaged over r [95% interval]; * where the "
                  "interval excludes zero", "",
                  "| method − reference | " + " | ".join(subsets) + " |", "|---|" + "---|" * len(subsets)]
        for method, reference in COMPARISONS:
            if method in methods and reference in methods:
                diffs = [paired_difference(per_seed(table, method, _subsets(s), metric),
                                           per_seed(table, reference, _subsets(s), metric)) for s in subsets]
                lines.append(f"| {method} − {reference} | "
                             + " | ".join("" if np.isnan(d["mean"]) else _marked(d) for d in diffs) + " |")
        lines.append("")
    lines += ["![metric against r](missing.png)", ""]
    text = "\n".join(lines)
    (out / "summary.md").write_text(text)
    plot_missing(table, methods, metrics[0], out / "missing.png")
    return text


def _subsets(name: str) -> tuple[str, ...]:
    return tuple(SUBSETS) if name == "all" else (name,)


def _marked(diff: dict[str, Any]) -> str:
    return difference_cell(diff) + (" *" if diff["excludes_zero"] else "")


def plot_missing(table: pd.DataFrame, methods: list[str], metric: str, target: Path) -> None:
    """`metric` against r, one panel per test-time subset, one line per method (mean over seeds, the band
    one std)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(SUBSETS), figsize=(3.0 * len(SUBSETS), 3.2), sharey=True)
    for axis, subset in zip(axes, SUBSETS):
        for method in methods:
            rows = table[(table["method"] == method) & (table["subset"] == subset)]
            curve = rows.groupby("missing_rate")[metric].agg(["mean", "std"]).dropna(subset=["mean"])
            if len(curve):
                axis.plot(curve.index, curve["mean"], marker="o", markersize=3, label=method)
                axis.fill_between(curve.index, curve["mean"] - curve["std"].fillna(0),
                                  curve["mean"] + curve["std"].fillna(0), alpha=0.15)
        axis.set_title(f"present: {subset}")
        axis.set_xlabel("missing rate r")
    axes[0].set_ylabel(f"test {metric}")
    axes[0].legend(fontsize=7, loc="lower left")  # the all-modalities panel has every method
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
