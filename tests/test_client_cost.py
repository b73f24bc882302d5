"""Client cost: msa-site "server" (stage 2 on the server, no client work) and transport-dtype "float16",
through the real ServerApp and ClientApp in process."""

from __future__ import annotations

import csv

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
