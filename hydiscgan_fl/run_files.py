"""The run directory: config.json, metrics.csv, clients.csv, summary.json, checkpoint.pt, state.pt."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "state.pt"


class RunDirectory:
    """Creates `<output_dir>/<time>-<name>` and writes a run's files into it as the run goes."""

    def __init__(self, output_dir: Path, name: str):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = (Path(output_dir) / f"{stamp}-{name}").resolve()
        self.path.mkdir(parents=True, exist_ok=False)
        self._metric_rows: list[dict[str, Any]] = []
        self._client_rows: list[dict[str, Any]] = []

    def write_json(self, filename: str, payload: dict[str, Any]) -> Path:
        target = self.path / filename
        target.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        return target

    def add_round(self, row: dict[str, Any], clients: list[Any]) -> None:
        """Append one round to metrics.csv and its clients to clients.csv (rewritten, so columns may grow)."""
        self._metric_rows.append(row)
        self._client_rows.extend(asdict(c) if is_dataclass(c) else dict(c) for c in clients)
        _write_csv(self.path / "metrics.csv", self._metric_rows)
        if self._client_rows:
            _write_csv(self.path / "clients.csv", self._client_rows)

    def restore_rows(self, metric_rows: list[dict[str, Any]], client_rows: list[dict[str, Any]]) -> None:
        """Start from the rows of a previous run (resume): they are written again with the new ones."""
        self._metric_rows, self._client_rows = list(metric_rows), list(client_rows)

    def save_state(self, payload: dict[str, Any]) -> Path:
        """state.pt: `payload` plus the rows so far, replaced atomically (a kill never leaves half a file).

        Tensors, dicts, lists and plain values only, so `torch.load(..., weights_only=True)` reads it.
        """
        target = self.path / STATE_FILE
        tmp = target.with_suffix(".tmp")
        rows = {"metrics_rows": _plain(self._metric_rows), "client_rows": _plain(self._client_rows)}
        torch.save({**payload, **rows}, tmp)
        tmp.replace(target)
        return target

    def save_checkpoint(self, payload: dict[str, Any]) -> Path:
        """Tensors, dicts and plain values only, so `torch.load(..., weights_only=True)` reads it."""
        target = self.path / "checkpoint.pt"
        torch.save(payload, target)
        return target


def load_summary(run_dir: Path) -> dict[str, Any]:
    """The summary.json of a finished run."""
    return json.loads((Path(run_dir) / "summary.json").read_text())


def load_state(run_dir: Path) -> dict[str, Any]:
    """The state.pt of a run directory (see RunDirectory.save_state)."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a run directory, or no round of it completed")
    return torch.load(path, weights_only=True)


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, recursively (torch's weights_only loader refuses numpy objects)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value.item() if isinstance(value, np.generic) else value


def _write_csv(target: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(target)
