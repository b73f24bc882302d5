"""Loader for MMSA feature pickles (CMU-MOSI / CMU-MOSEI / CH-SIMS as released with the MMSA toolkit).

The pickle holds ``{"train": {...}, "valid": {...}, "test": {...}}``; each split dict has
``text`` (N, L_t, d_t), ``audio`` (N, L_a, d_a), ``vision`` (N, L_v, d_v), optional
``text_lengths``/``audio_lengths``/``vision_lengths`` (N,), ``id`` (N,) strings ``"<video>$_$<clip>"``
and ``regression_labels`` (N,); other keys are ignored. Sequences become utterance vectors by
averaging over time steps (the first ``*_lengths`` steps when lengths are given, else all steps).
As in MMSA, -inf (and here also NaN) audio values are set to 0 before averaging.

Pickles can execute code when loaded, so the file is read by :class:`RestrictedUnpickler`, which
only resolves the globals needed to rebuild numpy arrays (dicts, lists, strings and numbers need
no globals) and refuses everything else with a :class:`DataError`.

``text_only=True`` (the server's loader) still reads and unpickles the whole file, audio and vision
arrays included, since one pickle holds every modality; it averages and keeps only text, ids and labels,
and returns a :class:`ServerView` whose ``feature_dims`` are the audio/vision widths. The unpickled
audio/vision arrays are dropped when the function returns.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DataError, MultimodalDataset, ServerView
from .videos import clip_positions

__all__ = ["load_mmsa_pickle", "RestrictedUnpickler", "ALLOWED_GLOBALS"]

_MMSA_SPLITS = ("train", "valid", "test")
_MODALITIES = (("text", "text"), ("audio", "audio"), ("vision", "visual"))


def _numpy_attr(module_suffix: str, name: str) -> Any:
    """numpy._core.<module>.<name> on numpy 2, numpy.core.<module>.<name> on numpy 1."""
    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, module_suffix):  # pragma: no cover - numpy 1.x
        core = np.core
    return getattr(getattr(core, module_suffix), name)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` as used by protocol-2 pickles to rebuild bytes."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode(encoding)


def _empty_bytes(*args: Any) -> bytes:
    """Stand-in for ``bytes`` as used by protocol-2 pickles to rebuild empty bytes."""
    if args:
        raise pickle.UnpicklingError("refused bytes() with arguments")
    return b""


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
        allowed[(f"{package}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
        allowed[(f"{package}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed_globals()


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` (numpy array/dtype/scalar rebuilding)."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refused to unpickle global '{module}.{name}' "
                "(only numpy arrays, dicts, lists, strings and numbers are allowed)"
            ) from None


def _utterance_means(path: Path, split: str, key: str, values: Any, lengths: Any, zero_invalid: bool) -> np.ndarray:
    """Mean over time steps of an (N, steps, features) array, chunked over rows to bound memory."""
    where = f"{path}: split '{split}', key '{key}'"
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} is not a numeric array (dtype {arr.dtype})")
    if arr.ndim == 2:  # already one vector per utterance
        out = np.array(arr, dtype=np.float64)
        if zero_invalid:
            out[np.isnan(out) | np.isneginf(out)] = 0.0
        return out
    if arr.ndim != 3:
        raise DataError(f"{where} must have shape (N, steps, features), got {arr.shape}")
    n, steps, dim = arr.shape
    if lengths is None:
        lens = np.full(n, steps, dtype=np.int64)
    else:
        try:
            raw = np.asarray(lengths, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: split '{split}', key '{key}_lengths' is not numeric: {exc}") from None
        if raw.shape != (n,):
            raise DataError(f"{path}: split '{split}', key '{key}_lengths' has shape {raw.shape}, expected ({n},)")
        if not np.all(np.isfinite(raw)) or np.any(raw < 0) or np.any(raw != np.round(raw)):
            raise DataError(f"{path}: split '{split}', key '{key}_lengths' must hold non-negative integers")
        # Lengths beyond the stored steps mean the sequence was truncated: average what is stored.
        lens = np.minimum(raw.astype(np.int64), steps)
    out = np.zeros((n, dim), dtype=np.float64)
    chunk = 1024
    for start in range(0, n, chunk):
        block = np.array(arr[start : start + chunk], dtype=np.float64)
        if zero_invalid:
            block[np.isnan(block) | np.isneginf(block)] = 0.0
        block_lens = lens[start : start + chunk]
        block[np.arange(steps)[None, :] >= block_lens[:, None]] = 0.0
        # Utterances of length 0 get a zero vector.
        out[start : start + chunk] = block.sum(axis=1) / np.maximum(block_lens, 1)[:, None]
    return out


def _feature_width(path: Path, split: str, key: str, values: Any, rows: int) -> int:
    """The feature width of (N, steps, features) or (N, features) values, without reading them."""
    shape = np.shape(values)
    if len(shape) not in (2, 3) or shape[0] != rows:
        raise DataError(f"{path}: split '{split}', key '{key}' has shape {shape}, expected ({rows}, [steps,] features)")
    return int(shape[-1])


def _speaker_of(utt: str) -> str:
    if "$_$" in utt:
        return utt.rpartition("$_$")[0]
    return utt.rpartition("_")[0] or utt


def _clip_of(utt: str) -> str:
    """The clip part of an id, after the separator that `_speaker_of` splits at ("" when there is none)."""
    if "$_$" in utt:
        return utt.rpartition("$_$")[2]
    return utt.rpartition("_")[2] if "_" in utt else ""


def load_mmsa_pickle(path: Path, text_only: bool = False) -> MultimodalDataset:
    """Read an MMSA feature pickle (restricted unpickler) into a regression-label dataset.

    Rows are train, then valid, then test, in file order. ``speakers`` is the video part of the id
    (before the last ``"$_$"``; ids without it fall back to before the last ``"_"``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing MMSA pickle: {path}")
    try:
        with path.open("rb") as handle:
            data = RestrictedUnpickler(handle, str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # corrupt/truncated pickles raise many types
        raise DataError(f"{path}: cannot unpickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a dict of splits, got {type(data).__name__}")

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ids", "speakers", "text", "audio", "visual", "labels", "split")}
    for split in _MMSA_SPLITS:
        if split not in data:
            raise DataError(f"{path}: missing split '{split}' (found {sorted(map(str, data))})")
    widths: dict[str, set[int]] = {"audio": set(), "visual": set()}
    for split in _MMSA_SPLITS:
        block = data[split]
        if not isinstance(block, dict):
            raise DataError(f"{path}: split '{split}' must be a dict, got {type(block).__name__}")
        for key in ("text", "audio", "vision", "id", "regression_labels"):
            if key not in block:
                raise DataError(f"{path}: split '{split}' is missing key '{key}'")
        ids = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(block["id"]).reshape(-1).tolist()]
        n = len(ids)
        feats = {}
        for key, field in _MODALITIES:
            if text_only and field != "text":  # the server's view: the width, and an (N, 0) array
                widths[field].add(_feature_width(path, split, key, block[key], n))
                feats[field] = np.zeros((n, 0))
                continue
            feats[field] = _utterance_means(
                path, split, key, block[key], block.get(f"{key}_lengths"), zero_invalid=(key == "audio")
            )
            if feats[field].shape[0] != n:
                raise DataError(f"{path}: split '{split}', key '{key}' has {feats[field].shape[0]} rows but 'id' has {n}")
        try:
            labels = np.asarray(block["regression_labels"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: split '{split}', key 'regression_labels' is not numeric: {exc}") from None
        if labels.shape[0] != n:
            raise DataError(f"{path}: split '{split}', key 'regression_labels' has {labels.shape[0]} rows but 'id' has {n}")
        parts["ids"].append(np.array(ids, dtype=str))
        parts["speakers"].append(np.array([_speaker_of(u) for u in ids], dtype=str))
        for field in ("text", "audio", "visual"):
            parts[field].append(feats[field])
        parts["labels"].append(labels)
        parts["split"].append(np.full(n, split))

    for field in ("text", "audio", "visual"):
        sizes = widths[field] if text_only and field != "text" else {a.shape[1] for a in parts[field]}
        if len(sizes) != 1:
            raise DataError(f"{path}: field '{field}' has different feature sizes across splits: {sorted(sizes)}")

    ids, videos = np.concatenate(parts["ids"]), np.concatenate(parts["speakers"])
    dataset = MultimodalDataset(
        name="mmsa",
        ids=ids,
        speakers=videos,
        text=np.concatenate(parts["text"]),
        audio=np.concatenate(parts["audio"]),
        visual=np.concatenate(parts["visual"]),
        labels=np.concatenate(parts["labels"]),
        split=np.concatenate(parts["split"]),
        label_kind="regression",
        source=str(path),
        videos=videos,  # an MMSA id is "<video>$_$<clip>": the clip number orders a video's utterances
        positions=clip_positions([_clip_of(utt) for utt in ids.tolist()], videos),
    )
    if text_only:
        dims = {"text": dataset.dims["text"], **{field: next(iter(widths[field])) for field in ("audio", "visual")}}
        return ServerView.of(dataset, feature_dims=dims)
    return dataset
