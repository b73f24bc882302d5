"""The seed papers' fusion models (lmr-cbt, cfn-sr and their ablations): shapes, masks, parameter counts,
learning, batch independence, simulated misalignment, and short federated runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from examples.in_process import run_in_process
from hydiscgan_fl import server_run
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import load_dataset
from hydiscgan_fl.data.misalign import Misalignment
from hydiscgan_fl.models import MSA_MODELS, StepTensors, VideoLayout, parameter_counts
from hydiscgan_fl.training import TensorView, tensor_view, to_tensors

FUSION_MODELS = ("lmr-cbt", "lmr-cbt-nocross", "cfn-sr", "cfn-sr-nores")
DIMS = {"text": 16, "audio": 12, "visual": 10}
MOSI_DIMS = {"text": 100, "audio": 73, "visual": 100}


def _model(name: str, dims: dict[str, int] = DIMS) -> torch.nn.Module:
    torch.manual_seed(0)
    return MSA_MODELS.get(name).build(dims, HyDiscGANConfig(msa_model=name)).eval()


def _text_only(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MSA_MODELS.get(name).build_text_only(DIMS["text"], HyDiscGANConfig(msa_model=name)).eval()


def _steps(n: int, steps: int, dim: int, lengths: list[int], seed: int) -> StepTensors:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, steps, dim, generator=g)
    lengths_t = torch.tensor(lengths)
    values[torch.arange(steps)[None, :] >= lengths_t[:, None]] = 0.0
    return StepTensors(values, lengths_t)


def _padded(steps: StepTensors, extra: int, seed: int) -> StepTensors:
    """The same sequences with more padding, filled with noise (padding must be ignored, whatever it holds)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.cat([steps.values, torch.randn(len(steps), extra, steps.dim, generator=g)], dim=1)
    values[torch.arange(values.shape[1])[None, :] >= steps.lengths[:, None]] = 7.0
    return StepTensors(values, steps.lengths)


def _inputs(n: int = 5):
    return (_steps(n, 9, DIMS["text"], [3, 9, 1, 5, 0][:n], 1), _steps(n, 14, DIMS["audio"], [14, 2, 7, 1, 9][:n], 2),
            _steps(n, 6, DIMS["visual"], [6, 3, 1, 4, 2][:n], 3))


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_shapes_per_utterance_per_video_and_with_fake_vectors(name: str) -> None:
    model, text_only = _model(name), _text_only(name)
    text, audio, visual = _inputs()
    assert model(text, audio, visual).shape == (5,) and text_only(text).shape == (5,)
    # HyDiscGAN: G's fakes are one pooled vector per utterance (a sequence of one step for these models)
    fake_audio, fake_visual = torch.randn(5, DIMS["audio"]), torch.randn(5, DIMS["visual"])
    assert torch.isfinite(model(text, fake_audio, fake_visual)).all()
    # utterance-vector data (bundled MOSI): the utterances of a video are the steps, one output per utterance
    layout = VideoLayout.of(np.array([0, 0, 1, 1, 1]), np.array([1, 0, 0, 2, 1]))
    vectors = [torch.randn(5, DIMS[m]) for m in ("text", "audio", "visual")]
    assert model(*vectors, layout).shape == (5,) and text_only(vectors[0], layout).shape == (5,)


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_padding_never_changes_an_output(name: str) -> None:
    model, text_only = _model(name), _text_only(name)
    text, audio, visual = _inputs()
    with torch.no_grad():
        before = model(text, audio, visual)
        after = model(_padded(text, 4, 4), _padded(audio, 3, 5), _padded(visual, 2, 6))
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(text_only(_padded(text, 4, 4)), text_only(text), atol=1e-5, rtol=1e-5)
        # per video: a video of 2 utterances alone, and padded beside a video of 4 in one batch
        vectors = [torch.randn(6, DIMS[m]) for m in ("text", "audio", "visual")]
        alone = model(*(v[:2] for v in vectors), VideoLayout.of(np.zeros(2), np.arange(2)))
        together = model(*vectors, VideoLayout.of(np.array([0, 0, 1, 1, 1, 1]), np.array([0, 1, 0, 1, 2, 3])))
        torch.testing.assert_close(together[:2], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["cfn-sr", "cfn-sr-nores"])
def test_cfn_sr_output_does_not_depend_on_the_other_samples_of_the_batch(name: str) -> None:
    """Attention is normalised over the steps of each sequence (the public code sums it over the batch)."""
    model = _model(name)
    text, audio, visual = _inputs()
    with torch.no_grad():
        batch = model(text, audio, visual)
        for row in range(5):
            index = torch.tensor([row])
            torch.testing.assert_close(model(text[index], audio[index], visual[index]), batch[index],
                                       atol=1e-5, rtol=1e-5)
        shuffled = torch.tensor([4, 2, 0, 1, 3])
        torch.testing.assert_close(model(text[shuffled], audio[shuffled], visual[shuffled]), batch[shuffled],
                                   atol=1e-5, rtol=1e-5)


def test_parameter_counts_at_default_width() -> None:
    """lmr-cbt stays within 0.5M parameters at the default width (hidden-dim 128: width 64, 4 layers)."""
    counts = {}
    for dims in (MOSI_DIMS, {"text": 16, "audio": 12, "visual": 12}, {"text": 768, "audio": 5, "visual": 20}):
        for name in FUSION_MODELS:
            counts[(name, dims["text"])] = parameter_counts(dims, HyDiscGANConfig(msa_model=name))["msa"]
    print("msa parameters (model, text dim):", counts)
    assert all(count <= 500_000 for (name, _), count in counts.items() if name.startswith("lmr-cbt"))
    assert counts[("lmr-cbt", 100)] > counts[("lmr-cbt-nocross", 100)]  # the cross-modal blocks


