"""The affect task through the ServerApp and ClientApps in one process (examples.in_process): resume,
participant-level DP with faults, the reply allow-list, one client per participant."""

from __future__ import annotations

import csv

import pytest

from examples.in_process import run_in_process
from hydiscgan_fl.privacy.reply_metrics import allowed_reply_metrics
from hydiscgan_fl.run_files import load_state, load_summary

# affect-synthetic:8 -> 5 training participants: 5 nodes, one participant each.
RUN = {"task": "affect", "dataset": "affect-synthetic:8", "rounds-msa": 3, "local-epochs": 1, "affect-model": "gru",
       "affect-hidden": 8, "affect-layers": 1, "aggregation": "fedadam"}
NODES = 5
METRICS = ("ccc_valence", "ccc_arousal", "ccc_mean", "mse")


def _rows(run_dir):
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def test_a_stopped_and_resumed_affect_run_ends_as_an_uninterrupted_one(tmp_path):
    full = run_in_process({**RUN, "output-dir": str(tmp_path)}, num_nodes=NODES).run_dir
    stopped = run_in_process({**RUN, "stop-after-round": 2, "output-dir": str(tmp_path)}, num_nodes=NODES).run_dir
    assert load_state(stopped)["round"] == 2 and not (stopped / "summary.json").exists()
    resumed = run_in_process({**RUN, "resume-from": str(stopped), "output-dir": str(tmp_path)},
                             num_nodes=NODES).run_dir
    assert {k: load_summary(resumed)[k] for k in METRICS} == {k: load_summary(full)[k] for k in METRICS}
    assert [r["test_ccc_mean"] for r in _rows(resumed)] == [r["test_ccc_mean"] for r in _rows(full)]


def test_participant_level_dp_with_crashing_clients_reports_epsilon_and_failures(tmp_path):
    run_config = {**RUN, "aggregation": "fedavg", "dp-unit": "speaker", "dp-noise-multiplier": 0.5,
                  "fault-rate": 0.3, "round-timeout-s": 3.0, "output-dir": str(tmp_path)}
    run_dir = run_in_process(run_config, num_nodes=NODES).run_dir
    rows = _rows(run_dir)
    assert [r["stage"] for r in rows] == ["affect"] * 3
    assert sum(int(r["replies_failed"]) for r in rows) > 0  # seed 0 and rate 0.3 inject some
    epsilons = [float(r["epsilon_rdp"]) for r in rows]
    assert 0 < epsilons[0] < epsilons[-1]
    assert "ccc_mean" in load_summary(run_dir)


def test_affect_replies_carry_no_loss_on_private_windows():
    assert "loss-task" not in allowed_reply_metrics("affect", "none")
    assert allowed_reply_metrics("affect", "speaker") == {"num-examples"}


def test_more_nodes_than_training_participants_is_an_error_naming_the_client(tmp_path):
    with pytest.raises(Exception, match="one client per participant"):
        run_in_process({**RUN, "rounds-msa": 1, "min-train-replies": NODES + 1, "output-dir": str(tmp_path)},
                       num_nodes=NODES + 1)
