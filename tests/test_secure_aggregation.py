"""SecAgg+ (secagg.protocol, strategies.secure_aggregation, clients.secure_aggregation): the unmasked
aggregate is FedAvg's within the stated quantisation bound, clients that drop after sharing keys are
recovered down to the threshold and the round fails with a clear error below it, clients refuse
out-of-order or over-asking requests, and rules that need individual updates are refused. The real
`flwr run` with SecAgg+ (MOSI, three SuperNodes over TLS) is the second run of tests/test_deployment.py."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian

from clients.secure_aggregation import ProtocolError, masked_update, setup_reply, share_keys_reply, unmask_reply
from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from secagg.protocol import MASKED, RECORD, SETUP, SHARE_KEYS, UNMASK, quantisation_error_bound, share_count
from strategies import HyDiscGANStrategy
from strategies.aggregation import capped_weights
from strategies.secure_aggregation import SecAggPlus, SecureAggregationError
from tests.grids import StaticGrid

SHAPES = [(4, 3), (5,)]
PARAMS = SecAggPlus(shares=1.0, threshold=0.6, clipping_range=1.0, quantization_range=2**22, max_examples_ratio=3.0)


def random_updates(node_ids, seed=0, scale=0.05):
    rng = np.random.default_rng(seed)
    return {nid: [rng.normal(0.0, scale, shape).astype(np.float32) for shape in SHAPES] for nid in node_ids}


def run_protocol(params, updates, claims, drop_after_share_keys=()):
    """One round of the protocol between the server's round object and the clients' pure stage functions."""
    node_ids = sorted(updates)
    rnd = params.round(1, node_ids)
    states = {nid: {} for nid in node_ids}
    rnd.receive_setup({nid: ConfigRecord(setup_reply(states[nid], rec, nid, claims[nid]))
                       for nid, rec in rnd.setup_records().items()})
    rnd.receive_share_keys({nid: ConfigRecord(share_keys_reply(states[nid], rec))
                            for nid, rec in rnd.share_keys_records().items()})
    masked = {nid: masked_update(states[nid], rec, updates[nid])
              for nid, rec in rnd.train_records().items() if nid not in drop_after_share_keys}
    replies = {nid: ConfigRecord(unmask_reply(states[nid], rec)) for nid, rec in rnd.unmask_records(masked).items()}
    total = rnd.unmasked_sum(masked, replies)
    return rnd, masked, [t * rnd.mean_scale(masked) for t in total]


def fedavg(updates, weights):
    total = sum(weights.values())
    return [sum(weights[nid] * updates[nid][i].astype(np.float64) for nid in weights) / total
            for i in range(len(SHAPES))]


def test_unmasked_mean_is_fedavg_within_the_quantisation_bound():
    node_ids = list(range(101, 109))
    claims = dict(zip(node_ids, [10, 20, 30, 40, 50, 60, 70, 400]))  # 400 is capped at 3 x the median
    updates = random_updates(node_ids)
    rnd, masked, mean = run_protocol(PARAMS, updates, claims)
    weights = dict(zip(node_ids, capped_weights([claims[n] for n in node_ids], PARAMS.max_examples_ratio)))
    assert rnd.weights == weights and max(weights.values()) == 135
    # The bound: every client's rounding moves a coordinate of its scaled update by < 2c/Q, so the sum by
    # < n 2c/Q, and the mean (sum x w_max / sum w) by < n 2c/Q x w_max / sum w.
    bound = quantisation_error_bound(8, PARAMS.clipping_range, PARAMS.quantization_range) * 135 / sum(weights.values())
    expected = fedavg(updates, weights)
    for got, want in zip(mean, expected):
        assert np.max(np.abs(got - want)) < bound
    assert bound < 1e-5
    # What the server holds of a client is uniform noise mod 2^32, not its update.
    assert all(v.dtype == np.uint32 for v in masked[101])
    assert np.max(masked[101][0]) > 2**31


@pytest.mark.parametrize("shares", [1.0, 0.5])  # SecAgg (everyone shares) and SecAgg+ (a ring of neighbours)
def test_clients_dropping_after_sharing_keys_are_recovered_down_to_the_threshold(shares):
    node_ids = list(range(1, 12))
    params = SecAggPlus(shares=shares, threshold=0.6, clipping_range=1.0, quantization_range=2**22)
    claims = dict.fromkeys(node_ids, 10)
    updates = random_updates(node_ids, seed=1)
    rnd = params.round(1, node_ids)
    # The dropped client with the most neighbours dropped as well still leaves `threshold` of them.
    num_shares = share_count(11, shares)
    dropped = {3} if shares < 1 else {2, 3, 4}
    _, masked, mean = run_protocol(params, updates, claims, drop_after_share_keys=dropped)
    assert sorted(masked) == sorted(set(node_ids) - dropped) and rnd.threshold <= num_shares
    bound = quantisation_error_bound(len(masked), 1.0, 2**22)
    for got, want in zip(mean, fedavg(updates, dict.fromkeys(masked, 10))):
        assert np.max(np.abs(got - want)) < bound


def test_the_round_fails_clearly_below_the_threshold():
    node_ids = list(range(1, 9))  # 8 shares, threshold round(0.6 x 8) = 5
    with pytest.raises(SecureAggregationError, match=r"fewer than the reconstruction threshold 5.*round fails"):
        run_protocol(PARAMS, random_updates(node_ids), dict.fromkeys(node_ids, 1), drop_after_share_keys={1, 2, 3, 4})


def test_a_share_missing_at_unmask_fails_clearly():
    node_ids = list(range(1, 9))
    rnd = PARAMS.round(1, node_ids)
    states = {nid: {} for nid in node_ids}
    rnd.receive_setup({n: ConfigRecord(setup_reply(states[n], r, n, 1)) for n, r in rnd.setup_records().items()})
    rnd.receive_share_keys({n: ConfigRecord(share_keys_reply(states[n], r))
                            for n, r in rnd.share_keys_records().items()})
    masked = {n: masked_update(states[n], r, random_updates([n])[n]) for n, r in rnd.train_records().items()}
    replies = {n: ConfigRecord(unmask_reply(states[n], r)) for n, r in list(rnd.unmask_records(masked).items())[:4]}
    with pytest.raises(SecureAggregationError, match="4 share"):
        rnd.unmasked_sum(masked, replies)


def test_clients_refuse_requests_out_of_order_or_for_both_secrets():
    node_ids = [1, 2, 3, 4]
    rnd = PARAMS.round(7, node_ids)
    states = {nid: {} for nid in node_ids}
    setup = rnd.setup_records()
    with pytest.raises(ProtocolError, match="out of order"):
        share_keys_reply(states[1], ConfigRecord({"server-round": 7, "nids": [], "pk1s": [], "pk2s": []}))
    rnd.receive_setup({n: ConfigRecord(setup_reply(states[n], r, n, 1)) for n, r in setup.items()})
    rnd.receive_share_keys({n: ConfigRecord(share_keys_reply(states[n], r))
                            for n, r in rnd.share_keys_records().items()})
    masked = {n: masked_update(states[n], r, random_updates([n])[n]) for n, r in rnd.train_records().items()}
    with pytest.raises(ProtocolError, match="both secrets"):
        unmask_reply(dict(states[1]), ConfigRecord({"server-round": 7, "active": [1, 2, 3, 4], "dead": [2]}))
    with pytest.raises(ProtocolError, match="fewer than the threshold"):
        unmask_reply(dict(states[1]), ConfigRecord({"server-round": 7, "active": [1], "dead": [2, 3, 4]}))
    unmask_reply(states[1], rnd.unmask_records(masked)[1])
    with pytest.raises(ProtocolError, match="out of order"):  # one answer per round
        unmask_reply(states[1], rnd.unmask_records(masked)[1])


@pytest.mark.parametrize("overrides, match", [
    ({"aggregation": "fedmedian"}, "individual update"),
    ({"aggregation_msa": "krum"}, "aggregation-msa 'krum'"),
    ({"aggregation": "fedtrimmedavg"}, "individual update"),
    ({"aggregation": "mypkg.rules:Mine"}, "cannot be checked"),
    ({"dp_unit": "speaker", "dp_clip_norm": 2.0}, "secagg-clipping-range >= dp-clip-norm"),
])
def test_config_refuses_what_needs_individual_updates(overrides, match):
    run_config = {"secure-aggregation": "secaggplus", **{k.replace("_", "-"): v for k, v in overrides.items()}}
    with pytest.raises(ConfigError, match=match):
        HyDiscGANConfig.from_run_config(run_config)
    HyDiscGANConfig.from_run_config({"secure-aggregation": "secaggplus", "aggregation": "fedadam",
                                     "aggregation-generator": "local"})


def test_speaker_level_dp_composes_clients_clip_and_the_server_noises_the_sum():
    """Under speaker-level DP the clients clip (to C less the quantisation slack) with equal weights; the
    unmasked sum is then the sum DP-FedAvg noises, its norm per client <= C, and the RDP/PRV accounting is
    the same as without secure aggregation (the Wasserstein figure, which needs the rows, becomes NaN)."""
    from flwr.app import Array, ArrayRecord

    from hydiscgan_fl.privacy.clipping import clip_update
    from secagg.protocol import quantised_clip_norm
    from strategies.dp import SpeakerLevelDP, noisy_average

    node_ids = list(range(1, 7))
    params = SecAggPlus(clipping_range=1.0, quantization_range=2**22, clip_norm=0.5)
    updates = random_updates(node_ids, seed=4, scale=0.3)  # norms ~1.1 > C: every update is clipped
    claims = dict(zip(node_ids, [1, 5, 10, 50, 100, 500]))
    rnd, _, mean = run_protocol(params, updates, claims)
    assert set(rnd.weights.values()) == {1}
    size = sum(int(np.prod(shape)) for shape in SHAPES)
    clip = quantised_clip_norm(0.5, size, 1.0, 2**22)
    clipped = [clip_update([u.astype(np.float64) for u in updates[nid]], clip) for nid in node_ids]
    total_expected = [sum(c[i] for c in clipped) for i in range(len(SHAPES))]
    bound = quantisation_error_bound(len(node_ids), 1.0, 2**22)
    total = [m * len(node_ids) for m in mean]  # equal weights: the mean is the sum / n
    for got, want in zip(total, total_expected):
        assert np.max(np.abs(got - want)) < bound

    base = ArrayRecord({"a": Array(np.zeros(SHAPES[0], np.float32)), "b": Array(np.zeros(SHAPES[1], np.float32))})
    secure_dp = SpeakerLevelDP(0.5, 1.0, 1e-5, rng=np.random.default_rng(7))
    plain_dp = SpeakerLevelDP(0.5, 1.0, 1e-5, rng=np.random.default_rng(7))
    new = secure_dp.aggregate_sum(base, total, 6, sample_rate=1.0, num_sampled=6)
    by_hand = noisy_average(total, 6, 0.5, 1.0, 6, np.random.default_rng(7))
    np.testing.assert_allclose(new["a"].numpy(), by_hand[0].astype(np.float32), rtol=1e-6)
    plain_dp.aggregate(base, [ArrayRecord({"a": Array(c[0].astype(np.float32)), "b": Array(c[1].astype(np.float32))})
                              for c in clipped], sample_rate=1.0, num_sampled=6)
    secure, plain = secure_dp.report(), plain_dp.report()
    assert secure["epsilon_rdp"] == plain["epsilon_rdp"] and secure["epsilon_prv"] == plain["epsilon_prv"]
    assert np.isnan(secure["wdp_loss"]) and not np.isnan(plain["wdp_loss"])
    assert np.isnan(type(secure_dp.ledger).from_json(secure_dp.ledger.to_json()).report()["wdp_loss"])


def test_strategy_refuses_a_rule_that_needs_individual_updates():
    with pytest.raises(ValueError, match="FedMedian"):
        HyDiscGANStrategy(rounds_align=1, aggregation=FedMedian(min_train_nodes=1, min_available_nodes=1),
                          secure_aggregation=PARAMS)


class ProtocolGrid(StaticGrid):
    """Delivers the key-stage queries to each node's stage functions (the ClientApp's, minus the dataset)."""

    def __init__(self, node_ids, claims, drop=()):
        super().__init__(node_ids)
        self.states = {nid: {} for nid in node_ids}
        self.claims, self.drop = claims, set(drop)

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            nid, action = msg.metadata.dst_node_id, msg.metadata.message_type.split(".")[1]
            record, state = msg.content[RECORD], self.states[nid]
            if action == SETUP:
                reply = setup_reply(state, record, nid, self.claims[nid])
            elif action == SHARE_KEYS:
                reply = share_keys_reply(state, record)
            else:
                assert action == UNMASK
                reply = unmask_reply(state, record)
            replies.append(Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=msg))
        return replies


def test_strategy_aggregates_the_masked_updates_as_fedavg(task_identity):
    node_ids = [11, 12, 13, 14]
    claims = {11: 10, 12: 20, 13: 30, 14: 40}
    grid = ProtocolGrid(node_ids, claims)
    strategy = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0, secure_aggregation=PARAMS)
    plain = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0)
    arrays = ArrayRecord({"generator.w": Array(np.full((4, 3), 0.5, dtype=np.float32)),
                          "generator.b": Array(np.zeros(5, dtype=np.float32)),
                          "msa.w": Array(np.ones(2, dtype=np.float32))})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    plain_messages = list(plain.configure_train(1, arrays, ConfigRecord(), StaticGrid(node_ids)))
    assert all(set(m.content.config_records) == {"config", RECORD} for m in messages)
    updates = random_updates(node_ids, seed=3)
    replies, plain_replies = [], []
    for msg, plain_msg in zip(messages, plain_messages):
        nid = msg.metadata.dst_node_id
        update = dict(zip(["generator.w", "generator.b"], updates[nid]))
        metrics = MetricRecord({"num-examples": claims[nid]})
        # the client masks in sorted key order
        vectors = masked_update(grid.states[nid], msg.content[RECORD], [update[k] for k in sorted(update)])
        replies.append(Message(RecordDict({MASKED: ArrayRecord(dict(zip(sorted(update), map(Array, vectors)))),
                                           "metrics": metrics}), reply_to=msg))
        trained = {k: Array(arrays[k].numpy() + update[k]) for k in update}
        plain_replies.append(Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}),
                                     reply_to=plain_msg))
    secure, _ = strategy.aggregate_train(1, replies)
    expected, _ = plain.aggregate_train(1, plain_replies)
    bound = quantisation_error_bound(4, 1.0, 2**22) * 40 / 100 + 1e-7  # + float32 rounding of values near 0.5
    for key in expected:
        assert np.max(np.abs(secure[key].numpy() - expected[key].numpy())) < bound
    summary = strategy.rounds[-1]
    assert summary.replies_ok == 4
    # the key stages' bytes count: more up and down than without secure aggregation
    assert all(c.bytes_down > p.bytes_down and c.bytes_up > 0
               for c, p in zip(summary.clients, plain.rounds[-1].clients))


def test_a_whole_run_recovers_a_client_that_crashes_after_sharing_keys(tmp_path):
    """The real ServerApp over in-process ClientApps (examples/in_process.py): one of five clients crashes
    in training every round, after sharing its keys; the others' sum is unmasked and the run completes."""
    import csv
    import secrets

    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import client_app
    import server_app
    from examples.in_process import InProcessGrid

    def crashing_client(message, context):
        if context.node_id == 1002 and message.metadata.message_type == "train":
            raise RuntimeError("crashed after sharing keys")
        return client_app.app(message, context)

    run_config = {**HyDiscGANConfig().to_run_config(), "dataset": "synthetic", "rounds-align": 1, "rounds-msa": 1,
                  "local-epochs": 1, "output-dir": str(tmp_path), "secure-aggregation": "secaggplus"}
    run_id = secrets.randbits(62)
    grid = InProcessGrid(5, run_config, run_id, client=crashing_client)
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1
    try:
        server_app.app(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=run_config))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    (run_dir,) = tmp_path.glob(f"*-run{run_id}")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [(r["stage"], int(r["replies_ok"]), int(r["replies_error"])) for r in rows] == [("align", 4, 1),
                                                                                             ("msa", 4, 1)]
    crashed = [c for c in csv.DictReader((run_dir / "clients.csv").open()) if c["status"] == "error"]
    assert {c["node_id"] for c in crashed} == {"1002"} and "crashed after sharing keys" in crashed[0]["detail"]


def test_the_cost_table_shows_mean_and_std_per_mode_and_skips_unmeasured_columns():
    import pandas as pd

    from hydiscgan_fl.orchestration.secagg_cost import COLUMNS, report

    base = dict.fromkeys(COLUMNS, float("nan"))
    rows = [{**base, "dataset": "mosi-bclstm", "clients": 8, "secure_aggregation": mode, "seed": seed, "rounds": 24,
             "secagg_shares": 1.0 if mode == "secaggplus" else float("nan"),
             "bytes_up_per_client_round": up, "bytes_down_per_client_round": 2.0, "first_round_s": 1.0,
             "s_per_round": 1.0, "acc2": 0.75 + seed / 100, "wall_s": 1.0, "date": "2026-12-02"}
            for mode, up in (("none", 100.0), ("secaggplus", 110.0)) for seed in (0, 1)]
    text = report(pd.DataFrame(rows))
    assert "| mosi-bclstm | 8 | secaggplus | 1 | 2 |" in text and "| mosi-bclstm | 8 | none | – | 2 |" in text and "110 ± 0" in text and "0.755 ± 0.0071" in text
    assert "update_membership" not in text  # not measured (no --attack)
