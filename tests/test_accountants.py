"""Tests of hydiscgan_fl.privacy.accountants (rdp, prv, wdp and the registry)."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest


from hydiscgan_fl.privacy.accountants import (
    ACCOUNTANTS,
    NoiseMonotonicityWarning,
    PRVAccountant,
    PrivacyAccountant,
    RDPAccountant,
    WassersteinAccountant,
    check_noise_monotonicity,
    create_accountant,
    leave_one_out_gradient_distances,
)

DP_PAIRS = [(RDPAccountant, "RDPAccountant"), (PRVAccountant, "PRVAccountant")]


@pytest.fixture
def opacus_accountants():
    return pytest.importorskip("opacus.accountants")


def _opacus_epsilon(opacus_name, schedule, delta, **kwargs):
    """Reference: Opacus's own accountant, stepped one step at a time."""
    import opacus.accountants as opacus_accountants

    accountant = getattr(opacus_accountants, opacus_name)()
    for sigma, q, steps in schedule:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    return float(accountant.get_epsilon(delta, **kwargs))


# --------------------------------------------------------------------- rdp/prv
@pytest.mark.parametrize("cls,opacus_name", DP_PAIRS)
@pytest.mark.parametrize(
    "sigma,q,steps,delta", [(1.1, 0.01, 1000, 1e-5), (0.8, 0.05, 300, 1e-6)]
)
def test_dp_accountant_matches_opacus(
    cls, opacus_name, sigma, q, steps, delta, opacus_accountants
):
    ours = cls()
    ours.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    expected = _opacus_epsilon(opacus_name, [(sigma, q, steps)], delta)
    assert ours.get_epsilon(delta) == pytest.approx(expected, rel=1e-12)
    assert len(ours) == steps


@pytest.mark.parametrize("cls,opacus_name", DP_PAIRS)
def test_dp_accountant_history_composition_matches_opacus(
    cls, opacus_name, opacus_accountants
):
    schedule = [(1.1, 0.01, 400), (2.0, 0.02, 150), (1.1, 0.01, 250), (1.1, 0.01, 50)]
    ours = cls()
    for sigma, q, steps in schedule[:3]:
        ours.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    for _ in range(schedule[3][2]):  # single steps merge into the last entry
        ours.step(noise_multiplier=1.1, sample_rate=0.01)
    assert len(ours) == 850
    assert [tuple(r)[:3] for r in ours.history] == [
        (1.1, 0.01, 400),
        (2.0, 0.02, 150),
        (1.1, 0.01, 300),
    ]
    expected = _opacus_epsilon(opacus_name, schedule, 1e-5)
    assert ours.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)


def test_prv_error_parameters_are_forwarded(opacus_accountants):
    schedule = [(1.1, 0.01, 500)]
    ours = PRVAccountant(eps_error=0.05, delta_error=1e-9)
    ours.step(noise_multiplier=1.1, sample_rate=0.01, num_steps=500)
    expected = _opacus_epsilon(
        "PRVAccountant", schedule, 1e-5, eps_error=0.05, delta_error=1e-9
    )
    assert ours.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-12)
    default = _opacus_epsilon("PRVAccountant", schedule, 1e-5)
    assert PRVAccountant().eps_error == 0.01 and PRVAccountant().delta_error is None
    assert ours.get_epsilon(1e-5, eps_error=0.01, delta_error=1e-8) == pytest.approx(
        default, rel=1e-12
    )


def test_rdp_alphas_are_forwarded(opacus_accountants):
    alphas = [2, 4, 8, 16, 32]
    ours = RDPAccountant(alphas=alphas)
    ours.step(noise_multiplier=1.1, sample_rate=0.01, num_steps=100)
    reference = opacus_accountants.RDPAccountant()
    for _ in range(100):
        reference.step(noise_multiplier=1.1, sample_rate=0.01)
    assert ours.get_epsilon(1e-5) == pytest.approx(
        reference.get_epsilon(1e-5, alphas=alphas), rel=1e-12
    )


@pytest.mark.parametrize("name", ["rdp", "prv"])
def test_dp_accountant_edge_cases(name, opacus_accountants):
    accountant = create_accountant(name)
    assert accountant.get_epsilon(1e-5) == 0.0 and len(accountant) == 0
    # one call site for all accountants: wdp-only keywords are ignored ...
    accountant.step(
        noise_multiplier=1.0, sample_rate=0.1, clip_norm=1.0, gradient_distances=[0.1]
    )
    assert len(accountant) == 1
    # ... but a misspelt keyword is not
    with pytest.raises(TypeError, match="num_step"):
        accountant.step(noise_multiplier=1.0, sample_rate=0.1, num_step=5)
    for bad in (
        dict(noise_multiplier=0.0, sample_rate=0.1),
        dict(noise_multiplier=-1.0, sample_rate=0.1),
        dict(noise_multiplier=1.0, sample_rate=0.0),
        dict(noise_multiplier=1.0, sample_rate=1.5),
        dict(noise_multiplier=1.0, sample_rate=0.1, num_steps=0),
    ):
        with pytest.raises(ValueError):
            accountant.step(**bad)
    with pytest.raises(ValueError):
        accountant.get_epsilon(0.0)


