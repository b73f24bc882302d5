"""Wasserstein accountant of "Wasserstein Differential Privacy" (Yang, Qi, Zhou, AAAI 2024).

**This is an EMPIRICAL, data-dependent figure, NOT a differential-privacy
guarantee.** Read it as a diagnostic next to the ``rdp``/``prv`` epsilon, never
in place of it:

* It is computed from the distances between *observed* gradients (leave-one-out
  means of a few samples of the actual batch), not from the worst-case
  sensitivity over all neighbouring datasets.
* The per-step loss **grows with the noise multiplier**: it is the order-th
  root of absolute Gaussian moments whose variance is proportional to
  (noise_multiplier * clip_norm)^2. More noise gives a *larger* figure, the
  opposite of privacy semantics, so ``check_noise_monotonicity`` warns for it
  and ``is_dp_guarantee`` is False.
* The moments are summed over the gradient pairs, so the figure also depends on
  how many pairs are formed (``num_subbatches``), and ``beta`` in the
  conversion is a free parameter: any epsilon >= W is reachable by raising it.

The method, as described in the paper's accountant:

* per step, for each gradient distance d_i, M_i is the ``order``-th absolute
  moment of a Gaussian with mean q * d_i and variance
  v = (2 - 2q + 2q^2) * (noise_multiplier * clip_norm)^2::

      M_i = (2v)^(order/2) * Gamma((order+1)/2) / sqrt(pi)
            * 1F1(-order/2; 1/2; -q^2 d_i^2 / (2v))

* per-step loss w = (sum_i M_i)^(1/order);
* linear composition: W = sum over steps of w;
* conversion: epsilon = W + log(1/delta) / beta.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from .base import PrivacyAccountant, StepRecord

__all__ = [
    "WassersteinAccountant",
    "gaussian_absolute_moments",
    "leave_one_out_gradient_distances",
    "wasserstein_step_loss",
]


def gaussian_absolute_moments(
    means: np.ndarray, variance: float, order: float
) -> np.ndarray:
    """Return E|X|^order for X ~ N(mean, variance), for each mean.

    Uses the closed form (2v)^(order/2) Gamma((order+1)/2)/sqrt(pi)
    1F1(-order/2; 1/2; -mean^2/(2v)); for ``variance == 0`` it is |mean|^order.
    """
    from scipy import special

    means = np.asarray(means, dtype=np.float64)
    if variance < 0 or not math.isfinite(variance):
        raise ValueError(f"variance must be finite and >= 0, got {variance}")
    if variance == 0:
        return np.abs(means) ** order
    scale = (2.0 * variance) ** (order / 2.0) * special.gamma((order + 1.0) / 2.0)
    scale /= math.sqrt(math.pi)
    return scale * special.hyp1f1(-order / 2.0, 0.5, -(means**2) / (2.0 * variance))


def wasserstein_step_loss(
    *,
    noise_multiplier: float,
    sample_rate: float,
    clip_norm: float,
    gradient_distances: np.ndarray,
    order: float = 16.0,
) -> float:
    """Per-step Wasserstein loss w = (sum_i M_i)^(1/order) (see the module docstring).

    An empirical, data-dependent figure that grows with ``noise_multiplier``;
    not a DP guarantee.
    """
    distances = np.asarray(gradient_distances, dtype=np.float64).reshape(-1)
    if distances.size == 0:
        raise ValueError("gradient_distances is empty")
    if not np.all(np.isfinite(distances)) or np.any(distances < 0):
        raise ValueError("gradient_distances must be finite and >= 0")
    if not math.isfinite(clip_norm) or clip_norm <= 0:
        raise ValueError(f"clip_norm must be finite and > 0, got {clip_norm}")
    q = float(sample_rate)
    variance = (2.0 - 2.0 * q + 2.0 * q * q) * (noise_multiplier * clip_norm) ** 2
    moments = gaussian_absolute_moments(q * distances, variance, order)
    total = float(np.sum(moments))
    if not math.isfinite(total) or total < 0:
        raise FloatingPointError(
            f"Wasserstein moment sum is not finite/non-negative ({total}); "
            f"order={order}, variance={variance}, max distance={distances.max()}"
        )
    return total ** (1.0 / order)


def leave_one_out_gradient_distances(
    per_sample_grads: np.ndarray,
    num_subbatches: int = 8,
    *,
    clip_norm: float | None = None,
) -> np.ndarray:
    """Pairwise L2 distances between leave-one-out mean gradients.

    The recipe of the WDP training scripts: with B = ``len(per_sample_grads)``
    rows (one flattened, usually already clipped, gradient per sample), form for
    each j < k = ``num_subbatches`` the mean gradient of the batch with row j
    left out, ``(sum_b g_b - g_j) / (B - 1)``; optionally clip each of those k
    vectors to ``clip_norm``; and return the C(k, 2) distances between them, in
    ``itertools.combinations(range(k), 2)`` order, as a float64 array.

    Args:
        per_sample_grads: array-like of shape (B, ...) with B >= 2.
        num_subbatches: k, the number of leave-one-out gradients (2 <= k <= B).
        clip_norm: if given, clip each leave-one-out mean to this L2 norm.
    """
    grads = np.asarray(per_sample_grads, dtype=np.float64)
    if grads.ndim < 1:
        raise ValueError("per_sample_grads must have a leading batch dimension")
    grads = grads.reshape(grads.shape[0], -1)
    batch = grads.shape[0]
    k = int(num_subbatches)
    if batch < 2:
        raise ValueError(f"need at least 2 per-sample gradients, got {batch}")
    if not 2 <= k <= batch:
        raise ValueError(
            f"num_subbatches must be in [2, {batch}] (the batch size), got {num_subbatches}"
        )
    loo = (grads.sum(axis=0, keepdims=True) - grads[:k]) / (batch - 1)
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        norms = np.linalg.norm(loo, axis=1, keepdims=True)
        loo = loo * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
    pairs = list(itertools.combinations(range(k), 2))
    left = loo[[i for i, _ in pairs]]
    right = loo[[j for _, j in pairs]]
    return np.linalg.norm(left - right, axis=1)


class WassersteinAccountant(PrivacyAccountant):
    """Empirical Wasserstein privacy loss (WDP accountant). NOT a DP guarantee.

    Args:
        order: the Wasserstein order mu >= 1 (the paper's experiments use 16).
        beta: the free conversion parameter of ``get_epsilon`` (paper: 32).

    See the module docstring for the formulas and caveats: the figure is
    data-dependent and grows with the noise multiplier.
    """

    name = "wdp"
    is_dp_guarantee = False
    requires_gradient_distances = True

    def __init__(self, order: float = 16.0, beta: float = 32.0) -> None:
        super().__init__()
        if not math.isfinite(order) or order < 1:
            raise ValueError(f"order must be finite and >= 1, got {order}")
        if not math.isfinite(beta) or beta <= 0:
            raise ValueError(f"beta must be finite and > 0, got {beta}")
        self.order = float(order)
        self.beta = float(beta)

    def step(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        num_steps: int = 1,
        clip_norm: float,
        gradient_distances: np.ndarray,
        **kwargs: Any,
    ) -> None:
        """Record ``num_steps`` steps, each costing the loss of these distances.

        ``gradient_distances`` are the L2 distances between pairs of
        neighbouring (leave-one-out) clipped gradients computed by the caller,
        e.g. with ``leave_one_out_gradient_distances``; ``clip_norm`` is the
        clipping norm C, so the noise std is ``noise_multiplier * clip_norm``.
        """
        self._reject_unknown_kwargs(kwargs)
        self._validate_step(
            noise_multiplier, sample_rate, num_steps, allow_zero_noise=True
        )
        loss = wasserstein_step_loss(
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            clip_norm=clip_norm,
            gradient_distances=gradient_distances,
            order=self.order,
        )
        self._record(
            StepRecord(float(noise_multiplier), float(sample_rate), int(num_steps), loss)
        )

    def get_loss(self) -> float:
        """Total Wasserstein loss W: the sum of the per-step losses (linear composition)."""
        return float(sum(r.loss * r.num_steps for r in self.history))

    def get_epsilon(self, delta: float) -> float:
        """Return W + log(1/delta) / beta (0 before any step).

        **EMPIRICAL, data-dependent figure, NOT a differential-privacy
        guarantee**: it is computed from observed gradient distances, not the
        worst case, it grows with the noise multiplier, and ``beta`` is a free
        parameter. Report it only next to a DP epsilon (``rdp``/``prv``).
        """
        self._validate_delta(delta)
        if not self.history:
            return 0.0
        return self.get_loss() + math.log(1.0 / delta) / self.beta
