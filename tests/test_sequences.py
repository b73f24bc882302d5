"""Sequence-level data: lengths and masks, standardisation, partition files, the server's view, the bad-data
checks, the models' pooling, `synthetic-seq`, `synthetic-fusion` and `synthetic-shared`, and an MMSA-shaped
sequence pickle through a federated run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.in_process import run_in_process
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import (
    DataError,
    MultimodalDataset,
    ServerView,
    load_dataset,
    load_partition,
    load_server_view,
    make_synthetic_sequences,
    standardize_per_speaker,
    synthetic_sequences_with_latents,
    write_partitions,
)
from hydiscgan_fl.data.sequences import masked_mean
from hydiscgan_fl.models import MSA_MODELS
from hydiscgan_fl.privacy.attacks import speaker_attack
from hydiscgan_fl.training import TensorView, to_tensors
from tests.test_mmsa_loader import _split


def _dataset(**overrides) -> MultimodalDataset:
    rng = np.random.default_rng(0)
    n = 6
    fields = dict(name="seq", ids=[f"v{i // 3}_{i}" for i in range(n)], speakers=[f"v{i // 3}" for i in range(n)],
                  text=rng.standard_normal((n, 4, 3)), audio=rng.standard_normal((n, 5, 2)),
                  visual=rng.standard_normal((n, 2)), labels=rng.standard_normal(n), split=["train"] * n,
                  label_kind="regression", source="seq.npz",
                  lengths={"text": [4, 3, 1, 2, 4, 0], "audio": [5, 5, 2, 1, 3, 4]})
    return MultimodalDataset(**{**fields, **overrides})


def test_lengths_masks_and_padding() -> None:
    ds = _dataset()
    assert ds.dims == {"text": 3, "audio": 2, "visual": 2} and ds.steps == {"text": 4, "audio": 5}
    assert set(ds.lengths) == {"text", "audio"}  # the vector field has none
    np.testing.assert_array_equal(ds.text[2, 1:], 0.0)  # padding is stored as zeros
    part = ds.subset(np.array([5, 2]))
    np.testing.assert_array_equal(part.lengths["text"], [0, 1])
    pooled = masked_mean(ds.text, ds.lengths["text"])
    np.testing.assert_allclose(pooled[1], ds.text[1, :3].mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(pooled[5], 0.0)  # length 0: a zero vector
    assert _dataset(lengths=None).lengths["text"].tolist() == [4] * 6  # no lengths: every step valid


def test_nan_in_padding_is_allowed_and_in_valid_steps_is_an_error() -> None:
    text = np.random.default_rng(1).standard_normal((6, 4, 3))
    text[2, 3, 0] = np.nan  # row 2 has 1 valid step: padding
    assert np.isfinite(_dataset(text=text).text).all()
    text[4, 3, 1] = np.inf  # row 4 has 4 valid steps
    with pytest.raises(DataError, match=r"seq\.npz: field 'text' has 1 NaN/Inf values inside valid steps in 1 rows "
                                        r"\(first bad row id 'v1_4', step 3 of 4 valid\)"):
        _dataset(text=text)


@pytest.mark.parametrize("lengths, message", [
    ({"text": [5, 0, 0, 0, 0, 0], "audio": [1] * 6}, r"'text_lengths' must be in \[0, 4\].*row 0 has 5"),
    ({"text": [1, 1, 1], "audio": [1] * 6}, r"'text_lengths' must have shape \(6,\)"),
    ({"text": [1.5] * 6}, r"'text_lengths' must hold integers"),
    ({"visual": [1] * 6}, r"lengths given for \['visual'\], which are not sequence fields"),
])
def test_bad_lengths_are_refused(lengths: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        _dataset(lengths=lengths)


def test_per_speaker_standardisation_uses_valid_steps_only() -> None:
    ds = _dataset()
    out = standardize_per_speaker(ds.audio, ds.speakers, lengths=ds.lengths["audio"])
    valid = np.arange(5)[None, :] < ds.lengths["audio"][:, None]
    for speaker in ("v0", "v1"):
        frames = out[(ds.speakers == speaker)[:, None] & valid]
        np.testing.assert_allclose(frames.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(frames.std(axis=0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(out[~valid], 0.0)
    with pytest.raises(DataError, match="need lengths"):
        standardize_per_speaker(ds.audio, ds.speakers)


def test_tensors_pool_by_the_model_family() -> None:
    ds = _dataset()
    tensors = to_tensors(ds, torch.device("cpu"), TensorView(pool=MSA_MODELS.get("context-gru").pool))
    assert tuple(tensors.text.shape) == (6, 3) and tuple(tensors.audio.shape) == (6, 2)
    np.testing.assert_allclose(tensors.text.numpy(), masked_mean(ds.text, ds.lengths["text"]), rtol=1e-6)
    standardised = standardize_per_speaker(ds.audio, ds.speakers, lengths=ds.lengths["audio"])
    np.testing.assert_allclose(tensors.audio.numpy(), masked_mean(standardised, ds.lengths["audio"]), atol=1e-6)


def test_partition_files_and_the_server_view_keep_sequences(tmp_path: Path) -> None:
    ds = load_dataset("synthetic-seq", None, 0, valid_fraction=0.1)
    paths = write_partitions(ds, 2, "iid", 0, tmp_path, whole_videos=True)
    client = load_partition(paths[0])
    assert client.steps == ds.steps and set(client.lengths) == {"text", "audio", "visual"}
    rows = np.flatnonzero(np.isin(ds.ids, client.ids))
    for name in ("text", "audio", "visual"):
        np.testing.assert_array_equal(client.lengths[name], ds.lengths[name][rows])
        np.testing.assert_array_equal(getattr(client, name), getattr(ds, name)[rows])
    server = load_server_view(paths[-1])
    assert isinstance(server, ServerView) and set(server.lengths) == {"text"}
    assert server.audio.shape == (len(ds), 0) and server.feature_dims == ds.dims
    np.testing.assert_array_equal(server.text, ds.text)
    view = load_dataset("synthetic-seq", None, 0, valid_fraction=0.1, text_only=True)
    assert view.feature_dims == ds.dims and set(view.lengths) == {"text"}


def test_synthetic_sequences_are_unaligned_drift_and_identify_speakers() -> None:
    ds = make_synthetic_sequences(seed=0)
    assert ds.steps == {"text": 12, "audio": 20, "visual": 16} and ds.dims == {"text": 16, "audio": 12, "visual": 12}
    assert all(len(set(ds.lengths[name].tolist())) > 1 for name in ds.lengths)  # ragged
    assert (ds.lengths["text"] != ds.lengths["audio"]).mean() > 0.9  # unaligned
    assert set(ds.split.tolist()) == {"train", "test"}
    assert not set(ds.speakers[ds.split == "test"]) & set(ds.speakers[ds.split == "train"])
    # The mood drifts through a video: neighbouring utterances' labels are correlated, distant ones barely.
    labels = ds.labels.reshape(60, 16)
    neighbours = np.corrcoef(labels[:, :-1].ravel(), labels[:, 1:].ravel())[0, 1]
    distant = np.corrcoef(labels[:, :4].ravel(), labels[:, -4:].ravel())[0, 1]
    assert neighbours > 0.2 and neighbours > distant + 0.15
    # The raw (unstandardised) audio‖visual identify the speaker far above chance; text does not.
    pooled = {name: masked_mean(getattr(ds, name), ds.lengths[name]) for name in ("text", "audio", "visual")}
    private = speaker_attack(np.concatenate([pooled["audio"], pooled["visual"]], axis=1), ds.speakers, seed=0)
    text = speaker_attack(pooled["text"], ds.speakers, seed=0)
    assert private["speaker_attack_acc"] > 0.8 > 5 * private["speaker_attack_chance"]
    assert text["speaker_attack_acc"] < 0.2
    again = make_synthetic_sequences(seed=0)
    np.testing.assert_array_equal(again.audio, ds.audio)


def test_pooling_keeps_part_of_the_planted_interaction() -> None:
    """The planted product c_t c_a, read from pooled vectors and from the steps that carry it (seeds 0-2):
    correlation 0.62-0.68 from the product of the two cue features' masked means (audio centred per speaker,
    as the models' standardisation does), 0.92-0.93 from the cue word times the audio cue run's contrast to
    the other frames. A model of pooled vectors is not shut out of the interaction; one of steps can do more."""
    for seed in range(3):
        ds, latents = synthetic_sequences_with_latents(seed=seed)
        planted = latents.planted
        product = planted["cue_text"] * planted["cue_audio"]
        text_cue = masked_mean(ds.text, ds.lengths["text"])[:, 0]
        audio_cue = masked_mean(ds.audio, ds.lengths["audio"])[:, 0]
        for speaker in np.unique(ds.speakers):
            audio_cue[ds.speakers == speaker] -= audio_cue[ds.speakers == speaker].mean()
        frames = np.arange(ds.steps["audio"])[None, :]
        in_run = (frames >= planted["cue_run_start"][:, None]) & (
            frames < (planted["cue_run_start"] + planted["cue_run_length"])[:, None])
        rest = (frames < ds.lengths["audio"][:, None]) & ~in_run
        audio = ds.audio[:, :, 0]
        contrast = (audio * in_run).sum(1) / in_run.sum(1) - (audio * rest).sum(1) / rest.sum(1)
        cue_word = ds.text[np.arange(len(product)), planted["cue_word"], 0]
        pooled = np.corrcoef(product, text_cue * audio_cue)[0, 1]
        steps = np.corrcoef(product, cue_word * contrast)[0, 1]
        assert 0.6 < pooled < 0.7 and 0.9 < steps < 0.95, (seed, pooled, steps)


def _keyed_run_difference(frames: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """On standardised frames: the mean of feature 0 over the valid frames whose key (feature 1) reads +1, less
    the mean over those reading -1 (a key of ±3 raw is above 1.2 standardised, unit noise below 0.5)."""
    values, keys = frames[:, :, 0], frames[:, :, 1]
    valid = np.arange(values.shape[1])[None, :] < lengths[:, None]
    plus, minus = valid & (keys > 0.7), valid & (keys < -0.7)
    return ((values * plus).sum(1) / np.maximum(plus.sum(1), 1)
            - (values * minus).sum(1) / np.maximum(minus.sum(1), 1))


def test_pooling_loses_the_key_value_lookups() -> None:
    """synthetic-fusion's two lookups (text keys audio, audio keys visual), seeds 0-2: a least-squares fit on
    the pooled vectors of all three modalities (centred per speaker) and all their pairwise products, fitted on
    the training speakers, correlates below 0.2 with either lookup on the test speakers; reading the runs'
    values by their keys from the steps (standardised per speaker, as the models see them), with the key from
    the cue word (text) or the mean of feature 2 (audio), correlates above 0.7."""
    for seed in range(3):
        ds, latents = synthetic_sequences_with_latents(seed=seed, interaction="key-value")
        assert ds.name == "synthetic-fusion" and ds.label_kind == "regression"
        planted = latents.planted
        np.testing.assert_allclose(latents.interaction, planted["text_audio"] + planted["audio_visual"])
        pooled = np.concatenate([masked_mean(getattr(ds, name), ds.lengths[name])
                                 for name in ("text", "audio", "visual")], axis=1)
        for speaker in np.unique(ds.speakers):
            pooled[ds.speakers == speaker] -= pooled[ds.speakers == speaker].mean(axis=0)
        upper = np.triu_indices(pooled.shape[1])
        features = np.concatenate([np.ones((len(pooled), 1)), pooled,
                                   (pooled[:, :, None] * pooled[:, None, :])[:, upper[0], upper[1]]], axis=1)
        train, test = ds.split == "train", ds.split == "test"
        text_key = np.sign(ds.text[np.arange(len(pooled)), planted["cue_word"], 0])
        audio, visual = (standardize_per_speaker(getattr(ds, name), ds.speakers, lengths=ds.lengths[name])
                         for name in ("audio", "visual"))
        audio_key = np.sign(masked_mean(audio, ds.lengths["audio"])[:, 2])
        from_steps = {"text_audio": text_key * _keyed_run_difference(audio, ds.lengths["audio"]),
                      "audio_visual": audio_key * _keyed_run_difference(visual, ds.lengths["visual"])}
        for lookup, read in from_steps.items():
            target = planted[lookup]
            coef = np.linalg.lstsq(features[train], target[train], rcond=1e-6)[0]
            from_pooled = np.corrcoef(features[test] @ coef, target[test])[0, 1]
            from_steps_corr = np.corrcoef(read, target)[0, 1]
            assert abs(from_pooled) < 0.2 and from_steps_corr > 0.7, (seed, lookup, from_pooled, from_steps_corr)


def test_every_modality_holds_the_shared_factor() -> None:
    """synthetic-shared, seeds 0-2: the same videos, lengths and split as synthetic-seq, each modality's steps
    moved by one fixed direction times z_s (to float32 rounding), and a linear fit on any one modality's
    pooled steps (standardised per speaker, fitted on the training speakers) correlates above 0.8 with z_s on
    the test speakers."""
    for seed in range(3):
        ds, latents = synthetic_sequences_with_latents(seed=seed, shared_factor=True)
        base = make_synthetic_sequences(seed=seed)
        assert ds.name == "synthetic-shared" and base.name == "synthetic-seq"
        np.testing.assert_array_equal(ds.split, base.split)
        train, test = ds.split == "train", ds.split == "test"
        for name in ("text", "audio", "visual"):
            np.testing.assert_array_equal(ds.lengths[name], base.lengths[name])
            moved = (getattr(ds, name) - getattr(base, name))[np.arange(len(ds.labels)), 0]  # first step
            assert np.linalg.matrix_rank(moved, tol=1e-3) == 1 and np.allclose(moved[:, 0], 0.0, atol=1e-5)
            steps = standardize_per_speaker(getattr(ds, name), ds.speakers, lengths=ds.lengths[name])
            pooled = masked_mean(steps, ds.lengths[name])
            features = np.concatenate([np.ones((len(pooled), 1)), pooled], axis=1)
            coef = np.linalg.lstsq(features[train], latents.shared[train], rcond=None)[0]
            assert np.corrcoef(features[test] @ coef, latents.shared[test])[0, 1] > 0.8, (seed, name)
    with pytest.raises(DataError, match="built on interaction 'cue-product'"):
        synthetic_sequences_with_latents(seed=0, interaction="key-value", shared_factor=True)


def test_synthetic_seq_takes_a_speaker_count() -> None:
    """"synthetic-seq:<n>" (and "synthetic-fusion:<n>", "synthetic-shared:<n>") has n speakers of 16
    utterances; the bare spec keeps the generator's 60."""
    assert HyDiscGANConfig(dataset="synthetic-seq:240").dataset == "synthetic-seq:240"
    larger = load_dataset("synthetic-seq:12", None, 0, cached=False)
    assert len(set(larger.speakers.tolist())) == 12 and len(larger.labels) == 12 * 16
    assert len(set(load_dataset("synthetic-seq", None, 0, cached=False).speakers.tolist())) == 60
    assert HyDiscGANConfig(dataset="synthetic-fusion:30").dataset == "synthetic-fusion:30"
    fusion = load_dataset("synthetic-fusion:12", None, 0, cached=False)
    assert fusion.name == "synthetic-fusion" and len(fusion.labels) == 12 * 16
    assert HyDiscGANConfig(dataset="synthetic-shared:30").dataset == "synthetic-shared:30"
    shared = load_dataset("synthetic-shared:12", None, 0, cached=False)
    assert shared.name == "synthetic-shared" and len(shared.labels) == 12 * 16
    with pytest.raises(DataError, match="'synthetic-seq:<number of speakers, at least 2>'"):
        load_dataset("synthetic-seq:1", None, 0, cached=False)