# ------------------------------------------------------------------------- wdp
def _variance(q, sigma, clip):
    return (2 - 2 * q + 2 * q * q) * (sigma * clip) ** 2


def test_wdp_order2_matches_hand_computation():
    q, sigma, clip = 0.1, 0.5, 2.0
    d = np.array([0.3, 1.0, 2.5])
    v = _variance(q, sigma, clip)  # (2 - 0.2 + 0.02) * (0.5 * 2)^2 = 1.82
    assert v == pytest.approx(1.82)
    expected = math.sqrt(sum((q * di) ** 2 + v for di in d))  # E[X^2] = m^2 + v
    accountant = WassersteinAccountant(order=2.0)
    accountant.step(
        noise_multiplier=sigma, sample_rate=q, clip_norm=clip, gradient_distances=d
    )
    assert accountant.get_loss() == pytest.approx(expected, rel=1e-12)


def test_wdp_order4_matches_hand_computation():
    q, sigma, clip = 0.2, 0.3, 1.0
    d = np.array([0.5, 2.0])
    v = _variance(q, sigma, clip)
    total = 0.0
    for di in d:
        m = q * di
        total += m**4 + 6 * m**2 * v + 3 * v**2  # E[X^4]
    accountant = WassersteinAccountant(order=4.0)
    accountant.step(
        noise_multiplier=sigma, sample_rate=q, clip_norm=clip, gradient_distances=d
    )
    assert accountant.get_loss() == pytest.approx(total**0.25, rel=1e-12)


@pytest.mark.parametrize("order", [3.0, 16.0])
def test_wdp_moment_matches_numerical_integration(order):
    from scipy import integrate, stats

    q, sigma, clip, d = 0.05, 0.7, 1.0, 3.0
    v = _variance(q, sigma, clip)
    moment, _ = integrate.quad(
        lambda x: abs(x) ** order * stats.norm.pdf(x, loc=q * d, scale=math.sqrt(v)),
        -np.inf,
        np.inf,
    )
    accountant = WassersteinAccountant(order=order)
    accountant.step(
        noise_multiplier=sigma, sample_rate=q, clip_norm=clip, gradient_distances=[d]
    )
    assert accountant.get_loss() == pytest.approx(moment ** (1 / order), rel=1e-7)


def test_wdp_zero_noise_is_the_plain_distance_moment():
    accountant = WassersteinAccountant(order=2.0)
    accountant.step(
        noise_multiplier=0.0, sample_rate=0.5, clip_norm=1.0, gradient_distances=[3, 4]
    )
    assert accountant.get_loss() == pytest.approx(math.sqrt(1.5**2 + 2**2))


def test_wdp_linear_composition_and_epsilon():
    rng = np.random.default_rng(0)
    d1, d2 = rng.uniform(0, 1, 28), rng.uniform(0, 1, 28)
    kw = dict(sample_rate=0.01, clip_norm=1.0)

    def one(sigma, d):
        a = WassersteinAccountant()
        a.step(noise_multiplier=sigma, gradient_distances=d, **kw)
        return a.get_loss()

    w1, w2 = one(0.01, d1), one(0.02, d2)
    accountant = WassersteinAccountant(order=16.0, beta=32.0)
    accountant.step(noise_multiplier=0.01, gradient_distances=d1, **kw)
    accountant.step(noise_multiplier=0.02, gradient_distances=d2, num_steps=3, **kw)
    accountant.step(noise_multiplier=0.02, gradient_distances=d2, **kw)  # merges
    assert len(accountant) == 5 and len(accountant.history) == 2
    assert accountant.get_loss() == pytest.approx(w1 + 4 * w2, rel=1e-12)
    delta = 1e-5
    assert accountant.get_epsilon(delta) == pytest.approx(
        w1 + 4 * w2 + math.log(1 / delta) / 32.0, rel=1e-12
    )
    assert WassersteinAccountant().get_epsilon(delta) == 0.0


def test_wdp_rejects_bad_input():
    a = WassersteinAccountant()
    kw = dict(noise_multiplier=1.0, sample_rate=0.1, clip_norm=1.0)
    with pytest.raises(ValueError):
        a.step(gradient_distances=[], **kw)
    with pytest.raises(ValueError):
        a.step(gradient_distances=[-1.0], **kw)
    with pytest.raises(TypeError):
        a.step(noise_multiplier=1.0, sample_rate=0.1, gradient_distances=[1.0])
    with pytest.raises(TypeError):
        a.step(gradient_distances=[1.0], clipnorm=1.0, **kw)
    with pytest.raises(ValueError):
        WassersteinAccountant(order=0.5)
    with pytest.raises(ValueError):
        WassersteinAccountant(beta=0.0)
    assert len(a) == 0


