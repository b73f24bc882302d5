"""docker-compose.yml and deploy/ without a Docker engine: images pinned to the installed flwr (through
FLWR_VERSION in .env, written by .ci/lock from requirements.lock), every
command accepted by the installed flwr's own argument parsers, TLS and SuperNode authentication on,
and each data file mounted into exactly one container. tests/test_deployment.py runs the same
SuperLink/SuperNode commands as real processes.

If `docker-compose` (Debian package docker-compose) or `docker compose` is installed, the file is
also validated by it (`config -q` needs no engine); otherwise that one test is skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args
from flwr.supercore.cli.flower_superexec import _parse_args as superexec_parser
from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink_parser
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
FLWR_VERSION = metadata.version("flwr")
NUM_PARTITIONS = 3
NODES = [f"supernode-{i}" for i in range(NUM_PARTITIONS)]
EXECUTORS = [f"superexec-clientapp-{i}" for i in range(NUM_PARTITIONS)]
# Flags that 1.41 and 1.42 reject, ignores or deprecates (docs/flower.md V.8), and --insecure (TLS must be on).
OUTDATED = {"--insecure", "--fleet-api-type", "--fleet-api-address", "--control-api-address",
            "--serverappio-api-address", "--clientappio-api-address", "--appio-api-address", "--plugin-type",
            "--auth-list-public-keys", "--auth-supernode-public-key", "--allow-runtime-dependency-installation"}


def dotenv() -> dict[str, str]:
    """The variables of .env, which Compose reads from the project folder (the repository root)."""
    lines = (ROOT / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME} and ${NAME:?message} substitution (the forms docker-compose.yml uses)."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda match: variables[match.group(1)], text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), dotenv()))


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def parse(parser: argparse.ArgumentParser, service: str, command: list[str]) -> argparse.Namespace:
    known = set(parser._option_string_actions)  # exact spellings: argparse would also take abbreviations
    unknown = [flag for flag in flag_args(command) if flag not in known]
    assert not unknown, f"flwr {FLWR_VERSION} has no flag {unknown} ({service})"
    try:
        return parser.parse_args([str(arg) for arg in command])
    except SystemExit as exc:  # argparse reports the bad flag on stderr
        pytest.fail(f"flwr {FLWR_VERSION} rejects the command of {service}: {command} (exit {exc.code})")


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """container path -> (host path, mode)"""
    out = {}
    for volume in service.get("volumes", []):
        host, container, *mode = volume.split(":")
        out[container] = (host, mode[0] if mode else "rw")
    return out


def flag_args(command: list[str]) -> list[str]:
    return [str(arg) for arg in command if str(arg).startswith("--")]


def test_topology_and_pinned_images(services: dict) -> None:
    """The images run the installed Flower: .env's FLWR_VERSION (all tags and the Dockerfile's base) must
    equal the flwr this environment has (installed from requirements.lock)."""
    assert dotenv()["FLWR_VERSION"] == FLWR_VERSION
    assert sorted(services) == sorted(["superlink", "superexec-serverapp", *NODES, *EXECUTORS])
    assert services["superlink"]["image"] == f"flwr/superlink:{FLWR_VERSION}"
    for node in NODES:
        assert services[node]["image"] == f"flwr/supernode:{FLWR_VERSION}"
    for name in ["superexec-serverapp", *EXECUTORS]:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile",
                                    "args": {"FLWR_VERSION": FLWR_VERSION}}, name
        assert service["image"].endswith(f":{FLWR_VERSION}"), name
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^ARG FLWR_VERSION\nFROM flwr/superexec:\$\{FLWR_VERSION\}$", dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["flower-superexec"\]$', dockerfile, re.M)


def test_commands_are_accepted_by_the_installed_flwr(services: dict) -> None:
    for name, service in services.items():
        assert not set(flag_args(service["command"])) & OUTDATED, f"{name} uses an outdated flag"

    link = parse(superlink_parser(), "superlink", services["superlink"]["command"])
    assert (link.ssl_ca_certfile, link.ssl_certfile, link.ssl_keyfile) == (
        "/app/certificates/ca.crt", "/app/certificates/server.pem", "/app/certificates/server.key")
    assert link.enable_supernode_auth and not link.insecure
    assert link.isolation == "process"  # the SuperExec services run the ServerApp
    assert link.host == "0.0.0.0"
    assert services["superlink"]["ports"] == [f"{link.port}:{link.port}"]
    assert link.runtime_dependency_install is False  # dependencies are baked into deploy/Dockerfile's image

    serverapp = parse(superexec_parser(), "superexec-serverapp", services["superexec-serverapp"]["command"])
    assert serverapp.runtime_api_address == f"superlink:{link.port}"
    assert serverapp.root_certificates == "/app/certificates/ca.crt" and not serverapp.insecure

    for i, (node, executor) in enumerate(zip(NODES, EXECUTORS)):
        args = parse(supernode_parser(), node, services[node]["command"])
        assert args.superlink == f"superlink:{link.port}"
        assert args.root_certificates == "/app/certificates/ca.crt" and not args.insecure
        assert args.auth_supernode_private_key == f"/app/keys/{node}"
        assert args.isolation == "process" and args.host == "0.0.0.0"
        assert (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile) == (
            f"/app/certificates/{node}.pem", f"/app/certificates/{node}.key", "/app/certificates/ca.crt")
        config = parse_config_args([args.node_config])
        assert config == {"partition-id": i, "num-partitions": NUM_PARTITIONS,
                          "data-path": f"/data/partition-{i}.npz", "state-dir": "/client-state"}
        # The ClientApp runs in the executor container: that is where the node config's paths must exist.
        executor_mounts = mounts(services[executor])
        assert executor_mounts[config["data-path"]] == (f"./deploy/data/partition-{i}.npz", "ro")
        assert executor_mounts[config["state-dir"]] == (f"./deploy/client-state/{node}", "rw")

        clientapp = parse(superexec_parser(), executor, services[executor]["command"])
        assert clientapp.runtime_api_address == f"{node}:{args.port}"
        assert clientapp.root_certificates == "/app/certificates/ca.crt" and not clientapp.insecure


def test_every_file_a_command_names_is_mounted(services: dict) -> None:
    """Read-only, except the SuperLink's database, which lives in the writable state folder."""
    for name, service in services.items():
        mounted = mounts(service)
        command = [str(arg) for arg in service["command"]]
        database = command[command.index("--database") + 1] if "--database" in command else None
        for arg in command:
            for path in re.findall(r"(/app/[\w./-]+|/data/[\w./-]+)", arg):
                if name.startswith("supernode-") and path.startswith("/data/"):
                    continue  # data-path is opened by the ClientApp, in the node's SuperExec container (above)
                where = [c for c in mounted if path == c or path.startswith(c + "/")]
                assert where, f"{name} names {path} but does not mount it"
                mode = mounted[max(where, key=len)][1]
                assert mode == ("rw" if path == database else "ro"), f"{name} mounts {path} as {mode}"


