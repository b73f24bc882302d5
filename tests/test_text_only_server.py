"""Defect 4 and 7: the server loads text and labels only, and selects its reported round on validation."""

from __future__ import annotations

import builtins
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import (
    DataError,
    ServerView,
    load_dataset,
    load_mosi_bclstm,
    make_synthetic,
    with_validation_speakers,
)
from hydiscgan_fl.models import build_shared_models
from hydiscgan_fl.server_run import ServerRun
from tests.conftest import ROOT

MOSI = ROOT / "data" / "mosi-bclstm"


@pytest.fixture
def mosi_text_only_copy(tmp_path: Path) -> Path:
    """data/mosi-bclstm with every audio and video file removed: what a text-only server could hold."""
    target = tmp_path / "data" / "mosi-bclstm"
    shutil.copytree(MOSI, target, ignore=shutil.ignore_patterns("audio_*", "video_*"))
    assert not list(target.glob("audio_*")) and not list(target.glob("video_*"))
    return tmp_path / "data"


def test_text_only_loader_reads_no_audio_video_file(mosi_text_only_copy: Path, monkeypatch) -> None:
    opened: list[str] = []
    real_open = io.open

    def spy(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        opened.append(Path(str(file)).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    view = load_mosi_bclstm(MOSI, text_only=True)
    assert opened and not [name for name in opened if name.startswith(("audio_", "video_"))], opened
    monkeypatch.undo()

    full = load_mosi_bclstm(MOSI)
    assert isinstance(view, ServerView) and view.audio.shape == (len(full), 0) and view.visual.shape == (len(full), 0)
    assert view.feature_dims == full.dims == {"text": 100, "audio": 73, "visual": 100}
    for name in ("ids", "speakers", "split", "text", "labels"):
        np.testing.assert_array_equal(getattr(view, name), getattr(full, name))
    # The same from a folder that holds no audio/video file at all; the full loader needs them.
    assert len(load_mosi_bclstm(mosi_text_only_copy / "mosi-bclstm", text_only=True)) == len(full)
    with pytest.raises(DataError, match="missing data file: .*audio_train0.csv"):
        load_mosi_bclstm(mosi_text_only_copy / "mosi-bclstm")


def test_server_run_works_without_audio_video_files_and_holds_no_audio_visual(mosi_text_only_copy: Path,
                                                                              tmp_path: Path) -> None:
    cfg = HyDiscGANConfig(data_dir=str(mosi_text_only_copy), output_dir=str(tmp_path / "runs"))
    server = ServerRun(cfg)
    assert server.dims == {"text": 100, "audio": 73, "visual": 100}
    assert server.test_multimodal is None and server.valid_multimodal is None
    tensors = [value for value in vars(server).values() if isinstance(value, torch.Tensor)]
    for split in (server.train, server.valid, server.test):
        tensors += [split.text, split.labels]
    assert all(t.ndim == 1 or t.shape[1] == 100 for t in tensors)  # text (100 wide) and labels only
    # What the server's loader cached for this run is the text-only view, not the full dataset.
    cached = load_dataset("mosi-bclstm", mosi_text_only_copy, cfg.seed, valid_fraction=cfg.valid_fraction,
                          text_only=True)
    assert isinstance(cached, ServerView) and cached.audio.shape[1] == 0 and cached.visual.shape[1] == 0
    assert len(server.evaluate(server.initial_state(), "valid")) == 2


def test_synthetic_text_only_view_drops_audio_visual_before_caching() -> None:
    view = load_dataset("synthetic", None, 0, valid_fraction=0.1, text_only=True)
    full = load_dataset("synthetic", None, 0, valid_fraction=0.1)
    assert isinstance(view, ServerView) and view.dims["audio"] == view.dims["visual"] == 0
    assert view.feature_dims == full.dims
    np.testing.assert_array_equal(view.split, full.split)
    np.testing.assert_array_equal(view.text, full.text)


def test_validation_speakers_are_a_seeded_tenth_of_the_training_speakers() -> None:
    data = make_synthetic(seed=0)
    train_speakers = set(data.speakers[data.split == "train"].tolist())
    carved = with_validation_speakers(data, 0.1, seed=0)
    valid = set(carved.speakers[carved.split == "valid"].tolist())
    assert len(valid) == round(0.1 * len(train_speakers)) and valid < train_speakers
    assert not valid & set(carved.speakers[carved.split == "train"].tolist())  # speaker independent
    np.testing.assert_array_equal(carved.split == "test", data.split == "test")  # test untouched
    again = with_validation_speakers(data, 0.1, seed=0)
    np.testing.assert_array_equal(again.split, carved.split)
    other = with_validation_speakers(data, 0.1, seed=1)
    assert set(other.speakers[other.split == "valid"].tolist()) != valid
    # Data with its own validation split (MMSA) keeps it; a fraction that leaves no training speaker is refused.
    assert with_validation_speakers(carved, 0.3, seed=5) is carved
    with pytest.raises(DataError, match="would leave no train speaker"):
        with_validation_speakers(data, 0.999, seed=0)


def test_mosi_validation_speakers_come_from_the_held_out_speakers() -> None:
    """bc-LSTM's training features are fitted to the training labels, so a validation split carved from the
    training speakers saturates; for mosi-bclstm valid-from "auto" draws them from the test speakers, as many
    as 0.1 x the training speakers, and every training speaker still trains."""
    raw = load_dataset("mosi-bclstm", ROOT / "data", 0)
    carved = HyDiscGANConfig(seed=3).load_dataset()
    assert carved.split_subset("train").ids.tolist() == raw.split_subset("train").ids.tolist()
    valid = set(carved.speakers[carved.split == "valid"].tolist())
    assert len(valid) == round(0.1 * 62) == 6 and valid < set(raw.speakers[raw.split == "test"].tolist())
    assert not valid & set(carved.speakers[carved.split == "test"].tolist())
    assert HyDiscGANConfig(seed=3, valid_from="train").load_dataset().split_subset("train").speakers.size < len(
        raw.split_subset("train"))  # the usual protocol is still available
    synthetic = with_validation_speakers(make_synthetic(seed=0), 0.1, seed=0, source="test")
    assert set(synthetic.speakers[synthetic.split == "valid"].tolist()) <= set(
        make_synthetic(seed=0).speakers[make_synthetic(seed=0).split == "test"].tolist())


def test_validation_speakers_are_on_no_client_in_simulation() -> None:
    from clients.local_data import client_dataset

    cfg = HyDiscGANConfig(dataset="synthetic")
    valid = set(cfg.load_dataset().split_subset("valid").speakers.tolist())
    held = {s for pid in range(4)
            for s in client_dataset(cfg, {"partition-id": pid, "num-partitions": 4}).speakers.tolist()}
    assert valid and not valid & held


def test_server_reports_test_at_the_best_validation_round_and_checkpoints_it(tmp_path: Path) -> None:
    cfg = HyDiscGANConfig(dataset="synthetic", rounds_align=0, rounds_msa=4, local_epochs=1,
                          output_dir=str(tmp_path))
    server = ServerRun(cfg)
    # Four real, different models (differently seeded initialisations) stand for four rounds.
    states = [build_shared_models(server.dims, cfg, seed).state_dict() for seed in (11, 12, 13, 14)]
    for server_round, state in enumerate(states, start=1):
        server.record_round({"stage": "msa", "round": server_round}, [], state, 0.0)
    summary = server.finish(states[-1], 1, {})

    rows = list(csv.DictReader((server.run_dir.path / "metrics.csv").open()))
    maes = [float(r["valid_mae"]) for r in rows]  # synthetic labels are continuous: selected on MAE
    best = int(np.argmin(maes))
    assert summary["selection_metric"] == "valid_mae" and summary["selected_round"] == best + 1
    assert summary["mae"] == float(rows[best]["test_mae"]) and summary["valid_mae"] == maes[best]
    assert summary["last_round"] == 4 and summary["last_mae"] == float(rows[-1]["test_mae"])
    assert [int(r["selected_round"]) for r in rows] == [int(np.argmin(maes[: i + 1])) + 1 for i in range(4)]
    checkpoint = torch.load(server.run_dir.path / "checkpoint.pt", weights_only=True)
    assert checkpoint["round"] == best + 1
    for key, value in checkpoint["msa"].items():
        assert torch.equal(value, states[best][f"msa.{key}"]), key
    assert json.loads((server.run_dir.path / "summary.json").read_text())["selected_round"] == best + 1
    # The text-only baseline selects its epoch on validation too.
    assert 1 <= summary["text_only_selected_epoch"] <= cfg.rounds_msa * cfg.local_epochs
    assert {"text_only_mae", "text_only_valid_mae", "text_only_last_mae"} <= set(summary)
