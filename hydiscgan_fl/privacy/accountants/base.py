"""Common interface of the privacy accountants, modelled on Opacus's ``IAccountant``.

An accountant records the noisy optimisation steps a client takes
(``step``) and turns that record into a privacy figure (``get_epsilon``).
Two kinds live behind this one interface:

* DP accountants (``rdp``, ``prv``): ``is_dp_guarantee = True``. Their epsilon
  is an (epsilon, delta)-differential-privacy guarantee for the
  Poisson-subsampled Gaussian mechanism, and it shrinks as the noise grows.
* The Wasserstein accountant (``wdp``): ``is_dp_guarantee = False``. Its number
  is an empirical, data-dependent figure, not a DP guarantee, and it *grows* with
  the noise multiplier.

``check_noise_monotonicity`` is a cheap sanity check that separates the two: a
figure that grows with the noise cannot be a privacy guarantee.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "NoiseMonotonicityWarning",
    "PrivacyAccountant",
    "StepRecord",
    "check_noise_monotonicity",
]


class NoiseMonotonicityWarning(UserWarning):
    """The reported epsilon/loss grows with the noise multiplier.

    A differential-privacy accountant must never report a larger epsilon for
    more noise, so this warning means the figure is not a DP guarantee.
    """


class StepRecord(NamedTuple):
    """One entry of an accountant's history.

    Consecutive steps with identical settings are merged into one entry whose
    ``num_steps`` counts them, the same compaction Opacus uses.
    ``loss`` is the per-step loss for the Wasserstein accountant and ``None``
    for the DP accountants.
    """

    noise_multiplier: float
    sample_rate: float
    num_steps: int
    loss: float | None = None


class PrivacyAccountant(abc.ABC):
    """Abstract privacy accountant.

    Subclasses set the class attributes ``name`` (the registry key) and
    ``is_dp_guarantee``, and implement ``step`` and ``get_epsilon``.
    ``requires_gradient_distances`` tells a trainer whether ``step`` needs the
    ``clip_norm`` and ``gradient_distances`` keywords (only ``wdp`` does).
    """

    name: str = ""
    is_dp_guarantee: bool = True
    requires_gradient_distances: bool = False

    def __init__(self) -> None:
        self.history: list[StepRecord] = []

    @abc.abstractmethod
    def step(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        num_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        """Record ``num_steps`` steps taken with these settings."""

    @abc.abstractmethod
    def get_epsilon(self, delta: float) -> float:
        """Return the privacy figure spent so far at target ``delta``."""

    def __len__(self) -> int:
        """Number of steps recorded (not the number of history entries)."""
        return sum(record.num_steps for record in self.history)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={len(self)})"

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Return a picklable copy of the accountant's state."""
        return {"name": self.name, "history": [tuple(r) for r in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the history saved by ``state_dict`` of the same accountant."""
        if state.get("name") != self.name:
            raise ValueError(
                f"cannot load the state of accountant {state.get('name')!r} "
                f"into accountant {self.name!r}"
            )
        self.history = [StepRecord(*entry) for entry in state["history"]]

    # --------------------------------------------------------------- helpers
    @staticmethod
    def _validate_step(
        noise_multiplier: float,
        sample_rate: float,
        num_steps: int,
        *,
        allow_zero_noise: bool,
    ) -> None:
        if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
            raise ValueError(
                f"noise_multiplier must be finite and >= 0, got {noise_multiplier}"
            )
        if noise_multiplier == 0 and not allow_zero_noise:
            raise ValueError("noise_multiplier must be > 0 for a DP accountant")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps}")

    @staticmethod
    def _validate_delta(delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")

    def _reject_unknown_kwargs(
        self, kwargs: Mapping[str, Any], ignored: Iterable[str] = ()
    ) -> None:
        """Raise ``TypeError`` for step keywords this accountant does not know.

        Names in ``ignored`` are accepted and dropped, so that one call site
        can feed every accountant (for example ``clip_norm`` and
        ``gradient_distances``, which only ``wdp`` uses), while a misspelt
        keyword still fails loudly instead of being silently ignored.
        """
        unknown = sorted(set(kwargs) - set(ignored))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}.step() got unexpected keyword "
                f"argument(s): {', '.join(unknown)}"
            )

    def _record(self, record: StepRecord) -> None:
        """Append ``record``, merging it into the last entry when settings match."""
        if self.history:
            last = self.history[-1]
            if (
                last.noise_multiplier == record.noise_multiplier
                and last.sample_rate == record.sample_rate
                and last.loss == record.loss
            ):
                self.history[-1] = last._replace(
                    num_steps=last.num_steps + record.num_steps
                )
                return
        self.history.append(record)


class _OpacusBackedAccountant(PrivacyAccountant):
    """Shared code of the accountants that delegate the arithmetic to Opacus.

    The history is kept here as ``StepRecord`` entries compacted by Opacus's
    own rule (consecutive identical settings merge), and is handed to a fresh
    Opacus accountant, as its ``(noise_multiplier, sample_rate, num_steps)``
    history, whenever epsilon is asked for. Opacus is imported lazily, so the
    registry can be imported without it.
    """

    is_dp_guarantee = True
    #: Keywords of ``WassersteinAccountant.step`` that DP accountants accept
    #: and ignore, so a trainer can call every accountant the same way.
    _IGNORED_STEP_KWARGS = ("clip_norm", "gradient_distances")

    def step(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        num_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        """Record ``num_steps`` Poisson-subsampled Gaussian steps.

        ``clip_norm`` and ``gradient_distances`` are accepted and ignored; any
        other extra keyword raises ``TypeError``.
        """
        self._reject_unknown_kwargs(kwargs, self._IGNORED_STEP_KWARGS)
        self._validate_step(
            noise_multiplier, sample_rate, num_steps, allow_zero_noise=False
        )
        self._record(
            StepRecord(float(noise_multiplier), float(sample_rate), int(num_steps))
        )

    @abc.abstractmethod
    def _new_opacus_accountant(self) -> Any:
        """Return a fresh, empty Opacus accountant."""

    def _opacus_accountant(self) -> Any:
        accountant = self._new_opacus_accountant()
        accountant.history = [
            (r.noise_multiplier, r.sample_rate, r.num_steps) for r in self.history
        ]
        return accountant


def _import_opacus_accountants() -> Any:
    try:
        import opacus.accountants as opacus_accountants
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'rdp' and 'prv' accountants need Opacus (pip install opacus)"
        ) from exc
    return opacus_accountants


def check_noise_monotonicity(
    accountant_cls: Callable[..., PrivacyAccountant],
    sample_rate: float,
    num_steps: int,
    delta: float,
    noise_multipliers: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
    *,
    accountant_kwargs: Mapping[str, Any] | None = None,
    rtol: float = 1e-9,
    **kwargs: Any,
) -> bool:
    """Check that the reported epsilon does not grow with the noise multiplier.

    For each noise multiplier (taken in increasing order) a fresh accountant
    ``accountant_cls(**accountant_kwargs)`` takes ``num_steps`` steps at
    ``sample_rate``; ``kwargs`` are passed on to ``step`` (for ``wdp``:
    ``clip_norm`` and ``gradient_distances``). ``get_epsilon(delta)`` must then
    be non-increasing in the noise, up to the relative tolerance ``rtol``.

    Returns True when it is. Otherwise emits a ``NoiseMonotonicityWarning``
    listing the figures and returns False; a DP accountant must never fail this.
    """
    sigmas = sorted(float(s) for s in noise_multipliers)
    if len(sigmas) < 2:
        raise ValueError("need at least two noise multipliers to compare")
    epsilons = []
    for sigma in sigmas:
        accountant = accountant_cls(**dict(accountant_kwargs or {}))
        accountant.step(
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            num_steps=num_steps,
            **kwargs,
        )
        epsilon = float(accountant.get_epsilon(delta))
        if math.isnan(epsilon):
            raise ValueError(f"accountant returned NaN for noise_multiplier={sigma}")
        epsilons.append(epsilon)

    violations = [
        (sigmas[i], epsilons[i], sigmas[i + 1], epsilons[i + 1])
        for i in range(len(sigmas) - 1)
        if epsilons[i + 1] > epsilons[i] + rtol * abs(epsilons[i])
    ]
    if not violations:
        return True
    name = getattr(accountant_cls, "name", "") or getattr(
        accountant_cls, "__name__", repr(accountant_cls)
    )
    table = ", ".join(f"sigma={s:g}: {e:.6g}" for s, e in zip(sigmas, epsilons))
    warnings.warn(
        f"accountant {name!r} reports a figure that grows with the noise "
        f"multiplier ({table}; q={sample_rate}, steps={num_steps}, "
        f"delta={delta}). More noise must never cost more privacy, so this "
        "figure is not a differential-privacy guarantee.",
        NoiseMonotonicityWarning,
        stacklevel=2,
    )
    return False
