"""Three searches over the same bounded genome space with the same number of fitness evaluations:
EvoGAN's genetic algorithm, random search and CMA-ES (the `cma` package).

All three solve T independent problems at once (one per text): `fitness` maps genomes [T, B, D] to
fitness [T, B] (higher is better, at most 1). The budget is population x (generations + 1) evaluations
per problem, what EvoGAN's 20 generations of 20 would cost if every parent made a child: random search
draws that many uniform genomes in batches of `population`; CMA-ES runs generations + 1 iterations of
`population` candidates; the GA evaluates its initial population and then only the children it makes
(fitness is deterministic, so parents are not evaluated again), and since a parent makes a child only
with probability pc + pm it runs as many generations as it takes to spend the same budget (children
beyond a problem's budget are discarded unevaluated). Each search keeps its elite set, the K = population
best genomes evaluated so far (for the GA that is its population: elitist truncation keeps exactly those),
and logs after every generation (batch) the evaluations spent, the best and mean fitness of the elite set
and its diversity (mean pairwise Euclidean distance of the genomes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cma
import numpy as np

from hydiscgan_fl.evolution.operators import elitist_truncation, mean_pairwise_distance, offspring

Fitness = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SearchSpace:
    """`problems` independent searches over genomes of `dim` genes in [low, high]."""

    problems: int
    dim: int
    bounds: tuple[float, float] = (-3.0, 3.0)
    population: int = 20
    generations: int = 20

    def __post_init__(self):
        low, high = self.bounds
        if not low < high:
            raise ValueError(f"bounds: low {low} must be below high {high}")
        if self.population < 2 or self.generations < 0 or self.dim < 1 or self.problems < 1:
            raise ValueError(f"population >= 2, generations >= 0, dim >= 1 and problems >= 1 needed: {self}")

    @property
    def budget(self) -> int:
        """Fitness evaluations per problem."""
        return self.population * (self.generations + 1)

    def uniform(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.uniform(*self.bounds, size=(self.problems, count, self.dim))


@dataclass
class SearchResult:
    """The elite set of every problem (best first) and the per-generation log, arrays [generations + 1, T]."""

    method: str
    elites: np.ndarray = None  # [T, K, D]
    elite_fitness: np.ndarray = None  # [T, K]
    evaluations: list[np.ndarray] = field(default_factory=list)  # spent per problem, [T] per generation
    best: list[np.ndarray] = field(default_factory=list)
    mean: list[np.ndarray] = field(default_factory=list)
    diversity: list[np.ndarray] = field(default_factory=list)

    def offer(self, genomes: np.ndarray, fitness: np.ndarray, evaluated: np.ndarray | int) -> None:
        """Merge a batch of evaluated genomes into the elite set (fitness -inf: not a candidate) and log
        the generation with the evaluations spent so far (per problem, or one count for all)."""
        size = genomes.shape[1] if self.elites is None else self.elites.shape[1]
        if self.elites is not None:
            genomes = np.concatenate([self.elites, genomes], axis=1)
            fitness = np.concatenate([self.elite_fitness, fitness], axis=1)
        self.elites, self.elite_fitness = elitist_truncation(genomes, fitness, size)
        self.evaluations.append(np.broadcast_to(np.asarray(evaluated), fitness.shape[:1]).copy())
        self.best.append(self.elite_fitness[:, 0].copy())
        self.mean.append(self.elite_fitness.mean(axis=1))
        self.diversity.append(mean_pairwise_distance(self.elites))

    @property
    def best_genomes(self) -> np.ndarray:
        return self.elites[:, 0]

    def log_rows(self) -> list[dict[str, float]]:
        """One row per (problem, generation): generation, evaluations, best, mean, diversity."""
        return [{"method": self.method, "problem": problem, "generation": generation,
                 "evaluations": int(self.evaluations[generation][problem]),
                 "best": float(self.best[generation][problem]),
                 "mean": float(self.mean[generation][problem]),
                 "diversity": float(self.diversity[generation][problem])}
                for problem in range(self.elites.shape[0]) for generation in range(len(self.evaluations))]


# The GA stops after this many times `generations` even if budget is left (never reached in practice:
# the converged-population guard keeps at least 72 % of the parents making children).
MAX_GENERATION_FACTOR = 50


def evogan_search(fitness: Fitness, space: SearchSpace, seed: int) -> SearchResult:
    """EvoGAN's GA (hydiscgan_fl.evolution.operators): a uniform initial population, then per generation
    at most one child per parent by adaptive-rate crossover or mutation, and elitist truncation, until the
    budget is spent."""
    rng = np.random.default_rng(seed)
    result = SearchResult("evogan")
    population = space.uniform(rng, space.population)
    spent = np.full(space.problems, space.population)
    result.offer(population, fitness(population), spent)
    for _ in range(MAX_GENERATION_FACTOR * max(space.generations, 1)):
        if (spent >= space.budget).all():
            break
        children, made = offspring(result.elites, result.elite_fitness, space.bounds, rng)
        made &= np.cumsum(made, axis=1) <= (space.budget - spent)[:, None]  # within each problem's budget
        spent = spent + made.sum(axis=1)
        result.offer(children, np.where(made, fitness(children), -np.inf), spent)
    return result


def random_search(fitness: Fitness, space: SearchSpace, seed: int) -> SearchResult:
    """Uniform genomes in the bounds, in batches of `population`."""
    rng = np.random.default_rng(seed)
    result = SearchResult("random")
    for generation in range(space.generations + 1):
        batch = space.uniform(rng, space.population)
        result.offer(batch, fitness(batch), space.population * (generation + 1))
    return result


def cmaes_search(fitness: Fitness, space: SearchSpace, seed: int) -> SearchResult:
    """CMA-ES (cma.CMAEvolutionStrategy, one per problem) with population size `population`, the mean
    started uniformly in the bounds, step size a quarter of the range, cma's bound handling (BoundTransform)
    and the candidates clipped into the bounds as a safeguard."""
    rng = np.random.default_rng(seed)
    low, high = space.bounds
    starts = space.uniform(rng, 1)[:, 0]
    options = {"popsize": space.population, "bounds": [low, high], "verbose": -9, "seed": int(seed) + 1,
               "CMA_diagonal": False, "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolstagnation": 10**9}
    strategies = [cma.CMAEvolutionStrategy(start, (high - low) / 4, options) for start in starts]
    result = SearchResult("cmaes")
    for generation in range(space.generations + 1):
        asked = [strategy.ask() for strategy in strategies]
        batch = np.clip(np.asarray(asked, dtype=np.float64), low, high)
        scores = fitness(batch)
        for strategy, candidates, score in zip(strategies, asked, scores):
            strategy.tell(candidates, list(-score))  # cma minimises
        result.offer(batch, scores, space.population * (generation + 1))
    return result


SEARCHES: dict[str, Callable[[Fitness, SearchSpace, int], SearchResult]] = {
    "evogan": evogan_search, "random": random_search, "cmaes": cmaes_search}
