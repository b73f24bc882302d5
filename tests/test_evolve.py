"""hydiscgan evolve: EvoGAN's operators, the searches, and the command on a tiny in-process run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hydiscgan_fl.evolution.augment import rare_rows
from hydiscgan_fl.evolution.fitness import (
    TextConditionedJudge,
    match_fitness,
    output_distribution,
    parse_target,
    score_distribution,
)
from hydiscgan_fl.evolution.operators import (
    BASE_CROSSOVER,
    BASE_MUTATION,
    adaptive_rates,
    elitist_truncation,
    halve_or_double,
    offspring,
)
from hydiscgan_fl.evolution.search import SEARCHES, SearchSpace, evogan_search, random_search

BOUNDS = (-3.0, 3.0)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny forward passes: one thread avoids hand-off overhead on a shared CPU (as the command does)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyGenerator(nn.Module):
    """A hand-made G(t, z): fixed random maps, z moves the fakes."""

    noise_dim = 8

    def __init__(self):
        super().__init__()
        weights = torch.Generator().manual_seed(0)
        self.audio = torch.randn(8, 3, generator=weights)
        self.visual = torch.randn(8, 2, generator=weights)

    def forward(self, text, noise=None):
        noise = text.new_zeros(len(text), self.noise_dim) if noise is None else noise
        return text[:, :3] + torch.tanh(noise) @ self.audio, noise @ self.visual


class TinyMSA(nn.Module):
    """A hand-made M(t, a, v): a logit, steep enough that the target band is narrow."""

    def forward(self, text, audio, visual, layout=None):
        return 2.0 * (audio.sum(1) - visual.sum(1) + text[:, 3])


def tiny_fitness(texts: int = 10):
    text = torch.randn(texts, 4, generator=torch.Generator().manual_seed(1))
    return TextConditionedJudge(TinyGenerator(), TinyMSA(), text, "binary").fitness(np.array([0.7, 0.3]))


def test_mutation_and_offspring_keep_genes_in_bounds():
    rng = np.random.default_rng(0)
    edge = np.full((3, 6, 5), 2.9)  # doubling would leave the bounds
    assert halve_or_double(edge, BOUNDS, rng).max() <= 3.0
    genomes = rng.uniform(*BOUNDS, size=(4, 10, 5))
    children, made = offspring(genomes, rng.random((4, 10)), BOUNDS, rng)
    assert children.shape == genomes.shape and made.dtype == bool
    assert children.min() >= -3.0 and children.max() <= 3.0
    result = evogan_search(tiny_fitness(3), SearchSpace(3, 8, BOUNDS, 6, 5), seed=0)
    assert np.abs(result.elites).max() <= 3.0


def test_adaptive_rates_are_finite_when_the_population_has_converged():
    with np.errstate(all="raise"):  # the original divides by f_max - f_avg = 0 here
        crossover, mutation = adaptive_rates(np.full((2, 5), 0.8))
    assert np.all(crossover == BASE_CROSSOVER) and np.all(mutation == BASE_MUTATION)
    crossover, mutation = adaptive_rates(np.array([[1.0, 0.5, 0.0, 0.5]]))
    assert crossover[0, 0] == 0 and mutation[0, 0] == 0  # the best parent makes no child
    assert np.all((0 <= crossover) & (crossover <= 1)) and crossover[0, 2] == 1.0  # clipped probability


def test_elitist_truncation_keeps_the_best_and_the_best_never_gets_worse():
    genomes = np.arange(12, dtype=float).reshape(1, 4, 3)
    kept, fitness = elitist_truncation(genomes, np.array([[0.1, 0.9, 0.5, 0.9]]), 2)
    assert fitness.tolist() == [[0.9, 0.9]] and kept[0, 0].tolist() == [3.0, 4.0, 5.0]  # ties: the earlier first
    result = evogan_search(tiny_fitness(4), SearchSpace(4, 8, BOUNDS, 6, 8), seed=1)
    best = np.stack(result.best)
    assert np.all(np.diff(best, axis=0) >= 0)
    assert np.all(result.evaluations[-1] == 6 * 9)  # the same budget as random search


@pytest.mark.parametrize("method", sorted(SEARCHES))
def test_a_seed_reproduces_a_search(method):
    space = SearchSpace(2, 8, BOUNDS, 6, 3)
    first, again = (SEARCHES[method](tiny_fitness(2), space, seed=3) for _ in range(2))
    other = SEARCHES[method](tiny_fitness(2), space, seed=4)
    assert np.array_equal(first.elites, again.elites) and np.array_equal(first.elite_fitness, again.elite_fitness)
    assert not np.array_equal(first.elites, other.elites)


def test_evolution_beats_random_search_on_a_fixed_problem():
    space = SearchSpace(10, 8, BOUNDS, 20, 20)
    evolved = [evogan_search(tiny_fitness(), space, seed).elite_fitness[:, 0].mean() for seed in range(5)]
    drawn = [random_search(tiny_fitness(), space, seed).elite_fitness[:, 0].mean() for seed in range(5)]
    assert np.mean(evolved) > np.mean(drawn)
    assert sum(e > d for e, d in zip(evolved, drawn)) >= 4  # paired by seed


def test_rare_bins_are_those_below_the_share():
    rows, rare = rare_rows(np.array([0.1, -0.2, 0.4, 2.6, -2.9, 0.0]), rare_share=0.2)
    assert rare == [-3, 3] and rows.tolist() == [3, 4]


def test_targets_and_distributions():
    assert parse_target("0.7,0.3", "binary").tolist() == [0.7, 0.3]
    assert score_distribution(np.array([1.3]))[0].round(6).tolist() == [0, 0, 0, 0, 0.7, 0.3, 0]
    assert parse_target("-5", "regression").tolist() == [1, 0, 0, 0, 0, 0, 0]  # clipped to -3
    for bad, kind in (("0.7,0.4", "binary"), ("1,0,0", "regression"), ("x", "binary")):
        with pytest.raises(ValueError, match="--target"):
            parse_target(bad, kind)
    assert output_distribution(np.array([0.0]), "binary").tolist() == [[0.5, 0.5]]
    assert match_fitness(np.array([0.5, 0.5]), np.array([0.7, 0.3])) == pytest.approx(0.8)


def test_the_command_on_a_tiny_in_process_run(tmp_path, capsys):
    from examples.in_process import run_in_process
    from hydiscgan_fl.orchestration.cli import main

    run = run_in_process({"dataset": "synthetic", "msa-model": "mlp", "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                          "output-dir": str(tmp_path / "runs")}, num_nodes=2)
    common = ["evolve", "--run-dir", str(run.run_dir), "--target", "1.5", "--texts", "3", "--population", "4",
              "--generations", "2"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    log = (tmp_path / "one" / "evolve_log.csv").read_text().splitlines()
    assert log[0] == "method,problem,generation,evaluations,best,mean,diversity" and len(log) > 3 * 3
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["budget_per_text"] == 12 and summary["discriminators"].endswith(".pt")  # a client's saved D
    assert 0 <= summary["best_fitness"] <= 1 and summary["d_real_probability"] >= 0
    assert (tmp_path / "one" / "fitness.png").stat().st_size > 0
    relative = [*common[:3], "--target", "shift:-0.3", *common[5:]]  # per text: M's z=0 score - 0.3
    assert main([*relative, "--compare", "--seeds", "2", "--out", str(tmp_path / "cmp")]) == 0
    rows = (tmp_path / "cmp" / "compare.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * 2 and "second_m_fitness" in rows[0]
    assert "GA − this" in (tmp_path / "cmp" / "compare.md").read_text()
    assert main([*common[:3], "--augment", "--seeds", "1", "--rare-share", "0.5", "--copies", "2", "--population", "4",
                 "--generations", "1", "--out", str(tmp_path / "aug")]) == 0
    arms = [line.split(",")[0] for line in (tmp_path / "aug" / "augment.csv").read_text().splitlines()[1:]]
    assert arms == ["base", "oversample", "evolved"]
    bad_target = [*common[:3], "--target", "0.7,0.3", "--out", str(tmp_path / "bad")]  # binary, continuous run
    assert main(bad_target) == 2
    assert "7 bin weights" in capsys.readouterr().err


def test_the_evolution_core_does_not_import_flwr():
    code = ("import sys, hydiscgan_fl.evolution.augment, hydiscgan_fl.evolution.study; "
            "assert 'flwr' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))
