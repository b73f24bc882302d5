"""`hydiscgan byzantine`: how aggregation rules hold up when some clients send poisoned weights.

    hydiscgan byzantine --num-clients 8 --byzantine 2 --out DIR

For every rule (default fedavg, fedmedian, fedtrimmedavg, krum) one clean run and one run per attack
mode (default all three: scale, -10 x the update; random, random weights; inflate, -10 x the update and
a claimed num-examples of 10^9, which the server caps at `max-examples-ratio` x the median claim), each
a real `flwr run` on a managed local SuperLink (Ray simulation) with the speaker partition. The clients
with partition-id 0..B-1 attack in every round (G in stage 1, G and M in stage 2). The robust rules are
told B: fedtrimmedavg cuts B/N of the values at each end of every coordinate (trimmed-beta = B/N), krum
assumes B malicious nodes.
Writes DIR/byzantine.csv (one row per run; rows already there are skipped, so an interrupted benchmark
resumes) and DIR/byzantine.md (test Acc-2 at the validation-selected round per rule and attack, and its
change from the clean run).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.orchestration.flwr_runner import FederatedRunError, LocalFederation
from hydiscgan_fl.orchestration.result_table import append_row, read_rows
from hydiscgan_fl.orchestration.schedule import add_schedule_arguments, schedule_overrides
from hydiscgan_fl.run_files import load_summary

RULES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
MODES = ("scale", "random", "inflate")
COLUMNS = ("rule", "attack", "acc2", "f1", "replies_ok", "wall_s", "run_dir")


def register(subparsers) -> None:
    parser = subparsers.add_parser("byzantine", help="aggregation rules against Byzantine clients (real flwr runs)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mosi-bclstm", help="dataset spec (default: %(default)s)")
    parser.add_argument("--num-clients", type=int, default=8, help="simulated SuperNodes (default: %(default)s)")
    parser.add_argument("--byzantine", type=int, default=2, help="attacking clients (default: %(default)s)")
    parser.add_argument("--rules", type=_names(None), default=RULES,
                        help=f"comma-separated rules, names or 'pkg.module:Class' (default: {','.join(RULES)})")
    parser.add_argument("--modes", type=_names(MODES), default=MODES,
                        help=f"comma-separated attack modes (default: {','.join(MODES)})")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/byzantine"), help="output folder (default: %(default)s)")
    add_schedule_arguments(parser)
    parser.set_defaults(handler=run)


def _names(allowed: tuple[str, ...] | None):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if allowed is not None and name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {','.join(allowed or ())}")
        return names
    return parse


def run_configs(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any]]]:
    """(rule, attack, run config) of every run, validated before any run starts."""
    if not 0 < args.byzantine < args.num_clients / 2:
        raise ConfigError(f"--byzantine must be between 1 and fewer than half of --num-clients, got {args.byzantine}")
    base = {"dataset": args.dataset, "seed": args.seed, **schedule_overrides(args)}
    robust = {"fedtrimmedavg": {"trimmed-beta": args.byzantine / args.num_clients},
              "krum": {"krum-malicious": args.byzantine}}
    runs = []
    for rule in args.rules:
        for attack in ("none", *args.modes):
            config = {**base, "aggregation": rule, **robust.get(rule, {})}
            if attack != "none":
                config.update({"byzantine-clients": args.byzantine, "byzantine-mode": attack})
            HyDiscGANConfig.from_run_config(config)
            runs.append((rule, attack, config))
    return runs


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    try:
        runs = run_configs(args)
        out.mkdir(parents=True, exist_ok=True)
    except (ConfigError, OSError) as err:
        print(f"hydiscgan byzantine: error: {err}", file=sys.stderr)
        return 2
    table = out / "byzantine.csv"
    done = {(row["rule"], row["attack"]) for row in read_rows(table)}
    try:
        with LocalFederation() as federation:
            for rule, attack, config in runs:
                if (rule, attack) in done:
                    continue
                started = time.time()
                outcome = federation.run({**config, "output-dir": str(out / "runs")}, args.num_clients)
                summary = load_summary(outcome.run_dir)
                with (outcome.run_dir / "metrics.csv").open() as handle:
                    replies_ok = sum(int(row["replies_ok"]) for row in csv.DictReader(handle))
                row = {"rule": rule, "attack": attack, "acc2": summary["acc2"], "f1": summary["f1"],
                       "replies_ok": replies_ok, "wall_s": round(time.time() - started, 1), "run_dir": outcome.run_dir}
                append_row(table, row, COLUMNS)
                print(f"[{rule} / {attack}] acc2={row['acc2']:.4f} f1={row['f1']:.4f} ({row['wall_s']:.0f} s)", flush=True)
    except FederatedRunError as err:
        print(f"hydiscgan byzantine: a run failed: {err}", file=sys.stderr)
        return 1
    report = markdown_table(read_rows(table), args)
    (out / "byzantine.md").write_text(report)
    print(report)
    return 0


def markdown_table(rows: list[dict[str, str]], args: argparse.Namespace) -> str:
    """Acc-2 per rule (rows) and attack (columns); attacked cells show the change from the rule's clean run."""
    acc = {(row["rule"], row["attack"]): float(row["acc2"]) for row in rows}
    modes = [mode for mode in MODES if any(attack == mode for _, attack in acc)]
    lines = [f"Test Acc-2 at the validation-selected round on {args.dataset}, {args.num_clients} clients, "
             f"{args.byzantine} Byzantine, seed {args.seed} (change from the clean run of the same rule in points):", "",
             "| rule | clean | " + " | ".join(f"attack: {mode}" for mode in modes) + " |",
             "|---|---|" + "---|" * len(modes)]
    for rule in dict.fromkeys(rule for rule, _ in acc):
        clean = acc.get((rule, "none"))
        cells = [f"{clean:.4f}" if clean is not None else "-"]
        for mode in modes:
            value = acc.get((rule, mode))
            delta = f" ({100 * (value - clean):+.1f})" if value is not None and clean is not None else ""
            cells.append("-" if value is None else f"{value:.4f}{delta}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


