"""One function per local training step (each a single optimiser update on one minibatch).

Stage 1 (modal alignment) alternates `discriminator_step` and `generator_alignment_step`;
stage 2 (MSA) runs `msa_step` with the client's discriminators frozen. Under utterance-level DP
(dp-unit "utterance") the optimisers of the first two are Opacus DP optimisers and every loss term is a
mean of per-utterance losses (see hydiscgan_fl.privacy.dp_sgd).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models import ClientDiscriminators, SharedModels, SpeakerAdversary, VideoLayout
from hydiscgan_fl.training.data import UtteranceTensors
from hydiscgan_fl.training.losses import (
    fool_loss,
    info_nce,
    msa_objective,
    per_utterance_alignment,
    proximal_term,
    real_fake_loss,
    reconstruction_loss,
)


def held_modalities(batch: UtteranceTensors, cfg: HyDiscGANConfig) -> dict[str, torch.Tensor | None]:
    """The private modalities whose terms a stage-1 step computes, each with the 0/1 weight of the rows that
    hold it (None: every row does; data.missing). Without DP a modality that no row holds is left out, so
    nothing of it is trained (no gradient reaches its D, E or head of G); under utterance-level DP its terms
    stay, weighted 0, so that a step's shape does not depend on which utterances miss what."""
    if batch.present is None:
        return {"audio": None, "visual": None}
    held = {}
    for name in ("audio", "visual"):
        weights = batch.holds(name).to(batch.audio.dtype)
        if cfg.dp_unit == "utterance" or bool(weights.any()):
            held[name] = weights
    return held


def _contrastive(fake: torch.Tensor, real: torch.Tensor, cfg: HyDiscGANConfig,
                 weights: torch.Tensor | None = None) -> torch.Tensor | None:
    """InfoNCE over the batch's rows that hold the modality (None below two: no negatives), or its
    per-utterance form when each utterance is a DP record."""
    if cfg.dp_unit == "utterance":
        return per_utterance_alignment(fake, real, cfg.temperature, weights)
    if weights is not None:
        rows = weights.bool()
        if int(rows.sum()) < 2:
            return None
        fake, real = fake[rows], real[rows]
    return info_nce(fake, real, cfg.temperature)


def _sum(terms: list[torch.Tensor | None]) -> torch.Tensor | None:
    kept = [term for term in terms if term is not None]
    return torch.stack(kept).sum() if kept else None


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    """One optimiser step on `loss`; none when no term was computed (a client missing both private modalities
    in this batch), so that Adam's weight decay does not move untrained weights either."""
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        optimizer.step()


def discriminator_step(
    shared: SharedModels,
    private: ClientDiscriminators,
    batch: UtteranceTensors,
    optimizer: torch.optim.Optimizer,
    cfg: HyDiscGANConfig,
    noise: torch.Tensor,
) -> dict[str, float]:
    """Train E_a, E_v, D_a, D_v: real vs G-fake (when a loss term uses D, `cfg.uses_discriminator`), plus the
    contrastive term that shapes E's space (when lambda-contrastive > 0), each modality over the rows that hold
    it (`held_modalities`). Call only when one of them applies."""
    with torch.no_grad():
        fake_audio, fake_visual = shared.generator(batch.text, noise)
    held = held_modalities(batch, cfg)
    fakes, reals = {"audio": fake_audio, "visual": fake_visual}, {"audio": batch.audio, "visual": batch.visual}
    encoders = {"audio": private.encoder_audio, "visual": private.encoder_visual}
    loss = fake_audio.new_zeros(())
    metrics = {}
    if cfg.uses_discriminator and held:
        real_logits = dict(zip(("audio", "visual"), private.logits(batch.audio, batch.visual, batch.text)))
        fake_logits = dict(zip(("audio", "visual"), private.logits(fake_audio, fake_visual, batch.text)))
        loss_disc = _sum([real_fake_loss(real_logits[m], fake_logits[m], w) for m, w in held.items()])
        loss = loss + loss_disc
        metrics["loss_disc"] = loss_disc.item()
    if cfg.lambda_contrastive > 0:
        loss_nce = _sum([_contrastive(encoders[m](fakes[m]), encoders[m](reals[m]), cfg, w) for m, w in held.items()])
        if loss_nce is not None:
            loss = loss + cfg.lambda_contrastive * loss_nce
    _update(loss, optimizer)
    return metrics


