"""Checkpoint and resume: a run stopped in the middle and resumed ends exactly as an uninterrupted one."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from clients.persistence import restore_client_state, save_client_state
from examples.in_process import run_in_process
from hydiscgan_fl.config import ConfigError
from hydiscgan_fl.orchestration.flwr_runner import LocalFederation
from hydiscgan_fl.run_files import load_state, load_summary
from strategies import HyDiscGANStrategy, make_rule
from tests.grids import StaticGrid

# FedAdam keeps moments across rounds, so a resume that lost them would not end where the full run does;
# stopping after round 3 stops inside stage 2, with M already federated.
RUN = {"dataset": "synthetic", "rounds-align": 2, "rounds-msa": 2, "local-epochs": 1, "aggregation": "fedadam"}
# In-process, node ids are the same in every run, so partial participation (the sampler's RNG) resumes
# exactly too; Flower gives simulated nodes new ids in every run (docs/aggregation.md).
SAMPLED = {**RUN, "fraction-train": 0.67}
METRICS = ("acc2", "f1", "mae", "corr")


def test_strategy_state_survives_a_checkpoint(task_identity, tmp_path):
    """FedAdam's moments and the client sampler's RNG, through torch.save and torch.load(weights_only=True)."""
    grid = StaticGrid(range(1, 6))

    def play(strategy, flower_round, arrays):
        messages = list(strategy.configure_train(flower_round, arrays, ConfigRecord(), grid))
        server_round = messages[0].content["config"]["server-round"]
        replies = [Message(RecordDict({"arrays": ArrayRecord({"generator.w": Array(
            np.full(3, float(m.metadata.dst_node_id * server_round), dtype=np.float32))}),
            "metrics": MetricRecord({"num-examples": 5})}), reply_to=m) for m in messages]
        return strategy.aggregate_train(flower_round, replies)[0], [m.metadata.dst_node_id for m in messages]

    def fresh():
        return HyDiscGANStrategy(rounds_align=5, aggregation=make_rule("fedadam"), fraction_train=0.6,
                                 node_settle_s=0.0, seed=3)

    arrays = ArrayRecord({"generator.w": Array(np.zeros(3, dtype=np.float32))})
    full = fresh()
    for server_round in (1, 2):
        arrays, _ = play(full, server_round, arrays)
    torch.save(full.state_dict(), tmp_path / "s.pt")
    resumed = fresh()
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    expected, expected_nodes = play(full, 3, arrays)
    got, got_nodes = play(resumed, 1, arrays)  # Flower's round 1 of the resumed run is round 3
    assert got_nodes == expected_nodes and resumed.rounds[-1].server_round == 3
    np.testing.assert_array_equal(got["generator.w"].numpy(), expected["generator.w"].numpy())
    assert not np.array_equal(expected["generator.w"].numpy(), play(fresh(), 3, arrays)[0]["generator.w"].numpy())


def test_client_state_is_saved_per_round_and_restored_only_into_an_empty_context(tmp_path):
    def state(value: float) -> RecordDict:
        return RecordDict({"private-models": ArrayRecord({"w": torch.full((2,), value)}),
                           "budget": MetricRecord({"epsilon": value})})

    for server_round in (1, 2, 3):
        save_client_state(state(float(server_round)), tmp_path, server_round)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-2.pt", "round-3.pt"]  # the two newest
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    restore_client_state(context, tmp_path, server_round=3)  # resumed after round 2: round 3 was cut short
    assert context.state["private-models"].to_torch_state_dict()["w"].tolist() == [2.0, 2.0]
    assert context.state["budget"]["epsilon"] == 2.0
    restore_client_state(context, tmp_path, server_round=4)  # a running client keeps its own state
    assert context.state["budget"]["epsilon"] == 2.0


def test_resume_rejects_a_different_run_config(tmp_path):
    stopped = run_in_process({**RUN, "rounds-msa": 1, "stop-after-round": 1, "output-dir": str(tmp_path)}, num_nodes=3)
    with pytest.raises(ConfigError, match=r"run-config keys \['local-epochs'\] differ"):
        run_in_process({**RUN, "rounds-msa": 1, "local-epochs": 2, "resume-from": str(stopped.run_dir),
                        "output-dir": str(tmp_path)}, num_nodes=3)


def test_stopped_and_resumed_run_ends_exactly_as_an_uninterrupted_one(tmp_path):
    full = run_in_process({**SAMPLED, "output-dir": str(tmp_path)}, num_nodes=3).run_dir
    stopped = run_in_process({**SAMPLED, "stop-after-round": 3, "output-dir": str(tmp_path)}, num_nodes=3).run_dir
    assert not (stopped / "summary.json").exists() and load_state(stopped)["round"] == 3
    resumed = run_in_process({**SAMPLED, "resume-from": str(stopped), "output-dir": str(tmp_path)}, num_nodes=3).run_dir
    assert {k: load_summary(resumed)[k] for k in METRICS} == {k: load_summary(full)[k] for k in METRICS}
    test_columns = lambda run_dir: [{k: v for k, v in row.items() if k.startswith("test_")}  # noqa: E731
                                    for row in csv.DictReader((run_dir / "metrics.csv").open())]
    assert test_columns(resumed) == test_columns(full)  # every round, the resumed ones included


def test_real_flwr_run_resumes_a_stopped_run_and_ends_as_an_uninterrupted_one(tmp_path):
    """The resumed run is a new Flower run: new node ids, empty contexts; clients read their saved state.

    The stopped and the uninterrupted runs run in one process (the test above shows that stopping and
    resuming there is exact; test_faults shows that a run gives the same result through flwr)."""
    stopped = run_in_process({**RUN, "stop-after-round": 3, "output-dir": str(tmp_path)}, num_nodes=3).run_dir
    state = load_state(stopped)
    assert (state["round"], state["stage"]) == (3, "msa") and set(state["strategy"]["rules"]) == {"generator", "msa"}
    with LocalFederation(flwr_home=tmp_path / "flwr-home") as federation:
        resumed = federation.run({**RUN, "resume-from": str(stopped), "output-dir": str(tmp_path)},
                                 num_supernodes=3, timeout_s=300)
    assert resumed.status == "finished:completed"
    assert [int(row["round"]) for row in csv.DictReader((resumed.run_dir / "metrics.csv").open())] == [1, 2, 3, 4]
    full = load_summary(run_in_process({**RUN, "output-dir": str(tmp_path)}, num_nodes=3).run_dir)
    for key in METRICS:
        assert math.isclose(load_summary(resumed.run_dir)[key], full[key], abs_tol=1e-6), key
