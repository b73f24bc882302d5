"""Aggregation rules: any Flower strategy aggregates one shared component (G or M) of HyDiscGAN.

A rule is a plain `flwr.serverapp.strategy.Strategy` instance (FedAvg, FedAdam, FedMedian, Krum, or a
user's own subclass). `ComponentAggregator` shows it a round exactly as Flower would, restricted to
one component: `configure_train` over the nodes HyDiscGAN sampled (so stateful rules such as FedAdam
or FedAvgM record the round's starting arrays, and FedProx adds its `proximal-mu` to the client
config), then `aggregate_train` over the clients' replies for that component. The math is Flower's.

`component_rules` reads the run config (docs/aggregation.md): one rule for every component, a rule per
component, or "local" for a personalised component. `rule_state`/`load_rule_state` carry a rule's state
(e.g. FedAdam's moments) through a checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
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

from hydiscgan_fl.config import LOCAL_RULE, HyDiscGANConfig
from hydiscgan_fl.plugins import is_import_path, load_import_path
from hydiscgan_fl.privacy.reply_metrics import PRESENCE_KEYS, WEIGHT_KEY

SHARED_COMPONENTS = ("generator", "msa")


class UnweightedMean(FedAvg):
    """FedAvg's mean with every client counting once, whatever its number of examples: the aggregation of
    the affect seed paper's code (one client per participant, the plain mean of their weights)."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        equal = [Message(content=RecordDict({"arrays": reply.content["arrays"],
                                             "metrics": MetricRecord({self.weighted_by_key: 1})}),
                         metadata=reply.metadata) if reply.has_content() else reply for reply in replies]
        return super().aggregate_train(server_round, equal)


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
    "mean": lambda p: UnweightedMean(**_FEW),
}
RULE_NAMES = tuple(_RULES)


_DEFAULTS = HyDiscGANConfig()


def make_rule(name: str, *, proximal_mu: float = _DEFAULTS.proximal_mu, trimmed_beta: float = _DEFAULTS.trimmed_beta,
              krum_malicious: int = _DEFAULTS.krum_malicious) -> Strategy:
    """A rule by name (see RULE_NAMES) or a user's Strategy class as 'package.module:ClassName'."""
    if is_import_path(name):
        rule_cls = load_import_path(name, "aggregation rule")
        try:
            rule = rule_cls()
        except TypeError as err:
            raise ValueError(f"aggregation rule {name!r} must be constructible without arguments: {err}") from None
        if not isinstance(rule, Strategy):
            raise ValueError(f"aggregation rule {name!r} is not a flwr.serverapp.strategy.Strategy")
        return rule
    if name not in _RULES:
        raise ValueError(f"unknown aggregation rule {name!r}; use one of {list(RULE_NAMES)} or 'pkg.module:Class'")
    params = {"proximal_mu": proximal_mu, "trimmed_beta": trimmed_beta, "krum_malicious": krum_malicious}
    return _RULES[name](params)


def capped_weights(claims: list[int], max_ratio: float) -> list[int]:
    """The weights of the clients' claimed numbers of examples, each capped at `max_ratio` times the
    median claim (rounded down, at least 1). A client's claim is unverifiable; with fewer than half of
    the clients lying, the median lies between honest claims, so no client, whatever it claims, counts
    for more than `max_ratio` typical honest ones."""
    if not claims:
        return []
    cap = max(1, int(max_ratio * float(np.median(claims))))
    return [min(int(claim), cap) for claim in claims]


def generator_parts(keys: Iterable[str], heads: Mapping[str, str]) -> dict[str, list[str]]:
    """G's array keys by what trains them in stage 1 when clients miss modalities: each modality's head (the
    keys under its prefix in `heads`, e.g. {"audio": "generator.audio_head."}) and "shared" (the rest, which
    audio and visual terms both train)."""
    parts: dict[str, list[str]] = {"shared": []}
    for key in sorted(keys):
        owner = next((modality for modality, prefix in heads.items() if key.startswith(prefix)), "shared")
        parts.setdefault(owner, []).append(key)
    return parts


