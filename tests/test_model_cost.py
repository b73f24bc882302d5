"""`hydiscgan model-cost`: a client's local training seconds per round, per MSA model and stage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hydiscgan_fl.orchestration import cli, model_cost

TINY = ["--rounds-align", "1", "--rounds-msa", "3", "--local-epochs", "1", "--repeats", "1"]


def test_every_stage_of_every_model_is_timed_against_the_reference(tmp_path, capsys) -> None:
    out = tmp_path / "cost"
    assert cli.main(["model-cost", "--dataset", "synthetic-seq", "--msa-models", "mlp,lmr-cbt", *TINY,
                     "--out", str(out)]) == 0
    table = pd.read_csv(out / "model_cost.csv")
    assert list(table["model"]) == ["mlp", "lmr-cbt"]
    assert (table[[*model_cost.STAGES, "hydiscgan_run"]] > 0).all().all()
    assert np.allclose(table["hydiscgan_run"], 0.25 * table["align"] + 0.75 * table["msa"])  # 1 align + 3 MSA rounds
    report = (out / "model_cost.md").read_text()
    assert "| mlp | " in report and "(x1.0)" in report and "| lmr-cbt | " in report


def test_the_reference_must_be_measured(tmp_path, capsys) -> None:
    assert cli.main(["model-cost", "--dataset", "synthetic", "--msa-models", "context-gru", "--out",
                     str(tmp_path), *TINY]) == 2
    assert "--reference 'mlp'" in capsys.readouterr().err
