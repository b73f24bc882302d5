"""requirements.lock is what every machine installs (.ci/run, the README's first command, deploy/Dockerfile
as constraints), and .env carries its Flower version to the Compose images. These tests fail when the
environment, the lock, .env and pyproject.toml drift apart; `.ci/lock` regenerates the lock and .env."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    """Canonical package name -> exact version, from requirements.lock."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        assert match, f"requirements.lock: not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_environment_matches_the_lock() -> None:
    """Every locked package is installed at exactly its locked version (a fresh .ci/run installs it)."""
    wrong = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert not wrong, f"environment differs from requirements.lock (run .ci/run or .ci/lock): {wrong}"


def test_lock_covers_and_satisfies_the_projects_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for spec in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"pyproject.toml needs {spec!r}, which requirements.lock lacks: run .ci/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {spec!r}: run .ci/lock")
    assert pins["torch"].startswith("2.13.0"), "torch stays 2.13.0 (a CPU wheel on these machines)"


def test_one_flower_version_everywhere() -> None:
    """The lock's flwr is the installed one and the one .env gives the Compose images and the Dockerfile."""
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line.strip() and not line.startswith("#"))
    assert env["FLWR_VERSION"] == locked()["flwr"] == metadata.version("flwr")