def part_claim(metrics: Mapping[str, Any], part: str) -> int:
    """The examples a client says trained a part of G in stage 1: its utterances holding the part's modality
    (examples-audio / examples-visual), or holding either, counted per modality, for the "shared" part. Under
    DP those counts stay on the client (privacy.reply_metrics): every part then weighs num-examples."""
    audio, visual = (int(metrics.get(PRESENCE_KEYS[m], metrics[WEIGHT_KEY])) for m in ("audio", "visual"))
    return {"audio": audio, "visual": visual}.get(part, audio + visual)


def component_rules(cfg: HyDiscGANConfig) -> dict[str, Strategy | str]:
    """Each shared component's rule from the run config: aggregation-<component>, else `aggregation`;
    LOCAL_RULE ("local") for a personalised component."""
    params = {"proximal_mu": cfg.proximal_mu, "trimmed_beta": cfg.trimmed_beta, "krum_malicious": cfg.krum_malicious}
    names = {"generator": cfg.aggregation_generator, "msa": cfg.aggregation_msa}
    return {component: LOCAL_RULE if (name := names[component] or cfg.aggregation) == LOCAL_RULE
            else make_rule(name, **params) for component in SHARED_COMPONENTS}


def rule_state(rule: Strategy) -> dict[str, Any]:
    """A rule's attributes as tensors and plain values, so that `torch.load(weights_only=True)` reads them.

    Covers Flower's rules (FedAdam's `m_t`/`v_t`/`current_arrays`, FedAvgM's momentum, wrapped strategies);
    functions are configuration, not state, and are skipped; an attribute of another type is skipped with
    a warning (a resumed run then starts it afresh).
    """
    state = {}
    for name, value in vars(rule).items():
        if callable(value) and not isinstance(value, Strategy):
            continue
        try:
            state[name] = _encode(value)
        except TypeError as err:
            log(WARNING, "checkpoint: %s.%s is not saved (%s)", type(rule).__name__, name, err)
    return state


def load_rule_state(rule: Strategy, state: dict[str, Any]) -> None:
    """Put back what `rule_state` saved (into a rule built from the same configuration)."""
    for name, (kind, payload) in state.items():
        if kind == "strategy":
            load_rule_state(getattr(rule, name), payload)
        else:
            setattr(rule, name, _decode((kind, payload)))


def _encode(value: Any) -> tuple[str, Any]:
    if isinstance(value, np.generic):
        return "value", value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return "value", value
    if isinstance(value, np.ndarray):
        return "ndarray", torch.from_numpy(np.array(value))
    if isinstance(value, ArrayRecord):
        return "arrayrecord", {key: torch.from_numpy(np.array(value[key].numpy())) for key in value}
    if isinstance(value, Strategy):
        return "strategy", rule_state(value)
    if isinstance(value, dict) and all(isinstance(key, str) for key in value):
        return "dict", {key: _encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value).__name__, [_encode(item) for item in value]
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _decode(encoded: tuple[str, Any]) -> Any:
    kind, payload = encoded
    if kind == "value":
        return payload
    if kind == "ndarray":
        return payload.numpy()
    if kind == "arrayrecord":
        return ArrayRecord({key: Array(tensor.numpy()) for key, tensor in payload.items()})
    if kind == "dict":
        return {key: _decode(item) for key, item in payload.items()}
    items = [_decode(item) for item in payload]
    return tuple(items) if kind == "tuple" else items


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
        needs = max(getattr(self.rule, "min_available_nodes", 0), getattr(self.rule, "min_train_nodes", 0))
        if needs > len(node_ids):  # Flower's sampling would wait forever for nodes that are not coming
            raise ValueError(f"aggregation rule {type(self.rule).__name__} of {self.component} needs at least "
                             f"{needs} node(s) but this round sampled {len(node_ids)}; build it with "
                             "min_available_nodes=1, min_train_nodes=1 (HyDiscGAN enforces min-train-replies)")
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
