"""Video structure of a dataset: which video each utterance belongs to, and its position in it.

Utterances of one video form an ordered sequence; context models (e.g. the ``context-gru`` MSA model)
read a whole video at once. A dataset without such structure gets one-utterance videos (each utterance
is its own video, position 0), so every model sees the same data as before.
"""

from __future__ import annotations

import numpy as np

from .dataset import DataError

__all__ = ["video_structure", "clip_positions"]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def video_structure(videos: object, positions: object, ids: np.ndarray, speakers: np.ndarray, split: np.ndarray,
                    where: str) -> tuple[np.ndarray, np.ndarray]:
    """Checked read-only copies of ``videos`` (str) and ``positions`` (int64), one per row.

    Both None: one-utterance videos (``videos = ids``, ``positions = 0``). Otherwise: both 1-D with one
    entry per row, positions non-negative integers, no two utterances of a video at the same position, and
    every video within one speaker and one split (context never crosses a speaker or the train/test border).
    """
    n = len(ids)
    if videos is None and positions is None:
        return _read_only(ids.copy()), _read_only(np.zeros(n, dtype=np.int64))
    if videos is None or positions is None:
        given = "videos" if positions is None else "positions"
        raise DataError(f"{where}fields 'videos' and 'positions' go together; only '{given}' was given")
    raw_videos, raw_positions = np.asarray(videos), np.asarray(positions)
    for name, arr in (("videos", raw_videos), ("positions", raw_positions)):
        if arr.shape != (n,):
            raise DataError(f"{where}field '{name}' must have shape ({n},) (one entry per row), got {arr.shape}")
    if raw_videos.dtype.kind != "U":
        raw_videos = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw_videos.tolist()],
                              dtype=str)
    if raw_positions.dtype.kind not in "iuf" or (raw_positions.dtype.kind == "f" and not (
            np.isfinite(raw_positions).all() and (raw_positions == np.round(raw_positions)).all())):
        raise DataError(f"{where}field 'positions' must hold integers, got dtype {raw_positions.dtype}")
    position_values = raw_positions.astype(np.int64)
    if (position_values < 0).any():
        first = int(np.argmax(position_values < 0))
        raise DataError(f"{where}field 'positions' must be >= 0 "
                        f"(row id {str(ids[first])!r} has {position_values[first]})")
    names, video_index = np.unique(raw_videos, return_inverse=True)
    video_index = video_index.reshape(-1)
    for field_name, values in (("speakers", speakers), ("split", split)):
        _, value_index = np.unique(values, return_inverse=True)
        pairs = np.unique(np.stack([video_index, value_index.reshape(-1)], axis=1), axis=0)
        if len(pairs) != len(names):
            bad = names[int(np.argmax(np.bincount(pairs[:, 0]) > 1))]
            raise DataError(f"{where}video {str(bad)!r} has rows with different '{field_name}' values; a video "
                            "belongs to one speaker and one split")
    slots, counts = np.unique(np.stack([video_index, position_values], axis=1), axis=0, return_counts=True)
    if (counts > 1).any():
        video, position = slots[int(np.argmax(counts > 1))]
        raise DataError(f"{where}video {str(names[video])!r} has {int(counts.max())} utterances at position "
                        f"{int(position)}; positions within a video must be distinct")
    return _read_only(np.array(raw_videos, copy=True)), _read_only(position_values.copy())


def clip_positions(clips: list[str], videos: np.ndarray) -> np.ndarray:
    """Positions from the clip part of utterance ids: the clip numbers when every clip is an integer,
    else the order of the rows within each video (file order)."""
    try:
        return np.array([int(clip) for clip in clips], dtype=np.int64)
    except ValueError:
        positions = np.zeros(len(clips), dtype=np.int64)
        seen: dict[str, int] = {}
        for row, video in enumerate(np.asarray(videos).tolist()):
            positions[row] = seen.get(video, 0)
            seen[video] = positions[row] + 1
        return positions