@pytest.mark.parametrize("name", FUSION_MODELS)
def test_a_loss_falls_on_a_small_batch(name: str) -> None:
    model = _model(name).train()
    text, audio, visual = _inputs()
    target = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.l1_loss(model(text, audio, visual), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_misalignment_is_seeded_per_stream_and_keeps_a_step() -> None:
    misalign = Misalignment(rate=0.5, shift=2, seed=3)
    values = np.arange(2 * 6 * 1, dtype=np.float32).reshape(2, 6, 1) + 1
    lengths = np.array([6, 4])
    out, new_lengths = misalign.sequences(values, lengths, np.array(["a", "b"]), "audio")
    alone, alone_lengths = misalign.sequences(values[1:], lengths[1:], np.array(["b"]), "audio")
    np.testing.assert_array_equal(out[1:], alone)  # the same utterance, the same draw, wherever it lies
    assert (1 <= new_lengths).all() and (new_lengths <= lengths).all() and alone_lengths[0] == new_lengths[1]
    for row in range(2):  # kept steps are original steps, padding is zero
        kept = out[row, : new_lengths[row], 0]
        assert set(kept.tolist()) <= set(values[row, : lengths[row], 0].tolist())
        assert (out[row, new_lengths[row]:] == 0).all()
    everything = Misalignment(rate=0.99, shift=0, seed=0).sequences(values, lengths, np.array(["a", "b"]), "v")
    assert (everything[1] == 1).all()
    assert not Misalignment(0.0, 0, 0).active


def test_misalignment_of_utterance_vectors_moves_vectors_within_a_video() -> None:
    videos, positions = np.array(["v", "v", "v", "w", "v"]), np.array([0, 2, 1, 0, 3])
    values = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 3), dtype=np.float32)
    out = Misalignment(rate=0.3, shift=2, seed=1).vectors(values, videos, positions, "visual")
    assert set(out[videos == "v", 0].tolist()) <= {0.0, 1.0, 2.0, 4.0}  # only video v's own vectors
    np.testing.assert_array_equal(out[3], values[3])  # a one-utterance video has nothing to slip
    assert not np.array_equal(out, values)


def test_misalign_options_reach_the_tensors_of_every_split() -> None:
    dataset = load_dataset("synthetic-seq", None, 0)
    cfg = HyDiscGANConfig(dataset="synthetic-seq", msa_model="lmr-cbt", misalign_rate=0.3, misalign_shift=2)
    view = tensor_view(cfg)
    assert view.keep_steps and view.misalignment == Misalignment(0.3, 2, 0)
    plain = to_tensors(dataset, torch.device("cpu"), TensorView(keep_steps=True))
    slipped = to_tensors(dataset, torch.device("cpu"), view)
    assert (slipped.steps["audio"].lengths <= plain.steps["audio"].lengths).all()
    assert (slipped.steps["audio"].lengths < plain.steps["audio"].lengths).float().mean() > 0.5
    torch.testing.assert_close(slipped.steps["text"].values, plain.steps["text"].values)  # text is never moved
    assert tensor_view(HyDiscGANConfig()).misalignment is None


@pytest.mark.parametrize("name", ["lmr-cbt", "cfn-sr"])
@pytest.mark.parametrize("dataset", ["synthetic-seq", "mosi-bclstm"])
def test_a_short_federated_run(tmp_path: Path, name: str, dataset: str) -> None:
    """HyDiscGAN with the model as M, through the ServerApp and ClientApps (small width for speed)."""
    run = run_in_process({"dataset": dataset, "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1,
                          "batch-size": 64, "hidden-dim": 32, "msa-model": name, "output-dir": str(tmp_path)},
                         num_nodes=2)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["selected_round"] in (1, 2) and summary["text_only_selected_epoch"] == 1
    assert np.isfinite(summary["f1"]) and np.isfinite(summary["text_only_f1"])


@pytest.mark.parametrize("name", ["lmr-cbt-nocross", "cfn-sr-nores"])
def test_fedavg_multimodal_with_the_ablations_and_misalignment(tmp_path: Path, name: str) -> None:
    run = run_in_process({"dataset": "synthetic-seq", "method": "fedavg-multimodal", "rounds-align": 0,
                          "rounds-msa": 1, "local-epochs": 1, "batch-size": 64, "hidden-dim": 32, "msa-model": name,
                          "misalign-rate": 0.2, "misalign-shift": 1, "output-dir": str(tmp_path)}, num_nodes=2)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["selected_round"] == 1 and np.isfinite(summary["mae"])



def test_the_server_trains_a_step_reading_m_on_its_text_steps(tmp_path: Path, monkeypatch) -> None:
    """msa-site "server": stage 2 on the server's text, which lmr-cbt reads as word steps (as at evaluation)."""
    cfg = HyDiscGANConfig(dataset="synthetic-seq", msa_site="server", msa_model="lmr-cbt", hidden_dim=32,
                          rounds_align=1, rounds_msa=1, local_epochs=1, output_dir=str(tmp_path))
    run = server_run.ServerRun(cfg)
    seen = []
    monkeypatch.setattr(server_run, "local_msa", lambda shared, private, data, *args, **kwargs: seen.append(
        data.msa_input("text")) or {})
    run.train_msa(run.initial_state(), 2)
    assert isinstance(seen[0], StepTensors) and len(seen[0]) == len(run.train.text)
