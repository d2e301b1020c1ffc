"""Geometric median by smoothed Weiszfeld: exactness, weights, breakdown, monotone objective."""

from __future__ import annotations

import pytest
import torch
from helpers import make_ctx
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.stages.geomed import KUHN_TEST_FROM, GMInfo, geometric_median, geometric_median_rows

SETTINGS = settings(max_examples=40, deadline=None)
TIGHT = dict(nu=1e-12, maxiter=5000, ftol=1e-15)  # close to the exact median


@SETTINGS
@given(seed=st.integers(0, 2**31), m=st.integers(1, 9), d=st.integers(1, 7))
def test_identical_rows_give_that_row(seed, m, d):
    gen = torch.Generator().manual_seed(seed)
    row = torch.randn(d, generator=gen) * 10
    weights = torch.rand(m, generator=gen) + 0.1
    v, info = geometric_median_rows(row.expand(m, d).clone(), weights)
    torch.testing.assert_close(v, row)
    assert info.converged


def test_identical_rows_never_zeros():
    v, info = geometric_median_rows(torch.full((5, 3), 2.5))
    assert torch.equal(v, torch.full((3,), 2.5))
    assert info == GMInfo(iterations=0, converged=True, objective=0.0)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    counts=st.lists(st.integers(1, 4), min_size=2, max_size=6),
    d=st.integers(1, 5),
)
def test_integer_weights_equal_duplicated_rows(seed, counts, d):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(len(counts), d, generator=gen, dtype=torch.float64)
    weights = torch.tensor(counts, dtype=torch.float64)
    duplicated = rows.repeat_interleave(weights.long(), dim=0)
    v_weighted, _ = geometric_median_rows(rows, weights, nu=1e-9, maxiter=2000, ftol=1e-14)
    v_dup, _ = geometric_median_rows(duplicated, None, nu=1e-9, maxiter=2000, ftol=1e-14)
    torch.testing.assert_close(v_weighted, v_dup, atol=1e-6, rtol=0)


def test_one_dimension_gives_the_median():
    rows = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    v, _ = geometric_median_rows(rows, **TIGHT)
    assert v.item() == pytest.approx(1.0, abs=1e-6)


def test_a_row_with_more_than_half_the_weight_is_the_median():
    gen = torch.Generator().manual_seed(3)
    rows = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    weights = torch.tensor([6.0, 1, 1, 1, 1, 1], dtype=torch.float64)  # 6/11 > 1/2
    v, _ = geometric_median(**TIGHT).aggregate(rows, None, make_ctx(weights))
    torch.testing.assert_close(v, rows[0], atol=1e-6, rtol=0)


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    honest=st.integers(3, 8),
    bad_share=st.floats(0.0, 0.99),
    log_scale=st.floats(1.0, 8.0),
)
def test_breakdown_fewer_than_half_outliers_move_the_median_a_bounded_distance(
    seed, honest, bad_share, log_scale
):
    """||GM(all) - GM(honest)|| <= 2(1-a)/(1-2a) * max_i ||w_i - GM(honest)||, a = outlier share."""
    gen = torch.Generator().manual_seed(seed)
    bad = int(bad_share * honest)  # < honest, so a < 1/2
    h = torch.randn(honest, 6, generator=gen, dtype=torch.float64)
    outliers = torch.randn(bad, 6, generator=gen, dtype=torch.float64) * 10**log_scale
    rows = torch.cat([h, outliers])[torch.randperm(honest + bad, generator=gen)]
    gm_honest, _ = geometric_median_rows(h, **TIGHT)
    gm_all, _ = geometric_median_rows(rows, nu=1e-9, maxiter=1000, ftol=1e-13)
    spread = (h - gm_honest).norm(dim=1).max().item()
    a = bad / (honest + bad)
    bound = 2 * (1 - a) / (1 - 2 * a) * spread
    assert (gm_all - gm_honest).norm().item() <= bound * (1 + 1e-6) + 1e-6


