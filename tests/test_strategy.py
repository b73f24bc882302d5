"""HyDiscGAN strategy: stages, example-weighted per-component aggregation, failures, bytes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedMedian

from strategies import HyDiscGANStrategy, TooFewRepliesError
from tests.grids import StaticGrid


def global_arrays():
    return ArrayRecord({
        "generator.w": Array(np.zeros((2, 2), dtype=np.float32)),
        "generator.b": Array(np.zeros(2, dtype=np.float32)),
        "msa.w": Array(np.full(3, 7.0, dtype=np.float32)),
    })


def reply_to(instruction: Message, arrays: dict[str, np.ndarray], num_examples: int, **extra) -> Message:
    record = ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})
    metrics = MetricRecord({"num-examples": num_examples, **extra})
    return Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=instruction)


def make_strategy(**kwargs):
    return HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0, **kwargs)


def test_stage_one_sends_only_the_generator_and_weights_by_examples(task_identity):
    strategy = make_strategy()
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), StaticGrid([11, 12])))
    assert [m.metadata.dst_node_id for m in messages] == [11, 12]
    sent = messages[0].content
    assert set(sent["arrays"]) == {"generator.w", "generator.b"}
    assert sent["config"]["stage"] == "align"
    replies = [
        reply_to(messages[0], {"generator.w": np.ones((2, 2)), "generator.b": [1.0, 3.0]}, 10),
        reply_to(messages[1], {"generator.w": np.full((2, 2), 4.0), "generator.b": [2.0, 0.0]}, 30),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Hand computation: weights 10/40 and 30/40.
    np.testing.assert_allclose(arrays["generator.w"].numpy(), np.full((2, 2), 0.25 * 1 + 0.75 * 4))
    np.testing.assert_allclose(arrays["generator.b"].numpy(), [0.25 * 1 + 0.75 * 2, 0.25 * 3 + 0.75 * 0])
    np.testing.assert_allclose(arrays["msa.w"].numpy(), np.full(3, 7.0))  # M untouched in stage 1
    assert dict(metrics) == {}  # stage-1 replies carry no loss
    summary = strategy.rounds[-1]
    assert (summary.sent, summary.replies_ok, summary.replies_failed) == (2, 2, 0)
    assert all(c.bytes_down == sent["arrays"].count_bytes() + sent["config"].count_bytes() for c in summary.clients)
    assert all(c.bytes_up > 0 for c in summary.clients)


def test_stage_two_aggregates_generator_and_msa(task_identity):
    strategy = make_strategy()
    grid = StaticGrid([1, 2])
    strategy.configure_train(1, global_arrays(), ConfigRecord(), grid)
    messages = list(strategy.configure_train(2, global_arrays(), ConfigRecord(), grid))
    assert set(messages[0].content["arrays"]) == {"generator.w", "generator.b", "msa.w"}
    assert messages[0].content["config"]["stage"] == "msa"
    replies = [
        reply_to(messages[0], {"generator.w": np.ones((2, 2)), "generator.b": [0, 0], "msa.w": [1, 1, 1]}, 1,
                 **{"loss-task": 0.3}),
        reply_to(messages[1], {"generator.w": np.ones((2, 2)), "generator.b": [0, 0], "msa.w": [4, 4, 4]}, 2,
                 **{"loss-task": 0.6}),
    ]
    arrays, metrics = strategy.aggregate_train(2, replies)
    np.testing.assert_allclose(arrays["msa.w"].numpy(), np.full(3, (1 * 1 + 2 * 4) / 3))
    assert metrics["loss-task"] == pytest.approx((1 * 0.3 + 2 * 0.6) / 3)


def test_failed_and_rejected_replies_are_counted_and_the_round_goes_on(task_identity):
    strategy = make_strategy(min_train_replies=1)
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), StaticGrid([1, 2, 3, 4])))
    good = reply_to(messages[0], {"generator.w": np.ones((2, 2)), "generator.b": [1, 1]}, 5)
    crashed = Message(Error(code=2, reason="boom"), reply_to=messages[1])
    leaky = reply_to(messages[2], {"generator.w": np.ones((2, 2)), "generator.b": [1, 1],
                                   "disc_audio.net.0.weight": np.ones(3)}, 5)
    # node 4 never answers (timeout)
    arrays, _ = strategy.aggregate_train(1, [good, crashed, leaky])
    np.testing.assert_allclose(arrays["generator.b"].numpy(), [1, 1])
    statuses = {c.node_id: c.status for c in strategy.rounds[-1].clients}
    assert statuses == {1: "ok", 2: "error", 3: "rejected", 4: "timeout"}
    assert strategy.rounds[-1].replies_failed == 3


def test_too_few_replies_stops_with_a_clear_error(task_identity):
    strategy = make_strategy(min_train_replies=2)
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), StaticGrid([1, 2])))
    good = reply_to(messages[0], {"generator.w": np.ones((2, 2)), "generator.b": [1, 1]}, 5)
    crashed = Message(Error(code=2, reason="client exploded"), reply_to=messages[1])
    with pytest.raises(TooFewRepliesError, match=r"1 valid repl.*min-train-replies=2.*client exploded"):
        strategy.aggregate_train(1, [good, crashed])


def test_nan_or_wrong_shape_is_rejected(task_identity):
    strategy = make_strategy()
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), StaticGrid([1, 2, 3])))
    good = reply_to(messages[0], {"generator.w": np.ones((2, 2)), "generator.b": [1, 1]}, 5)
    nan = reply_to(messages[1], {"generator.w": np.full((2, 2), np.nan), "generator.b": [1, 1]}, 5)
    shape = reply_to(messages[2], {"generator.w": np.ones((3, 2)), "generator.b": [1, 1]}, 5)
    strategy.aggregate_train(1, [good, nan, shape])
    details = {c.node_id: c.detail for c in strategy.rounds[-1].clients}
    assert "NaN" in details[2] and "shape" in details[3]


def test_another_flower_rule_can_be_plugged_in(task_identity):
    strategy = make_strategy(aggregation=FedMedian(min_available_nodes=1, min_train_nodes=1))
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), StaticGrid([1, 2, 3])))
    values = [0.0, 1.0, 100.0]
    replies = [reply_to(m, {"generator.w": np.full((2, 2), v), "generator.b": [v, v]}, n)
               for m, v, n in zip(messages, values, [1, 1, 50])]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["generator.b"].numpy(), [1.0, 1.0])  # median ignores the weights


@pytest.mark.parametrize(("dp_unit", "stage_round", "metrics", "accepted"), [
    ("none", 1, {"train-s": 1.0}, True),
    ("none", 1, {"loss-recon": 0.5}, False),  # computed from private audio/video
    ("none", 2, {"loss-task": 0.5, "train-s": 1.0}, True),
    ("none", 2, {"loss-gen-adv": 0.5}, False),  # the client's private discriminators' verdict
    ("utterance", 1, {"epsilon-rdp": 1.0, "epsilon-prv": 0.9}, True),
    ("utterance", 1, {"wdp-loss": 3.0}, False),  # from per-utterance gradient distances
    ("utterance", 2, {"loss-task": 0.5}, False),
    ("utterance", 1, {"train-s": 1.0}, False),
])
def test_replies_with_metrics_outside_the_allow_list_are_rejected(task_identity, dp_unit, stage_round, metrics,
                                                                 accepted):
    strategy = make_strategy(dp_unit=dp_unit)
    grid = StaticGrid([1])
    for server_round in range(1, stage_round + 1):
        (message,) = strategy.configure_train(server_round, global_arrays(), ConfigRecord(), grid)
    arrays = {key: np.ones(message.content["arrays"][key].shape) for key in message.content["arrays"]}
    if accepted:
        strategy.aggregate_train(stage_round, [reply_to(message, arrays, 5, **metrics)])
        assert strategy.rounds[-1].clients[0].status == "ok"
    else:
        with pytest.raises(TooFewRepliesError, match="not allowed"):
            strategy.aggregate_train(stage_round, [reply_to(message, arrays, 5, **metrics)])
        assert strategy.rounds[-1].clients[0].status == "rejected"


def test_a_client_claiming_a_huge_count_cannot_dominate_fedavg(task_identity):
    strategy = make_strategy(max_examples_ratio=3.0)
    messages = list(strategy.configure_train(1, global_arrays(), ConfigRecord(), StaticGrid([1, 2, 3, 4, 5])))
    claims = [10, 20, 30, 40, 10**9]  # node 5 poisons its update and claims a billion examples
    values = [1.0, 1.0, 1.0, 1.0, -100.0]
    replies = [reply_to(m, {"generator.w": np.full((2, 2), v), "generator.b": [v, v]}, n)
               for m, v, n in zip(messages, values, claims)]
    arrays, _ = strategy.aggregate_train(1, replies)
    # Hand computation: median claim 30, cap 3 x 30 = 90; weights 10, 20, 30, 40, 90 (sum 190).
    expected = (100 * 1.0 + 90 * -100.0) / 190
    np.testing.assert_allclose(arrays["generator.b"].numpy(), [expected, expected], rtol=1e-6)
    # The liar holds 90/190 < 1/2 of the weight; uncapped it would hold all but 1e-7 of it (result ~ -100).
    assert arrays["generator.b"].numpy()[0] > -48.0
    assert [c.num_examples for c in strategy.rounds[-1].clients] == claims  # clients.csv shows the claims


def test_capped_weights_by_hand():
    from strategies.aggregation import capped_weights

    assert capped_weights([10, 20, 30, 40, 10**9], 3.0) == [10, 20, 30, 40, 90]
    assert capped_weights([172, 181, 184], 3.0) == [172, 181, 184]  # honest speaker partitions: untouched
    assert capped_weights([7, 7, 7, 10**9], 1.0) == [7, 7, 7, 7]
    assert capped_weights([], 2.0) == []
