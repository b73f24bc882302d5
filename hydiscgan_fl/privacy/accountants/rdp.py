"""Rényi-DP accountant: a thin wrapper around ``opacus.accountants.RDPAccountant``.

All the arithmetic (subsampled-Gaussian RDP and its conversion to
(epsilon, delta)-DP) is Opacus's; this class only adapts the interface
(``num_steps`` per call, ``__len__`` counting steps, shared step keywords).
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import _import_opacus_accountants, _OpacusBackedAccountant

__all__ = ["RDPAccountant"]


class RDPAccountant(_OpacusBackedAccountant):
    """(epsilon, delta)-DP via Rényi DP of the Poisson-subsampled Gaussian.

    Args:
        alphas: Rényi orders searched for the best conversion to
            (epsilon, delta); ``None`` uses Opacus's ``DEFAULT_ALPHAS``.
    """

    name = "rdp"
    is_dp_guarantee = True

    def __init__(self, alphas: Sequence[float] | None = None) -> None:
        super().__init__()
        self._opacus = _import_opacus_accountants()
        self.alphas = None if alphas is None else [float(a) for a in alphas]

    def _new_opacus_accountant(self):
        return self._opacus.RDPAccountant()

    def get_privacy_spent(
        self, delta: float, alphas: Sequence[float] | None = None
    ) -> tuple[float, float]:
        """Return ``(epsilon, best_alpha)``, exactly as Opacus computes them."""
        self._validate_delta(delta)
        if not self.history:
            return 0.0, 0.0
        orders = alphas if alphas is not None else self.alphas
        eps, best_alpha = self._opacus_accountant().get_privacy_spent(
            delta=delta, alphas=None if orders is None else list(orders)
        )
        return float(eps), float(best_alpha)

    def get_epsilon(self, delta: float, alphas: Sequence[float] | None = None) -> float:
        """Return the (epsilon, delta)-DP epsilon spent so far (0 before any step).

        This is a differential-privacy guarantee for the recorded
        Poisson-subsampled Gaussian steps, computed by Opacus.
        """
        return self.get_privacy_spent(delta, alphas)[0]
