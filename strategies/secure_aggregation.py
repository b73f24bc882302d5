"""The server's side of SecAgg+ (docs/secure-aggregation.md): the server learns the sum of the clients'
masked updates, never one of them.

Flower's `SecAggPlusWorkflow` drives the legacy fit messages (a `LegacyContext` and a `Strategy.configure_fit`)
and `secaggplus_mod` turns the client's reply into a `FitRes`; HyDiscGAN's strategy speaks the Message
API with stage-dependent payloads, so the same four-stage protocol runs here, round trip by round trip,
around the strategy's own train round trip:

1. setup (`query.secagg_setup`): each sampled client makes two key pairs and returns the public keys
   with its claimed num-examples;
2. share keys (`query.secagg_share_keys`): each client receives its neighbours' public keys and returns
   Shamir shares of its self-mask seed and of its mask key, each encrypted for one neighbour;
3. collect masked vectors: the strategy's train message carries the shares encrypted for the client
   and its aggregation weight; the reply carries the masked update instead of the weights;
4. unmask (`query.secagg_unmask`): the clients whose vector arrived return, per neighbour, a share of
   its self-mask seed (vector arrived) or of its mask key (dropped after sharing keys).

Weights: the server caps the claims exactly as without secure aggregation (`capped_weights`: at most
max-examples-ratio times the median claim) and tells each client its capped weight w_i and the round's
largest w_max; the client quantises (w_i / w_max) x its update, and the server multiplies the unmasked sum
by w_max / sum of the w_i whose vector arrived. The aggregate is then FedAvg's weighted mean, up to the
quantisation error `secagg.protocol.quantisation_error_bound` x w_max / sum w_i. Under speaker-level DP
every weight is 1 and each client clips its update to dp-clip-norm (less the quantisation's slack)
before masking; the server adds the noise to the unmasked sum (strategies.dp.SpeakerLevelDP.aggregate_sum).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.serverapp import Grid

from hydiscgan_fl.config import HyDiscGANConfig
from secagg.protocol import (
    RECORD,
    REPLY_KEYS,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    apply_masks,
    check_capacity,
    dequantised_sum,
    neighbour_graph,
    pairwise_mask,
    pairwise_sign,
    record_bytes,
    self_mask,
    share_count,
    threshold_count,
)
from strategies.aggregation import capped_weights


class SecureAggregationError(RuntimeError):
    """The round's secure aggregation cannot complete (too few clients left to reconstruct a secret)."""


@dataclass(frozen=True)
class SecAggPlus:
    """The run's SecAgg+ parameters (run-config secagg-*); `round` starts one round's protocol."""

    shares: float = HyDiscGANConfig().secagg_shares
    threshold: float = HyDiscGANConfig().secagg_threshold
    clipping_range: float = HyDiscGANConfig().secagg_clipping_range
    quantization_range: int = HyDiscGANConfig().secagg_quantization_range
    max_examples_ratio: float = HyDiscGANConfig().max_examples_ratio
    timeout: float | None = None
    clip_norm: float = 0.0  # speaker-level DP's C: clients clip before masking, all weights equal; 0 = no DP

    def round(self, server_round: int, node_ids: Iterable[int]) -> SecAggPlusRound:
        return SecAggPlusRound(self, server_round, node_ids)


def secure_aggregation(cfg: HyDiscGANConfig) -> SecAggPlus | None:
    """The run's SecAgg+ when secure-aggregation is "secaggplus", else None."""
    if cfg.secure_aggregation == "none":
        return None
    return SecAggPlus(cfg.secagg_shares, cfg.secagg_threshold, cfg.secagg_clipping_range,
                      cfg.secagg_quantization_range, cfg.max_examples_ratio, cfg.round_timeout_s,
                      cfg.dp_clip_norm if cfg.dp_unit == "speaker" else 0.0)