def test_each_data_file_is_mounted_into_one_container(services: dict) -> None:
    data_mounts: dict[str, list[str]] = {}
    for name, service in services.items():
        for container, (host, mode) in mounts(service).items():
            assert not host.rstrip("/").endswith("deploy/data"), f"{name} mounts the whole data folder"
            if host.startswith("./deploy/data/"):
                assert mode == "ro", f"{name} mounts {host} writable"
                data_mounts.setdefault(host, []).append(f"{name}:{container}")
            assert "ca.key" not in host, f"{name} mounts the CA's private key"
    expected = {f"./deploy/data/partition-{i}.npz": [f"{EXECUTORS[i]}:/data/partition-{i}.npz"]
                for i in range(NUM_PARTITIONS)}
    expected["./deploy/data/server.npz"] = ["superexec-serverapp:/data/server.npz"]
    assert data_mounts == expected
    # Private keys: each SuperNode's authentication key and TLS key in that SuperNode only.
    for name, service in services.items():
        for container, (host, _) in mounts(service).items():
            if host.startswith("./deploy/keys/") or host.endswith(".key"):
                owner = "superlink" if host.endswith("/server.key") else Path(host).name.removesuffix(".key")
                assert name == owner, f"{name} mounts {host}, which belongs to {owner}"
    # A ClientApp's saved state (its private models) stays with its node, like its data.
    state_mounts = {name: host for name, service in services.items()
                    for host, _ in mounts(service).values() if "client-state" in host}
    assert state_mounts == {executor: f"./deploy/client-state/{node}" for node, executor in zip(NODES, EXECUTORS)}
    # The ServerApp writes results to /results (run config output-dir), the SuperLink its state.
    assert mounts(services["superexec-serverapp"])["/results"] == ("./deploy/results", "rw")
    assert mounts(services["superlink"])["/app/state"] == ("./deploy/state", "rw")


