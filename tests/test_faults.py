"""Injected client failures (crash, time-out): the run completes, failures are counted per round, and
only too few replies stop it, with an error naming them. Byzantine "inflate" clients and their column."""

from __future__ import annotations

import argparse
import csv
import math
from collections import Counter

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import handlers
from clients.simulated_faults import BYZANTINE_SCALE, INFLATED_EXAMPLES, injected_fault
from examples.in_process import run_in_process
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import make_synthetic
from hydiscgan_fl.models import build_shared_models
from hydiscgan_fl.orchestration.byzantine import MODES, markdown_table
from hydiscgan_fl.orchestration.flwr_runner import LocalFederation
from hydiscgan_fl.run_files import load_summary
from strategies import HyDiscGANStrategy, TooFewRepliesError
from tests.grids import StaticGrid

# Seed 0 with fault-rate 0.3 and 3 clients: round 1 clean, two crashes in round 2, a time-out in round 3.
FAULTY = {"dataset": "synthetic", "rounds-align": 1, "rounds-msa": 2, "local-epochs": 1, "fault-rate": 0.3, "seed": 0}
NUM_NODES = 3


def fault_schedule(run_config: dict) -> dict[int, Counter]:
    cfg = HyDiscGANConfig.from_run_config(run_config)
    return {r: Counter(injected_fault(cfg, r, pid) for pid in range(NUM_NODES)) for r in range(1, cfg.total_rounds + 1)}


def assert_failures_reported(run_dir, schedule: dict[int, Counter]) -> None:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(row["round"]) for row in rows] == list(schedule)
    for row in rows:
        expected = schedule[int(row["round"])]
        failed = (int(row["replies_error"]), int(row["replies_timeout"]), int(row["replies_rejected"]))
        assert failed == (expected["crash"], expected["timeout"], 0), (row["round"], failed)
        assert int(row["replies_ok"]) == NUM_NODES - sum(failed) and int(row["replies_failed"]) == sum(failed)
    details = [row["detail"] for row in csv.DictReader((run_dir / "clients.csv").open()) if row["status"] == "error"]
    assert details and all("injected fault 'crash'" in detail for detail in details)


def test_injected_faults_are_seeded_and_follow_the_rate():
    cfg = HyDiscGANConfig(fault_rate=0.3)
    draws = [injected_fault(cfg, r, pid) for r in range(1, 201) for pid in range(10)]
    assert draws == [injected_fault(cfg, r, pid) for r in range(1, 201) for pid in range(10)]
    counts = Counter(draws)
    assert abs((counts["crash"] + counts["timeout"]) / len(draws) - 0.3) < 0.03
    assert abs(counts["crash"] / (counts["crash"] + counts["timeout"]) - 0.5) < 0.06
    assert set(Counter(injected_fault(HyDiscGANConfig(fault_rate=1.0), 1, pid) for pid in range(50))) == {"crash", "timeout"}
    assert not any(injected_fault(HyDiscGANConfig(), r, 0) for r in range(1, 100))


def test_run_survives_crashes_and_timeouts_and_reports_them_per_round(tmp_path):
    run_config = {**FAULTY, "round-timeout-s": 4.0, "output-dir": str(tmp_path)}
    schedule = fault_schedule(run_config)
    assert schedule[2]["crash"] and schedule[3]["timeout"]  # the seed exercises both kinds
    run_dir = run_in_process(run_config, num_nodes=NUM_NODES).run_dir
    assert_failures_reported(run_dir, schedule)
    assert (run_dir / "summary.json").is_file()


def test_too_few_replies_stop_the_run_naming_the_failed_clients(tmp_path):
    run_config = {**FAULTY, "min-train-replies": NUM_NODES, "output-dir": str(tmp_path)}
    with pytest.raises(TooFewRepliesError, match=r"round 2 \(msa\): 1 valid repl.*min-train-replies=3.*"
                                                 r"partition-id=\d: injected fault 'crash' in round 2"):
        run_in_process(run_config, num_nodes=NUM_NODES)


def test_real_flwr_run_with_crashing_clients_a_user_rule_and_a_byzantine_client(tmp_path):
    """One real `flwr run` for three features: the user rule named by import path in the run config,
    crashing clients (seed 4: one crash in each of rounds 1 and 2) and a Byzantine client (partition 0).

    Crashes only: how long Ray's cold start takes on a loaded machine is unknown, so a short round timeout
    could fire on healthy clients too (Flower drops late replies itself; the in-process test above covers
    how time-outs are counted). The run must end exactly where the same run in one process ends: client
    seeds follow partition ids and replies are aggregated in a canonical order, so neither Ray's scheduling
    nor node ids matter.
    """
    run_config = {**FAULTY, "seed": 4, "aggregation": "examples.my_rule:ClippedMean", "byzantine-clients": 1}
    schedule = fault_schedule(run_config)
    assert schedule[1]["crash"] and not sum(s["timeout"] for s in schedule.values())
    with LocalFederation(flwr_home=tmp_path / "flwr-home") as federation:
        outcome = federation.run({**run_config, "output-dir": str(tmp_path / "flwr")}, num_supernodes=NUM_NODES,
                                 timeout_s=300)
    assert outcome.status == "finished:completed"
    assert "rules generator: ClippedMean, msa: ClippedMean" in outcome.log
    assert_failures_reported(outcome.run_dir, schedule)
    local = run_in_process({**run_config, "output-dir": str(tmp_path / "local")}, num_nodes=NUM_NODES)
    assert_failures_reported(local.run_dir, schedule)
    flwr_summary, local_summary = load_summary(outcome.run_dir), load_summary(local.run_dir)
    for key in ("acc2", "f1", "mae", "corr"):
        assert math.isclose(flwr_summary[key], local_summary[key], abs_tol=1e-6), key


def test_an_inflating_client_poisons_its_update_and_claims_a_billion_examples(task_identity):
    replies = {}
    for label, extra in {"honest": {}, "inflate": {"byzantine_clients": 1, "byzantine_mode": "inflate"}}.items():
        cfg = HyDiscGANConfig(dataset="synthetic", local_epochs=1, **extra)
        shared = build_shared_models(make_synthetic(seed=cfg.seed).dims, cfg, cfg.seed)
        (message,) = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0).configure_train(
            1, ArrayRecord(shared.state_dict()), ConfigRecord(), StaticGrid([7]))
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3},
                          state=RecordDict(), run_config=cfg.to_run_config())
        replies[label] = handlers.train(message, context).content
    sent = message.content["arrays"]
    honest, inflated = replies["honest"], replies["inflate"]
    assert inflated["metrics"]["num-examples"] == INFLATED_EXAMPLES != honest["metrics"]["num-examples"]
    for key in sent:  # without DP a client's round is seeded: the same update, scaled by -10
        expected = sent[key].numpy() + BYZANTINE_SCALE * (honest["arrays"][key].numpy() - sent[key].numpy())
        np.testing.assert_allclose(inflated["arrays"][key].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_the_byzantine_table_has_an_inflate_column():
    assert "inflate" in MODES
    rows = [{"rule": "fedavg", "attack": attack, "acc2": acc} for attack, acc in
            (("none", "0.75"), ("scale", "0.40"), ("random", "0.50"), ("inflate", "0.30"))]
    table = markdown_table(rows, argparse.Namespace(dataset="mosi-bclstm", num_clients=8, byzantine=2, seed=0))
    assert "| rule | clean | attack: scale | attack: random | attack: inflate |" in table
    assert "| fedavg | 0.7500 | 0.4000 (-35.0) | 0.5000 (-25.0) | 0.3000 (-45.0) |" in table
