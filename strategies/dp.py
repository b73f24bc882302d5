"""Speaker-level (user-level) differential privacy on the server: DP-FedAvg with fixed clipping.

The record is one client's whole contribution to a round. With the ``speaker`` partition all the
utterances of a speaker are on one client, so the guarantee covers every speaker (and a client holding
several speakers as a group of them).

The math is that of Flower's ``DifferentialPrivacyServerSideFixedClipping`` (McMahan et al. 2018,
arXiv 1710.06963): each client's update u_i = new_i - global, over all the components it was sent (G in
stage 1; G and M in stage 2) taken as ONE vector, is scaled to norm <= C (``dp-clip-norm``); the clipped
updates are averaged with equal weights; Gaussian noise of std sigma C / m (``dp-noise-multiplier``
sigma, m updates averaged) is added to every coordinate, i.e. N(0, (sigma C)^2) on their sum.
tests/test_privacy_dp.py checks the result against Flower's wrapper for fixed updates and noise seed.

Why not wrap HyDiscGANStrategy (or a per-component rule) in Flower's wrapper? It does not compose:

* the wrapper clips every reply against the whole ArrayRecord it was configured with (G and M), but a
  stage-1 reply carries G only, and Flower's ``compute_clip_model_update`` then fails on the mismatch;
* used instead as the per-component rule of `ComponentAggregator`, it would clip G and M separately,
  two mechanisms of norm C each (sensitivity sqrt(2) C for the noise of one);
* it skips aggregation when any reply is an error, while this strategy goes on with the valid replies,
  and it calibrates the noise to a sample size fixed at construction, not to the updates averaged;
* its inner FedAvg weights clients by their number of examples: the sensitivity of the mean is then
  C max_i w_i / sum_i w_i, not C / m, and the weights are themselves private. Here weights are equal.

Accounting: each round is one subsampled Gaussian mechanism with noise multiplier sigma, at sampling
rate = sampled / connected nodes (``fraction-train``). Flower samples a fixed number of nodes without
replacement, the accountants assume Poisson sampling, the usual approximation for DP-FedAvg; at
fraction-train = 1 there is no amplification and nothing to approximate. The clients' scalar training
metrics are released without noise and are outside the guarantee (as in Flower).
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from hydiscgan_fl.config import HyDiscGANConfig
from hydiscgan_fl.privacy.ledger import PrivacyLedger


def clip_update(update: list[np.ndarray], clip_norm: float) -> list[np.ndarray]:
    """Scale the arrays of one update, as one vector, to L2 norm <= clip_norm (FlatClip)."""
    norm = float(np.sqrt(sum(float(np.sum(np.square(a))) for a in update)))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [a * scale for a in update]


def noisy_mean(clipped: list[list[np.ndarray]], clip_norm: float, noise_multiplier: float,
               rng: np.random.Generator | np.random.RandomState) -> list[np.ndarray]:
    """Equal-weight mean of clipped updates plus N(0, (noise_multiplier * clip_norm / m)^2) per coordinate,
    drawn array by array in order (as Flower draws it)."""
    m = len(clipped)
    if m == 0:
        raise ValueError("no updates to average")
    std = noise_multiplier * clip_norm / m
    return [np.mean([update[i] for update in clipped], axis=0) + rng.normal(0.0, std, size=clipped[0][i].shape)
            for i in range(len(clipped[0]))]


class SpeakerLevelDP:
    """DP-FedAvg aggregation of the sent components, with its privacy ledger.

    `rng` draws the noise: by default seeded from the operating system, so it cannot be predicted
    from the run config (a fixed one is for tests only).
    """

    def __init__(self, clip_norm: float, noise_multiplier: float, delta: float,
                 rng: np.random.Generator | np.random.RandomState | None = None):
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.ledger = PrivacyLedger(delta)
        self.rng = rng if rng is not None else np.random.default_rng()

    def aggregate(self, current: ArrayRecord, replies: list[ArrayRecord], sample_rate: float) -> ArrayRecord:
        """The new global arrays for the keys of `current` (what was sent), from the clients' arrays."""
        keys = list(current.keys())
        base = [current[key].numpy() for key in keys]
        clipped = [clip_update([reply[key].numpy().astype(np.float64) - b for key, b in zip(keys, base)],
                               self.clip_norm) for reply in replies]
        mean = noisy_mean(clipped, self.clip_norm, self.noise_multiplier, self.rng)
        rows = np.stack([np.concatenate([a.ravel() for a in update]) for update in clipped])
        self.ledger.step(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate, clip_norm=self.clip_norm,
                         clipped_rows=rows)
        return ArrayRecord({key: Array((b + d).astype(b.dtype)) for key, b, d in zip(keys, base, mean)})

    def report(self) -> dict[str, float]:
        return self.ledger.report()


def speaker_level_dp(cfg: HyDiscGANConfig) -> SpeakerLevelDP | None:
    """The server's DP-FedAvg when the run asks for speaker-level DP, else None."""
    if cfg.dp_unit != "speaker":
        return None
    return SpeakerLevelDP(cfg.dp_clip_norm, cfg.dp_noise_multiplier, cfg.dp_delta)
