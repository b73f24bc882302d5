"""A client's own copy of its `context.state` on its own disk, so that a resumed run continues it.

Flower starts every run with an empty `context.state`; when the server names a `client-state`, each
client saves its state every round and, in a resumed run, reads back what it saved last. Nothing here
is sent anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from clients.local_data import client_seed_key
from clients.secure_aggregation import STATE_KEY as SECAGG_STATE_KEY
from hydiscgan_fl.config import HyDiscGANConfig


def client_state_dir(cfg: HyDiscGANConfig, context: Context, name: str) -> Path:
    """This client's own folder for its saved state: node-config `state-dir` (a deployed node's disk),
    else `<output-dir>/client-state`, then the server's `client-state` name and the client's seed key."""
    state_dir = context.node_config.get("state-dir")
    root = Path(state_dir) if state_dir else cfg.resolved_output_dir() / "client-state"
    return root / name / str(client_seed_key(context))


def save_client_state(state: RecordDict, folder: Path, server_round: int) -> None:
    """Write `context.state` as round-<r>.pt (tensors and plain values); keep the two newest files. The
    round's secure-aggregation secrets are not written: they serve this round only."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"arrays": {key: record.to_torch_state_dict() for key, record in state.array_records.items()},
               "metrics": {key: dict(record) for key, record in state.metric_records.items()},
               "configs": {key: dict(record) for key, record in state.config_records.items()
                           if key != SECAGG_STATE_KEY}}
    tmp = folder / f".round-{server_round}.pt.tmp"
    torch.save(payload, tmp)
    os.replace(tmp, folder / f"round-{server_round}.pt")
    for old in sorted(folder.glob("round-*.pt"), key=_round_of)[:-2]:
        old.unlink()


def restore_client_state(context: Context, folder: Path, server_round: int) -> None:
    """A resumed run starts with an empty `context.state` (but for this round's secure-aggregation state):
    read what this client saved last before this round."""
    saved = [path for path in folder.glob("round-*.pt") if _round_of(path) < server_round]
    if any(key != SECAGG_STATE_KEY for key in context.state) or not saved:
        return
    payload = torch.load(max(saved, key=_round_of), weights_only=True)
    for key, arrays in payload["arrays"].items():
        context.state[key] = ArrayRecord(arrays)
    for key, values in payload["metrics"].items():
        context.state[key] = MetricRecord(values)
    for key, values in payload["configs"].items():
        context.state[key] = ConfigRecord(values)


def _round_of(path: Path) -> int:
    return int(path.stem.removeprefix("round-"))
