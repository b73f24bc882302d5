"""Checking a client's reply before anything aggregates it, and the order replies are aggregated in.

A usable reply holds exactly one ArrayRecord 'arrays' with the keys and shapes of what the client was
sent, all finite, and a MetricRecord 'metrics' with a positive num-examples and no key outside the
allow-list of its stage and DP unit (`hydiscgan_fl.privacy.reply_metrics`).
"""

from __future__ import annotations

import hashlib

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from hydiscgan_fl.privacy.reply_metrics import WEIGHT_KEY, allowed_reply_metrics
from secagg.protocol import MASKED


def reply_problem(content: RecordDict, sent: ArrayRecord, stage: str, dp_unit: str, secure: bool = False) -> str:
    """'' when the reply content is usable, else why it is rejected. Under secure aggregation (`secure`)
    the arrays are the masked update: an ArrayRecord MASKED of uint32 arrays keyed and shaped as sent."""
    name = MASKED if secure else "arrays"
    if name not in content.array_records or len(content.array_records) != 1:
        return f"reply must hold exactly one ArrayRecord named {name!r}"
    if len(content) != 2:
        return "reply must hold nothing but its arrays and 'metrics'"
    if "metrics" not in content.metric_records or WEIGHT_KEY not in content["metrics"]:
        return f"reply must hold a MetricRecord 'metrics' with '{WEIGHT_KEY}'"
    if content["metrics"][WEIGHT_KEY] <= 0:
        return f"'{WEIGHT_KEY}' must be positive"
    extra = sorted(set(content["metrics"]) - allowed_reply_metrics(stage, dp_unit))
    if extra:
        return f"metrics {extra[:5]} are not allowed in a {stage} reply with dp-unit {dp_unit!r}"
    if secure:
        return masked_problem(content[MASKED], sent)
    return arrays_problem(content["arrays"], sent, stage)


def masked_problem(got: ArrayRecord, sent: ArrayRecord) -> str:
    """'' when the masked update has exactly the keys and shapes of `sent`, as uint32 (values mod 2^32)."""
    if set(got) != set(sent):
        return f"masked arrays do not match what was sent ({sorted(set(got) ^ set(sent))[:3]})"
    for key in sent:
        if tuple(got[key].shape) != tuple(sent[key].shape) or np.dtype(got[key].dtype) != np.uint32:
            return f"masked array {key} must be uint32 of shape {tuple(sent[key].shape)}"
    return ""


def arrays_problem(got: ArrayRecord, sent: ArrayRecord, stage: str) -> str:
    """'' when `got` has exactly the keys and shapes of `sent` and only finite values."""
    if set(got) != set(sent):
        extra, missing = sorted(set(got) - set(sent)), sorted(set(sent) - set(got))
        return f"arrays do not match the {stage} stage (unexpected {extra[:3]}, missing {missing[:3]})"
    for key in sent:
        if tuple(got[key].shape) != tuple(sent[key].shape):
            return f"array {key} has shape {tuple(got[key].shape)}, expected {tuple(sent[key].shape)}"
        if not np.all(np.isfinite(got[key].numpy())):
            return f"array {key} holds NaN or Inf"
    return ""


def content_digest(reply: Message) -> bytes:
    """A digest of a reply's weight and arrays: sorting by it makes floating-point sums independent of
    the order in which replies arrived."""
    arrays = reply.content["arrays"]
    digest = hashlib.sha256(str(reply.content["metrics"][WEIGHT_KEY]).encode())
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(arrays[key].data)
    return digest.digest()
