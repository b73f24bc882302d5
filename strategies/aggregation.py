"""Aggregation rules: any Flower strategy aggregates one shared component (G or M) of HyDiscGAN.

A rule is a plain `flwr.serverapp.strategy.Strategy` instance (FedAvg, FedAdam, FedMedian, Krum, or a
user's own subclass). `ComponentAggregator` shows it a round exactly as Flower would, restricted to
one component: `configure_train` over the nodes HyDiscGAN sampled (so stateful rules such as FedAdam
or FedAvgM record the round's starting arrays, and FedProx adds its `proximal-mu` to the client
config), then `aggregate_train` over the clients' replies for that component. The math is Flower's.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

WEIGHT_KEY = "num-examples"


# One node suffices for a rule: HyDiscGAN's strategy enforces its own minimum of replies.
_FEW = {"min_train_nodes": 1, "min_evaluate_nodes": 0, "min_available_nodes": 1, "fraction_evaluate": 0.0}

_RULES: dict[str, Callable[[dict[str, float]], Strategy]] = {
    "fedavg": lambda p: FedAvg(**_FEW),
    "fedprox": lambda p: FedProx(proximal_mu=p["proximal_mu"], **_FEW),
    "fedadam": lambda p: FedAdam(**_FEW),
    "fedyogi": lambda p: FedYogi(**_FEW),
    "fedadagrad": lambda p: FedAdagrad(**_FEW),
    "fedmedian": lambda p: FedMedian(**_FEW),
    "fedtrimmedavg": lambda p: FedTrimmedAvg(beta=p["trimmed_beta"], **_FEW),
    "krum": lambda p: Krum(num_malicious_nodes=int(p["krum_malicious"]), **_FEW),
}
RULE_NAMES = tuple(_RULES)


def make_rule(name: str, *, proximal_mu: float = 0.01, trimmed_beta: float = 0.2, krum_malicious: int = 0) -> Strategy:
    """A rule by name (see RULE_NAMES) or a user's Strategy class as 'package.module:ClassName'."""
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            rule_cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"aggregation rule {name!r} cannot be imported: {err}") from None
        rule = rule_cls()
        if not isinstance(rule, Strategy):
            raise ValueError(f"aggregation rule {name!r} is not a flwr.serverapp.strategy.Strategy")
        return rule
    if name not in _RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; use one of {list(RULE_NAMES)} or 'pkg.module:Class'")
    params = {"proximal_mu": proximal_mu, "trimmed_beta": trimmed_beta, "krum_malicious": krum_malicious}
    return _RULES[name](params)


class _SampledNodes(Grid):
    """What a rule sees of the federation while configuring: the nodes HyDiscGAN sampled, nothing else.

    The rule's messages are never sent (HyDiscGAN builds its own), so pushing or pulling is refused.
    """

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's Run
        raise RuntimeError("aggregation rules cannot change the run")

    @property
    def run(self):  # noqa: ANN201
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        raise RuntimeError("aggregation rules do not send messages; HyDiscGAN's strategy does")

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        raise RuntimeError("aggregation rules do not receive messages; HyDiscGAN's strategy does")

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise RuntimeError("aggregation rules do not send messages; HyDiscGAN's strategy does")


class ComponentAggregator:
    """Aggregates one shared component with its own copy of a Flower strategy (its own optimiser state)."""

    def __init__(self, component: str, rule: Strategy):
        self.component = component
        self.rule = copy.deepcopy(rule)

    def client_config(self, server_round: int, current: ArrayRecord, node_ids: list[int], grid: Grid) -> ConfigRecord:
        """Let the rule configure the round; return the config it would send (e.g. FedProx's mu)."""
        messages = list(self.rule.configure_train(server_round, current, ConfigRecord(), _SampledNodes(grid, node_ids)))
        if not messages:
            return ConfigRecord()
        content = messages[0].content
        return next(iter(content.config_records.values()), ConfigRecord())

    def aggregate(self, server_round: int, replies: list[tuple[Message, ArrayRecord, int]]) -> ArrayRecord:
        """replies: (the client's reply message, its arrays of this component, its number of examples)."""
        component_replies = [
            Message(
                content=RecordDict({"arrays": arrays, "metrics": MetricRecord({WEIGHT_KEY: num_examples})}),
                metadata=reply.metadata,
            )
            for reply, arrays, num_examples in replies
        ]
        aggregated, _ = self.rule.aggregate_train(server_round, component_replies)
        if aggregated is None:
            raise RuntimeError(f"aggregation rule {type(self.rule).__name__} returned nothing for {self.component}")
        return aggregated
