"""The run directory: config.json, metrics.csv, clients.csv, summary.json, checkpoint.pt."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch


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

    def save_checkpoint(self, payload: dict[str, Any]) -> Path:
        """Tensors, dicts and plain values only, so `torch.load(..., weights_only=True)` reads it."""
        target = self.path / "checkpoint.pt"
        torch.save(payload, target)
        return target


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
