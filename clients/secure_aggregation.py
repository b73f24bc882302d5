"""The client's side of SecAgg+ (docs/secure-aggregation.md): three key stages answered by their own
ClientApp functions (Flower message type "query.<action>", `secagg.protocol`), and the masking of the
trained update inside the ordinary train reply.

One round, in order: SETUP (two fresh key pairs; reply the public keys and the claimed num-examples),
SHARE_KEYS (a fresh self-mask seed; Shamir shares of it and of the mask key sk1, each encrypted for one
neighbour), the train message (decrypt the neighbours' shares, train, reply the masked update), UNMASK
(for each neighbour the server names, the share of its self-mask seed if its vector arrived, else of
its sk1). The client's secrets of the round live in `context.state` between the stages; it answers each
stage once, in order, for the round set at SETUP, and never reveals both shares of one neighbour.
"""

from __future__ import annotations

import os

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from clients.local_data import client_dataset
from clients.simulated_faults import reported_examples
from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.privacy.clipping import clip_update
from secagg.protocol import (
    COLLECT,
    RECORD,
    SETUP,
    SHARE_KEYS,
    UNMASK,
    apply_masks,
    pairwise_mask,
    pairwise_sign,
    quantise,
    quantised_clip_norm,
    self_mask,
)

STATE_KEY = "secagg-state"  # the round's protocol state in context.state (never sent)


class ProtocolError(ValueError):
    """The server's protocol message does not fit this client's state; the client refuses to answer."""


# -- pure stage functions: (state, the server's record) -> the reply record --------------------------
def setup_reply(state: dict, config: ConfigRecord, node_id: int, num_examples: int) -> dict:
    sk1, pk1 = generate_key_pairs()
    sk2, pk2 = generate_key_pairs()
    state.clear()
    state.update({"stage": SETUP, "round": int(config["server-round"]), "nid": node_id,
                  "threshold": int(config["threshold"]),
                  "sk1": private_key_to_bytes(sk1), "pk1": public_key_to_bytes(pk1),
                  "sk2": private_key_to_bytes(sk2), "pk2": public_key_to_bytes(pk2)})
    return {"pk1": state["pk1"], "pk2": state["pk2"], "num-examples": int(num_examples)}


def share_keys_reply(state: dict, config: ConfigRecord) -> dict:
    _expect(state, config, SETUP)
    nids, pk1s, pk2s = list(config["nids"]), list(config["pk1s"]), list(config["pk2s"])
    me = state["nid"]
    if not len(nids) == len(pk1s) == len(pk2s) or len(set(nids)) != len(nids):
        raise ProtocolError(f"node {me}: the neighbours' keys are malformed")
    if len(nids) < state["threshold"]:
        raise ProtocolError(f"node {me}: {len(nids)} neighbour(s), fewer than the threshold {state['threshold']}")
    if len(set(pk1s) | set(pk2s)) != 2 * len(nids):
        raise ProtocolError(f"node {me}: some public keys are identical")
    if me not in nids or (pk1s[nids.index(me)], pk2s[nids.index(me)]) != (state["pk1"], state["pk2"]):
        raise ProtocolError(f"node {me}: the server did not list this node's own public keys")
    seed = os.urandom(32)
    seed_shares = create_shares(seed, state["threshold"], len(nids))
    sk1_shares = create_shares(state["sk1"], state["threshold"], len(nids))
    sk2 = bytes_to_private_key(state["sk2"])
    dsts, ctxts = [], []
    for nid, pk2, seed_share, sk1_share in zip(nids, pk2s, seed_shares, sk1_shares):
        if nid == me:
            state.update({"owners": [me], "seed-shares": [seed_share], "sk1-shares": [sk1_share]})
            continue
        key = generate_shared_key(sk2, bytes_to_public_key(pk2))
        dsts.append(nid)
        ctxts.append(encrypt(key, share_keys_plaintext_concat(me, nid, seed_share, sk1_share)))
    state.update({"stage": SHARE_KEYS, "seed": seed, "nids": nids, "pk1s": pk1s, "pk2s": pk2s})
    return {"dsts": dsts, "ctxts": ctxts}


