"""Robust aggregators at any attack scale: bounded by the honest spread, non-finite rows rejected.

References: Pillutla, Kakade, Harchaoui, RFA (IEEE TSP 2022), the geometric median's
breakdown bound; Yin et al. (ICML 2018) coordinate median / trimmed mean; Blanchard et al.
(NeurIPS 2017) Krum; Karimireddy, He, Jaggi (ICML 2021) centered clipping.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from helpers import make_ctx
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.results.records import read_metrics
from fedsim.stages.attacks import build_update_attack
from fedsim.stages.bgmd import bgmd
from fedsim.stages.geomed import geometric_median, geometric_median_rows
from fedsim.stages.numerics import finite_rows, reject_nonfinite, row_norms
from fedsim.stages.registry import build_aggregator
from fedsim.stages.robust import centered_clipping, coordinate_median, krum, trimmed_mean

SETTINGS = settings(max_examples=60, deadline=None)
DTYPES = st.sampled_from([torch.float32, torch.float64])


def _load_bench():
    path = Path(__file__).parents[1] / "benchmarks" / "robust_scale.py"
    spec = importlib.util.spec_from_file_location("robust_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BENCH = _load_bench()


# --- the 6 + 3 fixture ---------------------------------------------------------------------

def six_plus_three(r: float, dtype: torch.dtype) -> torch.Tensor:
    """6 honest rows N(0, 0.1^2) in 2-D (seed 12: the exact GM is within 0.0097 of the
    origin for every R) and 3 rows at (R, 0), (-R, 0), (0, R)."""
    h = torch.randn(6, 2, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    bad = torch.tensor([[r, 0.0], [-r, 0.0], [0.0, r]], dtype=torch.float64)
    return torch.cat([0.1 * h, bad]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exponent", [0, 3, 6, 9, 12, 20, 30, 38])
def test_six_plus_three_gm_stays_at_the_origin_at_every_scale(dtype, exponent):
    rows = six_plus_three(10.0**exponent, dtype)
    v, info = geometric_median_rows(rows)  # defaults
    assert info.converged and info.iterations < 100
    assert float(v.double().norm()) <= 0.05
    exact, _ = geometric_median_rows(rows.double(), nu=1e-12, maxiter=5000, ftol=1e-14)
    assert float((v.double() - exact).norm()) <= 1e-4
    agg = bgmd(k_fraction=1.0, memory=False)
    out, state = agg.aggregate(rows, agg.init(9, 2), make_ctx(torch.ones(9)))
    assert float(out.double().norm()) <= 0.05 and state.info.converged


# --- property: bounded by the honest spread ------------------------------------------------

@st.composite
def attacked(draw):
    """(rows, honest rows, outlier count): honest N(c, 1), outliers at 10^e, in a dtype."""
    seed = draw(st.integers(0, 2**31))
    honest = draw(st.integers(3, 99))  # 1 outlier among 99 honest rows: 1 %
    frac = draw(st.floats(0.01, 0.49))
    f = max(1, min(math.ceil(frac * honest / (1 - frac)), honest - 1))  # f < honest
    d = draw(st.integers(1, 6))
    scale = 10.0 ** draw(st.floats(0.0, 30.0))
    dtype = draw(DTYPES)
    collude = draw(st.booleans())
    gen = torch.Generator().manual_seed(seed)
    centre = 5 * torch.randn(d, generator=gen, dtype=torch.float64)
    h = centre + torch.randn(honest, d, generator=gen, dtype=torch.float64)
    direction = torch.randn(1 if collude else f, d, generator=gen, dtype=torch.float64)
    bad = (scale * direction).expand(f, d)
    perm = torch.randperm(honest + f, generator=gen)
    rows = torch.cat([h, bad])[perm].to(dtype)
    return rows, h.to(dtype).double(), f


def spread_of(h: torch.Tensor) -> tuple[torch.Tensor, float]:
    mu = h.mean(dim=0)
    return mu, float((h - mu).norm(dim=1).max())


@SETTINGS
@given(case=attacked())
def test_coordinate_median_and_trimmed_mean_stay_in_the_honest_box(case):
    """Fewer than half outliers: every coordinate lies within the honest range."""
    rows, h, f = case
    n = rows.shape[0]
    lo, hi = h.min(dim=0).values, h.max(dim=0).values
    beta = min(0.4999, (f + 0.5) / n)  # trims at least f rows at each end
    for agg in (coordinate_median(), trimmed_mean(beta)):
        out, _ = agg.aggregate(rows, None, make_ctx(torch.ones(n)))
        o = out.double()
        tol = 1e-5 * (1 + h.abs().max())
        assert bool(((o >= lo - tol) & (o <= hi + tol)).all())


@SETTINGS
@given(case=attacked())
def test_krum_stays_within_its_score_bound_at_every_scale(case):
    """The chosen row's score is at most an honest row's, (n-f-2)(2 spread)^2; at least one of
    its n-f-2 nearest rows is honest, so it is within (1 + 2 sqrt(n-f-2)) spread of the mean."""
    rows, h, f = case
    n = rows.shape[0]
    if not 2 * f + 2 < n:
        return
    mu, spread = spread_of(h)
    out, _ = krum(f).aggregate(rows, None, make_ctx(torch.ones(n)))
    bound = (1 + 2 * math.sqrt(n - f - 2)) * spread
    assert float((out.double() - mu).norm()) <= bound * (1 + 1e-5) + 1e-5


@SETTINGS
@given(case=attacked())
def test_gm_and_bgmd_within_the_breakdown_bound_at_every_scale(case):
    """||GM - GM(honest)|| <= 2(1-a)/(1-2a) * max_i ||h_i - GM(honest)||, a = outlier share."""
    rows, h, f = case
    n = rows.shape[0]
    a = f / n
    gm_h, _ = geometric_median_rows(h, nu=1e-12, maxiter=5000, ftol=1e-14)
    spread = float((h - gm_h).norm(dim=1).max())
    bound = 2 * (1 - a) / (1 - 2 * a) * spread
    v, info = geometric_median(maxiter=1000).aggregate(rows, None, make_ctx(torch.ones(n)))
    # (converged may be False: near a row that is not quite the median, Weiszfeld creeps)
    assert float((v.double() - gm_h).norm()) <= bound * 1.001 + 1e-4
    agg = bgmd(k_fraction=0.5, memory=False, maxiter=1000)
    out, state = agg.aggregate(rows, agg.init(n, rows.shape[1]), make_ctx(torch.ones(n)))
    kept = state.kept
    block_h, _ = geometric_median_rows(h[:, kept], nu=1e-12, maxiter=5000, ftol=1e-14)
    block_spread = float((h[:, kept] - block_h).norm(dim=1).max())
    block_bound = 2 * (1 - a) / (1 - 2 * a) * block_spread
    assert float((out.double()[kept] - block_h).norm()) <= block_bound * 1.001 + 1e-4


@SETTINGS
@given(case=attacked(), iterations=st.integers(1, 3))
def test_centered_clipping_moves_at_most_a_tau_per_outlier_share(case, iterations):
    """From the honest mean with tau >= the honest spread, each iteration moves v by at most
    (f/n) tau off the honest mean (honest rows are not clipped and cancel out)."""
    rows, h, f = case
    n = rows.shape[0]
    mu, spread = spread_of(h)
    tau = 2 * spread  # honest rows stay unclipped while v is within a spread of mu
    out, state = centered_clipping(tau, iterations).aggregate(
        rows, mu.to(rows.dtype), make_ctx(torch.ones(n)))
    assert bool(torch.isfinite(state).all())
    moved = float((out.double() - mu).norm())
    assert moved <= iterations * (f / n) * tau * (1 + 1e-4) + 1e-4 * (1 + float(mu.norm()))


# --- non-finite rows -----------------------------------------------------------------------

def test_row_norms_do_not_overflow_or_underflow():
    x = torch.tensor([[3e38, 3e38], [1e20, 0.0], [3e-30, 4e-30], [0.0, 0.0],
                      [math.inf, 1.0], [math.nan, 1.0]])
    n = row_norms(x)
    assert n.dtype == torch.float64
    assert n[:4].tolist() == pytest.approx([3e38 * math.sqrt(2), 1e20, 5e-30, 0.0], rel=1e-6)
    assert math.isinf(n[4]) and math.isnan(n[5])
    assert finite_rows(x).tolist() == [False, True, True, True, False, False]


def test_reject_nonfinite_drops_rows_with_their_context():
    rows = torch.arange(12.0).reshape(6, 2)
    rows[1, 0], rows[3, 1], rows[4] = math.nan, -math.inf, 3e38
    ctx = make_ctx(torch.arange(1.0, 7.0), senders=[10, 11, 12, 13, 14, 15],
                   byzantine=torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.bool))
    kept, kctx, rejected = reject_nonfinite(rows, ctx)
    assert rejected == 3
    assert kept.tolist() == [[0.0, 1.0], [4.0, 5.0], [10.0, 11.0]]
    assert kctx.senders.tolist() == [10, 12, 15] and kctx.weights.tolist() == [1.0, 3.0, 6.0]
    assert kctx.byzantine.tolist() == [False, False, False]
    same, sctx, none = reject_nonfinite(kept, kctx)
    assert none == 0 and same is kept and sctx is kctx


AGGREGATOR_SPECS = [{"name": n} for n in ("mean", "coordinate_median", "gm", "bgmd")] + [
    {"name": "trimmed_mean", "beta": 0.2}, {"name": "krum", "f": 2},
    {"name": "centered_clipping", "tau": 1.0, "iterations": 2},
    {"name": "bgmd", "memory": "client"}]


@pytest.mark.parametrize("spec", AGGREGATOR_SPECS, ids=lambda s: str(s))
def test_every_aggregator_after_rejection_equals_it_on_the_finite_rows(spec):
    """One NaN row, one inf row, one overflowing row out of 10: the same answer as without."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.randn(7, 5, generator=gen)
    rows = torch.cat([clean[:3], torch.full((1, 5), math.nan), clean[3:5],
                      torch.full((1, 5), math.inf), clean[5:], torch.full((1, 5), 2e38)])
    agg = build_aggregator(spec)
    kept, ctx, rejected = reject_nonfinite(rows, make_ctx(torch.ones(10)))
    assert rejected == 3
    out, state = agg.aggregate(kept, agg.init(10, 5), ctx)
    ref, _ = agg.aggregate(clean, agg.init(10, 5), make_ctx(torch.ones(7), senders=ctx.senders))
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, ref)


