"""The Compose topology of docker-compose.yml as real processes on 127.0.0.1: one SuperLink, three
SuperNodes (one partition file each), TLS on every connection, SuperNode authentication on.

The SuperLink and SuperNode commands are read from docker-compose.yml and run with the container
paths mapped through each service's volumes (to files under tmp_path), the container host names
and ports replaced by 127.0.0.1 and free ports, and `--isolation process` replaced by `subprocess`:
here the SuperLink and each SuperNode start the SuperExec themselves, and the test checks that the
SuperExec commands they start are the ones the Compose file gives its SuperExec services.
Every process is started with its own FLWR_HOME and stopped by PID at the end, also on failure.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hydiscgan_fl.orchestration.flwr_runner import OFFLINE_ENV, free_port
from hydiscgan_fl.orchestration.processes import child_processes, process_tree

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
NODES = ("supernode-0", "supernode-1", "supernode-2")
CONNECTION = "hydiscgan-test"
# The run config a researcher submits to the Compose deployment (docs/deploy.md), in container paths
# of superexec-serverapp; the test maps them through that service's volumes like the commands.
RUN_CONFIG = {"dataset": "partitions:/data", "output-dir": "/results",
              "rounds-align": 1, "rounds-msa": 1, "local-epochs": 1}
PROGRAMS = {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}


# ------------------------------------------------------------------ Compose -> local commands
def compose_services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def program_of(service: dict) -> str:
    if "build" in service:
        return "flower-superexec"  # deploy/Dockerfile keeps the superexec image's entrypoint
    return PROGRAMS[service["image"].rsplit(":", 1)[0]]


def volume_map(base: Path, *services: dict) -> dict[str, Path]:
    """Container path -> the local path of the same host file (host paths are relative to the repo).

    The folder of a mounted file maps to the host file's folder too when the file names agree
    (e.g. /data -> deploy/data for /data/server.npz), unless two mounts disagree about it.
    """
    mapping: dict[str, Path] = {}
    folders: dict[str, set[Path]] = {}
    for service in services:
        for volume in service.get("volumes", []):
            host, container = volume.split(":")[:2]
            assert host.startswith("./"), f"host path {host!r} must be relative to the repository"
            local = base / host[2:]
            assert mapping.setdefault(container, local) == local, f"{container} maps to two host paths"
            if Path(container).name == local.name:
                folders.setdefault(str(Path(container).parent), set()).add(local.parent)
    for folder, locals_ in folders.items():
        if len(locals_) == 1 and folder not in mapping and folder != "/":
            mapping[folder] = locals_.pop()
    return mapping


def localize_path(text: str, mapping: dict[str, Path]) -> str:
    """Replace container paths (a whole argument, or after `"`, `=` or `:`) in one pass, longest first."""
    if not mapping:
        return text
    alternatives = "|".join(re.escape(c) for c in sorted(mapping, key=len, reverse=True))
    pattern = re.compile(r'(?:^|(?<=["=:]))(' + alternatives + r')(?=$|/|")')
    return pattern.sub(lambda m: str(mapping[m.group(1)]), text)


def localize(args: list[str], mapping: dict[str, Path], ports: dict[str, int], own_port: int | None) -> list[str]:
    """A Compose command as a local one: paths via `mapping`, service:port -> 127.0.0.1:free port."""
    out: list[str] = []
    for prev, arg in zip([None, *args], args):
        arg = str(arg)
        if prev == "--host":
            arg = "127.0.0.1"
        elif prev == "--port":
            assert own_port is not None
            arg = str(own_port)
        elif prev == "--isolation":
            assert arg == "process", "the Compose file runs each SuperExec in its own container"
            arg = "subprocess"
        elif prev in ("--superlink", "--runtime-api-address"):
            host, _ = arg.rsplit(":", 1)
            arg = f"127.0.0.1:{ports[host]}"
        else:
            arg = localize_path(arg, mapping)
        out.append(arg)
    return out


def flag_values(args: list[str]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            values[arg] = nxt
    return values


def toml_assignments(values: dict) -> str:
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in values.items())


def test_localize_maps_paths_hosts_and_ports(tmp_path: Path) -> None:
    services = compose_services()
    node, executor = services["supernode-1"], services["superexec-clientapp-1"]
    mapping = volume_map(tmp_path, node, executor)
    ports = {"superlink": 1111, "supernode-1": 2222}
    local = localize(node["command"], mapping, ports, own_port=2222)
    flags = flag_values(local)
    assert flags["--superlink"] == "127.0.0.1:1111"
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "2222"
    assert flags["--isolation"] == "subprocess"
    assert flags["--root-certificates"] == str(tmp_path / "deploy/certs/ca.crt")
    assert flags["--auth-supernode-private-key"] == str(tmp_path / "deploy/keys/supernode-1")
    assert flags["--node-config"] == (f'partition-id=1 num-partitions=3 '
                                      f'data-path="{tmp_path / "deploy/data/partition-1.npz"}" '
                                      f'state-dir="{tmp_path / "deploy/client-state/supernode-1"}"')
    assert localize(executor["command"], mapping, ports, None)[-1] == "127.0.0.1:2222"


# ------------------------------------------------------------------ process handling
def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _signal_alive(pids: list[int], sig: int) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Processes:
    """Processes this test started, and everything they start; stop() ends them all by PID."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.started: dict[str, subprocess.Popen] = {}
        self.seen: set[int] = set()
        (tmp / "logs").mkdir()

    def env(self, home: str) -> dict[str, str]:
        flwr_home = self.tmp / "homes" / home
        flwr_home.mkdir(parents=True, exist_ok=True)
        bindir = str(Path(sys.executable).parent)
        return {**os.environ, **OFFLINE_ENV, "FLWR_HOME": str(flwr_home),
                "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.tmp / "logs" / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.env(name), cwd=self.tmp)
        log.close()
        self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs_tail(self, chars: int = 2500) -> str:
        return "\n".join(f"--- {name} ---\n{self.log(name)[-chars:]}" for name in self.started)

    def remember_descendants(self) -> None:
        for proc in self.started.values():
            self.seen.update(process_tree([proc.pid]) - {proc.pid})

    def stop(self, addresses: list[str]) -> list[str]:
        """SIGTERM then SIGKILL every started process, every descendant seen and every process that
        names our folder or addresses (a SuperExec whose SuperNode died first); return survivors."""
        self.remember_descendants()
        pids = [proc.pid for proc in self.started.values()] + sorted(self.seen)
        pids += [pid for pid in _processes_of(self.tmp, addresses) if pid not in pids]
        _signal_alive(pids, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            for proc in self.started.values():
                proc.poll()  # reap our direct children
            time.sleep(0.1)
        _signal_alive(pids, signal.SIGKILL)
        for proc in self.started.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.2)
        return [f"{pid}: {' '.join(_cmdline(pid))}" for pid in pids if _alive(pid)]


def _processes_of(folder: Path, addresses: list[str]) -> list[int]:
    """Live processes whose command line mentions our tmp folder or has one of our addresses as an argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _alive(int(entry.name)):
            args = _cmdline(int(entry.name))
            if any(str(folder) in arg for arg in args) or set(args) & set(addresses):
                found.append(int(entry.name))
    return found


# ------------------------------------------------------------------ the deployment
def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")


def test_compose_topology_runs_with_tls_and_supernode_auth(tmp_path: Path) -> None:
    _need("openssl", "ssh-keygen")
    bindir = Path(sys.executable).parent
    for tool in ("flower-superlink", "flower-supernode", "flower-superexec", "flwr", "hydiscgan"):
        if not (bindir / tool).exists():
            pytest.skip(f"{tool} is not installed beside {sys.executable}")
    started_at = time.monotonic()

    def phase(text: str) -> None:
        print(f"[{time.monotonic() - started_at:6.1f} s] {text}", flush=True)

    services = compose_services()
    deploy = tmp_path / "deploy"

    # What the researcher and the machines prepare (docs/deploy.md), with the repository's scripts.
    subprocess.run(["bash", str(ROOT / "deploy/make_certs.sh"), "-o", str(deploy / "certs")], check=True,
                   capture_output=True)
    subprocess.run(["bash", str(ROOT / "deploy/make_keys.sh"), "-o", str(deploy / "keys"), *NODES, "intruder"],
                   check=True, capture_output=True)
    made = subprocess.run([str(bindir / "hydiscgan"), "partition", "--dataset", "mosi-bclstm", "--num-partitions",
                           "3", "--partition", "speaker", "--seed", "0", "--out", str(deploy / "data")],
                          capture_output=True, text=True, env={**os.environ, **OFFLINE_ENV})
    assert made.returncode == 0, made.stderr
    phase("certificates, keys and partitions made")
    (deploy / "state").mkdir()
    (deploy / "results").mkdir()

    ports = {"superlink": free_port(), **{node: free_port() for node in NODES}}
    procs = Processes(tmp_path)
    cli_env = procs.env("cli")
    (Path(cli_env["FLWR_HOME"]) / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
        f'address = "127.0.0.1:{ports["superlink"]}"\nroot-certificates = "{deploy / "certs/ca.crt"}"\n')

    def flwr(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / "flwr"), *args], env=cli_env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=timeout)

    def json_of(done: subprocess.CompletedProcess) -> dict:
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {}

    def nodes_by_status() -> dict[str, str]:
        listed = json_of(flwr("supernode", "list", CONNECTION, "--format", "json"))
        return {n["node-id"]: n["status"] for n in listed.get("nodes", [])}

    def wait_for(what: str, check, timeout: float, every: float = 0.5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(every)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{procs.logs_tail()}")

    server_paths = volume_map(tmp_path, services["superlink"], services["superexec-serverapp"])
    addresses = [f"127.0.0.1:{port}" for port in ports.values()]
    try:
        # SuperLink (the command of the Compose service `superlink`).
        superlink_argv = [str(bindir / "flower-superlink"),
                          *localize(services["superlink"]["command"], server_paths, ports, ports["superlink"])]
        assert {"--enable-supernode-auth", "--ssl-certfile", "--database"} <= set(superlink_argv)
        superlink = procs.start("superlink", superlink_argv)
        # `flwr ... --format json` exits 0 also when it fails: read its "success".
        wait_for("the SuperLink's Control API", lambda: superlink.poll() is not None or json_of(flwr(
            "supernode", "list", CONNECTION, "--format", "json")).get("success") is True, 60)
        assert superlink.poll() is None, procs.log("superlink")
        phase("SuperLink up")

        # Register the three data machines' public keys (in parallel); the intruder's key stays unregistered.
        registering = {node: subprocess.Popen(
            [str(bindir / "flwr"), "supernode", "register", str(deploy / f"keys/{node}.pub"), CONNECTION,
             "--format", "json"], env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) for node in NODES}
        node_ids = {}
        for node, proc in registering.items():
            out, _ = proc.communicate(timeout=120)
            try:
                node_ids[node] = str(json.loads(out).get("node-id", ""))
            except ValueError:
                node_ids[node] = ""
            assert proc.returncode == 0 and node_ids[node], f"register {node}: {out}"
        assert nodes_by_status() == {node_id: "registered" for node_id in node_ids.values()}
        phase("3 keys registered")

        # Three SuperNodes (the Compose services supernode-<i>), each seeing its own partition file only.
        for node in NODES:
            paths = volume_map(tmp_path, services[node], services[node.replace("supernode", "superexec-clientapp")])
            argv = localize(services[node]["command"], paths, ports, ports[node])
            assert f"data-path=\"{deploy / 'data' / node.replace('supernode', 'partition')}.npz\"" in " ".join(argv)
            procs.start(node, [str(bindir / "flower-supernode"), *argv])

        # A SuperNode with the intruder's key and otherwise the same flags: it must be refused.
        paths = volume_map(tmp_path, services["supernode-0"], services["superexec-clientapp-0"])
        intruder_argv = localize(services["supernode-0"]["command"], paths, ports, free_port())
        intruder_argv[intruder_argv.index("--auth-supernode-private-key") + 1] = str(deploy / "keys/intruder")
        intruder = procs.start("intruder", [str(bindir / "flower-supernode"), *intruder_argv])

        # A SuperNode logs its id once the SuperLink accepted it; then one look at the SuperLink's list.
        wait_for("3 SuperNodes activated", lambda: all(
            f"SuperNode ID: {node_ids[node]}" in procs.log(node) for node in NODES), 120)
        assert nodes_by_status() == {node_id: "online" for node_id in node_ids.values()}, \
            "the three registered nodes are online, and no other node is known"
        phase("3 SuperNodes online")

        # The SuperExec processes the SuperLink and SuperNodes started = the Compose SuperExec services.
        for owner, service in [("superlink", "superexec-serverapp"),
                               *[(node, node.replace("supernode", "superexec-clientapp")) for node in NODES]]:
            pid = procs.started[owner].pid
            executors = [_cmdline(kid) for kid in child_processes(pid) if "flower-superexec" in " ".join(_cmdline(kid))]
            assert len(executors) == 1, f"{owner} started {executors}"
            actual = flag_values(executors[0])
            actual.pop("--parent-pid")
            paths = volume_map(tmp_path, services[owner], services[service])
            expected = flag_values(localize(services[service]["command"], paths, ports, None))
            assert actual == expected, f"{owner}'s SuperExec {actual} differs from Compose {service} {expected}"

        def submit_and_wait(extra: dict) -> tuple[str, str]:
            """Submit the run as a researcher would, wait for it to finish; its id and the ServerApp's log."""
            run_config = {k: localize_path(v, server_paths) if isinstance(v, str) else v
                          for k, v in {**RUN_CONFIG, **extra}.items()}
            submitted = flwr("run", str(ROOT), CONNECTION, "--run-config", toml_assignments(run_config),
                             "--format", "json")
            run_id = str(json_of(submitted).get("run-id", ""))
            assert run_id, f"flwr run failed: {submitted.stdout}{submitted.stderr}"
            phase(f"run {run_id} submitted ({extra or 'defaults'})")

            # Each `flwr list` costs a CPU-second on this 2-core machine, so ask the SuperLink only every
            # 10 s or once the ServerApp has written summary.json (its last file), and watch the folder meanwhile.
            last_asked = time.monotonic()

            def status() -> str:
                nonlocal last_asked
                procs.remember_descendants()
                written = any((deploy / "results").glob(f"*-run{run_id}/summary.json"))
                if not written and time.monotonic() - last_asked < 10:
                    return ""
                last_asked = time.monotonic()
                runs = json_of(flwr("list", CONNECTION, "--run-id", run_id, "--format", "json")).get("runs", [])
                return runs[0]["status"] if runs and runs[0]["status"].startswith("finished") else ""

            final = wait_for(f"run {run_id} to finish", status, 480, every=0.5)  # ~60 s on a quiet 2-core machine
            log = flwr("log", run_id, CONNECTION, "--show").stdout
            (tmp_path / "logs" / f"serverapp-{run_id}.log").write_text(log)
            assert final == "finished:completed", f"run {run_id}: {final}\n{log[-4000:]}\n{procs.logs_tail()}"
            phase(f"run {run_id} {final}")
            return run_id, log

        run_id, _ = submit_and_wait({})
        run_config = {k: localize_path(v, server_paths) if isinstance(v, str) else v for k, v in RUN_CONFIG.items()}

        # The intruder never got in.
        wait_for("the intruder SuperNode to exit", lambda: intruder.poll() is not None, 60)
        assert intruder.returncode != 0
        assert "Failed to activate SuperNode" in procs.log("intruder"), procs.log("intruder")[-2000:]

        # Results: where output-dir points, one run directory named after the run id.
        run_dirs = sorted((deploy / "results").glob(f"*-run{run_id}"))
        assert len(run_dirs) == 1, list((deploy / "results").iterdir())
        with (run_dirs[0] / "metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["stage"], int(r["round"])) for r in rows] == [("align", 1), ("msa", 2)]
        for row in rows:
            assert 0.0 <= float(row["test_acc2"]) <= 1.0 and 0.0 <= float(row["test_f1"]) <= 1.0, row
            assert int(row["clients_sent"]) == 3 and int(row["replies_ok"]) == 3, row
        summary = json.loads((run_dirs[0] / "summary.json").read_text())
        assert summary["num_clients"] == 3 and summary["dataset"] == run_config["dataset"]
        assert summary["label_kind"] == "binary" and (summary["rounds_align"], summary["rounds_msa"]) == (1, 1)
        for key in ("acc2", "f1", "text_only_acc2", "text_only_f1"):
            assert 0.0 <= summary[key] <= 1.0 and math.isfinite(summary[key]), (key, summary[key])
        with (run_dirs[0] / "clients.csv").open() as handle:
            clients = list(csv.DictReader(handle))
        assert len(clients) == 6, clients  # 3 clients x 2 rounds
        config = json.loads((run_dirs[0] / "config.json").read_text())
        assert config["dataset"] == f"partitions:{deploy / 'data'}"
        # Whatever a ClientApp keeps between rounds stays in its own node's state-dir, not with the server.
        assert not (deploy / "results" / "client-state").exists()
        print(f"deployment run {run_id} completed in {time.monotonic() - started_at:.1f} s "
              f"(acc2={summary['acc2']:.3f}, f1={summary['f1']:.3f})")

        # The same deployment with secure aggregation (docs/secure-aggregation.md): the key stages reach the
        # SuperNodes' ClientApps over TLS, the server unmasks the sum of the three masked updates. One MSA round
        # (G and M masked together): a SecAgg+ round took over 100 s on this 2-core machine (key sharing alone 48 s).
        secure_id, secure_log = submit_and_wait({"secure-aggregation": "secaggplus", "rounds-align": 0})
        assert "secure aggregation keys shared by 3 of 3 client(s)" in secure_log, secure_log[-3000:]
        with next((deploy / "results").glob(f"*-run{secure_id}")).joinpath("metrics.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert [(r["stage"], int(r["replies_ok"])) for r in rows] == [("msa", 3)], rows
    finally:
        leftover = procs.stop(addresses)
    assert not leftover, f"processes survived SIGKILL: {leftover}"
    stray = [f"{pid}: {' '.join(_cmdline(pid))}" for pid in _processes_of(tmp_path, addresses)]
    assert not stray, f"processes left behind: {stray}"
