"""The affect task without Flower: CCC by hand, the OpenFace loader, the generator, the recurrent models,
the CCC loss, the unweighted mean rule and the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from hydiscgan_fl.data import DataError
from hydiscgan_fl.data.affect import (
    AU_CHANNELS,
    load_affect_dataset,
    load_openface_dir,
    make_affect_synthetic,
    make_windows,
    participant_splits,
)
from hydiscgan_fl.metrics import affect_metrics, ccc
from hydiscgan_fl.models import AFFECT_MODELS, build_affect_model
from hydiscgan_fl.training.affect import AffectTensors, ccc_loss, evaluate_affect, train_affect

AFFECT = {"task": "affect", "dataset": "affect-synthetic:8"}


# -- CCC against hand-computed values ---------------------------------------------------------------
def test_ccc_hand_computed_cases():
    y = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population variance 1.25
    assert ccc(y, y) == pytest.approx(1.0)
    assert ccc(np.full(4, 2.5), y) == 0.0  # a constant prediction: cov 0
    # Shifted mean: cov = var = 1.25, denominator 1.25 + 1.25 + 1^2 = 3.5 -> 2.5 / 3.5
    assert ccc(y + 1.0, y) == pytest.approx(2.5 / 3.5)
    # Anti-correlated around the same mean: 5 - y has mean 2.5, cov -1.25 -> -2.5 / 2.5 = -1
    assert ccc(5.0 - y, y) == pytest.approx(-1.0)
    # Halved scale: cov 0.625, var 0.3125 + 1.25, means 1.25 vs 2.5 -> 1.25 / (1.5625 + 1.5625)
    assert ccc(y / 2.0, y) == pytest.approx(1.25 / 3.125)


def test_ccc_of_minus_y_against_y_counts_the_mean_gap():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    # -y: mean -2.5, cov -1.25; 2 cov / (1.25 + 1.25 + 25) = -2.5 / 27.5
    assert ccc(-y, y) == pytest.approx(-2.5 / 27.5)


def test_affect_metrics_and_ccc_loss_agree_with_ccc():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (50, 2))
    p = 0.5 * y + rng.normal(0, 0.2, (50, 2)) + 0.1
    metrics = affect_metrics(p, y)
    assert metrics["ccc_valence"] == pytest.approx(ccc(p[:, 0], y[:, 0]))
    assert metrics["ccc_arousal"] == pytest.approx(ccc(p[:, 1], y[:, 1]))
    assert metrics["ccc_mean"] == pytest.approx((metrics["ccc_valence"] + metrics["ccc_arousal"]) / 2)
    loss = ccc_loss(torch.tensor(p), torch.tensor(y)).item()
    assert loss == pytest.approx(1.0 - metrics["ccc_mean"], abs=1e-6)


# -- OpenFace CSVs ----------------------------------------------------------------------------------------
def _write_openface(root, participant: str, frames: int = 60, fps: float = 10.0, untracked=(5, 6, 7)):
    (root / "au").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(participant))
    header = ["frame", " timestamp", " confidence", " success", *[" " + c for c in AU_CHANNELS]]  # OpenFace's spaces
    lines = [",".join(header)]
    for f in range(frames):
        success = 0 if f in untracked else 1
        aus = rng.uniform(0, 5, len(AU_CHANNELS)) if success else np.zeros(len(AU_CHANNELS))
        lines.append(",".join([str(f + 1), f"{f / fps:.3f}", "0.98" if success else "0.0", str(success),
                               *(f"{a:.2f}" for a in aus)]))
    (root / "au" / f"{participant}.csv").write_text("\n".join(lines) + "\n")
    times = np.arange(0, frames / fps + 0.5, 0.04)  # labels at 25 Hz, RECOLA's annotation rate
    labels = ["time,valence,arousal"] + [f"{t:.2f},{np.sin(t) * 0.5:.4f},{np.cos(t) * 0.5:.4f}" for t in times]
    (root / "labels" / f"{participant}.csv").write_text("\n".join(labels) + "\n")


def test_openface_csvs_load_with_untracked_frames_masked(tmp_path):
    for name in ("alice", "bob"):
        _write_openface(tmp_path, name)
    recordings = load_openface_dir(tmp_path)
    assert [r.participant for r in recordings] == ["alice", "bob"]
    alice = recordings[0]
    assert alice.au.shape == (60, 17) and alice.fps == pytest.approx(10.0)
    assert not alice.tracked[[5, 6, 7]].any() and alice.tracked.sum() == 57
    assert np.all(alice.au[[5, 6, 7]] == 0)
    # labels joined by time: linear interpolation of the 25 Hz trace at each frame's timestamp
    assert alice.labels[10, 0] == pytest.approx(np.sin(1.0) * 0.5, abs=2e-3)
    windows = make_windows(recordings, 20, {"alice": "train", "bob": "test"})
    assert len(windows) == 6 and windows.au.shape == (6, 20, 17)
    assert not windows.valid[0, [5, 6, 7]].any() and np.all(windows.au[0, [5, 6, 7]] == 0)
    tracked = windows.au[windows.participants == "alice"][windows.valid[windows.participants == "alice"]]
    assert np.allclose(tracked.mean(axis=0), 0, atol=1e-5)  # z-scored over the tracked frames only
    assert set(windows.split) == {"train", "test"}


def test_openface_bad_files_name_file_and_column(tmp_path):
    _write_openface(tmp_path, "carol")
    path = tmp_path / "au" / "carol.csv"
    path.write_text(path.read_text().replace(" AU12_r", " AU12_x"))
    with pytest.raises(DataError, match=r"carol\.csv.*AU12_r"):
        load_openface_dir(tmp_path)
    _write_openface(tmp_path, "carol")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace(",1,", ",yes,", 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"carol\.csv: column 'success' row 3"):
        load_openface_dir(tmp_path)
    _write_openface(tmp_path, "carol")
    (tmp_path / "labels" / "carol.csv").unlink()
    with pytest.raises(DataError, match=r"no label file .*labels/carol\.csv"):
        load_openface_dir(tmp_path)


def test_openface_run_config_needs_an_absolute_folder(tmp_path):
    with pytest.raises(ConfigError, match="absolute"):
        HyDiscGANConfig.from_run_config({"task": "affect", "dataset": "openface:relative/dir"})
    assert HyDiscGANConfig.from_run_config({"task": "affect", "dataset": f"openface:{tmp_path}"}).task == "affect"


# -- the generator ----------------------------------------------------------------------------------------
def test_synthetic_recordings_are_seeded_sparse_smooth_and_bounded():
    first, again = make_affect_synthetic(3, participants=3, seconds=120), make_affect_synthetic(3, 3, 120)
    assert all(np.array_equal(a.au, b.au) for a, b in zip(first, again))
    au = np.concatenate([r.au for r in first])
    assert au.min() >= 0.0 and au.max() <= 5.0
    assert 0.2 < float((au == 0).mean()) < 0.8  # sparse, as OpenFace's intensities
    tracked = np.concatenate([r.tracked for r in first])
    assert 0.9 < tracked.mean() < 0.995
    labels = np.concatenate([r.labels for r in first])
    assert np.all(np.abs(labels) <= 1.0)
    # temporally smooth: frame-to-frame changes much smaller than the spread
    assert np.abs(np.diff(labels, axis=0)).mean() < 0.1 * labels.std()
    smile = first[0].au[first[0].tracked, AU_CHANNELS.index("AU12_r")]
    valence = first[0].labels[first[0].tracked, 0]
    assert np.corrcoef(smile, valence)[0, 1] > 0.3  # AU12 follows valence (through the rated trace)


def test_participants_split_whole_and_seeded():
    splits = participant_splits([f"P{i}" for i in range(10)], seed=1, valid_fraction=0.1)
    assert sorted(splits.values()).count("test") == 2 and list(splits.values()).count("valid") == 1
    assert splits == participant_splits([f"P{i}" for i in range(10)], seed=1, valid_fraction=0.1)
    with pytest.raises(DataError, match="participant"):
        participant_splits(["a", "b"], seed=0, valid_fraction=0.1)
    windows = load_affect_dataset("affect-synthetic:8", 0, 0.1, 20)
    for p in windows.participant_list():
        assert len(set(windows.split[windows.participants == p])) == 1


# -- the recurrent variants ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AFFECT_MODELS.entries))
def test_each_recurrent_variant_predicts_both_dimensions_and_its_loss_falls(name):
    cfg = HyDiscGANConfig.from_run_config({**AFFECT, "affect-model": name, "affect-hidden": 8, "affect-layers": 2,
                                           "lr-msa": 0.01, "batch-size": 64})
    windows = load_affect_dataset(cfg.dataset, 0, cfg.valid_fraction, cfg.affect_window).split_subset("train")
    data = AffectTensors.of(windows.subset(np.arange(64)), torch.device("cpu"))
    torch.manual_seed(0)
    model = build_affect_model(windows.input_dim, cfg)
    out = model(data.frames, data.valid)
    assert out.shape == (64, 2) and out.abs().max() <= 1.0
    first = train_affect(model, data, cfg, 1, seed=0)["loss_task"]
    last = train_affect(model, data, cfg, 15, seed=0)["loss_task"]
    assert last < first
    assert evaluate_affect(model, data)["ccc_mean"] > 0.2


def test_depth_and_width_come_from_the_config():
    cfg = HyDiscGANConfig.from_run_config({**AFFECT, "affect-model": "bilstm", "affect-layers": 3, "affect-hidden": 5})
    model = build_affect_model(17, cfg)
    assert model.rnn.num_layers == 3 and model.rnn.hidden_size == 5 and model.rnn.bidirectional
    assert model.head.in_features == 10


# -- config -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    ({"task": "affect"}, "does not fit task"),  # the sentiment default dataset
    ({"dataset": "affect-synthetic"}, "does not fit task"),  # task left at sentiment
    ({**AFFECT, "dp-unit": "utterance"}, "speaker"),
    ({**AFFECT, "method": "fedavg-multimodal"}, "method"),
    ({**AFFECT, "msa-site": "server"}, "msa-site"),
    ({**AFFECT, "aggregation-msa": "local"}, "aggregation-msa"),
    ({**AFFECT, "affect-loss": "mae"}, "affect-loss"),
    ({**AFFECT, "affect-model": "not a name!"}, "affect-model"),
])
def test_affect_config_refuses_what_does_not_fit(overrides, message):
    with pytest.raises(ConfigError, match=message):
        HyDiscGANConfig.from_run_config(overrides)


def test_affect_rounds_are_one_stage():
    cfg = HyDiscGANConfig.from_run_config({**AFFECT, "rounds-msa": 3})
    assert cfg.total_rounds == 3 and [cfg.stage_of_round(r) for r in (1, 3)] == ["affect", "affect"]


# -- the unweighted mean rule ------------------------------------------------------------------------------
def test_mean_rule_ignores_the_number_of_examples(task_identity):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.common import Metadata

    from strategies.aggregation import ComponentAggregator, make_rule

    def reply(value: float, examples: int, node: int) -> tuple:
        arrays = ArrayRecord({"msa.w": torch.full((2,), value)})
        meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="m",
                        group_id="", created_at=0.0, ttl=60.0, message_type="train")
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})}),
                       metadata=meta), arrays, examples

    replies = [reply(0.0, 1, 1), reply(3.0, 99, 2)]
    mean = ComponentAggregator("msa", make_rule("mean")).aggregate(1, replies)
    weighted = ComponentAggregator("msa", make_rule("fedavg")).aggregate(1, replies)
    assert np.allclose(mean["msa.w"].numpy(), 1.5)
    assert np.allclose(weighted["msa.w"].numpy(), 3.0 * 99 / 100)


# -- the benchmark's pieces ------------------------------------------------------------------------------
def test_window_statistics_by_hand_over_valid_frames_only():
    from hydiscgan_fl.orchestration.affect_bench import window_statistics

    frames = np.array([[[1.0], [3.0], [100.0]]])  # the third frame is not valid
    stats = window_statistics(frames, np.array([[True, True, False]]))
    assert stats.tolist() == [[2.0, 1.0]]


def test_affect_report_gives_intervals_paired_differences_and_the_identity_table(tmp_path):
    from hydiscgan_fl.orchestration.affect_bench import COLUMNS, write_affect_report
    from hydiscgan_fl.orchestration.result_table import append_row

    (tmp_path / "bench.json").write_text("{}")
    for seed, (central, federated) in enumerate([(0.5, 0.52), (0.6, 0.61), (0.55, 0.58)]):
        for method, value in (("central", central), ("federated", federated)):
            append_row(tmp_path / "summary.csv", {"dataset": "affect-synthetic", "method": method, "model": "gru",
                                                  "seed": seed, "ccc_valence": value, "ccc_arousal": value,
                                                  "ccc_mean": value, "mse": 0.1, "selected_step": 1, "wall_s": 1.0},
                       COLUMNS)
    attack = {"raw AU": {"speaker_attack_acc": 0.9, "speaker_attack_chance": 0.1}}
    text = write_affect_report(tmp_path, attack)
    assert "| gru | federated | 3 | 0.570 ± 0.046 [0.456, 0.684]" in text  # std of 0.52, 0.61, 0.58
    assert "| gru | +0.020 [-0.005, +0.045] | +0.020 [" in text  # mean of 0.02, 0.01, 0.03
    assert "| raw AU | 0.900 | 0.100 |" in text
