"""ClientApp handlers: unpack the server's message, run the local stage, pack only shared weights.

What leaves the client: the arrays of the components it was sent (G in stage 1; G and M in stage 2;
M alone in the fedavg-multimodal baseline's "multimodal" stage) and scalar metrics. The encoders and
discriminators live in `context.state` and never leave, as do personalised ("local") components, the
speaker adversary of adversarial identity unlearning (adv-lambda) and, under utterance-level DP, the
client's privacy ledger, whose cumulative epsilon is reported as metrics each round.

Robustness (docs/aggregation.md): the client refuses data the server's model or text does not fit
(DataError naming the client), saves its `context.state` every round when the server names a
`client-state` (so a resumed run continues it), and, for experiments, injects seeded faults
(`fault-rate`) or poisons its reply (`byzantine-clients`, `byzantine-mode`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import DataError, MultimodalDataset, load_partition, partition_indices
from hydiscgan_fl.models import (
    SpeakerAdversary,
    build_client_discriminators,
    build_shared_models,
    build_speaker_adversary,
)
from hydiscgan_fl.privacy.ledger import PrivacyLedger
from hydiscgan_fl.training import local_alignment, local_msa, pick_device, to_tensors, train_multimodal

PRIVATE_STATE_KEY = "private-models"
ADVERSARY_STATE_KEY = "speaker-adversary"
LEDGER_STATE_KEY = "privacy-ledger"
PERSONAL_STATE_PREFIX = "personal-"  # + component name: a personalised component's weights
BYZANTINE_SCALE = -10.0


def client_dataset(cfg: HyDiscGANConfig, node_config: dict) -> MultimodalDataset:
    """This client's private training utterances.

    Deployment: node-config `data-path` names this node's partition file. Simulation: the training
    split of `dataset` is partitioned with `partition` and this node takes `partition-id`.
    """
    if "data-path" in node_config:
        dataset = load_partition(node_config["data-path"])
    else:
        full = cfg.load_dataset().split_subset("train")
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


def injected_fault(cfg: HyDiscGANConfig, server_round: int, client_key: int) -> str:
    """'crash', 'timeout' or '' for this client in this round, seeded so that every run injects the same."""
    rng = np.random.default_rng([cfg.seed, server_round, client_key])
    if rng.random() >= cfg.fault_rate:
        return ""
    return "crash" if rng.random() < 0.5 else "timeout"


def is_byzantine(cfg: HyDiscGANConfig, context: Context) -> bool:
    """The first `byzantine-clients` partitions attack (deterministic; nodes without partition-id never do)."""
    return int(context.node_config.get("partition-id", cfg.byzantine_clients)) < cfg.byzantine_clients


def poison(trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor], mode: str,
           seed: int) -> dict[str, torch.Tensor]:
    """"scale": the update times BYZANTINE_SCALE; "random": standard-normal weights of the same shapes."""
    if mode == "scale":
        return {key: received[key] + BYZANTINE_SCALE * (trained[key] - received[key]) for key in received}
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(received[key].shape, generator=generator) for key in received}


def speaker_adversary(cfg: HyDiscGANConfig, dataset: MultimodalDataset, context: Context, seed: int,
                      device: torch.device) -> tuple[SpeakerAdversary | None, torch.Tensor | None]:
    """The client's speaker adversary and the local speaker id of each utterance; (None, None) unless
    adv-lambda > 0 and the client holds at least two speakers."""
    names, speaker_ids = np.unique(dataset.speakers, return_inverse=True)
    if cfg.adv_lambda <= 0 or len(names) < 2:
        return None, None
    adversary = build_speaker_adversary(dataset.dims, len(names), cfg, seed).to(device)
    if ADVERSARY_STATE_KEY in context.state:
        adversary.load_state_dict(context.state[ADVERSARY_STATE_KEY].to_torch_state_dict())
    return adversary, torch.as_tensor(speaker_ids.reshape(-1), device=device)


def privacy_ledger(cfg: HyDiscGANConfig, context: Context) -> PrivacyLedger | None:
    """Under utterance-level DP, this client's privacy spent so far (a fresh ledger at first)."""
    if cfg.dp_unit != "utterance":
        return None
    if LEDGER_STATE_KEY in context.state:
        return PrivacyLedger.from_json(str(context.state[LEDGER_STATE_KEY]["json"]))
    return PrivacyLedger(cfg.dp_delta)


def client_state_dir(cfg: HyDiscGANConfig, context: Context, name: str) -> Path:
    """This client's own folder for its saved state: node-config `state-dir` (a deployed node's disk),
    else `<output-dir>/client-state`, then the server's `client-state` name and the client's seed key."""
    state_dir = context.node_config.get("state-dir")
    root = Path(state_dir) if state_dir else cfg.resolved_output_dir() / "client-state"
    return root / name / str(client_seed_key(context))


