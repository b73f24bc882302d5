"""Local training loops (a client's work in one round) and text-only inference."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models import (
    ClientDiscriminators,
    MSAModel,
    SharedModels,
    SpeakerAdversary,
    TextOnlyModel,
    VideoLayout,
    build_text_only_model,
)
from hydiscgan_fl.privacy.dp_sgd import UtteranceDP
from hydiscgan_fl.privacy.ledger import PrivacyLedger
from hydiscgan_fl.models.steps import Input, StepTensors, input_dim
from hydiscgan_fl.training.data import UtteranceTensors, minibatches
from hydiscgan_fl.training.losses import msa_objective, proximal_term, sentiment_loss
from hydiscgan_fl.training.steps import discriminator_step, generator_alignment_step, msa_step
from hydiscgan_fl.training.videos import Videos, batches


def adam(params, lr: float, cfg: HyDiscGANConfig) -> torch.optim.Optimizer:
    """Adam with the run's weight decay (the local loops' optimiser)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def seeded(seed: int) -> torch.Generator:
    """Seed torch's global RNG (dropout) and return the generator of minibatch order and noise, so that a
    client's round depends on its seed only, not on what ran before it in the same process."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def mean_of_history(history: dict[str, list[float]]) -> dict[str, float]:
    """Per-key mean of a local loop's step figures."""
    return {key: float(np.mean(values)) for key, values in history.items()}


def local_alignment(
    shared: SharedModels,
    private: ClientDiscriminators,
    data: UtteranceTensors,
    cfg: HyDiscGANConfig,
    epochs: int,
    seed: int,
    proximal_mu: float = 0.0,
    *,
    adversary: SpeakerAdversary | None = None,
    speakers: torch.Tensor | None = None,
    ledger: PrivacyLedger | None = None,
) -> dict[str, float]:
    """Stage 1 on one client: per minibatch one D step, then one G step. Returns mean losses. With missing
    modalities (`data.present`) each modality's terms read only the utterances holding it
    (`training.steps.held_modalities`): a client without audio trains D_v, E_v and G's visual head and trunk.

    `adversary`, with `speakers` (the local speaker id of every row of `data`), adds adversarial identity
    unlearning to G's step. Under utterance-level DP (dp-unit "utterance") both steps are DP-SGD steps,
    each on its own Poisson batch, recorded in `ledger`; the batches and the noise are then secret
    (`privacy.secret_rng`), so only a run without DP is a function of `seed`.
    """
    if not client_modalities(data):
        return {}  # a client holding neither audio nor visual has nothing to align: it takes part in stage 2 only
    rng = seeded(seed)
    device = data.text.device
    shared.train()
    private.train()
    # D and E are trained only for a term that reads them (ablations set the others' weights to 0)
    trains_private = cfg.uses_discriminator or cfg.lambda_contrastive > 0
    opt_d = adam(private.parameters(), cfg.lr_discriminator, cfg)
    g_modules = nn.ModuleList([shared.generator])
    g_groups = [{"params": shared.generator.parameters(), "lr": cfg.lr_generator}]
    if adversary is not None:
        adversary.train()
        g_modules.append(adversary)
        g_groups.append({"params": adversary.parameters(), "lr": cfg.lr_discriminator})
    opt_g = torch.optim.Adam(g_groups, weight_decay=cfg.weight_decay)
    anchors = [p.detach().clone() for p in shared.generator.parameters()] if proximal_mu > 0 else None
    history: dict[str, list[float]] = defaultdict(list)
    with contextlib.ExitStack() as stack:
        dp = None
        if cfg.dp_unit == "utterance":
            if ledger is None:
                raise ValueError("utterance-level DP needs a PrivacyLedger to record its steps")
            if proximal_mu > 0:
                raise ValueError("FedProx's proximal term is not a per-utterance loss: it cannot run under "
                                 "utterance-level DP")
            dp = stack.enter_context(UtteranceDP(cfg, len(data), ledger))
            if trains_private:
                opt_d = dp.make_private(private, opt_d)
            opt_g = dp.make_private(g_modules, opt_g)
        for _ in range(epochs):
            if dp is None:  # both steps on the same shuffled minibatch
                pairs = [(index, index) for index in minibatches(len(data), cfg.batch_size, rng)]
            else:  # each DP step on its own Poisson batch, secret (not from `seed`)
                pairs = list(zip(dp.epoch(), dp.epoch()))
            for d_index, g_index in pairs:
                noise = shared.generator.sample_noise(len(d_index), rng).to(device)
                if trains_private and dp is not None:
                    dp.activate(opt_d)
                if trains_private and len(d_index):
                    batch = data.rows(d_index.to(device))
                    _record(history, discriminator_step(shared, private, batch, opt_d, cfg, noise))
                elif trains_private:
                    dp.noise_only_step(opt_d)
                if g_index is not d_index:
                    noise = shared.generator.sample_noise(len(g_index), rng).to(device)
                if dp is not None:
                    dp.activate(opt_g)
                if len(g_index):
                    g_index = g_index.to(device)
                    step = generator_alignment_step(shared, private, data.rows(g_index), opt_g, cfg, noise, anchors,
                                                    proximal_mu, adversary,
                                                    None if speakers is None else speakers[g_index])
                    _record(history, step)
                else:
                    dp.noise_only_step(opt_g)
    return mean_of_history(history)


