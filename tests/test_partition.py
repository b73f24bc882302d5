"""Tests of the partitioners and the per-client .npz files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hydiscgan_fl.data import (
    DataError,
    MultimodalDataset,
    load_partition,
    make_synthetic,
    partition_indices,
    save_partition,
    write_partitions,
)

FIELDS = ("ids", "speakers", "text", "audio", "visual", "labels", "split")


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    assert all(p.dtype.kind == "i" for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts), "each partition is sorted, without repeats"
    everything = np.concatenate(parts)
    assert len(everything) == n
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def _assert_same(a: MultimodalDataset, b: MultimodalDataset) -> None:
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert getattr(a, field).dtype == getattr(b, field).dtype
    assert (a.name, a.label_kind, a.source) == (b.name, b.label_kind, b.source)


@pytest.fixture(scope="module")
def synthetic() -> MultimodalDataset:
    return make_synthetic(seed=0)


@pytest.mark.parametrize("rule", ["speaker", "iid", "dirichlet:0.5", "dirichlet:100"])
@pytest.mark.parametrize("num_partitions", [1, 3, 7])
def test_rules_give_disjoint_covering_partitions(synthetic: MultimodalDataset, rule: str, num_partitions: int) -> None:
    parts = partition_indices(synthetic.labels, synthetic.speakers, num_partitions, rule, seed=5)
    assert len(parts) == num_partitions
    _assert_disjoint_cover(parts, len(synthetic))
    again = partition_indices(synthetic.labels, synthetic.speakers, num_partitions, rule, seed=5)
    for p, q in zip(parts, again):
        np.testing.assert_array_equal(p, q)


def test_speaker_rule_keeps_speakers_whole_and_balances(synthetic: MultimodalDataset) -> None:
    parts = partition_indices(synthetic.labels, synthetic.speakers, 7, "speaker", seed=1)
    owners: dict[str, int] = {}
    for p, rows in enumerate(parts):
        for spk in set(synthetic.speakers[rows].tolist()):
            assert owners.setdefault(spk, p) == p, f"speaker {spk} split across partitions"
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 24  # one speaker's worth of utterances


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_speaker_rule_exact_greedy_assignment(seed: int) -> None:
    # Speakers with distinct sizes: the greedy result does not depend on the shuffle.
    sizes = {"A": 6, "B": 5, "C": 4, "D": 2, "E": 1}
    speakers = np.array([s for s, k in sizes.items() for _ in range(k)])
    rng = np.random.default_rng(99)
    order = rng.permutation(len(speakers))  # interleave rows so positions are not trivially grouped
    speakers = speakers[order]
    labels = np.zeros(len(speakers))
    parts = partition_indices(labels, speakers, 2, "speaker", seed=seed)
    # A(6)->p0, B(5)->p1, C(4)->p1 (5<6), D(2)->p0 (6<9), E(1)->p0 (8<9): p0 = A,D,E (9), p1 = B,C (9)
    assert set(speakers[parts[0]].tolist()) == {"A", "D", "E"}
    assert set(speakers[parts[1]].tolist()) == {"B", "C"}
    np.testing.assert_array_equal(parts[0], np.flatnonzero(np.isin(speakers, ["A", "D", "E"])))
    three = partition_indices(labels, speakers, 3, "speaker", seed=seed)
    # A->p0 (6), B->p1 (5), C->p2 (4), D->p2 (6), E->p1 (6)
    assert [set(speakers[p].tolist()) for p in three] == [{"A"}, {"B", "E"}, {"C", "D"}]


def test_iid_parts_are_near_equal(synthetic: MultimodalDataset) -> None:
    parts = partition_indices(synthetic.labels, synthetic.speakers, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def _label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    overall = labels.mean()
    return float(np.mean([abs(labels[p].mean() - overall) for p in parts]))


def test_dirichlet_small_alpha_is_more_skewed_than_iid() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(1200) < 0.5).astype(np.float64)
    speakers = np.array([f"s{i // 12}" for i in range(1200)])
    iid = partition_indices(labels, speakers, 4, "iid", seed=0)
    skewed = partition_indices(labels, speakers, 4, "dirichlet:0.1", seed=0)
    _assert_disjoint_cover(skewed, 1200)
    assert min(len(p) for p in skewed) >= 10
    assert _label_skew(labels, skewed) > 0.15
    assert _label_skew(labels, skewed) > 3 * _label_skew(labels, iid)


def test_dirichlet_uses_sign_classes_for_regression_labels(synthetic: MultimodalDataset) -> None:
    labels = synthetic.labels
    parts = partition_indices(labels, synthetic.speakers, 4, "dirichlet:0.1", seed=3, label_kind="regression")
    positive = (labels >= 0).astype(np.float64)
    assert _label_skew(positive, parts) > 0.15


def test_partition_errors(synthetic: MultimodalDataset) -> None:
    n_speakers = len(np.unique(synthetic.speakers))
    with pytest.raises(DataError, match=f"only {n_speakers} speakers"):
        partition_indices(synthetic.labels, synthetic.speakers, n_speakers + 1, "speaker", seed=0)
    with pytest.raises(DataError, match="'round-robin'.*unknown rule"):
        partition_indices(synthetic.labels, synthetic.speakers, 2, "round-robin", seed=0)
    for bad in ("dirichlet:0", "dirichlet:-1", "dirichlet:abc", "dirichlet:", "dirichlet:nan"):
        with pytest.raises(DataError, match=f"partition rule '{bad}'"):
            partition_indices(synthetic.labels, synthetic.speakers, 2, bad, seed=0)
    with pytest.raises(DataError, match="num_partitions"):
        partition_indices(synthetic.labels, synthetic.speakers, 0, "iid", seed=0)
    with pytest.raises(DataError, match="only 3 rows"):
        partition_indices(np.zeros(3), np.array(["a", "b", "c"]), 4, "iid", seed=0)
    with pytest.raises(DataError, match="could not give every one of 20 partitions"):
        partition_indices(np.zeros(40), np.arange(40).astype(str), 20, "dirichlet:0.01", seed=0)


# ---------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path: Path, synthetic: MultimodalDataset) -> None:
    part = synthetic.subset(np.arange(0, len(synthetic), 7))
    path = tmp_path / "sub" / "client.npz"
    save_partition(part, path)
    assert path.is_file()
    loaded = load_partition(path)
    _assert_same(part, loaded)
    assert loaded.ids.dtype.kind == "U"
    with np.load(path, allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)


def test_load_partition_truncated_file_names_the_file(tmp_path: Path, synthetic: MultimodalDataset) -> None:
    path = tmp_path / "client.npz"
    save_partition(synthetic, path)
    data = path.read_bytes()
    broken = tmp_path / "broken.npz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="broken.npz"):
        load_partition(broken)
    with pytest.raises(DataError, match="missing partition file: .*absent.npz"):
        load_partition(tmp_path / "absent.npz")


def test_load_partition_missing_field_names_it(tmp_path: Path, synthetic: MultimodalDataset) -> None:
    path = tmp_path / "partial.npz"
    np.savez_compressed(path, ids=synthetic.ids, speakers=synthetic.speakers, text=synthetic.text)
    with pytest.raises(DataError, match=r"partial.npz: missing field 'audio'"):
        load_partition(path)


def test_write_partitions(tmp_path: Path, synthetic: MultimodalDataset) -> None:
    (tmp_path / "partition-9.npz").write_bytes(b"stale")
    paths = write_partitions(synthetic, 5, "speaker", 0, tmp_path)
    assert [p.name for p in paths] == [f"partition-{i}.npz" for i in range(5)] + ["server.npz"]
    assert not (tmp_path / "partition-9.npz").exists()

    train = synthetic.split_subset("train")
    expected = partition_indices(train.labels, train.speakers, 5, "speaker", 0, label_kind="regression")
    seen: list[str] = []
    for path, index in zip(paths[:-1], expected):
        client = load_partition(path)
        _assert_same(client, train.subset(index))
        assert set(client.split.tolist()) == {"train"}
        seen.extend(client.ids.tolist())
    assert sorted(seen) == sorted(train.ids.tolist())

    server = load_partition(paths[-1])
    assert len(server) == len(synthetic)
    assert server.audio.shape == (len(synthetic), 0)
    assert server.visual.shape == (len(synthetic), 0)
    for field in ("ids", "speakers", "text", "labels", "split"):
        np.testing.assert_array_equal(getattr(server, field), getattr(synthetic, field))
    with np.load(paths[-1], allow_pickle=False) as archive:
        assert archive["audio"].size == 0 and archive["visual"].size == 0
