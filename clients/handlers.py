"""ClientApp handlers: unpack the server's message, run the local stage, pack only shared weights.

What leaves the client: the arrays of the components it was sent (G in stage 1; G and M in stage 2)
and scalar metrics. The encoders and discriminators live in `context.state` and never leave.
"""

from __future__ import annotations

import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import DataError, MultimodalDataset, load_dataset, load_partition, partition_indices
from hydiscgan_fl.models import build_client_discriminators, build_shared_models
from hydiscgan_fl.training import local_alignment, local_msa, pick_device, to_tensors

PRIVATE_STATE_KEY = "private-models"


def client_dataset(cfg: HyDiscGANConfig, node_config: dict) -> MultimodalDataset:
    """This client's private training utterances.

    Deployment: node-config `data-path` names this node's partition file. Simulation: the training
    split of `dataset` is partitioned with `partition` and this node takes `partition-id`.
    """
    if "data-path" in node_config:
        dataset = load_partition(node_config["data-path"])
    else:
        full = load_dataset(cfg.dataset, cfg.resolved_data_dir(), cfg.seed).split_subset("train")
        pid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
        dataset = full.subset(partition_indices(full.labels, full.speakers, parts, cfg.partition, cfg.seed)[pid])
    if len(dataset) < 2:
        raise DataError(f"client {node_config} holds {len(dataset)} utterance(s); it needs at least 2 to train")
    return dataset


def client_seed_key(context: Context) -> int:
    """A per-client number for seeding that is stable across runs (node ids are not, in simulation)."""
    if "partition-id" in context.node_config:
        return int(context.node_config["partition-id"])
    return context.node_id % 7919


def train(msg: Message, context: Context) -> Message:
    """One round of local training for the stage named in the message's config."""
    started = time.perf_counter()
    torch.set_num_threads(1)  # Ray runs several clients per machine; one thread each avoids oversubscription
    cfg = HyDiscGANConfig.from_run_config(context.run_config)
    config = msg.content["config"]
    stage, server_round = str(config["stage"]), int(config["server-round"])
    local_epochs = int(config.get("local-epochs", cfg.local_epochs))
    proximal_mu = float(config.get("proximal-mu", 0.0))

    dataset = client_dataset(cfg, context.node_config)
    device = pick_device()
    shared = build_shared_models(dataset.dims, cfg, cfg.seed).to(device)
    received = msg.content["arrays"].to_torch_state_dict()
    missing = set(received) - set(shared.state_dict())
    if missing:
        raise ValueError(f"server sent arrays this client's model does not have: {sorted(missing)[:5]}")
    shared.load_state_dict(received, strict=False)

    client_key = client_seed_key(context)
    private = build_client_discriminators(dataset.dims, cfg, cfg.seed * 1_000_003 + client_key).to(device)
    if PRIVATE_STATE_KEY in context.state:
        private.load_state_dict(context.state[PRIVATE_STATE_KEY].to_torch_state_dict())

    data = to_tensors(dataset, device)
    seed = cfg.seed * 1_000_003 + server_round * 7919 + client_key
    if stage == "align":
        losses = local_alignment(shared, private, data, cfg, local_epochs, seed, proximal_mu)
    elif stage == "msa":
        losses = local_msa(shared, private, data, cfg, local_epochs, seed, dataset.label_kind, proximal_mu)
    else:
        raise ValueError(f"unknown stage {stage!r} in the server's config")
    context.state[PRIVATE_STATE_KEY] = ArrayRecord(private.state_dict())

    state = shared.state_dict()
    reply_arrays = ArrayRecord({key: state[key] for key in received})  # exactly what was sent, updated
    metrics = {f"loss-{key.removeprefix('loss_').replace('_', '-')}": float(v) for key, v in losses.items()}
    metrics.update({"num-examples": len(dataset), "train-s": time.perf_counter() - started})
    return Message(RecordDict({"arrays": reply_arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)
