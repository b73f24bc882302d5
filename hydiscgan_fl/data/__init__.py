"""Data layer: utterance-level multimodal datasets, loaders, partitioners and per-client files.

Dataset specs for :func:`load_dataset`:

- ``"mosi-bclstm"``: CMU-MOSI bc-LSTM features read from ``data_dir / "mosi-bclstm"``;
- ``"synthetic"``: :func:`make_synthetic` with the given seed (80 speakers; ``"synthetic:<n>"``: n speakers);
- ``"synthetic-seq"``: :func:`make_synthetic_sequences` with the given seed (unaligned sequences with valid
  lengths, a mood drifting through each video, a planted text-step x audio-step interaction; 60 speakers,
  ``"synthetic-seq:<n>"``: n speakers);
- ``"synthetic-fusion"``: :func:`make_synthetic_fusion` with the given seed (the same sequences, but the planted
  interaction is two key-value lookups across modalities that pooled vectors cannot make; 60 speakers,
  ``"synthetic-fusion:<n>"``: n speakers);
- ``"synthetic-shared"``: :func:`make_synthetic_shared` with the given seed (``synthetic-seq`` plus a factor
  that every modality expresses and the label weighs most, for missing-modality recovery; 60 speakers,
  ``"synthetic-shared:<n>"``: n speakers);
- ``"mmsa:<absolute path to .pkl>"``: an MMSA feature pickle (read with a restricted unpickler);
- ``"partitions:<absolute dir>"``: the server's view ``<dir>/server.npz`` written by
  :func:`write_partitions` (text and labels only), a :class:`ServerView` whose ``feature_dims``
  gives the clients' real audio/visual widths.

``text_only=True`` loads the server's view (a :class:`ServerView`: text, labels, ids, speakers and split;
audio/visual of width 0, their real widths in ``feature_dims``). What each spec reads for it:

- "mosi-bclstm": transcripts.csv and text_*.csv only; no audio/video file is opened;
- "synthetic", "synthetic-seq", "synthetic-fusion", "synthetic-shared": the data is generated in full (the
  generator draws all modalities from one random stream), then audio/visual are dropped before the view is
  returned and cached. It is nobody's data;
- "mmsa:<path>": the pickle holds every modality, so its bytes are read and unpickled in full (restricted
  unpickler); audio/vision are never averaged and are dropped before the function returns;
- "partitions:<dir>": server.npz, which holds text and labels only (``text_only`` changes nothing).

``valid_fraction`` > 0 carves validation speakers out of the speakers of split ``valid_from``
(:func:`with_validation_speakers`, seeded by ``seed``): "auto" is "test" for "mosi-bclstm", whose training
features were fitted to the training labels by bc-LSTM's extractors (VALID_FROM_TEST), and "train" for the
others; data with its own "valid" split (MMSA, and a server.npz written by :func:`write_partitions`) keeps it.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .dataset import DataError, MultimodalDataset, ServerView, standardize_per_speaker, with_validation_speakers
from .mmsa import load_mmsa_pickle
from .mosi_bclstm import load_mosi_bclstm
from .partition import partition_indices
from .partition_files import SERVER_FILE, load_partition, load_server_view, save_partition, write_partitions
from .synthetic import make_synthetic
from .synthetic_sequences import (SequenceLatents, make_synthetic_fusion, make_synthetic_sequences,
                                  make_synthetic_shared, synthetic_sequences_with_latents)

__all__ = [
    "DataError",
    "MultimodalDataset",
    "standardize_per_speaker",
    "with_validation_speakers",
    "load_mosi_bclstm",
    "make_synthetic",
    "make_synthetic_sequences",
    "make_synthetic_fusion",
    "make_synthetic_shared",
    "synthetic_sequences_with_latents",
    "SequenceLatents",
    "load_mmsa_pickle",
    "partition_indices",
    "save_partition",
    "load_partition",
    "write_partitions",
    "ServerView",
    "load_server_view",
    "load_dataset",
    "DATASET_SPECS",
    "GENERATED_DATASETS",
    "VALID_FROM_TEST",
]

# Specs whose training features were fitted to the training labels by the feature extractor: a validation
# split carved from their training speakers is saturated (measured on mosi-bclstm: valid Acc-2 0.99 in every
# round, test 0.76), so valid-from "auto" draws their validation speakers from the test speakers instead.
VALID_FROM_TEST = frozenset({"mosi-bclstm"})

# Generated dataset families, the one list of them: "<family>" or "<family>:<number of speakers>".
_GENERATORS = {"synthetic": make_synthetic, "synthetic-seq": make_synthetic_sequences,
               "synthetic-fusion": make_synthetic_fusion, "synthetic-shared": make_synthetic_shared}
GENERATED_DATASETS = tuple(_GENERATORS)

DATASET_SPECS = ("mosi-bclstm", *(form for family in GENERATED_DATASETS
                                  for form in (family, f"{family}:<number of speakers>")),
                 "mmsa:<absolute path to .pkl>", "partitions:<absolute dir>")


@functools.lru_cache(maxsize=8)
def _load_cached(spec: str, data_dir: Path | None, seed: int, valid_fraction: float, valid_from: str,
                 text_only: bool) -> MultimodalDataset:
    dataset = _read(spec, data_dir, seed, text_only)
    if spec.startswith("partitions:") and valid_fraction > 0 and not (dataset.split == "valid").any():
        # Its training speakers are already on the clients: a validation split cannot be carved here.
        raise DataError(f"{Path(spec[len('partitions:'):]) / SERVER_FILE}: no validation split (split 'valid'); "
                        "write it again with `hydiscgan partition`")
    if valid_from == "auto":
        valid_from = "test" if spec in VALID_FROM_TEST else "train"
    return with_validation_speakers(dataset, valid_fraction, seed, valid_from)


def _speaker_count(spec: str, family: str) -> dict[str, int]:
    """The generator's arguments for `spec`: none for `family` ("synthetic", "synthetic-seq", ...: the generator's
    default count), ``num_speakers=n`` for "<family>:<n>" (e.g. "synthetic:1500" for 1,000+ training speakers)."""
    if spec == family:
        return {}
    count = spec[len(family) + 1:]
    if not count.isdigit() or int(count) < 2:
        raise DataError(f"dataset spec {spec!r}: use '{family}:<number of speakers, at least 2>'")
    return {"num_speakers": int(count)}


def _read(spec: str, data_dir: Path | None, seed: int, text_only: bool) -> MultimodalDataset:
    if spec == "mosi-bclstm":
        if data_dir is None:
            raise DataError("dataset 'mosi-bclstm' needs the data directory that holds mosi-bclstm/")
        return load_mosi_bclstm(data_dir / "mosi-bclstm", text_only=text_only)
    family = spec.split(":", 1)[0]
    if family in _GENERATORS:
        full = _GENERATORS[family](seed=seed, **_speaker_count(spec, family))
        return ServerView.of(full) if text_only else full
    if spec.startswith("mmsa:"):
        pkl = Path(spec[len("mmsa:") :])
        if not spec[len("mmsa:") :] or not pkl.is_absolute():
            raise DataError(f"dataset spec {spec!r}: the MMSA pickle path must be absolute, e.g. 'mmsa:/data/mosi/unaligned_50.pkl'")
        return load_mmsa_pickle(pkl, text_only=text_only)
    if spec.startswith("partitions:"):
        folder = spec[len("partitions:") :]
        if not folder or not Path(folder).is_absolute():
            raise DataError(f"dataset spec {spec!r}: the partitions folder must be absolute, e.g. 'partitions:/data'")
        return load_server_view(Path(folder) / SERVER_FILE)
    raise DataError(f"unknown dataset spec {spec!r}; valid forms: " + ", ".join(repr(s) for s in DATASET_SPECS))


def load_dataset(spec: str, data_dir: Path | str | None, seed: int = 0, *, valid_fraction: float = 0.0,
                 valid_from: str = "auto", text_only: bool = False, cached: bool = True) -> MultimodalDataset:
    """Load a dataset by spec (see the module docstring); repeated loads return the cached object.

    ``data_dir`` is only used (and required) by "mosi-bclstm". ``seed`` seeds "synthetic" and the draw of
    validation speakers. Errors (:class:`DataError`) are not cached. ``cached=False`` loads afresh and keeps
    nothing (a simulated client takes its partition and lets the rest go).
    """
    if not isinstance(spec, str):
        raise DataError(f"dataset spec must be a string, got {type(spec).__name__}")
    directory = None if data_dir is None or str(data_dir) == "" else Path(data_dir).expanduser().resolve()
    load = _load_cached if cached else _load_cached.__wrapped__
    return load(spec.strip(), directory, int(seed), float(valid_fraction), str(valid_from), bool(text_only))


load_dataset.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]
