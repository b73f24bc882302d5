"""What happened in a round: one `ClientRound` per sampled client (a row of clients.csv), one
`RoundSummary` per round (merged into a row of metrics.csv), and the pure helpers that fill them from
the replies: classification (ok, error, timeout, rejected), the weighted training metrics, and the run's
cumulative privacy figures under utterance-level DP."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from hydiscgan_fl.privacy.ledger import PRIVACY_COLUMNS, PRIVACY_METRIC_KEYS
from hydiscgan_fl.privacy.reply_metrics import PRESENCE_KEYS, TIMING_KEY, WEIGHT_KEY

FAILURE_KINDS = ("error", "timeout", "rejected")
# Reply metrics that are no training figures: the weight, train-s and the modality counts (per client in
# clients.csv), the privacy figures (clients_privacy).
_NOT_AVERAGED = frozenset({WEIGHT_KEY, TIMING_KEY, *PRIVACY_METRIC_KEYS, *PRESENCE_KEYS.values()})


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
    # utterances holding each modality, in runs that simulate missing modalities (else None: blank cells)
    examples_text: int | None = None
    examples_audio: int | None = None
    examples_visual: int | None = None


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
            **self.held_examples(ok),
        }

    @staticmethod
    def held_examples(ok: list[ClientRound]) -> dict[str, int]:
        """The training utterances holding each modality, summed over the clients that reported them (runs
        that simulate missing modalities); {} when none did."""
        held = {}
        for modality in PRESENCE_KEYS:
            counts = [getattr(c, f"examples_{modality}") for c in ok]
            if any(count is not None for count in counts):
                held[f"examples_{modality}"] = sum(count or 0 for count in counts)
        return held

    def failures(self) -> list[ClientRound]:
        return [c for c in self.clients if c.status != "ok"]


def classify_replies(pending: dict[int, ClientRound], replies: Iterable[Message],
                     problem_of: Callable[[Message], str]) -> list[Message]:
    """Mark each sampled client's record ok, error or rejected (`problem_of` says why, '' = usable; a
    client that never replied stays a timeout) and return the usable replies. Replies from nodes that
    were not sampled are ignored."""
    valid = []
    for reply in replies:
        record = pending.get(reply.metadata.src_node_id)
        if record is None:
            continue
        if reply.has_error():
            record.status, record.detail = "error", (reply.error.reason or "")[-300:]
            continue
        if problem := problem_of(reply):
            record.status, record.detail = "rejected", problem
            continue
        metrics = reply.content["metrics"]
        record.status = "ok"
        record.bytes_up = sum(arrays.count_bytes() for arrays in reply.content.array_records.values()) \
            + metrics.count_bytes()
        record.num_examples = int(metrics[WEIGHT_KEY])
        record.train_s = float(metrics.get(TIMING_KEY, 0.0))
        for modality, key in PRESENCE_KEYS.items():
            if key in metrics:
                setattr(record, f"examples_{modality}", int(metrics[key]))
        valid.append(reply)
    return valid


def clients_privacy(previous: dict[str, float], replies: list[Message]) -> dict[str, float]:
    """Utterance-level DP: each client reports its own cumulative figures; the run's are the largest
    (an utterance is covered by its own client's bound, so the weakest bound is the run's)."""
    spent = dict(previous)
    for reply in replies:
        metrics = reply.content["metrics"]
        for column, key in zip(PRIVACY_COLUMNS, PRIVACY_METRIC_KEYS):
            if key in metrics:
                spent[column] = max(spent.get(column, 0.0), float(metrics[key]))
    return spent


def weighted_metrics(replies: list[Message], weights: list[int]) -> dict[str, float]:
    """Mean of each numeric training metric the clients reported (the allow-list admits only stage-2
    loss-task without DP), weighted by the capped numbers of examples that weighted the aggregation."""
    totals: dict[str, float] = {}
    sums: dict[str, float] = {}
    for reply, weight in zip(replies, weights):
        for key, value in reply.content["metrics"].items():
            if key in _NOT_AVERAGED or isinstance(value, list):
                continue
            totals[key] = totals.get(key, 0.0) + weight * float(value)
            sums[key] = sums.get(key, 0.0) + weight
    return {key: totals[key] / sums[key] for key in totals}
