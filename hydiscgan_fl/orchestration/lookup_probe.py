"""`hydiscgan probe-lookups`: can an MSA model form `synthetic-fusion`'s planted lookups at all?

    hydiscgan probe-lookups --dataset synthetic-fusion:240 --rounds-msa 20 --seeds 5 --out DIR

A diagnostic for the fusion benchmark. In `synthetic-fusion` the label holds two lookups that pooled vectors
cannot make (hydiscgan_fl.data.synthetic_sequences): "text_audio", the audio value keyed by the text, and
"audio_visual", the visual value keyed by the audio. Here each model is trained like `central-multimodal`
(real audio/visual, the run's optimiser and budget, rounds-msa x local-epochs epochs) with one lookup alone as
its regression target in place of the label, so that nothing else competes for it. The epoch is selected on
the validation speakers' MAE, as in every run; the figure is the test corr with the lookup there. Near 0: the
model does not form that lookup within the budget.

Writes DIR/lookups.csv (one row per model, lookup and seed, rewritten after each) and DIR/lookups.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError, MultimodalDataset, synthetic_sequences_with_latents
from hydiscgan_fl.orchestration.bench import msa_model_list
from hydiscgan_fl.orchestration.bench_process import benchmark_process, machine
from hydiscgan_fl.orchestration.result_table import interval_cell
from hydiscgan_fl.orchestration.schedule import add_schedule_arguments, schedule_overrides
from hydiscgan_fl.training.central import run_central

LOOKUPS = ("text_audio", "audio_visual")


def register(subparsers) -> None:
    parser = subparsers.add_parser("probe-lookups", help="can a model learn synthetic-fusion's lookups alone?",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic-fusion:240",
                        help="a synthetic-fusion[:<speakers>] spec (default: %(default)s)")
    parser.add_argument("--msa-models", type=msa_model_list, default="mlp,lmr-cbt,lmr-cbt-nocross,cfn-sr,cfn-sr-nores",
                        help="comma-separated MSA models, as for bench (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default: %(default)s)")
    add_schedule_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("bench-out/lookups"),
                        help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def lookup_dataset(cfg: HyDiscGANConfig, lookup: str) -> MultimodalDataset:
    """cfg's synthetic-fusion dataset (with its validation speakers) whose labels are the lookup `lookup`."""
    if lookup not in LOOKUPS:
        raise ValueError(f"unknown lookup {lookup!r}; use one of {list(LOOKUPS)}")
    dataset = cfg.load_dataset()
    if dataset.name != "synthetic-fusion":
        raise DataError(f"probe-lookups needs a synthetic-fusion[:<speakers>] dataset, got {cfg.dataset!r}")
    # The same generator call again (seed and speaker count), now with the hidden factors.
    regenerated, latents = synthetic_sequences_with_latents(
        cfg.seed, interaction="key-value", num_speakers=len(set(dataset.speakers.tolist())))
    assert np.array_equal(regenerated.ids, dataset.ids), "rows of the regenerated dataset differ"
    return dataclasses.replace(dataset, labels=latents.planted[lookup])


def run(args: argparse.Namespace) -> int:
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        if args.seeds < 1:
            raise ConfigError("--seeds must be >= 1")
        base = HyDiscGANConfig.from_run_config({"dataset": args.dataset, **schedule_overrides(args)})
        with benchmark_process():
            for seed in range(args.seeds):
                for model in args.msa_models:
                    cfg = base.model_copy(update={"seed": seed, "msa_model": model})
                    for lookup in LOOKUPS:
                        result = run_central("central-multimodal", cfg, dataset=lookup_dataset(cfg, lookup))
                        rows.append({"model": model, "lookup": lookup, "seed": seed,
                                     "selected_epoch": result.selected_step, "corr": result.metrics["corr"],
                                     "valid_corr": result.valid_metrics["corr"]})
                        pd.DataFrame(rows).to_csv(args.out / "lookups.csv", index=False)  # kept if interrupted
                        print(f"[{model} {lookup} seed {seed}] selected epoch {result.selected_step}: test corr "
                              f"{result.metrics['corr']:.3f}", flush=True)
    except (ConfigError, DataError, ValueError) as err:
        print(f"hydiscgan probe-lookups: error: {err}", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    lines = [f"# Can each model form synthetic-fusion's lookups? {args.dataset}", "",
             f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {machine()}",
             f"- central-multimodal with one lookup as the target, {base.rounds_msa * base.local_epochs} epochs, "
             f"seeds 0..{args.seeds - 1}; figure: test corr at the epoch selected on validation MAE", "",
             "| model | " + " | ".join(LOOKUPS) + " |", "|---|" + "---|" * len(LOOKUPS)]
    for model in args.msa_models:
        cells = [interval_cell(table[(table["model"] == model) & (table["lookup"] == lookup)]["corr"])
                 for lookup in LOOKUPS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    (args.out / "lookups.md").write_text(report)
    print(report)
    return 0
