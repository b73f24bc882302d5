"""The metric keys a client's reply may carry, per stage and DP unit: the one allow-list that the client
enforces when it builds a reply (`clients.handlers`) and the server checks again (`strategies`).

The rule: a figure computed from private data (audio/video, or models trained on them) leaves a client
only if a DP mechanism covers it. Arrays are governed separately (exactly the components sent).

* `num-examples`: the client's number of training utterances, the aggregation weight. Treated as
  public metadata: the server holds every training text with its speaker id.
* `epsilon-rdp`, `epsilon-prv` (utterance-level DP): functions of sigma, q and the number of steps,
  all public parameters. The Wasserstein figure `wdp-loss` is computed from distances between
  per-utterance gradients, un-noised: it stays on the client (its log).
* Losses: stage 1 ("align") reads real audio/video in every term, so its losses never leave. The
  fedavg-multimodal baseline's `loss-task` is M(t, a, v) on real audio/video: never. Nor do the distill
  and multitask baselines' losses: the student's trajectory depends on the teacher or the auxiliary loss,
  both computed from real audio/video. Stage 2 ("msa")
  `loss-task` is computed from text, labels and the shared G and M, and leaves without DP only; its
  `loss-gen-adv` is the client's private discriminators' verdict on G(t): never. Under DP no loss
  leaves at all (the local trajectory of a stage-2 round depends on D, which speaker-level DP does not
  cover on the client).
* The affect task's stage "affect": its loss is computed from the participant's own AU windows and traces
  (private on the device): never.
* `examples-text`, `examples-audio`, `examples-visual` (only in runs that simulate missing modalities,
  hydiscgan_fl.data.missing): how many of the client's training utterances hold each modality. Metadata like
  `num-examples` (that a camera or microphone was off), not computed from any feature value. Unlike
  `num-examples`, the server cannot know them from the texts it holds, and no DP mechanism covers them: they
  leave only without DP. (Under utterance-level DP, part-wise aggregation of G then weighs every part by
  `num-examples`, strategies.aggregation.part_claim; speaker-level DP refuses part-wise aggregation.)
* `train-s` (the client's training time) is not computed from private values, but it grows with the
  number of utterances actually sampled: under utterance-level DP that reveals the size of the secret
  Poisson batches, and under either DP unit it is a side channel no mechanism covers. It leaves only
  without DP (the server still sees when a reply arrives; this only avoids handing it a cleaner clock).
"""

from __future__ import annotations

import logging

WEIGHT_KEY = "num-examples"
TIMING_KEY = "train-s"
EPSILON_KEYS = frozenset({"epsilon-rdp", "epsilon-prv"})
#: modality -> the reply key of the number of the client's utterances that hold it (missing modalities)
PRESENCE_KEYS = {"text": "examples-text", "audio": "examples-audio", "visual": "examples-visual"}

#: (stage, dp-unit) -> the metric keys a reply may carry. A pair not listed is a configuration that
#: cannot run (the single-stage baselines have no utterance-level DP).
_SENTIMENT_REPLY_METRICS: dict[tuple[str, str], frozenset[str]] = {
    ("align", "none"): frozenset({WEIGHT_KEY, TIMING_KEY}),
    ("align", "speaker"): frozenset({WEIGHT_KEY}),
    ("align", "utterance"): frozenset({WEIGHT_KEY}) | EPSILON_KEYS,
    ("msa", "none"): frozenset({WEIGHT_KEY, TIMING_KEY, "loss-task"}),
    ("msa", "speaker"): frozenset({WEIGHT_KEY}),
    ("msa", "utterance"): frozenset({WEIGHT_KEY}) | EPSILON_KEYS,
    ("multimodal", "none"): frozenset({WEIGHT_KEY, TIMING_KEY}),
    ("multimodal", "speaker"): frozenset({WEIGHT_KEY}),
    ("distill", "none"): frozenset({WEIGHT_KEY, TIMING_KEY}),
    ("distill", "speaker"): frozenset({WEIGHT_KEY}),
    ("multitask", "none"): frozenset({WEIGHT_KEY, TIMING_KEY}),
    ("multitask", "speaker"): frozenset({WEIGHT_KEY}),
}
ALLOWED_REPLY_METRICS: dict[tuple[str, str], frozenset[str]] = {
    # without DP every sentiment stage also admits the modality counts (sent only with simulated missing
    # modalities); under DP no mechanism covers them
    **{(stage, unit): keys | frozenset(PRESENCE_KEYS.values()) if unit == "none" else keys
       for (stage, unit), keys in _SENTIMENT_REPLY_METRICS.items()},
    ("affect", "none"): frozenset({WEIGHT_KEY, TIMING_KEY}),
    ("affect", "speaker"): frozenset({WEIGHT_KEY}),
}

_log = logging.getLogger("hydiscgan_fl.client")


def allowed_reply_metrics(stage: str, dp_unit: str) -> frozenset[str]:
    """The allow-list of one (stage, dp-unit); an unknown pair is an error naming it."""
    try:
        return ALLOWED_REPLY_METRICS[(stage, dp_unit)]
    except KeyError:
        raise ValueError(f"no reply allow-list for stage {stage!r} with dp-unit {dp_unit!r}") from None


def releasable_metrics(metrics: dict[str, float], stage: str, dp_unit: str, who: str) -> dict[str, float]:
    """The metrics that may leave the client; the others go to this client's own log only."""
    allowed = allowed_reply_metrics(stage, dp_unit)
    kept = {key: value for key, value in metrics.items() if key in allowed}
    held = {key: value for key, value in metrics.items() if key not in allowed}
    if held:
        _log.info("%s, stage %s, dp-unit %s: kept on the client: %s", who, stage, dp_unit,
                  ", ".join(f"{key}={value:.6g}" for key, value in sorted(held.items())))
    return kept
