"""The parts of SecAgg+ that both ends compute: record names, the neighbour graph, the masks and the
quantisation. Everything cryptographic is Flower's (`flwr.common.secure_aggregation`,
`flwr.supercore.primitives.asymmetric`): ECDH + HKDF key agreement, Fernet encryption, Shamir shares,
stochastic quantisation and the masks' seeded generator; this module only composes them.

A client's masked vector, per array of the components it was sent (Bell et al. 2020, sec. 3):

    y_i = q_i + PRG(b_i) + sum_{j neighbour, j < i} PRG(s_ij) - sum_{j neighbour, j > i} PRG(s_ij)   (mod 2^32)

with q_i the quantised scaled update, b_i the client's self-mask seed and s_ij the key agreed between
clients i and j (sk1 of one, pk1 of the other). The pairwise masks cancel in the sum; the server removes
the self masks of the clients whose vector arrived and the pairwise masks of those that dropped after
sharing keys, from secrets it reconstructs out of `threshold` Shamir shares held by their neighbours.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ConfigRecord
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

#: Masks and sums live in Z_{2^32}: a masked coordinate travels as a uint32, as many bytes as a float32.
MODULUS = 2**32
#: The ConfigRecord of protocol fields in every protocol message, both ways.
RECORD = "secagg"
#: The ArrayRecord holding a client's masked update in its train reply (instead of "arrays").
MASKED = "masked"
#: Flower message actions ("query.<action>") of the three stages around training.
SETUP, SHARE_KEYS, UNMASK = "secagg_setup", "secagg_share_keys", "secagg_unmask"
#: The train reply's stage name in the allow-list below.
COLLECT = "collect_masked_vectors"

#: What a client's reply record may hold at each stage: the exact keys (tests/test_privacy_contract.py).
#: setup: its two public keys and its claimed num-examples (public metadata, as in every reply);
#: share-keys: the neighbours its encrypted shares are for, and the ciphertexts; unmask: whose share
#: each returned share is. The collect stage's reply is the MASKED ArrayRecord with the metrics of the
#: ordinary reply's allow-list (hydiscgan_fl.privacy.reply_metrics) and no RECORD.
REPLY_KEYS = {
    SETUP: frozenset({"pk1", "pk2", "num-examples"}),
    SHARE_KEYS: frozenset({"dsts", "ctxts"}),
    UNMASK: frozenset({"nids", "shares"}),
}


def record_bytes(record: ConfigRecord) -> int:
    """A protocol record's size (Flower's `count_bytes` fails on an empty list, which holds no bytes)."""
    return ConfigRecord({key: value for key, value in record.items() if value != []}).count_bytes()


def share_count(num_nodes: int, shares: float) -> int:
    """How many clients share each client's secrets (itself included): `shares` of the round's clients,
    odd (a ring neighbourhood of i-h..i+h), at least 3, at most all of them."""
    count = round(shares * num_nodes)
    if count < num_nodes and count % 2 == 0:
        count += 1
    return min(num_nodes, max(3, count))


def threshold_count(num_shares: int, threshold: float) -> int:
    """Shares needed to reconstruct a secret: `threshold` of `num_shares`, at least 2."""
    return min(num_shares, max(2, round(threshold * num_shares)))


def neighbour_graph(node_ids: Sequence[int], num_shares: int) -> dict[int, frozenset[int]]:
    """Each node's neighbours, itself included: the `num_shares` nodes around it on a ring of the nodes
    in a random order (SecAgg+'s k-regular graph; all nodes when `num_shares` >= their number)."""
    order = list(node_ids)
    random.SystemRandom().shuffle(order)
    n, half = len(order), num_shares // 2
    if num_shares >= n:
        return {nid: frozenset(order) for nid in order}
    return {nid: frozenset(order[(idx + offset) % n] for offset in range(-half, half + 1))
            for idx, nid in enumerate(order)}


def self_mask(seed: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    return pseudo_rand_gen(seed, MODULUS, list(shapes))


def pairwise_mask(own_sk1: bytes, other_pk1: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The mask two clients agree on without talking: PRG(ECDH(sk1_i, pk1_j)), the same from either side."""
    shared = generate_shared_key(bytes_to_private_key(own_sk1), bytes_to_public_key(other_pk1))
    return pseudo_rand_gen(shared, MODULUS, list(shapes))


def pairwise_sign(owner: int, other: int) -> int:
    """Node `owner` adds its mask with `other` if owner > other, else subtracts it: they cancel in the sum."""
    return 1 if owner > other else -1


def apply_masks(vectors: list[np.ndarray], masks: Iterable[tuple[int, list[np.ndarray]]]) -> list[np.ndarray]:
    """`vectors` + sum of sign * mask (mod MODULUS), int64 throughout."""
    out = [v.astype(np.int64) for v in vectors]
    for sign, mask in masks:
        for total, m in zip(out, mask):
            total += sign * m
    return [np.bitwise_and(total, MODULUS - 1) for total in out]


def check_capacity(num_vectors: int, quantization_range: int) -> None:
    """The true sum of `num_vectors` quantised vectors (each coordinate in [0, Q]) must stay below the
    modulus, or it wraps and the aggregate is garbage."""
    if num_vectors * quantization_range >= MODULUS:
        raise ValueError(f"secagg-quantization-range {quantization_range} x {num_vectors} clients reaches 2^32: the "
                         f"sum would wrap around; use a quantization range below {MODULUS // num_vectors}")


def quantise(update: list[np.ndarray], scale: float, clipping_range: float,
             quantization_range: int) -> list[np.ndarray]:
    """`scale` x update, each coordinate clipped to [-clipping_range, clipping_range] and rounded
    stochastically (unbiased) onto the integers 0..quantization_range (Flower's `quantize`)."""
    scaled = [np.asarray(u, dtype=np.float64) * scale for u in update]
    return [np.asarray(q, dtype=np.int64) for q in quantize(scaled, clipping_range, quantization_range)]


def dequantised_sum(total: list[np.ndarray], num_vectors: int, clipping_range: float,
                    quantization_range: int) -> list[np.ndarray]:
    """The sum of `num_vectors` scaled updates from the sum of their quantisations (Flower's `dequantize`
    maps one vector back; the other num_vectors - 1 offsets of -clipping_range are removed here)."""
    values = dequantize([t.astype(np.int64) for t in total], clipping_range, quantization_range)
    return [np.asarray(v, dtype=np.float64) - (num_vectors - 1) * clipping_range for v in values]


def quantisation_error_bound(num_vectors: int, clipping_range: float, quantization_range: int) -> float:
    """Per coordinate, |dequantised sum - true sum of the scaled updates| < this, provided every scaled
    coordinate lies within +-clipping_range: stochastic rounding moves each vector's coordinate by less
    than one step 2 clipping_range / quantization_range."""
    return num_vectors * 2.0 * clipping_range / quantization_range


def quantised_clip_norm(clip_norm: float, num_coordinates: int, clipping_range: float,
                        quantization_range: int) -> float:
    """The L2 norm a client clips its update to under speaker-level DP, so that the update as the server
    sums it (quantised: each coordinate moved by < one step 2 clipping_range / quantization_range) still
    has norm <= clip_norm, the sensitivity the accountant assumes."""
    clipped = clip_norm - np.sqrt(num_coordinates) * 2.0 * clipping_range / quantization_range
    if clipped <= 0:
        raise ValueError(f"dp-clip-norm {clip_norm} is below the quantisation error of {num_coordinates} coordinates; "
                         "raise secagg-quantization-range")
    return float(clipped)
