"""`hydiscgan select-model`: which MSA model to use, chosen on the validation speakers, never on the test set.

    hydiscgan select-model --dataset mosi-bclstm --msa-models context-gru,lmr-cbt,cfn-sr --seeds 5 --out DIR

Each model is trained centrally with --method (default central-multimodal: how well the family fuses the
modalities; text-only: its text model) for each seed, on the benchmark's schedule. The figure is the metric
the runs select their epoch on (acc2 for binary labels, MAE for continuous ones), on the validation speakers
at the selected epoch. The chosen model has the best mean over seeds; the report gives each model's mean ±
std [95% interval] and its paired difference to the chosen one. No test metric is written.

Writes DIR/model_selection.csv (one row per model and seed) and DIR/model_selection.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError
from hydiscgan_fl.metrics import SELECTION_METRIC, paired_difference
from hydiscgan_fl.orchestration.bench import msa_model_list
from hydiscgan_fl.orchestration.bench_process import benchmark_process, machine
from hydiscgan_fl.orchestration.result_table import difference_cell, interval_cell
from hydiscgan_fl.orchestration.schedule import add_schedule_arguments, schedule_overrides
from hydiscgan_fl.training.central import run_central

METHODS = ("central-multimodal", "text-only")


def register(subparsers) -> None:
    parser = subparsers.add_parser("select-model", help="choose an MSA model on the validation speakers",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mosi-bclstm", help="dataset spec (default: %(default)s)")
    parser.add_argument("--data-dir", default="", help="folder holding mosi-bclstm/ (default: the checkout's data/)")
    parser.add_argument("--msa-models", type=msa_model_list, default="context-gru,lmr-cbt,cfn-sr",
                        help="comma-separated MSA models, as for bench (default: %(default)s)")
    parser.add_argument("--method", choices=METHODS, default=METHODS[0],
                        help="how each model is trained (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per model (default: %(default)s)")
    add_schedule_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("bench-out/model-selection"),
                        help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.seeds < 2:
            raise ConfigError("--seeds must be >= 2 (a choice needs a spread)")
        base = HyDiscGANConfig.from_run_config({"dataset": args.dataset, "data-dir": args.data_dir,
                                                **schedule_overrides(args)})
        rows = []
        with benchmark_process():
            for seed in range(args.seeds):
                for model in args.msa_models:
                    result = run_central(args.method, base.model_copy(update={"seed": seed, "msa_model": model}))
                    rows.append({"dataset": base.dataset, "method": args.method, "model": model, "seed": seed,
                                 "selected_epoch": result.selected_step,
                                 **{f"valid_{name}": value for name, value in result.valid_metrics.items()}})
                    print(f"[{model} seed {seed}] selected epoch {result.selected_step}", flush=True)
        label_kind = base.load_dataset().label_kind
    except (ConfigError, DataError, ValueError) as err:
        print(f"hydiscgan select-model: error: {err}", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "model_selection.csv", index=False)
    report = write_report(table, label_kind, args)
    (args.out / "model_selection.md").write_text(report)
    print(report)
    return 0


def chosen_model(table: pd.DataFrame, label_kind: str) -> str:
    """The model with the best mean validation selection metric over seeds (the first listed on a tie)."""
    name, sign = SELECTION_METRIC[label_kind]
    means = table.groupby("model", sort=False)[f"valid_{name}"].mean()
    return str((sign * means).idxmax())


def write_report(table: pd.DataFrame, label_kind: str, args: argparse.Namespace) -> str:
    name, sign = SELECTION_METRIC[label_kind]
    column = f"valid_{name}"
    best = chosen_model(table, label_kind)

    def by_seed(model: str) -> dict[int, float]:
        rows = table[table["model"] == model]
        return dict(zip(rows["seed"].astype(int), rows[column].astype(float)))

    lines = [f"# MSA model chosen on the validation speakers: {args.dataset}", "",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             f"- {args.method}, seeds 0..{args.seeds - 1}; figure: {column} at each run's selected epoch "
             f"({'higher' if sign > 0 else 'lower'} is better); mean ± std [95% interval]; paired by seed",
             f"- **chosen: {best}**", "",
             f"| model | {column} | − {best} (paired) |", "|---|---|---|"]
    for model in dict.fromkeys(table["model"]):
        diff = "–" if model == best else difference_cell(paired_difference(by_seed(model), by_seed(best)))
        lines.append(f"| {model} | {interval_cell(by_seed(model).values())} | {diff} |")
    return "\n".join(lines) + "\n"
