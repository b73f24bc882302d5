"""One search's outcome in figures, and the comparison of the searches over seeds.

Per (method, seed), averaged over the texts: best fitness; the rate of texts whose best reaches
fitness >= SUCCESS; diversity of the final elites (mean pairwise distance of the K best genomes, in z);
realism of each text's best G(t, z*) (a client's D score, nearest-real-neighbour distance); and the
fitness of z* under a second, independently trained M, with its own success rate (a code that only
fools the M it was searched against scores low there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hydiscgan_fl.evolution.fitness import TextConditionedJudge, match_fitness
from hydiscgan_fl.evolution.judges import RealismJudge
from hydiscgan_fl.evolution.search import SEARCHES, SearchResult, SearchSpace
from hydiscgan_fl.metrics import mean_interval, paired_difference

SUCCESS = 0.95
FIGURES = ("best_fitness", "success_rate", "elite_diversity", "d_real_probability", "nearest_real_distance",
           "second_m_fitness", "second_m_success_rate")


def best_so_far(result: SearchResult, grid: Sequence[int]) -> np.ndarray:
    """Mean over problems of the best fitness after each evaluation count of `grid` (the last generation
    whose spend is within it), so that searches with different generation sizes share one axis."""
    spent = np.stack(result.evaluations)  # [generations, T]
    best = np.stack(result.best)
    curve = []
    for count in grid:
        last = np.maximum((spent <= count).sum(axis=0) - 1, 0)  # per problem
        curve.append(float(best[last, np.arange(best.shape[1])].mean()))
    return np.asarray(curve)


def outcome(result: SearchResult, judge: TextConditionedJudge, target: np.ndarray,
            realism: RealismJudge, second_msa: torch.nn.Module | None) -> dict[str, float]:
    """The figures of one search (module docstring); None-valued judges give NaN."""
    best = result.best_genomes[:, None, :]  # [T, 1, D]
    text, audio, visual = judge.features(best)
    distance = realism.nearest_real_distance(audio, visual)
    d_real = realism.discriminator_real_probability(text, audio, visual)
    second = (match_fitness(judge.distribution(best, second_msa), target)[:, 0]
              if second_msa is not None else np.full(best.shape[0], np.nan))
    return {
        "best_fitness": float(result.elite_fitness[:, 0].mean()),
        "success_rate": float((result.elite_fitness[:, 0] >= SUCCESS).mean()),
        "elite_diversity": float(result.diversity[-1].mean()),
        "d_real_probability": float(np.mean(d_real)) if d_real is not None else float("nan"),
        "nearest_real_distance": float(np.mean(distance)) if distance is not None else float("nan"),
        "second_m_fitness": float(second.mean()),
        "second_m_success_rate": float((second >= SUCCESS).mean()) if second_msa is not None else float("nan"),
    }


def no_search_reference(judge: TextConditionedJudge, target: np.ndarray, realism: RealismJudge,
                        second_msa: torch.nn.Module | None, dim: int) -> dict[str, float]:
    """The same figures for z = 0 (what inference uses), as the point the searches move away from."""
    zero = np.zeros((judge.text.shape[0], 1, dim))
    fitness = match_fitness(judge.distribution(zero), target)[:, 0]
    result = SearchResult("z=0")
    result.offer(zero, fitness[:, None], 1)
    return outcome(result, judge, target, realism, second_msa)


def compare_searches(judge: TextConditionedJudge, target: np.ndarray, space: SearchSpace, seeds: Sequence[int],
                     realism: RealismJudge, second_msa: torch.nn.Module | None,
                     methods: Sequence[str] = tuple(SEARCHES)) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Every method with every seed on the same texts and budget: one row per (method, seed), and each
    method's mean best-so-far curve over seeds at multiples of the population size."""
    fitness = judge.fitness(target)
    grid = list(range(space.population, space.budget + 1, space.population))
    rows, curves = [], {}
    for method in methods:
        method_curves = []
        for seed in seeds:
            result = SEARCHES[method](fitness, space, seed)
            rows.append({"method": method, "seed": seed, **outcome(result, judge, target, realism, second_msa)})
            method_curves.append(best_so_far(result, grid))
        curves[method] = np.mean(method_curves, axis=0)
    curves["evaluations"] = np.asarray(grid)
    return rows, curves


def summarise(rows: list[dict[str, Any]], reference: str = "evogan") -> list[dict[str, Any]]:
    """Per method and figure: mean, std and 95 % interval over seeds; for the other methods also the
    paired difference `reference` - method over seeds (its interval, and whether it excludes zero)."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    by_method = {m: {row["seed"]: row for row in rows if row["method"] == m} for m in methods}
    table = []
    for method in methods:
        for figure in FIGURES:
            values = {seed: row[figure] for seed, row in by_method[method].items()}
            entry = {"method": method, "figure": figure, **mean_interval(list(values.values()))}
            if method != reference and reference in by_method:
                ref = {seed: row[figure] for seed, row in by_method[reference].items()}
                diff = paired_difference(ref, values)
                entry.update({"diff_vs_reference": diff["mean"], "diff_low": diff["low"], "diff_high": diff["high"],
                              "diff_excludes_zero": diff["excludes_zero"]})
            table.append(entry)
    return table
