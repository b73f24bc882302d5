"""Split a dataset's rows across federated clients.

We write our own partitioners instead of using flwr-datasets, which needs Hugging Face ``datasets``
and whose grouped speaker partitioner takes a group size, not a partition count.

Rules (``rule`` argument of :func:`partition_indices`):

- ``"speaker"``: whole speakers per partition, balanced by utterance count. Speakers are shuffled
  with the seed, then stably sorted by utterance count (largest first, so the shuffle only breaks
  ties), and each is given to the partition with the fewest rows so far (lowest index on ties).
- ``"iid"``: a seeded shuffle of all rows split into near-equal parts (``np.array_split``).
- ``"dirichlet:<alpha>"``: label skew. Classes are the binary labels, or for regression labels
  the sign class (label >= 0 vs < 0). For each class, partition proportions are drawn from
  Dirichlet(alpha, ..., alpha) and the class's shuffled rows are cut accordingly. The draw is
  repeated (at most ``DIRICHLET_MAX_TRIES`` times, then DataError) until every partition has at
  least ``min(10, N // num_partitions)`` rows.
"""

from __future__ import annotations

import math

import numpy as np

from .dataset import DataError

__all__ = ["partition_indices", "RULES", "DIRICHLET_MAX_TRIES"]

RULES = ("speaker", "iid", "dirichlet:<alpha>")
DIRICHLET_MAX_TRIES = 1000


def _rule_error(rule: str, why: str) -> DataError:
    return DataError(f"partition rule {rule!r}: {why}; valid rules are 'speaker', 'iid', 'dirichlet:<alpha>' (alpha > 0)")


def _speaker_partitions(speakers: np.ndarray, num_partitions: int, rng: np.random.Generator) -> list[np.ndarray]:
    names, inverse, counts = np.unique(speakers, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if num_partitions > len(names):
        raise DataError(
            f"partition rule 'speaker': {num_partitions} partitions requested but there are only "
            f"{len(names)} speakers (a speaker is never split across partitions)"
        )
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes = np.zeros(num_partitions, dtype=np.int64)
    owner = np.empty(len(names), dtype=np.int64)
    for spk in order:
        target = int(np.argmin(sizes))  # first minimum: lowest index on ties
        owner[spk] = target
        sizes[target] += counts[spk]
    row_owner = owner[inverse]
    return [np.flatnonzero(row_owner == p) for p in range(num_partitions)]


def _classes(labels: np.ndarray, label_kind: str | None) -> np.ndarray:
    if label_kind is None:
        label_kind = "binary" if np.all((labels == 0) | (labels == 1)) else "regression"
    if label_kind == "binary":
        return (labels == 1).astype(np.int64)
    if label_kind == "regression":
        return (labels >= 0).astype(np.int64)
    raise DataError(f"label_kind must be 'binary', 'regression' or None, got {label_kind!r}")


def _dirichlet_partitions(
    rule: str, alpha: float, classes: np.ndarray, num_partitions: int, rng: np.random.Generator, sizes: np.ndarray
) -> list[np.ndarray]:
    """Units (rows, or whole videos of `sizes` rows) per partition; the minimum is counted in rows."""
    min_rows = min(10, int(sizes.sum()) // num_partitions)
    class_rows = [np.flatnonzero(classes == c) for c in np.unique(classes)]
    for _ in range(DIRICHLET_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for rows in class_rows:
            shuffled = rng.permutation(rows)
            proportions = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
            for p, piece in enumerate(np.split(shuffled, cuts)):
                parts[p].append(piece)
        result = [np.concatenate(pieces) for pieces in parts]
        if min(int(sizes[r].sum()) for r in result) >= min_rows:
            return result
    raise _rule_error(
        rule,
        f"could not give every one of {num_partitions} partitions at least {min_rows} rows in "
        f"{DIRICHLET_MAX_TRIES} draws; use a larger alpha or fewer partitions",
    )


def _whole_videos(videos: np.ndarray, labels: np.ndarray, label_kind: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The video of each row (as a number) and each video's mean label (rounded for binary labels)."""
    _, video_of_row = np.unique(np.asarray(videos).reshape(-1), return_inverse=True)
    video_of_row = video_of_row.reshape(-1)
    if len(video_of_row) != len(labels):
        raise DataError(f"videos has {len(video_of_row)} rows but labels has {len(labels)}")
    video_labels = np.bincount(video_of_row, weights=labels) / np.bincount(video_of_row)
    if label_kind == "binary" or (label_kind is None and np.all((labels == 0) | (labels == 1))):
        video_labels = np.round(video_labels)
    return video_of_row, video_labels


def partition_indices(
    labels: np.ndarray,
    speakers: np.ndarray,
    num_partitions: int,
    rule: str,
    seed: int,
    *,
    label_kind: str | None = None,
    videos: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Row indices of each partition: sorted int64 arrays, disjoint, together covering every row.

    ``label_kind`` ("binary" or "regression") only matters for the dirichlet rule; when None it is
    inferred (binary if every label is 0 or 1). Deterministic for a given seed. With ``videos`` (the
    video of every row), "iid" and "dirichlet" assign whole videos (context models need them): iid splits
    the shuffled videos into near-equal counts; dirichlet draws as for rows, one unit per video labelled
    with its mean label (rounded for binary labels), and counts the minimum partition size in rows.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    speakers = np.asarray(speakers).reshape(-1)
    if len(labels) != len(speakers):
        raise DataError(f"labels has {len(labels)} rows but speakers has {len(speakers)}")
    n = len(labels)
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise DataError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
    num_partitions = int(num_partitions)
    if n == 0:
        raise DataError("cannot partition an empty dataset")
    if num_partitions > n:
        raise DataError(f"{num_partitions} partitions requested but there are only {n} rows")
    if not isinstance(rule, str):
        raise _rule_error(str(rule), "rule must be a string")
    rng = np.random.default_rng(seed)
    # The units iid and dirichlet assign: rows, or whole videos (one unit per video, with its mean label).
    unit_of_row, unit_labels = np.arange(n), labels
    if videos is not None and rule != "speaker":  # "speaker" keeps a speaker's videos together anyway
        unit_of_row, unit_labels = _whole_videos(videos, labels, label_kind)
        if num_partitions > len(unit_labels):
            raise _rule_error(rule, f"{num_partitions} partitions requested but there are only {len(unit_labels)} "
                                    "videos (a video is never split across partitions)")

    if rule == "speaker":
        parts = _speaker_partitions(speakers, num_partitions, rng)
    elif rule == "iid":
        parts = np.array_split(rng.permutation(len(unit_labels)), num_partitions)
    elif rule.startswith("dirichlet:"):
        text = rule.split(":", 1)[1].strip()
        try:
            alpha = float(text)
        except ValueError:
            raise _rule_error(rule, f"alpha {text!r} is not a number") from None
        if not math.isfinite(alpha) or alpha <= 0:
            raise _rule_error(rule, f"alpha must be a finite number > 0, got {text!r}")
        if not np.all(np.isfinite(labels)):
            raise DataError(f"partition rule {rule!r}: labels contain NaN/Inf")
        parts = _dirichlet_partitions(rule, alpha, _classes(unit_labels, label_kind), num_partitions, rng,
                                      np.bincount(unit_of_row))
    else:
        raise _rule_error(rule, "unknown rule")
    if rule != "speaker":  # units -> their rows
        parts = [np.flatnonzero(np.isin(unit_of_row, part)) for part in parts]
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
