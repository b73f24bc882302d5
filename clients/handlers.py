"""ClientApp handlers: unpack the server's message, run the local stage, pack only shared weights.

What leaves the client: the arrays of the components it was sent (G in stage 1; G and M in stage 2;
M alone in the fedavg-multimodal baseline's "multimodal" stage) and the metrics that the allow-list of
its stage and DP unit admits (`hydiscgan_fl.privacy.reply_metrics`); every other figure (losses on
private data, the Wasserstein figure) goes to the client's own log only. The encoders and
discriminators live in `context.state` and never leave, as do personalised ("local") components, the
speaker adversary of adversarial identity unlearning (adv-lambda) and, under utterance-level DP, the
client's privacy ledger, whose cumulative epsilon is reported each round.

Robustness (docs/aggregation.md): the client refuses data the server's model or text does not fit
(DataError naming the client), saves its `context.state` every round when the server names a
`client-state` (so a resumed run continues it), and, for experiments, injects seeded faults
(`fault-rate`) or poisons its reply (`byzantine-clients`, `byzantine-mode`, "inflate" also claiming
a huge `num-examples`).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.local_data import check_dims, check_known_ids, client_dataset, client_name, client_seed_key
from clients import secure_aggregation
from clients.persistence import client_state_dir, restore_client_state, save_client_state
from clients.simulated_faults import injected_fault, is_byzantine, poison, reported_examples
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import MultimodalDataset
from hydiscgan_fl.models import (
    SpeakerAdversary,
    build_client_discriminators,
    build_shared_models,
    build_speaker_adversary,
)
from hydiscgan_fl.privacy.ledger import PrivacyLedger
from hydiscgan_fl.privacy.reply_metrics import TIMING_KEY, WEIGHT_KEY, releasable_metrics
from hydiscgan_fl.training import local_alignment, local_msa, pick_device, tensor_view, to_tensors, train_multimodal
from hydiscgan_fl.training.videos import Videos
from secagg.protocol import MASKED, RECORD

PRIVATE_STATE_KEY = "private-models"
ADVERSARY_STATE_KEY = "speaker-adversary"
LEDGER_STATE_KEY = "privacy-ledger"
PERSONAL_STATE_PREFIX = "personal-"  # + component name: a personalised component's weights


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

    data = to_tensors(dataset, device, tensor_view(cfg))
    videos = Videos.of(dataset) if shared.needs_context else None  # M reads whole videos (models.registry)
    seed = cfg.seed * 1_000_003 + server_round * 7919 + client_key
    privacy: dict[str, float] = {}
    if stage == "multimodal":  # the fedavg-multimodal baseline: M on real (t, a, v), no discriminators
        losses = train_multimodal(shared.msa, data, cfg, local_epochs, seed, dataset.label_kind, proximal_mu,
                                  videos=videos)
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
            losses = local_msa(shared, private, data, cfg, local_epochs, seed, dataset.label_kind, proximal_mu,
                               videos)
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
    num_examples = reported_examples(cfg, context, len(dataset))
    if is_byzantine(cfg, context):
        reply = poison(reply, received, cfg.byzantine_mode, seed)
    if RECORD in msg.content.config_records:  # secure aggregation: only the masked update leaves
        arrays = {MASKED: masked_reply(msg.content[RECORD], reply, received, context)}
    else:  # transport-dtype float16: the server sent half precision, the update goes back in half precision too
        arrays = {"arrays": ArrayRecord({key: value.half() if received[key].dtype == torch.float16 else value
                                         for key, value in reply.items()})}
    metrics = {f"loss-{key.removeprefix('loss_').replace('_', '-')}": float(v) for key, v in losses.items()}
    metrics.update({key.replace("_", "-"): value for key, value in privacy.items()})  # PRIVACY_METRIC_KEYS
    metrics.update({WEIGHT_KEY: num_examples, TIMING_KEY: time.perf_counter() - started})
    metrics = releasable_metrics(metrics, stage, cfg.dp_unit, who)
    return Message(RecordDict({**arrays, "metrics": MetricRecord(metrics)}), reply_to=msg)


def masked_reply(config: ConfigRecord, trained: dict[str, torch.Tensor], received: dict[str, torch.Tensor],
                 context: Context) -> ArrayRecord:
    """The update (trained - received, in float32) masked for secure aggregation, keyed as sent."""
    keys = sorted(received)
    update = [(trained[key].float() - received[key].float()).cpu().numpy() for key in keys]
    state = secure_aggregation.load_state(context)
    masked = secure_aggregation.masked_update(state, config, update)
    secure_aggregation.save_state(context, state)
    return ArrayRecord({key: Array(vector) for key, vector in zip(keys, masked)})
