"""Loader for the CMU-MOSI utterance features of the bc-LSTM release (see data/mosi-bclstm/SOURCE.md).

Files (CSV, no header, every cell quoted):

- ``transcripts.csv``: utterance id ``<video>_<clip>``, transcript, video number, binary label.
- ``text_<split>.csv``: row index into transcripts.csv, then 100 text features.
- ``audio_<split>0.csv``: 73 audio features, then the binary label.
- ``video_<split>0.csv``: 100 visual features, then the binary label.

Rows of the text, audio and video files of one split line up one to one. The loader checks the
column count of every row, that every cell is numeric, that the three files of a split have the
same number of rows, that the text index column points at distinct rows of transcripts.csv, and
that the label column of the audio and video files equals the transcript label on every row.

``text_only=True`` is the server's loader: it reads transcripts.csv and the text files only, never opens
an audio or video file, and returns a :class:`ServerView` whose ``feature_dims`` are the format's widths
(the clients check their own audio/video files).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .dataset import DataError, MultimodalDataset, ServerView
from .videos import clip_positions

__all__ = ["load_mosi_bclstm", "TEXT_DIM", "AUDIO_DIM", "VISUAL_DIM"]

TEXT_DIM = 100
AUDIO_DIM = 73
VISUAL_DIM = 100
_SPLIT_FILES = {"train": "train", "test": "test"}


def _read_rows(path: Path, num_columns: int) -> list[list[str]]:
    """All rows of a header-less CSV, each checked to have exactly ``num_columns`` cells."""
    if not path.is_file():
        raise DataError(f"missing data file: {path}")
    try:
        with path.open("r", newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, strict=True))
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot parse CSV: {exc}") from None
    if not rows:
        raise DataError(f"{path}: file is empty")
    for line, row in enumerate(rows, start=1):
        if len(row) != num_columns:
            raise DataError(
                f"{path}: row {line} has {len(row)} columns, expected {num_columns} (truncated or corrupt file?)"
            )
    return rows


def _numeric(path: Path, rows: list[list[str]], columns: slice | None = None) -> np.ndarray:
    cells = rows if columns is None else [row[columns] for row in rows]
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        for line, row in enumerate(cells, start=1):
            for col, cell in enumerate(row):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(f"{path}: row {line}, column {col + 1} is not a number: {cell!r}") from None
        raise DataError(f"{path}: non-numeric cells") from None


def _as_int(path: Path, values: np.ndarray, what: str) -> np.ndarray:
    as_int = np.rint(values).astype(np.int64)
    bad = as_int != values
    if bad.any():
        line = int(np.argmax(bad)) + 1
        raise DataError(f"{path}: row {line}: {what} must be an integer, got {values[line - 1]}")
    return as_int


def load_mosi_bclstm(directory: Path, text_only: bool = False) -> MultimodalDataset:
    """Load all 2,199 MOSI utterances (train then test, file order) as a binary-label dataset.

    ids come from transcripts.csv through the text index column; speakers are the video part of the
    id (everything before the last "_"); split is "train"/"test" from the file name. With ``text_only``
    the audio/video files are not opened and a :class:`ServerView` (no audio/visual columns) is returned.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"missing data directory: {directory}")

    transcripts_path = directory / "transcripts.csv"
    transcripts = _read_rows(transcripts_path, 4)
    all_ids = np.array([row[0] for row in transcripts], dtype=str)
    video_numbers = _as_int(transcripts_path, _numeric(transcripts_path, transcripts, slice(2, 3))[:, 0], "video number")
    all_labels = _as_int(transcripts_path, _numeric(transcripts_path, transcripts, slice(3, 4))[:, 0], "label")
    bad = (all_labels != 0) & (all_labels != 1)
    if bad.any():
        line = int(np.argmax(bad)) + 1
        raise DataError(f"{transcripts_path}: row {line}: label must be 0 or 1, got {all_labels[line - 1]}")
    for line, utt in enumerate(all_ids, start=1):
        if "_" not in utt or not utt.rsplit("_", 1)[0]:
            raise DataError(f"{transcripts_path}: row {line}: utterance id {str(utt)!r} is not '<video>_<clip>'")

    ids, speakers, text, audio, visual, labels, splits = [], [], [], [], [], [], []
    used_rows: dict[int, Path] = {}
    for split, stem in _SPLIT_FILES.items():
        text_path = directory / f"text_{stem}.csv"
        audio_path = directory / f"audio_{stem}0.csv"
        video_path = directory / f"video_{stem}0.csv"
        text_rows = _read_rows(text_path, 1 + TEXT_DIM)
        text_values = _numeric(text_path, text_rows)
        if text_only:
            audio_values = video_values = None
        else:
            audio_rows = _read_rows(audio_path, AUDIO_DIM + 1)
            video_rows = _read_rows(video_path, VISUAL_DIM + 1)
            sizes = {text_path.name: len(text_rows), audio_path.name: len(audio_rows),
                     video_path.name: len(video_rows)}
            if len(set(sizes.values())) != 1:
                detail = ", ".join(f"{k}: {v}" for k, v in sizes.items())
                raise DataError(f"{directory}: {split} files have different row counts ({detail})")
            audio_values = _numeric(audio_path, audio_rows)
            video_values = _numeric(video_path, video_rows)

        index = _as_int(text_path, text_values[:, 0], "transcript row index (column 1)")
        out_of_range = (index < 0) | (index >= len(all_ids))
        if out_of_range.any():
            line = int(np.argmax(out_of_range)) + 1
            raise DataError(
                f"{text_path}: row {line}: transcript row index {index[line - 1]} is outside 0..{len(all_ids) - 1} "
                f"({transcripts_path} has {len(all_ids)} rows; truncated?)"
            )
        for line, row_index in enumerate(index.tolist(), start=1):
            if row_index in used_rows:
                raise DataError(
                    f"{text_path}: row {line}: transcript row {row_index} is already used by {used_rows[row_index]}"
                )
            used_rows[row_index] = text_path

        split_labels = all_labels[index]
        for path, values in ((audio_path, audio_values), (video_path, video_values)):
            if values is None:
                continue
            mismatch = values[:, -1] != split_labels
            if mismatch.any():
                line = int(np.argmax(mismatch)) + 1
                raise DataError(
                    f"{path}: row {line}: label column is {values[line - 1, -1]:g} but transcripts.csv says "
                    f"{split_labels[line - 1]} for utterance {str(all_ids[index[line - 1]])!r}"
                )

        split_ids = all_ids[index]
        ids.append(split_ids)
        speakers.append(np.array([utt.rsplit("_", 1)[0] for utt in split_ids], dtype=str))
        text.append(text_values[:, 1:])
        if not text_only:
            audio.append(audio_values[:, :-1])
            visual.append(video_values[:, :-1])
        labels.append(split_labels)
        splits.append(np.full(len(split_ids), split))

    if len(used_rows) != len(all_ids):
        raise DataError(
            f"{transcripts_path}: has {len(all_ids)} rows but the text files reference only {len(used_rows)} of them"
        )
    all_speakers = np.concatenate(speakers)
    # Each speaker (video part of the id) must have a single video number, and vice versa.
    used_video_numbers = video_numbers[np.array(sorted(used_rows), dtype=np.int64)]
    used_speakers = [all_ids[row].rsplit("_", 1)[0] for row in sorted(used_rows)]
    pairs = set(zip(used_speakers, used_video_numbers.tolist()))
    if len({spk for spk, _ in pairs}) != len(pairs) or len({num for _, num in pairs}) != len(pairs):
        raise DataError(f"{transcripts_path}: video numbers do not match the video part of the utterance ids one to one")

    utterance_ids = np.concatenate(ids)
    n = len(utterance_ids)
    rows = dict(
        name="mosi-bclstm",
        ids=utterance_ids,
        speakers=all_speakers,
        text=np.concatenate(text),
        labels=np.concatenate(labels),
        split=np.concatenate(splits),
        label_kind="binary",
        source=str(directory),
        videos=all_speakers,  # one speaker per video; its utterances are ordered by the clip number of the id
        positions=clip_positions([utt.rsplit("_", 1)[1] for utt in utterance_ids.tolist()], all_speakers),
    )
    if text_only:
        empty = np.zeros((n, 0), dtype=np.float32)
        return ServerView(**rows, audio=empty, visual=empty,
                          feature_dims={"text": TEXT_DIM, "audio": AUDIO_DIM, "visual": VISUAL_DIM})
    return MultimodalDataset(**rows, audio=np.concatenate(audio), visual=np.concatenate(visual))
