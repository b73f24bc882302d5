"""Hand-worked checks of hydiscgan_fl.metrics (MMSA regression metrics, section 1.6)."""

import math

import numpy as np
import pytest


from hydiscgan_fl.metrics import (
    ValidationSelection,
    mean_interval,
    paired_difference,
    binary_metrics,
    ccc,
    msa_metrics,
    summary_metrics,
    weighted_f1,
)

KEYS = {"acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7", "mae", "corr"}

# preds include 0.5 / -0.5 / 2.5 (half-to-even rounding), labels include 0 (has0 vs non0 differ)
P = np.array([0.5, -0.5, 2.5, 1.4, -2.6, 0.2])
Y = np.array([0.0, -1.0, 3.0, 0.0, -2.0, -0.4])


def test_msa_keys_and_types():
    m = msa_metrics(P, Y)
    assert set(m) == KEYS
    assert all(type(v) is float for v in m.values())


def test_msa_mae():
    # |0.5-0| + |-0.5+1| + |2.5-3| + |1.4-0| + |-2.6+2| + |0.2+0.4|
    # = 0.5 + 0.5 + 0.5 + 1.4 + 0.6 + 0.6 = 4.1 -> 4.1 / 6
    assert msa_metrics(P, Y)["mae"] == pytest.approx(4.1 / 6)


def test_msa_acc7_acc5():
    m = msa_metrics(P, Y)
    # acc7: round(clip(., -3, 3)), halves to even
    #   preds  0.5->0, -0.5->-0, 2.5->2, 1.4->1, -2.6->-3, 0.2->0
    #   labels 0,      -1,       3,      0,      -2,       -0.4->-0
    #   equal: yes, no, no, no, no, yes -> 2/6
    assert m["acc7"] == pytest.approx(2 / 6)
    # acc5: clip to [-2, 2] first
    #   preds  0, -0, 2 (2.5->2), 1, -2 (-2.6->-2), 0
    #   labels 0, -1, 2 (3->2),   0, -2,            -0
    #   equal: yes, no, yes, no, yes, yes -> 4/6
    assert m["acc5"] == pytest.approx(4 / 6)


def test_round_half_to_even_in_acc7():
    p = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 3.7])
    # np.round: 0, -0, 2, 2, -2, 3 (3.7 clipped to 3)
    assert msa_metrics(p, [0, 0, 2, 2, -2, 3])["acc7"] == 1.0
    # labels equal to what "round half away from zero" would give (1, -1, 2, 3, -3, 3),
    # except the 1.5 entry set to 1: with half-to-even only 3.7 -> 3 matches
    assert msa_metrics(p, [1, -1, 1, 3, -3, 3])["acc7"] == pytest.approx(1 / 6)


def test_msa_has0():
    m = msa_metrics(P, Y)
    # truth >= 0: T F T T F F ; pred >= 0: T F T T F T -> 5/6 correct
    assert m["acc2_has0"] == pytest.approx(5 / 6)
    # weighted F1(truth, pred):
    #   class T: support 3, predicted 4, tp 3 -> P = 3/4, R = 1   -> F1 = 1.5/1.75 = 6/7
    #   class F: support 3, predicted 2, tp 2 -> P = 1,   R = 2/3 -> F1 = (4/3)/(5/3) = 4/5
    #   weighted = 3/6 * 6/7 + 3/6 * 4/5 = 3/7 + 2/5 = 29/35
    assert m["f1_has0"] == pytest.approx(29 / 35)


def test_msa_non0():
    m = msa_metrics(P, Y)
    # keep truth != 0: indices 1, 2, 4, 5
    # truth > 0: F T F F ; pred > 0 (-0.5, 2.5, -2.6, 0.2): F T F T -> 3/4 correct
    assert m["acc2_non0"] == pytest.approx(3 / 4)
    # class T: support 1, predicted 2, tp 1 -> P = 1/2, R = 1   -> F1 = 1/(3/2) = 2/3
    # class F: support 3, predicted 2, tp 2 -> P = 1,   R = 2/3 -> F1 = 4/5
    # weighted = 1/4 * 2/3 + 3/4 * 4/5 = 1/6 + 3/5 = 23/30
    assert m["f1_non0"] == pytest.approx(23 / 30)
    assert m["acc2_has0"] != m["acc2_non0"]


def test_msa_corr():
    m = msa_metrics(P, Y)
    assert m["corr"] == pytest.approx(np.corrcoef(P, Y)[0, 1])
    y = np.array([-2.0, -1.0, 0.5, 3.0])
    assert msa_metrics(2 * y + 1, y)["corr"] == pytest.approx(1.0)
    assert msa_metrics(-y, y)["corr"] == pytest.approx(-1.0)
    # unclipped: a prediction of 10 is not clipped to 3 for corr or mae
    assert msa_metrics([10.0, 0.0], [3.0, 0.0])["mae"] == pytest.approx(3.5)


