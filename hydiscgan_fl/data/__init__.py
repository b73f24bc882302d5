"""Data layer: utterance-level multimodal datasets, loaders, partitioners and per-client files.

Dataset specs for :func:`load_dataset`:

- ``"mosi-bclstm"``: CMU-MOSI bc-LSTM features read from ``data_dir / "mosi-bclstm"``;
- ``"synthetic"``: :func:`make_synthetic` with the given seed;
- ``"mmsa:<absolute path to .pkl>"``: an MMSA feature pickle (read with a restricted unpickler);
- ``"partitions:<absolute dir>"``: the server's view ``<dir>/server.npz`` written by
  :func:`write_partitions` (text and labels only), a :class:`ServerView` whose ``feature_dims``
  gives the clients' real audio/visual widths.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .dataset import DataError, MultimodalDataset, standardize_per_speaker
from .mmsa import load_mmsa_pickle
from .mosi_bclstm import load_mosi_bclstm
from .partition import partition_indices
from .partition_files import SERVER_FILE, ServerView, load_partition, load_server_view, save_partition, write_partitions
from .synthetic import make_synthetic

__all__ = [
    "DataError",
    "MultimodalDataset",
    "standardize_per_speaker",
    "load_mosi_bclstm",
    "make_synthetic",
    "load_mmsa_pickle",
    "partition_indices",
    "save_partition",
    "load_partition",
    "write_partitions",
    "ServerView",
    "load_server_view",
    "load_dataset",
    "DATASET_SPECS",
]

DATASET_SPECS = ("mosi-bclstm", "synthetic", "mmsa:<absolute path to .pkl>", "partitions:<absolute dir>")


@functools.lru_cache(maxsize=8)
def _load_cached(spec: str, data_dir: Path | None, seed: int) -> MultimodalDataset:
    if spec == "mosi-bclstm":
        if data_dir is None:
            raise DataError("dataset 'mosi-bclstm' needs the data directory that holds mosi-bclstm/")
        return load_mosi_bclstm(data_dir / "mosi-bclstm")
    if spec == "synthetic":
        return make_synthetic(seed=seed)
    if spec.startswith("mmsa:"):
        pkl = Path(spec[len("mmsa:") :])
        if not spec[len("mmsa:") :] or not pkl.is_absolute():
            raise DataError(f"dataset spec {spec!r}: the MMSA pickle path must be absolute, e.g. 'mmsa:/data/mosi/unaligned_50.pkl'")
        return load_mmsa_pickle(pkl)
    if spec.startswith("partitions:"):
        folder = spec[len("partitions:") :]
        if not folder or not Path(folder).is_absolute():
            raise DataError(f"dataset spec {spec!r}: the partitions folder must be absolute, e.g. 'partitions:/data'")
        return load_server_view(Path(folder) / SERVER_FILE)
    raise DataError(f"unknown dataset spec {spec!r}; valid forms: " + ", ".join(repr(s) for s in DATASET_SPECS))


def load_dataset(spec: str, data_dir: Path | str | None, seed: int = 0) -> MultimodalDataset:
    """Load a dataset by spec (see the module docstring); repeated loads return the cached object.

    ``data_dir`` is only used (and required) by "mosi-bclstm".
    ``seed`` is only used by "synthetic". Errors (:class:`DataError`) are not cached.
    """
    if not isinstance(spec, str):
        raise DataError(f"dataset spec must be a string, got {type(spec).__name__}")
    directory = None if data_dir is None or str(data_dir) == "" else Path(data_dir).expanduser().resolve()
    return _load_cached(spec.strip(), directory, int(seed))


load_dataset.cache_clear = _load_cached.cache_clear  # type: ignore[attr-defined]
