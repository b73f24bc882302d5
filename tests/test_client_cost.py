"""Client cost: msa-site "server" (stage 2 on the server, no client work) and transport-dtype "float16",
through the real ServerApp and ClientApp in process."""

from __future__ import annotations

import csv

import pytest

from examples.in_process import run_in_process
from hydiscgan_fl.config import SERVER_STAGE
from hydiscgan_fl.run_files import load_state, load_summary

RUN = {"dataset": "synthetic", "rounds-align": 1, "rounds-msa": 2, "local-epochs": 1}
SERVER_MSA = {**RUN, "msa-site": "server"}


def rows(run_dir, name):
    return list(csv.DictReader((run_dir / name).open()))


def test_server_msa_rounds_do_no_client_work_and_select_and_resume_as_usual(tmp_path):
    full = run_in_process({**SERVER_MSA, "output-dir": str(tmp_path)}, num_nodes=3).run_dir
    metrics = rows(full, "metrics.csv")
    assert [(r["stage"], int(r["round"])) for r in metrics] == [("align", 1), (SERVER_STAGE, 2), (SERVER_STAGE, 3)]
    assert [int(r["clients_sent"]) for r in metrics] == [3, 0, 0]
    assert all(float(r["train_loss_task"]) > 0 for r in metrics[1:])  # the server's own sentiment loss
    assert {int(r["server_round"]) for r in rows(full, "clients.csv")} == {1}  # clients only align
    summary = load_summary(full)
    assert summary["selected_round"] in (1, 2, 3) and 0.0 <= summary["acc2"] <= 1.0

    stopped = run_in_process({**SERVER_MSA, "stop-after-round": 2, "output-dir": str(tmp_path)}, num_nodes=3).run_dir
    assert load_state(stopped)["round"] == 2 and load_state(stopped)["stage"] == SERVER_STAGE
    resumed = run_in_process({**SERVER_MSA, "resume-from": str(stopped), "output-dir": str(tmp_path)},
                             num_nodes=3).run_dir
    test_columns = lambda run_dir: [{k: v for k, v in r.items() if k.startswith("test_")}  # noqa: E731
                                    for r in rows(run_dir, "metrics.csv")]
    assert test_columns(resumed) == test_columns(full)


def test_float16_transport_halves_the_bytes_each_client_sends_and_receives(tmp_path):
    one_round = {**RUN, "rounds-msa": 1, "stop-after-round": 2, "output-dir": str(tmp_path)}
    full = rows(run_in_process(one_round, num_nodes=2).run_dir, "clients.csv")
    half = rows(run_in_process({**one_round, "transport-dtype": "float16"}, num_nodes=2).run_dir, "clients.csv")
    assert [r["status"] for r in full + half] == ["ok"] * 8
    for kind in ("bytes_up", "bytes_down"):
        for f, h in zip(full, half):  # the arrays halve; the config and metrics records stay as they were
            assert 0.45 < int(h[kind]) / int(f[kind]) < 0.56, (kind, f[kind], h[kind])


def test_a_simulated_client_reads_its_partition_once_per_process_and_keeps_no_full_copy(monkeypatch):
    from clients import local_data
    from hydiscgan_fl.config import HyDiscGANConfig
    from hydiscgan_fl.data import load_dataset

    local_data.simulated_partition.cache_clear()
    load_dataset.cache_clear()
    loads = []
    original = HyDiscGANConfig.load_dataset
    monkeypatch.setattr(HyDiscGANConfig, "load_dataset",
                        lambda self, **kw: (loads.append(kw), original(self, **kw))[1])
    cfg = HyDiscGANConfig(dataset="synthetic:40", seed=1)
    node = {"partition-id": 3, "num-partitions": 5}
    first = local_data.client_dataset(cfg, node)
    for _ in range(3):  # later rounds
        assert local_data.client_dataset(cfg, node) is first
    assert loads == [{"cached": False}]  # read once, and the full dataset was not kept in the loader's cache
    full = cfg.load_dataset().split_subset("train")
    assert set(first.ids.tolist()) < set(full.ids.tolist()) and len(set(first.speakers.tolist())) >= 1
    other = local_data.client_dataset(cfg, {"partition-id": 4, "num-partitions": 5})
    assert not set(other.ids.tolist()) & set(first.ids.tolist())


def test_a_simulated_client_of_a_partitions_folder_reads_only_its_own_file(tmp_path, monkeypatch):
    from clients import local_data
    from hydiscgan_fl.config import HyDiscGANConfig
    from hydiscgan_fl.data import DataError, load_partition, write_partitions

    full = HyDiscGANConfig(dataset="synthetic:40", seed=1)
    write_partitions(full.load_dataset(cached=False), 4, "speaker", 1, tmp_path)
    opened = []
    monkeypatch.setattr(local_data, "load_partition", lambda path: (opened.append(path), load_partition(path))[1])
    local_data._partition_file.cache_clear()
    cfg = HyDiscGANConfig(dataset=f"partitions:{tmp_path}", seed=1)
    mine = local_data.client_dataset(cfg, {"partition-id": 2, "num-partitions": 4})
    assert local_data.client_dataset(cfg, {"partition-id": 2, "num-partitions": 4}) is mine  # once per process
    assert opened == [str(tmp_path / "partition-2.npz")]
    assert mine.ids.tolist() == load_partition(tmp_path / "partition-2.npz").ids.tolist()
    with pytest.raises(DataError, match=r"holds 4 partition file\(s\) but the simulation runs 5 SuperNodes"):
        local_data.client_dataset(cfg, {"partition-id": 2, "num-partitions": 5})


def test_synthetic_data_can_have_a_thousand_training_speakers():
    from hydiscgan_fl.config import ConfigError, HyDiscGANConfig

    train = HyDiscGANConfig(dataset="synthetic:1500").load_dataset(cached=False).split_subset("train")
    assert len(set(train.speakers.tolist())) >= 1000  # one speaker per client for 1,000 clients
    try:
        HyDiscGANConfig.from_run_config({"dataset": "synthetic:x"})
    except ConfigError as err:
        assert "synthetic:<speakers>" in str(err)
    else:
        raise AssertionError("synthetic:x was accepted")
