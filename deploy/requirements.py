"""Print the project's dependencies from pyproject.toml as a pip requirements file for deploy/Dockerfile.

    python deploy/requirements.py pyproject.toml [--flwr-version X.Y.Z] [--torch-variant cpu]

- `flwr` entries are replaced by `flwr==<version>`: the version the flwr/superexec image already has
  (default: the installed flwr), so that pip never swaps the image's Flower for another release;
- `torch==V` becomes `torch==V+cpu` (`--torch-variant ""` keeps it as written), to be installed with
  `--extra-index-url https://download.pytorch.org/whl/cpu`;
- every other dependency is kept as written.
Standard library only (Python >= 3.11 for tomllib), so it runs in the image before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(pyproject: dict, flwr_version: str, torch_variant: str = "cpu") -> list[str]:
    lines = []
    for dep in pyproject["project"]["dependencies"]:
        match = _NAME.match(dep)
        if not match:
            raise ValueError(f"cannot read the dependency {dep!r}")
        name = match.group(1).lower().replace("_", "-")
        if name == "flwr":
            lines.append(f"flwr=={flwr_version}")
        elif name == "torch" and torch_variant:
            pinned = re.fullmatch(r"\s*torch\s*==\s*([0-9][0-9A-Za-z.]*)\s*", dep)
            if not pinned:
                raise ValueError(f"torch must be pinned with == for the {torch_variant} build, got {dep!r}")
            lines.append(f"torch=={pinned.group(1)}+{torch_variant}")
        else:
            lines.append(dep.strip())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("pyproject")
    parser.add_argument("--flwr-version", default=None, help="default: the installed flwr")
    parser.add_argument("--torch-variant", default="cpu")
    args = parser.parse_args(argv)
    with open(args.pyproject, "rb") as handle:
        data = tomllib.load(handle)
    flwr_version = args.flwr_version or metadata.version("flwr")
    print("\n".join(requirements(data, flwr_version, args.torch_variant)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
