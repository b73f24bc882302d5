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
)


def _contrastive(fake: torch.Tensor, real: torch.Tensor, cfg: HyDiscGANConfig) -> torch.Tensor:
    """InfoNCE over the batch, or its per-utterance form when each utterance is a DP record."""
    if cfg.dp_unit == "utterance":
        return per_utterance_alignment(fake, real, cfg.temperature)
    return info_nce(fake, real, cfg.temperature)


def discriminator_step(
    shared: SharedModels,
    private: ClientDiscriminators,
    batch: UtteranceTensors,
    optimizer: torch.optim.Optimizer,
    cfg: HyDiscGANConfig,
    noise: torch.Tensor,
) -> dict[str, float]:
    """Train E_a, E_v, D_a, D_v: real vs G-fake (when a loss term uses D, `cfg.uses_discriminator`), plus the
    contrastive term that shapes E's space (when lambda-contrastive > 0). Call only when one of them applies."""
    with torch.no_grad():
        fake_audio, fake_visual = shared.generator(batch.text, noise)
    loss = fake_audio.new_zeros(())
    metrics = {}
    if cfg.uses_discriminator:
        real_a, real_v = private.logits(batch.audio, batch.visual, batch.text)
        fake_a, fake_v = private.logits(fake_audio, fake_visual, batch.text)
        loss_disc = real_fake_loss(real_a, fake_a) + real_fake_loss(real_v, fake_v)
        loss = loss + loss_disc
        metrics["loss_disc"] = loss_disc.item()
    if cfg.lambda_contrastive > 0:
        loss_nce = _contrastive(private.encoder_audio(fake_audio), private.encoder_audio(batch.audio), cfg) + (
            _contrastive(private.encoder_visual(fake_visual), private.encoder_visual(batch.visual), cfg)
        )
        loss = loss + cfg.lambda_contrastive * loss_nce
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
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
        loss = fake_audio.new_zeros(())
        metrics = {}
        if cfg.lambda_adv > 0:
            fake_a, fake_v = private.logits(fake_audio, fake_visual, batch.text)
            loss_adv = fool_loss(fake_a) + fool_loss(fake_v)
            loss = loss + cfg.lambda_adv * loss_adv
            metrics["loss_gen_adv"] = loss_adv.item()
        if cfg.lambda_contrastive > 0:
            with torch.no_grad():
                real_emb_a = private.encoder_audio(batch.audio)
                real_emb_v = private.encoder_visual(batch.visual)
            loss_nce = _contrastive(private.encoder_audio(fake_audio), real_emb_a, cfg) + (
                _contrastive(private.encoder_visual(fake_visual), real_emb_v, cfg)
            )
            loss = loss + cfg.lambda_contrastive * loss_nce
            metrics["loss_contrastive"] = loss_nce.item()
        if cfg.lambda_recon > 0:
            loss_recon = F.mse_loss(fake_audio, batch.audio) + F.mse_loss(fake_visual, batch.visual)
            loss = loss + cfg.lambda_recon * loss_recon
            metrics["loss_recon"] = loss_recon.item()
        if adversary is not None:
            loss_speaker = F.cross_entropy(adversary(fake_audio, fake_visual), speakers)
            loss = loss + loss_speaker
            metrics["loss_speaker_adv"] = loss_speaker.item()
        if proximal_mu > 0.0 and anchors is not None:
            loss = loss + proximal_term(list(shared.generator.parameters()), anchors, proximal_mu)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
    finally:
        private.requires_grad_(True)
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
) -> dict[str, float]:
    """Train M on (t, G(t, z)) and fine-tune G; frozen D keeps the fakes on the real manifold.

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
    if private is not None and cfg.lambda_adv_msa > 0.0 and cfg.generator_trains_in_stage2:
        fake_a, fake_v = private.logits(fake_audio, fake_visual, batch.text)
        loss_adv = fool_loss(fake_a) + fool_loss(fake_v)
        loss = loss + cfg.lambda_adv_msa * loss_adv
        metrics["loss_gen_adv"] = loss_adv.item()
    if proximal_mu > 0.0 and anchors is not None:
        loss = loss + proximal_term(list(shared.parameters()), anchors, proximal_mu)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return metrics
