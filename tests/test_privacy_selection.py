"""`hydiscgan privacy`: the recommended setting comes from validation, never from test metrics."""

from __future__ import annotations

import math

from hydiscgan_fl.orchestration import privacy_sweep


def _row(unit: str, noise: float, seed: int, valid: float, test: float, epsilon: float) -> dict[str, str]:
    row = {column: "" for column in privacy_sweep.COLUMNS}
    row.update({"dp_unit": unit, "noise_multiplier": str(noise), "adv_lambda": "0.0", "seed": str(seed),
                "epsilon_rdp": str(epsilon), "epsilon_prv": str(epsilon), "valid_acc2": str(valid),
                "acc2": str(test), "f1": str(test), "speaker_attack_acc": "0.05", "mia_auc": "0.5"})
    return row


ROWS = [
    _row("none", 0.0, 0, 0.80, 0.70, math.inf), _row("none", 0.0, 1, 0.82, 0.72, math.inf),
    # Best on test, worse on validation: must not be recommended.
    _row("utterance", 2.0, 0, 0.70, 0.90, 8.0), _row("utterance", 2.0, 1, 0.72, 0.92, 8.0),
    _row("speaker", 2.0, 0, 0.76, 0.60, 13.0), _row("speaker", 2.0, 1, 0.78, 0.62, 13.0),
]


def test_recommendation_uses_mean_validation_among_dp_points_only():
    summary = privacy_sweep.summarise(ROWS)
    assert [(p["dp_unit"], p["seeds"]) for p in summary] == [("none", [0, 1]), ("utterance", [0, 1]),
                                                             ("speaker", [0, 1])]
    best = privacy_sweep.recommend(summary, "binary")
    assert (best["dp_unit"], best["noise_multiplier"]) == ("speaker", 2.0)
    assert best["valid_acc2"]["mean"] == 0.77 and best["acc2"]["n"] == 2
    text = privacy_sweep.report(summary, best, "binary")
    assert "Recommended, on mean validation acc2" in text and "dp-unit speaker, sigma 2" in text
    # Two seeds: mean ± std [95% interval] cells.
    assert "0.77 ± 0.014 [" in text


def test_no_dp_point_means_no_recommendation():
    summary = privacy_sweep.summarise(ROWS[:2])
    assert privacy_sweep.recommend(summary, "binary") is None