def test_centered_clipping_state_stays_finite_across_rounds_of_huge_rows():
    agg = centered_clipping(1.0)
    state = agg.init(10, 4)
    for step in range(5):
        rows = torch.randn(10, 4, generator=torch.Generator().manual_seed(step))
        rows[:3] = 1e38  # finite, norm 2e38 < float32 max: clipped, not rejected
        rows, ctx, rejected = reject_nonfinite(rows, make_ctx(torch.ones(10)))
        assert rejected == 0
        _, state = agg.aggregate(rows, state, ctx)
        assert bool(torch.isfinite(state).all())
        # each of the 3 far rows pulls by at most tau / n = 0.1 per step
        assert float(state.norm()) <= (step + 1) * (0.3 + 1.0)


# --- attack parameters ---------------------------------------------------------------------

@pytest.mark.parametrize(("attack", "param"),
                         [("sign_flip", "scale"), ("alie", "z"), ("gaussian_noise", "sigma"),
                          ("gaussian_replace", "sigma"), ("ipm", "epsilon")])
def test_attack_parameters_beyond_float32_are_a_validation_error(attack, param):
    build_update_attack(attack, {param: 1e38})  # float32 max is 3.4e38: valid
    for value in (1e300, 3.5e38):
        with pytest.raises(ScenarioError) as err:
            build_update_attack(attack, {param: value})
        assert err.value.key == f"attack.params.{param}"
        assert "float32" in str(err.value)


