"""The schedule flags every sweep command shares: --rounds-align, --rounds-msa, --local-epochs.

Each overrides the run config's key of the same name; left out, the run config's default applies.
"""

from __future__ import annotations

import argparse

from hydiscgan_fl.config import HyDiscGANConfig

SCHEDULE_KEYS = ("rounds-align", "rounds-msa", "local-epochs")


def add_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = HyDiscGANConfig().to_run_config()
    for key in SCHEDULE_KEYS:
        parser.add_argument(f"--{key}", type=int, default=None,
                            help=f"override the run config's {key} (default: {defaults[key]})")


def schedule_overrides(args: argparse.Namespace) -> dict[str, int]:
    """The schedule keys given on the command line, as run-config entries."""
    values = {key: getattr(args, key.replace("-", "_")) for key in SCHEDULE_KEYS}
    return {key: value for key, value in values.items() if value is not None}
