"""The run config: pyproject.toml's [tool.flwr.app.config] mirrors HyDiscGANConfig; bad values are named."""

from __future__ import annotations

import tomllib

import pytest

from hydiscgan_fl.config import ConfigError, HyDiscGANConfig
from tests.conftest import ROOT


def pyproject_run_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_equal_the_config_model():
    # Flower refuses --run-config keys that pyproject.toml does not list, so every field must be there.
    table, defaults = pyproject_run_config(), HyDiscGANConfig().to_run_config()
    assert sorted(table) == sorted(defaults)
    for key, value in defaults.items():
        assert table[key] == value, key
        assert type(table[key]) is type(value), f"{key}: pyproject has {type(table[key]).__name__}"
    assert HyDiscGANConfig.from_run_config(table) == HyDiscGANConfig()


@pytest.mark.parametrize("key, value, named", [
    ("aggregation", "local", "aggregation"),
    ("aggregation", "Fed Avg", "aggregation"),
    ("aggregation-msa", "my_pkg.rules:", "aggregation-msa"),
    ("trimmed-beta", 0.5, "trimmed-beta"),
    ("fault-rate", 1.5, "fault-rate"),
    ("byzantine-mode", "flip", "byzantine-mode"),
    ("resume-from", "runs/old", "resume-from"),
    ("agregation", "fedavg", "agregation"),
])
def test_bad_robustness_keys_are_named(key, value, named):
    with pytest.raises(ConfigError, match=named):
        HyDiscGANConfig.from_run_config({key: value})


def test_rule_forms_and_local_components():
    cfg = HyDiscGANConfig.from_run_config({"aggregation": "examples.my_rule:ClippedMean",
                                           "aggregation-generator": "krum", "aggregation-msa": "local"})
    assert cfg.local_components == ("msa",)
    assert HyDiscGANConfig().local_components == ()
