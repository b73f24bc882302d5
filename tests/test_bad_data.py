"""Bad client data fails at the start of the client's round with a DataError naming the file, field or client."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients import handlers
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import DataError, load_dataset, save_partition
from hydiscgan_fl.data.partition_files import ARRAY_FIELDS, SCALAR_FIELDS
from hydiscgan_fl.models import build_shared_models
from strategies import HyDiscGANStrategy
from tests.conftest import ROOT
from tests.grids import StaticGrid

CFG = HyDiscGANConfig(dataset="synthetic", local_epochs=1)


def synthetic_train():
    return load_dataset("synthetic", None, CFG.seed).split_subset("train")


def first_message(dims: dict[str, int], known_ids=()):
    """Round 1 as the server sends it, for a model of `dims` (first contact: with the known ids)."""
    strategy = HyDiscGANStrategy(rounds_align=1, known_ids=known_ids, node_settle_s=0.0)
    arrays = ArrayRecord(build_shared_models(dims, CFG, CFG.seed).state_dict())
    return next(iter(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid([5]))))


def train_on(path, message):
    context = Context(run_id=1, node_id=5, node_config={"data-path": str(path)}, state=RecordDict(),
                      run_config=CFG.to_run_config())
    return handlers.train(message, context)


def write_raw_partition(path, **changes):
    """A partition file written field by field, bypassing the checks of save_partition."""
    train = synthetic_train().subset(np.arange(40))
    fields = {name: np.asarray(getattr(train, name)) for name in ARRAY_FIELDS}
    fields.update({name: np.array(str(getattr(train, name))) for name in SCALAR_FIELDS})
    fields.update(changes)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **fields)
    return path


def test_a_good_partition_trains(task_identity, tmp_path):
    train = synthetic_train()
    save_partition(train.subset(np.arange(40)), tmp_path / "ok.npz")
    reply = train_on(tmp_path / "ok.npz", first_message(train.dims, train.ids.tolist()))
    assert reply.content["metrics"]["num-examples"] == 40


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_features_name_the_file_field_and_row(task_identity, tmp_path, value):
    audio = np.array(synthetic_train().audio[:40])
    audio[7, 3] = value
    path = write_raw_partition(tmp_path / "bad.npz", audio=audio)
    row_id = synthetic_train().ids[7]
    with pytest.raises(DataError, match=rf"bad\.npz.*field 'audio' has 1 NaN/Inf values.*{row_id}"):
        train_on(path, first_message(synthetic_train().dims))


def test_feature_dims_that_do_not_fit_the_servers_model_name_the_client_and_array(task_identity, tmp_path):
    save_partition(synthetic_train().subset(np.arange(40)), tmp_path / "p.npz")
    server_dims = {**synthetic_train().dims, "audio": 73}  # the server was configured for other data
    with pytest.raises(DataError, match=r"client data-path=.*p\.npz: its data has feature dims .*'audio': 24.*"
                                        r"generator\.audio_head\.weight has shape \(73, 128\) on the server"):
        train_on(tmp_path / "p.npz", first_message(server_dims))


def test_a_client_without_utterances_is_named(task_identity, tmp_path):
    empty = {name: np.asarray(getattr(synthetic_train(), name))[:0] for name in ARRAY_FIELDS}
    path = write_raw_partition(tmp_path / "empty.npz", **empty)
    with pytest.raises(DataError, match=r"empty\.npz: .*dataset is empty \(0 rows\)"):
        train_on(path, first_message(synthetic_train().dims))
    save_partition(synthetic_train().subset(np.arange(1)), tmp_path / "one.npz")
    with pytest.raises(DataError, match=r"one\.npz.*holds 1 utterance"):
        train_on(tmp_path / "one.npz", first_message(synthetic_train().dims))


def test_utterance_ids_the_server_does_not_know_are_refused(task_identity, tmp_path):
    train = synthetic_train()
    ids = train.ids[:40].tolist()
    ids[3], ids[9] = "stranger_1", "stranger_2"
    path = write_raw_partition(tmp_path / "foreign.npz", ids=np.array(ids))
    with pytest.raises(DataError, match=r"client data-path=.*foreign\.npz: 2 of its 40 utterance ids are unknown "
                                        r"to the server's text \(first: \['stranger_1', 'stranger_2'\]\)"):
        train_on(path, first_message(train.dims, train.ids.tolist()))


def test_known_ids_are_sent_until_a_node_replies(task_identity):
    strategy = HyDiscGANStrategy(rounds_align=1, known_ids=["a_1", "a_2"], node_settle_s=0.0)
    arrays = ArrayRecord(build_shared_models(synthetic_train().dims, CFG, CFG.seed).state_dict())
    first = list(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid([1, 2])))
    assert all(list(m.content["config"]["known-ids"]) == ["a_1", "a_2"] for m in first)
    ok = Message(RecordDict({"arrays": first[0].content["arrays"], "metrics": MetricRecord({"num-examples": 3})}),
                 reply_to=first[0])
    strategy.aggregate_train(1, [ok])  # node 2 never answers
    later = list(strategy.configure_train(2, arrays, ConfigRecord(), StaticGrid([1, 2, 3])))
    assert ["known-ids" in m.content["config"] for m in later] == [False, True, True]  # 2 failed, 3 is new


def test_truncated_or_corrupt_partition_file_is_named(task_identity, tmp_path):
    save_partition(synthetic_train().subset(np.arange(40)), tmp_path / "cut.npz")
    data = (tmp_path / "cut.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.npz: corrupt or truncated partition file"):
        train_on(tmp_path / "cut.npz", first_message(synthetic_train().dims))
    (tmp_path / "junk.npz").write_bytes(b"not a zip archive at all")
    with pytest.raises(DataError, match=r"junk\.npz"):
        train_on(tmp_path / "junk.npz", first_message(synthetic_train().dims))


def test_truncated_mosi_csv_is_named_with_its_row(tmp_path):
    folder = tmp_path / "mosi-bclstm"
    shutil.copytree(ROOT / "data" / "mosi-bclstm", folder)
    lines = (folder / "audio_train0.csv").read_text().splitlines()
    lines[-1] = ",".join(lines[-1].split(",")[:40])  # the write was cut off after 40 cells
    (folder / "audio_train0.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"audio_train0\.csv: row {len(lines)} has 40 columns, expected 74"):
        load_dataset("mosi-bclstm", tmp_path)