def generator_alignment_step(
    shared: SharedModels,
    private: ClientDiscriminators,
    batch: UtteranceTensors,
    optimizer: torch.optim.Optimizer,
    cfg: HyDiscGANConfig,
    noise: torch.Tensor,
    anchors: list[torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    adversary: SpeakerAdversary | None = None,
    speakers: torch.Tensor | None = None,
) -> dict[str, float]:
    """Update G: fool D (adversarial) + contrastive alignment in E's space + reconstruction; a term whose
    weight is 0 (an ablation) is not computed.

    With a speaker `adversary` (and the batch's local `speakers` ids), the optimiser also trains the
    adversary on G's fakes; its gradient-reversal layer hands G the reversed, scaled gradient.
    """
    private.requires_grad_(False)  # D and E are fixed here: no gradients (nor Opacus per-sample ones) for them
    try:
        fake_audio, fake_visual = shared.generator(batch.text, noise)
        held = held_modalities(batch, cfg)  # each modality's terms over the rows that hold it
        fakes, reals = {"audio": fake_audio, "visual": fake_visual}, {"audio": batch.audio, "visual": batch.visual}
        encoders = {"audio": private.encoder_audio, "visual": private.encoder_visual}
        loss = fake_audio.new_zeros(())
        metrics = {}
        if cfg.lambda_adv > 0 and held:
            fake_logits = dict(zip(("audio", "visual"), private.logits(fake_audio, fake_visual, batch.text)))
            loss_adv = _sum([fool_loss(fake_logits[m], w) for m, w in held.items()])
            loss = loss + cfg.lambda_adv * loss_adv
            metrics["loss_gen_adv"] = loss_adv.item()
        if cfg.lambda_contrastive > 0:
            with torch.no_grad():
                real_embeddings = {m: encoders[m](reals[m]) for m in held}
            loss_nce = _sum([_contrastive(encoders[m](fakes[m]), real_embeddings[m], cfg, w) for m, w in held.items()])
            if loss_nce is not None:
                loss = loss + cfg.lambda_contrastive * loss_nce
                metrics["loss_contrastive"] = loss_nce.item()
        if cfg.lambda_recon > 0 and held:
            loss_recon = _sum([reconstruction_loss(fakes[m], reals[m], w) for m, w in held.items()])
            loss = loss + cfg.lambda_recon * loss_recon
            metrics["loss_recon"] = loss_recon.item()
        if adversary is not None:
            loss_speaker = F.cross_entropy(adversary(fake_audio, fake_visual), speakers)
            loss = loss + loss_speaker
            metrics["loss_speaker_adv"] = loss_speaker.item()
        if proximal_mu > 0.0 and anchors is not None:
            loss = loss + proximal_term(list(shared.generator.parameters()), anchors, proximal_mu)
        optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            loss.backward()
    finally:
        private.requires_grad_(True)
    if loss.requires_grad:
        optimizer.step()
    return metrics


def msa_step(
    shared: SharedModels,
    private: ClientDiscriminators | None,
    batch: UtteranceTensors,
    optimizer: torch.optim.Optimizer,
    cfg: HyDiscGANConfig,
    noise: torch.Tensor,
    label_kind: str,
    anchors: list[torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
    layout: VideoLayout | None = None,
    judges: tuple[str, ...] = ("audio", "visual"),
) -> dict[str, float]:
    """Train M on (t, G(t, z)) and fine-tune G; frozen D keeps the fakes on the real manifold (the D of each
    modality in `judges`: those the client holds, so a D never trained on real data judges nothing).

    G and D work per utterance; M reads the batch's whole videos through `layout` when it needs context.
    Ablations: "frozen-generator" runs G without gradients and drops the frozen-D term (it would only move
    G); "zero-fakes" feeds M zeros (`SharedModels.fakes`), so neither G nor D is involved."""
    with contextlib.nullcontext() if cfg.generator_trains_in_stage2 else torch.no_grad():
        fake_audio, fake_visual = shared.fakes(batch.text, noise)
    # M on (t, G(t)) as SharedModels.read_fakes reads it, through the family's loss hook (training.losses)
    inputs = (batch.steps.get("text", batch.text), fake_audio, fake_visual)
    terms = msa_objective(shared.msa, inputs, layout, None, batch.labels, label_kind)
    loss = sum(terms.values())
    metrics = {f"loss_{name}": term.item() for name, term in terms.items()}
    if private is not None and cfg.lambda_adv_msa > 0.0 and cfg.generator_trains_in_stage2 and judges:
        fake_logits = dict(zip(("audio", "visual"), private.logits(fake_audio, fake_visual, batch.text)))
        loss_adv = _sum([fool_loss(fake_logits[m]) for m in judges])
        loss = loss + cfg.lambda_adv_msa * loss_adv
        metrics["loss_gen_adv"] = loss_adv.item()
    if proximal_mu > 0.0 and anchors is not None:
        loss = loss + proximal_term(list(shared.parameters()), anchors, proximal_mu)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return metrics
