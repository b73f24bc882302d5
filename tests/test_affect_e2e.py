"""One real Flower run of the affect task: `flwr run`, Ray simulation, one client per participant."""

from __future__ import annotations

import csv
import json

import torch

from hydiscgan_fl.orchestration.flwr_runner import LocalFederation


def test_flwr_run_of_the_affect_task_trains_one_client_per_participant(tmp_path):
    # affect-synthetic:5 -> 1 test, 1 validation and 3 training participants: 3 SuperNodes, one each.
    run_config = {"task": "affect", "dataset": "affect-synthetic:5", "rounds-msa": 2, "local-epochs": 1,
                  "affect-model": "gru", "affect-hidden": 8, "affect-layers": 1, "aggregation": "mean",
                  "output-dir": str(tmp_path)}
    with LocalFederation(flwr_home=tmp_path / "flwr-home") as federation:
        outcome = federation.run(run_config, num_supernodes=3, timeout_s=600)
    assert outcome.status == "finished:completed", outcome.log[-3000:]
    rows = list(csv.DictReader((outcome.run_dir / "metrics.csv").open()))
    assert [(r["stage"], int(r["round"])) for r in rows] == [("affect", 1), ("affect", 2)]
    for row in rows:
        assert int(row["replies_ok"]) == 3 and int(row["replies_failed"]) == 0
        for split in ("valid", "test"):
            assert -1.0 <= float(row[f"{split}_ccc_valence"]) <= 1.0
            assert -1.0 <= float(row[f"{split}_ccc_arousal"]) <= 1.0
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary["selection_metric"] == "valid_ccc_mean" and summary["num_clients"] == 3
    best = max(rows, key=lambda r: (float(r["valid_ccc_mean"]), -int(r["round"])))
    assert summary["selected_round"] == int(best["round"])
    assert summary["ccc_valence"] == float(best["test_ccc_valence"])
    assert "ccc_valence=" in outcome.log and "text_only_acc2" not in summary
    checkpoint = torch.load(outcome.run_dir / "checkpoint.pt", weights_only=True)
    assert set(checkpoint["msa"]) and checkpoint["dims"] == {"au": 17}
