"""Simulated missing modalities (hydiscgan_fl.data.missing): each kind's counts and seeding, the presence mask
that travels with the tensors, the config's checks, and the counts a client reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import load_dataset
from hydiscgan_fl.data.missing import PATTERNS, Missingness
from hydiscgan_fl.models import build_client_discriminators, build_shared_models
from hydiscgan_fl.privacy.reply_metrics import PRESENCE_KEYS, allowed_reply_metrics
from hydiscgan_fl.training import local_alignment, tensor_view, to_tensors
from strategies.bookkeeping import ClientRound, RoundSummary

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


def test_a_family_that_reads_no_mask_is_refused_and_so_is_hydiscgans_alignment() -> None:
    with pytest.raises(ValueError, match="msa-model 'mlp' reads no presence masks"):
        tensor_view(HyDiscGANConfig(dataset="synthetic", msa_model="mlp", missing_rate=0.2))
    cfg = HyDiscGANConfig(dataset="synthetic", msa_model="fsrf", missing_client_visual=1.0, hidden_dim=16)
    train = load_dataset("synthetic", None, 0).split_subset("train").subset(np.arange(20))
    data = to_tensors(train, torch.device("cpu"), tensor_view(cfg, client_key=0))
    shared = build_shared_models(train.dims, cfg, 0)
    with pytest.raises(ValueError, match="alignment stage does not honour presence masks"):
        local_alignment(shared, build_client_discriminators(train.dims, cfg, 0), data, cfg, 1, 0)


def test_modality_counts_may_leave_a_client_and_are_summed_not_averaged() -> None:
    for stage in ("align", "msa", "multimodal"):
        for dp_unit in ("none", "speaker"):
            assert set(PRESENCE_KEYS.values()) <= allowed_reply_metrics(stage, dp_unit)
    assert allowed_reply_metrics("affect", "none").isdisjoint(PRESENCE_KEYS.values())
    summary = RoundSummary(1, "multimodal", 0.0, clients=[
        ClientRound(1, "multimodal", 1, "ok", 10, examples_text=5, examples_audio=0, examples_visual=4),
        ClientRound(1, "multimodal", 2, "ok", 10, examples_text=3, examples_audio=3, examples_visual=0),
        ClientRound(1, "multimodal", 3, "error", 10)])
    row = summary.as_row()
    assert (row["examples_text"], row["examples_audio"], row["examples_visual"]) == (8, 3, 4)
    assert "examples_audio" not in RoundSummary(1, "align", 0.0, clients=[ClientRound(1, "align", 1, "ok", 1)]).as_row()
