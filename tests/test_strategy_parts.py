"""The strategy's helpers, each alone: sampling, the known-ids handshake, reply validation, bookkeeping,
transport coding; and the strategy's server-side MSA stage and half-precision transport."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from hydiscgan_fl.config import SERVER_STAGE, ConfigError, HyDiscGANConfig
from strategies import HyDiscGANStrategy
from strategies.bookkeeping import ClientRound, classify_replies, weighted_metrics
from strategies.handshake import KnownIdsHandshake
from strategies.records import components_payload, from_transport, to_transport
from strategies.replies import reply_problem
from strategies.sampling import NodeSampler, sample_size
from tests.grids import StaticGrid


def record(**arrays) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(value, dtype=np.float32)) for key, value in arrays.items()})


def content(arrays: ArrayRecord, **metrics) -> RecordDict:
    return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 4, **metrics})})


def test_sample_size_rounds_the_fraction_within_the_minimum_and_the_federation():
    assert sample_size(10, 0.25, 1) == 2  # round(2.5) = 2 (banker's rounding, as before)
    assert sample_size(10, 0.01, 3) == 3
    assert sample_size(2, 1.0, 5) == 2


def test_seeded_sampler_resumes_from_its_state_and_the_secret_one_has_none():
    grid = StaticGrid(range(20))
    first = NodeSampler(0.3, 1, 1, 0.0, seed=4, secret=False)
    first.sample(grid)
    saved = first.state()
    expected = first.sample(grid)
    resumed = NodeSampler(0.3, 1, 1, 0.0, seed=99, secret=False)
    resumed.load_state(saved)
    assert resumed.sample(grid) == expected and first.last_rate == pytest.approx(6 / 20)
    secret = NodeSampler(0.3, 1, 1, 0.0, seed=4, secret=True)
    assert secret.state() is None
    with pytest.raises(ValueError, match="secretly"):
        NodeSampler(0.3, 1, 1, 0.0, seed=4, secret=False).load_state(None)


def test_handshake_sends_the_ids_once_and_again_after_a_failure():
    handshake = KnownIdsHandshake(["b", "a"])
    base = ConfigRecord({"stage": "align"})
    assert list(handshake.config_for(1, base)["known-ids"]) == ["a", "b"]
    handshake.sent([1, 2])
    assert "known-ids" not in handshake.config_for(1, base)
    handshake.failed([2])
    assert "known-ids" in handshake.config_for(2, base)
    assert "known-ids" not in KnownIdsHandshake([]).config_for(3, base)


@pytest.mark.parametrize("reply, problem", [
    (content(record(**{"generator.w": [1.0, 2.0]})), ""),
    (content(record(**{"generator.w": [1.0, np.nan]})), "NaN or Inf"),
    (content(record(**{"generator.w": [1.0]})), "has shape"),
    (content(record(**{"generator.w": [1.0, 2.0], "disc.w": [0.0]})), "unexpected ['disc.w']"),
    (content(record(**{"generator.w": [1.0, 2.0]}), **{"loss-task": 0.5}), "not allowed in a align reply"),
    (RecordDict({"arrays": record(**{"generator.w": [1.0, 2.0]}), "metrics": MetricRecord({"num-examples": 0})}),
     "must be positive"),
])
def test_reply_problem_names_what_is_wrong(reply, problem):
    sent = record(**{"generator.w": [0.0, 0.0]})
    found = reply_problem(reply, sent, "align", "none")
    assert (found == "") if problem == "" else (problem in found), found


def test_classify_replies_marks_each_sampled_client_and_ignores_strangers(task_identity):
    pending = {nid: ClientRound(1, "align", nid, "timeout", bytes_down=10) for nid in (1, 2, 3)}

    def from_node(nid, body):
        instruction = Message(RecordDict(), dst_node_id=nid, message_type="train")
        return Message(body, reply_to=instruction)

    good = from_node(1, content(record(**{"generator.w": [1.0]}), **{"train-s": 2.5}))
    bad = from_node(2, content(record(**{"generator.w": [1.0]})))
    crashed = from_node(3, Error(code=1, reason="boom"))
    stranger = from_node(9, content(record(**{"generator.w": [1.0]})))
    valid = classify_replies(pending, [good, bad, crashed, stranger], lambda r: "no" if r is bad else "")
    assert valid == [good]
    assert [pending[n].status for n in (1, 2, 3)] == ["ok", "rejected", "error"]
    assert pending[1].train_s == 2.5 and pending[1].num_examples == 4 and pending[1].bytes_up > 0
    assert weighted_metrics([good, good], [1, 3]) == {}  # num-examples and train-s are not averaged


def test_half_precision_transport_halves_the_bytes_and_comes_back_in_float32():
    rng = np.random.default_rng(0)
    full = record(**{"generator.w": rng.normal(size=(64, 64)), "msa.b": rng.normal(size=64)})
    half = to_transport(full, "float16")
    assert half.count_bytes() < 0.55 * full.count_bytes()
    back = from_transport(half, full)
    assert {back[k].dtype for k in back} == {"float32"}
    for key in full:  # half precision: relative error <= 2^-11 per coordinate
        np.testing.assert_allclose(back[key].numpy(), full[key].numpy(), rtol=2 ** -11, atol=1e-7)
    assert to_transport(full, "float32") is full
    ints = ArrayRecord({"msa.count": Array(np.arange(3, dtype=np.int64))})
    assert to_transport(ints, "float16")["msa.count"].dtype == "int64"  # counters keep their type


def half_round(strategy, arrays, updates, weights):
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid(range(1, len(updates) + 1))))
    replies = []
    for message, update, weight in zip(messages, updates, weights):
        body = content(to_transport(record(**update), "float16"))
        body["metrics"]["num-examples"] = weight
        replies.append(Message(body, reply_to=message))
    return messages, strategy.aggregate_train(1, replies)[0]


def test_float16_transport_sends_half_the_bytes_and_aggregates_within_half_precision(task_identity):
    rng = np.random.default_rng(1)
    arrays = record(**{"generator.w": rng.normal(size=(32, 32)), "msa.w": rng.normal(size=8)})
    updates = [{"generator.w": rng.normal(size=(32, 32))} for _ in range(3)]
    weights = [1, 2, 3]
    full = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0)
    full_message = next(iter(full.configure_train(1, arrays, ConfigRecord(), StaticGrid([1, 2, 3]))))
    half = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0, transport_dtype="float16")
    messages, aggregated = half_round(half, arrays, updates, weights)
    assert messages[0].content["arrays"]["generator.w"].dtype == "float16"
    assert messages[0].content["arrays"].count_bytes() < 0.55 * full_message.content["arrays"].count_bytes()
    assert half.rounds[-1].clients[0].bytes_down < 0.6 * (full_message.content["arrays"].count_bytes()
                                                          + full_message.content["config"].count_bytes())
    assert aggregated["generator.w"].dtype == "float32" and aggregated["msa.w"].dtype == "float32"
    exact = sum(w * u["generator.w"] for w, u in zip(weights, updates)) / sum(weights)
    # Each reply is rounded to half precision (relative 2^-11); the weighted mean errs by at most as much.
    bound = 2 ** -11 * max(np.abs(u["generator.w"]).max() for u in updates)
    assert np.abs(aggregated["generator.w"].numpy() - exact).max() <= bound
    assert half.rounds[-1].replies_ok == 3


def test_server_msa_stage_contacts_no_client_and_hands_the_round_to_the_hook(task_identity):
    seen = []

    def server_stage(server_round, arrays):
        return ArrayRecord({k: Array(arrays[k].numpy() + 1.0) for k in arrays}), {"loss-task": 0.25}

    strategy = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0, msa_site="server", server_stage=server_stage,
                                 on_round_end=lambda summary, arrays, state: seen.append((summary, arrays, state)))
    arrays = record(**{"generator.w": [0.0], "msa.w": [1.0]})
    assert strategy.stage_of(1) == "align" and strategy.stage_of(2) == SERVER_STAGE
    assert list(strategy.configure_train(2, arrays, ConfigRecord(), StaticGrid([1, 2]))) == []
    new, metrics = strategy.aggregate_train(2, [])
    assert new["msa.w"].numpy().tolist() == [2.0] and dict(metrics) == {"loss-task": 0.25}
    (summary, hooked, state), = seen
    assert (summary.stage, summary.sent, summary.clients) == (SERVER_STAGE, 0, []) and hooked is new
    assert state["round"] == 2
    with pytest.raises(ValueError, match="msa-site"):
        HyDiscGANStrategy(rounds_align=1, msa_site="server")


def test_msa_site_server_refuses_the_multimodal_baseline_and_personalised_components():
    with pytest.raises(ConfigError, match="msa-site"):
        HyDiscGANConfig.from_run_config({"msa-site": "server", "method": "fedavg-multimodal"})
    with pytest.raises(ConfigError, match="personalised"):
        HyDiscGANConfig.from_run_config({"msa-site": "server", "aggregation-msa": "local"})
    assert HyDiscGANConfig(msa_site="server", rounds_align=2).stage_of_round(3) == SERVER_STAGE


def test_streaming_speaker_level_dp_keeps_few_rows_and_matches_the_stacked_computation():
    from hydiscgan_fl.privacy.ledger import leave_one_out_sum_distances
    from strategies.dp import SpeakerLevelDP, clip_update

    rng = np.random.default_rng(3)
    current = record(**{"generator.w": rng.normal(size=(4, 5)), "msa.b": rng.normal(size=5)})
    replies = [record(**{k: current[k].numpy() + rng.normal(size=current[k].shape) for k in current})
               for _ in range(20)]
    dp = SpeakerLevelDP(0.5, 1.0, 1e-5, rng=np.random.RandomState(0))
    seen = []
    step = dp.ledger.step
    dp.ledger.step = lambda **kw: (seen.append(kw["clipped_rows"]), step(**kw))[1]
    ours = dp.aggregate(current, (r for r in replies), sample_rate=1.0, num_sampled=25)  # a generator suffices
    assert seen[0].shape == (8, 25)  # WDP_NEIGHBOURS rows, not 20
    clipped = [np.concatenate([a.ravel() for a in clip_update([r[k].numpy().astype(np.float64) - current[k].numpy()
                                                               for k in current], 0.5)]) for r in replies]
    np.testing.assert_allclose(leave_one_out_sum_distances(seen[0]), leave_one_out_sum_distances(np.stack(clipped)))
    noise = np.random.RandomState(0)
    total = np.sum(clipped, axis=0)
    expected = {k: current[k].numpy() + total[i:i + current[k].numpy().size].reshape(current[k].shape) / 25
                + noise.normal(0.0, 1.0 * 0.5 / 25, size=current[k].shape)
                for k, i in zip(current, (0, 20))}
    for key in current:
        np.testing.assert_allclose(ours[key].numpy(), expected[key], atol=1e-5)