def test_constant_predictions_corr_nan():
    m = msa_metrics([0.3, 0.3, 0.3, 0.3], [1.0, -1.0, 2.0, 0.0])
    assert math.isnan(m["corr"])
    # the other metrics are still defined
    # truth>=0: T F T T, pred>=0 all T -> 3/4
    assert m["acc2_has0"] == pytest.approx(3 / 4)
    # weighted F1: class T support 3, predicted 4, tp 3 -> 6/7; class F support 1,
    # predicted 0 -> precision 0 (zero division), recall 0 -> F1 0 ; 3/4 * 6/7 = 9/14
    assert m["f1_has0"] == pytest.approx(9 / 14)


def test_all_zero_labels_non0_nan():
    m = msa_metrics([0.1, -0.2], [0.0, 0.0])
    assert math.isnan(m["acc2_non0"]) and math.isnan(m["f1_non0"])
    assert m["acc2_has0"] == pytest.approx(0.5)


def test_singleton_dims_are_flattened():
    a = msa_metrics(P.reshape(-1, 1), Y.reshape(-1, 1, 1))
    b = msa_metrics(P, Y)
    assert a == pytest.approx(b)


def test_weighted_f1_hand_cases():
    # truth 1 1 1 0, pred 1 1 0 0
    #   class 1: support 3, predicted 2, tp 2 -> P 1, R 2/3 -> F1 0.8
    #   class 0: support 1, predicted 2, tp 1 -> P 1/2, R 1 -> F1 2/3
    #   weighted = 3/4 * 0.8 + 1/4 * 2/3 = 0.6 + 1/6 = 23/30
    assert weighted_f1([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(23 / 30)
    # swapped arguments (as MulT / MMIM do) give a different number:
    #   class 1: support 2, predicted 3, tp 2 -> P 2/3, R 1 -> 0.8
    #   class 0: support 2, predicted 1, tp 1 -> P 1, R 1/2 -> 2/3
    #   weighted = 1/2 * 0.8 + 1/2 * 2/3 = 11/15
    assert weighted_f1([1, 1, 0, 0], [1, 1, 1, 0]) == pytest.approx(11 / 15)
    # a class only in pred gets weight 0:
    #   truth 0 0 1 1, pred 0 2 1 1
    #   class 0: support 2, predicted 1, tp 1 -> P 1, R 1/2 -> 2/3 ; class 1: F1 1 ; class 2: weight 0
    #   weighted = 1/2 * 2/3 + 1/2 * 1 = 5/6
    assert weighted_f1([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx(5 / 6)
    # perfect
    assert weighted_f1([0, 1, 1], [0, 1, 1]) == 1.0
    assert weighted_f1([1, 1], [1, 1]) == 1.0


def test_binary_metrics_threshold_ties():
    # 0.5 counts as positive: preds -> 1 0 1 0 1
    probs = [0.5, 0.49, 0.9, 0.1, 0.5]
    labels = [1, 1, 0, 0, 0]
    m = binary_metrics(probs, labels)
    assert set(m) == {"acc2", "f1"}
    # correct: yes, no, no, yes, no -> 2/5
    assert m["acc2"] == pytest.approx(2 / 5)
    # class 1: support 2, predicted 3, tp 1 -> P 1/3, R 1/2 -> F1 (1/3)/(5/6) = 2/5
    # class 0: support 3, predicted 2, tp 1 -> P 1/2, R 1/3 -> F1 2/5
    # weighted = 2/5
    assert m["f1"] == pytest.approx(2 / 5)
    # hard 0/1 predictions work unchanged
    assert binary_metrics([1, 0, 1], [1, 0, 0])["acc2"] == pytest.approx(2 / 3)
    # custom threshold
    assert binary_metrics([0.5, 0.7], [0, 1], threshold=0.6)["acc2"] == 1.0


def test_binary_metrics_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0.2, 0.8], [0, 2])
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0.2, 0.8], [0, 0.5])
    with pytest.raises(ValueError):
        binary_metrics([0.2, 0.8], [0, 1], threshold=float("nan"))
    assert binary_metrics([0.2, 0.8], np.array([False, True]))["acc2"] == 1.0