# --- end to end ----------------------------------------------------------------------------

def final(raw: dict, tmp_path: Path, name: str, diverged: bool | None = False
          ) -> tuple[float, dict]:
    """Run ``raw``; the model stays finite, and diverged_round is set iff ``diverged``
    (None: either way)."""
    from fedsim.runners import run_scenario
    from fedsim.scenario import from_dict, validate_scenario

    sc = from_dict(raw)
    validate_scenario(sc)
    res = run_scenario(sc, tmp_path / name, progress=False)
    assert bool(torch.isfinite(res.final_params).all())
    if diverged is not None:
        assert (res.summary["diverged_round"] is not None) == diverged
    return res.summary["final_accuracy"], res.summary


ROBUST = {"gm": {"name": "gm"}, "cc": BENCH.AGGREGATORS["cc"],
          "bgmd_client": BENCH.AGGREGATORS["bgmd_client"]}


@pytest.mark.parametrize("attack", list(BENCH.ATTACKS))
@pytest.mark.parametrize("name", list(ROBUST))
def test_huge_attacks_cost_robust_aggregators_at_most_a_few_points(attack, name, tmp_path):
    """At scale 1e20 and 1e38 as accurate (within 3 points) as at scale 100; 1e300 is refused."""
    base, _ = final(BENCH.cell(ROBUST[name], attack, 100.0, rounds=10), tmp_path, "s100")
    assert base >= 0.45  # learning (bgmd_client under noise is the lowest, 0.52)
    for scale in (1e20, 1e38):
        acc, _ = final(BENCH.cell(ROBUST[name], attack, scale, rounds=10), tmp_path, f"{scale}")
        assert acc >= base - 0.03, (scale, acc, base)
    with pytest.raises(ScenarioError, match=f"attack.params.{BENCH.ATTACKS[attack]}"):
        final(BENCH.cell(ROBUST[name], attack, 1e300, rounds=10), tmp_path, "s1e300")


