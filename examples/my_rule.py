"""A user's own aggregation rule: a coordinate-wise clipped mean (docs/aggregation.md walks through it).

Select it with the run config `aggregation="examples.my_rule:ClippedMean"` (or per component with
`aggregation-generator` / `aggregation-msa`). HyDiscGAN shows the rule one shared component at a time,
exactly as Flower would show it a whole model: `configure_train` with the component's global arrays,
then `aggregate_train` with the clients' replies for that component.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class ClippedMean(FedAvg):
    """Global weights + the example-weighted mean of the clients' updates, each clipped coordinate-wise.

    A client's update is its returned weights minus the round's global weights; every coordinate of it is
    clipped to [-clip, clip] before averaging, so a weight moves by at most `clip` per round and one client
    moves it by at most its share of the examples times `clip`, however large (or poisoned) its update is.
    """

    def __init__(self, clip: float = 0.01):
        # One node is enough for the rule: HyDiscGAN enforces its own min-train-replies.
        super().__init__(min_train_nodes=1, min_available_nodes=1, min_evaluate_nodes=0, fraction_evaluate=0.0)
        self.clip = clip
        self.current: ArrayRecord | None = None  # the round's global weights (saved in checkpoints)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [reply for reply in replies if reply.has_content()]
        if not replies or self.current is None:
            return None, None
        weights = np.array([float(reply.content["metrics"][self.weighted_by_key]) for reply in replies])
        weights /= weights.sum()
        aggregated = ArrayRecord()
        for key in self.current:
            base = self.current[key].numpy()
            updates = np.stack([reply.content["arrays"][key].numpy() - base for reply in replies])
            step = np.tensordot(weights, np.clip(updates, -self.clip, self.clip), axes=1)
            aggregated[key] = Array((base + step).astype(base.dtype))
        return aggregated, None
