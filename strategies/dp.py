"""Speaker-level (user-level) differential privacy on the server: DP-FedAvg with fixed clipping.

The record is one client's whole contribution to a round. With the ``speaker`` partition all the
utterances of a speaker are on one client, so the guarantee covers every speaker (and a client holding
several speakers as a group of them).

The math is that of Flower's ``DifferentialPrivacyServerSideFixedClipping`` (McMahan et al. 2018,
arXiv 1710.06963): each client's update u_i = new_i - global, over all the components it was sent (G in
stage 1; G and M in stage 2) taken as ONE vector, is scaled to norm <= C (``dp-clip-norm``); the clipped
updates are summed with equal weights, N(0, (sigma C)^2) (``dp-noise-multiplier`` sigma) is added to
every coordinate of the sum, and the noisy sum is divided by a FIXED denominator, the number of clients
sampled this round (McMahan et al.'s fixed-denominator estimator, qN), not by the number of valid
replies: that count depends on the data (who fails, who is rejected) and would change the sensitivity
from one round to the next. Adjacency: add or remove one client's whole data; the noisy sum has
sensitivity C, and dividing by a number fixed before any reply is post-processing. A round with
dropouts thus moves the model by less (the missing updates count as zero).
tests/test_privacy_dp.py checks the result against Flower's wrapper (whose denominator is also the
sample size fixed in advance) for fixed updates and noise seed, and by hand with a dropout.

Why not wrap HyDiscGANStrategy (or a per-component rule) in Flower's wrapper? It does not compose:

* the wrapper clips every reply against the whole ArrayRecord it was configured with (G and M), but a
  stage-1 reply carries G only, and Flower's ``compute_clip_model_update`` then fails on the mismatch;
* used instead as the per-component rule of `ComponentAggregator`, it would clip G and M separately,
  two mechanisms of norm C each (sensitivity sqrt(2) C for the noise of one);
* it skips aggregation when any reply is an error, while this strategy goes on with the valid replies,
  and it fixes the sample size at construction, while fraction-train fixes it per round here;
* its inner FedAvg weights clients by their number of examples: the sensitivity of the mean is then
  C max_i w_i / sum_i w_i, not C / m, and the weights are themselves private. Here weights are equal.

Accounting: each round is one subsampled Gaussian mechanism with noise multiplier sigma, at sampling
rate = sampled / connected nodes (``fraction-train``). Flower samples a fixed number of nodes without
replacement, the accountants assume Poisson sampling, the usual approximation for DP-FedAvg; at
fraction-train = 1 there is no amplification and nothing to approximate. The sample must be secret:
the strategy samples with `privacy.secret_rng` under this unit, and the noise is drawn from a secret
generator. Under DP the clients send no training metrics besides num-examples (their allow-list,
`privacy.reply_metrics`); num-examples is not used in the weights here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.privacy.clipping import clip_update
from hydiscgan_fl.privacy.ledger import WDP_NEIGHBOURS, PrivacyLedger
from hydiscgan_fl.privacy.secret_rng import secret_numpy_rng


def noisy_average(clipped_sum: list[np.ndarray], num_summed: int, clip_norm: float, noise_multiplier: float,
                  denominator: int, rng: np.random.Generator | np.random.RandomState) -> list[np.ndarray]:
    """(`clipped_sum`, the sum of `num_summed` clipped updates, + N(0, (noise_multiplier * clip_norm)^2) per
    coordinate) / denominator, the noise drawn array by array in order, as std noise_multiplier * clip_norm /
    denominator on the average (as Flower draws it)."""
    if num_summed == 0:
        raise ValueError("no updates to average")
    if denominator < num_summed:
        raise ValueError(f"the fixed denominator {denominator} is smaller than the {num_summed} updates summed")
    std = noise_multiplier * clip_norm / denominator
    return [total / denominator + rng.normal(0.0, std, size=total.shape) for total in clipped_sum]


class SpeakerLevelDP:
    """DP-FedAvg aggregation of the sent components, with its privacy ledger.

    `rng` draws the noise: by default a secret one (`privacy.secret_rng`), so it cannot be predicted
    from the run config (a fixed one is for tests only).
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, delta: float,
                 rng: np.random.Generator | np.random.RandomState | None = None):
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.ledger = PrivacyLedger(delta)
        self.rng = rng if rng is not None else secret_numpy_rng()

    def aggregate(self, current: ArrayRecord, replies: Iterable[ArrayRecord], sample_rate: float,
                  num_sampled: int) -> ArrayRecord:
        """The new global arrays for the keys of `current` (what was sent), from the valid replies of the
        `num_sampled` clients sampled this round (the fixed denominator).

        Streaming: one reply's update at a time is clipped and added to a running float64 sum (the updates
        themselves in the arrays' dtype, float32), so memory does not grow with the number of clients. The
        Wasserstein accountant's leave-one-out distances between sums are the distances between the left-out
        rows themselves, so it keeps only the first WDP_NEIGHBOURS clipped rows (in the canonical order)."""
        keys = list(current.keys())
        base = [current[key].numpy() for key in keys]
        clipped_sum = [np.zeros(b.shape, dtype=np.float64) for b in base]
        kept_rows, count = [], 0
        for reply in replies:
            clipped = clip_update([reply[key].numpy() - b for key, b in zip(keys, base)], self.clip_norm)
            for total, update in zip(clipped_sum, clipped):
                total += update
            if len(kept_rows) < WDP_NEIGHBOURS:
                kept_rows.append(np.concatenate([a.ravel() for a in clipped]).astype(np.float64))
            count += 1
        mean = noisy_average(clipped_sum, count, self.clip_norm, self.noise_multiplier, num_sampled, self.rng)
        self.ledger.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate, clip_norm=self.clip_norm,
                         clipped_rows=np.stack(kept_rows))
        return ArrayRecord({key: Array((b + d).astype(b.dtype)) for key, b, d in zip(keys, base, mean)})

    def aggregate_sum(self, base: ArrayRecord, clipped_sum: list[np.ndarray], num_summed: int, sample_rate: float,
                      num_sampled: int) -> ArrayRecord:
        """The same release from the sum of the clipped updates alone (secure aggregation: the clients clip,
        the server sees only the sum, arrays in the sorted key order of `base`). The mechanism and its RDP/PRV
        accounting are unchanged; the Wasserstein figure, which needs individual clipped rows, is not
        computed (the ledger reports it as NaN)."""
        keys = sorted(base)
        mean = noisy_average(clipped_sum, num_summed, self.clip_norm, self.noise_multiplier, num_sampled, self.rng)
        self.ledger.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate, clip_norm=self.clip_norm,
                         clipped_rows=None)
        return ArrayRecord({key: Array((base[key].numpy() + d).astype(base[key].numpy().dtype))
                            for key, d in zip(keys, mean)})

    def report(self) -> dict[str, float]:
        return self.ledger.report()


def speaker_level_dp(cfg: HyDiscGANConfig) -> SpeakerLevelDP | None:
    """The server's DP-FedAvg when the run asks for speaker-level DP, else None."""
    if cfg.dp_unit != "speaker":
        return None
    return SpeakerLevelDP(cfg.dp_clip_norm, cfg.dp_noise_multiplier, cfg.dp_delta)
