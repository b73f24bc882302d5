"""Tests of the dataset container, the MOSI bc-LSTM loader, the synthetic generator and CMVN."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from hydiscgan_fl.data import (
    DataError,
    MultimodalDataset,
    load_dataset,
    load_mosi_bclstm,
    make_synthetic,
    standardize_per_speaker,
)

MOSI_DIR = Path(__file__).resolve().parents[1] / "data" / "mosi-bclstm"


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def mosi() -> MultimodalDataset:
    return load_mosi_bclstm(MOSI_DIR)


# ---------------------------------------------------------------------------- MOSI


def test_mosi_shapes_and_splits(mosi: MultimodalDataset) -> None:
    assert len(mosi) == 2199
    assert mosi.name == "mosi-bclstm"
    assert mosi.label_kind == "binary"
    assert mosi.dims == {"text": 100, "audio": 73, "visual": 100}
    for field in ("text", "audio", "visual", "labels"):
        assert getattr(mosi, field).dtype == np.float32
    assert int((mosi.split == "train").sum()) == 1447
    assert int((mosi.split == "test").sum()) == 752
    assert set(mosi.split.tolist()) == {"train", "test"}
    train_speakers = set(mosi.speakers[mosi.split == "train"].tolist())
    test_speakers = set(mosi.speakers[mosi.split == "test"].tolist())
    assert len(train_speakers) == 62
    assert len(test_speakers) == 31
    assert not train_speakers & test_speakers
    assert set(np.unique(mosi.labels).tolist()) == {0.0, 1.0}
    assert len(np.unique(mosi.ids)) == len(mosi)


def test_mosi_rows_align_with_csv_files(mosi: MultimodalDataset) -> None:
    transcripts = _csv_rows(MOSI_DIR / "transcripts.csv")
    offset = 0
    for split in ("train", "test"):
        text_rows = _csv_rows(MOSI_DIR / f"text_{split}.csv")
        audio_rows = _csv_rows(MOSI_DIR / f"audio_{split}0.csv")
        video_rows = _csv_rows(MOSI_DIR / f"video_{split}0.csv")
        for row in (0, 1, 17, len(text_rows) // 2, len(text_rows) - 1):
            i = offset + row
            transcript = transcripts[int(text_rows[row][0])]
            assert mosi.ids[i] == transcript[0]
            assert mosi.speakers[i] == transcript[0].rsplit("_", 1)[0]
            assert mosi.split[i] == split
            assert mosi.labels[i] == float(transcript[3])
            assert float(audio_rows[row][-1]) == float(transcript[3])
            np.testing.assert_array_equal(mosi.text[i], np.array(text_rows[row][1:], dtype=np.float32))
            np.testing.assert_array_equal(mosi.audio[i], np.array(audio_rows[row][:-1], dtype=np.float32))
            np.testing.assert_array_equal(mosi.visual[i], np.array(video_rows[row][:-1], dtype=np.float32))
        offset += len(text_rows)
    assert offset == len(mosi)


def test_mosi_dataset_is_read_only_and_cached(mosi: MultimodalDataset) -> None:
    with pytest.raises(ValueError):
        mosi.text[0, 0] = 1.0
    first = load_dataset("mosi-bclstm", MOSI_DIR.parent)
    assert load_dataset("mosi-bclstm", MOSI_DIR.parent) is first
    np.testing.assert_array_equal(first.audio, mosi.audio)


def _copy_mosi(tmp_path: Path) -> Path:
    target = tmp_path / "mosi-bclstm"
    shutil.copytree(MOSI_DIR, target)
    return target


def test_mosi_truncated_csv_names_the_file(tmp_path: Path) -> None:
    directory = _copy_mosi(tmp_path)
    audio = directory / "audio_train0.csv"
    data = audio.read_bytes()
    audio.write_bytes(data[: len(data) // 2])  # cut in the middle of a row
    with pytest.raises(DataError, match="audio_train0.csv"):
        load_mosi_bclstm(directory)


def test_mosi_non_numeric_cell_names_the_file(tmp_path: Path) -> None:
    directory = _copy_mosi(tmp_path)
    video = directory / "video_test0.csv"
    rows = _csv_rows(video)
    rows[5][3] = "oops"
    with video.open("w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    with pytest.raises(DataError, match=r"video_test0\.csv: row 6, column 4"):
        load_mosi_bclstm(directory)


def test_mosi_label_mismatch_names_file_and_row(tmp_path: Path) -> None:
    directory = _copy_mosi(tmp_path)
    audio = directory / "audio_test0.csv"
    rows = _csv_rows(audio)
    rows[9][-1] = "0" if float(rows[9][-1]) == 1 else "1"
    with audio.open("w", newline="") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    with pytest.raises(DataError, match=r"audio_test0\.csv: row 10: label column"):
        load_mosi_bclstm(directory)


def test_mosi_missing_file_names_the_path(tmp_path: Path) -> None:
    directory = _copy_mosi(tmp_path)
    (directory / "video_train0.csv").unlink()
    with pytest.raises(DataError, match="missing data file: .*video_train0.csv"):
        load_mosi_bclstm(directory)
    with pytest.raises(DataError, match="missing data directory"):
        load_mosi_bclstm(tmp_path / "nowhere")


# ---------------------------------------------------------------------------- container


def _tiny(**overrides: object) -> MultimodalDataset:
    fields: dict[str, object] = dict(
        name="tiny",
        ids=np.array(["a_1", "a_2", "b_1"]),
        speakers=np.array(["a", "a", "b"]),
        text=np.zeros((3, 2)),
        audio=np.ones((3, 3)),
        visual=np.ones((3, 1)),
        labels=np.array([0.0, 1.0, 1.0]),
        split=np.array(["train", "train", "test"]),
        label_kind="binary",
        source="tiny.csv",
    )
    fields.update(overrides)
    return MultimodalDataset(**fields)  # type: ignore[arg-type]


def test_dataset_nan_in_feature_names_field_count_and_row() -> None:
    audio = np.ones((3, 3))
    audio[1, 0] = np.nan
    audio[1, 2] = np.inf
    with pytest.raises(DataError, match=r"tiny.csv: field 'audio' has 2 NaN/Inf values .*first bad row id 'a_2'"):
        _tiny(audio=audio)


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"labels": np.array([0.0, 1.0])}, "row counts differ"),
        ({"text": np.zeros(3)}, "field 'text' must be a 2-D"),
        ({"ids": np.array(["a_1", "a_1", "b_1"])}, "duplicated ids"),
        ({"split": np.array(["train", "dev", "test"])}, "unknown split names"),
        ({"labels": np.array([0.0, 2.0, 1.0])}, "outside"),
        ({"labels": np.array([0.0, np.nan, 1.0])}, "field 'labels' has 1 NaN/Inf"),
        ({"label_kind": "ordinal"}, "label_kind"),
    ],
)
def test_dataset_validation_errors(overrides: dict[str, object], pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        _tiny(**overrides)


def test_dataset_empty_and_subsets() -> None:
    with pytest.raises(DataError, match="empty"):
        _tiny(
            ids=np.array([], dtype=str),
            speakers=np.array([], dtype=str),
            text=np.zeros((0, 2)),
            audio=np.zeros((0, 3)),
            visual=np.zeros((0, 1)),
            labels=np.zeros(0),
            split=np.array([], dtype=str),
        )
    ds = _tiny()
    assert ds.dims == {"text": 2, "audio": 3, "visual": 1}
    assert ds.text.dtype == np.float32
    sub = ds.subset(np.array([2, 0]))
    assert sub.ids.tolist() == ["b_1", "a_1"]
    assert ds.subset(np.array([False, True, False])).ids.tolist() == ["a_2"]
    assert ds.split_subset("test").ids.tolist() == ["b_1"]
    with pytest.raises(DataError, match="split 'valid' is empty"):
        ds.split_subset("valid")


def test_regression_labels_may_be_any_finite_value() -> None:
    ds = _tiny(labels=np.array([-2.5, 0.3, 3.0]), label_kind="regression")
    assert ds.labels.tolist() == pytest.approx([-2.5, 0.3, 3.0])


# ---------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic() -> None:
    a, b, c = make_synthetic(seed=3), make_synthetic(seed=3), make_synthetic(seed=4)
    for field in ("ids", "speakers", "text", "audio", "visual", "labels", "split"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.text, c.text)
    assert not np.array_equal(a.labels, c.labels)
    assert load_dataset("synthetic", None, seed=3) is load_dataset("synthetic", None, seed=3)


def test_synthetic_shapes_labels_and_speaker_independent_split() -> None:
    ds = make_synthetic()
    assert ds.name == "synthetic" and ds.label_kind == "regression"
    assert len(ds) == 80 * 24
    assert ds.dims == {"text": 32, "audio": 24, "visual": 24}
    assert ds.labels.min() >= -3.0 and ds.labels.max() <= 3.0
    assert ds.labels.std() > 0.5
    train = set(ds.speakers[ds.split == "train"].tolist())
    test = set(ds.speakers[ds.split == "test"].tolist())
    assert len(test) == 20 and len(train) == 60 and not train & test
    assert all(i.rsplit("_", 1)[0] == s for i, s in zip(ds.ids, ds.speakers))


def _nearest_centroid_speaker_accuracy(features: np.ndarray, speakers: np.ndarray) -> float:
    names, inverse = np.unique(speakers, return_inverse=True)
    fit = np.zeros(len(speakers), dtype=bool)
    for s in range(len(names)):
        rows = np.flatnonzero(inverse == s)
        fit[rows[::2]] = True
    centroids = np.stack([features[fit & (inverse == s)].mean(axis=0) for s in range(len(names))])
    held = features[~fit]
    predicted = np.argmin(((held[:, None, :] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    return float((predicted == inverse[~fit]).mean())


def test_synthetic_audio_identifies_speakers_text_does_not() -> None:
    ds = make_synthetic(seed=1).split_subset("train")
    chance = 1 / 60
    assert _nearest_centroid_speaker_accuracy(ds.audio, ds.speakers) > 0.8
    assert _nearest_centroid_speaker_accuracy(ds.visual, ds.speakers) > 0.5
    assert _nearest_centroid_speaker_accuracy(ds.text, ds.speakers) < 4 * chance


def test_synthetic_text_is_informative_and_audio_adds_information() -> None:
    ds = make_synthetic(seed=2)
    train, test = ds.split_subset("train"), ds.split_subset("test")

    def r2(build) -> float:  # type: ignore[no-untyped-def]
        x_train = np.c_[build(train), np.ones(len(train))]
        x_test = np.c_[build(test), np.ones(len(test))]
        w = np.linalg.lstsq(x_train, train.labels, rcond=None)[0]
        return 1 - float(((x_test @ w - test.labels) ** 2).mean() / test.labels.var())

    def cmvn(d, field):  # type: ignore[no-untyped-def]
        return standardize_per_speaker(getattr(d, field), d.speakers)

    text_only = r2(lambda d: d.text)
    everything = r2(lambda d: np.c_[d.text, cmvn(d, "audio"), cmvn(d, "visual")])
    assert text_only > 0.3
    assert everything > text_only + 0.1


# ---------------------------------------------------------------------------- CMVN


def test_standardize_per_speaker_matches_hand_computation() -> None:
    features = np.array(
        [
            [1.0, 5.0, 10.0],
            [3.0, 5.0, 20.0],
            [2.0, 7.0, 0.0],
            [4.0, 7.0, 0.0],
            [9.0, 7.0, 6.0],
        ]
    )
    speakers = np.array(["a", "a", "b", "b", "b"])
    out = standardize_per_speaker(features, speakers, min_std=0.5)
    assert out.dtype == np.float32
    # speaker a: column means (2, 5, 15), population stds (1, 0 -> floor 0.5, 5)
    np.testing.assert_allclose(out[0], [-1.0, 0.0, -1.0])
    np.testing.assert_allclose(out[1], [1.0, 0.0, 1.0])
    # speaker b: column 0 = (2, 4, 9): mean 5, std sqrt((9 + 1 + 16) / 3); column 1 constant 7 -> 0
    std_b0 = np.sqrt(26 / 3)
    std_b2 = np.sqrt((4 + 4 + 16) / 3)  # (0, 0, 6): mean 2
    np.testing.assert_allclose(out[2:, 0], np.array([-3.0, -1.0, 4.0]) / std_b0, rtol=1e-6)
    np.testing.assert_allclose(out[2:, 1], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(out[2:, 2], np.array([-2.0, -2.0, 4.0]) / std_b2, rtol=1e-6)
    # The floor matters: a speaker with a nearly constant feature is divided by min_std, not by ~0.
    near_constant = standardize_per_speaker(np.array([[1.0], [1.002]]), np.array(["x", "x"]), min_std=0.01)
    np.testing.assert_allclose(near_constant[:, 0], [-0.1, 0.1], rtol=1e-4)


def test_standardize_per_speaker_rejects_bad_shapes() -> None:
    with pytest.raises(DataError, match="speakers"):
        standardize_per_speaker(np.zeros((3, 2)), np.array(["a", "b"]))
    with pytest.raises(DataError, match="2-D"):
        standardize_per_speaker(np.zeros(3), np.array(["a", "b", "c"]))


# ---------------------------------------------------------------------------- load_dataset


def test_load_dataset_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown dataset spec 'mosei'.*'mosi-bclstm'.*'synthetic'.*'mmsa:"):
        load_dataset("mosei", tmp_path)
    with pytest.raises(DataError, match="must be absolute"):
        load_dataset("mmsa:relative/file.pkl", tmp_path)
    with pytest.raises(DataError, match="missing data directory"):
        load_dataset("mosi-bclstm", tmp_path)
