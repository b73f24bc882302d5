"""`hydiscgan secagg`: what secure aggregation (SecAgg+) costs and what it hides, measured in real runs.

For each number of clients N and each of secure-aggregation "none" and "secaggplus", one `flwr run` (Ray
simulation, one SuperNode per client, every client in every round): on MOSI (`--dataset mosi-bclstm`,
the main job's run config, N = its 8 speaker partitions) or on `synthetic:<speakers>` with one training
speaker per client (as `hydiscgan scale`). Measured per run, from its metrics.csv: bytes up and down per
client per round (secure aggregation's key stages included), seconds per round (the first round apart:
it starts the workers), test Acc-2 at the validation-selected round. With `--attack`, the curious
server's update attacks (`update_replay.update_attack_row`: one more alignment round replayed through
the real ClientApp, on what the server receives: the raw update without, the masked one with).

Rows are appended to secagg.csv (a rerun skips the (N, mode, seed) already there); secagg.md holds the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.orchestration.bench_process import machine
from hydiscgan_fl.orchestration.flwr_runner import FederatedRunError, LocalFederation
from hydiscgan_fl.orchestration.result_table import append_row, read_rows
from hydiscgan_fl.orchestration.scale import speakers_for
from hydiscgan_fl.orchestration.update_replay import UPDATE_ATTACK_COLUMNS, update_attack_row

MODES = ("none", "secaggplus")
COLUMNS = ("dataset", "clients", "secure_aggregation", "secagg_shares", "seed", "rounds", "bytes_up_per_client_round",
           "bytes_down_per_client_round", "first_round_s", "s_per_round", "acc2", *UPDATE_ATTACK_COLUMNS,
           "wall_s", "date")


def register(subparsers) -> None:
    parser = subparsers.add_parser("secagg", help="bytes, seconds, accuracy and update attacks with and without "
                                   "secure aggregation", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("mosi-bclstm", "synthetic"), default="mosi-bclstm",
                        help="mosi-bclstm: the main job (8 clients); synthetic: one speaker per client")
    parser.add_argument("--clients", type=int, default=8, help="clients (synthetic only; MOSI has 8)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds (half alignment, half MSA); 0 = the run config's (default)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..n-1 (default: %(default)s)")
    parser.add_argument("--attack", action="store_true", help="also run the update attacks on what the server sees")
    parser.add_argument("--secagg-shares", type=float, default=HyDiscGANConfig().secagg_shares,
                        help="run-config secagg-shares of the secaggplus runs: below 1, SecAgg+'s ring of "
                             "neighbours, for many clients (default: %(default)s)")
    parser.add_argument("--round-timeout-s", type=float, default=HyDiscGANConfig().round_timeout_s,
                        help="run-config round-timeout-s of every run (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=6 * 3600, help="per run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/secagg"),
                        help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    clients = 8 if args.dataset == "mosi-bclstm" else args.clients
    done = {(row["dataset"], int(row["clients"]), row["secure_aggregation"], row["secagg_shares"], int(row["seed"]))
            for row in read_rows(out / "secagg.csv")}
    for seed in range(args.seeds):
        for mode in MODES:
            shares = args.secagg_shares if mode == "secaggplus" else float("nan")
            if (args.dataset, clients, mode, str(shares), seed) in done:
                continue
            try:
                row = measure(args.dataset, clients, mode, shares, seed, args.rounds, args.attack,
                              args.round_timeout_s, args.timeout_s, out)
            except FederatedRunError as err:
                print(f"hydiscgan secagg: the {mode} run with {clients} clients failed: {err}")
                return 1
            append_row(out / "secagg.csv", row, COLUMNS)
            print(f"[{clients} clients, {mode}, seed {seed}] {row['s_per_round']:.2f} s per round, "
                  f"{row['bytes_up_per_client_round']:.0f} B up / {row['bytes_down_per_client_round']:.0f} B down "
                  f"per client per round, acc2 {row['acc2']:.4f}", flush=True)
    text = report(pd.read_csv(out / "secagg.csv"))
    (out / "secagg.md").write_text(text)
    print(text)
    return 0


def measure(dataset: str, clients: int, mode: str, shares: float, seed: int, rounds: int, attack: bool,
            round_timeout_s: float, timeout_s: float, out: Path) -> dict[str, Any]:
    label = f"{mode}-{shares:g}" if mode == "secaggplus" else mode
    run_config: dict[str, Any] = {"seed": seed, "secure-aggregation": mode, "round-timeout-s": round_timeout_s,
                                  "output-dir": str(out / "runs" / f"{dataset}-{clients}-{label}-seed{seed}")}
    if mode == "secaggplus":
        run_config["secagg-shares"] = shares
    if dataset == "synthetic":
        run_config.update({"dataset": f"synthetic:{speakers_for(clients, seed)}", "partition": "speaker",
                           "local-epochs": 1})
    if rounds:
        run_config.update({"rounds-align": max(1, rounds // 2), "rounds-msa": max(1, rounds - rounds // 2)})
    started = time.time()
    with LocalFederation() as federation:
        outcome = federation.run(run_config, clients, timeout_s=timeout_s)
    metrics = pd.read_csv(outcome.run_dir / "metrics.csv")
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    wall = metrics["wall_s"].tolist()
    row = {"dataset": run_config.get("dataset", dataset), "clients": clients, "secure_aggregation": mode,
           "secagg_shares": shares, "seed": seed, "rounds": len(wall),
           "bytes_up_per_client_round": float(metrics["bytes_up_per_client"].mean()),
           "bytes_down_per_client_round": float(metrics["bytes_down_per_client"].mean()),
           "first_round_s": wall[0], "s_per_round": sum(wall[1:]) / max(1, len(wall) - 1),
           "acc2": float(summary["acc2"]), **dict.fromkeys(UPDATE_ATTACK_COLUMNS, float("nan"))}
    if attack:
        row.update(update_attack_row(outcome.run_dir, clients))
    row.update({"wall_s": time.time() - started, "date": time.strftime("%Y-%m-%d")})
    return row


def report(table: pd.DataFrame) -> str:
    """Mean (± std over seeds) of every measured column per (dataset, clients, mode)."""
    shown = [c for c in COLUMNS[5:-2] if c == "rounds" or table[c].notna().any()]
    lines = [f"Machine: {machine()}.", "",
             "| dataset | clients | secure-aggregation | secagg-shares | seeds | " + " | ".join(shown) + " |",
             "|---|---|---|---|---|" + "---|" * len(shown)]
    keys = ["dataset", "clients", "secure_aggregation", "secagg_shares"]
    for (dataset, clients, mode, shares), rows in table.groupby(keys, sort=False, dropna=False):
        cells = [f"{rows[c].mean():.4g} ± {rows[c].std():.2g}" if len(rows) > 1 else f"{rows[c].mean():.4g}"
                 for c in shown]
        shares_cell = "–" if pd.isna(shares) else f"{shares:g}"
        lines.append(f"| {dataset} | {clients} | {mode} | {shares_cell} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
