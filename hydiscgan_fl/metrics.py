"""Evaluation metrics for multimodal sentiment analysis (MSA).

The regression metrics follow MMSA's ``metricsTop.py`` (regression mode, the
function shared by MOSI and MOSEI) exactly, see
``shared/docs/msa-ecosystem.md`` section 1.6:

* ``mae``  = mean |pred - truth| on the **unclipped** values;
* ``corr`` = Pearson correlation on the unclipped values;
* ``acc7`` = mean(np.round(clip(pred, -3, 3)) == np.round(clip(truth, -3, 3)));
* ``acc5`` = the same with both clipped to [-2, 2];
* ``acc2_has0`` / ``f1_has0``: both arrays binarised as ``x >= 0`` (negative vs
  non-negative) over **all** samples;
* ``acc2_non0`` / ``f1_non0``: only samples whose **truth != 0**, binarised as
  ``x > 0`` (negative vs positive).

F1 is the *weighted* F1 with arguments ``(truth, pred)`` in that order, i.e.
the semantics of ``sklearn.metrics.f1_score(truth, pred, average='weighted')``
(implemented here with numpy; scikit-learn is not a dependency).

``np.round`` rounds halves to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0),
as MMSA, MulT and MMIM do; MOSI has labels ending in .5, so this matters at the
margin and is kept on purpose.

MMSA rounds every returned value to 4 decimals for display. The functions here
return full-precision Python floats; round when printing.

Model selection and reporting (:class:`ValidationSelection`, :func:`mean_interval`,
:func:`paired_difference`): the reported round or epoch is the best on the validation speakers by
:data:`SELECTION_METRIC` (Acc-2 for binary labels, the higher the better; MAE for continuous labels,
the lower the better, the primary metric of MMSA's regression setting); the test metrics of that step
are reported. Over seeds: mean, sample std, and a two-sided 95% Student-t interval of the mean.

This module depends on numpy and scipy (the t quantile) only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "weighted_f1",
    "msa_metrics",
    "binary_metrics",
    "ccc",
    "affect_metrics",
    "summary_metrics",
    "SELECTION_METRIC",
    "ValidationSelection",
    "mean_interval",
    "paired_difference",
    "HIGHER_IS_BETTER",
]


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------
def _to_1d(x: Any, name: str) -> np.ndarray:
    """Convert ``x`` (array-like or torch tensor) to a finite 1-D float64 array.

    Singleton dimensions are flattened away (shapes ``(N,)``, ``(N, 1)``,
    ``(1, N)``, ``(N, 1, 1)`` are all accepted, as MMSA's ``view(-1)`` on
    one-output models). An array with more than one non-singleton dimension,
    e.g. ``(N, 2)`` logits, is rejected instead of being silently flattened.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, duck-typed
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric array-like: {exc}") from exc
    non_singleton = [s for s in arr.shape if s != 1]
    if len(non_singleton) > 1:
        raise ValueError(
            f"{name} must be 1-D after flattening singleton dimensions, "
            f"got shape {arr.shape}"
        )
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _pair(preds: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _to_1d(preds, "preds")
    y = _to_1d(labels, "labels")
    if p.shape[0] != y.shape[0]:
        raise ValueError(
            f"preds and labels differ in length: {p.shape[0]} vs {y.shape[0]}"
        )
    return p, y


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------
def weighted_f1(truth: Any, pred: Any) -> float:
    """Weighted F1 with sklearn's ``f1_score(truth, pred, average='weighted')`` semantics.

    * classes are the union of the labels present in ``truth`` and ``pred``;
    * per class: precision = tp / #predicted, recall = tp / #true; a zero
      denominator gives 0 (sklearn's ``zero_division`` default, without the
      warning); F1 = 2 P R / (P + R), 0 when P + R = 0;
    * the weight of a class is its support in ``truth`` divided by the number
      of samples, so a class that only occurs in ``pred`` has weight 0 (those
      predictions still count as misses, lowering the recall of the true
      classes).

    The argument order matters: weighted F1 is not symmetric.
    """
    t = np.asarray(truth).reshape(-1)
    p = np.asarray(pred).reshape(-1)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"truth and pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("weighted_f1 of empty arrays")
    classes = np.union1d(np.unique(t), np.unique(p))
    total = float(t.shape[0])
    score = 0.0
    for c in classes:
        is_t = t == c
        is_p = p == c
        support = int(is_t.sum())
        if support == 0:
            continue  # weight 0
        n_pred = int(is_p.sum())
        tp = int(np.logical_and(is_t, is_p).sum())
        precision = tp / n_pred if n_pred > 0 else 0.0
        recall = tp / support
        f1 = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        score += (support / total) * f1
    return float(score)


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either array is constant (undefined)."""
    pc = p - p.mean()
    yc = y - y.mean()
    sp = float(np.sqrt(np.dot(pc, pc)))
    sy = float(np.sqrt(np.dot(yc, yc)))
    if sp == 0.0 or sy == 0.0:
        return float("nan")
    r = float(np.dot(pc, yc) / (sp * sy))
    return float(min(1.0, max(-1.0, r)))


# ---------------------------------------------------------------------------
# public metrics
# ---------------------------------------------------------------------------
def msa_metrics(preds: Any, labels: Any) -> dict[str, float]:
    """MMSA regression metrics for MOSI / MOSEI (sentiment in [-3, 3]).

    Parameters
    ----------
    preds : array-like
        Raw model outputs (not clipped), shape ``(N,)`` or with singleton dims.
    labels : array-like
        Continuous ground-truth sentiment, same length.

    Returns
    -------
    dict with keys ``acc2_has0, acc2_non0, f1_has0, f1_non0, acc5, acc7, mae,
    corr`` as full-precision floats (MMSA rounds them to 4 decimals for
    display; we do not).

    Notes
    -----
    * ``corr`` is ``float('nan')`` when the predictions (or the labels) are
      constant: Pearson's r is undefined there (numpy would also give NaN,
      with a warning).
    * ``acc2_non0`` and ``f1_non0`` are ``float('nan')`` when every label is
      exactly 0 (the non-zero subset is empty).
    * ``acc7`` / ``acc5`` use ``np.round``, which rounds halves to even.

    Raises
    ------
    ValueError
        On length mismatch, empty input, NaN/Inf, or arrays that are not 1-D
        after flattening singleton dimensions.
    """
    p, y = _pair(preds, labels)

    mae = float(np.mean(np.abs(p - y)))
    corr = _pearson(p, y)

    acc7 = float(np.mean(np.round(np.clip(p, -3.0, 3.0)) == np.round(np.clip(y, -3.0, 3.0))))
    acc5 = float(np.mean(np.round(np.clip(p, -2.0, 2.0)) == np.round(np.clip(y, -2.0, 2.0))))

    # has0: negative vs non-negative, all samples
    y_has0 = y >= 0
    p_has0 = p >= 0
    acc2_has0 = float(np.mean(y_has0 == p_has0))
    f1_has0 = weighted_f1(y_has0, p_has0)

    # non0: drop samples whose truth is exactly 0, negative vs positive
    keep = y != 0
    if np.any(keep):
        y_non0 = y[keep] > 0
        p_non0 = p[keep] > 0
        acc2_non0 = float(np.mean(y_non0 == p_non0))
        f1_non0 = weighted_f1(y_non0, p_non0)
    else:
        acc2_non0 = float("nan")
        f1_non0 = float("nan")

    return {
        "acc2_has0": acc2_has0,
        "acc2_non0": acc2_non0,
        "f1_has0": f1_has0,
        "f1_non0": f1_non0,
        "acc5": acc5,
        "acc7": acc7,
        "mae": mae,
        "corr": corr,
    }


def binary_metrics(pred_scores_or_labels: Any, labels: Any, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy and weighted F1 for binary labels in {0, 1}.

    Predictions are probabilities (or hard 0/1 labels) and are binarised as
    ``pred >= threshold``: a prediction exactly at the threshold (0.5 by
    default) counts as **positive**. Hard 0/1 predictions are unaffected by any
    threshold in (0, 1].

    Returns ``{"acc2": accuracy, "f1": weighted F1(truth, pred)}`` (same F1 as
    :func:`weighted_f1`).

    Raises ValueError on bad input (see :func:`msa_metrics`), on labels outside
    {0, 1}, or on a non-finite threshold.
    """
    if not np.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    p, y = _pair(pred_scores_or_labels, labels)
    bad = ~np.isin(y, (0.0, 1.0))
    if np.any(bad):
        raise ValueError(
            f"binary labels must be 0 or 1; found e.g. {np.unique(y[bad])[:5].tolist()}"
        )
    y_bin = y == 1.0
    p_bin = p >= threshold
    return {
        "acc2": float(np.mean(y_bin == p_bin)),
        "f1": weighted_f1(y_bin, p_bin),
    }


