"""`hydiscgan probe-lookups`: each model is trained on one of synthetic-fusion's lookups alone."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.data import synthetic_sequences_with_latents
from hydiscgan_fl.orchestration import cli
from hydiscgan_fl.orchestration.lookup_probe import LOOKUPS, lookup_dataset


def test_the_target_is_the_lookup_and_the_split_is_the_runs() -> None:
    cfg = HyDiscGANConfig(dataset="synthetic-fusion:12", seed=3)
    _, latents = synthetic_sequences_with_latents(3, interaction="key-value", num_speakers=12)
    run_dataset = cfg.load_dataset()
    for lookup in LOOKUPS:
        probed = lookup_dataset(cfg, lookup)
        np.testing.assert_array_equal(probed.labels, latents.planted[lookup].astype(np.float32))  # stored as float32
        np.testing.assert_array_equal(probed.split, run_dataset.split)  # validation speakers included
        np.testing.assert_array_equal(probed.audio, run_dataset.audio)


def test_the_command_writes_one_row_per_model_lookup_and_seed(tmp_path) -> None:
    out = tmp_path / "lookups"
    assert cli.main(["probe-lookups", "--dataset", "synthetic-fusion:8", "--msa-models", "mlp,cfn-sr",
                     "--rounds-msa", "1", "--local-epochs", "1", "--seeds", "1", "--out", str(out)]) == 0
    table = pd.read_csv(out / "lookups.csv")
    assert list(zip(table["model"], table["lookup"])) == [(m, lookup) for m in ("mlp", "cfn-sr") for lookup in LOOKUPS]
    assert table["corr"].notna().all() and "| cfn-sr | " in (out / "lookups.md").read_text()


def test_another_dataset_is_refused(tmp_path, capsys) -> None:
    assert cli.main(["probe-lookups", "--dataset", "synthetic-seq:8", "--out", str(tmp_path)]) == 2
    assert "needs a synthetic-fusion" in capsys.readouterr().err
