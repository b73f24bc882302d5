"""Tests of the MMSA pickle loader and its restricted unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hydiscgan_fl.data import DataError, load_dataset, load_mmsa_pickle
from hydiscgan_fl.data.sequences import masked_mean


def _bert(rng: np.random.Generator, n: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """MMSA's text_bert (N, 3, L) float64: token ids, attention mask, segment ids; and the token counts."""
    tokens = rng.integers(2, steps + 1, n)
    mask = (np.arange(steps)[None, :] < tokens[:, None]).astype(np.float64)
    ids = np.where(mask > 0, rng.integers(100, 30000, (n, steps)), 0).astype(np.float64)
    return np.stack([ids, mask, np.zeros((n, steps))], axis=1), tokens


def _split(rng: np.random.Generator, video: str, n: int, with_lengths: bool, aligned: bool = False,
           steps: tuple[int, int, int] = (5, 6, 7)) -> dict[str, object]:
    """One split with MMSA's keys, shapes and dtypes (float32 features, float64 text_bert, lengths as lists of
    ints as MMSA's getLengths writes them, ids and annotations as strings); padding at the back."""
    text_steps, audio_steps, vision_steps = (steps[0],) * 3 if aligned else steps
    text_bert, tokens = _bert(rng, n, text_steps)
    pad = lambda arr, lengths: np.where(np.arange(arr.shape[1])[None, :, None] < np.asarray(lengths)[:, None, None],
                                        arr, 0).astype(np.float32)  # noqa: E731
    block: dict[str, object] = {
        "raw_text": np.array([f"utterance {i}" for i in range(n)], dtype=object),
        "text": pad(rng.standard_normal((n, text_steps, 4)), tokens),
        "text_bert": text_bert,
        "audio": rng.standard_normal((n, audio_steps, 3)).astype(np.float32),
        "vision": rng.standard_normal((n, vision_steps, 2)).astype(np.float32),
        "id": np.array([f"{video}$_${i}" for i in range(n)], dtype=object),
        "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
        "classification_labels": np.zeros(n, dtype=np.float32),
        "annotations": np.array(["Neutral"] * n, dtype=object),
    }
    if aligned:
        block["audio"], block["vision"] = pad(block["audio"], tokens), pad(block["vision"], tokens)
    elif with_lengths:
        block["audio_lengths"] = [int(v) for v in rng.integers(1, audio_steps + 1, n)]
        block["vision_lengths"] = [int(v) for v in rng.integers(0, vision_steps + 1, n)]
        block["audio"] = pad(block["audio"], block["audio_lengths"])
        block["vision"] = pad(block["vision"], block["vision_lengths"])
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
def test_mmsa_unaligned_sequences_are_kept_with_their_lengths(tmp_path: Path, mmsa_payload: dict,
                                                             protocol: int) -> None:
    train = mmsa_payload["train"]
    train["audio"][1, 0, 2] = -np.inf  # MMSA sets -inf audio to 0
    train["audio_lengths"][1] = 6
    train["vision_lengths"][2] = 0  # an empty sequence
    train["vision"][3, train["vision_lengths"][3]:] = np.nan  # NaN in padding is allowed
    path = _write(tmp_path / "unaligned.pkl", mmsa_payload, protocol)
    ds = load_mmsa_pickle(path)

    assert ds.name == "mmsa" and ds.label_kind == "regression"
    assert len(ds) == 9
    assert ds.dims == {"text": 4, "audio": 3, "visual": 2}
    assert ds.steps == {"text": 5, "audio": 6, "visual": 7}  # unaligned: every modality its own steps
    assert ds.split.tolist() == ["train"] * 4 + ["valid"] * 2 + ["test"] * 3  # MMSA's own split
    assert ds.ids[0] == "vidA$_$0"
    assert ds.speakers.tolist() == ["vidA"] * 4 + ["vid_B"] * 2 + ["vidC"] * 3
    np.testing.assert_array_equal(ds.lengths["audio"][:4], train["audio_lengths"])
    np.testing.assert_array_equal(ds.lengths["visual"][:4], train["vision_lengths"])
    np.testing.assert_array_equal(ds.lengths["text"][:4], train["text_bert"][:, 1].sum(axis=1))  # attention mask
    assert (ds.lengths["audio"][6:] == 6).all() and (ds.lengths["visual"][6:] == 7).all()  # no lengths: all steps
    expected = np.where(np.isneginf(train["audio"]), 0.0, train["audio"])
    np.testing.assert_array_equal(ds.audio[:4], expected)  # as stored: no averaging in the loader
    np.testing.assert_array_equal(ds.visual[3, train["vision_lengths"][3]:], 0.0)  # padding zeroed
    np.testing.assert_array_equal(ds.visual[:2], train["vision"][:2])
    np.testing.assert_array_equal(ds.visual[2], 0.0)  # length 0: all padding
    np.testing.assert_allclose(ds.labels[:4], train["regression_labels"])

    # The models' pooling: the masked mean over valid steps (a zero vector for an empty sequence).
    pooled = masked_mean(ds.visual, ds.lengths["visual"])
    for i in range(4):
        lv = train["vision_lengths"][i]
        np.testing.assert_allclose(pooled[i], train["vision"][i][:lv].mean(axis=0) if lv else [0.0, 0.0],
                                   rtol=1e-5, atol=1e-6)
    assert load_dataset(f"mmsa:{path}", tmp_path) is load_dataset(f"mmsa:{path}", tmp_path)


def test_mmsa_aligned_gives_every_modality_the_text_length(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    payload = {split: _split(rng, f"v{split}", n, with_lengths=False, aligned=True)
               for split, n in (("train", 4), ("valid", 2), ("test", 3))}
    ds = load_mmsa_pickle(_write(tmp_path / "aligned.pkl", payload))
    assert ds.steps == {"text": 5, "audio": 5, "visual": 5}
    tokens = np.concatenate([payload[s]["text_bert"][:, 1].sum(axis=1) for s in ("train", "valid", "test")])
    for field in ("text", "audio", "visual"):
        np.testing.assert_array_equal(ds.lengths[field], tokens)


def test_mmsa_nan_inside_valid_steps_names_file_field_and_row(tmp_path: Path, mmsa_payload: dict) -> None:
    mmsa_payload["train"]["vision"][2, 0, 1] = np.nan  # vision_lengths[2] >= 0: make step 0 valid
    mmsa_payload["train"]["vision_lengths"][2] = 3
    with pytest.raises(DataError, match=r"bad\.pkl: field 'visual' has 1 NaN/Inf values inside valid steps.*"
                                        r"'vidA\$_\$2', step 0"):
        load_mmsa_pickle(_write(tmp_path / "bad.pkl", mmsa_payload))


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
    np.testing.assert_array_equal(view.text, full.text)  # the text's steps and lengths, as in the file
    assert set(view.lengths) == {"text"}
    np.testing.assert_array_equal(view.lengths["text"], full.lengths["text"])
    np.testing.assert_array_equal(view.split, full.split)  # no speaker moved: the file's valid split
    assert (view.split == "valid").sum() == 2
