"""Pluggable aggregation: Flower's rules by name, a user's rule by import path, per-component policies
("local" included), and Byzantine clients against FedAvg and the robust rules.

The real `flwr run` with a user rule by import path and a Byzantine client is in test_faults.py (one run
covers both, and crashing clients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import handlers
from examples.in_process import run_in_process
from examples.my_rule import ClippedMean
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import load_dataset
from hydiscgan_fl.models import build_shared_models
from hydiscgan_fl.run_files import load_state, load_summary
from strategies import RULE_NAMES, HyDiscGANStrategy, make_rule
from tests.grids import StaticGrid
from tests.sanity import above_chance

CURRENT = np.zeros(4, dtype=np.float32)
CLIENT_VALUES = [1.0, 2.0, 3.0, 100.0]  # the last client is an outlier
CLIENT_EXAMPLES = [10, 10, 10, 10]


def aggregate_one_round(rule, values=CLIENT_VALUES, examples=CLIENT_EXAMPLES):
    """One stage-1 round of HyDiscGANStrategy with `rule` on a one-array generator; returns (sent config, result)."""
    strategy = HyDiscGANStrategy(rounds_align=1, aggregation=rule, node_settle_s=0.0)
    arrays = ArrayRecord({"generator.w": Array(CURRENT), "msa.w": Array(np.full(2, 7.0, dtype=np.float32))})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid(range(1, len(values) + 1))))
    replies = [Message(RecordDict({"arrays": ArrayRecord({"generator.w": Array(np.full(4, v, dtype=np.float32))}),
                                   "metrics": MetricRecord({"num-examples": n})}), reply_to=m)
               for m, v, n in zip(messages, values, examples)]
    result, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(result["msa.w"].numpy(), np.full(2, 7.0))  # M is not touched in stage 1
    return messages[0].content["config"], result["generator.w"].numpy()


@pytest.mark.parametrize("name", RULE_NAMES)
def test_every_named_rule_aggregates_a_component(task_identity, name):
    config, result = aggregate_one_round(make_rule(name, proximal_mu=0.3, trimmed_beta=0.25, krum_malicious=1))
    expected = {
        "fedavg": np.mean(CLIENT_VALUES), "fedprox": np.mean(CLIENT_VALUES), "mean": np.mean(CLIENT_VALUES),
        "fedmedian": np.median(CLIENT_VALUES), "fedtrimmedavg": 2.5,  # 1 and 100 cut
        "krum": 2.0,  # the client closest to its neighbours
    }
    if name in expected:
        np.testing.assert_allclose(result, np.full(4, expected[name]), rtol=1e-6)
    else:  # the FedOpt family moves the global weights towards the clients' mean, by its server step
        assert np.all(result > CURRENT) and np.all(result < np.mean(CLIENT_VALUES))
    assert ("proximal-mu" in config) == (name == "fedprox")
    if name == "fedprox":
        assert config["proximal-mu"] == pytest.approx(0.3)


def test_unknown_or_broken_rules_are_named():
    with pytest.raises(ValueError, match="unknown aggregation rule 'fedfoo'"):
        make_rule("fedfoo")
    with pytest.raises(ValueError, match="'examples.my_rule:Nope' cannot be imported"):
        make_rule("examples.my_rule:Nope")
    with pytest.raises(ValueError, match="must be constructible without arguments"):
        make_rule("examples.in_process:InProcessGrid")
    with pytest.raises(ValueError, match="is not a flwr.serverapp.strategy.Strategy"):
        make_rule("collections:OrderedDict")
    assert isinstance(make_rule("examples.my_rule:ClippedMean"), ClippedMean)


def test_user_rule_clips_each_coordinate_of_each_update(task_identity):
    _, result = aggregate_one_round(ClippedMean(clip=1.5), examples=[2, 2, 2, 5])  # within 3 x the median claim
    # Updates 1, 2, 3, 100 clipped to 1, 1.5, 1.5, 1.5; weights 2/11, 2/11, 2/11, 5/11.
    np.testing.assert_allclose(result, np.full(4, (2 * 1 + 2 * 1.5 + 2 * 1.5 + 5 * 1.5) / 11), rtol=1e-6)


def test_fedprox_mu_reaches_the_client_and_pulls_its_weights_to_the_global_ones(task_identity):
    cfg = HyDiscGANConfig(dataset="synthetic", local_epochs=2)
    arrays = ArrayRecord(build_shared_models(load_dataset("synthetic", None).dims, cfg, cfg.seed).state_dict())
    moved = {}
    for name, mu in (("fedavg", 0.0), ("fedprox", 5.0)):
        strategy = HyDiscGANStrategy(rounds_align=1, aggregation=make_rule(name, proximal_mu=mu), node_settle_s=0.0)
        message = next(iter(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid([7]))))
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                          state=RecordDict(), run_config=cfg.to_run_config())
        reply = handlers.train(message, context)
        moved[name] = sum(float(np.sum((reply.content["arrays"][k].numpy() - arrays[k].numpy()) ** 2))
                          for k in reply.content["arrays"])
    assert 0 < moved["fedprox"] < 0.5 * moved["fedavg"]


def test_local_msa_is_never_sent_back_and_each_client_keeps_its_own(tmp_path):
    run = run_in_process({"dataset": "synthetic", "rounds-align": 1, "rounds-msa": 2, "local-epochs": 1,
                          "aggregation-msa": "local", "output-dir": str(tmp_path)}, num_nodes=3)
    cfg = HyDiscGANConfig(dataset="synthetic")
    initial = build_shared_models(load_dataset("synthetic", None).dims, cfg, cfg.seed).state_dict()
    state = load_state(run.run_dir)
    for key, value in state["arrays"].items():  # the server's M stays at its last global (= initial) value
        assert torch.equal(value, initial[key]) == key.startswith("msa."), key
    personal = [ctx.state["personal-msa"].to_torch_state_dict() for ctx in run.contexts.values()]
    head = "head.4.weight"
    assert not torch.equal(personal[0][head], personal[1][head]) and not torch.equal(personal[0][head], initial["msa." + head])
    rows = (run.run_dir / "metrics.csv").read_text().splitlines()
    assert "test_acc2" not in rows[0]  # the server has no model the clients use: no test metrics
    summary = load_summary(run.run_dir)
    assert "acc2" not in summary and "text_only_acc2" in summary and summary["personalised"].startswith("msa stayed")


BYZANTINE_RUN = {"rounds-align": 1, "rounds-msa": 3, "local-epochs": 1}  # MOSI, 8 clients


def test_byzantine_clients_break_fedavg_but_not_the_robust_rules(tmp_path):
    acc, last = {}, {}
    for label, extra in {
        "clean fedavg": {},
        "fedavg": {"byzantine-clients": 2},
        "fedmedian": {"byzantine-clients": 2, "aggregation": "fedmedian"},
        "fedtrimmedavg": {"byzantine-clients": 2, "aggregation": "fedtrimmedavg", "trimmed-beta": 0.25},
        "krum": {"byzantine-clients": 2, "aggregation": "krum", "krum-malicious": 2},
    }.items():
        run = run_in_process({**BYZANTINE_RUN, **extra, "output-dir": str(tmp_path)}, num_nodes=8)
        summary = load_summary(run.run_dir)
        acc[label], last[label] = summary["acc2"], summary["last_acc2"]
    clean = acc.pop("clean fedavg")
    assert clean > above_chance(HyDiscGANConfig().load_dataset().split_subset("test").labels), acc
    assert last["fedavg"] < last["clean fedavg"] - 0.2, last  # the final model collapses
    # Validation selection falls back to an earlier, less poisoned round: still clearly worse.
    assert acc.pop("fedavg") < clean - 0.05, acc
    for rule, value in acc.items():
        assert abs(value - clean) <= 0.02, (rule, value, clean)
