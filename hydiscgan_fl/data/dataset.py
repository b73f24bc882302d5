"""Multimodal dataset container and per-speaker normalisation.

A :class:`MultimodalDataset` holds, per utterance and modality (text, audio, visual), one feature vector
or a sequence of steps with its valid length (:mod:`hydiscgan_fl.data.sequences`), and a label, the
utterance id, the speaker (video) id and the split of every row. It is immutable: the dataclass is
frozen, and every array is a private float32/str copy marked read-only, so that datasets cached by
:func:`hydiscgan_fl.data.load_dataset` cannot be changed by a caller.
Copy an array (``np.array(ds.text)`` or ``torch.tensor(ds.text)``) before modifying it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DataError", "MultimodalDataset", "ServerView", "standardize_per_speaker", "with_validation_speakers",
           "SPLITS", "LABEL_KINDS"]

SPLITS = ("train", "valid", "test")
LABEL_KINDS = ("binary", "regression")
FEATURE_FIELDS = ("text", "audio", "visual")


class DataError(ValueError):
    """Bad input data; the message names the file/field/client."""


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class MultimodalDataset:
    """One row per utterance; see the module docstring.

    ``labels`` are {0, 1} when ``label_kind == "binary"`` and continuous sentiment scores when
    ``label_kind == "regression"``. A feature array is (N, D) vectors or (N, T, D) sequences; ``lengths``
    maps the name of a sequence field to its valid lengths (N,) (left out: all T steps valid), and after
    construction holds an entry for every sequence field and none other. Feature arrays may have zero
    columns (the server's view of a dataset holds audio and visual arrays of shape (N, 0)). ``videos`` and
    ``positions`` say which video each utterance belongs to and where in it (see
    :mod:`hydiscgan_fl.data.videos`); left out, every utterance is its own video. Equality is identity
    (``eq=False``): compare fields with numpy to compare contents.
    """

    name: str
    ids: np.ndarray
    speakers: np.ndarray
    text: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    label_kind: str
    source: str = field(default="")
    videos: np.ndarray | None = None
    positions: np.ndarray | None = None
    lengths: dict | None = None

    def __post_init__(self) -> None:
        src = str(self.source)
        where = _where(src)
        object.__setattr__(self, "source", src)
        object.__setattr__(self, "name", str(self.name))
        if self.label_kind not in LABEL_KINDS:
            raise DataError(f"{where}label_kind must be one of {LABEL_KINDS}, got {self.label_kind!r}")

        def as_str_vector(name: str, value: object) -> np.ndarray:
            arr = np.asarray(value)
            if arr.ndim != 1:
                raise DataError(f"{where}field '{name}' must be 1-D, got shape {arr.shape}")
            if arr.dtype.kind != "U":
                values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
                arr = np.array(values, dtype=str) if values else arr.astype(str)
            return _read_only(np.array(arr, dtype=arr.dtype, copy=True))

        ids = as_str_vector("ids", self.ids)
        speakers = as_str_vector("speakers", self.speakers)
        split = as_str_vector("split", self.split)

        n = len(ids)
        if n == 0:
            raise DataError(f"{where}dataset is empty (0 rows)")

        feats: dict[str, np.ndarray] = {}
        for name in FEATURE_FIELDS:
            raw = np.asarray(getattr(self, name))
            if raw.ndim not in (2, 3):
                raise DataError(f"{where}field '{name}' must be a 2-D (rows, features) or 3-D (rows, steps, "
                                f"features) array, got shape {raw.shape}")
            try:
                with np.errstate(over="ignore", invalid="ignore"):  # overflow -> Inf, reported below
                    feats[name] = np.array(raw, dtype=np.float32, copy=True)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}field '{name}' is not numeric: {exc}") from None
        raw_labels = np.asarray(self.labels)
        if raw_labels.ndim != 1:
            raise DataError(f"{where}field 'labels' must be 1-D, got shape {raw_labels.shape}")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                labels = np.array(raw_labels, dtype=np.float32, copy=True)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}field 'labels' is not numeric: {exc}") from None

        counts = {"ids": n, "speakers": len(speakers), "split": len(split), "labels": len(labels)}
        counts.update({name: arr.shape[0] for name, arr in feats.items()})
        if len(set(counts.values())) != 1:
            detail = ", ".join(f"{k}={v}" for k, v in counts.items())
            raise DataError(f"{where}row counts differ across fields ({detail})")

        from .sequences import checked_lengths, valid_steps  # here: sequences.py imports DataError from here

        given_lengths = dict(self.lengths or {})
        unknown_lengths = sorted(set(given_lengths) - {name for name, arr in feats.items() if arr.ndim == 3})
        if unknown_lengths:
            raise DataError(f"{where}lengths given for {unknown_lengths}, which are not sequence fields (N, T, D)")
        lengths: dict[str, np.ndarray] = {}
        for name, arr in feats.items():
            if arr.ndim != 3:
                continue
            lengths[name] = checked_lengths(given_lengths.get(name), n, arr.shape[1], name, where)
            valid = valid_steps(lengths[name], arr.shape[1])
            bad = valid[:, :, None] & ~np.isfinite(arr)
            if bad.any():
                rows = bad.any(axis=(1, 2))
                first = int(np.argmax(rows))
                step = int(np.argmax(bad[first].any(axis=1)))
                raise DataError(f"{where}field '{name}' has {int(bad.sum())} NaN/Inf values inside valid steps in "
                                f"{int(rows.sum())} rows (first bad row id {str(ids[first])!r}, step {step} of "
                                f"{int(lengths[name][first])} valid)")
            arr[~valid] = 0.0  # padding: zeros, whatever was stored there (NaN in padding is allowed)

        for name, arr in [*feats.items(), ("labels", labels)]:
            finite = np.isfinite(arr)
            if not finite.all():
                bad_rows = ~finite.reshape(n, -1).all(axis=1)
                first = str(ids[int(np.argmax(bad_rows))])
                raise DataError(
                    f"{where}field '{name}' has {int((~finite).sum())} NaN/Inf values "
                    f"in {int(bad_rows.sum())} rows (first bad row id {first!r})"
                )

        uniq, counts_per_id = np.unique(ids, return_counts=True)
        if len(uniq) != n:
            dups = uniq[counts_per_id > 1]
            raise DataError(f"{where}field 'ids' has {len(dups)} duplicated ids (e.g. {str(dups[0])!r})")

        unknown = sorted(set(split.tolist()) - set(SPLITS))
        if unknown:
            raise DataError(f"{where}field 'split' has unknown split names {unknown}; allowed {list(SPLITS)}")

        if self.label_kind == "binary":
            bad = (labels != 0) & (labels != 1)
            if bad.any():
                first = int(np.argmax(bad))
                raise DataError(
                    f"{where}field 'labels' has {int(bad.sum())} values outside {{0, 1}} for binary labels "
                    f"(first bad row id {str(ids[first])!r}, value {float(labels[first])})"
                )

        from .videos import video_structure  # here: videos.py imports DataError from this module

        videos, positions = video_structure(self.videos, self.positions, ids, speakers, split, where)
        object.__setattr__(self, "videos", videos)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "speakers", speakers)
        object.__setattr__(self, "split", split)
        object.__setattr__(self, "labels", _read_only(labels))
        object.__setattr__(self, "lengths", lengths)
        for name, arr in feats.items():
            object.__setattr__(self, name, _read_only(arr))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def dims(self) -> dict[str, int]:
        """The feature width of every modality (the last axis: per vector, or per step of a sequence)."""
        return {name: int(getattr(self, name).shape[-1]) for name in FEATURE_FIELDS}

    @property
    def steps(self) -> dict[str, int]:
        """The stored steps T of every sequence field (vector fields are not in it)."""
        return {name: int(getattr(self, name).shape[1]) for name in self.lengths}

    def subset(self, index: np.ndarray) -> "MultimodalDataset":
        """Rows selected by an integer index array or a boolean mask of length N."""
        idx = np.asarray(index)
        n = len(self)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise DataError(f"{_where(self.source)}boolean mask has shape {idx.shape}, expected ({n},)")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu":
            raise DataError(f"{_where(self.source)}subset index must be integers or a boolean mask, got dtype {idx.dtype}")
        idx = idx.reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise DataError(f"{_where(self.source)}subset index out of range for {n} rows")
        return MultimodalDataset(
            name=self.name,
            ids=self.ids[idx],
            speakers=self.speakers[idx],
            text=self.text[idx],
            audio=self.audio[idx],
            visual=self.visual[idx],
            labels=self.labels[idx],
            split=self.split[idx],
            label_kind=self.label_kind,
            source=self.source,
            videos=self.videos[idx],
            positions=self.positions[idx],
            lengths={name: value[idx] for name, value in self.lengths.items()},
        )

    def split_subset(self, split: str) -> "MultimodalDataset":
        """Rows of one split ("train", "valid" or "test"); DataError if it has no rows."""
        if split not in SPLITS:
            raise DataError(f"{_where(self.source)}unknown split {split!r}; allowed {list(SPLITS)}")
        mask = self.split == split
        if not mask.any():
            raise DataError(f"{_where(self.source)}split {split!r} is empty in dataset {self.name!r}")
        return self.subset(mask)


@dataclass(frozen=True, eq=False)
class ServerView(MultimodalDataset):
    """The server's shareable view (audio/visual of width 0) plus the clients' real feature widths.

    ``feature_dims`` is ``{"text": .., "audio": .., "visual": ..}``; use it instead of ``dims``
    (which says 0 for audio and visual) when building models. Row subsets are plain datasets.
    """

    feature_dims: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        dims = {"text": int(self.text.shape[-1]), **{k: int(v) for k, v in dict(self.feature_dims).items()}}
        if set(dims) != {"text", "audio", "visual"} or any(v < 0 for v in dims.values()):
            raise DataError(f"{self.source or 'server view'}: feature_dims must give audio and visual widths >= 0, "
                            f"got {self.feature_dims!r}")
        if dims["text"] != self.text.shape[-1]:
            raise DataError(f"feature_dims text={dims['text']} differs from the text width {self.text.shape[-1]}")
        if self.audio.ndim != 2 or self.visual.ndim != 2 or self.audio.shape[1] or self.visual.shape[1]:
            raise DataError(f"{self.source or 'server view'}: a server view holds no audio/visual columns, got "
                            f"{self.audio.shape[1]} and {self.visual.shape[1]}")
        object.__setattr__(self, "feature_dims", dims)

    @classmethod
    def of(cls, dataset: MultimodalDataset, feature_dims: dict | None = None) -> "ServerView":
        """Text (vectors, or sequences with their lengths), labels and metadata of ``dataset``; audio/visual
        replaced by (N, 0) arrays.

        ``feature_dims`` defaults to ``dataset.dims`` (the widths of the arrays being dropped)."""
        n = len(dataset)
        empty = np.zeros((n, 0), dtype=np.float32)
        return cls(name=dataset.name, ids=dataset.ids, speakers=dataset.speakers, text=dataset.text, audio=empty,
                   visual=empty, labels=dataset.labels, split=dataset.split, label_kind=dataset.label_kind,
                   source=dataset.source, videos=dataset.videos, positions=dataset.positions,
                   lengths={name: value for name, value in dataset.lengths.items() if name == "text"},
                   feature_dims=dict(feature_dims or dataset.dims))


# Seeds the draw of validation speakers apart from the partitioners, which use the bare run seed.
_VALIDATION_STREAM = 0x7A11D


def with_validation_speakers(dataset: MultimodalDataset, fraction: float, seed: int,
                             source: str = "train") -> MultimodalDataset:
    """``dataset`` with ``max(1, round(fraction * S))`` speakers of split ``source`` moved to split "valid",
    S being the number of TRAINING speakers (the validation set's size does not depend on the source).

    ``source`` is "train" (the usual protocol) or "test": for data whose training features were fitted to the
    training labels by the feature extractor (bundled mosi-bclstm: a validation carved from its training
    speakers scores Acc-2 0.99 at every round, against 0.76 on test), only held-out speakers can tell rounds
    apart. A dataset that already has a "valid" split (MMSA's own) is returned unchanged, as is any dataset
    when ``fraction`` is 0. The speakers of ``source`` (sorted by name) are permuted by a generator seeded
    with ``(seed, _VALIDATION_STREAM)``; all utterances of a chosen speaker change split, so validation is
    speaker independent like the test split.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"valid-fraction must be in [0, 1), got {fraction}")
    if source not in ("train", "test"):
        raise DataError(f"validation speakers come from split 'train' or 'test', got {source!r}")
    if fraction == 0.0 or (dataset.split == "valid").any():
        return dataset
    pool = dataset.split == source
    speakers = np.unique(dataset.speakers[pool])
    count = max(1, round(fraction * len(np.unique(dataset.speakers[dataset.split == "train"]))))
    if count >= len(speakers):
        raise DataError(f"{_where(dataset.source)}valid-fraction {fraction} would leave no {source} speaker "
                        f"({count} validation speakers drawn from {len(speakers)} {source} speakers)")
    chosen = np.random.default_rng((seed, _VALIDATION_STREAM)).permutation(speakers)[:count]
    split = np.where(pool & np.isin(dataset.speakers, chosen), "valid", dataset.split)
    return dataclasses.replace(dataset, split=split)


def standardize_per_speaker(features: np.ndarray, speakers: np.ndarray, min_std: float = 1e-2,
                            lengths: np.ndarray | None = None) -> np.ndarray:
    """Z-score every feature within each speaker's own utterances (per-speaker CMVN).

    For each speaker s and feature j: ``(x - mean_s[j]) / max(std_s[j], min_std)`` with the
    population standard deviation (ddof=0). Each device can compute this from its own data alone.
    Sequences (N, T, D) with ``lengths`` (N,) are standardised per step, with the statistics of the
    speaker's valid steps (all its frames); padding stays zero. Returns a new float32 array of the same shape.
    """
    x = np.asarray(features, dtype=np.float64)
    spk = np.asarray(speakers)
    if x.ndim == 3:
        from .sequences import valid_steps

        if lengths is None or np.shape(lengths) != (x.shape[0],):
            raise DataError(f"sequences of shape {x.shape} need lengths of shape ({x.shape[0]},)")
        valid = valid_steps(lengths, x.shape[1])
        steps_speakers = np.broadcast_to(spk.reshape(-1, 1), valid.shape)[valid]
        out = np.zeros(x.shape, dtype=np.float32)
        out[valid] = standardize_per_speaker(x[valid], steps_speakers, min_std)
        return out
    if x.ndim != 2:
        raise DataError(f"features must be a 2-D (rows, features) array, got shape {x.shape}")
    if spk.shape != (x.shape[0],):
        raise DataError(f"speakers has shape {spk.shape}, expected ({x.shape[0]},) to match features")
    if not np.isfinite(min_std) or min_std <= 0:
        raise DataError(f"min_std must be a positive number, got {min_std}")
    out = np.empty_like(x)
    if x.shape[0] == 0:
        return out.astype(np.float32)
    _, inverse = np.unique(spk, return_inverse=True)
    inverse = inverse.reshape(-1)
    for group in range(int(inverse.max()) + 1):
        rows = inverse == group
        block = x[rows]
        mean = block.mean(axis=0)
        std = np.maximum(block.std(axis=0), min_std)
        out[rows] = (block - mean) / std
    return out.astype(np.float32)