@pytest.mark.filterwarnings("ignore:.*honest clients' updates were non-finite")
@pytest.mark.parametrize("attack", list(BENCH.ATTACKS))
def test_bgmd_shared_memory_keeps_the_model_finite_at_any_scale(attack, tmp_path):
    """The shared memory is a plain mean (not robust, by design): finite, if not accurate
    (the honest clients' training may then overflow: diverged, their rows rejected)."""
    for scale in (1e20, 1e38):
        final(BENCH.cell(BENCH.AGGREGATORS["bgmd"], attack, scale, rounds=6), tmp_path,
              f"{scale}", diverged=None)


def test_rejected_rows_are_counted_per_round(tmp_path):
    """Gaussian noise at 1e38 overflows float32: each Byzantine row is rejected, counted."""
    raw = BENCH.cell({"name": "mean"}, "gaussian_noise", 1e38, rounds=6)
    acc, summary = final(raw, tmp_path, "run")
    rows = read_metrics(tmp_path / "run")
    assert [r["rejected"] for r in rows] == [summary["byzantine_clients"]] * 6
    assert summary["rejected_rows"] == 6 * summary["byzantine_clients"] > 0
    assert acc >= 0.6  # the mean of the honest rows: 0.64 (0.66 without any attacker)


@pytest.mark.filterwarnings("ignore:.*honest clients' updates were non-finite")
def test_a_round_with_every_row_rejected_applies_no_update(tmp_path):
    """lr = 1e30 blows the model up in round 1; later rounds train to NaN, all rejected."""
    raw = BENCH.cell({"name": "mean"}, "sign_flip", 1.0, rounds=4)
    raw["algorithm"]["lr"] = 1e30
    raw["attack"] = {"name": "none", "fraction": 0.0, "params": {}}
    _, summary = final(raw, tmp_path, "run", diverged=True)
    assert summary["diverged_round"] == 1  # local training overflowed: reported, not applied
    rows = read_metrics(tmp_path / "run")
    later = rows[-1]
    assert later["rejected"] == later["participants"] == 32
    assert summary["rejected_rows"] == sum(r["rejected"] for r in rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_weighted_coordinate_median_golden(dtype):
    """bfloat16 takes the torch path (the one a GPU takes), the others numpy's."""
    from fedsim.stages.numerics import coordinate_median as start

    rows = torch.tensor([[0.0, 30.0], [1.0, 20.0], [2.0, 10.0], [3.0, 0.0]], dtype=dtype)
    assert start(rows).tolist() == [1.5, 15.0]
    assert start(rows, torch.tensor([1.0, 1, 1, 1])).tolist() == [1.5, 15.0]
    assert start(rows, torch.tensor([3.0, 1, 1, 1])).tolist() == [0.5, 25.0]  # half at row 0
    assert start(rows, torch.tensor([4.0, 1, 1, 1])).tolist() == [0.0, 30.0]
    assert start(rows, torch.tensor([1.0, 0, 0, 5])).tolist() == [3.0, 0.0]
    big = torch.tensor([[3e38], [3e38]])
    assert start(big).tolist() == pytest.approx([3e38], rel=1e-6)  # no overflow in the mean
