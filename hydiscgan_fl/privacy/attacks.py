"""Empirical privacy attacks (plain numpy + torch, CPU).

Two questions the project must answer with numbers rather than arguments:

1. **Speaker identification** (:func:`speaker_attack`): given per-utterance
   feature vectors that leave a client (raw audio/visual features, or anything
   a generator produces from the shareable text), how well can an attacker who
   has a few labelled utterances of each speaker re-identify the speaker of
   other utterances? Raw MOSI audio identifies the speaker (~90% over 62
   speakers, chance ~4%); text barely does (~6%).

2. **Membership inference against a generator**
   (:func:`generator_membership_attack`, built on
   :func:`generator_membership_scores` and :func:`membership_inference_auc`):
   does a trained generator G reproduce its own training utterances unusually
   well? The AUC of "member" vs "non-member" scores is 0.5 at chance and 1.0
   for a perfectly separating attacker.

3. **Attacks on one client's update** by a curious server
   (:func:`update_membership_aucs`, :func:`update_reconstruction_gain`,
   :func:`update_attacks`): the server sees each client's individual reply
   (its updated G) and knows every training text. Does the update reveal
   which texts the client holds (its speakers), and does it carry the
   client's private audio/visual features? See :func:`update_attacks` for the
   threat model and docs/privacy.md for how to read the figures.

Nothing here imports flwr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "speaker_attack",
    "membership_inference_auc",
    "generator_membership_scores",
    "generator_membership_attack",
    "update_membership_scores",
    "update_membership_aucs",
    "update_reconstruction_gain",
    "update_attacks",
]


def _stratified_split(
    speakers: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-speaker train/held-out split.

    Returns (train_idx, test_idx, kept_speakers). Speakers with fewer than 2
    utterances are dropped; every kept speaker has >= 1 utterance on each side.
    """
    uniq = np.unique(speakers)
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    kept = []
    for s in uniq:  # sorted order -> deterministic given the seed
        idx = np.flatnonzero(speakers == s)
        n = idx.shape[0]
        if n < 2:
            continue
        idx = rng.permutation(idx)
        n_test = int(round(test_fraction * n))
        n_test = min(max(n_test, 1), n - 1)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
        kept.append(s)
    if not kept:
        return np.empty(0, int), np.empty(0, int), np.asarray(kept)
    return (
        np.sort(np.concatenate(train_parts)),
        np.sort(np.concatenate(test_parts)),
        np.asarray(kept),
    )


