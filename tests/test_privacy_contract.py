"""What leaves a client, key by key: the exact array keys and metric keys of every reply, for every stage,
DP unit, the speaker adversary, personalised components, an ablation and the baselines (fedavg-multimodal,
distill, multitask).

The handlers run on the real MOSI features and the replies go through the server's checks. The expected
sets are written out here, independently of the allow-list in `hydiscgan_fl.privacy.reply_metrics`:
a figure computed from private audio/video (or from models trained on them) leaves only if a DP
mechanism covers it.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import handlers
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models import build_federated_models, build_shared_models
from hydiscgan_fl.models.registry import generator_heads
from strategies import HyDiscGANStrategy
from strategies.aggregation import component_rules
from strategies.dp import speaker_level_dp
from tests.grids import StaticGrid

NUM_PARTITIONS = 10
PARTITION_ID = 2
NODE_ID = 100 + PARTITION_ID

# The metric keys of a reply, by stage and DP unit.
WITHOUT_DP_ALIGN = {"num-examples", "train-s"}  # no stage-1 loss: every term reads real audio/video
WITHOUT_DP_MSA = {"num-examples", "train-s", "loss-task"}  # text, labels, G and M; not D's verdict
WITHOUT_DP_MULTIMODAL = {"num-examples", "train-s"}  # M(t, a, v) reads real audio/video
WITHOUT_DP_PRIVILEGED = {"num-examples", "train-s"}  # the student's loss depends on the teacher / auxiliary loss
SPEAKER_DP = {"num-examples"}
UTTERANCE_DP = {"num-examples", "epsilon-rdp", "epsilon-prv"}  # from sigma, q, steps: public parameters
PRESENCE = {"examples-text", "examples-audio", "examples-visual"}  # utterances holding each modality (counts)

G, M = ("generator.",), ("msa.",)

# name: (run-config overrides, [(stage, array-key prefixes, metric keys) of rounds 1, 2, ...])
CASES = {
    "no-dp": ({}, [("align", G, WITHOUT_DP_ALIGN), ("msa", G + M, WITHOUT_DP_MSA)]),
    "speaker-dp": ({"dp_unit": "speaker"}, [("align", G, SPEAKER_DP), ("msa", G + M, SPEAKER_DP)]),
    "utterance-dp": ({"dp_unit": "utterance"}, [("align", G, UTTERANCE_DP), ("msa", G + M, UTTERANCE_DP)]),
    "adversary": ({"adv_lambda": 1.0}, [("align", G, WITHOUT_DP_ALIGN), ("msa", G + M, WITHOUT_DP_MSA)]),
    "adversary-utterance-dp": ({"adv_lambda": 1.0, "dp_unit": "utterance"},
                               [("align", G, UTTERANCE_DP), ("msa", G + M, UTTERANCE_DP)]),
    "local-msa": ({"aggregation_msa": "local"}, [("align", G, WITHOUT_DP_ALIGN), ("msa", G, WITHOUT_DP_MSA)]),
    "local-generator": ({"aggregation_generator": "local"},
                        [("align", (), WITHOUT_DP_ALIGN), ("msa", M, WITHOUT_DP_MSA)]),
    "fedavg-multimodal": ({"method": "fedavg-multimodal"}, [("multimodal", M, WITHOUT_DP_MULTIMODAL)]),
    "fedavg-multimodal-speaker-dp": ({"method": "fedavg-multimodal", "dp_unit": "speaker"},
                                     [("multimodal", M, SPEAKER_DP)]),
    # The privileged-information baselines: the text model (as M) only; teacher and auxiliary head stay.
    "distill": ({"method": "distill", "rounds_msa": 2}, [("distill", M, WITHOUT_DP_PRIVILEGED)] * 2),
    "distill-speaker-dp": ({"method": "distill", "rounds_msa": 2, "dp_unit": "speaker"},
                           [("distill", M, SPEAKER_DP)]),
    "multitask": ({"method": "multitask"}, [("multitask", M, WITHOUT_DP_PRIVILEGED)] * 2),
    "multitask-speaker-dp": ({"method": "multitask", "dp_unit": "speaker"}, [("multitask", M, SPEAKER_DP)]),
    # Simulated missing modalities (this client holds no audio; some utterances miss more): without DP the same
    # keys plus how many of its utterances hold each modality; under DP no mechanism covers those counts.
    "missing-modalities": ({"missing_client_audio": 1.0, "missing_modality_rate": 0.3},
                           [("align", G, WITHOUT_DP_ALIGN | PRESENCE), ("msa", G + M, WITHOUT_DP_MSA | PRESENCE)]),
    "missing-modalities-utterance-dp": ({"missing_client_audio": 1.0, "missing_rate": 0.3, "dp_unit": "utterance"},
                                        [("align", G, UTTERANCE_DP), ("msa", G + M, UTTERANCE_DP)]),
    "missing-modalities-fedavg-multimodal-speaker-dp": (
        {"method": "fedavg-multimodal", "msa_model": "fsrf", "missing_modality_rate": 0.5, "dp_unit": "speaker"},
        [("multimodal", M, SPEAKER_DP)]),
    # Ablations change no key: the same stages, arrays and metrics as HyDiscGAN's.
    "zero-fakes": ({"ablation": "zero-fakes"}, [("align", G, WITHOUT_DP_ALIGN), ("msa", G + M, WITHOUT_DP_MSA)]),
}


def mosi_context(cfg: HyDiscGANConfig) -> Context:
    return Context(run_id=1, node_id=NODE_ID, node_config={"partition-id": PARTITION_ID,
                   "num-partitions": NUM_PARTITIONS}, state=RecordDict(), run_config=cfg.to_run_config())


def server_strategy(cfg: HyDiscGANConfig) -> HyDiscGANStrategy:
    """The strategy as server_app.py builds it."""
    return HyDiscGANStrategy(rounds_align=1, aggregation=component_rules(cfg), method=cfg.method, seed=cfg.seed,
                             node_settle_s=0.0, dp=speaker_level_dp(cfg), dp_unit=cfg.dp_unit,
                             max_examples_ratio=cfg.max_examples_ratio, generator_heads=generator_heads(cfg))


@pytest.mark.parametrize("case", list(CASES))
def test_every_reply_holds_exactly_the_allowed_keys(task_identity, caplog, case):
    overrides, rounds = CASES[case]
    cfg = HyDiscGANConfig(local_epochs=1, rounds_align=1, **overrides)
    shared = build_federated_models(cfg.load_dataset().dims, cfg, cfg.seed)
    parameter_shapes = {key: tuple(value.shape) for key, value in shared.state_dict().items()}
    strategy = server_strategy(cfg)
    arrays = ArrayRecord(shared.state_dict())
    context = mosi_context(cfg)
    caplog.set_level(logging.INFO, logger="hydiscgan_fl.client")
    for server_round, (stage, prefixes, metric_keys) in enumerate(rounds, start=1):
        (message,) = strategy.configure_train(server_round, arrays, ConfigRecord(), StaticGrid([NODE_ID]))
        assert message.content["config"]["stage"] == stage
        reply = handlers.train(message, context)
        content = reply.content

        assert set(content.array_records) == {"arrays"} and set(content.metric_records) == {"metrics"}
        assert not content.config_records
        expected_arrays = {key for key in parameter_shapes if key.startswith(prefixes)} if prefixes else set()
        assert set(content["arrays"]) == expected_arrays, (case, stage)
        assert set(content["metrics"]) == metric_keys, (case, stage)
        num_utterances = int(content["metrics"]["num-examples"])
        assert num_utterances not in {d for shape in parameter_shapes.values() for d in shape}  # so the check bites
        for key in content["arrays"]:
            assert tuple(content["arrays"][key].shape) == parameter_shapes[key], key  # no utterance dimension
        assert all(isinstance(value, (int, float)) for value in content["metrics"].values())

        arrays, _ = strategy.aggregate_train(server_round, [reply])  # the server accepts exactly this
        assert [c.status for c in strategy.rounds[-1].clients] == ["ok"], strategy.rounds[-1].clients[0].detail

    # What was held back was computed, and went to the client's own log only.
    held = caplog.text
    assert re.search(r"kept on the client: .*loss-", held)
    if cfg.simulates_missing and cfg.dp_unit != "none":
        assert "examples-audio=" in held  # counted, but no DP mechanism covers it
    if cfg.dp_unit == "utterance":
        assert "wdp-loss=" in held and "loss-recon=" in held
    private = set(context.state["private-models"].keys()) if "private-models" in context.state else set()
    kept = {"hydiscgan": any(k.startswith("disc_audio.") for k in private), "fedavg-multimodal": True,
            "distill": handlers.TEACHER_STATE_KEY in context.state,
            "multitask": handlers.MULTITASK_STATE_KEY in context.state}
    assert kept[cfg.method]


def test_the_generator_actually_trains_so_the_contract_is_about_real_replies(task_identity):
    cfg = HyDiscGANConfig(local_epochs=1)
    shared = build_shared_models(cfg.load_dataset().dims, cfg, cfg.seed)
    strategy = server_strategy(cfg)
    (message,) = strategy.configure_train(1, ArrayRecord(shared.state_dict()), ConfigRecord(), StaticGrid([NODE_ID]))
    reply = handlers.train(message, mosi_context(cfg))
    sent, returned = message.content["arrays"], reply.content["arrays"]
    assert not np.allclose(returned["generator.audio_head.weight"].numpy(), sent["generator.audio_head.weight"].numpy())


# Secure aggregation's key stages (secagg.protocol): the exact keys of the protocol record each reply holds.
SECAGG_STAGE_KEYS = {"query.secagg_setup": {"pk1", "pk2", "num-examples"},
                     "query.secagg_share_keys": {"dsts", "ctxts"},
                     "query.secagg_unmask": {"nids", "shares"}}


def test_secure_aggregation_replies_hold_exactly_the_protocol_keys(task_identity):
    """Through the real ClientApp (its routing by message type) on MOSI, three clients: every key-stage reply
    holds one record 'secagg' with exactly its stage's keys; the train reply holds the masked update (uint32,
    the sent keys and shapes, nothing else) and the ordinary metric allow-list; the server unmasks the sum."""
    from hydiscgan_fl.orchestration.update_replay import ClientAppGrid
    from strategies.secure_aggregation import secure_aggregation

    cfg = HyDiscGANConfig(local_epochs=1, rounds_align=1, secure_aggregation="secaggplus")
    shared = build_shared_models(cfg.load_dataset().dims, cfg, cfg.seed)
    contexts = {100 + pid: Context(run_id=1, node_id=100 + pid, state=RecordDict(), run_config=cfg.to_run_config(),
                                   node_config={"partition-id": pid, "num-partitions": 3}) for pid in range(3)}
    seen: list[tuple[str, object]] = []

    class RecordingGrid(ClientAppGrid):
        def send_and_receive(self, messages, *, timeout=None):
            replies = super().send_and_receive(messages, timeout=timeout)
            seen.extend((m.metadata.message_type, r.content) for m, r in zip(messages, replies))
            return replies

    strategy = HyDiscGANStrategy(rounds_align=1, aggregation=component_rules(cfg), node_settle_s=0.0,
                                 secure_aggregation=secure_aggregation(cfg))
    grid = RecordingGrid(contexts)
    messages = list(strategy.configure_train(1, ArrayRecord(shared.state_dict()), ConfigRecord(), grid))
    replies = [handlers.train(message, contexts[message.metadata.dst_node_id]) for message in messages]
    strategy.aggregate_train(1, replies)
    assert [c.status for c in strategy.rounds[-1].clients] == ["ok"] * 3

    assert sorted({kind for kind, _ in seen}) == sorted(SECAGG_STAGE_KEYS)
    for kind, content in seen:
        assert set(content.config_records) == {"secagg"} and not content.array_records and not content.metric_records
        assert set(content["secagg"]) == SECAGG_STAGE_KEYS[kind], kind
    for message, reply in zip(messages, replies):
        content = reply.content
        assert set(content.array_records) == {"masked"} and set(content.metric_records) == {"metrics"}
        assert not content.config_records
        assert set(content["masked"]) == set(message.content["arrays"])
        assert {str(content["masked"][key].dtype) for key in content["masked"]} == {"uint32"}
        assert set(content["metrics"]) == WITHOUT_DP_ALIGN
