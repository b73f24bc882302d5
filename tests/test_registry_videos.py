"""Model registry, the video structure of datasets, video batches and the context-gru family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from examples.my_model import LINEAR, LinearFusion
from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError, load_partition, make_synthetic, partition_indices, save_partition
from hydiscgan_fl.data.dataset import MultimodalDataset
from hydiscgan_fl.models import (
    MSA_MODELS,
    SHARED_COMPONENTS,
    VideoLayout,
    build_shared_models,
    build_text_only_model,
    parameter_counts,
)
from hydiscgan_fl.models.context import ContextGRUMSA, ContextGRUTextOnly
from hydiscgan_fl.training import msa_step, to_tensors
from hydiscgan_fl.training.videos import Videos

DIMS = {"text": 6, "audio": 4, "visual": 5}
CONTEXT = HyDiscGANConfig(msa_model="context-gru", hidden_dim=16, dropout=0.0)


# ---------------------------------------------------------------- registry
def test_models_by_name_and_their_text_only_family_member():
    assert not MSA_MODELS.get("mlp").needs_context and MSA_MODELS.get("context-gru").needs_context
    shared = build_shared_models(DIMS, CONTEXT, 0)
    assert isinstance(shared.msa, ContextGRUMSA) and shared.needs_context
    assert isinstance(build_text_only_model(6, CONTEXT), ContextGRUTextOnly)
    assert {key.split(".")[0] for key in shared.state_dict()} == set(SHARED_COMPONENTS)
    counts = parameter_counts(DIMS, CONTEXT)
    assert set(counts) == {"generator", "msa", "text_only", "client_private"}
    assert counts["msa"] == sum(p.numel() for p in shared.msa.parameters())


def test_a_model_by_import_path():
    cfg = HyDiscGANConfig(msa_model="examples.my_model:LINEAR")
    assert isinstance(build_shared_models(DIMS, cfg, 0).msa, LinearFusion)
    assert MSA_MODELS.get("examples.my_model:LINEAR") is LINEAR


@pytest.mark.parametrize("name, message", [
    ("nope", r"unknown msa-model 'nope'; use one of \['cfn-sr', 'cfn-sr-nores', 'context-gru', 'fsrf', "
             r"'fsrf-dropout', 'fsrf-nodistill', 'fsrf-nofact', 'lmr-cbt', 'lmr-cbt-nocross', 'mlp'\]"),
    ("examples.my_model:Nope", r"msa-model 'examples.my_model:Nope' cannot be imported"),
    ("examples.my_model:LinearFusion", r"msa-model 'examples.my_model:LinearFusion' is a type, not a .*MSAFamily"),
])
def test_an_unknown_model_is_a_clear_error_naming_the_key(name, message):
    with pytest.raises(ValueError, match=message):
        build_shared_models(DIMS, HyDiscGANConfig(msa_model=name), 0)


def test_generator_model_and_malformed_names():
    with pytest.raises(ValueError, match=r"unknown generator-model 'gan2'"):
        build_shared_models(DIMS, HyDiscGANConfig(generator_model="gan2"), 0)
    with pytest.raises(ConfigError, match=r"msa-model.*neither a model name"):
        HyDiscGANConfig.from_run_config({"msa-model": "two words"})


# ---------------------------------------------------------------- dataset video structure
def _dataset(**changes) -> MultimodalDataset:
    fields = dict(name="t", ids=["a_1", "a_2", "b_1", "b_2"], speakers=["a", "a", "b", "b"],
                  text=np.zeros((4, 2)), audio=np.zeros((4, 1)), visual=np.zeros((4, 1)), labels=[0, 1, 0, 1],
                  split=["train", "train", "test", "test"], label_kind="binary", source="src.csv",
                  videos=["a", "a", "b", "b"], positions=[1, 2, 1, 2])
    fields.update(changes)
    return MultimodalDataset(**fields)


def test_datasets_know_videos_and_positions():
    synthetic = make_synthetic(seed=0, num_speakers=4, utterances_per_speaker=3)
    assert synthetic.videos.tolist()[:3] == ["spk000"] * 3 and synthetic.positions.tolist()[:3] == [1, 2, 3]
    plain = _dataset(videos=None, positions=None)  # no structure: one-utterance videos
    assert plain.videos.tolist() == plain.ids.tolist() and plain.positions.tolist() == [0, 0, 0, 0]
    assert _dataset().subset([3, 0]).positions.tolist() == [2, 1]


def test_mosi_videos_follow_the_clip_numbers():
    from hydiscgan_fl.config import project_root
    from hydiscgan_fl.data import load_mosi_bclstm

    mosi = load_mosi_bclstm(project_root() / "data" / "mosi-bclstm")
    assert len(set(mosi.videos.tolist())) == 93 and (mosi.videos == mosi.speakers).all()
    assert all(mosi.positions[i] == int(utt.rsplit("_", 1)[1]) for i, utt in enumerate(mosi.ids.tolist()))


@pytest.mark.parametrize("changes, message", [
    ({"positions": None}, r"src\.csv: fields 'videos' and 'positions' go together"),
    ({"positions": [1, 1, 1, 2]}, r"src\.csv: video 'a' has 2 utterances at position 1"),
    ({"positions": [1, -2, 1, 2]}, r"src\.csv: field 'positions' must be >= 0 \(row id 'a_2'"),
    ({"positions": [1.5, 2, 1, 2]}, r"field 'positions' must hold integers"),
    ({"videos": ["a", "a", "a", "b"], "positions": [1, 2, 3, 2]}, r"video 'a' has rows with different 'speakers'"),
    ({"videos": ["v", "v", "v", "v"], "speakers": ["a"] * 4, "positions": [1, 2, 3, 4]},
     r"video 'v' has rows with different 'split' values"),
    ({"videos": ["a", "a", "b"]}, r"field 'videos' must have shape \(4,\)"),
])
def test_bad_video_structure_is_refused(changes, message):
    with pytest.raises(DataError, match=message):
        _dataset(**changes)


def test_partition_files_keep_the_video_structure(tmp_path):
    dataset = _dataset()
    save_partition(dataset, tmp_path / "p.npz")
    back = load_partition(tmp_path / "p.npz")
    assert back.videos.tolist() == dataset.videos.tolist() and back.positions.tolist() == [1, 2, 1, 2]
    with np.load(tmp_path / "p.npz") as archive:  # a file written before videos were stored
        np.savez(tmp_path / "old.npz", **{k: archive[k] for k in archive.files if k not in ("videos", "positions")})
    assert load_partition(tmp_path / "old.npz").positions.tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("rule", ["iid", "dirichlet:0.5"])
def test_iid_and_dirichlet_assign_whole_videos_when_asked(rule):
    data = make_synthetic(seed=1, num_speakers=20, utterances_per_speaker=6).split_subset("train")
    clips = np.array([f"{s}-{p % 2}" for s, p in zip(data.speakers.tolist(), data.positions.tolist())])
    parts = partition_indices(data.labels, data.speakers, 3, rule, 0, videos=clips)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(data)))
    owners = {video: {p for p, rows in enumerate(parts) if video in set(clips[rows])} for video in set(clips)}
    assert all(len(owner) == 1 for owner in owners.values())
    utterance_parts = partition_indices(data.labels, data.speakers, 3, rule, 0)
    assert any(len({p for p, rows in enumerate(utterance_parts) if v in set(clips[rows])}) > 1 for v in set(clips))


# ---------------------------------------------------------------- video batches
def test_pad_and_unpad_keep_every_row_in_its_order():
    videos = np.array(["b", "a", "b", "c", "a", "b"])
    positions = np.array([3, 1, 1, 0, 0, 2])
    layout = VideoLayout.of(videos, positions)
    assert layout.lengths.tolist() == [2, 3, 1]
    rows = torch.arange(6, dtype=torch.float32).unsqueeze(1) + 1
    padded = layout.pad(rows)
    assert padded[:, :, 0].tolist() == [[5, 2, 0], [3, 6, 1], [4, 0, 0]]  # video a, b, c in position order
    assert torch.equal(layout.unpad(padded), rows)


def test_video_minibatches_hold_whole_videos_and_cover_every_row_once():
    data = make_synthetic(seed=2, num_speakers=9, utterances_per_speaker=7)
    videos = Videos.of(data)
    batches = videos.minibatches(10, torch.Generator().manual_seed(0))
    rows = torch.cat(batches).tolist()
    assert sorted(rows) == list(range(len(data)))
    for batch in batches:
        chosen = set(videos.video_of_row[batch.numpy()].tolist())
        assert sum(int((videos.video_of_row == v).sum()) for v in chosen) == len(batch)
    assert all(len(batch) >= 10 for batch in batches[:-1])


def test_padding_never_changes_an_output():
    torch.manual_seed(0)
    model = ContextGRUMSA(DIMS, 16, 0.1).eval()
    short = [torch.randn(3, d) for d in DIMS.values()]
    long = [torch.randn(7, d) for d in DIMS.values()]
    alone = model(*short, VideoLayout.of(np.zeros(3), np.arange(3)))
    together = model(*[torch.cat([s, lo]) for s, lo in zip(short, long)],
                     VideoLayout.of(np.array([0] * 3 + [1] * 7), np.concatenate([np.arange(3), np.arange(7)])))
    assert together.shape == (10,)
    assert torch.allclose(alone, together[:3], atol=1e-6)
    with pytest.raises(ValueError, match="needs the VideoLayout"):
        model(*short)


def test_context_gru_stage_two_loss_falls_on_a_small_batch():
    dataset = make_synthetic(seed=3, num_speakers=4, utterances_per_speaker=8)
    cfg = HyDiscGANConfig(msa_model="context-gru", dropout=0.0)
    shared = build_shared_models(dataset.dims, cfg, 0)
    data, videos = to_tensors(dataset, torch.device("cpu")), Videos.of(dataset)
    rows = torch.arange(16)  # two whole videos
    layout = videos.layout(rows)
    optimizer = torch.optim.Adam(shared.parameters(), lr=3e-3)
    noise = torch.zeros(16, cfg.noise_dim)
    losses = [msa_step(shared, None, data.rows(rows), optimizer, cfg, noise, dataset.label_kind, layout=layout)
              ["loss_task"] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- a whole run
def test_a_run_with_context_gru_on_mosi_completes(tmp_path, monkeypatch):
    from examples.in_process import run_in_process

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    run = run_in_process({"rounds-align": 1, "rounds-msa": 2, "local-epochs": 1, "msa-model": "context-gru",
                          "partition": "iid", "output-dir": str(tmp_path)}, num_nodes=3)
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["param_counts"] == parameter_counts({"text": 100, "audio": 73, "visual": 100},
                                                       HyDiscGANConfig(msa_model="context-gru"))
    assert summary["acc2"] > 0.621 and summary["text_only_acc2"] > 0.621  # above the test majority rate (62.1%)


def test_fewer_videos_than_partitions_is_refused():
    with pytest.raises(DataError, match=r"3 partitions requested but there are only 2 videos"):
        partition_indices([0, 1, 0, 1], ["a", "a", "b", "b"], 3, "iid", 0, videos=np.array(["a", "a", "b", "b"]))
