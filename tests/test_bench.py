"""`hydiscgan bench`: summary.csv columns, resume, the fedavg-multimodal baseline, one real federated row."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from clients import handlers
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.orchestration import bench, cli, missing_bench
from hydiscgan_fl.server_run import ServerRun
from hydiscgan_fl.training.central import CentralResult
from strategies import HyDiscGANStrategy
from tests.grids import StaticGrid
from tests.sanity import above_chance

COLUMNS = ["dataset", "method", "model", "seed", "acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7", "mae",
           "corr", "acc2", "f1", "selected_step", "speaker_attack_acc", "speaker_attack_chance", "client_bytes_up_per_round",
           "client_bytes_down_per_round", "client_train_s_per_round", "client_bytes_per_run", "client_train_s_per_run", "wall_s"]
REGRESSION = ["acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7", "mae", "corr"]
COST = list(bench.COST_COLUMNS)
TINY = ["--msa-models", "mlp", "--rounds-align", "1", "--rounds-msa", "1", "--local-epochs", "1"]


def read_summary(out):
    with (out / "summary.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_summary_has_exactly_the_columns_and_a_rerun_recomputes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--dataset", "synthetic", "--methods", "text-only,central-multimodal,hydiscgan-central",
            "--seeds", "2", "--out", str(out), *TINY]
    assert cli.main(argv) == 0
    columns, rows = read_summary(out)
    assert columns == COLUMNS
    assert [(r["method"], r["model"], r["seed"]) for r in rows] == [
        (m, "mlp", s) for s in "01" for m in ("text-only", "central-multimodal", "hydiscgan-central")]
    for row in rows:
        assert row["dataset"] == "synthetic"
        assert all(row[c] != "" for c in REGRESSION + ["acc2", "f1", "speaker_attack_acc", "wall_s"])
        assert all(row[c] == "" for c in COST)  # central methods have no client cost
        assert float(row["acc2"]) == float(row["acc2_non0"])
        assert 0.0 < float(row["speaker_attack_chance"]) < 0.1
    assert "[hydiscgan-central mlp seed 1] round 2/2 test acc2=" in capsys.readouterr().out
    for name in ("summary.md", "metrics.png", "rounds.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "summary.md").read_text()
    assert "| central-multimodal | mlp | 2 |" in report and "| mlp | " in report.split("Trainable parameters")[1]
    assert "Paired difference to text-only" in report and "| hydiscgan-central | " in report.split("Paired")[1]
    for row in rows:  # validation-selected: an epoch group (central) or a round (hydiscgan-central)
        assert 1 <= int(row["selected_step"]) <= 2

    before = (out / "summary.csv").read_text()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a row already in summary.csv was recomputed")

    monkeypatch.setattr(bench, "run_central", must_not_run)
    assert cli.main(argv) == 0
    assert (out / "summary.csv").read_text() == before
    assert "[text-only mlp seed 0] already in summary.csv, skipped" in capsys.readouterr().out

    # Resuming into the same folder with another schedule would mix incomparable rows.
    assert cli.main([*argv[:-6], "--rounds-align", "2", "--rounds-msa", "1", "--local-epochs", "1"]) == 2


def test_binary_labels_leave_the_regression_columns_empty(tmp_path):
    out = tmp_path / "mosi"
    assert cli.main(["bench", "--methods", "text-only", "--seeds", "1", "--out", str(out), *TINY]) == 0
    _, [row] = read_summary(out)
    assert row["dataset"] == "mosi-bclstm"
    assert all(row[c] == "" for c in REGRESSION + COST)
    test_labels = HyDiscGANConfig().load_dataset().split_subset("test").labels
    assert float(row["acc2"]) > above_chance(test_labels) and row["f1"] != ""
    assert float(row["speaker_attack_acc"]) < 0.2  # text barely identifies the speaker


def test_round_progress_parses_the_server_log(capsys):
    progress = bench.RoundProgress("hydiscgan seed 1")
    for line in ["\x1b[92mINFO \x1b[0m:      [ROUND 7/24]",
                 "INFO :      round 7 (msa): sending generator+msa to 8 node(s)",
                 "INFO :      round 7 (msa) recorded: acc2=0.7",  # cut short while the log grows
                 "INFO :      round 7 (msa) recorded: acc2=0.7500, f1=0.7400, valid_acc2=0.6000;",
                 "INFO :      round 7 (msa) recorded: acc2=0.7500, f1=0.7400, valid_acc2=0.6000;"]:
        progress(line)
    assert capsys.readouterr().out == "[hydiscgan seed 1] round 7/24 (msa) test acc2=0.7500\n"


def test_fedavg_multimodal_sends_and_returns_only_msa_and_the_server_tests_on_real_audio_visual(
        task_identity, tmp_path):
    cfg = HyDiscGANConfig(dataset="synthetic", method="fedavg-multimodal", local_epochs=1, rounds_msa=3,
                          output_dir=str(tmp_path))
    assert cfg.total_rounds == 3 and cfg.stage_of_round(1) == "multimodal"
    server = ServerRun(cfg)
    assert server.test_multimodal is not None
    initial = server.initial_state()
    assert initial and all(key.startswith("msa.") for key in initial)

    strategy = HyDiscGANStrategy(rounds_align=cfg.rounds_align, node_settle_s=0.0, method=cfg.method)
    message = next(iter(strategy.configure_train(1, ArrayRecord(initial), ConfigRecord(), StaticGrid([101]))))
    assert message.content["config"]["stage"] == "multimodal"
    context = Context(run_id=1, node_id=101, node_config={"partition-id": 1, "num-partitions": 4},
                      state=RecordDict(), run_config=cfg.to_run_config())
    reply = handlers.train(message, context)

    sent, returned = message.content["arrays"], reply.content["arrays"]
    assert set(returned) == set(sent) == set(initial)
    assert not np.allclose(returned["msa.head.4.weight"].numpy(), sent["msa.head.4.weight"].numpy())
    assert handlers.PRIVATE_STATE_KEY not in context.state  # no discriminators in this baseline
    arrays, _ = strategy.aggregate_train(1, [reply])
    assert [c.status for c in strategy.rounds[-1].clients] == ["ok"]
    metrics = server.evaluate(arrays.to_torch_state_dict())
    assert 0.0 <= metrics["acc2"] <= 1.0 and np.isfinite(metrics["mae"])
    server.finish(arrays.to_torch_state_dict(), 1, {})
    checkpoint = torch.load(server.run_dir.path / "checkpoint.pt", weights_only=True)
    assert checkpoint["generator"] == {} and checkpoint["msa"]


def test_hydiscgan_server_keeps_no_audio_visual(tmp_path):
    server = ServerRun(HyDiscGANConfig(dataset="synthetic", output_dir=str(tmp_path)))
    assert server.test_multimodal is None
    assert {key.split(".")[0] for key in server.initial_state()} == {"generator", "msa"}


def test_one_real_federated_row_has_client_cost_and_speaker_attack(tmp_path, capsys):
    out = tmp_path / "fed"
    argv = ["bench", "--dataset", "synthetic", "--methods", "hydiscgan", "--seeds", "1", "--num-clients", "2",
            "--out", str(out), *TINY]
    assert cli.main(argv) == 0
    columns, [row] = read_summary(out)
    assert columns == COLUMNS and row["method"] == "hydiscgan"
    assert all(float(row[c]) > 0 for c in COST)
    assert 0.0 <= float(row["speaker_attack_acc"]) <= 1.0 and float(row["speaker_attack_chance"]) > 0
    assert all(row[c] != "" for c in REGRESSION)
    assert "[hydiscgan mlp seed 0] round 2/2 (msa) test acc2=" in capsys.readouterr().out
    [run_dir] = [p.parent for p in (out / "runs" / "hydiscgan-mlp-seed0").glob("*/checkpoint.pt")]
    assert (run_dir / "metrics.csv").exists()
    assert (out / "rounds.png").stat().st_size > 0


def test_every_method_runs_with_every_model_and_resume_keys_on_the_model(tmp_path, monkeypatch, capsys):
    out = tmp_path / "models"
    argv = ["bench", "--dataset", "synthetic", "--methods", "text-only,central-multimodal", "--seeds", "2",
            "--out", str(out), *TINY]
    assert cli.main([*argv, "--msa-models", "mlp"]) == 0
    ran = []
    run_central = bench.run_central

    def recording(method, cfg, progress=None):
        ran.append((method, cfg.msa_model, cfg.seed))
        return run_central(method, cfg, progress)

    monkeypatch.setattr(bench, "run_central", recording)
    assert cli.main([*argv, "--msa-models", "mlp,context-gru"]) == 0
    # The mlp rows are already there; only the context-gru ones run, at the same budget.
    assert ran == [(m, "context-gru", s) for s in (0, 1) for m in ("text-only", "central-multimodal")]
    _, rows = read_summary(out)
    assert sorted((r["method"], r["model"], r["seed"]) for r in rows) == sorted(
        (m, model, s) for m in ("text-only", "central-multimodal") for model in ("mlp", "context-gru") for s in "01")
    assert all(1 <= int(r["selected_step"]) <= 1 for r in rows)
    report = (out / "summary.md").read_text()
    parameters = report.split("Trainable parameters")[1].split("| method |")[0]
    assert "| mlp | " in parameters and "| context-gru | " in parameters
    assert "| central-multimodal | context-gru | 2 |" in report and "| text-only | mlp | 2 |" in report
    paired = report.split("Paired difference")[1]
    # Each model's methods are compared with that model's text-only, never across models.
    assert "| central-multimodal | mlp | " in paired and "| central-multimodal | context-gru | " in paired
    assert "| text-only |" not in paired


def test_a_summary_with_other_columns_is_refused(tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    (out / "summary.csv").write_text("dataset,method,seed,acc2\nsynthetic,text-only,0,0.7\n")
    assert cli.main(["bench", "--dataset", "synthetic", "--methods", "text-only", "--seeds", "1", "--out",
                     str(out), *TINY]) == 2
    assert "not this version's" in capsys.readouterr().err


@pytest.mark.parametrize("models", ["mlp,nope", "", "no.such.module:X"])
def test_unknown_models_are_refused(models):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--msa-models", models])


@pytest.mark.parametrize("methods", ["hydiscgan,nope", ""])
def test_unknown_methods_are_refused(methods):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--methods", methods])


def test_misalignment_reaches_every_run_and_one_folder_holds_one_setting(tmp_path, monkeypatch, capsys):
    out = tmp_path / "misaligned"
    seen, run_central = [], bench.run_central

    def recording(method, cfg, progress=None):
        seen.append((cfg.misalign_rate, cfg.misalign_shift))
        return run_central(method, cfg, progress)

    monkeypatch.setattr(bench, "run_central", recording)
    argv = ["bench", "--dataset", "synthetic", "--methods", "text-only", "--seeds", "1", "--out", str(out), *TINY]
    assert cli.main([*argv, "--misalign-rate", "0.2", "--misalign-shift", "2"]) == 0
    assert seen == [(0.2, 2)]
    assert cli.main([*argv, "--misalign-rate", "0.3"]) == 2  # another setting needs another folder


def test_client_cost_sums_each_clients_whole_run_and_compares_it_with_fedavg_multimodal(tmp_path):
    (tmp_path / "metrics.csv").write_text("round,bytes_up_per_client,bytes_down_per_client,client_train_s_mean\n"
                                          "1,100,200,1.0\n2,0,0,0\n")
    (tmp_path / "clients.csv").write_text("server_round,node_id,bytes_up,bytes_down,train_s\n"
                                          "1,7,100,200,1.0\n1,8,100,200,3.0\n")
    cost = bench.client_cost(tmp_path)
    assert cost["client_bytes_up_per_round"] == 50 and cost["client_bytes_per_run"] == 300
    assert cost["client_train_s_per_run"] == 2.0
    table = pd.DataFrame({"method": ["hydiscgan-server-msa", "fedavg-multimodal"], "model": ["mlp", "mlp"],
                          "client_bytes_per_run": [300, 1200]})
    assert "hydiscgan-server-msa (mlp) 0.25" in "".join(bench.cost_ratio_lines(table, bench.groups(table)))
    assert bench.FEDERATED_VARIANTS["hydiscgan-server-msa"] == {"method": "hydiscgan", "msa-site": "server"}


def test_round_progress_reads_the_server_stage(capsys):
    progress = bench.RoundProgress("hydiscgan-server-msa seed 0")
    for line in ["INFO :      [ROUND 3/4]", "INFO :      round 3 (server-msa): no client work, the server trains",
                 "INFO :      round 3 (server-msa) recorded: valid_acc2=0.5000, acc2=0.7000;"]:
        progress(line)
    assert capsys.readouterr().out == "[hydiscgan-server-msa seed 0] round 3/4 (server-msa) test acc2=0.7000\n"


def test_the_missing_modality_grid_tests_every_subset_and_resumes(tmp_path, monkeypatch, capsys):
    """`bench --missing`: a row per rate, method, seed and test-time subset; text-alone methods score nothing
    without text and the same on every subset with it; fsrf changes with the subset; a rerun trains nothing;
    the report and the plot are written; one folder holds one setting."""
    out = tmp_path / "grid"
    methods = ["fsrf", "fsrf-dropout", "hydiscgan-central", "text-only"]
    argv = ["bench", "--dataset", "synthetic-seq", "--missing", "0,0.5", "--missing-methods", ",".join(methods),
            "--seeds", "1", "--out", str(out), *TINY]
    assert cli.main(argv) == 0
    table = pd.read_csv(out / "summary.csv")
    assert list(table.columns) == list(missing_bench.COLUMNS)
    assert len(table) == 2 * len(methods) * 7 and set(table["method"]) == set(methods)
    assert set(table["subset"]) == {"tav", "ta", "tv", "av", "t", "a", "v"}
    text_alone = table[table["method"].isin(["text-only", "hydiscgan-central"])]
    assert text_alone[~text_alone["subset"].str.contains("t")]["acc2"].isna().all()
    for _, group in text_alone[text_alone["subset"].str.contains("t")].groupby(["method", "missing_rate"]):
        assert group["acc2"].nunique() == 1
    fsrf = table[table["method"] == "fsrf"]
    assert fsrf["acc2"].notna().all() and fsrf["model"].eq("fsrf").all()
    assert (fsrf[fsrf["subset"] == "t"]["acc2"].to_numpy() != fsrf[fsrf["subset"] == "tav"]["acc2"].to_numpy()).any()
    assert fsrf["valid_acc2"].notna().all()  # each subset also on the validation speakers, to choose settings
    report = (out / "summary.md").read_text()
    assert "| fsrf − fsrf-dropout |" in report and (out / "missing.png").stat().st_size > 0
    for metric in ("acc2", "f1", "mae", "corr", "acc7"):  # the metrics on continuous labels, each paired
        assert f"{metric}, averaged over r" in report and f"Paired by seed, method − reference, {metric} " in report
    assert "Paired by seed, method − reference, valid_acc2 " in report

    def no_training(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(missing_bench, "run_central", no_training)
    assert cli.main(argv) == 0
    assert len(pd.read_csv(out / "summary.csv")) == len(table)
    assert cli.main([*argv[:-len(TINY) - 2], "--out", str(out), "--msa-models", "context-gru",
                     *TINY[2:]]) == 2  # another model in the same folder
    assert "other settings" in capsys.readouterr().err


def test_set_gives_every_run_a_run_config_key_and_belongs_to_the_folders_settings(tmp_path, monkeypatch, capsys):
    seen = []

    def record(method, cfg, test_subsets=None):
        seen.append(cfg)
        return _fixed_result(test_subsets)

    monkeypatch.setattr(missing_bench, "run_central", record)
    argv = ["bench", "--dataset", "synthetic-seq", "--missing", "0", "--missing-methods", "fsrf", "--seeds", "1",
            "--out", str(tmp_path), *TINY, "--set", "fsrf-lambda-distill=3", "--set", "fsrf-distill-teacher=complete"]
    assert cli.main(argv) == 0
    assert [(c.fsrf_lambda_distill, c.fsrf_distill_teacher) for c in seen] == [(3.0, "complete")]
    assert json.loads((tmp_path / "bench.json").read_text())["set"] == {"fsrf-lambda-distill": 3,
                                                                       "fsrf-distill-teacher": "complete"}
    assert cli.main(argv[:-2]) == 2 and "other settings" in capsys.readouterr().err
    for bad, message in (("seed=3", "sets seed itself"), ("fsrf-lambda-distill", "KEY=VALUE")):
        with pytest.raises(SystemExit):
            cli.main([*argv[:-4], "--set", bad])
        assert message in capsys.readouterr().err
    assert cli.main([*argv[:-4], "--set", "fsrf-lambda-distill=-1"]) == 2
    assert "fsrf-lambda-distill" in capsys.readouterr().err


def test_a_method_that_cannot_run_with_a_model_fails_before_any_run(tmp_path, capsys):
    argv = ["bench", "--dataset", "synthetic-seq", "--methods", "text-only,multitask", "--msa-models", "mlp,lmr-cbt",
            "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "multitask cannot run with msa-model lmr-cbt" in capsys.readouterr().err
    assert not (tmp_path / "summary.csv").exists()


def _fixed_result(test_subsets):
    """What run_central returns, without training (this test is about the settings reaching it)."""
    return CentralResult({f"{m}@{name}": 0.5 for name in test_subsets for m in ("acc2", "valid_acc2")}, 1,
                         np.zeros((1, 1)))


@pytest.mark.parametrize("argv", [["--missing", "0,1.2"], ["--missing", "0", "--missing-methods", "fsrf,mlp"]])
def test_missing_rates_and_grid_methods_are_checked(argv):
    with pytest.raises(SystemExit):
        cli.main(["bench", *argv])


def test_the_report_compares_each_ablation_with_the_full_recipe():
    rows = [{"method": method, "model": "mlp", "seed": seed, "acc2": base + 0.01 * seed, "f1": base,
             **{c: np.nan for c in bench.PAIRED_COLUMNS if c not in ("acc2", "f1")}}
            for seed in range(3) for method, base in (("text-only", 0.70), ("hydiscgan", 0.75),
                                                      ("hydiscgan-no-adv", 0.72))]
    table = pd.DataFrame(rows)
    pairs = bench.groups(table)
    lines = bench.paired_lines(table, pairs, "hydiscgan", (*bench.ABLATIONS, *bench.INFERENCES))
    assert lines[0].startswith("Paired difference to hydiscgan")
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| hydiscgan-no-adv"]  # text-only is no ablation
    assert "-0.0300 [-0.0300, -0.0300] (n=3) worse" in lines[4]
