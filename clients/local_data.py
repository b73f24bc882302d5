"""A client's private data, and the checks that it fits the server's model and text."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import DataError, MultimodalDataset, load_partition, partition_indices
from hydiscgan_fl.data.affect import AffectWindows, load_affect_dataset, load_openface_dir, make_windows
from hydiscgan_fl.models import needs_context


def client_dataset(cfg: HyDiscGANConfig, node_config: dict) -> MultimodalDataset:
    """This client's private training utterances, read once per process (not every round).

    Deployment: node-config `data-path` names this node's partition file. Simulation with dataset
    `partitions:<dir>` (written by `hydiscgan partition`): this node reads only `<dir>/partition-<partition-id>.npz`.
    Other simulations: the training split of `dataset` is partitioned with `partition` and this node takes
    `partition-id` (whole videos when the MSA model needs context).
    """
    if "data-path" in node_config or cfg.dataset.startswith("partitions:"):
        path = partition_path(cfg, node_config)
        stat = path.stat() if path.exists() else None  # a replaced file is read again
        dataset = _partition_file(str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    else:
        dataset = simulated_partition(PartitionKey.of(cfg, int(node_config["partition-id"]),
                                                      int(node_config["num-partitions"])))
    if len(dataset) < 2:
        raise DataError(f"client {node_config} holds {len(dataset)} utterance(s); it needs at least 2 to train")
    return dataset


def partition_path(cfg: HyDiscGANConfig, node_config: dict) -> Path:
    """This node's partition file: node-config `data-path`, else `partition-<partition-id>.npz` of the
    `partitions:<dir>` dataset, whose files must number exactly `num-partitions`."""
    if "data-path" in node_config:
        return Path(str(node_config["data-path"]))
    folder, partition_id = Path(cfg.dataset.removeprefix("partitions:")), int(node_config["partition-id"])
    _check_partition_count(str(folder), int(node_config["num-partitions"]))
    return folder / f"partition-{partition_id}.npz"


@functools.lru_cache(maxsize=None)
def _check_partition_count(folder: str, num_partitions: int) -> None:
    # Partition ids run 0..num-partitions-1, so a folder written for another number of clients would
    # silently leave clients out (or crash some): refuse it, once per process.
    held = sum(1 for _ in Path(folder).glob("partition-*.npz"))
    if held != num_partitions:
        raise DataError(f"dataset partitions:{folder} holds {held} partition file(s) but the simulation runs "
                        f"{num_partitions} SuperNodes; write it with `hydiscgan partition --num-partitions "
                        f"{num_partitions}`")


def client_affect_windows(cfg: HyDiscGANConfig, node_config: dict, who: str) -> AffectWindows:
    """The affect task: this client's participant windows. Deployment: node-config `data-path` names a
    folder of this device's OpenFace recordings (au/, labels/; hydiscgan_fl.data.affect.load_openface_dir),
    all of it training data. Simulation: one client per training participant of `dataset` (sorted by name),
    partition-id i holding participant i; more SuperNodes than training participants is an error."""
    if "data-path" in node_config:
        return _affect_folder(str(node_config["data-path"]), cfg.affect_window)
    windows = load_affect_dataset(cfg.dataset, cfg.seed, cfg.valid_fraction, cfg.affect_window).split_subset("train")
    participants = windows.participant_list()
    partition_id, num_partitions = int(node_config["partition-id"]), int(node_config["num-partitions"])
    if num_partitions > len(participants):
        raise DataError(f"{who}: {num_partitions} SuperNodes but {cfg.dataset!r} has {len(participants)} training "
                        "participants; the affect task runs one client per participant (num-supernodes <= "
                        f"{len(participants)})")
    mine = participants[partition_id::num_partitions]  # exactly one each when the counts are equal
    windows = windows.subset(np.flatnonzero(np.isin(windows.participants, mine)))
    if len(windows) < 2:
        raise DataError(f"{who} holds {len(windows)} window(s); it needs at least 2 to train")
    return windows


@functools.lru_cache(maxsize=2)
def _affect_folder(path: str, window: int) -> AffectWindows:
    return make_windows(load_openface_dir(path), window, {}, path)


@dataclass(frozen=True)
class PartitionKey:
    """Everything that decides which utterances a simulated client holds."""

    dataset: str
    data_dir: str
    seed: int
    valid_fraction: float
    partition: str
    whole_videos: bool
    partition_id: int
    num_partitions: int

    @classmethod
    def of(cls, cfg: HyDiscGANConfig, partition_id: int, num_partitions: int) -> PartitionKey:
        return cls(cfg.dataset, cfg.data_dir, cfg.seed, cfg.valid_fraction, cfg.partition, needs_context(cfg),
                   partition_id, num_partitions)


@functools.lru_cache(maxsize=None)
def simulated_partition(key: PartitionKey) -> MultimodalDataset:
    """One simulated client's partition, kept for the life of this process (a Ray worker serves a client
    in many rounds). The dataset is loaded uncached and dropped once the partition is copied out, so the
    process keeps the partitions of the clients it served, not a full copy."""
    cfg = HyDiscGANConfig(dataset=key.dataset, data_dir=key.data_dir, seed=key.seed,
                          valid_fraction=key.valid_fraction, partition=key.partition)
    full = cfg.load_dataset(cached=False).split_subset("train")
    videos = full.videos if key.whole_videos else None  # a context model needs whole videos per client
    rows = partition_indices(full.labels, full.speakers, key.num_partitions, key.partition, key.seed,
                             videos=videos)[key.partition_id]
    return full.subset(rows)


@functools.lru_cache(maxsize=4)
def _partition_file(path: str, mtime_ns: int, size: int) -> MultimodalDataset:  # noqa: ARG001 - cache key
    return load_partition(path)


def client_seed_key(context: Context) -> int:
    """A per-client number for seeding that is stable across runs (node ids are not, in simulation)."""
    if "partition-id" in context.node_config:
        return int(context.node_config["partition-id"])
    return context.node_id % 7919


def client_name(context: Context) -> str:
    """How errors name this client."""
    for key in ("partition-id", "data-path"):
        if key in context.node_config:
            return f"client {key}={context.node_config[key]}"
    return f"client node-id={context.node_id}"


def check_known_ids(dataset: MultimodalDataset, known_ids: list[str], who: str) -> None:
    """Every utterance of this client must be one whose text the server holds."""
    unknown = sorted(set(dataset.ids.tolist()) - set(known_ids))
    if unknown:
        raise DataError(f"{who}: {len(unknown)} of its {len(dataset)} utterance ids are unknown to the server's "
                        f"text (first: {unknown[:5]}); its data is not from the server's dataset or split")


def check_dims(model: dict[str, torch.Tensor], received: dict[str, torch.Tensor], dims: dict[str, int],
               who: str) -> None:
    """The server's arrays must fit a model built for this client's feature dims."""
    for key, value in received.items():
        if key not in model:
            raise DataError(f"{who}: the server sent array {key!r}, which this client's model does not have")
        if tuple(value.shape) != tuple(model[key].shape):
            raise DataError(f"{who}: its data has feature dims {dims}, which do not fit the server's model: "
                            f"{key} has shape {tuple(value.shape)} on the server, {tuple(model[key].shape)} here")
