"""The `hydiscgan` command. Each subcommand lives in its own module of this package and exposes
`register(subparsers)`, which adds its parser and sets `handler(args) -> int` as the default."""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMAND_MODULES: tuple[str, ...] = ("partitions", "bench", "byzantine", "privacy_sweep", "evolve", "scale",
                                      "secagg_cost", "model_cost", "model_selection", "lookup_probe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hydiscgan", description="HyDiscGAN on Flower: benchmarks and tools.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"hydiscgan_fl.orchestration.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