def client_modalities(data: UtteranceTensors) -> tuple[str, ...]:
    """The private modalities (audio, visual) that at least one of the client's utterances holds."""
    if data.present is None:
        return ("audio", "visual")
    return tuple(name for name in ("audio", "visual") if bool(data.holds(name).any()))


def _record(history: dict[str, list[float]], step: dict[str, float]) -> None:
    for key, value in step.items():
        history[key].append(value)


def local_msa(
    shared: SharedModels,
    private: ClientDiscriminators | None,
    data: UtteranceTensors,
    cfg: HyDiscGANConfig,
    epochs: int,
    seed: int,
    label_kind: str,
    proximal_mu: float = 0.0,
    videos: Videos | None = None,
) -> dict[str, float]:
    """Stage 2 on one client: train M and fine-tune G with the discriminators frozen (batches of whole
    `videos` when M needs context). `private` None: no frozen-D term (the server's stage 2, or a client that
    holds no D trained in stage 1). Under the frozen-generator and zero-fakes ablations G is not trained."""
    rng = seeded(seed)
    shared.train()
    if private is not None:
        private.eval()
        private.requires_grad_(False)
    groups = [{"params": shared.msa.parameters(), "lr": cfg.lr_msa}]
    if cfg.generator_trains_in_stage2:
        groups.insert(0, {"params": shared.generator.parameters(), "lr": cfg.lr_generator})
    else:
        shared.generator.eval()  # frozen: the G of stage 1, as at test time
    optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
    anchors = [p.detach().clone() for p in shared.parameters()] if proximal_mu > 0 else None
    history: dict[str, list[float]] = defaultdict(list)
    judges = client_modalities(data)  # the modalities this client's D was trained on
    try:
        for _ in range(epochs):
            for index, layout in batches(len(data), cfg.batch_size, rng, videos, data.text.device):
                batch = data.rows(index)
                noise = shared.generator.sample_noise(len(index), rng).to(data.text.device)
                _record(history, msa_step(shared, private, batch, optimizer, cfg, noise, label_kind, anchors,
                                          proximal_mu, layout, judges))
    finally:
        if private is not None:
            private.requires_grad_(True)
    return mean_of_history(history)


