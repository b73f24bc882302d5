"""Tests of the MMSA pickle loader and its restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hydiscgan_fl.data import DataError, load_dataset, load_mmsa_pickle


def _split(rng: np.random.Generator, video: str, n: int, with_lengths: bool) -> dict[str, object]:
    block: dict[str, object] = {
        "raw_text": [f"utterance {i}" for i in range(n)],
        "text": rng.standard_normal((n, 5, 4)).astype(np.float32),
        "text_bert": rng.standard_normal((n, 3, 5)).astype(np.float32),
        "audio": rng.standard_normal((n, 6, 3)).astype(np.float32),
        "vision": rng.standard_normal((n, 7, 2)).astype(np.float32),
        "id": [f"{video}$_${i}" for i in range(n)],
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "classification_labels": np.zeros(n, dtype=np.float32),
        "annotations": ["Neutral"] * n,
    }
    if with_lengths:
        block["audio_lengths"] = [int(v) for v in rng.integers(1, 7, n)]
        block["vision_lengths"] = np.asarray(rng.integers(0, 8, n), dtype=np.int64)
    return block


def _write(path: Path, payload: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    with path.open("wb") as handle:
        pickle.dump(payload, handle, protocol=protocol)
    return path


@pytest.fixture()
def mmsa_payload() -> dict[str, dict[str, object]]:
    rng = np.random.default_rng(0)
    return {
        "train": _split(rng, "vidA", 4, with_lengths=True),
        "valid": _split(rng, "vid_B", 2, with_lengths=True),
        "test": _split(rng, "vidC", 3, with_lengths=False),
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_shapes_and_means(tmp_path: Path, mmsa_payload: dict, protocol: int) -> None:
    train = mmsa_payload["train"]
    train["audio"][1, 0, 2] = -np.inf  # MMSA sets -inf audio to 0
    train["audio_lengths"][1] = 6
    train["vision_lengths"][2] = 0  # empty sequence -> zero vector
    path = _write(tmp_path / "unaligned.pkl", mmsa_payload, protocol)
    ds = load_mmsa_pickle(path)

    assert ds.name == "mmsa" and ds.label_kind == "regression"
    assert len(ds) == 9
    assert ds.dims == {"text": 4, "audio": 3, "visual": 2}
    assert ds.split.tolist() == ["train"] * 4 + ["valid"] * 2 + ["test"] * 3
    assert ds.ids[0] == "vidA$_$0"
    assert ds.speakers.tolist() == ["vidA"] * 4 + ["vid_B"] * 2 + ["vidC"] * 3

    # Hand computation of the length-aware means, utterance by utterance.
    for i in range(4):
        la, lv = train["audio_lengths"][i], int(train["vision_lengths"][i])
        audio = np.array(train["audio"][i], dtype=np.float64)
        audio[np.isneginf(audio)] = 0.0
        expected_audio = audio[:la].sum(axis=0) / la
        expected_vision = train["vision"][i][:lv].astype(np.float64).sum(axis=0) / max(lv, 1)
        np.testing.assert_allclose(ds.audio[i], expected_audio, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds.visual[i], expected_vision, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds.text[i], train["text"][i].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.visual[2], [0.0, 0.0])
    assert np.isfinite(ds.audio).all()
    # Without lengths (test split), all steps are averaged.
    test = mmsa_payload["test"]
    np.testing.assert_allclose(ds.audio[6:], test["audio"].mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.visual[6:], test["vision"].mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.labels[:4], train["regression_labels"])

    assert load_dataset(f"mmsa:{path}", tmp_path) is load_dataset(f"mmsa:{path}", tmp_path)


def test_mmsa_accepts_object_id_arrays_and_numpy_scalars(tmp_path: Path, mmsa_payload: dict) -> None:
    mmsa_payload["valid"]["id"] = np.array(mmsa_payload["valid"]["id"], dtype=object)
    mmsa_payload["test"]["id"] = np.array(mmsa_payload["test"]["id"])
    mmsa_payload["train"]["extra"] = {"count": np.int64(3), "ratio": np.float32(0.5), "tuple": (1, 2.0, "x")}
    ds = load_mmsa_pickle(_write(tmp_path / "objects.pkl", mmsa_payload))
    assert ds.ids.tolist()[4:6] == ["vid_B$_$0", "vid_B$_$1"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_mmsa_refuses_code_execution(tmp_path: Path, mmsa_payload: dict) -> None:
    marker = tmp_path / "pwned"
    mmsa_payload["train"]["annotations"] = _Exploit(marker)
    path = _write(tmp_path / "evil.pkl", mmsa_payload)
    with pytest.raises(DataError, match=r"evil\.pkl: refused to unpickle global '(posix|nt|os)\.system'"):
        load_mmsa_pickle(path)
    assert not marker.exists()


class _EvalExploit:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (eval, ("__import__('os').getcwd()",))


def test_mmsa_refuses_builtins(tmp_path: Path) -> None:
    path = _write(tmp_path / "eval.pkl", {"train": _EvalExploit()})
    with pytest.raises(DataError, match=r"refused to unpickle global 'builtins\.eval'"):
        load_mmsa_pickle(path)


def test_mmsa_missing_split_and_key(tmp_path: Path, mmsa_payload: dict) -> None:
    del mmsa_payload["valid"]["regression_labels"]
    with pytest.raises(DataError, match=r"missing\.pkl: split 'valid' is missing key 'regression_labels'"):
        load_mmsa_pickle(_write(tmp_path / "missing.pkl", mmsa_payload))
    del mmsa_payload["test"]
    with pytest.raises(DataError, match=r"nosplit\.pkl: missing split 'test'"):
        load_mmsa_pickle(_write(tmp_path / "nosplit.pkl", mmsa_payload))


def test_mmsa_corrupt_and_absent_files(tmp_path: Path, mmsa_payload: dict) -> None:
    path = _write(tmp_path / "full.pkl", mmsa_payload)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.pkl: cannot unpickle"):
        load_mmsa_pickle(truncated)
    with pytest.raises(DataError, match="missing MMSA pickle"):
        load_mmsa_pickle(tmp_path / "absent.pkl")


def test_mmsa_text_only_view_keeps_the_own_valid_split_and_no_audio_visual(tmp_path: Path, mmsa_payload: dict) -> None:
    # One pickle holds every modality: its bytes are read in full, but audio/vision are neither averaged
    # nor kept; the server's view has their widths only, and MMSA's own valid split is used as is.
    path = _write(tmp_path / "unaligned.pkl", mmsa_payload)
    full = load_mmsa_pickle(path)
    view = load_dataset(f"mmsa:{path}", None, 3, valid_fraction=0.1, text_only=True)
    assert view.feature_dims == full.dims == {"text": 4, "audio": 3, "visual": 2}
    assert view.audio.shape == (9, 0) and view.visual.shape == (9, 0)
    np.testing.assert_array_equal(view.text, full.text)
    np.testing.assert_array_equal(view.split, full.split)  # no speaker moved: the file's valid split
    assert (view.split == "valid").sum() == 2
