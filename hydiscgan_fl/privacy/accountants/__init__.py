"""Privacy accountants behind one interface, modelled on ``opacus.accountants``.

* ``rdp``: Rényi-DP accountant (Opacus's arithmetic) - a DP guarantee.
* ``prv``: PRV accountant (Opacus's arithmetic) - a DP guarantee.
* ``wdp``: Wasserstein accountant (Yang et al., AAAI 2024) - an EMPIRICAL,
  data-dependent figure, NOT a DP guarantee, that grows with the noise.

Use ``create_accountant(name, **kwargs)`` and check ``is_dp_guarantee`` before
calling a number a privacy guarantee. Opacus is imported only when an ``rdp``
or ``prv`` accountant is created.
"""

from __future__ import annotations

from typing import Any

from .base import (
    NoiseMonotonicityWarning,
    PrivacyAccountant,
    StepRecord,
    check_noise_monotonicity,
)
from .prv import PRVAccountant
from .rdp import RDPAccountant
from .wdp import WassersteinAccountant, leave_one_out_gradient_distances

ACCOUNTANTS: dict[str, type[PrivacyAccountant]] = {
    "rdp": RDPAccountant,
    "prv": PRVAccountant,
    "wdp": WassersteinAccountant,
}


def create_accountant(name: str, **kwargs: Any) -> PrivacyAccountant:
    """Return a new accountant registered under ``name``; ``kwargs`` go to its constructor."""
    try:
        cls = ACCOUNTANTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown accountant {name!r}; valid names: {', '.join(sorted(ACCOUNTANTS))}"
        ) from None
    return cls(**kwargs)


__all__ = [
    "ACCOUNTANTS",
    "NoiseMonotonicityWarning",
    "PRVAccountant",
    "PrivacyAccountant",
    "RDPAccountant",
    "StepRecord",
    "WassersteinAccountant",
    "check_noise_monotonicity",
    "create_accountant",
    "leave_one_out_gradient_distances",
]