def save_client_state(state: RecordDict, folder: Path, server_round: int) -> None:
    """Write `context.state` as round-<r>.pt (tensors and plain values); keep the two newest files."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"arrays": {key: record.to_torch_state_dict() for key, record in state.array_records.items()},
               "metrics": {key: dict(record) for key, record in state.metric_records.items()},
               "configs": {key: dict(record) for key, record in state.config_records.items()}}
    tmp = folder / f".round-{server_round}.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, folder / f"round-{server_round}.pt")
    for old in sorted(folder.glob("round-*.pt"), key=_round_of)[:-2]:
        old.unlink()


def restore_client_state(context: Context, folder: Path, server_round: int) -> None:
    """A resumed run starts with an empty `context.state`: read what this client saved last before this round."""
    saved = [path for path in folder.glob("round-*.pt") if _round_of(path) < server_round]
    if context.state or not saved:
        return
    payload = torch.load(max(saved, key=_round_of), weights_only=True)
    for key, arrays in payload["arrays"].items():
        context.state[key] = ArrayRecord(arrays)
    for key, values in payload["metrics"].items():
        context.state[key] = MetricRecord(values)
    for key, values in payload["configs"].items():
        context.state[key] = ConfigRecord(values)


def _round_of(path: Path) -> int:
    return int(path.stem.removeprefix("round-"))


def train(msg: Message, context: Context) -> Message:
    """One round of local training for the stage named in the message's config."""
    started = time.perf_counter()
    torch.set_num_threads(1)  # Ray runs several clients per machine; one thread each avoids oversubscription
    cfg = HyDiscGANConfig.from_run_config(context.run_config)
    config = msg.content["config"]
    stage, server_round = str(config["stage"]), int(config["server-round"])
    local_epochs = int(config.get("local-epochs", cfg.local_epochs))
    proximal_mu = float(config.get("proximal-mu", 0.0))
    local_components = list(config.get("local-components", []))
    who, client_key = client_name(context), client_seed_key(context)
    state_dir = client_state_dir(cfg, context, str(config["client-state"])) if "client-state" in config else None
    if state_dir is not None:
        restore_client_state(context, state_dir, server_round)
    fault = injected_fault(cfg, server_round, client_key) if cfg.fault_rate > 0 else ""
    if fault == "timeout":
        time.sleep(cfg.round_timeout_s + 1.0)  # the server has given up on this reply by now
    if fault:
        raise RuntimeError(f"{who}: injected fault '{fault}' in round {server_round} (fault-rate={cfg.fault_rate})")

    dataset = client_dataset(cfg, context.node_config)
    if "known-ids" in config:
        check_known_ids(dataset, list(config["known-ids"]), who)
    device = pick_device()
    shared = build_shared_models(dataset.dims, cfg, cfg.seed).to(device)
    received = msg.content["arrays"].to_torch_state_dict()
    check_dims(shared.state_dict(), received, dataset.dims, who)
    shared.load_state_dict(received, strict=False)
    for component in local_components:  # personalised: this client's own copy (the seeded initial one at first)
        if (key := PERSONAL_STATE_PREFIX + component) in context.state:
            getattr(shared, component).load_state_dict(context.state[key].to_torch_state_dict())

    data = to_tensors(dataset, device)
    seed = cfg.seed * 1_000_003 + server_round * 7919 + client_key
    privacy: dict[str, float] = {}
    if stage == "multimodal":  # the fedavg-multimodal baseline: M on real (t, a, v), no discriminators
        losses = train_multimodal(shared.msa, data, cfg, local_epochs, seed, dataset.label_kind, proximal_mu)
    elif stage in ("align", "msa"):
        private_seed = cfg.seed * 1_000_003 + client_key
        private = build_client_discriminators(dataset.dims, cfg, private_seed).to(device)
        if PRIVATE_STATE_KEY in context.state:
            private.load_state_dict(context.state[PRIVATE_STATE_KEY].to_torch_state_dict())
        ledger = privacy_ledger(cfg, context)
        if stage == "align":
            adversary, speakers = speaker_adversary(cfg, dataset, context, private_seed, device)
            losses = local_alignment(shared, private, data, cfg, local_epochs, seed, proximal_mu,
                                     adversary=adversary, speakers=speakers, ledger=ledger)
            if adversary is not None:
                context.state[ADVERSARY_STATE_KEY] = ArrayRecord(adversary.state_dict())
        else:  # no DP-SGD here: stage 2 reads no audio/visual (hydiscgan_fl.privacy.dp_sgd)
            losses = local_msa(shared, private, data, cfg, local_epochs, seed, dataset.label_kind, proximal_mu)
        context.state[PRIVATE_STATE_KEY] = ArrayRecord(private.state_dict())
        if ledger is not None:
            context.state[LEDGER_STATE_KEY] = ConfigRecord({"json": ledger.to_json()})
            privacy = ledger.report()
    else:
        raise ValueError(f"unknown stage {stage!r} in the server's config")
    for component in local_components:
        context.state[PERSONAL_STATE_PREFIX + component] = ArrayRecord(getattr(shared, component).state_dict())
    if state_dir is not None:
        save_client_state(context.state, state_dir, server_round)

    state = shared.state_dict()
    reply = {key: state[key] for key in received}  # exactly what was sent, updated
    if is_byzantine(cfg, context):
        reply = poison(reply, received, cfg.byzantine_mode, seed)
    reply_arrays = ArrayRecord(reply)
    metrics = {f"loss-{key.removeprefix('loss_').replace('_', '-')}": float(v) for key, v in losses.items()}
    metrics.update({key.replace("_", "-"): value for key, value in privacy.items()})  # PRIVACY_METRIC_KEYS
    metrics.update({"num-examples": len(dataset), "train-s": time.perf_counter() - started})
    return Message(RecordDict({"arrays": reply_arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)