def test_ccc_hand_and_degenerate():
    # x = 1 2 3, y = 2 3 5: mean_x 2, mean_y 10/3
    # var_x = (1 + 0 + 1)/3 = 2/3 ; var_y = (16/9 + 1/9 + 25/9)/3 = 14/9
    # cov = ((-1)(-4/3) + 0 + (1)(5/3))/3 = 1 ; (mean diff)^2 = 16/9
    # ccc = 2 * 1 / (6/9 + 14/9 + 16/9) = 2 / 4 = 0.5
    assert ccc([1, 2, 3], [2, 3, 5]) == pytest.approx(0.5)
    assert ccc([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert ccc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # shift lowers ccc but not Pearson
    assert ccc([1, 2, 3], [2, 3, 4]) < 1.0
    # both constant and equal: denominator 0 -> 1.0
    assert ccc([2.0, 2.0], [2.0, 2.0]) == 1.0
    # one constant: cov 0 -> 0.0
    assert ccc([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0


def test_summary_metrics():
    r = summary_metrics(P, Y, "regression")
    m = msa_metrics(P, Y)
    assert set(r) == KEYS | {"acc2", "f1"}
    assert r["acc2"] == m["acc2_non0"] and r["f1"] == m["f1_non0"]
    b = summary_metrics([0.5, 0.49, 0.9, 0.1, 0.5], [1, 1, 0, 0, 0], "binary")
    assert b == binary_metrics([0.5, 0.49, 0.9, 0.1, 0.5], [1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="label_kind"):
        summary_metrics(P, Y, "classification")


@pytest.mark.parametrize(
    "preds, labels, match",
    [
        ([0.1, 0.2], [0.1], "length"),
        ([], [], "empty"),
        ([0.1, float("nan")], [0.0, 1.0], "NaN"),
        ([0.1, 0.2], [0.0, float("inf")], "NaN or Inf"),
        (np.zeros((3, 2)), np.zeros((3, 2)), "1-D"),
        (["a", "b"], [0.0, 1.0], "numeric"),
    ],
)
def test_bad_input(preds, labels, match):
    for fn in (msa_metrics, ccc):
        with pytest.raises(ValueError, match=match):
            fn(preds, labels)


# ---------------------------------------------------------------------------
# selection on validation, intervals over seeds
# ---------------------------------------------------------------------------
def test_mean_interval_by_hand():
    # 1..5: mean 3, sample std sqrt(2.5) = 1.581139, t_{0.975, 4} = 2.776445,
    # half width = 2.776445 * 1.581139 / sqrt(5) = 1.963243.
    out = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert out["n"] == 5 and out["mean"] == pytest.approx(3.0)
    assert out["std"] == pytest.approx(1.581139, abs=1e-6)
    assert out["low"] == pytest.approx(3.0 - 1.963243, abs=1e-6)
    assert out["high"] == pytest.approx(3.0 + 1.963243, abs=1e-6)
    one = mean_interval([0.7])
    assert one["mean"] == 0.7 and math.isnan(one["std"]) and math.isnan(one["low"])
    assert mean_interval([0.5, float("nan"), 0.7])["n"] == 2


def test_paired_difference_by_hand():
    # differences by seed: 0.02, 0.03, 0.01 (seed 3 only in one method, dropped): mean 0.02, std 0.01,
    # t_{0.975, 2} = 4.302653, half width = 4.302653 * 0.01 / sqrt(3) = 0.024841.
    method = {0: 0.72, 1: 0.73, 2: 0.71, 3: 0.99}
    reference = {0: 0.70, 1: 0.70, 2: 0.70}
    out = paired_difference(method, reference)
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.02)
    assert out["low"] == pytest.approx(0.02 - 0.024841, abs=1e-6)
    assert out["high"] == pytest.approx(0.02 + 0.024841, abs=1e-6)
    assert not out["excludes_zero"]  # the interval (-0.0048, 0.0448) contains zero: not "better"
    shifted = paired_difference({s: v + 0.01 for s, v in method.items()}, reference)
    assert shifted["low"] > 0 and shifted["excludes_zero"]


def test_validation_selection_direction_ties_and_nan():
    binary = ValidationSelection("binary")
    assert binary.offer(1, {"acc2": 0.6}, {"acc2": 0.9})
    assert not binary.offer(2, {"acc2": 0.6}, {"acc2": 0.1})  # a tie keeps the earlier step
    assert binary.offer(3, {"acc2": 0.7}, {"acc2": 0.5})
    assert not binary.offer(4, {"acc2": float("nan")}, {"acc2": 1.0})
    assert (binary.step, binary.test) == (3, {"acc2": 0.5}) and binary.metric == "acc2"
    regression = ValidationSelection("regression")
    regression.offer(1, {"mae": 1.0}, {"mae": 1.1})
    regression.offer(2, {"mae": 0.8}, {"mae": 0.9})
    regression.offer(3, {"mae": 0.9}, {"mae": 0.5})  # lower MAE is better: round 2 stays
    assert (regression.step, regression.metric) == (2, "mae")