def speaker_attack(
    features: np.ndarray,
    speakers: np.ndarray,
    seed: int = 0,
    test_fraction: float = 0.3,
    epochs: int = 200,
    hidden: int = 128,
) -> dict[str, Any]:
    """Speaker-identification attack: how much speaker identity do features carry?

    Threat model: the attacker sees per-utterance feature vectors and knows
    the speaker of some of them (e.g. public recordings of the same people).
    The utterances of **each** speaker are split into attack-train and
    held-out parts (stratified by speaker, seeded; speakers with fewer than 2
    utterances are dropped). Features are standardised with the attack-train
    mean/std, a small MLP (one hidden ReLU layer of ``hidden`` units, dropout
    0.2) is trained full-batch with Adam (lr 1e-2, weight decay 1e-3) for
    ``epochs`` steps on CPU, and the accuracy on the held-out utterances of the
    same speakers is reported.

    Deterministic for a given seed: the split uses ``numpy.random.default_rng``
    and the network runs inside ``torch.random.fork_rng`` seeded with ``seed``,
    so the caller's global torch RNG state is left untouched. The number of
    torch threads is not changed.

    Returns
    -------
    dict with
        ``speaker_attack_acc``    held-out accuracy (float in [0, 1]);
        ``speaker_attack_chance`` majority-class rate on the held-out set;
        ``num_speakers``          speakers kept (>= 2 utterances);
        ``num_train``, ``num_test`` utterances on each side.
    """
    x = np.asarray(features, dtype=np.float64)
    spk = np.asarray(speakers)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {x.shape}")
    if spk.ndim != 1 or spk.shape[0] != x.shape[0]:
        raise ValueError(
            f"speakers must be 1-D with one entry per row: features {x.shape}, speakers {spk.shape}"
        )
    if x.shape[0] == 0:
        raise ValueError("features is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError("features contain NaN or Inf")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if epochs < 1 or hidden < 1:
        raise ValueError("epochs and hidden must be positive")

    rng = np.random.default_rng(seed)
    train_idx, test_idx, kept = _stratified_split(spk, test_fraction, rng)
    if kept.shape[0] < 2:
        raise ValueError("need at least 2 speakers with >= 2 utterances each")

    # encode kept speakers as 0..K-1 (``kept`` is sorted, as np.unique returns it)
    ytr = np.searchsorted(kept, spk[train_idx]).astype(np.int64)
    yte = np.searchsorted(kept, spk[test_idx]).astype(np.int64)
    xtr, xte = x[train_idx], x[test_idx]
    mu = xtr.mean(axis=0)
    sd = xtr.std(axis=0)
    sd[sd < 1e-12] = 1.0
    xtr = (xtr - mu) / sd
    xte = (xte - mu) / sd

    num_classes = int(kept.shape[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Linear(x.shape[1], hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, num_classes),
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        loss_fn = nn.CrossEntropyLoss()
        xt = torch.as_tensor(xtr, dtype=torch.float32)
        yt = torch.as_tensor(ytr, dtype=torch.long)
        model.train()
        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt), yt)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(torch.as_tensor(xte, dtype=torch.float32)).argmax(dim=1).numpy()

    acc = float(np.mean(pred == yte))
    chance = float(np.bincount(yte, minlength=num_classes).max() / yte.shape[0])
    return {
        "speaker_attack_acc": acc,
        "speaker_attack_chance": chance,
        "num_speakers": num_classes,
        "num_train": int(train_idx.shape[0]),
        "num_test": int(test_idx.shape[0]),
    }


def membership_inference_auc(member_scores: Any, nonmember_scores: Any) -> float:
    """AUC of a membership-inference attacker (higher score = "member").

    ``AUC = P(s_member > s_nonmember) + 0.5 * P(s_member == s_nonmember)`` over
    all member/non-member pairs (the Mann-Whitney U statistic divided by
    ``n_member * n_nonmember``), computed with average ranks in
    O(n log n). 0.5 = chance, 1.0 = members always score higher, 0.0 = always
    lower (the attacker would flip the sign).
    """
    m = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    n = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    if m.size == 0 or n.size == 0:
        raise ValueError("member and non-member scores must both be non-empty")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(n))):
        raise ValueError("scores contain NaN or Inf")
    allv = np.concatenate([m, n])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1  # 1-based rank of each group's first element
    avg_rank = first_rank + (counts - 1) / 2.0
    ranks = avg_rank[inv]
    r_m = float(ranks[: m.size].sum())
    u = r_m - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * n.size))