class SecAggPlusRound:
    """One round of the protocol on the server. The `*_records`/`receive_*` steps are pure (records in,
    records out; tested alone); `key_stages` and `unmask` run them over the grid."""

    def __init__(self, params: SecAggPlus, server_round: int, node_ids: Iterable[int]):
        self.params = params
        self.server_round = server_round
        self.sampled = sorted(node_ids)
        if len(self.sampled) < 3:
            raise SecureAggregationError(f"round {server_round}: secure aggregation needs at least 3 clients, "
                                         f"{len(self.sampled)} sampled (the sum of two reveals each to the other)")
        check_capacity(len(self.sampled), params.quantization_range)
        num_shares = share_count(len(self.sampled), params.shares)
        self.threshold = threshold_count(num_shares, params.threshold)
        self.neighbours = neighbour_graph(self.sampled, num_shares)
        self.public_keys: dict[int, tuple[bytes, bytes]] = {}  # setup's survivors
        self.claims: dict[int, int] = {}
        self.forwarded: dict[int, list[tuple[int, bytes]]] = {}  # share keys' survivors: [(src, ciphertext)]
        self.weights: dict[int, int] = {}
        self.failures: dict[int, str] = {}  # node -> why it left the protocol
        self.bytes_down: dict[int, int] = defaultdict(int)
        self.bytes_up: dict[int, int] = defaultdict(int)
        self.seconds: dict[str, float] = {}  # stage -> wall-clock seconds of its round trip

    # -- pure steps ----------------------------------------------------------------------------------
    def _record(self, fields: dict) -> ConfigRecord:
        return ConfigRecord({"server-round": self.server_round, **fields})

    def setup_records(self) -> dict[int, ConfigRecord]:
        return {nid: self._record({"threshold": self.threshold}) for nid in self.sampled}

    def receive_setup(self, replies: dict[int, ConfigRecord]) -> None:
        for nid, record in replies.items():
            self.public_keys[nid] = (bytes(record["pk1"]), bytes(record["pk2"]))
            self.claims[nid] = int(record["num-examples"])
        self._check_neighbourhoods(set(self.public_keys), "setup")

    def share_keys_records(self) -> dict[int, ConfigRecord]:
        records = {}
        for nid in self.public_keys:
            nids = sorted(self.neighbours[nid] & set(self.public_keys))
            records[nid] = self._record({"nids": nids, "pk1s": [self.public_keys[j][0] for j in nids],
                                         "pk2s": [self.public_keys[j][1] for j in nids]})
        return records

    def receive_share_keys(self, replies: dict[int, ConfigRecord]) -> None:
        self.forwarded = {nid: [] for nid in replies}
        for src, record in sorted(replies.items()):
            for dst, ctxt in zip(record["dsts"], record["ctxts"], strict=True):
                if dst in self.forwarded and dst in self.neighbours[src]:
                    self.forwarded[dst].append((src, bytes(ctxt)))
        self._check_neighbourhoods(set(self.forwarded), "share keys")
        if self.params.clip_norm > 0:  # DP-FedAvg weighs every client equally (strategies.dp)
            self.weights = dict.fromkeys(self.forwarded, 1)
        else:
            capped = capped_weights([self.claims[nid] for nid in self.forwarded], self.params.max_examples_ratio)
            self.weights = dict(zip(self.forwarded, capped))

    def train_records(self) -> dict[int, ConfigRecord]:
        """Each remaining client's protocol record of the train message: its neighbours' encrypted shares,
        its capped weight and the round's largest, and the quantisation parameters."""
        max_weight = max(self.weights.values())
        return {nid: self._record({"srcs": [src for src, _ in fwd], "ctxts": [c for _, c in fwd],
                                   "weight": self.weights[nid], "max-weight": max_weight,
                                   "clipping-range": self.params.clipping_range,
                                   "clip-norm": self.params.clip_norm,
                                   "quantization-range": self.params.quantization_range})
                for nid, fwd in self.forwarded.items()}

    def unmask_records(self, arrived: Iterable[int]) -> dict[int, ConfigRecord]:
        arrived = set(arrived)
        self._check_neighbourhoods(arrived, "collect masked vectors")
        dead = set(self.forwarded) - arrived
        return {nid: self._record({"active": sorted(self.neighbours[nid] & arrived),
                                   "dead": sorted(self.neighbours[nid] & dead)}) for nid in sorted(arrived)}

    def unmasked_sum(self, masked: dict[int, list[np.ndarray]], replies: dict[int, ConfigRecord]) -> list[np.ndarray]:
        """The sum of the arrived clients' scaled updates (float64), from their masked vectors and the
        shares the unmask stage returned. SecureAggregationError when a secret has fewer than
        `threshold` shares."""
        shares: dict[int, list[bytes]] = defaultdict(list)
        for holder, record in replies.items():
            for owner, share in zip(record["nids"], record["shares"], strict=True):
                if holder in self.neighbours[owner]:
                    shares[owner].append(bytes(share))
        arrived = sorted(masked)
        shapes = [m.shape for m in masked[arrived[0]]]
        total = [np.zeros(shape, dtype=np.int64) for shape in shapes]
        for vectors in masked.values():
            total = apply_masks(total, [(1, [v.astype(np.int64) for v in vectors])])
        removals = []
        for owner in sorted(self.forwarded):
            secret = self._reconstruct(owner, shares[owner])
            if owner in masked:
                removals.append((-1, self_mask(secret, shapes)))
            else:  # dropped after sharing keys: undo the pairwise masks its arrived neighbours added
                removals += [(-pairwise_sign(nid, owner), pairwise_mask(secret, self.public_keys[nid][0], shapes))
                             for nid in sorted(self.neighbours[owner] & set(arrived)) if nid != owner]
        total = apply_masks(total, removals)
        return dequantised_sum(total, len(arrived), self.params.clipping_range, self.params.quantization_range)

    def mean_scale(self, arrived: Iterable[int]) -> float:
        """unmasked sum x this = the example-weighted mean update of the arrived clients."""
        return max(self.weights.values()) / sum(self.weights[nid] for nid in arrived)

    def _reconstruct(self, owner: int, shares: list[bytes]) -> bytes:
        if len(shares) < self.threshold:
            raise SecureAggregationError(
                f"round {self.server_round}: secure aggregation cannot unmask: {len(shares)} share(s) of node "
                f"{owner}'s secret came back, fewer than the reconstruction threshold {self.threshold} "
                f"(secagg-threshold={self.params.threshold} of {len(self.neighbours[owner])} shares); too many "
                "clients dropped, the round fails")
        return combine_shares(shares)

    def _check_neighbourhoods(self, alive: set[int], stage: str) -> None:
        """Every remaining client needs `threshold` remaining neighbours (itself included), or its secrets
        could not be reconstructed (and its neighbours refuse to unmask)."""
        for nid in sorted(alive):
            left = len(self.neighbours[nid] & alive)
            if left < self.threshold:
                raise SecureAggregationError(
                    f"round {self.server_round}: after the {stage} stage node {nid} has {left} remaining "
                    f"neighbour(s) (itself included), fewer than the reconstruction threshold {self.threshold} "
                    f"(secagg-threshold={self.params.threshold}); {len(alive)} of {len(self.sampled)} clients left, "
                    "the round fails")

    # -- round trips -----------------------------------------------------------------------------------
    def key_stages(self, grid: Grid) -> dict[int, ConfigRecord]:
        """Setup and share keys; the train records of the clients still in the protocol."""
        self.receive_setup(self._round_trip(grid, SETUP, self.setup_records()))
        self.receive_share_keys(self._round_trip(grid, SHARE_KEYS, self.share_keys_records()))
        log(INFO, "round %d: secure aggregation keys shared by %d of %d client(s) (threshold %d)",
            self.server_round, len(self.forwarded), len(self.sampled), self.threshold)
        return self.train_records()

    def unmask(self, grid: Grid, masked: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
        replies = self._round_trip(grid, UNMASK, self.unmask_records(masked))
        started = time.perf_counter()
        total = self.unmasked_sum(masked, replies)
        self.seconds["unmask-server"] = time.perf_counter() - started
        return total

    def _round_trip(self, grid: Grid, stage: str, records: dict[int, ConfigRecord]) -> dict[int, ConfigRecord]:
        """Send each node its record; the well-formed replies (exactly the stage's keys) by node."""
        started = time.perf_counter()
        messages = [Message(RecordDict({RECORD: record}), dst_node_id=nid,
                            message_type=f"{MessageType.QUERY}.{stage}") for nid, record in records.items()]
        for nid, record in records.items():
            self.bytes_down[nid] += record_bytes(record)
        replies: dict[int, ConfigRecord] = {}
        for reply in grid.send_and_receive(messages, timeout=self.params.timeout):
            nid = reply.metadata.src_node_id
            if nid not in records:
                continue
            if reply.has_error():
                self.failures[nid] = f"{stage}: {(reply.error.reason or '')[-300:]}"
                continue
            record = reply.content.config_records.get(RECORD)
            if (record is None or len(reply.content) != 1 or set(record) != REPLY_KEYS[stage]):
                self.failures[nid] = (f"{stage}: the reply must hold exactly the record '{RECORD}' with "
                                      f"{sorted(REPLY_KEYS[stage])}")
                continue
            self.bytes_up[nid] += record_bytes(record)
            replies[nid] = record
        for nid in set(records) - set(replies) - set(self.failures):
            self.failures[nid] = f"{stage}: no reply"
        for nid in set(records) - set(replies):
            log(WARNING, "round %d: node %d left secure aggregation at %s", self.server_round, nid,
                self.failures[nid])
        self.seconds[stage] = time.perf_counter() - started
        return replies