def train_multimodal(
    msa: MSAModel,
    data: UtteranceTensors,
    cfg: HyDiscGANConfig,
    epochs: int,
    seed: int,
    label_kind: str,
    proximal_mu: float = 0.0,
    on_epoch: Callable[[int, MSAModel], None] | None = None,
    videos: Videos | None = None,
) -> dict[str, float]:
    """M(t, a, v) on real (per-speaker standardised) audio/visual: the privacy-violating baselines.

    A fedavg-multimodal client's round (its own data, epochs = local-epochs) and the central-multimodal
    baseline (all training data). `on_epoch(epoch, msa)` is called after each epoch. Returns mean losses.
    """
    rng = seeded(seed)
    optimizer = adam(msa.parameters(), cfg.lr_msa, cfg)
    anchors = [p.detach().clone() for p in msa.parameters()] if proximal_mu > 0 else None
    history: dict[str, list[float]] = defaultdict(list)
    for epoch in range(epochs):
        msa.train()
        for index, layout in batches(len(data), cfg.batch_size, rng, videos, data.text.device):
            batch = data.rows(index)
            terms = msa_objective(msa, batch.msa_inputs(), layout, batch.present, batch.labels, label_kind)
            loss = sum(terms.values())
            if anchors is not None:
                loss = loss + proximal_term(list(msa.parameters()), anchors, proximal_mu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for name, term in terms.items():
                history[f"loss_{name}"].append(term.item())
        if on_epoch is not None:
            on_epoch(epoch + 1, msa)
    return mean_of_history(history)


def _scores(outputs: torch.Tensor, label_kind: str) -> np.ndarray:
    """Probabilities for binary labels, scores otherwise."""
    return (torch.sigmoid(outputs) if label_kind == "binary" else outputs).cpu().numpy()


@torch.no_grad()
def predict(shared: SharedModels, text: torch.Tensor, label_kind: str, layout: VideoLayout | None = None,
            msa_text: StepTensors | None = None, inference: tuple[str, int] = ("z0", 1),
            seed: int = 0) -> np.ndarray:
    """Text-only inference: probabilities for binary labels, scores otherwise (`msa_text`: the text's steps
    for a step-reading M). `inference` (the run config's, `HyDiscGANConfig.inference_draws`): ("z0", 1) is
    M(t, G(t, 0)); ("mean-pred", K) the mean of K predictions M(t, G(t, z_k)); ("mean-fake", K) M(t, mean of
    K fakes G(t, z_k)); the z_k ~ N(0, I) are drawn from `seed`, so every evaluation of a run uses the same."""
    shared.eval()
    mode, draws = inference
    if mode == "z0":
        return _scores(shared.predict(text, layout, msa_text), label_kind)
    rng = torch.Generator().manual_seed(seed)
    noises = [shared.generator.sample_noise(text.shape[0], rng).to(text.device) for _ in range(draws)]
    if mode == "mean-pred":
        return np.mean([_scores(shared.predict(text, layout, msa_text, noise), label_kind) for noise in noises],
                       axis=0)
    if mode == "mean-fake":
        fakes = [shared.fakes(text, noise) for noise in noises]
        mean_audio, mean_visual = (torch.stack(parts).mean(dim=0) for parts in zip(*fakes))
        return _scores(shared.read_fakes(text, mean_audio, mean_visual, layout, msa_text), label_kind)
    raise ValueError(f"unknown inference mode {mode!r}")


@torch.no_grad()
def predict_multimodal(msa: MSAModel, data: UtteranceTensors, label_kind: str,
                       layout: VideoLayout | None = None) -> np.ndarray:
    """Inference of the multimodal baselines, y_hat = M(t, a, v) on real audio/visual."""
    msa.eval()
    return _scores(data.read_by(msa, layout), label_kind)


@torch.no_grad()
def alignment_error(shared: SharedModels, data: UtteranceTensors) -> float:
    """Mean squared error between G(t, 0) and the real (standardised) audio and visual features."""
    shared.eval()
    fake_audio, fake_visual = shared.generator(data.text)
    return float(((fake_audio - data.audio) ** 2).mean() + ((fake_visual - data.visual) ** 2).mean())


def train_text_only(
    text: Input, labels: torch.Tensor, label_kind: str, cfg: HyDiscGANConfig, epochs: int, seed: int,
    on_epoch: Callable[[int, TextOnlyModel], None] | None = None,
    videos: Videos | None = None,
) -> TextOnlyModel:
    """The text-only baseline of M's family (`msa-model`), trained centrally with M's optimiser settings.

    `text`: utterance vectors, or steps for a step-reading family; `on_epoch(epoch, model)` is called after
    each epoch; `videos` when the family needs context."""
    torch.manual_seed(seed)
    model = build_text_only_model(input_dim(text), cfg).to(text.device)
    optimizer = adam(model.parameters(), cfg.lr_msa, cfg)
    rng = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for index, layout in batches(len(text), cfg.batch_size, rng, videos, text.device):
            loss = sentiment_loss(model(text[index], layout), labels[index], label_kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return model


@torch.no_grad()
def predict_text_only(model: TextOnlyModel, text: Input, label_kind: str,
                      layout: VideoLayout | None = None) -> np.ndarray:
    model.eval()
    return _scores(model(text, layout), label_kind)
