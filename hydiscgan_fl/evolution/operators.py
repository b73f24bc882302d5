"""EvoGAN's genetic operators on real-valued genomes, vectorised over independent problems.

Every array holds T independent problems (one per text) of K genomes of D genes: genomes [T, K, D],
fitness [T, K]. After EvoGAN (Liu et al., Neurocomputing 2022; its public GA, read, not copied):

- adaptive rates per parent: pc = 0.7 * (f_max - f) / (f_max - f_avg), pm = 0.02 * (same ratio), so the
  best parent makes no child. Guard (a known bug of the original): when a problem's population has
  converged (f_max - f_avg <= CONVERGED) the ratio is 1 for every parent, i.e. the base rates, instead of
  a division by zero;
- each parent draws u ~ U(0, 1): u < pc makes a child by two-point crossover with a random partner
  (another member of the same population), pc <= u < pc + pm a child by mutation of the parent, else no
  child (as the public code does: a parent makes at most one child, and no unchanged copy);
- mutation halves or doubles one random gene; genes are then clipped into the bounds (the original
  leaves them unbounded);
- elitist truncation: parents and children together, sorted by fitness, the best K kept.
"""

from __future__ import annotations

import numpy as np

BASE_CROSSOVER = 0.7
BASE_MUTATION = 0.02
CONVERGED = 1e-12  # f_max - f_avg at or below this: the population has converged


def adaptive_rates(fitness: np.ndarray, base_crossover: float = BASE_CROSSOVER,
                   base_mutation: float = BASE_MUTATION) -> tuple[np.ndarray, np.ndarray]:
    """Per-parent crossover and mutation probabilities [T, K] (see the module docstring)."""
    f_max = fitness.max(axis=1, keepdims=True)
    spread = f_max - fitness.mean(axis=1, keepdims=True)
    converged = spread <= CONVERGED
    ratio = np.where(converged, 1.0, (f_max - fitness) / np.where(converged, 1.0, spread))
    return np.clip(base_crossover * ratio, 0.0, 1.0), np.clip(base_mutation * ratio, 0.0, 1.0)


def two_point_crossover(genomes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each genome takes the genes between two random cut points from a random other member of its
    population."""
    problems, size, dim = genomes.shape
    if size < 2:
        return genomes.copy()
    partner = (np.arange(size)[None, :] + rng.integers(1, size, (problems, size))) % size
    donors = np.take_along_axis(genomes, partner[..., None], axis=1)
    cuts = np.sort(rng.random((problems, size, dim + 1)).argsort(axis=2)[..., :2], axis=2)  # 2 distinct points
    position = np.arange(dim)[None, None, :]
    segment = (position >= cuts[..., :1]) & (position < cuts[..., 1:])
    return np.where(segment, donors, genomes)


def halve_or_double(genomes: np.ndarray, bounds: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Each genome has one random gene halved or doubled (even odds); all genes are clipped into `bounds`."""
    problems, size, dim = genomes.shape
    gene = rng.integers(0, dim, (problems, size))
    factor = np.where(rng.random((problems, size)) < 0.5, 0.5, 2.0)
    scale = np.ones_like(genomes)
    np.put_along_axis(scale, gene[..., None], factor[..., None], axis=2)
    return np.clip(genomes * scale, *bounds)


def elitist_truncation(genomes: np.ndarray, fitness: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The `size` fittest genomes of each problem, best first (ties keep the earlier genome)."""
    order = np.argsort(-fitness, axis=1, kind="stable")[:, :size]
    return np.take_along_axis(genomes, order[..., None], axis=1), np.take_along_axis(fitness, order, axis=1)


def offspring(genomes: np.ndarray, fitness: np.ndarray, bounds: tuple[float, float],
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """At most one child per parent (see the module docstring): children [T, K, D], in bounds, and which
    parents made one [T, K] (the other rows are to be ignored)."""
    crossover_rate, mutation_rate = adaptive_rates(fitness)
    draw = rng.random(fitness.shape)
    crossed = np.clip(two_point_crossover(genomes, rng), *bounds)
    mutated = halve_or_double(genomes, bounds, rng)
    children = np.where((draw < crossover_rate)[..., None], crossed, mutated)
    return children, draw < crossover_rate + mutation_rate


def mean_pairwise_distance(genomes: np.ndarray) -> np.ndarray:
    """Diversity of each problem's set [T]: mean Euclidean distance over distinct pairs (0 for one genome)."""
    size = genomes.shape[1]
    if size < 2:
        return np.zeros(genomes.shape[0])
    diff = genomes[:, :, None, :] - genomes[:, None, :, :]
    distances = np.sqrt((diff ** 2).sum(axis=-1))
    return distances.sum(axis=(1, 2)) / (size * (size - 1))
