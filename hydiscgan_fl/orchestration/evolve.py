"""`hydiscgan evolve`: search G's noise z, per text, for fakes that M reads as a target sentiment mix
(EvoGAN's genetic algorithm; docs/evolve.md).

    hydiscgan evolve --run-dir RUN --target 0.7,0.3 --out DIR              # one search (EvoGAN's GA)
    hydiscgan evolve --run-dir RUN --target 0.7,0.3 --compare --out DIR    # GA vs random search vs CMA-ES
    hydiscgan evolve --run-dir RUN --augment --seeds 5 --out DIR           # evolved fakes for rare bins

RUN is a finished run directory (its checkpoint.pt: the validation-selected round's G and M). The target
is (p_negative, p_positive) for binary labels; for continuous labels 7 weights of the Acc-7 bins -3..3 or
one score; or, relative, shift:DELTA: per text, M's output at z = 0 moved by DELTA (logit or score
units). Genes are z in [-bound, bound]^noise-dim; every search gets population x (generations + 1) fitness
evaluations per text.

One search writes DIR/evolve_log.csv (per text and generation: evaluations, best and mean fitness of the
elite set, its diversity), DIR/fitness.png, DIR/elites.csv (per text: best fitness, M's distribution,
realism, genome) and DIR/summary.json. --compare runs every method with --seeds seeds on the same texts
and writes DIR/compare.csv (one row per method and seed), DIR/compare.md (mean ± std [95 % interval]
over seeds, paired differences against the GA), DIR/compare.png (best fitness against evaluations);
it also trains a second M (hydiscgan_fl.evolution.judges.train_msa_on_fakes with another seed).
--augment (continuous labels) trains M with and without evolved fakes for the rare Acc-7 bins, and with
the same rows from random z as the control (hydiscgan_fl.evolution.augment), and writes DIR/augment.csv
and DIR/augment.md (test Acc-7 / F1 / MAE at the validation-selected epoch, paired differences).

Realism judges read what a HyDiscGAN server never holds (evaluation-only): real audio/visual of the
reference split (nearest-real-neighbour distance) and one client's saved discriminators, read from the
simulation's client-state folder next to the run directory (skipped with a note when there is none).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.handlers import PRIVATE_STATE_KEY
from hydiscgan_fl.evolution.augment import augmentation_study, summarise_augmentation
from hydiscgan_fl.evolution.fitness import SHIFT_PREFIX, TextConditionedJudge, parse_target
from hydiscgan_fl.evolution.judges import FinishedRun, RealismJudge, real_reference, train_msa_on_fakes
from hydiscgan_fl.evolution.search import SEARCHES, SearchSpace
from hydiscgan_fl.evolution.study import FIGURES, compare_searches, no_search_reference, outcome, summarise
from hydiscgan_fl.models import ClientDiscriminators
from hydiscgan_fl.orchestration.result_table import pyplot

SPLITS = ("valid", "test", "train")


def register(subparsers) -> None:
    parser = subparsers.add_parser("evolve", help="EvoGAN: search G's noise for a target sentiment mix",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished run directory (checkpoint.pt)")
    parser.add_argument("--target", help="target distribution, e.g. 0.7,0.3 (see above); not with --augment")
    parser.add_argument("--split", choices=SPLITS, default="valid", help="where the texts come from (default: valid)")
    parser.add_argument("--texts", type=int, default=20, help="texts, spread over the split; 0 = all (default: 20)")
    parser.add_argument("--population", type=int, default=20, help="population size K (default: %(default)s)")
    parser.add_argument("--generations", type=int, default=20,
                        help="budget: population x (generations + 1) evaluations per text (default: %(default)s)")
    parser.add_argument("--bound", type=float, default=3.0, help="genes in [-bound, bound] (default: %(default)s)")
    parser.add_argument("--method", choices=tuple(SEARCHES), default="evogan", help="search of a single run")
    parser.add_argument("--seed", type=int, default=0, help="search seed of a single run (default: %(default)s)")
    parser.add_argument("--compare", action="store_true", help="compare every method over --seeds seeds")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0..N-1 of --compare (default: %(default)s)")
    parser.add_argument("--augment", action="store_true", help="measure augmentation with evolved fakes "
                        "for rare Acc-7 bins over --seeds seeds (continuous labels)")
    parser.add_argument("--rare-share", type=float, default=0.1,
                        help="--augment: a bin is rare below this share of the training labels (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=3,
                        help="--augment: extra fakes per rare utterance, its best z (default: %(default)s)")
    parser.add_argument("--second-m-seed", type=int, default=None,
                        help="seed of the second M of --compare (default: the run's seed + 1)")
    parser.add_argument("--out", type=Path, default=Path("bench-out/evolve"),
                        help="output folder (default: %(default)s)")
    parser.set_defaults(handler=run)


def client_discriminators(run: FinishedRun) -> tuple[ClientDiscriminators | None, str]:
    """The first client's (by folder name) newest saved E and D, from <output-dir>/client-state/<run name>/,
    and where they came from; (None, reason) when the run left no client state."""
    root = run.run_dir.parent / "client-state" / run.run_dir.name
    saved = sorted(folder for folder in root.glob("*") if any(folder.glob("round-*.pt")))
    if not saved:
        return None, f"no client state under {root}"
    path = max(saved[0].glob("round-*.pt"), key=lambda p: int(p.stem.removeprefix("round-")))
    arrays = torch.load(path, weights_only=True)["arrays"]
    if PRIVATE_STATE_KEY not in arrays:
        return None, f"{path} holds no {PRIVATE_STATE_KEY!r}"
    discriminators = ClientDiscriminators(run.dims, run.cfg)
    discriminators.load_state_dict(arrays[PRIVATE_STATE_KEY])
    return discriminators, str(path)


def run(args: argparse.Namespace) -> int:
    # Many tiny forward passes: one thread is ~50x faster than several on a shared CPU (thread hand-offs
    # dominate); the previous setting is restored for whoever called us (tests run in one process).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    started = time.time()
    try:
        if (args.target is None) != args.augment:
            raise ValueError("give --target, or --augment (whose targets are each utterance's own label)")
        finished = FinishedRun.load(args.run_dir)
        if args.augment:
            return _augment(args, finished, started)
        shift = _shift(args.target)
        target = None if shift is not None else parse_target(args.target, finished.label_kind)
        rows = finished.text_rows(args.split, args.texts)
        space = SearchSpace(len(rows), finished.generator.noise_dim, (-args.bound, args.bound), args.population,
                            args.generations)
    except (ValueError, FileNotFoundError) as err:
        print(f"hydiscgan evolve: {err}", file=sys.stderr)
        return 2
    text, labels = finished.texts(args.split, rows)
    judge = TextConditionedJudge(finished.generator, finished.msa, text, finished.label_kind)
    if shift is not None:
        target = judge.shifted_target(shift)
    discriminators, d_source = client_discriminators(finished)
    realism = RealismJudge(real_reference(finished, args.split), discriminators)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"run_dir": str(finished.run_dir), "target": args.target if shift is not None else target.tolist(),
                "label_kind": finished.label_kind, "split": args.split, "texts": len(rows),
                "population": space.population, "generations": space.generations, "budget_per_text": space.budget, "bounds": list(space.bounds),
                "discriminators": d_source, "nearest_real_reference": f"real {args.split} audio/visual"}
    print(f"evolve: {len(rows)} {args.split} texts of {finished.run_dir.name}, target {settings['target']}, "
          f"{space.budget} evaluations per text; D: {d_source}")
    if args.compare:
        return _compare(args, finished, judge, target, space, realism, settings, started)
    return _single(args, judge, target, space, realism, rows, labels, settings, started)


def _shift(target: str) -> float | None:
    """DELTA of a relative target 'shift:DELTA', else None."""
    if not target.startswith(SHIFT_PREFIX):
        return None
    try:
        return float(target.removeprefix(SHIFT_PREFIX))
    except ValueError:
        raise ValueError(f"--target {target!r}: 'shift:' needs a number, e.g. shift:-0.5") from None


def _single(args, judge, target, space, realism, rows, labels, settings, started) -> int:
    result = SEARCHES[args.method](judge.fitness(target), space, args.seed)
    _write_csv(args.out / "evolve_log.csv", result.log_rows())
    best = result.best_genomes[:, None, :]
    text, audio, visual = judge.features(best)
    distribution = judge.distribution(best)[:, 0]
    distance = realism.nearest_real_distance(audio, visual)
    d_real = realism.discriminator_real_probability(text, audio, visual)
    _write_csv(args.out / "elites.csv", [
        {"row": int(row), "label": float(label), "best_fitness": float(result.elite_fitness[i, 0]),
         "distribution": " ".join(f"{p:.4f}" for p in distribution[i]),
         "d_real_probability": None if d_real is None else float(d_real[i]),
         "nearest_real_distance": None if distance is None else float(distance[i]),
         "genome": " ".join(f"{g:.4f}" for g in result.best_genomes[i])}
        for i, (row, label) in enumerate(zip(rows, labels))])
    figures = outcome(result, judge, target, realism, None)
    reference = no_search_reference(judge, target, realism, None, space.dim)
    summary = {**settings, "method": args.method, "seed": args.seed, **figures, "z0": reference,
               "wall_s": time.time() - started}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
    _plot_generations(result, args.out / "fitness.png", f"{args.method}, target {settings['target']}")
    print(f"{args.method} seed {args.seed}: best fitness {figures['best_fitness']:.4f} (z=0: "
          f"{reference['best_fitness']:.4f}), reached >= 0.95 on {figures['success_rate']:.0%} of texts, "
          f"elite diversity {figures['elite_diversity']:.3f}; wrote {args.out}")
    return 0


def _compare(args, finished, judge, target, space, realism, settings, started) -> int:
    second_seed = finished.cfg.seed + 1 if args.second_m_seed is None else args.second_m_seed
    second = train_msa_on_fakes(finished, second_seed)
    second_msa, second_valid = second.msa, {**second.valid, "selected_epoch": second.selected_epoch}
    rounded = {key: round(value, 4) for key, value in second_valid.items()}
    print(f"second M (seed {second_seed}): validation {json.dumps(rounded)}")
    rows, curves = compare_searches(judge, target, space, range(args.seeds), realism, second_msa)
    _write_csv(args.out / "compare.csv", rows)
    reference = no_search_reference(judge, target, realism, second_msa, space.dim)
    table = summarise(rows)
    markdown = _markdown(table, reference, {**settings, "seeds": args.seeds, "second_m_seed": second_seed,
                                            "second_m_valid": second_valid,
                                            "wall_s": round(time.time() - started, 1)})
    (args.out / "compare.md").write_text(markdown)
    _plot_curves(curves, args.out / "compare.png", f"target {settings['target']}, {args.seeds} seeds")
    print(markdown)
    return 0


def _augment(args, finished, started) -> int:
    def space_of(problems: int) -> SearchSpace:
        return SearchSpace(problems, finished.generator.noise_dim, (-args.bound, args.bound), args.population,
                           args.generations)

    if args.copies > args.population:
        raise ValueError(f"--copies {args.copies} exceeds --population {args.population} (the elite set)")
    results, rare, count = augmentation_study(finished, range(args.seeds), args.rare_share, args.copies, space_of)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out / "augment.csv", results)
    lines = [f"rare Acc-7 bins {rare} (share < {args.rare_share}): {count} training utterances, {args.copies} "
             f"extra fakes each; {args.seeds} seeds; test metrics at the validation-selected epoch", "",
             "| arm | metric | mean ± std [95 % interval] | arm − base (paired) |", "|---|---|---|---|"]
    for entry in summarise_augmentation(results):
        diff = ("" if "diff_vs_base" not in entry else
                f"{entry['diff_vs_base']:+.4f} [{entry['diff_low']:+.4f}, {entry['diff_high']:+.4f}]"
                + (" *" if entry["diff_excludes_zero"] else ""))
        lines.append(f"| {entry['arm']} | {entry['metric']} | {entry['mean']:.4f} ± {entry['std']:.4f} "
                     f"[{entry['low']:.4f}, {entry['high']:.4f}] | {diff} |")
    lines += ["", f"* the paired interval excludes zero. run {finished.run_dir}; wall {time.time() - started:.0f} s"]
    (args.out / "augment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _markdown(table: list[dict[str, Any]], reference: dict[str, float], settings: dict[str, Any]) -> str:
    def cell(entry: dict[str, Any]) -> str:
        text = f"{entry['mean']:.3f} ± {entry['std']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"
        if "diff_vs_reference" in entry:
            text += (f"; GA − this {entry['diff_vs_reference']:+.3f} "
                     f"[{entry['diff_low']:+.3f}, {entry['diff_high']:+.3f}]")
        return text
    methods = list(dict.fromkeys(entry["method"] for entry in table))
    lines = [f"| figure | {' | '.join(methods)} | z = 0 (no search) |", "|---" * (len(methods) + 2) + "|"]
    for figure in FIGURES:
        cells = [cell(next(e for e in table if e["method"] == m and e["figure"] == figure)) for m in methods]
        lines.append(f"| {figure} | {' | '.join(cells)} | {reference[figure]:.3f} |")
    return ("\n".join(lines) + "\n\nmean ± std [95 % interval] over seeds; GA − this: paired difference over seeds "
            "[95 % interval].\n\n```json\n" + json.dumps(settings, indent=1, default=str) + "\n```\n")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _plot_generations(result, path: Path, title: str) -> None:
    plt = pyplot()
    best, mean = np.stack(result.best), np.stack(result.mean)  # [generations, T]
    generations = np.arange(len(best))
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(generations, best.mean(axis=1), label="best (mean over texts)")
    axis.fill_between(generations, best.min(axis=1), best.max(axis=1), alpha=0.2, label="best (min-max over texts)")
    axis.plot(generations, mean.mean(axis=1), label="elite mean (mean over texts)")
    axis.set(xlabel="generation", ylabel="fitness 1 - TV(p, target)", title=title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_curves(curves: dict[str, np.ndarray], path: Path, title: str) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for method, curve in curves.items():
        if method != "evaluations":
            axis.plot(curves["evaluations"], curve, label=method)
    axis.set(xlabel="fitness evaluations per text", ylabel="best fitness (mean over texts and seeds)", title=title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
