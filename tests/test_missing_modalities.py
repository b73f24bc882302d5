"""Simulated missing modalities (hydiscgan_fl.data.missing): each kind's counts and seeding, the presence mask
that travels with the tensors, the config's checks, the counts a client reports, and HyDiscGAN with incomplete
clients (stage 1 per modality, G aggregated part by part, one federated run)."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from examples.in_process import run_in_process

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import load_dataset
from hydiscgan_fl.data.missing import PATTERNS, Missingness
from hydiscgan_fl.models import build_client_discriminators, build_shared_models
from hydiscgan_fl.orchestration.flwr_runner import LocalFederation
from hydiscgan_fl.privacy.reply_metrics import PRESENCE_KEYS, allowed_reply_metrics
from hydiscgan_fl.training import local_alignment, msa_step, tensor_view, to_tensors, train_multimodal
from hydiscgan_fl.training.loops import client_modalities
from strategies import HyDiscGANStrategy
from strategies.aggregation import generator_parts, part_claim
from strategies.bookkeeping import ClientRound, RoundSummary
from tests.grids import StaticGrid

IDS = np.array([f"video{v}_{u}" for v in range(200) for u in range(10)])  # 2,000 utterance ids


def test_utterance_patterns_are_the_six_proper_subsets_at_the_rate_and_seeded_per_utterance() -> None:
    patterns = Missingness(modality_rate=0.4, seed=3).patterns(IDS)
    incomplete = ~patterns.all(axis=1)
    assert abs(incomplete.mean() - 0.4) < 0.04 and patterns.any(axis=1).all()  # never an empty pattern
    seen = {tuple(row) for row in patterns[incomplete]}
    assert seen == {tuple(row) for row in PATTERNS} and len(seen) == 6
    counts = np.array([(patterns[incomplete] == row).all(axis=1).sum() for row in PATTERNS])
    assert counts.min() > 0.6 * counts.mean()  # drawn uniformly
    # the same utterance gets the same pattern whatever else is loaded with it, in whatever order
    order = np.random.default_rng(0).permutation(len(IDS))[:300]
    np.testing.assert_array_equal(Missingness(modality_rate=0.4, seed=3).patterns(IDS[order]), patterns[order])
    assert not np.array_equal(Missingness(modality_rate=0.4, seed=4).patterns(IDS), patterns)
    assert Missingness(seed=3).patterns(IDS).all()  # rate 0: complete


def test_within_modality_steps_are_removed_at_the_rate_and_lengths_shrink() -> None:
    rng = np.random.default_rng(0)
    n, steps = 400, 30
    values = rng.normal(size=(n, steps, 2)).astype(np.float32)
    lengths = rng.integers(0, steps + 1, size=n)
    values[np.arange(steps)[None, :] >= lengths[:, None]] = 0.0
    missing = Missingness(rate=0.3, seed=1)
    dropped, new_lengths = missing.drop_steps(values, lengths, IDS[:n], "audio")
    assert (new_lengths <= lengths).all() and abs(1 - new_lengths.sum() / lengths.sum() - 0.3) < 0.03
    for row in range(0, n, 37):  # the kept steps are original steps, in order, at the front; the rest zero
        kept = dropped[row, : new_lengths[row]]
        original = [tuple(step) for step in values[row, : lengths[row]]]
        positions = [original.index(tuple(step)) for step in kept]
        assert positions == sorted(positions) and not dropped[row, new_lengths[row]:].any()
    again, again_lengths = missing.drop_steps(values[::-1], lengths[::-1], IDS[:n][::-1], "audio")
    np.testing.assert_array_equal(again_lengths[::-1], new_lengths)  # seeded per utterance, not per position
    _, visual_lengths = missing.drop_steps(values, lengths, IDS[:n], "visual")
    assert not np.array_equal(visual_lengths, new_lengths)  # each modality its own draw


def test_within_modality_rate_on_utterance_vectors_masks_a_videos_utterances() -> None:
    kept = Missingness(rate=0.25, seed=0).kept_utterances(IDS, "visual")
    assert abs((~kept).mean() - 0.25) < 0.03
    present = Missingness(rate=0.25, seed=0).presence(IDS, {"text": None, "audio": None, "visual": None})
    np.testing.assert_array_equal(present[:, 2], kept)
    assert present[:, 0].all()  # the within-modality rate is for audio/visual only


def test_client_level_draws_give_every_kind_of_client_and_depend_on_the_client_only() -> None:
    missing = Missingness(client_audio=0.5, client_visual=0.5, seed=0)
    kinds = {missing.client_holds(key) for key in range(40)}
    assert kinds == {(True, True), (True, False), (False, True), (False, False)}
    assert [missing.client_holds(key) for key in range(40)] == [missing.client_holds(key) for key in range(40)]
    assert Missingness(client_audio=1.0, seed=0).client_holds(7) == (False, True)
    present = missing.presence(IDS[:50], {"audio": None, "visual": None}, client_key=5)
    holds = missing.client_holds(5)
    assert (present[:, 1] == holds[0]).all() and (present[:, 2] == holds[1]).all() and present[:, 0].all()
    # the server's data (no client key) is untouched by client-level draws
    assert missing.presence(IDS[:50], {"audio": None, "visual": None}).all()


def _fsrf_cfg(**overrides) -> HyDiscGANConfig:
    return HyDiscGANConfig(dataset="synthetic-seq", method="fedavg-multimodal", msa_model="fsrf", **overrides)


def test_tensors_carry_the_mask_zero_what_is_missing_and_agree_on_every_subset() -> None:
    cfg = _fsrf_cfg(missing_rate=0.3, missing_modality_rate=0.5)
    train = load_dataset("synthetic-seq", None, 0).split_subset("train")
    data = to_tensors(train, torch.device("cpu"), tensor_view(cfg))
    present = data.present
    assert present.shape == (len(train), 3) and present.dtype == torch.bool and not present.all()
    for column, name in ((1, "audio"), (2, "visual")):
        absent = ~present[:, column]
        assert (data.steps[name].lengths[absent] == 0).all() and not getattr(data, name)[absent].any()
        assert (data.steps[name].lengths[~absent] > 0).all()
        assert data.steps[name].lengths.sum() < int(train.lengths[name].sum())  # steps were dropped
    # a client's speakers, taken alone, get exactly their rows' masks and steps of the whole split
    rows = np.flatnonzero(np.isin(train.speakers, np.unique(train.speakers)[::3]))
    part = to_tensors(train.subset(rows), torch.device("cpu"), tensor_view(cfg))
    torch.testing.assert_close(part.present, present[rows])
    torch.testing.assert_close(part.steps["audio"].lengths, data.steps["audio"].lengths[rows])
    torch.testing.assert_close(part.audio, data.audio[rows])
    # without missingness nothing changes and no mask is carried
    plain = to_tensors(train, torch.device("cpu"), tensor_view(_fsrf_cfg()))
    assert plain.present is None and int(plain.steps["audio"].lengths.sum()) == int(train.lengths["audio"].sum())
    # the text is shareable: kept where the mask says missing (models that read the mask ignore it there)
    torch.testing.assert_close(data.text, plain.text)
    torch.testing.assert_close(data.steps["text"].values, plain.steps["text"].values)


def test_a_test_time_subset_masks_and_blanks_only_the_modalities_left_out() -> None:
    cfg = _fsrf_cfg(missing_rate=0.3)
    data = to_tensors(load_dataset("synthetic-seq", None, 0).split_subset("test"), torch.device("cpu"),
                      tensor_view(cfg))
    only_visual = data.only(["visual"])
    assert not only_visual.present[:, :2].any()
    torch.testing.assert_close(only_visual.present[:, 2], data.present[:, 2])  # r's draws still hold
    assert not only_visual.audio.any() and (only_visual.steps["audio"].lengths == 0).all()
    torch.testing.assert_close(only_visual.visual, data.visual)
    torch.testing.assert_close(only_visual.steps["visual"].lengths, data.steps["visual"].lengths)
    torch.testing.assert_close(only_visual.text, data.text)  # shareable: kept, masked
    every = to_tensors(load_dataset("synthetic-seq", None, 0).split_subset("test"), torch.device("cpu"),
                       tensor_view(_fsrf_cfg())).only(["text", "audio", "visual"])
    assert every.present.all()  # no missingness: a full mask where there was none
    with pytest.raises(ValueError, match="unknown modalities"):
        data.only(["video"])


def test_a_client_missing_a_modality_holds_none_of_it() -> None:
    cfg = _fsrf_cfg(missing_client_audio=1.0)
    train = load_dataset("synthetic", None, 0).split_subset("train")
    client = to_tensors(train, torch.device("cpu"), tensor_view(cfg, client_key=2))
    assert not client.present[:, 1].any() and client.present[:, [0, 2]].all() and not client.audio.any()
    server = to_tensors(train, torch.device("cpu"), tensor_view(cfg))
    assert server.present.all()


@pytest.mark.parametrize("overrides, message", [
    ({"missing_rate": 1.0}, "missing-rate"),
    ({"missing_modality_rate": -0.1}, "missing-modality-rate"),
    ({"missing_client_visual": 1.5}, "missing-client-visual"),
    ({"missing_rate": 0.2, "method": "distill"}, "method 'distill'"),
    ({"missing_client_audio": 0.5, "task": "affect", "dataset": "affect-synthetic"}, "task 'affect'"),
])
def test_config_refuses_bad_values_and_methods_that_cannot_mask(overrides, message) -> None:
    run_config = {**_fsrf_cfg().to_run_config(), **{k.replace("_", "-"): v for k, v in overrides.items()}}
    with pytest.raises(ConfigError, match=message):
        HyDiscGANConfig.from_run_config(run_config)


def test_a_family_that_reads_no_mask_is_refused_where_real_modalities_meet_it() -> None:
    cfg = HyDiscGANConfig(dataset="synthetic", method="fedavg-multimodal", msa_model="mlp", missing_rate=0.2)
    train = load_dataset("synthetic", None, 0).split_subset("train").subset(np.arange(20))
    data = to_tensors(train, torch.device("cpu"), tensor_view(cfg.model_copy(update={"method": "hydiscgan"})))
    shared = build_shared_models(train.dims, cfg, 0)
    with pytest.raises(ValueError, match="MSAModel reads no presence masks"):
        train_multimodal(shared.msa, data, cfg, 1, 0, train.label_kind)  # e.g. central-multimodal
    with pytest.raises(ValueError, match="msa-model 'mlp' reads no presence masks"):
        tensor_view(cfg)  # the federated baseline: at the start of the run


def _client(missing: dict, client_key: int = 0, rows: int = 48):
    cfg = HyDiscGANConfig(dataset="synthetic", msa_model="mlp", hidden_dim=16, batch_size=16, **missing)
    train = load_dataset("synthetic", None, 0).split_subset("train").subset(np.arange(rows))
    data = to_tensors(train, torch.device("cpu"), tensor_view(cfg, client_key))
    return cfg, train, data


def _stage1(cfg, train, data):
    shared = build_shared_models(train.dims, cfg, 0)
    private = build_client_discriminators(train.dims, cfg, 1)
    before = {k: v.clone() for k, v in {**_prefixed(shared, "g."), **_prefixed(private, "p.")}.items()}
    losses = local_alignment(shared, private, data, cfg, 1, 0)
    after = {**_prefixed(shared, "g."), **_prefixed(private, "p.")}
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    return losses, changed, shared


def _prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in module.state_dict().items()}


def test_a_client_without_audio_trains_the_visual_side_of_stage_1_only() -> None:
    losses, changed, _ = _stage1(*_client({"missing_client_audio": 1.0}))
    assert losses and any(k.startswith("g.generator.visual_head.") for k in changed)
    assert any(k.startswith("g.generator.trunk.") for k in changed)
    assert any(k.startswith("p.disc_visual.") for k in changed)
    assert any(k.startswith("p.encoder_visual.") for k in changed)
    assert not any(k.startswith(("g.generator.audio_head.", "p.disc_audio.", "p.encoder_audio.")) for k in changed)
    _, changed, _ = _stage1(*_client({"missing_client_visual": 1.0}))  # and the reverse
    assert any(k.startswith("g.generator.audio_head.") for k in changed)
    assert not any(k.startswith(("g.generator.visual_head.", "p.disc_visual.")) for k in changed)


def test_a_client_with_neither_modality_sits_stage_1_out() -> None:
    losses, changed, _ = _stage1(*_client({"missing_client_audio": 1.0, "missing_client_visual": 1.0}))
    assert losses == {} and changed == set()


def test_what_a_missing_entry_holds_never_changes_stage_1() -> None:
    cfg, train, data = _client({"missing_modality_rate": 0.6})
    assert not data.present.all()
    _, _, clean = _stage1(cfg, train, data)
    noise = torch.randn(data.audio.shape, generator=torch.Generator().manual_seed(9)) * 100
    garbage = dataclasses.replace(data, audio=torch.where(data.present[:, 1:2], data.audio, noise),
                                  visual=torch.where(data.present[:, 2:3], data.visual, 5.0))
    _, _, noisy = _stage1(cfg, train, garbage)
    for key, value in clean.state_dict().items():
        torch.testing.assert_close(noisy.state_dict()[key], value)


def test_stage_2_asks_only_the_discriminators_of_modalities_the_client_holds() -> None:
    cfg, train, data = _client({"missing_client_audio": 1.0})
    assert client_modalities(data) == ("visual",)
    shared = build_shared_models(train.dims, cfg, 0)
    private = build_client_discriminators(train.dims, cfg, 1)
    asked = []
    original = private.logits
    private.logits = lambda a, v, t: asked.append(1) or original(a, v, t)  # noqa: E731
    batch = data.rows(torch.arange(16))
    optimizer = torch.optim.Adam(shared.parameters())
    noise = torch.zeros(16, cfg.noise_dim)
    with_audio = msa_step(shared, private, batch, optimizer, cfg, noise, train.label_kind)
    only_visual = msa_step(shared, private, batch, optimizer, cfg, noise, train.label_kind, judges=("visual",))
    neither = msa_step(shared, private, batch, optimizer, cfg, noise, train.label_kind, judges=())
    assert "loss_gen_adv" in with_audio and "loss_gen_adv" in only_visual and "loss_gen_adv" not in neither
    assert len(asked) == 2


def test_modality_counts_leave_a_client_only_without_dp_and_are_summed_not_averaged() -> None:
    for stage in ("align", "msa", "multimodal"):
        assert set(PRESENCE_KEYS.values()) <= allowed_reply_metrics(stage, "none")
        assert allowed_reply_metrics(stage, "speaker").isdisjoint(PRESENCE_KEYS.values())  # no mechanism covers them
    for stage in ("align", "msa"):
        assert allowed_reply_metrics(stage, "utterance").isdisjoint(PRESENCE_KEYS.values())
    assert allowed_reply_metrics("affect", "none").isdisjoint(PRESENCE_KEYS.values())
    summary = RoundSummary(1, "multimodal", 0.0, clients=[
        ClientRound(1, "multimodal", 1, "ok", 10, examples_text=5, examples_audio=0, examples_visual=4),
        ClientRound(1, "multimodal", 2, "ok", 10, examples_text=3, examples_audio=3, examples_visual=0),
        ClientRound(1, "multimodal", 3, "error", 10)])
    row = summary.as_row()
    assert (row["examples_text"], row["examples_audio"], row["examples_visual"]) == (8, 3, 4)
    assert "examples_audio" not in RoundSummary(1, "align", 0.0, clients=[ClientRound(1, "align", 1, "ok", 1)]).as_row()


def test_stage_1_weights_each_part_of_g_by_the_examples_that_trained_it(task_identity) -> None:
    """Hand computation: audio head by examples-audio, visual head by examples-visual, the rest by their sum;
    a client with neither counts for nothing, and a part no client trained keeps its global value."""
    heads = {"audio": "generator.audio_head.", "visual": "generator.visual_head."}
    zero = {"generator.trunk.w": np.zeros(2), "generator.audio_head.w": np.zeros(2),
            "generator.visual_head.w": np.zeros(2), "msa.w": np.zeros(1)}
    strategy = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0, generator_heads=heads)
    initial = ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in zero.items()})
    messages = list(strategy.configure_train(1, initial, ConfigRecord(), StaticGrid([1, 2, 3])))

    def reply(message, value: float, audio: int, visual: int) -> Message:
        arrays = ArrayRecord({k: Array(np.full(2, value, dtype=np.float32))
                              for k in zero if k.startswith("generator.")})
        metrics = MetricRecord({"num-examples": 10, "examples-text": 10, "examples-audio": audio,
                                "examples-visual": visual})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)

    arrays, _ = strategy.aggregate_train(1, [reply(messages[0], 1.0, 10, 10), reply(messages[1], 4.0, 0, 10),
                                            reply(messages[2], 100.0, 0, 0)])
    np.testing.assert_allclose(arrays["generator.audio_head.w"].numpy(), 1.0)  # only client 1 held audio
    np.testing.assert_allclose(arrays["generator.visual_head.w"].numpy(), (10 * 1 + 10 * 4) / 20)
    np.testing.assert_allclose(arrays["generator.trunk.w"].numpy(), (20 * 1 + 10 * 4) / 30)
    row = strategy.rounds[-1].as_row()
    assert (row["examples_audio"], row["examples_visual"]) == (10, 20)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid([1])))
    kept, _ = strategy.aggregate_train(1, [reply(messages[0], 9.0, 0, 0)])  # nobody trained any part
    for key in ("generator.trunk.w", "generator.audio_head.w", "generator.visual_head.w"):
        np.testing.assert_allclose(kept[key].numpy(), arrays[key].numpy())
    assert generator_parts(["generator.audio_head.b", "generator.trunk.0.w"], heads) == {
        "shared": ["generator.trunk.0.w"], "audio": ["generator.audio_head.b"]}
    assert part_claim({"num-examples": 7}, "shared") == 14  # no counts reported: every utterance held both


@pytest.mark.parametrize("overrides, problem", [
    ({"aggregation": "fedmedian"}, "aggregation-generator 'fedmedian'"),
    ({"secure_aggregation": "secaggplus"}, "secure-aggregation"),
    ({"dp_unit": "speaker"}, "dp-unit 'speaker'"),
])
def test_hydiscgan_with_missing_modalities_needs_a_part_weighted_mean(overrides, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        HyDiscGANConfig(missing_client_audio=0.5, **overrides)
    HyDiscGANConfig(missing_client_audio=0.5, rounds_align=0, **overrides)  # no stage 1: nothing to weigh


# One per kind of missingness (data.missing); the multimodal baseline with `fsrf` has its run in test_fsrf.py.
PATTERN_RUNS = {
    # on utterance vectors, where the rate takes whole utterances' audio/visual (on sequences, frames)
    "within-modality": {"dataset": "synthetic", "missing-rate": 0.4},
    "per-utterance": {"missing-modality-rate": 0.5},
    "per-client": {"missing-client-audio": 0.5, "missing-client-visual": 0.5},
}


@pytest.mark.parametrize("pattern", list(PATTERN_RUNS))
def test_a_federated_run_with_each_missingness_pattern(tmp_path, pattern) -> None:
    """Both stages through the ServerApp and ClientApps on 3 clients; every round completes with every reply,
    metrics.csv sums the clients' counts, and the counts show the pattern."""
    run = run_in_process({"dataset": "synthetic-seq", "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                          "batch-size": 64, "hidden-dim": 16, "msa-model": "mlp", **PATTERN_RUNS[pattern],
                          "output-dir": str(tmp_path)}, num_nodes=3)
    _check_missing_run(run.run_dir)
    clients = [c for c in csv.DictReader((run.run_dir / "clients.csv").open()) if c["stage"] != "align"]
    counts = {(int(c["examples_audio"]), int(c["examples_visual"]), int(c["num_examples"])) for c in clients}
    if pattern == "per-client":  # seed 0: one of the 3 clients holds neither audio nor visual, another both
        assert any(a == v == 0 for a, v, _ in counts) and any(a == v == n for a, v, n in counts)
    else:  # some utterances of every client miss audio or visual
        assert all(0 < a < n and 0 < v < n for a, v, n in counts)


