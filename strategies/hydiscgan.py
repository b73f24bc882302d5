"""HyDiscGAN's Flower Strategy: two stages, per-component aggregation, failure accounting.

Global state is one ArrayRecord holding the shared components with prefixed keys ('generator.*',
'msa.*'). Stage 1 (modal alignment) sends and aggregates G only; stage 2 (MSA) sends and aggregates
G and M. Clients keep their encoders and discriminators; a reply that carries anything other than
the arrays of the components it was sent, or a metric outside the allow-list of its stage and DP unit
(`hydiscgan_fl.privacy.reply_metrics`), is rejected. A client's claimed num-examples is capped at
`max_examples_ratio` times the round's median claim before any example-weighted rule sees it. The
fedavg-multimodal baseline (method "fedavg-multimodal") has one stage, "multimodal", in every round:
it sends and aggregates M only, which the clients train on their real audio/visual.

Per component the rule can differ, or be "local": a personalised component is never sent back nor
aggregated (the clients keep their own copies; the server's copy stays at its last global value).
Replies are aggregated in a canonical order (by content), so a run does not depend on arrival order,
and `state_dict`/`load_state_dict` carry the rules' state and the sampler through a checkpoint.

Privacy (docs/privacy.md): with speaker-level DP (`dp`) the sent components are aggregated by DP-FedAvg
(strategies.dp) instead of the rules, and clients are sampled with secret randomness; with
utterance-level DP the clients report their cumulative epsilon (not the Wasserstein figure, which is
computed from their private gradients). Every round's row carries the run's cumulative figures.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from hydiscgan_fl.config import LOCAL_RULE, METHODS, HyDiscGANConfig, stage_of_round
from hydiscgan_fl.privacy.ledger import PRIVACY_COLUMNS, PRIVACY_METRIC_KEYS, PrivacyLedger
from hydiscgan_fl.privacy.reply_metrics import TIMING_KEY, WEIGHT_KEY, allowed_reply_metrics
from hydiscgan_fl.privacy.secret_rng import secret_random
from strategies.aggregation import (
    ComponentAggregator,
    capped_weights,
    load_rule_state,
    make_rule,
    rule_state,
)
from strategies.dp import SpeakerLevelDP

STAGE_COMPONENTS = {"align": ("generator",), "msa": ("generator", "msa"), "multimodal": ("msa",)}


FAILURE_KINDS = ("error", "timeout", "rejected")


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
    status: str  # one of FAILURE_KINDS, or ok
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
    privacy: dict[str, float] = field(default_factory=dict)  # cumulative, keyed by PRIVACY_COLUMNS

    def as_row(self) -> dict[str, float | int | str]:
        ok = [c for c in self.clients if c.status == "ok"]
        return {
            "stage": self.stage,
            "round": self.server_round,
            "clients_sent": self.sent,
            "replies_ok": self.replies_ok,
            "replies_failed": self.replies_failed,
            **{f"replies_{kind}": sum(c.status == kind for c in self.clients) for kind in FAILURE_KINDS},
            **{f"train_{key}": value for key, value in sorted(self.train_metrics.items())},
            **self.privacy,
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
    aggregation : the aggregation rule (a Flower Strategy) of every component (FedAvg by default), or a
        mapping component -> rule or "local" (personalised; a missing component uses FedAvg).
    fraction_train : share of the connected nodes sampled each round.
    min_train_replies : a round with fewer valid replies stops the run with TooFewRepliesError.
    min_available_nodes : wait for this many nodes before the first round.
    method : "hydiscgan" (two stages) or "fedavg-multimodal" (stage "multimodal" in every round).
    known_ids : the training utterance ids of the server's text, sent once to each node, which refuses
        data holding others (ids are shareable text metadata; nothing per utterance comes back).
    seed : seeds the sampling of clients (without DP; under speaker-level DP the sampling is secret).
    client_state : a name under which clients save their private state every round (for resume); "" = none.
    dp : speaker-level DP (DP-FedAvg over the sent components); needs FedAvg-style rules.
    dp_unit : the run's dp-unit ("none", "speaker" with `dp`, "utterance"): selects the reply allow-list.
    max_examples_ratio : a client's weight is at most this multiple of the round's median num-examples.
    """

    def __init__(
        self,
        rounds_align: int,
        train_config: dict | None = None,
        aggregation: Strategy | Mapping[str, Strategy | str] | None = None,
        fraction_train: float = 1.0,
        min_train_replies: int = 1,
        min_available_nodes: int = 1,
        node_settle_s: float = 2.0,
        method: str = "hydiscgan",
        known_ids: Sequence[str] = (),
        seed: int = 0,
        client_state: str = "",
        dp: SpeakerLevelDP | None = None,
        dp_unit: str = "none",
        max_examples_ratio: float = HyDiscGANConfig().max_examples_ratio,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {list(METHODS)}")
        if (dp is not None) != (dp_unit == "speaker"):
            raise ValueError(f"dp-unit {dp_unit!r} does not fit dp={dp!r}: speaker-level DP needs both")
        self.method = method
        self.rounds_align = rounds_align
        self.train_config = dict(train_config or {})
        rules = aggregation if isinstance(aggregation, Mapping) else dict.fromkeys(STAGE_COMPONENTS["msa"], aggregation)
        self.local_components = tuple(name for name in STAGE_COMPONENTS["msa"] if rules.get(name) == LOCAL_RULE)
        self.aggregators = {name: ComponentAggregator(name, rules.get(name) or make_rule("fedavg"))
                            for name in STAGE_COMPONENTS["msa"] if name not in self.local_components}
        if dp is not None and any(type(agg.rule).aggregate_train is not FedAvg.aggregate_train
                                  for agg in self.aggregators.values()):
            raise ValueError("speaker-level DP aggregates with DP-FedAvg; it cannot be combined with another "
                             "aggregation rule")
        self.dp = dp
        self.dp_unit = dp_unit
        self.max_examples_ratio = max_examples_ratio
        self.privacy: dict[str, float] = {}
        self._sample_rate = 1.0
        self.fraction_train = fraction_train
        self.min_train_replies = min_train_replies
        self.min_available_nodes = min_available_nodes
        self.node_settle_s = node_settle_s
        self.known_ids = sorted(known_ids)
        self.client_state = client_state
        self.rounds: list[RoundSummary] = []
        self.round_offset = 0  # rounds completed before this Flower run (resume)
        # Under speaker-level DP the sample must be secret (amplification by subsampling); otherwise seeded.
        self._rng = secret_random() if dp is not None else random.Random(seed)
        self._introduced: set[int] = set()  # nodes that were sent known_ids and replied
        self._global: ArrayRecord | None = None
        self._pending: dict[int, ClientRound] = {}

    # -- stages ---------------------------------------------------------------------------------
    def stage_of(self, server_round: int) -> str:
        return stage_of_round(server_round, self.rounds_align, self.method)

    def sent_components(self, stage: str) -> tuple[str, ...]:
        return tuple(name for name in STAGE_COMPONENTS[stage] if name not in self.local_components)

    def summary(self) -> None:
        rule = ", ".join([f"{name}: {type(agg.rule).__name__}" for name, agg in self.aggregators.items()]
                         + [f"{name}: local" for name in self.local_components])
        if self.method == "fedavg-multimodal":
            stages = "fedavg-multimodal baseline: M(t, a, v) trained on real audio/visual in every round"
        else:
            stages = f"{self.rounds_align} alignment round(s), then MSA rounds"
        log(INFO, "HyDiscGAN strategy: %s; rules %s; fraction_train=%.2f, min_train_replies=%d",
            stages, rule, self.fraction_train, self.min_train_replies)

    # -- training -------------------------------------------------------------------------------
    def _sample(self, grid: Grid) -> list[int]:
        if not self.rounds:
            self._wait_for_nodes(grid)
        while len(available := sorted(grid.get_node_ids())) < self.min_available_nodes:
            time.sleep(1.0)
        size = min(max(int(round(len(available) * self.fraction_train)), self.min_train_replies), len(available))
        self._sample_rate = size / len(available)
        return sorted(self._rng.sample(available, size))

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
        server_round += self.round_offset
        self._global = arrays
        stage = self.stage_of(server_round)
        node_ids = self._sample(grid)
        payload = merge_arrays(ArrayRecord(), (component_arrays(arrays, c) for c in self.sent_components(stage)))
        client_config = ConfigRecord({**self.train_config, **dict(config.items())})
        for component in self.sent_components(stage):
            rule_config = self.aggregators[component].client_config(
                server_round, component_arrays(arrays, component), node_ids, grid
            )
            client_config.update(rule_config)
        client_config["server-round"] = server_round
        client_config["stage"] = stage
        if self.local_components:
            client_config["local-components"] = list(self.local_components)
        if self.client_state:
            client_config["client-state"] = self.client_state
        first_contact = ConfigRecord({**client_config, "known-ids": self.known_ids}) if self.known_ids else client_config
        contents = {nid: RecordDict({"arrays": payload, "config": client_config if nid in self._introduced
                                     else first_contact}) for nid in node_ids}
        self._introduced.update(node_ids)
        summary = RoundSummary(server_round, stage, started, sent=len(node_ids))
        self.rounds.append(summary)
        self._pending = {nid: ClientRound(server_round, stage, nid, "timeout", payload.count_bytes()
                                          + contents[nid]["config"].count_bytes()) for nid in node_ids}
        log(INFO, "round %d (%s): sending %s to %d node(s)", server_round, stage,
            "+".join(self.sent_components(stage)) or "no shared component", len(node_ids))
        return [Message(content=contents[nid], dst_node_id=nid, message_type=MessageType.TRAIN) for nid in node_ids]

    def _check_reply(self, reply: Message, stage: str) -> str:
        """'' when the reply is usable, else why it is rejected."""
        content = reply.content
        if "arrays" not in content.array_records or len(content.array_records) != 1:
            return "reply must hold exactly one ArrayRecord named 'arrays'"
        if "metrics" not in content.metric_records or WEIGHT_KEY not in content["metrics"]:
            return f"reply must hold a MetricRecord 'metrics' with '{WEIGHT_KEY}'"
        if content["metrics"][WEIGHT_KEY] <= 0:
            return f"'{WEIGHT_KEY}' must be positive"
        extra = sorted(set(content["metrics"]) - allowed_reply_metrics(stage, self.dp_unit))
        if extra:
            return f"metrics {extra[:5]} are not allowed in a {stage} reply with dp-unit {self.dp_unit!r}"
        expected = merge_arrays(ArrayRecord(), (component_arrays(self._global, c) for c in self.sent_components(stage)))
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
        server_round += self.round_offset
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
            record.train_s = float(metrics.get(TIMING_KEY, 0.0))
            valid.append(reply)
        summary.clients = list(self._pending.values())
        self._introduced -= {c.node_id for c in summary.clients if c.status != "ok"}  # resend the ids next time
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
        valid.sort(key=_content_digest)  # canonical order: floating-point sums do not depend on arrival
        weights = capped_weights([int(reply.content["metrics"][WEIGHT_KEY]) for reply in valid],
                                 self.max_examples_ratio)
        updates = []
        if self.dp is not None:  # speaker-level DP: all sent components clipped and noised as one update
            sent = merge_arrays(ArrayRecord(), (component_arrays(self._global, c)
                                                for c in self.sent_components(summary.stage)))
            updates.append(self.dp.aggregate(sent, [reply.content["arrays"] for reply in valid], self._sample_rate,
                                             num_sampled=summary.sent))
            self.privacy = self.dp.report()
        else:
            for component in self.sent_components(summary.stage):
                per_client = [(reply, component_arrays(reply.content["arrays"], component), weight)
                              for reply, weight in zip(valid, weights)]
                updates.append(self.aggregators[component].aggregate(server_round, per_client))
            self.privacy = _clients_privacy(self.privacy, valid)
        summary.privacy = dict(self.privacy)
        summary.train_metrics = _weighted_metrics(valid, weights)
        self._global = merge_arrays(self._global, updates)
        return self._global, MetricRecord({k: float(v) for k, v in summary.train_metrics.items()})

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs: the last completed round, each rule's state, the sampler's RNG.

        Under speaker-level DP the sampler is the OS's CSPRNG and has no state: "sampler" is None, so
        the checkpoint (which the server writes to disk) reveals nothing of future samples, and a
        resumed run samples afresh from the same secret source."""
        return {"round": self.rounds[-1].server_round if self.rounds else self.round_offset,
                "rules": {name: rule_state(agg.rule) for name, agg in self.aggregators.items()},
                "sampler": None if self.dp is not None else self._rng.getstate(),
                "privacy": dict(self.privacy),
                **({"dp-ledger": self.dp.ledger.to_json()} if self.dp is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Continue after state["round"]: Flower's round k of this run is round k + state["round"]."""
        if set(state["rules"]) != set(self.aggregators):
            raise ValueError(f"checkpoint aggregates {sorted(state['rules'])}, this run {sorted(self.aggregators)}")
        for name, saved in state["rules"].items():
            load_rule_state(self.aggregators[name].rule, saved)
        if self.dp is None:
            if state["sampler"] is None:
                raise ValueError("the checkpoint's run sampled clients secretly (speaker-level DP); a run "
                                 "without DP cannot continue its seeded sampling")
            self._rng.setstate(state["sampler"])
        self.privacy = dict(state.get("privacy", {}))
        if self.dp is not None:
            if "dp-ledger" not in state:
                raise ValueError("the checkpoint's run had no speaker-level DP; its privacy spent is unknown")
            self.dp.ledger = PrivacyLedger.from_json(state["dp-ledger"])
        self.round_offset = int(state["round"])

    # -- evaluation happens on the server (text-only test set), not on clients --------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None


def _content_digest(reply: Message) -> bytes:
    arrays = reply.content["arrays"]
    digest = hashlib.sha256(str(reply.content["metrics"][WEIGHT_KEY]).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(arrays[key].data)
    return digest.digest()


def _clients_privacy(previous: dict[str, float], replies: list[Message]) -> dict[str, float]:
    """Utterance-level DP: each client reports its own cumulative figures; the run's are the largest
    (an utterance is covered by its own client's bound, so the weakest bound is the run's)."""
    spent = dict(previous)
    for reply in replies:
        metrics = reply.content["metrics"]
        for column, key in zip(PRIVACY_COLUMNS, PRIVACY_METRIC_KEYS):
            if key in metrics:
                spent[column] = max(spent.get(column, 0.0), float(metrics[key]))
    return spent


def _weighted_metrics(replies: list[Message], weights: list[int]) -> dict[str, float]:
    """Mean of each numeric training metric the clients reported (the allow-list admits only stage-2
    loss-task without DP), weighted by the capped numbers of examples that weighted the aggregation."""
    totals: dict[str, float] = {}
    sums: dict[str, float] = {}
    for reply, weight in zip(replies, weights):
        for key, value in reply.content["metrics"].items():
            if key in (WEIGHT_KEY, TIMING_KEY, *PRIVACY_METRIC_KEYS) or isinstance(value, list):
                continue  # train-s is reported per client in clients.csv; privacy figures by _clients_privacy
            totals[key] = totals.get(key, 0.0) + weight * float(value)
            sums[key] = sums.get(key, 0.0) + weight
    return {key: totals[key] / sums[key] for key in totals}