def test_the_mean_breaks_down_where_the_median_does_not():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(7, 10, generator=gen, dtype=torch.float64)
    rows = torch.cat([h, torch.full((3, 10), 1e6, dtype=torch.float64)])
    gm_honest, _ = geometric_median_rows(h)
    spread = (h - gm_honest).norm(dim=1).max().item()
    gm_all, info = geometric_median_rows(rows)  # defaults
    assert info.converged
    assert (gm_all - gm_honest).norm().item() <= 2 * spread
    assert (rows.mean(dim=0) - gm_honest).norm().item() > 1e5 * spread


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(2, 12),
    d=st.integers(1, 6),
    log_scale=st.floats(-8.0, 4.0),
    duplicates=st.booleans(),
)
def test_objective_never_increases_by_more_than_the_smoothing_allows(
    seed, m, d, log_scale, duplicates
):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(m, d, generator=gen, dtype=torch.float64) * 10**log_scale
    if duplicates:
        rows[: m // 2] = rows[0].clone()
    weights = torch.rand(m, generator=gen, dtype=torch.float64) + 0.01
    nu = 1e-6
    _, info = geometric_median_rows(rows, weights, nu=nu, maxiter=50, ftol=0.0, trace=True)
    g = info.objectives
    assert len(g) == info.iterations + 1
    assert info.objective == g[-1]
    for before, after in zip(g, g[1:], strict=False):
        assert after <= before + nu / 2 + 1e-12 * before


@SETTINGS
@given(seed=st.integers(0, 2**31), half=st.integers(2, 10), d=st.integers(2, 8))
def test_objective_is_monotone_when_rows_are_spread_out(seed, half, d):
    """An even count: the coordinate-median start is not a row, so no distance is below nu."""
    m = 2 * half
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(m, d, generator=gen, dtype=torch.float64)
    _, info = geometric_median_rows(rows, nu=1e-9, maxiter=30, ftol=0.0, trace=True)
    g = info.objectives
    assert all(after <= before * (1 + 1e-12) for before, after in zip(g, g[1:], strict=False))


def test_info_reports_iterations_and_convergence():
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(30, 5, generator=gen)
    _, info = geometric_median_rows(rows, maxiter=1, ftol=0.0)
    assert info == GMInfo(iterations=1, converged=False, objective=info.objective)
    _, info = geometric_median_rows(rows, maxiter=100, ftol=1e-6)
    assert info.converged and 1 <= info.iterations < 100
    assert info.objectives == ()  # only recorded with trace=True


def test_aggregator_state_is_the_last_info_and_uses_ctx_weights():
    gen = torch.Generator().manual_seed(2)
    rows = torch.randn(5, 3, generator=gen)
    agg = geometric_median()
    assert agg.init(5, 3) is None
    v, state = agg.aggregate(rows, None, make_ctx(torch.ones(5)))
    assert isinstance(state, GMInfo) and state.converged
    v2, _ = agg.aggregate(rows, state, make_ctx(torch.tensor([10.0, 1, 1, 1, 1])))
    assert (v2 - rows[0]).norm() < (v - rows[0]).norm()


def test_bad_weights_raise_a_clear_value_error():
    rows = torch.randn(3, 2)
    with pytest.raises(ValueError, match="sum to 0"):
        geometric_median_rows(rows, torch.zeros(3))
    with pytest.raises(ValueError, match=">= 0"):
        geometric_median_rows(rows, torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        geometric_median_rows(rows, torch.ones(4))
    with pytest.raises(ValueError, match="sum to 0"):
        geometric_median_rows(torch.empty(0, 2))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(nu=0.0), "algorithm.aggregator.nu"),
        (dict(maxiter=0), "algorithm.aggregator.maxiter"),
        (dict(maxiter=2.5), "algorithm.aggregator.maxiter"),
        (dict(ftol=-1.0), "algorithm.aggregator.ftol"),
    ],
)
def test_bad_parameters_name_the_key(kwargs, key):
    with pytest.raises(ScenarioError) as err:
        geometric_median(**kwargs)
    assert err.value.key == key


@pytest.mark.parametrize(("offset", "spread", "dtype"),
                         [(1e6, 1e-6, torch.float64), (1e3, 1e-3, torch.float32)])
def test_rows_far_from_the_origin_converge_at_rounding_level(offset, spread, dtype):
    """ftol * s is below what the dtype resolves at ||v||: the rounding floor ends the loop."""
    gen = torch.Generator().manual_seed(0)
    rows = (offset + spread * torch.randn(9, 10, generator=gen, dtype=torch.float64)).to(dtype)
    v, info = geometric_median_rows(rows)  # defaults: maxiter 100
    assert info.converged and info.iterations < 20
    assert float((v.double() - offset).abs().max()) <= 2 * spread + 1e-9 * offset


def test_the_start_is_the_coordinate_median_and_far_rows_do_not_move_it():
    """6 of 9 rows near (1, 2), 3 at 1e30: one update from the start is already honest."""
    rows = torch.tensor([[1.0, 2.0], [1.1, 2.05], [0.9, 1.95], [1.05, 2.1], [0.95, 1.9],
                         [1.02, 1.97], [1e30, 0.0], [-1e30, 0.0], [0.0, 1e30]])
    start = torch.tensor([1.0, 1.97])  # per coordinate the 5th of 9 values, not a row
    v, info = geometric_median_rows(rows, maxiter=1, ftol=0.0, trace=True)
    assert info.iterations == 1 and not info.converged  # honest flag: maxiter ran out
    assert float((v - torch.tensor([1.0, 2.0])).norm()) <= 0.1
    g0 = float(torch.linalg.vector_norm(rows.double() - start.double(), dim=1).mean())
    assert info.objectives[0] == pytest.approx(g0, rel=1e-6)


def test_converged_is_false_when_maxiter_runs_out():
    """A median between the rows (no row passes Kuhn's test), one update allowed, ftol 0."""
    rows = torch.tensor([[0.0, 0.0], [4.0, 0.0], [2.0, 3.4], [1e20, 1e20]])
    v, info = geometric_median_rows(rows, maxiter=1, ftol=0.0)
    assert info.iterations == 1 and not info.converged
    v, info = geometric_median_rows(rows, maxiter=500)
    assert info.converged and info.iterations < 500
    assert not any(torch.equal(v, r) for r in rows)


def test_a_row_that_is_the_median_is_returned_exactly():
    """Weiszfeld only creeps towards a median at a row (the 4-row case hypothesis found);
    Kuhn's test on the nearest row, from the 10th update on, ends it: pull 0.24997 < weight
    0.25 at row 1."""
    rows = torch.tensor([[-4.3413, 6.8808], [-3.2522, 5.1824], [0.1003, -0.0555],
                         [-3.9040, 6.6067]])
    v, info = geometric_median_rows(rows, maxiter=100)
    assert torch.equal(v, rows[1]) and info.converged and info.iterations == KUHN_TEST_FROM