def masked_update(state: dict, config: ConfigRecord, update: list[np.ndarray]) -> list[np.ndarray]:
    """The masked, quantised, weighted update (uint32 arrays in the order of `update`): keeps the shares
    the neighbours sent, then (clipped to the server's clip-norm under speaker-level DP) masks it with the
    self mask and one pairwise mask per neighbour that shared."""
    _expect(state, config, SHARE_KEYS)
    me, sk2 = state["nid"], bytes_to_private_key(state["sk2"])
    srcs, ctxts = list(config["srcs"]), list(config["ctxts"])
    if len(srcs) + 1 < state["threshold"]:
        raise ProtocolError(f"node {me}: shares from {len(srcs)} neighbour(s), fewer than the threshold allows")
    for src, ctxt in zip(srcs, ctxts, strict=True):
        if src not in state["nids"] or src == me or src in state["owners"]:
            raise ProtocolError(f"node {me}: unexpected share from node {src}")
        key = generate_shared_key(sk2, bytes_to_public_key(state["pk2s"][state["nids"].index(src)]))
        actual_src, dst, seed_share, sk1_share = share_keys_plaintext_separate(decrypt(key, ctxt))
        if (actual_src, dst) != (src, me):
            raise ProtocolError(f"node {me}: a share from node {src} claims to be {actual_src} -> {dst}")
        state["owners"].append(src)
        state["seed-shares"].append(seed_share)
        state["sk1-shares"].append(sk1_share)
    weight, max_weight = int(config["weight"]), int(config["max-weight"])
    if not 0 < weight <= max_weight:
        raise ProtocolError(f"node {me}: weight {weight} outside (0, max-weight {max_weight}]")
    clipping_range, quantization_range = float(config["clipping-range"]), int(config["quantization-range"])
    if float(config["clip-norm"]) > 0:  # speaker-level DP: clip here, the server never sees the update
        size = sum(int(np.prod(u.shape)) for u in update)
        update = clip_update([np.asarray(u, dtype=np.float64) for u in update],
                             quantised_clip_norm(float(config["clip-norm"]), size, clipping_range, quantization_range))
    quantised = quantise(update, weight / max_weight, clipping_range, quantization_range)
    shapes = [q.shape for q in quantised]
    masks = [(1, self_mask(state["seed"], shapes))]
    masks += [(pairwise_sign(me, src), pairwise_mask(state["sk1"], state["pk1s"][state["nids"].index(src)], shapes))
              for src in srcs]
    state["stage"] = COLLECT
    return [m.astype(np.uint32) for m in apply_masks(quantised, masks)]


def unmask_reply(state: dict, config: ConfigRecord) -> dict:
    _expect(state, config, COLLECT)
    me = state["nid"]
    active, dead = list(config["active"]), list(config["dead"])
    if set(active) & set(dead):
        raise ProtocolError(f"node {me}: the server asks for both secrets of nodes {sorted(set(active) & set(dead))}")
    if len(active) < state["threshold"]:
        raise ProtocolError(f"node {me}: {len(active)} active neighbour(s), fewer than the threshold "
                            f"{state['threshold']}: unmasking would expose them")
    unknown = sorted(set(active + dead) - set(state["owners"]))
    if unknown:
        raise ProtocolError(f"node {me}: holds no share of nodes {unknown}")
    owners = state["owners"]
    shares = ([state["seed-shares"][owners.index(nid)] for nid in active]
              + [state["sk1-shares"][owners.index(nid)] for nid in dead])
    state.clear()  # one answer per round; the round's secrets are no longer needed
    state.update({"stage": UNMASK})
    return {"nids": active + dead, "shares": shares}


def _expect(state: dict, config: ConfigRecord, previous: str) -> None:
    if state.get("stage") != previous or state.get("round") != int(config["server-round"]):
        raise ProtocolError(f"node {state.get('nid')}: stage out of order (last stage {state.get('stage')!r} of "
                            f"round {state.get('round')}, now round {int(config['server-round'])})")


# -- ClientApp functions ----------------------------------------------------------------------------
def load_state(context: Context) -> dict:
    return dict(context.state.config_records[STATE_KEY]) if STATE_KEY in context.state.config_records else {}


def save_state(context: Context, state: dict) -> None:
    context.state.config_records[STATE_KEY] = ConfigRecord(state)


def setup(msg: Message, context: Context) -> Message:
    cfg = HyDiscGANConfig.from_run_config(context.run_config)
    claimed = reported_examples(cfg, context, len(client_dataset(cfg, context.node_config)))
    state = load_state(context)
    reply = setup_reply(state, msg.content[RECORD], msg.metadata.dst_node_id, claimed)
    save_state(context, state)
    return Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=msg)


def share_keys(msg: Message, context: Context) -> Message:
    state = load_state(context)
    reply = share_keys_reply(state, msg.content[RECORD])
    save_state(context, state)
    return Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=msg)


def unmask(msg: Message, context: Context) -> Message:
    state = load_state(context)
    reply = unmask_reply(state, msg.content[RECORD])
    save_state(context, state)
    return Message(RecordDict({RECORD: ConfigRecord(reply)}), reply_to=msg)
