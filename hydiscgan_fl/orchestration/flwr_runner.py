"""Run the Flower app through `flwr run` on an isolated, managed local SuperLink (Ray simulation).

`flwr run` returns before the run ends and its exit code says nothing about the run, so the runner
submits with `--format json`, polls `flwr list` until the run is `finished:*` (every 15 s, and at once
when the run directory's summary.json appears), and treats anything but `finished:completed` as a failure.
Each LocalFederation has its own FLWR_HOME and SuperLink port, and stops the SuperLink it started, by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydiscgan_fl.config import HyDiscGANConfig, project_root

OFFLINE_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
}
STATUS_INTERVAL_S = 15.0  # between `flwr list`/`flwr log` polls while a run has not written its summary.json


def flwr_bin_dir() -> Path:
    """Where the `flwr` command of this Python environment lives (also when the venv is not activated)."""
    return Path(sys.executable).parent


class FederatedRunError(RuntimeError):
    """A Flower run did not finish as `finished:completed`; the message holds the log tail."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    status: str
    run_dir: Path
    log: str


def toml_assignments(values: dict[str, Any]) -> str:
    """`key=value` pairs in TOML syntax, as `--run-config` and `--federation-config` take them."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))  # a JSON string is a valid TOML basic string
        parts.append(f"{key}={text}")
    return " ".join(parts)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pids_listening_with(marker: str) -> list[int]:
    """PIDs of flower-superlink processes whose command line contains `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmdline and marker in cmdline:
            pids.append(int(entry.name))
    return pids


class LocalFederation:
    """A managed local SuperLink for simulation runs, isolated from any other Flower use."""

    def __init__(self, app_dir: Path | None = None, flwr_home: Path | None = None, port: int | None = None,
                 ray_address: str = ""):
        """`ray_address`: a running Ray cluster (head's GCS, e.g. "127.0.0.1:6379") for the simulation engine.
        Without it the simulation starts a Ray instance of its own ("local"), even when a cluster started
        with `ray start` runs on this machine (which ray.init would otherwise join, through
        /tmp/ray/ray_current_cluster), unless RAY_ADDRESS is set in the environment."""
        self.app_dir = Path(app_dir) if app_dir else project_root()
        self._tmp = None if flwr_home else tempfile.TemporaryDirectory(prefix="hydiscgan-flwr-")
        self.flwr_home = Path(flwr_home) if flwr_home else Path(self._tmp.name)
        self.port = port or free_port()
        self.env = {
            **os.environ,
            **OFFLINE_ENV,
            "PATH": f"{flwr_bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
            # Flower's Ray backend calls ray.init() with no address: RAY_ADDRESS decides what it joins.
            "RAY_ADDRESS": ray_address or os.environ.get("RAY_ADDRESS", "local"),
        }

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(flwr_bin_dir() / "flwr"), *args], env=self.env, cwd=self.app_dir, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def run(self, run_config: dict[str, Any], num_supernodes: int, timeout_s: float = 1800,
            client_cpus: int = 1, client_gpus: float = 0.0, progress=None) -> RunOutcome:
        """Submit one run, wait for it, return its status and run directory.

        The run directory is found under the run's output-dir by the run id in its name.
        `progress(line)` is called with each new line of the run's log.
        """
        output_dir = HyDiscGANConfig.from_run_config(run_config).resolved_output_dir()
        overrides = {**run_config, "output-dir": str(output_dir)}
        federation = {"num-supernodes": num_supernodes, "client-resources-num-cpus": client_cpus}
        if client_gpus:
            federation["client-resources-num-gpus"] = client_gpus
        submitted = self._flwr("run", str(self.app_dir), "--run-config", toml_assignments(overrides),
                               "--federation-config", toml_assignments(federation), "--format", "json")
        try:
            run_id = str(json.loads(submitted.stdout)["run-id"])
        except (ValueError, KeyError):
            raise FederatedRunError(f"flwr run did not start: {submitted.stdout[-2000:]}{submitted.stderr[-2000:]}")
        status, seen = "", 0
        now = time.monotonic()
        deadline, next_query = now + timeout_s, now
        while time.monotonic() < deadline:
            # A flwr CLI call costs about 1.5 s of CPU on a 2-core machine, as much as the clients' training when
            # polled every 2 s: ask the SuperLink rarely, and at once when the run's summary.json appears.
            if time.monotonic() >= next_query or any(output_dir.glob(f"*-run{run_id}/summary.json")):
                status = self._status(run_id)
                if progress is not None:
                    lines = self._log(run_id).splitlines()
                    for line in lines[seen:]:
                        progress(line)
                    seen = len(lines)
                if status.startswith("finished"):
                    break
                next_query = time.monotonic() + STATUS_INTERVAL_S
            time.sleep(1.0)
        log_text = self._log(run_id)
        if status != "finished:completed":
            if not status.startswith("finished"):
                self._flwr("stop", run_id)
            raise FederatedRunError(f"run {run_id} ended as {status or 'unknown'}:\n{log_text[-4000:]}")
        run_dirs = sorted(output_dir.glob(f"*-run{run_id}"))
        if len(run_dirs) != 1:
            raise FederatedRunError(f"run {run_id} completed but left {len(run_dirs)} run directories in {output_dir}")
        return RunOutcome(run_id, status, run_dirs[0], log_text)

    def _status(self, run_id: str) -> str:
        listed = self._flwr("list", "--run-id", run_id, "--format", "json")
        try:
            runs = json.loads(listed.stdout)["runs"]
        except (ValueError, KeyError):
            return ""
        return str(runs[0]["status"]) if runs else ""

    def _log(self, run_id: str) -> str:
        return self._flwr("log", run_id, "--show").stdout

    def close(self) -> None:
        """Stop the SuperLink this federation started (its SuperExec and Ray exit with it)."""
        for pid in pids_listening_with(f"--port {self.port}"):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        if self._tmp is not None:
            self._tmp.cleanup()
