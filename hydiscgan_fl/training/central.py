"""The benchmark's central methods: all training utterances in one place, no federation (no Flower).

Every method gets the epoch budget of HyDiscGAN's MSA stage, rounds-msa x local-epochs epochs over
the training data (the alignment stage is extra for the GAN methods):

- ``text-only``: TextOnlyModel on text (the server's own baseline, ``train_text_only``);
- ``central-multimodal``: M(t, a, v) on real per-speaker standardised audio/visual at train and test
  time, the privacy-violating upper bound;
- ``hydiscgan-central``: HyDiscGAN's models and losses on the pooled data with the federated schedule,
  rounds-align rounds of ``local_alignment`` then rounds-msa rounds of ``local_msa``, local-epochs
  epochs each (one client holding every utterance); text only at test time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.metrics import summary_metrics
from hydiscgan_fl.models import ConditionalGenerator, build_client_discriminators, build_shared_models, needs_context
from hydiscgan_fl.training.data import UtteranceTensors, pick_device, to_tensors
from hydiscgan_fl.training.loops import (
    local_alignment,
    local_msa,
    predict,
    predict_multimodal,
    predict_text_only,
    train_multimodal,
    train_text_only,
)
from hydiscgan_fl.training.videos import Videos, full_layout

CENTRAL_METHODS = ("text-only", "central-multimodal", "hydiscgan-central")

# progress(unit, done, total, test metrics): unit is "epoch" or "round", called once per epoch group.
Progress = Callable[[str, int, int, dict[str, float]], None]


@dataclass(frozen=True)
class CentralResult:
    """Final test metrics, and what the method consumes at inference for each training utterance."""

    metrics: dict[str, float]
    inference_features: np.ndarray


def real_features(data: UtteranceTensors) -> np.ndarray:
    """Real (per-speaker standardised) audio‖visual: what the multimodal methods consume at inference."""
    return torch.cat([data.audio, data.visual], dim=1).cpu().numpy()


@torch.no_grad()
def generated_features(generator: ConditionalGenerator, text: torch.Tensor) -> np.ndarray:
    """G(t, 0) as fake audio‖visual: what the HyDiscGAN methods consume at inference."""
    generator.eval()
    fake_audio, fake_visual = generator(text)
    return torch.cat([fake_audio, fake_visual], dim=1).cpu().numpy()


def run_central(method: str, cfg: HyDiscGANConfig, progress: Progress | None = None) -> CentralResult:
    """Train and test one central method on cfg.dataset with seed cfg.seed."""
    if method not in CENTRAL_METHODS:
        raise ValueError(f"unknown central method {method!r}; use one of {list(CENTRAL_METHODS)}")
    dataset = cfg.load_dataset()
    device = pick_device()
    train = to_tensors(dataset.split_subset("train"), device)
    test = to_tensors(dataset.split_subset("test"), device)
    label_kind = dataset.label_kind
    test_labels = test.labels.cpu().numpy()
    epochs = cfg.rounds_msa * cfg.local_epochs
    final: dict[str, float] = {}
    context = needs_context(cfg)  # M reads whole videos: video batches in training, whole test videos
    videos = Videos.of(dataset.split_subset("train")) if context else None
    test_layout = full_layout(Videos.of(dataset.split_subset("test")) if context else None, device)

    def report(unit: str, done: int, total: int, preds: np.ndarray) -> None:
        final.clear()
        final.update(summary_metrics(preds, test_labels, label_kind))
        if progress is not None:
            progress(unit, done, total, dict(final))

    def per_epoch_group(predict_test: Callable[[torch.nn.Module], np.ndarray]):
        def on_epoch(epoch: int, model: torch.nn.Module) -> None:
            if epoch % cfg.local_epochs == 0 or epoch == epochs:
                report("epoch", epoch, epochs, predict_test(model))
        return on_epoch

    if method == "text-only":
        train_text_only(train.text, train.labels, label_kind, cfg, epochs, cfg.seed, videos=videos,
                        on_epoch=per_epoch_group(lambda model: predict_text_only(model, test.text, label_kind,
                                                                                 test_layout)))
        return CentralResult(final, train.text.cpu().numpy())

    shared = build_shared_models(dataset.dims, cfg, cfg.seed).to(device)
    if method == "central-multimodal":
        train_multimodal(shared.msa, train, cfg, epochs, cfg.seed, label_kind, videos=videos,
                         on_epoch=per_epoch_group(lambda msa: predict_multimodal(msa, test, label_kind, test_layout)))
        return CentralResult(final, real_features(train))

    # hydiscgan-central: the federated schedule with one client that holds every training utterance.
    private = build_client_discriminators(dataset.dims, cfg, cfg.seed * 1_000_003).to(device)
    for server_round in range(1, cfg.total_rounds + 1):
        seed = cfg.seed * 1_000_003 + server_round * 7919
        if cfg.stage_of_round(server_round) == "align":
            local_alignment(shared, private, train, cfg, cfg.local_epochs, seed)
        else:
            local_msa(shared, private, train, cfg, cfg.local_epochs, seed, label_kind, videos=videos)
        report("round", server_round, cfg.total_rounds, predict(shared, test.text, label_kind, test_layout))
    return CentralResult(final, generated_features(shared.generator, train.text))
