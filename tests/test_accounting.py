"""fedsim.privacy.accounting: opacus' RDP and PRV accountants behind a small API."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.privacy.accounting import Accountant, epsilon, noise_for_target

SETTINGS = settings(max_examples=10, deadline=None)


def test_rdp_golden_value():
    """z = 1, q = 0.1, T = 100, delta = 1e-3: RDP epsilon 5.6405 (opacus' RDPAccountant)."""
    assert round(epsilon("rdp", 1.0, 0.1, 100, 1e-3), 4) == 5.6405


def test_rdp_equals_opacus_rdp_accountant_over_heterogeneous_history():
    from opacus.accountants import RDPAccountant

    ours, ref = Accountant("rdp", 1.1, 0.05, 1e-5), RDPAccountant()
    for t in range(60):
        z, q = (1.1, 0.05) if t < 30 else (0.9, 0.02)
        ours.step(noise_multiplier=z, sample_rate=q)
        ref.step(noise_multiplier=z, sample_rate=q)
        if t % 10 == 9:
            assert ours.epsilon() == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)
    assert ours.steps == 60 and ours.history == [(1.1, 0.05, 30), (0.9, 0.02, 30)]
    assert ours.epsilon(1e-3) == pytest.approx(ref.get_epsilon(1e-3), rel=1e-12)


def test_rdp_every_round_of_a_thousand_round_run():
    """Called every round: epsilon grows, and the thousandth equals the one-shot value."""
    acc = Accountant("rdp", 1.0, 0.01, 1e-5)
    assert acc.epsilon() == 0.0
    eps = []
    for _ in range(1000):
        acc.step()
        eps.append(acc.epsilon())
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert eps[-1] == pytest.approx(epsilon("rdp", 1.0, 0.01, 1000, 1e-5), rel=1e-12)


def test_prv_equals_opacus_prv_accountant_and_is_tighter_than_rdp():
    from opacus.accountants import PRVAccountant

    ref = PRVAccountant()
    acc = Accountant("prv", 1.0, 0.1, 1e-3)
    for _ in range(100):
        ref.step(noise_multiplier=1.0, sample_rate=0.1)
    acc.step(n=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ref.get_epsilon(1e-3, eps_error=0.01)
    got = acc.epsilon()
    assert got == pytest.approx(want, rel=1e-9)
    assert got == pytest.approx(4.7949, abs=1e-3)
    assert got < epsilon("rdp", 1.0, 0.1, 100, 1e-3)
    assert acc.epsilon() == got  # cached until the next step


def test_zero_noise_is_infinite_epsilon_and_empty_history_is_zero():
    assert epsilon("rdp", 0.0, 0.5, 3, 1e-5) == math.inf
    assert epsilon("prv", 0.0, 0.5, 3, 1e-5) == math.inf
    assert Accountant("prv", 1.0, 0.1, 1e-5).epsilon() == 0.0


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
@SETTINGS
@given(z=st.floats(0.5, 5.0), q=st.floats(1e-3, 1.0), t=st.integers(1, 500))
def test_rdp_monotone(z, q, t):
    """More noise, fewer rounds or a smaller sample rate never cost more epsilon."""
    e = epsilon("rdp", z, q, t, 1e-5)
    assert 0 < e < math.inf
    assert epsilon("rdp", z * 1.5, q, t, 1e-5) <= e
    assert epsilon("rdp", z, q, t + 10, 1e-5) >= e
    assert epsilon("rdp", z, q / 2, t, 1e-5) <= e


def test_noise_for_target_inverts_epsilon():
    z = noise_for_target(5.6405, 0.1, 100, 1e-3)
    assert z == pytest.approx(1.0, abs=0.01)
    eps = epsilon("rdp", z, 0.1, 100, 1e-3)
    assert 5.6405 - 0.01 <= eps <= 5.6405
    zp = noise_for_target(2.0, 0.1, 10, 1e-3, kind="prv")
    assert epsilon("prv", zp, 0.1, 10, 1e-3) <= 2.0


def test_noise_for_target_unreachable_is_one_line():
    with pytest.raises(ScenarioError, match="privacy.target_epsilon") as err:
        noise_for_target(1e-9, 1.0, 1000, 1e-9)
    assert "\n" not in str(err.value) and "no noise multiplier" in str(err.value)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"delta": 0.0}, "privacy.delta"),
    ({"delta": 1.0}, "privacy.delta"),
    ({"delta": math.nan}, "privacy.delta"),
    ({"q": 0.0}, "privacy.sample_rate"),
    ({"q": 1.5}, "privacy.sample_rate"),
    ({"z": -1.0}, "privacy.noise_multiplier"),
    ({"z": math.inf}, "privacy.noise_multiplier"),
    ({"t": 0}, "privacy.rounds"),
    ({"t": 2.5}, "privacy.rounds"),
    ({"t": True}, "privacy.rounds"),
    ({"kind": "gdp"}, "privacy.accountant"),
])
def test_validation(kwargs, key):
    args = {"kind": "rdp", "z": 1.0, "q": 0.1, "t": 10, "delta": 1e-5} | kwargs
    with pytest.raises(ScenarioError, match=key):
        epsilon(args["kind"], args["z"], args["q"], args["t"], args["delta"])


def test_noise_for_target_validation():
    with pytest.raises(ScenarioError, match="privacy.target_epsilon"):
        noise_for_target(0.0, 0.1, 10, 1e-5)
    with pytest.raises(ScenarioError, match="privacy.delta"):
        noise_for_target(1.0, 0.1, 10, 2.0)
    with pytest.raises(ScenarioError, match="privacy.rounds"):
        noise_for_target(1.0, 0.1, 0, 1e-5)
    acc = Accountant("rdp", 1.0, 0.1, 1e-5)
    with pytest.raises(ScenarioError, match="privacy.rounds"):
        acc.step(n=0)
    with pytest.raises(ScenarioError, match="privacy.delta"):
        acc.epsilon(delta=0.0)
