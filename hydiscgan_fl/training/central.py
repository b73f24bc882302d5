"""The benchmark's central methods: all training utterances in one place, no federation (no Flower).

Every method gets the epoch budget of HyDiscGAN's MSA stage, rounds-msa x local-epochs epochs over
the training data (the alignment stage is extra for the GAN methods):

- ``text-only``: TextOnlyModel on text (the server's own baseline, ``train_text_only``);
- ``central-multimodal``: M(t, a, v) on real per-speaker standardised audio/visual at train and test
  time, the privacy-violating upper bound;
- ``hydiscgan-central``: HyDiscGAN's models and losses on the pooled data with the federated schedule,
  rounds-align rounds of ``local_alignment`` then rounds-msa rounds of ``local_msa``, local-epochs
  epochs each (one client holding every utterance); text only at test time.

Like the federated server, every method is evaluated on the validation speakers (carved from the
training speakers, valid-fraction) and on the test speakers after each epoch group (local-epochs epochs)
or round, and reports the test metrics of the step that is best on validation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import MultimodalDataset
from hydiscgan_fl.metrics import ValidationSelection, summary_metrics
from hydiscgan_fl.models import (
    ConditionalGenerator,
    VideoLayout,
    build_client_discriminators,
    build_shared_models,
    needs_context,
)
from hydiscgan_fl.training.data import UtteranceTensors, pick_device, tensor_view, to_tensors
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
    """Test metrics at the step (epoch or round) best on validation (with test subsets, also the subsets'
    valid_* metrics there), that step, what the method consumes at inference for each training utterance
    (for hydiscgan-central: G(t, 0) of the selected round), and the validation metrics at that step."""

    metrics: dict[str, float]
    selected_step: int
    inference_features: np.ndarray
    valid_metrics: dict[str, float] = field(default_factory=dict)


def real_features(data: UtteranceTensors) -> np.ndarray:
    """Real (per-speaker standardised) audio‖visual: what the multimodal methods consume at inference."""
    return torch.cat([data.audio, data.visual], dim=1).cpu().numpy()


@torch.no_grad()
def generated_features(generator: ConditionalGenerator, text: torch.Tensor) -> np.ndarray:
    """G(t, 0) as fake audio‖visual: what the HyDiscGAN methods consume at inference."""
    generator.eval()
    fake_audio, fake_visual = generator(text)
    return torch.cat([fake_audio, fake_visual], dim=1).cpu().numpy()


def run_central(method: str, cfg: HyDiscGANConfig, progress: Progress | None = None,
                test_subsets: Mapping[str, tuple[str, ...]] | None = None,
                dataset: MultimodalDataset | None = None) -> CentralResult:
    """Train and test one central method on cfg.dataset with seed cfg.seed. `test_subsets` (name ->
    modalities) also tests each step with only those modalities present (`UtteranceTensors.only`), as metrics
    `<metric>@<name>`, and validates it likewise (`valid_<metric>@<name>`, at the same selected step); a method
    that predicts from text alone scores NaN where the subset has no text. `dataset`, when given, replaces
    cfg.dataset's (a diagnostic that changes its labels: orchestration.lookup_probe)."""
    if method not in CENTRAL_METHODS:
        raise ValueError(f"unknown central method {method!r}; use one of {list(CENTRAL_METHODS)}")
    dataset = cfg.load_dataset() if dataset is None else dataset
    device = pick_device()
    train = to_tensors(dataset.split_subset("train"), device, tensor_view(cfg))
    valid = to_tensors(dataset.split_subset("valid"), device, tensor_view(cfg))
    test = to_tensors(dataset.split_subset("test"), device, tensor_view(cfg))
    label_kind = dataset.label_kind
    epochs = cfg.rounds_msa * cfg.local_epochs
    selection = ValidationSelection(label_kind)
    context = needs_context(cfg)  # M reads whole videos: video batches in training, whole videos at evaluation
    videos = Videos.of(dataset.split_subset("train")) if context else None
    valid_layout, test_layout = (full_layout(Videos.of(dataset.split_subset(split)) if context else None, device)
                                 for split in ("valid", "test"))
    Predict = Callable[[UtteranceTensors, VideoLayout | None], np.ndarray]  # (split, its layout) -> predictions

    def report(unit: str, done: int, total: int, predict_on: Predict) -> bool:
        """Evaluate one step; True when it is the best on validation so far."""
        # what is kept at the selected step: the test metrics, and with test subsets each subset's test and valid_*
        test_metrics = summary_metrics(predict_on(test, test_layout), test.labels.cpu().numpy(), label_kind)
        valid_metrics = summary_metrics(predict_on(valid, valid_layout), valid.labels.cpu().numpy(), label_kind)
        for name, modalities in (test_subsets or {}).items():
            for prefix, split, layout in (("", test, test_layout), ("valid_", valid, valid_layout)):
                subset = summary_metrics(predict_on(split.only(modalities), layout), split.labels.cpu().numpy(),
                                         label_kind) if method == "central-multimodal" or "text" in modalities \
                    else dict.fromkeys(test_metrics, np.nan)
                test_metrics.update({f"{prefix}{metric}@{name}": value for metric, value in subset.items()})
        if progress is not None:
            progress(unit, done, total, test_metrics)
        return selection.offer(done, valid_metrics, test_metrics)

    def per_epoch_group(predict_split: Callable[[torch.nn.Module, UtteranceTensors, VideoLayout | None], np.ndarray]):
        def on_epoch(epoch: int, model: torch.nn.Module) -> None:
            if epoch % cfg.local_epochs == 0 or epoch == epochs:
                report("epoch", epoch, epochs, lambda split, layout: predict_split(model, split, layout))
        return on_epoch

    def result(features: np.ndarray) -> CentralResult:
        return CentralResult(dict(selection.test), int(selection.step), features, dict(selection.valid))

    if method == "text-only":
        train_text_only(train.msa_input("text"), train.labels, label_kind, cfg, epochs, cfg.seed, videos=videos,
                        on_epoch=per_epoch_group(lambda model, split, layout: predict_text_only(
                            model, split.msa_input("text"), label_kind, layout)))
        return result(train.text.cpu().numpy())

    shared = build_shared_models(dataset.dims, cfg, cfg.seed).to(device)
    if method == "central-multimodal":
        train_multimodal(shared.msa, train, cfg, epochs, cfg.seed, label_kind, videos=videos,
                         on_epoch=per_epoch_group(lambda msa, split, layout: predict_multimodal(msa, split, label_kind,
                                                                                                layout)))
        return result(real_features(train))

    # hydiscgan-central: the federated schedule with one client that holds every training utterance.
    private = build_client_discriminators(dataset.dims, cfg, cfg.seed * 1_000_003).to(device)
    for server_round in range(1, cfg.total_rounds + 1):
        seed = cfg.seed * 1_000_003 + server_round * 7919
        if cfg.stage_of_round(server_round) == "align":
            local_alignment(shared, private, train, cfg, cfg.local_epochs, seed)
        else:
            # no frozen-D term without a D trained in stage 1 (rounds-align 0), as on a federated client
            local_msa(shared, private if cfg.rounds_align else None, train, cfg, cfg.local_epochs, seed, label_kind,
                      videos=videos)
        if report("round", server_round, cfg.total_rounds,
                  lambda split, layout: predict(shared, split.text, label_kind, layout, split.steps.get("text"),
                                                cfg.inference_draws, cfg.seed)):
            selected_generator = copy.deepcopy(shared.generator.state_dict())
    shared.generator.load_state_dict(selected_generator)
    return result(generated_features(shared.generator, train.text))
