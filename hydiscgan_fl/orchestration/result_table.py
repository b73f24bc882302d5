"""Append-only CSV tables of sweeps (bench, privacy, byzantine): one row per finished point; and what their
reports share (interval cells, matplotlib without a display).

Each row is written as soon as its point is done, so an interrupted sweep keeps every finished row and
a rerun into the same folder skips them.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydiscgan_fl.metrics import mean_interval


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_row(path: Path, row: dict[str, Any], columns: Sequence[str]) -> None:
    """Append one row with exactly `columns` (a missing or None value is an empty cell)."""
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        if new:
            writer.writeheader()
        writer.writerow({column: _cell(row.get(column)) for column in columns})


def check_header(path: Path, columns: Sequence[str]) -> None:
    """Rows are appended under the existing header: it must be `columns`, or resumed rows would shift."""
    if path.exists():
        with path.open(newline="") as handle:
            header = handle.readline().strip().split(",")
        if header != list(columns):
            raise ValueError(f"{path} has the columns {header}, not this version's {list(columns)} "
                             "(written by an older version?). Use another --out.")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def interval_cell(values: Sequence[float], digits: int = 3) -> str:
    """mean ± std [95% interval] of the non-NaN values (the mean alone for one value, blank for none)."""
    s = mean_interval([float(v) for v in values])
    if s["n"] == 0:
        return ""
    if s["n"] < 2:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"


def difference_cell(diff: dict[str, Any], digits: int = 3) -> str:
    """A paired difference (metrics.paired_difference): mean [95% interval]."""
    if diff["n"] < 2:
        return f"{diff['mean']:+.{digits}f}"
    return f"{diff['mean']:+.{digits}f} [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]"


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on a benchmark machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
