"""One function per local training step (each a single optimiser update on one minibatch).

Stage 1 (modal alignment) alternates `discriminator_step` and `generator_alignment_step`;
stage 2 (MSA) runs `msa_step` with the client's discriminators frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.models import ClientDiscriminators, SharedModels
from hydiscgan_fl.training.data import UtteranceTensors
from hydiscgan_fl.training.losses import fool_loss, info_nce, proximal_term, real_fake_loss, sentiment_loss


def discriminator_step(
    shared: SharedModels,
    private: ClientDiscriminators,
    batch: UtteranceTensors,
    optimizer: torch.optim.Optimizer,
    cfg: HyDiscGANConfig,
    noise: torch.Tensor,
) -> dict[str, float]:
    """Train E_a, E_v, D_a, D_v: real vs G-fake, plus the contrastive term that shapes E's space."""
    with torch.no_grad():
        fake_audio, fake_visual = shared.generator(batch.text, noise)
    real_a, real_v = private.logits(batch.audio, batch.visual, batch.text)
    fake_a, fake_v = private.logits(fake_audio, fake_visual, batch.text)
    loss_disc = real_fake_loss(real_a, fake_a) + real_fake_loss(real_v, fake_v)
    loss_nce = info_nce(private.encoder_audio(fake_audio), private.encoder_audio(batch.audio), cfg.temperature) + (
        info_nce(private.encoder_visual(fake_visual), private.encoder_visual(batch.visual), cfg.temperature)
    )
    loss = loss_disc + cfg.lambda_contrastive * loss_nce
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss_disc": loss_disc.item()}


def generator_alignment_step(
    shared: SharedModels,
    private: ClientDiscriminators,
    batch: UtteranceTensors,
    optimizer: torch.optim.Optimizer,
    cfg: HyDiscGANConfig,
    noise: torch.Tensor,
    anchors: list[torch.Tensor] | None = None,
    proximal_mu: float = 0.0,
) -> dict[str, float]:
    """Update G only: fool D (adversarial) + contrastive alignment in E's space + reconstruction."""
    fake_audio, fake_visual = shared.generator(batch.text, noise)
    fake_a, fake_v = private.logits(fake_audio, fake_visual, batch.text)
    loss_adv = fool_loss(fake_a) + fool_loss(fake_v)
    with torch.no_grad():
        real_emb_a = private.encoder_audio(batch.audio)
        real_emb_v = private.encoder_visual(batch.visual)
    loss_nce = info_nce(private.encoder_audio(fake_audio), real_emb_a, cfg.temperature) + (
        info_nce(private.encoder_visual(fake_visual), real_emb_v, cfg.temperature)
    )
    loss_recon = F.mse_loss(fake_audio, batch.audio) + F.mse_loss(fake_visual, batch.visual)
    loss = cfg.lambda_adv * loss_adv + cfg.lambda_contrastive * loss_nce + cfg.lambda_recon * loss_recon
    if proximal_mu > 0.0 and anchors is not None:
        loss = loss + proximal_term(list(shared.generator.parameters()), anchors, proximal_mu)
    optimizer.zero_grad(set_to_none=True)
    private.zero_grad(set_to_none=True)  # D's gradients from this loss must not leak into its next step
    loss.backward()
    optimizer.step()
    return {"loss_gen_adv": loss_adv.item(), "loss_contrastive": loss_nce.item(), "loss_recon": loss_recon.item()}


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
) -> dict[str, float]:
    """Train M on (t, G(t, z)) and fine-tune G; frozen D keeps the fakes on the real manifold."""
    fake_audio, fake_visual = shared.generator(batch.text, noise)
    outputs = shared.msa(batch.text, fake_audio, fake_visual)
    loss_task = sentiment_loss(outputs, batch.labels, label_kind)
    loss = loss_task
    metrics = {"loss_task": loss_task.item()}
    if private is not None and cfg.lambda_adv_msa > 0.0:
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
