"""`hydiscgan model-cost`: what each MSA model costs a client, in CPU seconds of local training per round.

    hydiscgan model-cost --dataset mosi-bclstm --msa-models mlp,context-gru,lmr-cbt,cfn-sr --out DIR

One client's data (partition 0 of --num-clients under the speaker rule, as in the benchmark's federations)
is trained for local-epochs epochs, as one round does, in each of: HyDiscGAN's alignment stage (G, the
client's E and D), HyDiscGAN's MSA stage (M on [t; G(t)], the frozen-D term) and FedAvg multimodal (M on the
real t, a, v). Each figure is the median over --repeats rounds of the process's CPU time on one torch thread
(after one warm-up round), so that other work on the machine inflates it far less than wall time; on a GPU
it measures wall time after synchronising. `hydiscgan_run` is the mean over a HyDiscGAN run's rounds
(rounds-align alignment rounds, rounds-msa MSA rounds). The report divides every figure by that of the
reference model (--reference, default mlp), the unit of issue 12's cost bar.

Writes DIR/model_cost.csv (one row per model) and DIR/model_cost.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError, partition_indices
from hydiscgan_fl.training.videos import Videos
from hydiscgan_fl.models import build_client_discriminators, build_shared_models, needs_context
from hydiscgan_fl.orchestration.bench import msa_model_list
from hydiscgan_fl.orchestration.bench_process import benchmark_process, machine
from hydiscgan_fl.orchestration.schedule import add_schedule_arguments, schedule_overrides
from hydiscgan_fl.training import local_alignment, local_msa, pick_device, tensor_view, to_tensors, train_multimodal

STAGES = ("align", "msa", "fedavg")


def register(subparsers) -> None:
    parser = subparsers.add_parser("model-cost", help="CPU seconds of a client's local training per round, per MSA model",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mosi-bclstm", help="dataset spec (default: %(default)s)")
    parser.add_argument("--data-dir", default="", help="folder holding mosi-bclstm/ (default: the checkout's data/)")
    parser.add_argument("--msa-models", type=msa_model_list, default="mlp,context-gru,lmr-cbt,cfn-sr",
                        help="comma-separated MSA models, as for bench (default: %(default)s)")
    parser.add_argument("--reference", default="mlp", help="the model every ratio divides by (default: %(default)s)")
    parser.add_argument("--num-clients", type=int, default=8, help="speaker partitions; partition 0 is timed "
                                                                   "(default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per stage (default: %(default)s)")
    add_schedule_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("bench-out/model-cost"),
                        help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    models = list(args.msa_models)
    try:
        if args.reference not in models:
            raise ConfigError(f"--reference {args.reference!r} is not among --msa-models {models}")
        if args.repeats < 1 or args.num_clients < 1:
            raise ConfigError("--repeats and --num-clients must be >= 1")
        base = HyDiscGANConfig.from_run_config({"dataset": args.dataset, "data-dir": args.data_dir,
                                                **schedule_overrides(args)})
        with benchmark_process():
            table = pd.DataFrame([{"model": model, **client_seconds(base.model_copy(update={"msa_model": model}),
                                                                    args.num_clients, args.repeats)}
                                  for model in models])
    except (ConfigError, DataError, ValueError) as err:
        print(f"hydiscgan model-cost: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "model_cost.csv", index=False)
    report = write_report(table, base, args)
    (args.out / "model_cost.md").write_text(report)
    print(report)
    return 0


def client_seconds(cfg: HyDiscGANConfig, num_clients: int, repeats: int) -> dict[str, float]:
    """Seconds of one round's local training of partition 0, per stage, and their mean over a HyDiscGAN run."""
    dataset = cfg.load_dataset()
    train = dataset.split_subset("train")
    rows = partition_indices(train.labels, train.speakers, num_clients, "speaker", cfg.seed,
                             label_kind=dataset.label_kind)[0]
    client = train.subset(rows)
    device = pick_device()
    data = to_tensors(client, device, tensor_view(cfg))
    videos = Videos.of(client) if needs_context(cfg) else None
    shared = build_shared_models(dataset.dims, cfg, cfg.seed).to(device)
    private = build_client_discriminators(dataset.dims, cfg, cfg.seed).to(device)
    epochs, kind = cfg.local_epochs, dataset.label_kind
    stages: dict[str, Callable[[int], object]] = {
        "align": lambda seed: local_alignment(shared, private, data, cfg, epochs, seed),
        "msa": lambda seed: local_msa(shared, private, data, cfg, epochs, seed, kind, videos=videos),
        "fedavg": lambda seed: train_multimodal(shared.msa, data, cfg, epochs, seed, kind, videos=videos),
    }
    seconds = {stage: _median_seconds(train_round, repeats, device) for stage, train_round in stages.items()}
    rounds = cfg.rounds_align + cfg.rounds_msa
    seconds["hydiscgan_run"] = (cfg.rounds_align * seconds["align"] + cfg.rounds_msa * seconds["msa"]) / rounds
    return {"utterances": len(rows), **seconds}


def _median_seconds(train_round: Callable[[int], object], repeats: int, device: torch.device) -> float:
    train_round(0)  # warm-up: allocations and kernels chosen at the first call
    times = []
    for seed in range(1, repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
            started = time.perf_counter()
            train_round(seed)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        else:
            started = time.process_time()
            train_round(seed)
            times.append(time.process_time() - started)
    return statistics.median(times)


def write_report(table: pd.DataFrame, cfg: HyDiscGANConfig, args: argparse.Namespace) -> str:
    reference = table.set_index("model").loc[args.reference]
    columns = (*STAGES, "hydiscgan_run")
    lines = [f"# Client cost per MSA model: {cfg.dataset}", "",
             f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {machine()}",
             f"- partition 0 of {args.num_clients} (speaker rule): {int(table['utterances'].iloc[0])} training "
             f"utterances; {cfg.local_epochs} local epochs per round; median of {args.repeats} rounds, "
             f"{'wall' if pick_device().type == 'cuda' else 'CPU'} seconds on one torch thread",
             f"- hydiscgan_run: mean over {cfg.rounds_align} alignment + {cfg.rounds_msa} MSA rounds", "",
             "| model | " + " | ".join(f"{c} s (x {args.reference})" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append(f"| {row['model']} | " + " | ".join(
            f"{row[c]:.3f} (x{row[c] / reference[c]:.1f})" for c in columns) + " |")
    return "\n".join(lines) + "\n"
