"""Augmentation with evolved fakes: does adding G(t, z*) for the rare sentiment bins help M?

Continuous labels only (Acc-7 bins -3..3). A bin is rare when its share of the training labels is below
`rare_share`. For every training utterance in a rare bin, EvoGAN's GA searches z so that the run's M
reads (t, G(t, z)) as that utterance's own label (target: the label's bin mix, see
hydiscgan_fl.evolution.fitness), and the `copies` best z of its final elite set give extra training rows
(t, G(t, z*), y). Three arms, each a fresh M trained centrally on the server's text and labels with G's
fakes (stage-2 style, hydiscgan_fl.evolution.judges.train_msa_on_fakes), paired by seed:

- `base`: no extra rows;
- `oversample`: the same rare utterances and number of extra rows, with z ~ N(0, I) (the control: more
  weight on rare bins without any search);
- `evolved`: the extra rows from the GA.

Each arm selects its epoch on the validation speakers; test metrics at that epoch are reported once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from hydiscgan_fl.evolution.fitness import TextConditionedJudge, match_fitness, score_distribution
from hydiscgan_fl.evolution.judges import FinishedRun, train_msa_on_fakes
from hydiscgan_fl.evolution.search import SearchSpace, evogan_search
from hydiscgan_fl.metrics import mean_interval, paired_difference
from hydiscgan_fl.training.data import UtteranceTensors

ARMS = ("base", "oversample", "evolved")
REPORTED = ("acc7", "f1", "mae")


def rare_rows(labels: np.ndarray, rare_share: float) -> tuple[np.ndarray, list[int]]:
    """Indices of the labels in Acc-7 bins whose share is below `rare_share`, and those bins."""
    bins = np.round(np.clip(labels, -3.0, 3.0)).astype(int)
    shares = {b: float(np.mean(bins == b)) for b in range(-3, 4)}
    rare = [b for b, share in shares.items() if 0 < share < rare_share]
    return np.flatnonzero(np.isin(bins, rare)), rare


def extra_rows(run: FinishedRun, rows: np.ndarray, arm: str, copies: int, space: SearchSpace,
               seed: int) -> UtteranceTensors:
    """`copies` extra fakes per training utterance of `rows`: evolved z* or z ~ N(0, I)."""
    train = run.text_view.split_subset("train")
    text = torch.tensor(train.text[rows], dtype=torch.float32)
    labels = torch.tensor(train.labels[rows], dtype=torch.float32)
    judge = TextConditionedJudge(run.generator, run.msa, text, run.label_kind)
    if arm == "evolved":
        targets = score_distribution(train.labels[rows])  # [T, 7], one target per text
        result = evogan_search(lambda genomes: match_fitness(judge.distribution(genomes), targets[:, None, :]),
                               space, seed)
        genomes = result.elites[:, :copies]
    else:
        genomes = np.random.default_rng(seed).standard_normal((len(rows), copies, space.dim))
    text_rows, audio, visual = judge.features(genomes)
    return UtteranceTensors(text_rows, audio, visual, labels.repeat_interleave(copies))


def augmentation_study(run: FinishedRun, seeds: Sequence[int], rare_share: float, copies: int,
                       space_of: Any) -> tuple[list[dict[str, Any]], list[int], int]:
    """One row per (arm, seed) with test acc7, f1, mae at the validation-selected epoch, the rare bins and
    the number of rare training utterances. `space_of(problems)` gives the GA's search space."""
    if run.label_kind != "regression":
        raise ValueError(f"augmentation needs continuous labels (Acc-7 bins); {run.cfg.dataset} is {run.label_kind}")
    labels = np.asarray(run.text_view.split_subset("train").labels, dtype=np.float64)
    rows, rare = rare_rows(labels, rare_share)
    if rows.size == 0:
        raise ValueError(f"no Acc-7 bin of the training labels has a share below {rare_share}")
    results = []
    for seed in seeds:
        for arm in ARMS:
            extra = None if arm == "base" else extra_rows(run, rows, arm, copies, space_of(rows.size), seed)
            trained = train_msa_on_fakes(run, seed, extra)
            results.append({"arm": arm, "seed": seed, "selected_epoch": trained.selected_epoch,
                            **{f"valid_{k}": trained.valid.get(k) for k in REPORTED},
                            **{k: trained.test.get(k) for k in REPORTED}})
    return results, rare, int(rows.size)


def summarise_augmentation(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm and metric: mean ± std [95 % interval] over seeds, and the paired difference arm − base."""
    by_arm = {arm: {row["seed"]: row for row in results if row["arm"] == arm} for arm in ARMS}
    table = []
    for arm in ARMS:
        for metric in REPORTED:
            values = {seed: row[metric] for seed, row in by_arm[arm].items()}
            entry = {"arm": arm, "metric": metric, **mean_interval(list(values.values()))}
            if arm != "base":
                diff = paired_difference(values, {seed: row[metric] for seed, row in by_arm["base"].items()})
                entry.update({"diff_vs_base": diff["mean"], "diff_low": diff["low"], "diff_high": diff["high"],
                              "diff_excludes_zero": diff["excludes_zero"]})
            table.append(entry)
    return table
