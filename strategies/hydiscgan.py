"""HyDiscGAN's Flower Strategy: two stages, per-component aggregation, failure accounting.

Global state is one ArrayRecord holding the shared components with prefixed keys ('generator.*',
'msa.*'; strategies.records). Stage 1 (modal alignment) sends and aggregates G only; stage 2 (MSA)
sends and aggregates G and M, on the clients (msa-site "clients") or, with msa-site "server", runs on
the server alone (stage "server-msa": `server_stage` trains M and fine-tunes G on the server's text and
labels; no client is contacted). The fedavg-multimodal baseline has one stage, "multimodal", in every
round: it sends and aggregates M only, which the clients train on their real audio/visual. The distill and
multitask baselines likewise have one stage of their own name and send M only (there the text model).

As in Flower's own strategies, `configure_train` and `aggregate_train` are short flows over helpers
that are tested alone: sampling (strategies.sampling), the known-ids handshake (strategies.handshake),
reply validation against the allow-list (strategies.replies), bookkeeping (strategies.bookkeeping),
transport coding (strategies.records), per-component rules (strategies.aggregation) and speaker-level
DP (strategies.dp). After each round the strategy hands the round's summary, the new global arrays and
its own state to `on_round_end` (the ServerApp records metrics and saves the server state there).

Per component the rule can differ, or be "local": a personalised component is never sent back nor
aggregated. Replies are aggregated in a canonical order (by content), so a run does not depend on
arrival order; a client's claimed num-examples is capped at `max_examples_ratio` times the round's
median claim. When clients miss modalities (`generator_heads`), stage 1 aggregates G part by part, each
modality's head by the examples of that modality and the rest by both (strategies.aggregation.generator_parts).
With speaker-level DP (`dp`) the sent components are aggregated by DP-FedAvg instead of
the rules, and clients are sampled with secret randomness; with utterance-level DP the clients report
their cumulative epsilon. Every round's row carries the run's cumulative privacy figures. With secure
aggregation (`secure_aggregation`, strategies.secure_aggregation) the round's train round trip sits
between SecAgg+'s key stages and its unmask stage, and the server aggregates the unmasked weighted mean
of the clients' updates, never an individual one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi, Strategy

from hydiscgan_fl.config import LOCAL_RULE, METHODS, SERVER_STAGE, SINGLE_STAGE, HyDiscGANConfig, stage_of_round
from hydiscgan_fl.privacy.ledger import PrivacyLedger
from hydiscgan_fl.privacy.reply_metrics import WEIGHT_KEY
from hydiscgan_fl.models.components import GENERATOR
from strategies.aggregation import (
    ComponentAggregator,
    capped_weights,
    generator_parts,
    load_rule_state,
    make_rule,
    part_claim,
    rule_state,
)
from strategies.bookkeeping import ClientRound, RoundSummary, classify_replies, clients_privacy, weighted_metrics
from strategies.dp import SpeakerLevelDP
from strategies.handshake import KnownIdsHandshake
from strategies.records import (
    STAGE_COMPONENTS,
    component_arrays,
    components_payload,
    from_transport,
    merge_arrays,
    to_transport,
)
from secagg.protocol import MASKED, RECORD
from strategies.replies import content_digest, reply_problem
from strategies.sampling import NodeSampler
from strategies.secure_aggregation import SecAggPlus, SecAggPlusRound

# The server's own stage: new global arrays and training metrics from the current ones, no client work.
ServerStage = Callable[[int, ArrayRecord], tuple[ArrayRecord, dict[str, float]]]
# Called after every round with its summary, the new global arrays and the strategy's state_dict().
RoundEndHook = Callable[[RoundSummary, ArrayRecord, dict], None]


class TooFewRepliesError(RuntimeError):
    """Fewer clients replied usefully than the configured minimum."""


# The rules whose aggregate depends on the weighted mean update alone (hydiscgan_fl.config.SECURE_AGGREGATION_RULES).
_MEAN_RULES = (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad)


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
    method : "hydiscgan" (two stages), or a single-stage baseline (config.SINGLE_STAGE): "fedavg-multimodal"
        (stage "multimodal"), "distill" or "multitask" (stages of the same names; M is the text model).
    known_ids : the training utterance ids of the server's text, sent once to each node (handshake).
    seed : seeds the sampling of clients (without DP; under speaker-level DP the sampling is secret).
    client_state : a name under which clients save their private state every round (for resume); "" = none.
    dp : speaker-level DP (DP-FedAvg over the sent components); needs FedAvg-style rules.
    dp_unit : the run's dp-unit ("none", "speaker" with `dp`, "utterance"): selects the reply allow-list.
    max_examples_ratio : a client's weight is at most this multiple of the round's median num-examples.
    msa_site : "clients" (stage 2 on the clients) or "server" (stage 2 by `server_stage`, no client work).
    server_stage : the server's stage-2 round (needed with msa_site "server").
    transport_dtype : "float32", or "float16": floating arrays travel in half precision both ways.
    secure_aggregation : SecAgg+ (the server sees only the sum of the updates); needs mean-based rules; with
        `dp` its clip_norm must be the DP's (the clients clip before masking).
    on_round_end : called after each round (recording, checkpointing).
    task : "sentiment", or "affect": stage "affect" in every round, M (the affect model) only.
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
        msa_site: str = "clients",
        server_stage: ServerStage | None = None,
        transport_dtype: str = "float32",
        secure_aggregation: SecAggPlus | None = None,
        on_round_end: RoundEndHook | None = None,
        task: str = "sentiment",
        generator_heads: Mapping[str, str] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; use one of {list(METHODS)}")
        if (dp is not None) != (dp_unit == "speaker"):
            raise ValueError(f"dp-unit {dp_unit!r} does not fit dp={dp!r}: speaker-level DP needs both")
        if (msa_site == "server") != (server_stage is not None):
            raise ValueError(f"msa-site {msa_site!r} does not fit server_stage={server_stage!r}: the server's "
                             "MSA stage needs both")
        self.method = method
        self.task = task
        # Clients miss modalities: stage 1 aggregates G part by part, each weighted by the examples that trained
        # it (strategies.aggregation.generator_parts; the array-key prefix of each modality's head of G)
        self.generator_heads = None if generator_heads is None else dict(generator_heads)
        self.rounds_align = rounds_align
        self.msa_site = msa_site
        self.server_stage = server_stage
        self.transport_dtype = transport_dtype
        self.on_round_end = on_round_end
        self.train_config = dict(train_config or {})
        rules = aggregation if isinstance(aggregation, Mapping) else dict.fromkeys(STAGE_COMPONENTS["msa"], aggregation)
        self.local_components = tuple(name for name in STAGE_COMPONENTS["msa"] if rules.get(name) == LOCAL_RULE)
        self.aggregators = {name: ComponentAggregator(name, rules.get(name) or make_rule("fedavg"))
                            for name in STAGE_COMPONENTS["msa"] if name not in self.local_components}
        if dp is not None and any(type(agg.rule).aggregate_train is not FedAvg.aggregate_train
                                  for agg in self.aggregators.values()):
            raise ValueError("speaker-level DP aggregates with DP-FedAvg; it cannot be combined with another "
                             "aggregation rule")
        if secure_aggregation is not None:
            refused = [f"{name}: {type(agg.rule).__name__}" for name, agg in self.aggregators.items()
                       if type(agg.rule) not in _MEAN_RULES]
            if refused:
                raise ValueError(f"secure aggregation hides each client's update; the rules {refused} need them "
                                 "(use FedAvg, FedProx, FedAdam, FedYogi or FedAdagrad)")
            dp_clip = dp.clip_norm if dp is not None else 0.0
            if secure_aggregation.clip_norm != dp_clip:
                raise ValueError("under speaker-level DP the clients clip to dp-clip-norm before masking: "
                                 "secure_aggregation.clip_norm must be the DP's clip norm (and 0 without DP)")
        self.secure_aggregation = secure_aggregation
        self._secagg_round: SecAggPlusRound | None = None
        self._grid: Grid | None = None
        self.dp = dp
        self.dp_unit = dp_unit
        self.max_examples_ratio = max_examples_ratio
        self.min_train_replies = min_train_replies
        # Under speaker-level DP the sample must be secret (amplification by subsampling); otherwise seeded.
        self.sampler = NodeSampler(fraction_train, min_train_replies, min_available_nodes, node_settle_s, seed,
                                   secret=dp is not None)
        self.handshake = KnownIdsHandshake(known_ids)
        self.client_state = client_state
        self.privacy: dict[str, float] = {}
        self.rounds: list[RoundSummary] = []
        self.round_offset = 0  # rounds completed before this Flower run (resume)
        self._global: ArrayRecord | None = None
        self._sent: ArrayRecord | None = None  # the sent components' global arrays (float32)
        self._payload: ArrayRecord | None = None  # the same as they travel (transport_dtype)
        self._pending: dict[int, ClientRound] = {}

    # -- stages ---------------------------------------------------------------------------------
    def stage_of(self, server_round: int) -> str:
        return stage_of_round(server_round, self.rounds_align, self.method, self.msa_site, self.task)

    def sent_components(self, stage: str) -> tuple[str, ...]:
        return tuple(name for name in STAGE_COMPONENTS[stage] if name not in self.local_components)

    def summary(self) -> None:
        rule = ", ".join([f"{name}: {type(agg.rule).__name__}" for name, agg in self.aggregators.items()]
                         + [f"{name}: local" for name in self.local_components])
        if self.task == "affect":
            stages = "affect task: the recurrent affect model M trained on the clients' AU windows in every round"
        elif self.method in SINGLE_STAGE:
            stages = f"{self.method} baseline: stage {SINGLE_STAGE[self.method]!r} in every round"
        else:
            stages = f"{self.rounds_align} alignment round(s), then MSA rounds on the {self.msa_site}"
        log(INFO, "HyDiscGAN strategy: %s; rules %s; fraction_train=%.2f, min_train_replies=%d",
            stages, rule, self.sampler.fraction, self.min_train_replies)

    # -- configure: sample, build the payload and config, send ------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        summary = RoundSummary(server_round + self.round_offset, self.stage_of(server_round + self.round_offset),
                               time.time())
        self.rounds.append(summary)
        self._global = arrays
        self._pending = {}
        self._secagg_round = None
        if summary.stage == SERVER_STAGE:
            log(INFO, "round %d (%s): no client work, the server trains", summary.server_round, summary.stage)
            return []
        node_ids = self.sampler.sample(grid)
        self._sent = components_payload(arrays, self.sent_components(summary.stage))
        payload = self._payload = to_transport(self._sent, self.transport_dtype)
        client_config = self._client_config(summary, arrays, config, node_ids, grid)
        summary.sent = len(node_ids)
        self._pending = {nid: ClientRound(summary.server_round, summary.stage, nid, "timeout", 0) for nid in node_ids}
        protocol = self._secagg_key_stages(summary, node_ids, grid) if self.secure_aggregation is not None else {}
        trained = [nid for nid in node_ids if not protocol or nid in protocol]
        contents = {nid: RecordDict({"arrays": payload, "config": self.handshake.config_for(nid, client_config),
                                     **({RECORD: protocol[nid]} if protocol else {})}) for nid in trained}
        self.handshake.sent(trained)
        for nid in trained:
            self._pending[nid].bytes_down += sum(record.count_bytes() for record in contents[nid].values())
        log(INFO, "round %d (%s): sending %s to %d node(s)", summary.server_round, summary.stage,
            "+".join(self.sent_components(summary.stage)) or "no shared component", len(trained))
        return [Message(content=contents[nid], dst_node_id=nid, message_type=MessageType.TRAIN) for nid in trained]

    def _secagg_key_stages(self, summary: RoundSummary, node_ids: list[int], grid: Grid) -> dict[int, ConfigRecord]:
        """SecAgg+'s setup and share-keys round trips; each remaining node's protocol record for the train
        message. A node that left the protocol is recorded as an error of the round."""
        self._grid = grid
        self._secagg_round = self.secure_aggregation.round(summary.server_round, node_ids)
        records = self._secagg_round.key_stages(grid)
        for nid, why in self._secagg_round.failures.items():
            self._pending[nid].status, self._pending[nid].detail = "error", f"secure aggregation {why}"
        return records

    def _client_config(self, summary: RoundSummary, arrays: ArrayRecord, config: ConfigRecord, node_ids: list[int],
                       grid: Grid) -> ConfigRecord:
        """The round's config: train_config, the caller's config, each rule's keys (e.g. FedProx's mu)."""
        client_config = ConfigRecord({**self.train_config, **dict(config.items())})
        for component in self.sent_components(summary.stage):
            client_config.update(self.aggregators[component].client_config(
                summary.server_round, component_arrays(arrays, component), node_ids, grid))
        client_config["server-round"] = summary.server_round
        client_config["stage"] = summary.stage
        if self.local_components:
            client_config["local-components"] = list(self.local_components)
        if self.client_state:
            client_config["client-state"] = self.client_state
        return client_config

    # -- aggregate: classify the replies, check the minimum, aggregate, account, record ----------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        summary = self.rounds[-1]
        if summary.stage == SERVER_STAGE:
            self._global, summary.train_metrics = self.server_stage(summary.server_round, self._global)
        else:
            valid = self._valid_replies(summary, replies)
            if self._secagg_round is not None:
                weights = [self._secagg_round.weights[reply.metadata.src_node_id] for reply in valid]
                aggregated = self._aggregate_securely(summary, valid)
            else:
                valid.sort(key=content_digest)  # canonical order: floating-point sums do not depend on arrival
                weights = capped_weights([int(reply.content["metrics"][WEIGHT_KEY]) for reply in valid],
                                         self.max_examples_ratio)
                aggregated = self._aggregate(summary, valid, weights)
            self._global = merge_arrays(self._global, aggregated)
            summary.train_metrics = weighted_metrics(valid, weights)
        summary.privacy = dict(self.privacy)
        if self.on_round_end is not None:
            self.on_round_end(summary, self._global, self.state_dict())
        return self._global, MetricRecord({k: float(v) for k, v in summary.train_metrics.items()})

    def _valid_replies(self, summary: RoundSummary, replies: Iterable[Message]) -> list[Message]:
        """The usable replies, the round's client records filled in; TooFewRepliesError below the minimum."""
        secure = self._secagg_round is not None
        valid = classify_replies(self._pending, replies, lambda reply: reply_problem(
            reply.content, self._payload, summary.stage, self.dp_unit, secure=secure))
        summary.clients = list(self._pending.values())
        summary.replies_ok, summary.replies_failed = len(valid), summary.sent - len(valid)
        self.handshake.failed(c.node_id for c in summary.failures())  # resend the ids next time
        for record in summary.failures():
            log(WARNING, "round %d: node %d %s %s", summary.server_round, record.node_id, record.status, record.detail)
        if len(valid) < self.min_train_replies:
            raise TooFewRepliesError(
                f"round {summary.server_round} ({summary.stage}): {len(valid)} valid repl(ies) from {summary.sent} "
                f"client(s), fewer than min-train-replies={self.min_train_replies}; failures: "
                + "; ".join(f"node {c.node_id} {c.status}: {c.detail[-200:]}" for c in summary.failures()))
        return valid

    def _aggregate(self, summary: RoundSummary, valid: list[Message], weights: list[int]) -> list[ArrayRecord]:
        """The new arrays of the sent components: DP-FedAvg over all of them as one update under
        speaker-level DP, else each component by its own rule. Updates the run's privacy figures. Replies
        are cast back from the transport dtype before any sum."""
        updated = (from_transport(reply.content["arrays"], self._sent) for reply in valid)
        if self.dp is not None:  # streaming: one reply at a time into a running sum
            aggregated = [self.dp.aggregate(self._sent, updated, self.sampler.last_rate, num_sampled=summary.sent)]
            self.privacy = self.dp.report()
            return aggregated
        self.privacy = clients_privacy(self.privacy, valid)
        per_client = list(zip(valid, updated, weights))
        if summary.stage == "align" and self.generator_heads is not None and GENERATOR in self.aggregators:
            return [self._aggregate_generator_parts(summary.server_round, per_client)]
        return [self.aggregators[component].aggregate(
                    summary.server_round, [(reply, component_arrays(arrays, component), weight)
                                           for reply, arrays, weight in per_client])
                for component in self.sent_components(summary.stage)]

    def _aggregate_generator_parts(self, server_round: int,
                                   per_client: list[tuple[Message, ArrayRecord, int]]) -> ArrayRecord:
        """Stage 1 with clients missing modalities: each part of G (a modality's head, the shared rest)
        aggregated over the clients that trained it, weighted by their (capped) examples of it; a part no
        client trained keeps its global arrays (absent from the result)."""
        generator = self.aggregators[GENERATOR]
        keys = component_arrays(per_client[0][1], GENERATOR).keys()
        merged = ArrayRecord()
        for part, part_keys in generator_parts(keys, self.generator_heads).items():
            trained = [(reply, arrays, claim) for reply, arrays, _ in per_client
                       if (claim := part_claim(reply.content["metrics"], part)) > 0]
            if not trained or not part_keys:
                continue
            weights = capped_weights([claim for _, _, claim in trained], self.max_examples_ratio)
            aggregated = generator.aggregate(server_round, [(reply, ArrayRecord({k: arrays[k] for k in part_keys}), w)
                                                            for (reply, arrays, _), w in zip(trained, weights)])
            merged = merge_arrays(merged, [aggregated])
        return merged

    def _aggregate_securely(self, summary: RoundSummary, valid: list[Message]) -> list[ArrayRecord]:
        """SecAgg+'s unmask round trip, then each component's rule over the unmasked weighted mean: the new
        arrays are what the clients received (cast back to float32) plus the mean update, shown to the rule
        as the one reply it aggregates (FedAvg returns it; FedAdam & co. take their step from it)."""
        round_ = self._secagg_round
        keys = sorted(self._sent)
        masked = {reply.metadata.src_node_id: [reply.content[MASKED][key].numpy() for key in keys] for reply in valid}
        total = round_.unmask(self._grid, masked)
        scale = round_.mean_scale(masked)
        base = from_transport(self._payload, self._sent)
        for nid, record in self._pending.items():  # the key and unmask stages' bytes count as the client's
            record.bytes_down += round_.bytes_down.get(nid, 0)
            record.bytes_up += round_.bytes_up.get(nid, 0)
        if self.dp is not None:  # the clients clipped with equal weights: the unmasked sum is DP-FedAvg's
            aggregated = [self.dp.aggregate_sum(base, total, len(masked), self.sampler.last_rate,
                                                num_sampled=summary.sent)]
            self.privacy = self.dp.report()
            return aggregated
        mean = ArrayRecord({key: Array((base[key].numpy().astype(np.float64) + scale * update).astype(np.float32))
                            for key, update in zip(keys, total)})
        self.privacy = clients_privacy(self.privacy, valid)
        return [self.aggregators[component].aggregate(summary.server_round,
                                                      [(valid[0], component_arrays(mean, component), 1)])
                for component in self.sent_components(summary.stage)]

    # -- checkpoint ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs: the last completed round, each rule's state, the sampler's RNG.

        Under speaker-level DP the sampler is the OS's CSPRNG and has no state: "sampler" is None, so
        the checkpoint (which the server writes to disk) reveals nothing of future samples."""
        return {"round": self.rounds[-1].server_round if self.rounds else self.round_offset,
                "rules": {name: rule_state(agg.rule) for name, agg in self.aggregators.items()},
                "sampler": self.sampler.state(),
                "privacy": dict(self.privacy),
                **({"dp-ledger": self.dp.ledger.to_json()} if self.dp is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Continue after state["round"]: Flower's round k of this run is round k + state["round"]."""
        if set(state["rules"]) != set(self.aggregators):
            raise ValueError(f"checkpoint aggregates {sorted(state['rules'])}, this run {sorted(self.aggregators)}")
        for name, saved in state["rules"].items():
            load_rule_state(self.aggregators[name].rule, saved)
        self.sampler.load_state(state["sampler"])
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