def generator_membership_scores(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-utterance membership score for a generator: ``-||G(x_i) - a_i||_2``.

    Threat model: the attacker holds a victim's real recording features
    ``a_i`` (audio or visual) and the generator's output ``G(x_i)`` for the
    same utterance (G is shared or its outputs are observable, e.g. at the
    server). If G was trained on that utterance it may reproduce it unusually
    well, so a small reconstruction distance, i.e. a high score, suggests
    "member". Feed the scores of training (member) and held-out (non-member)
    utterances to :func:`membership_inference_auc`; an AUC near 0.5 (chance)
    means G does not reveal who was in its training set by this test.

    ``generated`` and ``real`` must have the same shape ``(N, ...)``; each row
    (flattened if it has more than one dimension) is one utterance. Returns an
    ``(N,)`` float64 array.
    """
    g = np.asarray(generated, dtype=np.float64)
    r = np.asarray(real, dtype=np.float64)
    if g.shape != r.shape:
        raise ValueError(f"generated and real differ in shape: {g.shape} vs {r.shape}")
    if g.ndim < 2:
        raise ValueError(f"expected (N, d) arrays, got shape {g.shape}")
    if g.shape[0] == 0:
        raise ValueError("generated/real are empty")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(r))):
        raise ValueError("generated/real contain NaN or Inf")
    diff = (g - r).reshape(g.shape[0], -1)
    return -np.sqrt(np.sum(diff * diff, axis=1))


def generator_membership_attack(
    generate: Callable[[np.ndarray], np.ndarray],
    member_text: np.ndarray,
    member_real: np.ndarray,
    nonmember_text: np.ndarray,
    nonmember_real: np.ndarray,
) -> dict[str, Any]:
    """Membership-inference attack on a released generator.

    Threat model: the attacker holds the released generator ``generate``
    (text features -> generated features, e.g. ``[G(t, 0)_audio; G(t, 0)_visual]``)
    and, as side information, the text and the *real* features (same layout as
    the generated ones) of candidate utterances: the training utterances
    (members) and held-out ones (non-members). Each candidate is scored with
    :func:`generator_membership_scores` (closer reproduction = more likely a
    member) and the attack is summarised by :func:`membership_inference_auc`.

    Returns
    -------
    dict with
        ``mia_auc``        AUC of members vs non-members (0.5 = chance);
        ``mia_chance``     0.5, the AUC of an attacker who guesses;
        ``num_members``, ``num_nonmembers``.
    """
    members = generator_membership_scores(np.asarray(generate(member_text)), member_real)
    nonmembers = generator_membership_scores(np.asarray(generate(nonmember_text)), nonmember_real)
    return {
        "mia_auc": membership_inference_auc(members, nonmembers),
        "mia_chance": 0.5,
        "num_members": int(members.shape[0]),
        "num_nonmembers": int(nonmembers.shape[0]),
    }


def _outputs(name: str, value: Any, rows: int | None = None) -> np.ndarray:
    """A finite (N, d) float64 array of per-utterance model outputs (rows flattened)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (N, d) array, got shape {array.shape}")
    if rows is not None and array.shape[0] != rows:
        raise ValueError(f"{name} has {array.shape[0]} rows, expected {rows} (one per training utterance)")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or Inf")
    return array.reshape(array.shape[0], -1)


def _member_mask(name: str, value: Any, rows: int) -> np.ndarray:
    mask = np.asarray(value)
    if mask.dtype != bool or mask.shape != (rows,):
        raise ValueError(f"{name} must be a boolean array of shape ({rows},), got {mask.dtype} {mask.shape}")
    if mask.all() or not mask.any():
        raise ValueError(f"{name} must mark some but not all utterances as the client's")
    return mask


def update_membership_scores(global_out: np.ndarray, client_outs: list[np.ndarray]) -> list[np.ndarray]:
    """Per-utterance membership scores of each client's update, calibrated across clients.

    ``global_out`` is ``G(t_i, 0)`` of the model the server sent, ``client_outs[k]`` is
    ``G_k(t_i, 0)`` of client k's reply, on the same N training texts (rows). The change of client k
    on utterance i is ``c_ki = ||G_k(t_i, 0) - G(t_i, 0)||_2``; its score is

        s_ki = c_ki / mean_j c_ji        (mean over all K clients of the round; 0 when that mean is 0)

    i.e. how much more client k's update moves the output on t_i than an update of the same round
    does on average. The calibration removes what every update does to a text (some texts sit where
    G is steep and move under any update) and leaves what is specific to client k, which trained on
    its own utterances (the difficulty calibration of Watson et al., ICLR 2022, with the other
    clients' updates as reference models: a server has them for free). With a single client the
    score is 1 everywhere (no reference: nothing to learn, AUC 0.5).
    """
    base = _outputs("global_out", global_out)
    if not client_outs:
        raise ValueError("client_outs is empty: no update to attack")
    changes = np.stack([np.linalg.norm(_outputs(f"client_outs[{k}]", out, base.shape[0]) - base, axis=1)
                        for k, out in enumerate(client_outs)])
    reference = changes.mean(axis=0)
    safe = np.where(reference > 0, reference, 1.0)
    return list(np.where(reference > 0, changes / safe, 0.0))


def update_membership_aucs(global_out: np.ndarray, client_outs: list[np.ndarray],
                           member_masks: list[np.ndarray]) -> np.ndarray:
    """AUC, for each client k, of finding its own utterances among ALL training utterances by the scores
    of :func:`update_membership_scores` (``member_masks[k][i]``: utterance i is client k's; ground truth
    for the evaluation only, the attacker does not use it). 0.5 = the update reveals nothing by this test,
    1.0 = every own utterance scores above every other one."""
    scores = update_membership_scores(global_out, client_outs)
    if len(member_masks) != len(scores):
        raise ValueError(f"{len(member_masks)} member masks for {len(scores)} client updates")
    aucs = []
    for k, (score, mask) in enumerate(zip(scores, member_masks)):
        mask = _member_mask(f"member_masks[{k}]", mask, score.shape[0])
        aucs.append(membership_inference_auc(score[mask], score[~mask]))
    return np.asarray(aucs)


def update_reconstruction_gain(global_out: np.ndarray, client_out: np.ndarray, real: np.ndarray,
                               member_mask: np.ndarray) -> float:
    """How much closer client k's update brings G's output to the client's own real features than to
    everyone else's.

    With ``e_i = mean_j (G(t_i, 0)_j - x_ij)^2`` and ``e^k_i`` the same for ``G_k`` (x_i: the real
    audio‖visual of utterance i, standardised per speaker, so an error of 1.0 is the variance of a
    feature around its speaker's mean), the improvement on utterance i is ``d_i = e_i - e^k_i`` and

        gain_k = mean_{i own} d_i - mean_{i not own} d_i.

    0 when ``G_k == G`` or when the update improves every speaker alike (it learnt the task, not the
    client); > 0 when it moved G toward this client's own recordings: what a server that holds G_k can
    then synthesise for the client's texts is closer to their voices and faces than before.
    """
    base = _outputs("global_out", global_out)
    own = _outputs("client_out", client_out, base.shape[0])
    target = _outputs("real", real, base.shape[0])
    if target.shape != base.shape or own.shape != base.shape:
        raise ValueError(f"outputs {base.shape}, {own.shape} and real features {target.shape} differ in shape")
    mask = _member_mask("member_mask", member_mask, base.shape[0])
    improvement = np.mean((base - target) ** 2, axis=1) - np.mean((own - target) ** 2, axis=1)
    return float(improvement[mask].mean() - improvement[~mask].mean())


def update_attacks(global_out: np.ndarray, client_outs: list[np.ndarray], real: np.ndarray,
                   member_masks: list[np.ndarray]) -> dict[str, float]:
    """Both attacks of a curious server on one round's individual updates of G.

    Threat model: the server sees every client's individual reply (its updated G_k; it sent G) and
    knows the text of every training utterance (text is the shareable modality), but not which
    utterances a client holds nor their audio/visual. Speakers are videos, so finding a client's
    utterances links a node to its speakers.

    ``global_out``: ``G(t_i, 0)`` on all N training texts; ``client_outs[k]``: ``G_k(t_i, 0)``;
    ``real``: the real audio‖visual of the N utterances (per-speaker standardised; evaluation only);
    ``member_masks[k]``: which utterances client k holds (evaluation only).

    Returns ``update_membership_auc_mean`` / ``_max`` (:func:`update_membership_aucs` over clients)
    and ``update_reconstruction_gain`` (:func:`update_reconstruction_gain`, mean over clients).
    """
    aucs = update_membership_aucs(global_out, client_outs, member_masks)
    gains = [update_reconstruction_gain(global_out, out, real, mask) for out, mask in zip(client_outs, member_masks)]
    return {"update_membership_auc_mean": float(aucs.mean()), "update_membership_auc_max": float(aucs.max()),
            "update_reconstruction_gain": float(np.mean(gains))}