def ccc(preds: Any, labels: Any) -> float:
    """Lin's concordance correlation coefficient.

    ``ccc = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))**2)`` with
    population moments (ddof=0).

    Degenerate case: the denominator is 0 only when both arrays are constant
    **and** equal (hence identical); we return 1.0 there (perfect agreement).
    If only one array is constant, cov = 0 and the result is 0.0 by the formula.
    """
    x, y = _pair(preds, labels)
    mx = float(x.mean())
    my = float(y.mean())
    xc = x - mx
    yc = y - my
    vx = float(np.mean(xc * xc))
    vy = float(np.mean(yc * yc))
    cov = float(np.mean(xc * yc))
    denom = vx + vy + (mx - my) ** 2
    if denom == 0.0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float(2.0 * cov / denom)


def affect_metrics(preds: Any, targets: Any) -> dict[str, float]:
    """Continuous affect: CCC per dimension over all windows (columns valence, arousal), their mean (the
    selection metric) and the mean squared error."""
    p = np.asarray(preds, dtype=np.float64).reshape(-1, 2)
    y = np.asarray(targets, dtype=np.float64).reshape(-1, 2)
    if p.shape != y.shape:
        raise ValueError(f"preds {p.shape} and targets {y.shape} differ in shape")
    valence, arousal = ccc(p[:, 0], y[:, 0]), ccc(p[:, 1], y[:, 1])
    return {"ccc_valence": valence, "ccc_arousal": arousal, "ccc_mean": (valence + arousal) / 2.0,
            "mse": float(np.mean((p - y) ** 2))}


