"""`hydiscgan scale`: how a HyDiscGAN simulation grows with its number of clients.

For each number of clients N (default 10, 100, 1000) one real `flwr run` (Ray simulation engine, one
SuperNode per client, one CPU per client) on synthetic data with one training speaker per client
(`synthetic:<speakers>`, the number of speakers chosen so that the training split holds exactly N),
speaker partition, every client trained in every round (`--fraction-train`). The partitions are written
first, as `hydiscgan partition` does, and the run reads `partitions:<dir>`: each client reads only its own
file (once per worker process), the server only `server.npz`. A round waits for every client
(`round-timeout-s` = `--timeout-s`): on two cores a round of 1,000 clients outlasts the default 600 s.
Measured:

- seconds per round: metrics.csv's wall_s (sending, client training, aggregation and the server's
  evaluation), the first round apart (it includes starting the workers and reading the partitions);
- peak memory of all the run's processes together: the SuperLink's whole process tree (ServerApp,
  simulation engine, Ray's GCS, raylet and workers), sampled every `--sample-s` seconds, each process
  counted by its proportional set size (PSS, /proc/<pid>/smaps_rollup: shared pages split between
  the processes that map them, so the sum is the memory the run occupies);
- memory growth: the same total at the first sample after round 2 and after the last round are
  recorded in metrics.csv.

Rows are appended to scale.csv (a rerun skips the N already there); scale.md holds the table.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import write_partitions
from hydiscgan_fl.models import needs_context
from hydiscgan_fl.orchestration.flwr_runner import FederatedRunError, LocalFederation, pids_listening_with
from hydiscgan_fl.orchestration.processes import process_memory, process_tree
from hydiscgan_fl.orchestration.result_table import append_row, read_rows

COLUMNS = ("clients", "speakers", "rounds", "fraction_train", "first_round_s", "s_per_round", "peak_memory_mib",
           "memory_round2_mib", "memory_last_round_mib", "memory_growth_pct", "wall_s", "date")
MIB = 2 ** 20


def register(subparsers) -> None:
    parser = subparsers.add_parser("scale", help="seconds per round and memory against the number of clients",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=_counts, default=(10, 100, 1000),
                        help="comma-separated numbers of clients (default: 10,100,1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per run, at least 2 (default: %(default)s)")
    parser.add_argument("--fraction-train", type=float, default=1.0, help="share of clients per round (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-s", type=float, default=0.5, help="memory sampling period (default: %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=12 * 3600, help="per run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/scale"), help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--clients takes comma-separated integers, got {text!r}") from None
    if not counts or min(counts) < 2:
        raise argparse.ArgumentTypeError("--clients needs numbers of at least 2")
    return counts


def run(args: argparse.Namespace) -> int:
    if args.rounds < 2:
        print("hydiscgan scale: error: --rounds must be at least 2 (growth is measured from round 2)")
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = {int(row["clients"]) for row in read_rows(out / "scale.csv")}
    for clients in args.clients:
        if clients in done:
            print(f"[{clients} clients] already in scale.csv, skipped", flush=True)
            continue
        try:
            row = measure(clients, args.rounds, args.fraction_train, args.seed, args.sample_s, args.timeout_s, out)
        except FederatedRunError as err:
            print(f"hydiscgan scale: the {clients}-client run failed: {err}")
            return 1
        append_row(out / "scale.csv", row, COLUMNS)
        print(f"[{clients} clients] {row['s_per_round']:.1f} s per round (first {row['first_round_s']:.1f} s), "
              f"peak memory {row['peak_memory_mib']:.0f} MiB, growth round 2 -> {args.rounds}: "
              f"{row['memory_growth_pct']:+.1f}%", flush=True)
    text = report(read_rows(out / "scale.csv"))
    (out / "scale.md").write_text(text)
    print(text)
    return 0


def speakers_for(clients: int, seed: int) -> int:
    """The smallest number of synthetic speakers whose training split (after the test split and the
    validation speakers) holds at least `clients` speakers (one speaker per client), searched from the
    expected share of training speakers (0.75 x 0.9)."""

    def enough(speakers: int) -> bool:
        view = HyDiscGANConfig(dataset=f"synthetic:{speakers}", seed=seed).load_dataset(text_only=True, cached=False)
        return len(set(view.split_subset("train").speakers.tolist())) >= clients

    speakers = max(clients + 1, math.ceil(clients / 0.675))
    while not enough(speakers):
        speakers += 1
    while speakers > clients + 1 and enough(speakers - 1):
        speakers -= 1
    return speakers


def measure(clients: int, rounds: int, fraction_train: float, seed: int, sample_s: float, timeout_s: float,
            out: Path) -> dict[str, Any]:
    speakers = speakers_for(clients, seed)
    align = max(1, rounds // 2)
    full = HyDiscGANConfig(dataset=f"synthetic:{speakers}", seed=seed, partition="speaker")
    partitions = out / "partitions" / f"clients{clients}"
    write_partitions(full.load_dataset(cached=False), clients, full.partition, seed, partitions,
                     whole_videos=needs_context(full))
    run_config = {"dataset": f"partitions:{partitions.resolve()}", "seed": seed, "partition": "speaker",
                  "rounds-align": align, "rounds-msa": rounds - align, "local-epochs": 1,
                  "fraction-train": fraction_train, "min-train-replies": 1, "round-timeout-s": timeout_s,
                  "output-dir": str(out / "runs" / f"clients{clients}")}
    started = time.time()
    output_dir = Path(run_config["output-dir"])
    with LocalFederation() as federation:
        sampler = TreeMemory(lambda: pids_listening_with(f"--port {federation.port}"), sample_s,
                             rounds_done=lambda: recorded_rounds(output_dir))
        sampler.start()
        try:
            outcome = federation.run(run_config, clients, timeout_s=timeout_s)
        finally:
            sampler.stop()
    after_round = sampler.after_round
    wall = pd.read_csv(outcome.run_dir / "metrics.csv")["wall_s"].tolist()
    return {"clients": clients, "speakers": speakers, "rounds": rounds, "fraction_train": fraction_train,
            "first_round_s": wall[0], "s_per_round": sum(wall[1:]) / len(wall[1:]),
            "peak_memory_mib": sampler.peak / MIB, "memory_round2_mib": after_round.get(2, 0) / MIB,
            "memory_last_round_mib": after_round.get(rounds, 0) / MIB,
            "memory_growth_pct": 100.0 * (after_round.get(rounds, 0) / after_round[2] - 1.0) if after_round.get(2)
            else float("nan"),
            "wall_s": time.time() - started, "date": time.strftime("%Y-%m-%d")}


def report(rows: list[dict[str, str]]) -> str:
    lines = ["# HyDiscGAN simulation scale", "",
             "| clients | speakers | rounds | first round s | s per round | peak memory MiB (all processes, PSS) "
             "| memory after round 2 / last MiB | growth | date |", "|---|---|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: int(r["clients"])):
        lines.append(f"| {row['clients']} | {row['speakers']} | {row['rounds']} | {float(row['first_round_s']):.1f} | "
                     f"{float(row['s_per_round']):.1f} | {float(row['peak_memory_mib']):.0f} | "
                     f"{float(row['memory_round2_mib']):.0f} / {float(row['memory_last_round_mib']):.0f} | "
                     f"{float(row['memory_growth_pct']):+.1f}% | {row['date']} |")
    return "\n".join(lines) + "\n"


def recorded_rounds(output_dir: Path) -> int:
    """Rounds recorded so far in the (one) run directory under `output_dir`: metrics.csv's rows."""
    files = list(output_dir.glob("*/metrics.csv"))
    try:
        return max(0, sum(1 for _ in files[0].open()) - 1) if len(files) == 1 else 0
    except OSError:
        return 0


class TreeMemory:
    """Samples the total memory of the process trees under `roots()` in a background thread; with
    `rounds_done()`, also the total at the first sample after each round is recorded (`after_round`)."""

    def __init__(self, roots, period_s: float, rounds_done=lambda: 0):  # noqa: ANN001 - callables
        self.roots = roots
        self.period_s = period_s
        self.rounds_done = rounds_done
        self.current = 0
        self.peak = 0
        self.after_round: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        total = sum(process_memory(pid) for pid in process_tree(self.roots()) if pid != os.getpid())
        self.current = total
        if total:
            self.after_round.setdefault(self.rounds_done(), total)
        self.peak = max(self.peak, total)
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
