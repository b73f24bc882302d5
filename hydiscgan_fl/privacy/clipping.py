"""Clipping one client's update to an L2 norm: DP-FedAvg's per-client step, done by the server on the
update it receives (strategies.dp) or, under secure aggregation, by the client before masking."""

from __future__ import annotations

import numpy as np


def clip_update(update: list[np.ndarray], clip_norm: float) -> list[np.ndarray]:
    """Scale the arrays of one update, as one vector, to L2 norm <= clip_norm (FlatClip); the norm is
    accumulated in float64 whatever the arrays' dtype."""
    norm = float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [a * scale for a in update]
