"""Adversarial identity unlearning: the gradient-reversal layer, the speaker adversary's wiring into G's
step, and that the adversary (like the discriminators) never leaves the client."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import handlers
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import make_synthetic
from hydiscgan_fl.models import (
    GradientReversal,
    build_client_discriminators,
    build_shared_models,
    build_speaker_adversary,
    reverse_gradient,
)
from hydiscgan_fl.training import generator_alignment_step, to_tensors
from strategies import HyDiscGANStrategy
from tests.grids import StaticGrid


def test_gradient_reversal_flips_and_scales_the_gradient_only():
    x = torch.randn(4, 3, requires_grad=True)
    weights = torch.randn(4, 3)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)  # identity forward
    (y * weights).sum().backward()
    torch.testing.assert_close(x.grad, -0.7 * weights)
    x.grad = None
    (GradientReversal(2.0)(x) * weights).sum().backward()
    torch.testing.assert_close(x.grad, -2.0 * weights)


def _grads(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def test_the_generator_gets_the_reversed_adversary_gradient_and_the_adversary_the_plain_one():
    cfg = HyDiscGANConfig(dataset="synthetic", dropout=0.0, adv_lambda=0.6)
    dataset = make_synthetic(seed=1, num_speakers=3, utterances_per_speaker=5)
    data = to_tensors(dataset, torch.device("cpu"))
    speakers = torch.as_tensor(np.unique(dataset.speakers, return_inverse=True)[1].reshape(-1))
    shared = build_shared_models(dataset.dims, cfg, 0)
    private = build_client_discriminators(dataset.dims, cfg, 1)
    adversary = build_speaker_adversary(dataset.dims, 3, cfg, 2)
    noise = torch.randn(len(data), cfg.noise_dim, generator=torch.Generator().manual_seed(0))
    frozen = torch.optim.SGD([*shared.generator.parameters(), *adversary.parameters()], lr=0.0)

    generator_alignment_step(shared, private, data, frozen, cfg, noise)
    without = _grads(shared.generator)
    metrics = generator_alignment_step(shared, private, data, frozen, cfg, noise, adversary=adversary,
                                       speakers=speakers)
    with_adversary, adversary_grads = _grads(shared.generator), _grads(adversary)
    assert metrics["loss_speaker_adv"] > 0

    # the adversary's cross-entropy differentiated plainly, through G and the adversary (no reversal)
    frozen.zero_grad()
    fake_audio, fake_visual = shared.generator(data.text, noise)
    plain_logits = adversary.net(torch.cat([fake_audio, fake_visual], dim=1))
    F.cross_entropy(plain_logits, speakers).backward()
    torch.testing.assert_close(with_adversary - without, -cfg.adv_lambda * _grads(shared.generator),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(adversary_grads, _grads(adversary))
    assert all(p.grad is None for p in private.parameters())  # D and E are fixed in G's step


@pytest.mark.parametrize("dp_unit", ["none", "utterance"])
def test_the_adversary_stays_on_the_client(task_identity, dp_unit):
    cfg = HyDiscGANConfig(dataset="synthetic", local_epochs=1, adv_lambda=1.0, dp_unit=dp_unit)
    dims = make_synthetic(seed=cfg.seed).dims
    shared = build_shared_models(dims, cfg, cfg.seed)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 4},
                      state=RecordDict(), run_config=cfg.to_run_config())
    strategy = HyDiscGANStrategy(rounds_align=1, node_settle_s=0.0)
    message = next(iter(strategy.configure_train(1, ArrayRecord(shared.state_dict()), ConfigRecord(),
                                                 StaticGrid([7]))))
    reply = handlers.train(message, context)

    assert set(reply.content["arrays"]) == set(message.content["arrays"])  # exactly G, nothing else
    adversary = context.state[handlers.ADVERSARY_STATE_KEY]
    assert adversary.keys() and not set(adversary.keys()) & set(reply.content["arrays"])
    metrics = reply.content["metrics"]
    assert "loss-speaker-adv" not in metrics  # computed from the client's speakers and audio/video
    if dp_unit == "utterance":
        assert metrics["epsilon-rdp"] > 0 and metrics["epsilon-prv"] > 0 and "wdp-loss" not in metrics
        assert handlers.LEDGER_STATE_KEY in context.state
    else:
        assert "epsilon-rdp" not in metrics
