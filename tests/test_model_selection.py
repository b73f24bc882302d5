"""`hydiscgan select-model`: an MSA model is chosen on the validation speakers, and no test figure is written."""

from __future__ import annotations

import pandas as pd

from hydiscgan_fl.orchestration import cli
from hydiscgan_fl.orchestration.model_selection import chosen_model

TINY = ["--rounds-align", "1", "--rounds-msa", "1", "--local-epochs", "1", "--seeds", "2"]


def test_each_model_and_seed_is_validated_and_the_report_names_the_choice(tmp_path) -> None:
    out = tmp_path / "selection"
    assert cli.main(["select-model", "--dataset", "synthetic", "--msa-models", "mlp,cfn-sr", *TINY,
                     "--out", str(out)]) == 0
    table = pd.read_csv(out / "model_selection.csv")
    assert list(zip(table["model"], table["seed"])) == [("mlp", 0), ("cfn-sr", 0), ("mlp", 1), ("cfn-sr", 1)]
    assert table["valid_mae"].notna().all()  # synthetic labels are continuous: the runs select on MAE
    assert not [column for column in table.columns if column.startswith("test")]
    report = (out / "model_selection.md").read_text()
    assert f"**chosen: {chosen_model(table, 'regression')}**" in report and "| cfn-sr | " in report


def test_the_choice_follows_the_direction_of_the_selection_metric() -> None:
    table = pd.DataFrame({"model": ["a", "b", "a", "b"], "seed": [0, 0, 1, 1],
                          "valid_acc2": [0.8, 0.7, 0.8, 0.7], "valid_mae": [0.9, 0.5, 0.9, 0.5]})
    assert chosen_model(table, "binary") == "a"  # higher acc2
    assert chosen_model(table, "regression") == "b"  # lower MAE


def test_one_seed_is_refused(tmp_path, capsys) -> None:
    assert cli.main(["select-model", "--dataset", "synthetic", "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "--seeds must be >= 2" in capsys.readouterr().err
