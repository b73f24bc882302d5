"""ClientApp handlers: unpack the server's message, run the local stage, pack only shared weights.

What leaves the client: the arrays of the components it was sent (G in stage 1; G and M in stage 2;
M alone in the fedavg-multimodal baseline's "multimodal" stage and in the affect task's "affect" stage,
where M is the recurrent affect model trained on the client's participant windows, `affect_round`; the
text model, under M's name, in the distill and multitask baselines' stages) and the metrics that the
allow-list of its stage and DP unit admits (`hydiscgan_fl.privacy.reply_metrics`); every other figure (losses on
private data, the Wasserstein figure) goes to the client's own log only. The encoders and
discriminators live in `context.state` and never leave, as do personalised ("local") components, the
speaker adversary of adversarial identity unlearning (adv-lambda), the distill baseline's multimodal
teacher, the multitask baseline's auxiliary head and, under utterance-level DP, the
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

from clients.local_data import (
    check_dims,
    check_known_ids,
    client_affect_windows,
    client_dataset,
    client_name,
    client_seed_key,
)
from clients import secure_aggregation
from clients.persistence import client_state_dir, restore_client_state, save_client_state
from clients.simulated_faults import injected_fault, is_byzantine, poison, reported_examples
from hydiscgan_fl.config import AFFECT_STAGE, HyDiscGANConfig
from hydiscgan_fl.data import MultimodalDataset
from hydiscgan_fl.models import (
    MSA,
    build_affect_model,
    SpeakerAdversary,
    build_client_discriminators,
    build_federated_models,
    build_speaker_adversary,
)
from hydiscgan_fl.models.registry import msa_family
from hydiscgan_fl.privacy.ledger import PrivacyLedger
from hydiscgan_fl.privacy.reply_metrics import PRESENCE_KEYS, TIMING_KEY, WEIGHT_KEY, releasable_metrics
from hydiscgan_fl.training import (
    UtteranceTensors,
    local_alignment,
    local_msa,
    pick_device,
    tensor_view,
    to_tensors,
    train_multimodal,
)
from hydiscgan_fl.training.affect import AffectTensors, train_affect
from hydiscgan_fl.training.privileged import build_multitask_head, local_distill, local_multitask
from hydiscgan_fl.training.videos import Videos
from secagg.protocol import MASKED, RECORD

PRIVATE_STATE_KEY = "private-models"
TEACHER_STATE_KEY = "distill-teacher"  # the distill baseline's multimodal teacher
MULTITASK_STATE_KEY = "multitask-head"  # the multitask baseline's auxiliary head
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


def privileged_round(stage: str, model: torch.nn.Module, data: UtteranceTensors, dataset: MultimodalDataset,
                     cfg: HyDiscGANConfig, context: Context, epochs: int, seed: int, proximal_mu: float,
                     videos: Videos | None, device: torch.device) -> dict[str, float]:
    """One round of the distill or multitask baseline on the federated text `model`; the teacher or the
    auxiliary head lives in `context.state` and never leaves (hydiscgan_fl.training.privileged)."""
    private_seed = cfg.seed * 1_000_003 + client_seed_key(context)
    if stage == "distill":
        torch.manual_seed(private_seed)
        teacher = msa_family(cfg).build(dataset.dims, cfg).to(device)
        if TEACHER_STATE_KEY in context.state:
            teacher.load_state_dict(context.state[TEACHER_STATE_KEY].to_torch_state_dict())
        else:  # first round of this client: the teacher gets M's whole budget on the client's own utterances
            train_multimodal(teacher, data, cfg, cfg.rounds_msa * cfg.local_epochs, private_seed, dataset.label_kind,
                             videos=videos)
            context.state[TEACHER_STATE_KEY] = ArrayRecord(teacher.state_dict())
        return local_distill(model, teacher, data, cfg, epochs, seed, dataset.label_kind, proximal_mu, videos)
    head = build_multitask_head(model.feature_dim, dataset.dims, private_seed).to(device)
    if MULTITASK_STATE_KEY in context.state:
        head.load_state_dict(context.state[MULTITASK_STATE_KEY].to_torch_state_dict())
    losses = local_multitask(model, head, data, cfg, epochs, seed, dataset.label_kind, proximal_mu, videos)
    context.state[MULTITASK_STATE_KEY] = ArrayRecord(head.state_dict())
    return losses


def hydiscgan_round(cfg: HyDiscGANConfig, context: Context, received: dict[str, torch.Tensor], stage: str,
                    local_epochs: int, seed: int, proximal_mu: float, local_components: list[str], config: ConfigRecord,
                    who: str) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, float], int]:
    """One round of a HyDiscGAN stage ("align", "msa") or of a baseline ("multimodal", "distill", "multitask"):
    the shared components' new state, the losses, the figures the reply reports (privacy spent; with simulated
    missing modalities, the utterances holding each modality) and the number of examples."""
    client_key = client_seed_key(context)
    dataset = client_dataset(cfg, context.node_config)
    if "known-ids" in config:
        check_known_ids(dataset, list(config["known-ids"]), who)
    device = pick_device()
    shared = build_federated_models(dataset.dims, cfg, cfg.seed).to(device)
    check_dims(shared.state_dict(), received, dataset.dims, who)
    shared.load_state_dict(received, strict=False)
    for component in local_components:  # personalised: this client's own copy (the seeded initial one at first)
        if (key := PERSONAL_STATE_PREFIX + component) in context.state:
            getattr(shared, component).load_state_dict(context.state[key].to_torch_state_dict())

    data = to_tensors(dataset, device, tensor_view(cfg, client_key))
    videos = Videos.of(dataset) if shared.needs_context else None  # M reads whole videos (models.registry)
    reported: dict[str, float] = {}
    if stage == "multimodal":  # the fedavg-multimodal baseline: M on real (t, a, v), no discriminators
        losses = train_multimodal(shared.msa, data, cfg, local_epochs, seed, dataset.label_kind, proximal_mu,
                                  videos=videos)
    elif stage in ("distill", "multitask"):
        losses = privileged_round(stage, shared.msa, data, dataset, cfg, context, local_epochs, seed, proximal_mu,
                                  videos, device)
    elif stage in ("align", "msa"):
        private_seed = cfg.seed * 1_000_003 + client_key
        private = build_client_discriminators(dataset.dims, cfg, private_seed).to(device)
        trained_private = PRIVATE_STATE_KEY in context.state
        if trained_private:
            private.load_state_dict(context.state[PRIVATE_STATE_KEY].to_torch_state_dict())
        ledger = privacy_ledger(cfg, context)
        if stage == "align":
            adversary, speakers = speaker_adversary(cfg, dataset, context, private_seed, device)
            losses = local_alignment(shared, private, data, cfg, local_epochs, seed, proximal_mu,
                                     adversary=adversary, speakers=speakers, ledger=ledger)
            if adversary is not None:
                context.state[ADVERSARY_STATE_KEY] = ArrayRecord(adversary.state_dict())
        else:  # no DP-SGD here: stage 2 reads no audio/visual (hydiscgan_fl.privacy.dp_sgd)
            # the frozen-D term needs a D trained in stage 1: without one (rounds-align 0, or this client was
            # never sampled in stage 1) stage 2 runs without it rather than with a random D
            losses = local_msa(shared, private if trained_private else None, data, cfg, local_epochs, seed,
                               dataset.label_kind, proximal_mu, videos)
        context.state[PRIVATE_STATE_KEY] = ArrayRecord(private.state_dict())
        if ledger is not None:
            context.state[LEDGER_STATE_KEY] = ConfigRecord({"json": ledger.to_json()})
            reported = ledger.report()
    else:
        raise ValueError(f"unknown stage {stage!r} in the server's config")
    for component in local_components:
        context.state[PERSONAL_STATE_PREFIX + component] = ArrayRecord(getattr(shared, component).state_dict())

    if data.present is not None:  # simulated missing modalities: how many utterances hold each (metadata)
        counts = data.present.sum(dim=0).tolist()
        reported.update({PRESENCE_KEYS[name]: int(count) for name, count in zip(PRESENCE_KEYS, counts)})
    return shared.state_dict(), losses, reported, len(dataset)


def affect_round(cfg: HyDiscGANConfig, node_config: dict, received: dict[str, torch.Tensor], local_epochs: int,
                 seed: int, proximal_mu: float, who: str) -> tuple[dict[str, torch.Tensor], dict[str, float], int]:
    """One round of the affect task: the received affect model M trained on this participant's windows."""
    windows = client_affect_windows(cfg, node_config, who)
    device = pick_device()
    model = build_affect_model(windows.input_dim, cfg).to(device)
    prefix = f"{MSA}."
    check_dims({prefix + key: value for key, value in model.state_dict().items()}, received,
               {"au": windows.input_dim}, who)
    model.load_state_dict({key.removeprefix(prefix): value.float() for key, value in received.items()})
    losses = train_affect(model, AffectTensors.of(windows, device), cfg, local_epochs, seed, proximal_mu)
    return {prefix + key: value for key, value in model.state_dict().items()}, losses, len(windows)


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

    received = msg.content["arrays"].to_torch_state_dict()
    seed = cfg.seed * 1_000_003 + server_round * 7919 + client_key
    privacy: dict[str, float] = {}
    if stage == AFFECT_STAGE:
        state, losses, num_examples = affect_round(cfg, context.node_config, received, local_epochs, seed,
                                                   proximal_mu, who)
    else:
        state, losses, privacy, num_examples = hydiscgan_round(cfg, context, received, stage, local_epochs, seed,
                                                               proximal_mu, local_components, config, who)
    if state_dir is not None:
        save_client_state(context.state, state_dir, server_round)

    reply = {key: state[key] for key in received}  # exactly what was sent, updated
    num_examples = reported_examples(cfg, context, num_examples)
    if is_byzantine(cfg, context):
        reply = poison(reply, received, cfg.byzantine_mode, seed)
    if RECORD in msg.content.config_records:  # secure aggregation: only the masked update leaves
        arrays = {MASKED: masked_reply(msg.content[RECORD], reply, received, context)}
    else:  # transport-dtype float16: the server sent half precision, the update goes back in half precision too
        arrays = {"arrays": ArrayRecord({key: value.half() if received[key].dtype == torch.float16 else value
                                         for key, value in reply.items()})}
    metrics = {f"loss-{key.removeprefix('loss_').replace('_', '-')}": float(v) for key, v in losses.items()}
    # PRIVACY_METRIC_KEYS and, with missing modalities, PRESENCE_KEYS
    metrics.update({key.replace("_", "-"): value for key, value in privacy.items()})
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