def summary_metrics(preds: Any, labels: Any, label_kind: str) -> dict[str, float]:
    """Metrics for either label kind used in the project.

    * ``label_kind == "binary"``: ``preds`` are probabilities of the positive
      class, ``labels`` in {0, 1}; returns :func:`binary_metrics`
      (``acc2``, ``f1``).
    * ``label_kind == "regression"``: returns :func:`msa_metrics` plus
      ``acc2`` and ``f1`` set to ``acc2_non0`` and ``f1_non0`` (negative vs
      positive, zeros excluded), the convention of recent MSA papers when a
      single Acc-2/F1 is quoted. The has0 versions stay in the dict; reports
      should say which one they use.
    """
    if label_kind == "binary":
        return binary_metrics(preds, labels)
    if label_kind == "regression":
        out = msa_metrics(preds, labels)
        out["acc2"] = out["acc2_non0"]
        out["f1"] = out["f1_non0"]
        return out
    raise ValueError(f"label_kind must be 'binary' or 'regression', got {label_kind!r}")


# ---------------------------------------------------------------------------
# model selection on validation, intervals over seeds
# ---------------------------------------------------------------------------
# label kind -> (metric, +1 when higher is better / -1 when lower is better)
SELECTION_METRIC: dict[str, tuple[str, int]] = {"binary": ("acc2", 1), "regression": ("mae", -1),
                                                "affect": ("ccc_mean", 1)}
# Direction of every reported metric, for reading paired differences (mae, mse: lower is better).
HIGHER_IS_BETTER = {"mae": False, "mse": False}


@dataclass
class ValidationSelection:
    """The best step (round or epoch) so far by the validation metric of ``label_kind``.

    ``offer(step, valid, test)`` keeps the step when its validation metric is strictly better than the
    kept one's (so on ties the earliest step stays); a NaN or missing metric is never selected.
    """

    label_kind: str
    step: int | None = None
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        return SELECTION_METRIC[self.label_kind][0]

    def offer(self, step: int, valid: Mapping[str, float], test: Mapping[str, float]) -> bool:
        name, sign = SELECTION_METRIC[self.label_kind]
        value = float(valid.get(name, math.nan))
        if math.isnan(value):
            return False
        if self.step is not None and not sign * value > sign * self.valid[name]:
            return False
        self.step, self.valid, self.test = int(step), dict(valid), dict(test)
        return True


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """n, mean, sample std (ddof=1) and the two-sided Student-t interval of the mean of ``values``:
    ``mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n)``. NaN values are dropped; with one value the
    std and the interval are NaN (nothing can be said about the spread), as with an infinite value."""
    x = np.asarray([v for v in values if not math.isnan(float(v))], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan}
    mean = float(x.mean())
    if n == 1 or not np.all(np.isfinite(x)):  # one value, or an infinite one (epsilon without DP): no spread
        return {"n": n, "mean": mean, "std": math.nan, "low": math.nan, "high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def paired_difference(method: Mapping[int, float], reference: Mapping[int, float],
                      confidence: float = 0.95) -> dict[str, Any]:
    """``method - reference`` over the seeds both have (paired by seed), with :func:`mean_interval` of
    the differences and ``excludes_zero``: whether the interval lies entirely on one side of 0."""
    seeds = sorted(set(method) & set(reference))
    summary: dict[str, Any] = mean_interval([float(method[s]) - float(reference[s]) for s in seeds], confidence)
    summary["excludes_zero"] = bool(summary["low"] > 0 or summary["high"] < 0)
    return summary
