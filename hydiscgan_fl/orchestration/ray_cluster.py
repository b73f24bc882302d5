"""A Ray cluster on this machine for Flower's simulation engine: a head and worker nodes started with
`ray start`, as on several machines (there, run the worker's `ray start --address` on each machine).

Flower 1.42's Ray backend (flwr/server/superlink/fleet/vce/backend/raybackend.py) calls `ray.init()`
without an address (its federation config passes only num_cpus, num_gpus, logging_level and
log_to_driver as init args), so Ray decides what to join: the `RAY_ADDRESS` environment variable of the
simulation process, else the last cluster started with `ray start` under Ray's default temp dir
(/tmp/ray/ray_current_cluster), else a new local instance. `LocalFederation(ray_address=...)` sets
RAY_ADDRESS for the SuperLink, whose simulation process inherits it. This cluster keeps its files in
its own temp dir, so other simulations on the machine do not join it by accident.

Every process of the cluster is stopped by PID (the process trees of the processes started with its temp
dir), never with `ray stop`, which stops every Ray process of the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from hydiscgan_fl.orchestration.flwr_runner import flwr_bin_dir, free_port
from hydiscgan_fl.orchestration.processes import process_tree


class RayStartError(RuntimeError):
    """`ray start` failed; the message holds its output."""


class RayCluster:
    """`num_nodes` Ray nodes (a head and workers) on 127.0.0.1 with `cpus_per_node` CPUs each."""

    def __init__(self, num_nodes: int = 2, cpus_per_node: int = 1, start_timeout_s: float = 180):
        self.num_nodes = num_nodes
        self.cpus_per_node = cpus_per_node
        self.start_timeout_s = start_timeout_s
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Short: Ray's Unix sockets live under it and their paths are limited to ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="hray", dir="/tmp")

    def __enter__(self) -> RayCluster:
        self.start()
        return self

    def start(self) -> None:
        """Start the head, then the other nodes; RayStartError (all stopped again) when one fails."""
        try:
            self._ray_start("--head", f"--port={self.port}", "--include-dashboard=false")
            for _ in range(self.num_nodes - 1):
                self._ray_start(f"--address={self.address}")
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def _ray_start(self, *args: str) -> None:
        command = [str(flwr_bin_dir() / "ray"), "start", *args, "--node-ip-address=127.0.0.1",
                   f"--num-cpus={self.cpus_per_node}", "--num-gpus=0", f"--temp-dir={self.temp_dir}",
                   "--disable-usage-stats"]
        env = {**os.environ, "RAY_ADDRESS": ""}  # `ray start` itself must not join another cluster
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.start_timeout_s, env=env,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RayStartError(f"{' '.join(command)}: {err}") from None
        if done.returncode != 0:
            raise RayStartError(f"{' '.join(command)} exited with {done.returncode}:\n"
                                f"{(done.stdout + done.stderr)[-2000:]}")

    def actor_nodes(self, class_name: str) -> dict[str, str]:
        """Actor id -> id of the node it ran on, for the actors of `class_name` (alive or dead), read from
        the cluster's GCS (Ray's state API needs the dashboard, which this cluster does not start)."""
        import ray  # noqa: PLC0415 - only this method talks to the cluster from this process
        from ray._private.state import state  # noqa: PLC0415

        ray.init(address=self.address, logging_level="ERROR", log_to_driver=False)
        try:
            return {actor_id: info["Address"]["NodeID"] for actor_id, info in state.actor_table(None).items()
                    if info.get("ActorClassName") == class_name}
        finally:
            ray.shutdown()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s, to every process started for this cluster."""
        tree = process_tree(_pids_with(self.temp_dir))
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in tree:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while (tree := {pid for pid in tree if Path(f"/proc/{pid}").exists() and not _zombie(pid)}) \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            if not tree:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _pids_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False