def test_leave_one_out_distances_by_hand():
    g = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 6.0]])
    # sum = (3, 6); leave-one-out means over B - 1 = 2 rows:
    # loo0 = (1.5, 3), loo1 = (0, 3), loo2 = (1.5, 0)
    out = leave_one_out_gradient_distances(g, num_subbatches=3)
    np.testing.assert_allclose(out, [1.5, 3.0, math.sqrt(1.5**2 + 3**2)])
    # only the first k rows are left out, but the mean is over the whole batch
    np.testing.assert_allclose(leave_one_out_gradient_distances(g, 2), [1.5])
    # optional clipping of the leave-one-out means to norm 1:
    # loo0 -> (1, 2)/sqrt(5), loo1 -> (0, 1), loo2 -> (1, 0)
    c = leave_one_out_gradient_distances(g, 3, clip_norm=1.0)
    a = np.array([1.0, 2.0]) / math.sqrt(5)
    np.testing.assert_allclose(
        c,
        [
            np.linalg.norm(a - [0, 1]),
            np.linalg.norm(a - [1, 0]),
            math.sqrt(2),
        ],
    )
    # extra trailing dimensions are flattened; default k = 8 gives C(8, 2) pairs
    rng = np.random.default_rng(1)
    g3 = rng.normal(size=(10, 2, 3))
    out = leave_one_out_gradient_distances(g3)
    assert out.shape == (28,)
    flat = g3.reshape(10, -1)
    loo = [(flat.sum(0) - flat[j]) / 9 for j in range(8)]
    ref = [np.linalg.norm(loo[i] - loo[j]) for i, j in itertools.combinations(range(8), 2)]
    np.testing.assert_allclose(out, ref)
    with pytest.raises(ValueError):
        leave_one_out_gradient_distances(g, num_subbatches=4)
    with pytest.raises(ValueError):
        leave_one_out_gradient_distances(g[:1], num_subbatches=1)


# ---------------------------------------------------------- noise monotonicity
@pytest.mark.parametrize("cls", [RDPAccountant, PRVAccountant])
def test_noise_monotonicity_holds_for_dp_accountants(cls, opacus_accountants):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoiseMonotonicityWarning)
        # Opacus's own hint from its RDP-based PRV domain bound; irrelevant here
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
        assert check_noise_monotonicity(cls, sample_rate=0.1, num_steps=50, delta=1e-5)


def test_noise_monotonicity_fails_for_wdp():
    d = np.random.default_rng(0).uniform(0.0, 0.2, 28)
    with pytest.warns(NoiseMonotonicityWarning, match="wdp"):
        ok = check_noise_monotonicity(
            WassersteinAccountant,
            sample_rate=0.1,
            num_steps=100,
            delta=1e-5,
            clip_norm=1.0,
            gradient_distances=d,
        )
    assert ok is False


def test_noise_monotonicity_passes_constructor_kwargs():
    with pytest.warns(NoiseMonotonicityWarning):
        assert not check_noise_monotonicity(
            WassersteinAccountant,
            0.1,
            10,
            1e-5,
            accountant_kwargs={"order": 2.0},
            clip_norm=1.0,
            gradient_distances=[0.1],
        )


# -------------------------------------------------------------------- registry
def test_registry_and_flags():
    assert ACCOUNTANTS == {
        "rdp": RDPAccountant,
        "prv": PRVAccountant,
        "wdp": WassersteinAccountant,
    }
    for name, cls in ACCOUNTANTS.items():
        assert cls.name == name
        assert issubclass(cls, PrivacyAccountant)
    assert RDPAccountant.is_dp_guarantee and PRVAccountant.is_dp_guarantee
    assert not WassersteinAccountant.is_dp_guarantee
    wdp = create_accountant("wdp", order=4.0, beta=2.0)
    assert isinstance(wdp, WassersteinAccountant) and wdp.order == 4.0 and wdp.beta == 2.0
    assert create_accountant("prv", eps_error=0.1).eps_error == 0.1


def test_create_accountant_unknown_name():
    with pytest.raises(ValueError, match=r"'gdp'.*prv, rdp, wdp"):
        create_accountant("gdp")


def test_state_dict_round_trip(opacus_accountants):
    a = create_accountant("rdp")
    a.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=7)
    b = create_accountant("rdp")
    b.load_state_dict(a.state_dict())
    assert b.history == a.history and b.get_epsilon(1e-5) == a.get_epsilon(1e-5)
    with pytest.raises(ValueError):
        create_accountant("wdp").load_state_dict(a.state_dict())


def test_package_does_not_import_flwr():
    code = (
        "import sys, hydiscgan_fl.privacy.accountants as a; "
        "a.create_accountant('wdp'); assert 'flwr' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))
