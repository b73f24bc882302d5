"""The deployment data path: `hydiscgan partition`, server.npz with feature widths, dataset "partitions:<dir>"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import (
    DataError,
    MultimodalDataset,
    ServerView,
    load_dataset,
    load_partition,
    load_server_view,
    make_synthetic,
    save_partition,
    with_validation_speakers,
    write_partitions,
)
from hydiscgan_fl.orchestration.cli import main as hydiscgan
from hydiscgan_fl.server_run import ServerRun


@pytest.fixture(scope="module")
def synthetic() -> MultimodalDataset:
    return make_synthetic(seed=0)


@pytest.fixture
def parts_dir(tmp_path: Path, synthetic: MultimodalDataset) -> Path:
    write_partitions(with_validation_speakers(synthetic, 0.1, 0), 3, "speaker", 0, tmp_path / "parts")
    return tmp_path / "parts"


def test_server_file_stores_real_widths(parts_dir: Path, synthetic: MultimodalDataset) -> None:
    with np.load(parts_dir / "server.npz", allow_pickle=False) as archive:
        assert int(archive["audio_dim"]) == synthetic.audio.shape[1] > 0
        assert int(archive["visual_dim"]) == synthetic.visual.shape[1] > 0
        assert archive["audio"].shape == (len(synthetic), 0)
    view = load_server_view(parts_dir / "server.npz")
    assert isinstance(view, ServerView)
    assert view.feature_dims == synthetic.dims
    assert view.dims == {"text": synthetic.text.shape[1], "audio": 0, "visual": 0}
    # A client file is a plain dataset with its real widths and nothing of the server's extras.
    client = load_partition(parts_dir / "partition-0.npz")
    assert type(client) is MultimodalDataset and client.dims == synthetic.dims
    with np.load(parts_dir / "partition-0.npz", allow_pickle=False) as archive:
        assert "audio_dim" not in archive.files


def test_partitions_spec_loads_the_server_view(parts_dir: Path, synthetic: MultimodalDataset) -> None:
    view = load_dataset(f"partitions:{parts_dir}", None)
    assert isinstance(view, ServerView) and view.feature_dims == synthetic.dims
    np.testing.assert_array_equal(view.text, synthetic.text)
    np.testing.assert_array_equal(view.labels, synthetic.labels)
    assert type(view.split_subset("test")) is MultimodalDataset  # row subsets are plain datasets
    with pytest.raises(DataError, match="must be absolute"):
        load_dataset("partitions:relative/dir", None)
    with pytest.raises(DataError, match="missing partition file"):
        load_dataset(f"partitions:{parts_dir / 'nowhere'}", None)


def test_a_server_file_without_validation_split_is_refused_when_a_run_needs_one(tmp_path: Path,
                                                                               synthetic: MultimodalDataset) -> None:
    write_partitions(synthetic, 2, "speaker", 0, tmp_path / "old")  # written before validation speakers existed
    with pytest.raises(DataError, match=r"old/server.npz: no validation split"):
        load_dataset(f"partitions:{tmp_path / 'old'}", None, valid_fraction=0.1)


def test_server_file_without_widths_is_refused(tmp_path: Path, synthetic: MultimodalDataset) -> None:
    save_partition(synthetic, tmp_path / "server.npz")  # an old-style file: no audio_dim/visual_dim
    with pytest.raises(DataError, match=r"server.npz: missing field 'audio_dim'"):
        load_server_view(tmp_path / "server.npz")


def test_server_view_validates_its_widths(synthetic: MultimodalDataset) -> None:
    fields = {name: getattr(synthetic, name) for name in
              ("name", "ids", "speakers", "text", "audio", "visual", "labels", "split", "label_kind", "source")}
    with pytest.raises(DataError, match="feature_dims"):
        ServerView(**fields, feature_dims={"audio": 3})
    with pytest.raises(DataError, match="text width"):
        ServerView(**fields, feature_dims={"text": 1, "audio": 3, "visual": 4})


def test_config_accepts_absolute_partitions_folder_only() -> None:
    assert HyDiscGANConfig.from_run_config({"dataset": "partitions:/data"}).dataset == "partitions:/data"
    with pytest.raises(ConfigError, match="absolute folder"):
        HyDiscGANConfig.from_run_config({"dataset": "partitions:data"})
    with pytest.raises(ConfigError, match="partitions:/abs/dir"):
        HyDiscGANConfig.from_run_config({"dataset": "mosei"})


def test_server_run_from_server_file_alone_builds_the_clients_model(parts_dir: Path, tmp_path: Path,
                                                                    synthetic: MultimodalDataset) -> None:
    cfg = HyDiscGANConfig.from_run_config({"dataset": f"partitions:{parts_dir}", "output-dir": str(tmp_path / "out")})
    server = ServerRun(cfg, run_name="-spec")
    assert server.dims == synthetic.dims
    # Same weights as a server that had the full dataset: the clients can load what it sends.
    full = ServerRun(cfg.model_copy(update={"dataset": "synthetic"}), run_name="-full")
    mine, theirs = server.initial_state(), full.initial_state()
    assert mine.keys() == theirs.keys()
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key
    assert server.test.text.shape[0] == int((synthetic.split == "test").sum())
    metrics = server.evaluate(mine)
    assert all(np.isfinite(v) for v in metrics.values())


def test_partition_command_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    assert hydiscgan(["partition", "--dataset", "synthetic", "--num-partitions", "2", "--partition", "iid",
                      "--seed", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["partition-0.npz", "partition-1.npz", "server.npz"]
    printed = capsys.readouterr().out
    assert f"partitions:{out.resolve()}" in printed and "valid " in printed
    synthetic = make_synthetic(seed=3)
    clients = [load_partition(out / f"partition-{i}.npz") for i in range(2)]
    server = load_server_view(out / "server.npz")
    assert server.feature_dims == synthetic.dims
    # The server file carries the validation split (10% of the training speakers); no client holds it.
    valid_speakers = set(server.speakers[server.split == "valid"].tolist())
    train_speakers = set(synthetic.speakers[synthetic.split == "train"].tolist())
    assert len(valid_speakers) == round(0.1 * len(train_speakers)) and valid_speakers < train_speakers
    assert not valid_speakers & {s for c in clients for s in c.speakers.tolist()}
    assert sum(len(c) for c in clients) + int((server.split == "valid").sum()) == int((synthetic.split == "train").sum())


@pytest.mark.parametrize("rule", ["iid", "dirichlet:0.5"])
def test_partition_command_gives_a_context_model_whole_videos(tmp_path: Path, rule: str) -> None:
    def videos_split(msa_model: str) -> bool:
        out = tmp_path / f"{msa_model}-{rule}"
        assert hydiscgan(["partition", "--dataset", "synthetic", "--num-partitions", "3", "--partition", rule,
                          "--msa-model", msa_model, "--out", str(out)]) == 0
        owners: dict[str, set[int]] = {}
        for i in range(3):
            for video in load_partition(out / f"partition-{i}.npz").videos.tolist():
                owners.setdefault(video, set()).add(i)
        return any(len(clients) > 1 for clients in owners.values())

    assert not videos_split("context-gru")  # every video on one client
    assert videos_split("mlp")  # utterances are assigned one by one: videos are cut


@pytest.mark.parametrize("argv, message", [
    (["--num-partitions", "0"], "--num-partitions must be >= 1"),
    (["--num-partitions", "2", "--msa-model", "nope"], "unknown msa-model 'nope'"),
    (["--num-partitions", "2", "--partition", "bogus"], "unknown partition"),
    (["--num-partitions", "2", "--dataset", "partitions:/x"], "full dataset"),
    (["--num-partitions", "2", "--dataset", "mmsa:/does/not/exist.pkl"], "exist.pkl"),
])
def test_partition_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert hydiscgan(["partition", "--out", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err
