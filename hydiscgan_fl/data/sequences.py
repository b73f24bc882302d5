"""Sequence-level features: a sequence of steps per utterance (N, T, D) with valid lengths (N,).

A modality of a :class:`~hydiscgan_fl.data.MultimodalDataset` is either one vector per utterance (N, D) or
a sequence per utterance (N, T, D) whose first ``lengths[i]`` steps are valid (words of the text, frames
of the audio/video); the rest is padding. Different modalities may have different T (unaligned data).
Padding is stored as zeros; non-finite values there are allowed on input (and zeroed), inside valid steps
they are an error naming the field and the row.
"""

from __future__ import annotations

import numpy as np

from .dataset import DataError

__all__ = ["valid_steps", "checked_lengths", "masked_mean"]


def valid_steps(lengths: np.ndarray, steps: int) -> np.ndarray:
    """(N, T) bool: True on the first lengths[i] steps of row i."""
    return np.arange(steps)[None, :] < np.asarray(lengths).reshape(-1, 1)


def checked_lengths(value: object, rows: int, steps: int, name: str, where: str) -> np.ndarray:
    """Read-only int64 lengths in [0, steps], one per row (all steps valid when ``value`` is None)."""
    if value is None:
        lengths = np.full(rows, steps, dtype=np.int64)
    else:
        raw = np.asarray(value)
        if raw.shape != (rows,):
            raise DataError(f"{where}field '{name}_lengths' must have shape ({rows},), got {raw.shape}")
        if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not (
                np.isfinite(raw).all() and (raw == np.round(raw)).all())):
            raise DataError(f"{where}field '{name}_lengths' must hold integers, got dtype {raw.dtype}")
        lengths = raw.astype(np.int64)
        bad = (lengths < 0) | (lengths > steps)
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(f"{where}field '{name}_lengths' must be in [0, {steps}] (the stored steps); row "
                            f"{first} has {int(lengths[first])}")
    lengths = np.array(lengths, copy=True)
    lengths.setflags(write=False)
    return lengths


def masked_mean(features: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """Utterance vectors (N, D) from sequences (N, T, D): the mean over each row's valid steps (a zero vector
    for a row of length 0). Vectors (N, D) are returned as they are (``lengths`` must then be None)."""
    x = np.asarray(features)
    if x.ndim == 2:
        if lengths is not None:
            raise DataError(f"vectors of shape {x.shape} have no steps, but lengths were given")
        return x
    x = np.asarray(x, dtype=np.float32)  # no float64 copy: an MMSA text array alone is hundreds of MB
    mask = valid_steps(lengths, x.shape[1])
    total = np.einsum("ntd,nt->nd", x, mask.astype(np.float32))
    return (total / np.maximum(mask.sum(axis=1), 1)[:, None]).astype(np.float32)
