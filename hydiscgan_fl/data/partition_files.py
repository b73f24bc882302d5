"""Per-client data files for multi-machine deployment (``.npz``, read without pickle).

Each file is a compressed ``.npz`` holding the arrays ``ids``, ``speakers``, ``split`` (unicode),
``text``, ``audio``, ``visual``, ``labels`` (float32) and the 0-d unicode scalars ``name``,
``label_kind`` and ``source``, and the video structure ``videos`` (unicode) and ``positions`` (int64).
A modality stored as sequences (``text``/``audio``/``visual`` of shape (N, T, D)) comes with its valid lengths
``<field>_lengths`` (int64, (N,)); a vector modality (N, D) has none.
It is read back with ``np.load(..., allow_pickle=False)``, so a file from an untrusted place cannot run code.

:func:`write_partitions` writes one ``partition-<i>.npz`` per client (that client's TRAIN rows,
all modalities) and ``server.npz``: the server's shareable view of all rows (train, valid and test),
with ids, speakers, text, labels and split, and audio/visual replaced by empty (N, 0) arrays. Validation
speakers are on no client: pass a dataset whose "valid" split is already carved (``cfg.load_dataset()``). ``server.npz`` also
holds the 0-d int64 scalars ``audio_dim`` and ``visual_dim``: the clients' real widths, which the
server needs to build models that fit the clients' data. :func:`load_server_view` reads it back as
a :class:`ServerView` whose ``feature_dims`` carries them.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import DataError, MultimodalDataset, ServerView
from .partition import partition_indices

__all__ = ["save_partition", "load_partition", "load_server_view", "write_partitions", "ServerView",
           "ARRAY_FIELDS", "SCALAR_FIELDS", "SERVER_FILE"]

ARRAY_FIELDS = ("ids", "speakers", "text", "audio", "visual", "labels", "split")
SCALAR_FIELDS = ("name", "label_kind", "source")
_STRING_FIELDS = ("ids", "speakers", "split")
SERVER_FILE = "server.npz"
_DIM_FIELDS = ("audio_dim", "visual_dim")
# The video structure (str, int64); optional on reading: files written without it get one-utterance videos.
VIDEO_FIELDS = ("videos", "positions")
LENGTH_FIELDS = tuple(f"{name}_lengths" for name in ("text", "audio", "visual"))


def save_partition(dataset: MultimodalDataset, path: Path) -> None:
    """Write ``dataset`` to exactly ``path`` (atomically; parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name in ARRAY_FIELDS:
        value = getattr(dataset, name)
        arrays[name] = np.asarray(value, dtype=str) if name in _STRING_FIELDS else np.asarray(value, dtype=np.float32)
    for name in SCALAR_FIELDS:
        arrays[name] = np.array(str(getattr(dataset, name)), dtype=str)
    arrays.update(videos=np.asarray(dataset.videos, dtype=str), positions=np.asarray(dataset.positions, dtype=np.int64))
    arrays.update({f"{name}_lengths": np.asarray(value, dtype=np.int64) for name, value in dataset.lengths.items()})
    if isinstance(dataset, ServerView):
        for name in _DIM_FIELDS:
            arrays[name] = np.array(dataset.feature_dims[name.removesuffix("_dim")], dtype=np.int64)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:  # a file object: numpy does not append ".npz"
            np.savez_compressed(handle, **arrays)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_partition(path: Path) -> MultimodalDataset:
    """Read a file written by :func:`save_partition` (``allow_pickle=False``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing partition file: {path}")
    values: dict[str, np.ndarray] = {}
    field = "<archive>"
    try:
        # Open the file ourselves: np.load(path) leaks its handle when the zip is corrupt.
        with path.open("rb") as handle:
            archive = np.load(handle, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: not an .npz archive (field '{field}')")
            with archive:
                present = set(archive.files)
                for field in (*ARRAY_FIELDS, *SCALAR_FIELDS):
                    if field not in present:
                        raise DataError(f"{path}: missing field '{field}'")
                    values[field] = archive[field]
                for field in VIDEO_FIELDS:
                    values[field] = archive[field] if field in present else None
                lengths = {field.removesuffix("_lengths"): archive[field] for field in LENGTH_FIELDS
                           if field in present}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: corrupt or truncated partition file (field '{field}'): {type(exc).__name__}: {exc}") from None
    for field in SCALAR_FIELDS:
        if values[field].ndim != 0 or values[field].dtype.kind != "U":
            raise DataError(f"{path}: field '{field}' must be a string scalar")
    for field in _STRING_FIELDS:
        if values[field].dtype.kind != "U":
            raise DataError(f"{path}: field '{field}' must be a unicode array, got dtype {values[field].dtype}")
    try:
        return MultimodalDataset(
            name=str(values["name"]),
            ids=values["ids"],
            speakers=values["speakers"],
            text=values["text"],
            audio=values["audio"],
            visual=values["visual"],
            labels=values["labels"],
            split=values["split"],
            label_kind=str(values["label_kind"]),
            source=str(values["source"]),
            videos=values["videos"],
            positions=values["positions"],
            lengths=lengths,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def load_server_view(path: Path) -> ServerView:
    """Read a ``server.npz`` written by :func:`write_partitions` (rows plus the real feature widths)."""
    path = Path(path)
    base = load_partition(path)
    try:
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            missing = [name for name in _DIM_FIELDS if name not in archive.files]
            if missing:
                raise DataError(f"{path}: missing field '{missing[0]}' (a server file written before feature widths "
                                "were stored; write it again with `hydiscgan partition`)")
            raw = {name: archive[name] for name in _DIM_FIELDS}
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: corrupt server file: {type(exc).__name__}: {exc}") from None
    for name, value in raw.items():
        if value.ndim != 0 or value.dtype.kind not in "iu":
            raise DataError(f"{path}: field '{name}' must be an integer scalar")
    return ServerView(
        **{name: getattr(base, name) for name in (*ARRAY_FIELDS, *SCALAR_FIELDS, *VIDEO_FIELDS, "lengths")},
        feature_dims={name.removesuffix("_dim"): int(value) for name, value in raw.items()},
    )


def write_partitions(
    dataset: MultimodalDataset, num_partitions: int, rule: str, seed: int, out_dir: Path, *,
    whole_videos: bool = False,
) -> list[Path]:
    """Partition the TRAIN split and write ``partition-<i>.npz`` per client plus ``server.npz``.

    ``whole_videos`` (for an MSA model that reads context) makes "iid" and "dirichlet" assign whole videos,
    as :func:`partition_indices` does with ``videos``; "speaker" keeps a speaker's videos together anyway.

    Returns ``[partition-0.npz, ..., partition-<k-1>.npz, server.npz]``. Stale
    ``partition-<j>.npz`` files with ``j >= num_partitions`` left in ``out_dir`` by an earlier
    run are removed so that the folder always describes one partitioning.
    """
    out_dir = Path(out_dir)
    train = dataset.split_subset("train")
    parts = partition_indices(train.labels, train.speakers, num_partitions, rule, seed, label_kind=train.label_kind,
                              videos=train.videos if whole_videos else None)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, index in enumerate(parts):
        target = out_dir / f"partition-{i}.npz"
        save_partition(train.subset(index), target)
        paths.append(target)
    for stale in out_dir.glob("partition-*.npz"):
        match = re.fullmatch(r"partition-(\d+)\.npz", stale.name)
        if match and int(match.group(1)) >= len(parts):
            stale.unlink()
    server = ServerView.of(dataset)
    server_path = out_dir / SERVER_FILE
    save_partition(server, server_path)
    paths.append(server_path)
    return paths
