"""Robust aggregators: permutation invariance, golden numbers, Krum, centered clipping."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_ctx
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.stages.aggregate import weighted_mean
from fedsim.stages.base import Aggregator
from fedsim.stages.bgmd import bgmd
from fedsim.stages.geomed import geometric_median
from fedsim.stages.robust import (
    centered_clipping,
    coordinate_median,
    krum,
    krum_scores,
    trimmed_mean,
)

SETTINGS = settings(max_examples=30, deadline=None)

# Every aggregator: one line each (the conformance list).
AGGREGATORS: dict[str, Aggregator] = {
    "weighted_mean": weighted_mean(),
    "coordinate_median": coordinate_median(),
    "trimmed_mean": trimmed_mean(0.2),
    "krum": krum(1),
    "multi_krum": krum(1, m=3),
    "centered_clipping": centered_clipping(1.0, iterations=2),
    "geometric_median": geometric_median(),
    "bgmd_topk": bgmd(0.5),
    "bgmd_norm_sampling": bgmd(0.5, selection="norm_sampling"),
    "bgmd_no_memory": bgmd(0.5, memory=False),
}


def run(agg: Aggregator, updates: torch.Tensor, state=None, weights=None):
    weights = torch.ones(updates.shape[0], dtype=updates.dtype) if weights is None else weights
    state = agg.init(updates.shape[0], updates.shape[1]) if state is None else state
    return agg.aggregate(updates, state, make_ctx(weights))


def _assert_state_close(a, b):
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b)
    elif hasattr(a, "memory"):  # BGMD
        torch.testing.assert_close(a.memory, b.memory)
        assert torch.equal(a.kept, b.kept)


@pytest.mark.parametrize("name", list(AGGREGATORS))
@SETTINGS
@given(seed=st.integers(0, 2**31), m=st.integers(5, 9), d=st.integers(1, 6))
def test_every_aggregator_is_permutation_invariant(name, seed, m, d):
    """Permuting rows and weights together changes neither the output nor the state (2 steps)."""
    agg = AGGREGATORS[name]
    gen = torch.Generator().manual_seed(seed)
    state_a = state_b = agg.init(m, d)
    for step in range(2):
        u = torch.randn(m, d, generator=gen, dtype=torch.float64) * 3
        w = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
        perm = torch.randperm(m, generator=gen)
        out_a, state_a = agg.aggregate(u, state_a, make_ctx(w, seed=step))
        out_b, state_b = agg.aggregate(u[perm], state_b, make_ctx(w[perm], seed=step))
        torch.testing.assert_close(out_a, out_b)
        _assert_state_close(state_a, state_b)


# --- coordinate median and trimmed mean: golden numbers -------------------------------------


def test_coordinate_median_golden_odd_and_even():
    odd = torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 10.0]])
    assert run(coordinate_median(), odd)[0].tolist() == [2.0, 5.0]
    even = torch.tensor([[1.0, 4.0], [3.0, 0.0], [2.0, 8.0], [10.0, 2.0]])
    assert run(coordinate_median(), even)[0].tolist() == [2.5, 3.0]  # mean of the middle two


def test_coordinate_median_ignores_weights():
    u = torch.tensor([[0.0], [1.0], [5.0]])
    out, _ = run(coordinate_median(), u, weights=torch.tensor([100.0, 1.0, 1.0]))
    assert out.tolist() == [1.0]


def test_trimmed_mean_golden():
    u = torch.tensor([[1.0, 100.0], [2.0, -100.0], [3.0, 0.0], [4.0, 1.0], [50.0, 2.0]])
    assert run(trimmed_mean(0.2), u)[0].tolist() == [3.0, 1.0]  # b = 1 dropped at each end
    torch.testing.assert_close(run(trimmed_mean(0.1), u)[0], u.mean(dim=0))  # b = floor(0.5) = 0
    torch.testing.assert_close(run(trimmed_mean(0.0), u)[0], u.mean(dim=0))
    even = torch.tensor([[1.0, 4.0], [3.0, 0.0], [2.0, 8.0], [10.0, 2.0]])
    assert run(trimmed_mean(0.25), even)[0].tolist() == [2.5, 3.0]


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 12), beta=st.floats(0.0, 0.49))
def test_trimmed_mean_lies_between_the_kept_order_statistics(seed, n, beta):
    u = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    b = math.floor(beta * n)
    s = u.sort(dim=0).values
    out, _ = run(trimmed_mean(beta), u)
    assert bool((out >= s[b] - 1e-12).all()) and bool((out <= s[n - 1 - b] + 1e-12).all())


@pytest.mark.parametrize("beta", [0.5, -0.1, 1.0, True])
def test_trimmed_mean_refuses_beta_outside_range(beta):
    with pytest.raises(ScenarioError) as err:
        trimmed_mean(beta)
    assert err.value.key == "algorithm.aggregator.beta"


# --- Krum ------------------------------------------------------------------------------------


def test_krum_scores_golden():
    u = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # n = 4, f = 0: 2 nearest neighbours
    assert krum_scores(u, 0).tolist() == [5.0, 2.0, 5.0, 145.0]
    assert run(krum(0), u)[0].tolist() == [1.0]
    assert run(krum(0, m=3), u)[0].tolist() == [1.0]  # mean of rows 1, 0, 2


def test_krum_refuses_when_2f_plus_2_is_not_below_n():
    u = torch.randn(6, 3)
    with pytest.raises(ScenarioError) as err:
        run(krum(2), u)  # 2f + 2 = 6 >= n = 6
    assert err.value.key == "algorithm.aggregator.f"
    assert "2f + 2 < n" in str(err.value) and "f=2, n=6" in str(err.value)
    run(krum(2), torch.randn(7, 3))  # 6 < 7 is fine


def test_krum_parameter_errors_name_the_key():
    for kwargs, key in [
        (dict(f=-1), "algorithm.aggregator.f"),
        (dict(f=1.5), "algorithm.aggregator.f"),
        (dict(f=1, m=0), "algorithm.aggregator.m"),
    ]:
        with pytest.raises(ScenarioError) as err:
            krum(**kwargs)
        assert err.value.key == key
    with pytest.raises(ScenarioError) as err:
        run(krum(0, m=5), torch.randn(4, 2))
    assert err.value.key == "algorithm.aggregator.m"


def _honest_and_byzantine(seed: int, f: int, extra: int, collude: bool):
    """n - f honest rows near a centre, f Byzantine rows far away; rows shuffled."""
    gen = torch.Generator().manual_seed(seed)
    n = 2 * f + 3 + extra
    d = 5
    centre = torch.randn(d, generator=gen, dtype=torch.float64)
    honest = centre + 0.1 * torch.randn(n - f, d, generator=gen, dtype=torch.float64)
    if collude:  # all Byzantine rows equal: close to each other, far from the honest ones
        bad = (50 * torch.randn(d, generator=gen, dtype=torch.float64)).expand(f, d)
    else:
        bad = 50 * torch.randn(f, d, generator=gen, dtype=torch.float64)
    rows = torch.cat([honest, bad])
    perm = torch.randperm(n, generator=gen)
    return rows[perm], perm < n - f, honest


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    f=st.integers(0, 3),
    extra=st.integers(0, 4),
    collude=st.booleans(),
)
def test_krum_picks_an_honest_row(seed, f, extra, collude):
    rows, is_honest, _ = _honest_and_byzantine(seed, f, extra, collude)
    out, _ = run(krum(f), rows)
    matches = (rows == out).all(dim=1)
    assert bool(matches.any()) and bool(is_honest[matches].all())


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    f=st.integers(0, 3),
    extra=st.integers(0, 4),
    collude=st.booleans(),
)
def test_multi_krum_with_n_minus_f_averages_the_honest_rows(seed, f, extra, collude):
    rows, _, honest = _honest_and_byzantine(seed, f, extra, collude)
    out, _ = run(krum(f, m=rows.shape[0] - f), rows)
    torch.testing.assert_close(out, honest.mean(dim=0))


def test_krum_distances_survive_a_large_common_offset():
    base = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    rows = (1e6 + base).expand(4, 1000).contiguous()  # float32, norms ~ 3e7
    torch.testing.assert_close(krum_scores(rows, 0), 1000 * krum_scores(base, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_krum_choice_does_not_depend_on_how_far_the_outliers_are(dtype):
    """Outliers far from everyone are nobody's near neighbours: the honest scores, and the
    chosen row, are the same at 1e3 and 1e30 (centring on the mean cancelled them away)."""
    gen = torch.Generator().manual_seed(4)
    honest = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    direction = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    chosen = []
    for scale in (1e3, 1e10, 1e20, 1e30):
        rows = torch.cat([honest, (scale * direction).expand(3, 5)]).to(dtype)
        out, _ = run(krum(3, m=2), rows)
        # 13 rows, f = 3: 8 nearest, all honest; honest alone with f = 0: the same 8
        torch.testing.assert_close(krum_scores(rows, 3)[:10], krum_scores(honest.to(dtype), 0),
                                   rtol=1e-6, atol=1e-9)
        chosen.append(out)
    for out in chosen[1:]:
        torch.testing.assert_close(out, chosen[0], rtol=1e-6, atol=1e-6)


def test_centered_clipping_golden_at_float32_extremes():
    """Rows at 1e38 (squares overflow float32) pull exactly tau each, like rows at 10."""
    agg = centered_clipping(1.0)
    for big in (10.0, 1e20, 1e38):
        rows = torch.tensor([[big, 0.0], [0.0, big], [0.0, 0.0]])
        out, state = agg.aggregate(rows, agg.init(3, 2), make_ctx(torch.ones(3)))
        torch.testing.assert_close(out, torch.tensor([1 / 3, 1 / 3]))
        assert torch.equal(out, state)


# --- centered clipping -----------------------------------------------------------------------


@SETTINGS
@given(seed=st.integers(0, 2**31), n=st.integers(1, 8), d=st.integers(1, 6))
def test_centered_clipping_with_infinite_tau_is_the_mean_from_any_start(seed, n, d):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=gen, dtype=torch.float64)
    start = 100 * torch.randn(d, generator=gen, dtype=torch.float64)
    out, state = run(centered_clipping(math.inf), rows, state=start)
    torch.testing.assert_close(out, rows.mean(dim=0))
    assert torch.equal(out, state)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 8),
    d=st.integers(1, 6),
    tau=st.floats(1e-3, 2.0),
    iterations=st.integers(1, 4),
)
def test_centered_clipping_moves_at_most_tau_per_iteration(seed, n, d, tau, iterations):
    gen = torch.Generator().manual_seed(seed)
    rows = 10 * torch.randn(n, d, generator=gen, dtype=torch.float64)
    start = torch.randn(d, generator=gen, dtype=torch.float64)
    out, _ = run(centered_clipping(tau, iterations), rows, state=start)
    assert (out - start).norm().item() <= tau * iterations * (1 + 1e-9)


def test_centered_clipping_starts_from_zeros_then_from_the_last_aggregate():
    agg = centered_clipping(1.0)
    state = agg.init(3, 2)
    assert torch.equal(state, torch.zeros(2))
    rows = torch.tensor([[10.0, 0.0], [10.0, 0.0], [10.0, 0.0]])
    out1, state = agg.aggregate(rows, state, make_ctx(torch.ones(3)))
    assert out1.tolist() == [1.0, 0.0]  # each row clipped to radius 1 around 0
    out2, _ = agg.aggregate(rows, state, make_ctx(torch.ones(3)))
    assert out2.tolist() == [2.0, 0.0]  # and then around the last aggregate


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(tau=0.0), "algorithm.aggregator.tau"),
        (dict(tau=-1.0), "algorithm.aggregator.tau"),
        (dict(tau=1.0, iterations=0), "algorithm.aggregator.iterations"),
    ],
)
def test_centered_clipping_parameter_errors_name_the_key(kwargs, key):
    with pytest.raises(ScenarioError) as err:
        centered_clipping(**kwargs)
    assert err.value.key == key


@pytest.mark.parametrize("agg", [coordinate_median(), trimmed_mean(0.1), krum(0)])
def test_an_empty_round_is_refused(agg):
    with pytest.raises(ValueError, match="no rows"):
        run(agg, torch.empty(0, 3))
