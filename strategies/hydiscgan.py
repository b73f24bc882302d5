"""HyDiscGAN's Flower Strategy: two stages, per-component aggregation, failure accounting.

Global state is one ArrayRecord holding the shared components with prefixed keys ('generator.*',
'msa.*'). Stage 1 (modal alignment) sends and aggregates G only; stage 2 (MSA) sends and aggregates
G and M. Clients keep their encoders and discriminators; a reply that carries anything other than
the arrays of the components it was sent is rejected. The fedavg-multimodal baseline (method
"fedavg-multimodal") has one stage, "multimodal", in every round: it sends and aggregates M only,
which the clients train on their real audio/visual.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from hydiscgan_fl.config import METHODS
from strategies.aggregation import WEIGHT_KEY, ComponentAggregator, make_rule

STAGE_COMPONENTS = {"align": ("generator",), "msa": ("generator", "msa"), "multimodal": ("msa",)}


class TooFewRepliesError(RuntimeError):
    """Fewer clients replied usefully than the configured minimum."""


def component_arrays(arrays: ArrayRecord, component: str) -> ArrayRecord:
    prefix = component + "."
    return ArrayRecord({key: arrays[key] for key in arrays if key.startswith(prefix)})


def merge_arrays(base: ArrayRecord, updates: Iterable[ArrayRecord]) -> ArrayRecord:
    merged = ArrayRecord({key: base[key] for key in base})
    for update in updates:
        for key in update:
            merged[key] = update[key]
    return merged


@dataclass
class ClientRound:
    """What one client did in one round (a row of clients.csv)."""

    server_round: int
    stage: str
    node_id: int
    status: str  # ok | error | timeout | rejected
    bytes_down: int
    bytes_up: int = 0
    num_examples: int = 0
    train_s: float = 0.0
    detail: str = ""


@dataclass
class RoundSummary:
    """Server-side facts of one round (merged into a row of metrics.csv)."""

    server_round: int
    stage: str
    started_at: float
    sent: int = 0
    replies_ok: int = 0
    replies_failed: int = 0
    train_metrics: dict[str, float] = field(default_factory=dict)
    clients: list[ClientRound] = field(default_factory=list)

    def as_row(self) -> dict[str, float | int | str]:
        ok = [c for c in self.clients if c.status == "ok"]
        return {
            "stage": self.stage,
            "round": self.server_round,
            "clients_sent": self.sent,
            "replies_ok": self.replies_ok,
            "replies_failed": self.replies_failed,
            **{f"train_{key}": value for key, value in sorted(self.train_metrics.items())},
            "bytes_up_per_client": float(np.mean([c.bytes_up for c in ok])) if ok else 0.0,
            "bytes_down_per_client": float(np.mean([c.bytes_down for c in self.clients])) if self.clients else 0.0,
            "client_train_s_mean": float(np.mean([c.train_s for c in ok])) if ok else 0.0,
        }


class HyDiscGANStrategy(Strategy):
    """Two-stage HyDiscGAN over Flower.

    Parameters
    ----------
    rounds_align : rounds of stage 1 (modal alignment); later rounds are stage 2 (MSA).
    train_config : extra keys sent to every client each round (e.g. local-epochs).
    aggregation : a Flower Strategy used as the aggregation rule of every component (FedAvg by default).
    fraction_train : share of the connected nodes sampled each round.
    min_train_replies : a round with fewer valid replies stops the run with TooFewRepliesError.
    min_available_nodes : wait for this many nodes before the first round.
    method : "hydiscgan" (two stages) or "fedavg-multimodal" (stage "multimodal" in every round).
    """

    def __init__(
        self,
        rounds_align: int,
        train_config: dict | None = None,
        aggregation: Strategy | None = None,
        fraction_train: float = 1.0,
        min_train_replies: int = 1,
        min_available_nodes: int = 1,
        node_settle_s: float = 2.0,
        method: str = "hydiscgan",
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {list(METHODS)}")
        self.method = method
        self.rounds_align = rounds_align
        self.train_config = dict(train_config or {})
        rule = aggregation if aggregation is not None else make_rule("fedavg")
        self.aggregators = {name: ComponentAggregator(name, rule) for name in STAGE_COMPONENTS["msa"]}
        self.fraction_train = fraction_train
        self.min_train_replies = min_train_replies
        self.min_available_nodes = min_available_nodes
        self.node_settle_s = node_settle_s
        self.rounds: list[RoundSummary] = []
        self._global: ArrayRecord | None = None
        self._pending: dict[int, ClientRound] = {}

    # -- stages ---------------------------------------------------------------------------------
    def stage_of(self, server_round: int) -> str:
        if self.method == "fedavg-multimodal":
            return "multimodal"
        return "align" if server_round <= self.rounds_align else "msa"

    def summary(self) -> None:
        rule = type(next(iter(self.aggregators.values())).rule).__name__
        log(INFO, "HyDiscGAN strategy: %d alignment round(s), then MSA rounds; rule %s per component;"
            " fraction_train=%.2f, min_train_replies=%d", self.rounds_align, rule, self.fraction_train,
            self.min_train_replies)

    # -- training -------------------------------------------------------------------------------
    def _sample(self, grid: Grid, server_round: int) -> list[int]:
        if server_round == 1:
            self._wait_for_nodes(grid)
        available = len(list(grid.get_node_ids()))
        size = max(int(round(available * self.fraction_train)), self.min_train_replies)
        node_ids, _ = sample_nodes(grid, max(self.min_available_nodes, size), size)
        return sorted(node_ids)

    def _wait_for_nodes(self, grid: Grid) -> None:
        """Simulated SuperNodes register asynchronously: wait until their count stops changing."""
        last, stable_since = -1, time.monotonic()
        while True:
            count = len(list(grid.get_node_ids()))
            if count != last:
                last, stable_since = count, time.monotonic()
            elif count >= self.min_available_nodes and time.monotonic() - stable_since >= self.node_settle_s:
                return
            time.sleep(0.25)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        started = time.time()
        self._global = arrays
        stage = self.stage_of(server_round)
        node_ids = self._sample(grid, server_round)
        payload = merge_arrays(ArrayRecord(), (component_arrays(arrays, c) for c in STAGE_COMPONENTS[stage]))
        client_config = ConfigRecord({**self.train_config, **dict(config.items())})
        for component in STAGE_COMPONENTS[stage]:
            rule_config = self.aggregators[component].client_config(
                server_round, component_arrays(arrays, component), node_ids, grid
            )
            client_config.update(rule_config)
        client_config["server-round"] = server_round
        client_config["stage"] = stage
        content = RecordDict({"arrays": payload, "config": client_config})
        bytes_down = payload.count_bytes() + client_config.count_bytes()
        summary = RoundSummary(server_round, stage, started, sent=len(node_ids))
        self.rounds.append(summary)
        self._pending = {nid: ClientRound(server_round, stage, nid, "timeout", bytes_down) for nid in node_ids}
        log(INFO, "round %d (%s): sending %s to %d node(s)", server_round, stage,
            "+".join(STAGE_COMPONENTS[stage]), len(node_ids))
        return [Message(content=content, dst_node_id=nid, message_type=MessageType.TRAIN) for nid in node_ids]

    def _check_reply(self, reply: Message, stage: str) -> str:
        """'' when the reply is usable, else why it is rejected."""
        content = reply.content
        if "arrays" not in content.array_records or len(content.array_records) != 1:
            return "reply must hold exactly one ArrayRecord named 'arrays'"
        if "metrics" not in content.metric_records or WEIGHT_KEY not in content["metrics"]:
            return f"reply must hold a MetricRecord 'metrics' with '{WEIGHT_KEY}'"
        if content["metrics"][WEIGHT_KEY] <= 0:
            return f"'{WEIGHT_KEY}' must be positive"
        expected = merge_arrays(ArrayRecord(), (component_arrays(self._global, c) for c in STAGE_COMPONENTS[stage]))
        got = content["arrays"]
        if set(got) != set(expected):
            extra, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
            return f"arrays do not match the {stage} stage (unexpected {extra[:3]}, missing {missing[:3]})"
        for key in expected:
            if tuple(got[key].shape) != tuple(expected[key].shape):
                return f"array {key} has shape {tuple(got[key].shape)}, expected {tuple(expected[key].shape)}"
            if not np.all(np.isfinite(got[key].numpy())):
                return f"array {key} holds NaN or Inf"
        return ""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        summary = self.rounds[-1]
        valid: list[Message] = []
        for reply in replies:
            record = self._pending.get(reply.metadata.src_node_id)
            if record is None:
                continue
            if reply.has_error():
                record.status, record.detail = "error", (reply.error.reason or "")[-300:]
                continue
            problem = self._check_reply(reply, summary.stage)
            if problem:
                record.status, record.detail = "rejected", problem
                log(WARNING, "round %d: reply of node %d rejected: %s", server_round, record.node_id, problem)
                continue
            metrics = reply.content["metrics"]
            record.status = "ok"
            record.bytes_up = reply.content["arrays"].count_bytes() + metrics.count_bytes()
            record.num_examples = int(metrics[WEIGHT_KEY])
            record.train_s = float(metrics.get("train-s", 0.0))
            valid.append(reply)
        summary.clients = list(self._pending.values())
        summary.replies_ok = len(valid)
        summary.replies_failed = summary.sent - len(valid)
        for record in summary.clients:
            if record.status != "ok":
                log(WARNING, "round %d: node %d %s %s", server_round, record.node_id, record.status, record.detail)
        if len(valid) < self.min_train_replies:
            raise TooFewRepliesError(
                f"round {server_round} ({summary.stage}): {len(valid)} valid repl(ies) from {summary.sent} "
                f"client(s), fewer than min-train-replies={self.min_train_replies}; failures: "
                + "; ".join(f"node {c.node_id} {c.status}: {c.detail[-200:]}" for c in summary.clients
                            if c.status != "ok")
            )
        updates = []
        for component in STAGE_COMPONENTS[summary.stage]:
            per_client = [
                (reply, component_arrays(reply.content["arrays"], component), int(reply.content["metrics"][WEIGHT_KEY]))
                for reply in valid
            ]
            updates.append(self.aggregators[component].aggregate(server_round, per_client))
        summary.train_metrics = _weighted_metrics(valid)
        self._global = merge_arrays(self._global, updates)
        return self._global, MetricRecord({k: float(v) for k, v in summary.train_metrics.items()})

    # -- evaluation happens on the server (text-only test set), not on clients --------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def _weighted_metrics(replies: list[Message]) -> dict[str, float]:
    """Example-weighted mean of each numeric training metric the clients reported."""
    totals: dict[str, float] = {}
    weights: dict[str, float] = {}
    for reply in replies:
        metrics = reply.content["metrics"]
        weight = float(metrics[WEIGHT_KEY])
        for key, value in metrics.items():
            if key in (WEIGHT_KEY, "train-s") or isinstance(value, list):
                continue  # train-s is reported per client in clients.csv
            totals[key] = totals.get(key, 0.0) + weight * float(value)
            weights[key] = weights.get(key, 0.0) + weight
    return {key: totals[key] / weights[key] for key in totals}
