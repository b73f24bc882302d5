"""One real Flower run (`flwr run` on a managed local SuperLink, Ray simulation, real MOSI data), and a
baseline method through the same apps in process."""

from __future__ import annotations

import csv
import json

import torch

from examples.in_process import run_in_process
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.orchestration.flwr_runner import LocalFederation
from tests.sanity import above_chance


def test_flwr_run_completes_both_stages_and_writes_the_run_directory(tmp_path):
    run_config = {"rounds-align": 1, "rounds-msa": 2, "local-epochs": 1, "output-dir": str(tmp_path)}
    with LocalFederation(flwr_home=tmp_path / "flwr-home") as federation:
        outcome = federation.run(run_config, num_supernodes=3, timeout_s=600)
    assert outcome.status == "finished:completed"
    assert f"run directory: {outcome.run_dir}" in outcome.log
    files = {p.name for p in outcome.run_dir.iterdir()}
    assert {"config.json", "metrics.csv", "clients.csv", "summary.json", "checkpoint.pt"} <= files

    rows = list(csv.DictReader((outcome.run_dir / "metrics.csv").open()))
    assert [(r["stage"], int(r["round"])) for r in rows] == [("align", 1), ("msa", 2), ("msa", 3)]
    for row in rows:
        assert int(row["replies_ok"]) == 3 and int(row["replies_failed"]) == 0
        assert 0.0 <= float(row["test_acc2"]) <= 1.0 and 0.0 <= float(row["test_f1"]) <= 1.0
        assert 0.0 <= float(row["valid_acc2"]) <= 1.0 and 0.0 <= float(row["valid_f1"]) <= 1.0
        assert float(row["bytes_up_per_client"]) > 0 and float(row["bytes_down_per_client"]) > 0
        assert float(row["wall_s"]) > 0
    assert float(rows[0]["bytes_up_per_client"]) < float(rows[1]["bytes_up_per_client"])  # G only, then G+M

    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary["num_clients"] == 3
    # The reported round is the best on validation, and its test metrics are the ones reported.
    best = max(rows, key=lambda r: (float(r["valid_acc2"]), -int(r["round"])))
    assert summary["selection_metric"] == "valid_acc2" and summary["selected_round"] == int(best["round"])
    assert summary["acc2"] == float(best["test_acc2"]) and summary["valid_acc2"] == float(best["valid_acc2"])
    assert summary["last_round"] == 3 and summary["last_acc2"] == float(rows[-1]["test_acc2"])
    assert all(int(r["selected_round"]) <= int(r["round"]) for r in rows)
    # Above what always predicting MOSI's majority class scores (62% of the test utterances are positive).
    test_labels = HyDiscGANConfig().load_dataset().split_subset("test").labels
    assert summary["acc2"] > above_chance(test_labels) and summary["text_only_acc2"] > above_chance(test_labels)
    checkpoint = torch.load(outcome.run_dir / "checkpoint.pt", weights_only=True)
    assert set(checkpoint) == {"generator", "msa", "round", "dims", "config"}
    assert checkpoint["round"] == summary["selected_round"]
    assert checkpoint["dims"] == {"text": 100, "audio": 73, "visual": 100}


def test_the_multitask_baseline_federates_the_text_model_only(tmp_path):
    # The privileged-information baselines go through the same ServerApp, strategy and ClientApp as the run
    # above; in process (examples/in_process.py) since Ray and the SuperLink add nothing method-specific.
    run_config = {"dataset": "synthetic", "method": "multitask", "msa-model": "mlp", "rounds-msa": 2, "local-epochs": 1,
                  "output-dir": str(tmp_path)}
    run_dir = run_in_process(run_config, num_nodes=2).run_dir
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [(r["stage"], int(r["round"])) for r in rows] == [("multitask", 1), ("multitask", 2)]
    assert all(int(r["replies_ok"]) == 2 for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selected_round"] in (1, 2) and 0.0 <= summary["acc2"] <= 1.0
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["generator"] == {} and set(checkpoint["msa"]) == {  # the mlp text model, nothing else
        "proj_text.0.weight", "proj_text.0.bias", "proj_text.1.weight", "proj_text.1.bias",
        "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias", "head.4.weight", "head.4.bias"}
