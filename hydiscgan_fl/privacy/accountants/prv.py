"""PRV accountant: a thin wrapper around ``opacus.accountants.PRVAccountant``.

Opacus numerically composes privacy-loss random variables (Gopi et al. 2021)
and returns the upper end of its epsilon estimate. Opacus takes the two
accuracy knobs as arguments of ``get_epsilon`` (``eps_error`` defaults to
0.01, ``delta_error`` to ``delta / 1000``); here they are constructor
arguments with the same defaults, and can still be overridden per call.
"""

from __future__ import annotations

from .base import _import_opacus_accountants, _OpacusBackedAccountant

__all__ = ["PRVAccountant"]

#: Opacus's default for ``PRVAccountant.get_epsilon(eps_error=...)``.
DEFAULT_EPS_ERROR = 0.01


class PRVAccountant(_OpacusBackedAccountant):
    """(epsilon, delta)-DP via privacy-loss random variables (upper bound).

    Args:
        eps_error: allowed error in the epsilon estimate (Opacus default 0.01).
        delta_error: allowed error in delta; ``None`` means ``delta / 1000``
            at the time of the query (Opacus's default).
    """

    name = "prv"
    is_dp_guarantee = True

    def __init__(
        self, eps_error: float = DEFAULT_EPS_ERROR, delta_error: float | None = None
    ) -> None:
        super().__init__()
        if not eps_error > 0:
            raise ValueError(f"eps_error must be > 0, got {eps_error}")
        if delta_error is not None and not delta_error > 0:
            raise ValueError(f"delta_error must be > 0, got {delta_error}")
        self._opacus = _import_opacus_accountants()
        self.eps_error = float(eps_error)
        self.delta_error = None if delta_error is None else float(delta_error)

    def _new_opacus_accountant(self):
        return self._opacus.PRVAccountant()

    def get_epsilon(
        self,
        delta: float,
        *,
        eps_error: float | None = None,
        delta_error: float | None = None,
    ) -> float:
        """Return the (epsilon, delta)-DP epsilon spent so far (0 before any step).

        This is Opacus's upper bound, a differential-privacy guarantee for the
        recorded Poisson-subsampled Gaussian steps. ``eps_error`` and
        ``delta_error`` override the constructor's values for this call.
        """
        self._validate_delta(delta)
        if not self.history:
            return 0.0
        eps_error = self.eps_error if eps_error is None else float(eps_error)
        if delta_error is None:
            delta_error = self.delta_error
        return float(
            self._opacus_accountant().get_epsilon(
                delta, eps_error=eps_error, delta_error=delta_error
            )
        )
