"""Which nodes train in a round: waiting for the federation to settle, then sampling a share of it.

Without DP the sampler is seeded (reproducible, its RNG state checkpointed); under speaker-level DP it
draws from the OS's CSPRNG (`privacy.secret_rng`), because amplification by subsampling needs a sample
nobody can predict, and it has no state to checkpoint.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from flwr.serverapp import Grid

from hydiscgan_fl.privacy.secret_rng import secret_random


def sample_size(num_available: int, fraction: float, minimum: int) -> int:
    """round(fraction x available), at least `minimum`, at most all available nodes."""
    return min(max(int(round(num_available * fraction)), minimum), num_available)


def wait_until_settled(count_nodes: Callable[[], int], minimum: int, settle_s: float,
                       poll_s: float = 0.25) -> int:
    """Wait until at least `minimum` nodes are connected and their count has not changed for `settle_s`
    (simulated SuperNodes register asynchronously); returns the count."""
    last, stable_since = -1, time.monotonic()
    while True:
        count = count_nodes()
        if count != last:
            last, stable_since = count, time.monotonic()
        elif count >= minimum and time.monotonic() - stable_since >= settle_s:
            return count
        time.sleep(poll_s)


class NodeSampler:
    """Samples `fraction` of the connected nodes each round (at least `min_sampled`)."""

    def __init__(self, fraction: float, min_sampled: int, min_available: int, settle_s: float, seed: int,
                 secret: bool):
        self.fraction = fraction
        self.min_sampled = min_sampled
        self.min_available = min_available
        self.settle_s = settle_s
        self.secret = secret
        self._rng = secret_random() if secret else random.Random(seed)
        self._settled = False
        self.last_rate = 1.0  # sampled / connected in the last round (the DP accountant's sampling rate)

    def sample(self, grid: Grid) -> list[int]:
        if not self._settled:
            wait_until_settled(lambda: len(list(grid.get_node_ids())), self.min_available, self.settle_s)
            self._settled = True
        while len(available := sorted(grid.get_node_ids())) < self.min_available:
            time.sleep(1.0)
        size = sample_size(len(available), self.fraction, self.min_sampled)
        self.last_rate = size / len(available)
        return sorted(self._rng.sample(available, size))

    def state(self) -> tuple | None:
        """The seeded RNG's state; None for the secret sampler (nothing on disk predicts its samples)."""
        return None if self.secret else self._rng.getstate()

    def load_state(self, state: tuple | None) -> None:
        if self.secret:
            return  # a resumed secret sampler samples afresh from the same secret source
        if state is None:
            raise ValueError("the checkpoint's run sampled clients secretly (speaker-level DP); a run "
                             "without DP cannot continue its seeded sampling")
        self._rng.setstate(state)