def test_clientapp_containers_reach_their_own_supernode_only(compose: dict, services: dict) -> None:
    networks = compose["networks"]
    for i, (node, executor) in enumerate(zip(NODES, EXECUTORS)):
        assert services[executor]["networks"] == [f"node-{i}"]
        assert networks[f"node-{i}"] == {"internal": True}
        users = sorted(name for name, s in services.items() if f"node-{i}" in s["networks"])
        assert users == sorted([node, executor])
        assert "fleet" in services[node]["networks"]
    assert services["superexec-serverapp"]["networks"] == ["server"] and networks["server"] == {"internal": True}


def test_certificates_name_every_host_the_commands_dial(tmp_path: Path, services: dict) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    subprocess.run(["bash", str(ROOT / "deploy/make_certs.sh"), "-o", str(tmp_path)], check=True, capture_output=True)

    def sans(pem: str) -> str:
        return subprocess.run(["openssl", "x509", "-in", str(tmp_path / pem), "-noout", "-ext", "subjectAltName"],
                              check=True, capture_output=True, text=True).stdout

    assert all(n in sans("server.pem") for n in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:superlink"))
    for node in NODES:
        assert f"DNS:{node}" in sans(f"{node}.pem")
        subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / f"{node}.pem")],
                       check=True, capture_output=True)
    # Every host:port a command dials is named in the certificate of the server it reaches.
    for name, service in services.items():
        command = [str(arg) for arg in service["command"]]
        for flag in ("--superlink", "--runtime-api-address"):
            if flag in command:
                host = command[command.index(flag) + 1].rsplit(":", 1)[0]
                pem = "server.pem" if host == "superlink" else f"{host}.pem"
                assert f"DNS:{host}" in sans(pem), (name, host)


def test_dockerfile_installs_the_projects_dependencies() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_requirements", ROOT / "deploy" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = module.requirements(pyproject, FLWR_VERSION)
    expected = []
    for dep in pyproject["project"]["dependencies"]:
        if dep.startswith("flwr"):
            expected.append(f"flwr=={FLWR_VERSION}")  # the image's Flower, without the simulation extra
        elif dep.startswith("torch"):
            assert re.fullmatch(r"torch==[\d.]+", dep), f"torch must stay pinned: {dep}"
            expected.append(f"{dep}+cpu")
        else:
            expected.append(dep)
    assert lines == expected
    assert f"torch=={metadata.version('torch').split('+')[0]}+cpu" in lines  # what this venv runs
    printed = subprocess.run([sys.executable, str(ROOT / "deploy/requirements.py"), str(ROOT / "pyproject.toml")],
                             check=True, capture_output=True, text=True).stdout.split()
    assert printed == lines
    text = DOCKERFILE.read_text()
    assert "download.pytorch.org/whl/cpu" in text and "requirements.py" in text
    assert "-c /tmp/hydiscgan/requirements.lock" in text  # the image installs the locked versions
    # The build context is the repository root; the Dockerfile-specific ignore file lets in what COPY needs.
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    copied = re.search(r"^COPY (?:--\S+ )*(.+) (\S+)$", text, re.M).group(1).split()
    assert ignore[ignore.index("*"):][0] == "*" and all(f"!{path}" in ignore for path in copied)


def test_remote_superlink_overlay_names_existing_supernodes(services: dict) -> None:
    overlay = yaml.safe_load((ROOT / "deploy" / "compose.remote-superlink.yml").read_text())["services"]
    assert sorted(overlay) == NODES
    for node in NODES:
        assert overlay[node] == {"extra_hosts": [overlay[NODES[0]]["extra_hosts"][0]]}
        assert overlay[node]["extra_hosts"][0].startswith("superlink:${SUPERLINK_IP")


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "deploy/compose.remote-superlink.yml"]])
def test_compose_validator_accepts_the_file(files: list[str]) -> None:
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.skip("no Compose implementation installed (apt-get install docker-compose)")
    for name in files:
        command += ["-f", str(ROOT / name)]
    env = {**os.environ, "SUPERLINK_IP": "203.0.113.7"}
    done = subprocess.run([*command, "config", "-q"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
