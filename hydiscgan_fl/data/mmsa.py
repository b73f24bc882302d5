"""Loader for MMSA feature pickles (CMU-MOSI / CMU-MOSEI / CH-SIMS as released with the MMSA toolkit).

The pickle holds ``{"train": {...}, "valid": {...}, "test": {...}}``; each split dict has
``text`` (N, L_t, d_t), ``audio`` (N, L_a, d_a), ``vision`` (N, L_v, d_v), optional
``text_lengths``/``audio_lengths``/``vision_lengths`` (N,), ``text_bert`` (N, 3, L_t), ``id`` (N,) strings
``"<video>$_$<clip>"`` and ``regression_labels`` (N,); other keys are ignored. The sequences are kept as
stored, with their valid lengths (:mod:`hydiscgan_fl.data.sequences`): ``<key>_lengths`` when the file has
them (MMSA's unaligned files: audio and vision), for text the token count of ``text_bert``'s attention mask;
an aligned file (audio/vision with the text's steps, no lengths of their own) gives every modality the text's
length. Without any of these all stored steps are valid. Pooling steps to vectors is the MSA model's choice
(models.registry), not the loader's. MMSA's own train/valid/test split is kept. As in MMSA, -inf audio
values are set to 0; NaN/Inf left inside valid steps is an error naming the file, field and row (in padding
it is allowed and zeroed).

Pickles can execute code when loaded, so the file is read by :class:`RestrictedUnpickler`, which
only resolves the globals needed to rebuild numpy arrays (dicts, lists, strings and numbers need
no globals) and refuses everything else with a :class:`DataError`.

``text_only=True`` (the server's loader) still reads and unpickles the whole file, audio and vision
arrays included, since one pickle holds every modality; it keeps only text, ids and labels,
and returns a :class:`ServerView` whose ``feature_dims`` are the audio/vision widths. The unpickled
audio/vision arrays are dropped when the function returns; text keeps its steps and lengths.
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


def _steps(path: Path, split: str, key: str, values: Any, rows: int) -> np.ndarray:
    """The stored (N, steps, features) sequences (or (N, features) vectors) as float32, as they are."""
    where = f"{path}: split '{split}', key '{key}'"
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} is not a numeric array (dtype {arr.dtype})")
    if arr.ndim not in (2, 3) or arr.shape[0] != rows:
        raise DataError(f"{where} has shape {arr.shape}, expected ({rows}, steps, features)")
    arr = np.asarray(arr, dtype=np.float32)
    if key == "audio":  # as MMSA's loader: -inf audio values (log of silent frames) become 0
        arr = np.where(np.isneginf(arr), np.float32(0.0), arr)
    return arr


def _lengths(path: Path, split: str, key: str, block: dict, steps: int, rows: int) -> np.ndarray | None:
    """Valid steps of each row from ``<key>_lengths``, for text also from the attention mask of
    ``text_bert`` (row 1); None (all steps valid) when the file has neither. Lengths beyond the stored
    steps mean the sequence was truncated: they are cut to the stored steps."""
    where = f"{path}: split '{split}', key"
    if f"{key}_lengths" in block:
        name, raw = f"{key}_lengths", block[f"{key}_lengths"]
    elif key == "text" and "text_bert" in block:
        name, bert = "text_bert", np.asarray(block["text_bert"])
        if bert.ndim != 3 or bert.shape[:2] != (rows, 3):
            raise DataError(f"{where} 'text_bert' has shape {bert.shape}, expected ({rows}, 3, steps)")
        raw = np.asarray(bert[:, 1, :], dtype=np.float64).sum(axis=1)  # the attention mask counts the tokens
    else:
        return None
    try:
        lengths = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} '{name}' is not numeric: {exc}") from None
    if lengths.shape != (rows,):
        raise DataError(f"{where} '{name}' has shape {lengths.shape}, expected ({rows},)")
    if not np.all(np.isfinite(lengths)) or np.any(lengths < 0) or np.any(lengths != np.round(lengths)):
        raise DataError(f"{where} '{name}' must hold non-negative integers")
    return np.minimum(lengths.astype(np.int64), steps)


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

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("ids", "speakers", "text", "audio", "visual", "labels",
                                                          "split", "text_lengths", "audio_lengths", "visual_lengths")}
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
        feats, lengths = {}, {}
        for key, field in _MODALITIES:
            if text_only and field != "text":  # the server's view: the width, and an (N, 0) array
                widths[field].add(_feature_width(path, split, key, block[key], n))
                feats[field] = np.zeros((n, 0), dtype=np.float32)
                continue
            feats[field] = _steps(path, split, key, block[key], n)
            if feats[field].ndim == 3:
                lengths[field] = _lengths(path, split, key, block, feats[field].shape[1], n)
        text_steps = feats["text"].shape[1] if feats["text"].ndim == 3 else None
        for key, field in _MODALITIES[1:]:  # aligned: audio/vision on the text's steps, with its lengths
            if field in lengths and lengths[field] is None and feats[field].shape[1] == text_steps:
                lengths[field] = lengths["text"]
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
            parts[f"{field}_lengths"].append(lengths.get(field))
        parts["labels"].append(labels)
        parts["split"].append(np.full(n, split))

    for field in ("text", "audio", "visual"):
        sizes = widths[field] if text_only and field != "text" else {a.shape[-1] for a in parts[field]}
        if len(sizes) != 1:
            raise DataError(f"{path}: field '{field}' has different feature sizes across splits: {sorted(sizes)}")
        shapes = {a.shape[1:-1] for a in parts[field]}
        if len(shapes) != 1:
            raise DataError(f"{path}: field '{field}' has different step counts across splits: "
                            f"{sorted(s[0] if s else 0 for s in shapes)}")
    sequence_lengths = {}
    for field in ("text", "audio", "visual"):
        if parts[field][0].ndim == 3:
            sequence_lengths[field] = np.concatenate([
                np.full(len(a), a.shape[1], dtype=np.int64) if given is None else given
                for a, given in zip(parts[field], parts[f"{field}_lengths"], strict=True)])

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
        lengths=sequence_lengths,
    )
    if text_only:
        dims = {"text": dataset.dims["text"], **{field: next(iter(widths[field])) for field in ("audio", "visual")}}
        return ServerView.of(dataset, feature_dims=dims)
    return dataset