def _check_missing_run(run_dir) -> None:  # noqa: ANN001 - a Path
    rounds = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [(r["stage"], int(r["replies_ok"])) for r in rounds] == [("align", 3), ("msa", 3)]
    clients = list(csv.DictReader((run_dir / "clients.csv").open()))
    for row in rounds:
        mine = [c for c in clients if c["server_round"] == row["round"]]
        assert int(row["examples_audio"]) == sum(int(c["examples_audio"]) for c in mine)
        assert int(row["examples_visual"]) == sum(int(c["examples_visual"]) for c in mine)
    assert np.isfinite(json.loads((run_dir / "summary.json").read_text())["f1"])


def test_flwr_run_with_every_missingness_pattern_at_once(tmp_path) -> None:
    """A real `flwr run` (managed local SuperLink, Ray simulation) with all three kinds on together."""
    run_config = {"dataset": "synthetic-seq", "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                  "hidden-dim": 16, "msa-model": "mlp", "missing-rate": 0.3, "missing-modality-rate": 0.3,
                  "missing-client-audio": 0.5, "missing-client-visual": 0.5, "output-dir": str(tmp_path / "runs")}
    with LocalFederation(flwr_home=tmp_path / "flwr-home") as federation:
        outcome = federation.run(run_config, num_supernodes=3, timeout_s=600)
    assert outcome.status == "finished:completed"
    _check_missing_run(outcome.run_dir)
