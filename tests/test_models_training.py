"""Models and local training steps, without Flower."""

from __future__ import annotations

import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import load_dataset, make_synthetic
from hydiscgan_fl.models import build_client_discriminators, build_shared_models
from hydiscgan_fl.training import (
    alignment_error,
    discriminator_step,
    generator_alignment_step,
    local_alignment,
    msa_step,
    predict,
    to_tensors,
)
from hydiscgan_fl.training.losses import info_nce

CPU = torch.device("cpu")


def small_setup(cfg: HyDiscGANConfig):
    dataset = make_synthetic(seed=3, num_speakers=12, utterances_per_speaker=16)
    shared = build_shared_models(dataset.dims, cfg, 0)
    private = build_client_discriminators(dataset.dims, cfg, 1)
    return dataset, shared, private, to_tensors(dataset.split_subset("train"), CPU)


def test_shapes_and_text_only_inference():
    cfg = HyDiscGANConfig(msa_model="mlp")  # the per-utterance steps; context-gru: test_registry_videos
    dataset, shared, private, data = small_setup(cfg)
    fake_audio, fake_visual = shared.generator(data.text)
    assert fake_audio.shape == data.audio.shape and fake_visual.shape == data.visual.shape
    real_logit, _ = private.logits(data.audio, data.visual, data.text)
    assert real_logit.shape == (len(data),)
    assert predict(shared, data.text, dataset.label_kind).shape == (len(data),)


def test_info_nce_prefers_matching_pairs():
    real = torch.randn(8, 5)
    assert info_nce(real, real, 0.1) < info_nce(torch.randn(8, 5), real, 0.1)


def test_each_step_lowers_its_loss_on_a_fixed_batch():
    cfg = HyDiscGANConfig(msa_model="mlp", dropout=0.0, lr_generator=3e-3, lr_discriminator=3e-3, lr_msa=3e-3)
    dataset, shared, private, data = small_setup(cfg)
    batch = data.rows(torch.arange(32))
    noise = torch.zeros(32, cfg.noise_dim)
    opt_d = torch.optim.Adam(private.parameters(), lr=3e-3)
    first_d = [discriminator_step(shared, private, batch, opt_d, cfg, noise)["loss_disc"] for _ in range(30)]
    opt_g = torch.optim.Adam(shared.generator.parameters(), lr=3e-3)
    first_g = [generator_alignment_step(shared, private, batch, opt_g, cfg, noise)["loss_recon"] for _ in range(30)]
    opt_m = torch.optim.Adam(shared.parameters(), lr=3e-3)
    task = [msa_step(shared, None, batch, opt_m, cfg, noise, dataset.label_kind)["loss_task"] for _ in range(30)]
    assert first_d[-1] < first_d[0]
    assert first_g[-1] < first_g[0]
    assert task[-1] < 0.5 * task[0]


def test_alignment_between_generated_and_real_features_improves_on_real_mosi():
    cfg = HyDiscGANConfig()
    mosi = load_dataset("mosi-bclstm", cfg.resolved_data_dir(), 0)
    train = to_tensors(mosi.split_subset("train"), CPU)
    test = to_tensors(mosi.split_subset("test"), CPU)
    shared = build_shared_models(mosi.dims, cfg, 0)
    private = build_client_discriminators(mosi.dims, cfg, 1)
    before_train, before_test = alignment_error(shared, train), alignment_error(shared, test)
    local_alignment(shared, private, train, cfg, epochs=3, seed=0)
    assert alignment_error(shared, train) < 0.95 * before_train
    assert alignment_error(shared, test) < before_test  # held-out speakers too


def test_private_models_never_share_parameters_with_shared_models():
    cfg = HyDiscGANConfig()
    _, shared, private, _ = small_setup(cfg)
    assert not {id(p) for p in shared.parameters()} & {id(p) for p in private.parameters()}