def _mmsa_sequence_pickle(path: Path) -> Path:
    """A small unaligned MMSA pickle: 8 training videos, its own valid and test videos."""
    rng = np.random.default_rng(3)
    payload = {split: {} for split in ("train", "valid", "test")}
    for split, videos in (("train", 8), ("valid", 2), ("test", 3)):
        blocks = [_split(rng, f"{split}{v}", 6, with_lengths=True) for v in range(videos)]
        for key in blocks[0]:
            values = [block[key] for block in blocks]
            payload[split][key] = (sum(values, []) if isinstance(values[0], list) else np.concatenate(values))
    with path.open("wb") as handle:
        pickle.dump(payload, handle, protocol=4)
    return path


@pytest.mark.parametrize("msa_model", ["mlp", "context-gru"])
def test_an_mmsa_sequence_pickle_runs_federated(tmp_path: Path, msa_model: str) -> None:
    pkl = _mmsa_sequence_pickle(tmp_path / "unaligned.pkl")
    run = run_in_process({"dataset": f"mmsa:{pkl}", "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                          "msa-model": msa_model, "partition": "iid", "output-dir": str(tmp_path / "runs")},
                         num_nodes=2)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["selected_round"] in (1, 2) and np.isfinite(summary["mae"])
    checkpoint = torch.load(run.run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["dims"] == {"text": 4, "audio": 3, "visual": 2}
    assert HyDiscGANConfig.from_run_config(checkpoint["config"]).msa_model == msa_model
