"""Run the ServerApp and its ClientApps in one process, without Ray or a SuperLink.

For debugging and quick experiments (and fast tests): `InProcessGrid` delivers each message by calling
the ClientApp directly, one node after the other, with one `Context` per node kept across rounds as a
SuperNode keeps it. As in Flower, a ClientApp that raises becomes an error reply, and a reply that
took longer than the round's timeout is dropped (clients run one after the other here, so the timeout
applies to each client's own time, as if they ran in parallel).

    from examples.in_process import run_in_process
    run = run_in_process({"dataset": "synthetic", "rounds-align": 2, "rounds-msa": 2}, num_nodes=4)
    print(run.run_dir)
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client_app
import server_app
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.orchestration.update_replay import ClientAppGrid

class InProcessGrid(ClientAppGrid):
    """`num_nodes` simulated SuperNodes (node ids 1001.., partition ids 0..) answered by `client`."""

    def __init__(self, num_nodes: int, run_config: dict, run_id: int = 1,
                 client: Callable[[Message, Context], Message] = client_app.app):
        super().__init__({
            1001 + pid: Context(run_id=run_id, node_id=1001 + pid, node_config={"partition-id": pid,
                                "num-partitions": num_nodes}, state=RecordDict(), run_config=dict(run_config))
            for pid in range(num_nodes)
        }, client)

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def set_run(self, run) -> None:  # noqa: ANN001
        raise NotImplementedError("an in-process federation has one fixed run")

    @property
    def run(self):  # noqa: ANN201
        raise NotImplementedError("an in-process federation has one fixed run")


@dataclass(frozen=True)
class InProcessRun:
    run_dir: Path  # the run directory the ServerApp wrote
    contexts: dict[int, Context]  # each node's Context after the run (its `state` holds the client's state)


def run_in_process(run_config: dict, num_nodes: int) -> InProcessRun:
    """Run the real ServerApp over an InProcessGrid of `num_nodes` nodes.

    `run_config` overrides the defaults of HyDiscGANConfig, as `--run-config` does with `flwr run`.
    """
    full_config = {**HyDiscGANConfig().to_run_config(), **run_config}
    run_id = secrets.randbits(62)  # names the run directory, as Flower's run id does
    grid = InProcessGrid(num_nodes, full_config, run_id)
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 0, 1  # Messages need one
    try:
        server_app.app(grid, Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=full_config))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    (run_dir,) = HyDiscGANConfig.from_run_config(full_config).resolved_output_dir().glob(f"*-run{run_id}")
    return InProcessRun(run_dir, grid.contexts)
