"""fedsim.privacy.dp: clipping (overflow-safe), local and central Gaussian noise of DP-FedAvg."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.privacy.dp import central_noise, clip_rows, clip_to_norm, local_noise
from tests.helpers import make_ctx

torch.set_num_threads(1)
SETTINGS = settings(max_examples=40, deadline=None)


def norms64(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.double(), dim=1)


@SETTINGS
@given(m=st.integers(1, 6), d=st.integers(1, 40), log_scale=st.floats(-30, 38),
       clip=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_clipped_norms_at_most_clip_for_any_scale(m, d, log_scale, clip, seed):
    """Rows of any scale up to float32's max (norms far past it) come out with norm <= C;
    rows already inside are untouched; the direction is kept."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g).double() * 10.0 ** log_scale
    x = x.clamp(-3.4e38, 3.4e38).float()
    out = clip_rows(clip).update(x, None, make_ctx(torch.ones(m)))[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    n_in, n_out = norms64(x), norms64(out)
    assert bool((n_out <= clip * (1 + 1e-6)).all())
    inside = n_in <= clip
    assert torch.equal(out[inside], x[inside])
    big = (n_in > clip) & (n_in > 0)
    assert torch.allclose(n_out[big], torch.full_like(n_out[big], clip), rtol=1e-5)
    cos = (out.double() * (x.double() / n_in[:, None])).sum(1)[big] / n_out[big]
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)


def test_clip_overflowing_infinite_and_nan_rows():
    x = torch.tensor([[3e38, 3e38, 0.0, 0.0],  # float32 norm overflows
                      [1e30, -1e30, 1e30, -1e30],
                      [math.inf, 1.0, -math.inf, 5.0],  # limit: C * sign / sqrt(2) on the infs
                      [math.nan, 1.0, 0.0, 0.0],  # nan: zero (a DP clipper bounds every row)
                      [0.3, 0.4, 0.0, 0.0]])  # norm 0.5 <= C: unchanged
    out = clip_to_norm(x, 2.0)
    s = 2.0 / math.sqrt(2)
    want = torch.tensor([[s, s, 0, 0], [1.0, -1.0, 1.0, -1.0], [s, 0, -s, 0], [0, 0, 0, 0],
                         [0.3, 0.4, 0, 0]])
    torch.testing.assert_close(out, want)
    assert bool((norms64(out) <= 2.0 * (1 + 1e-6)).all())
    assert clip_to_norm(torch.zeros(0, 3), 1.0).shape == (0, 3)


def test_float64_rows_and_nbytes():
    x = torch.full((2, 3), 1e200, dtype=torch.float64)
    out = clip_to_norm(x, 1.0)
    assert out.dtype == torch.float64
    torch.testing.assert_close(norms64(out), torch.ones(2, dtype=torch.float64))
    assert clip_rows(1.0).nbytes(10) == 40
    assert local_noise(1.0, 1.0).nbytes(10) == 40
    assert central_noise(1.0, 1.0).nbytes(10) == 40


def test_local_noise_std_and_reproducibility():
    m, d, z, c = 500, 40, 0.8, 1.5
    stage = local_noise(z, c)
    rows = torch.full((m, d), 0.25)
    a = stage.update(rows, None, make_ctx(torch.ones(m), seed=4))[0]
    b = stage.update(rows, None, make_ctx(torch.ones(m), seed=4))[0]
    assert torch.equal(a, b)
    noise = a - rows
    assert abs(float(noise.std()) / (z * c) - 1) < 0.03  # 20000 draws
    assert abs(float(noise.mean())) < 4 * z * c / math.sqrt(m * d)
    assert torch.equal(local_noise(0.0, c).update(rows, None, make_ctx(torch.ones(m)))[0], rows)


def central_draws(stage, u, m, reps, weights=None):
    out = []
    for seed in range(reps):
        w = torch.ones(m) if weights is None else weights
        out.append(stage.update(u, None, make_ctx(w, seed=seed))[0])
    return torch.stack(out)


def test_central_noise_std_on_the_mean_is_zc_over_m():
    """Uniform weights, no expected cohort: std zC/m per coordinate around the mean."""
    m, d, z, c = 8, 500, 1.2, 0.5
    u = torch.linspace(-0.1, 0.1, d)
    out = central_draws(central_noise(z, c), u, m, reps=20)  # 10000 draws
    noise = out - u
    assert abs(float(noise.std()) / (z * c / m) - 1) < 0.04
    assert abs(float(noise.mean())) < 4 * z * c / m / math.sqrt(noise.numel())


def test_central_noise_fixed_denominator():
    """expected_cohort = qN: output (m u + N(0, (zC)^2)) / qN (McMahan's f~_f, unit weights)."""
    m, d, z, c, qn = 5, 500, 1.0, 2.0, 10.0
    u = torch.full((d,), 0.2)
    out = central_draws(central_noise(z, c, expected_cohort=qn), u, m, reps=20)
    assert torch.allclose(out.mean(), torch.tensor(0.2 * m / qn), atol=4 * z * c / qn / 100)
    assert abs(float(out.std()) / (z * c / qn) - 1) < 0.04
    # an empty round still releases noise (with a fixed denominator)
    empty = central_noise(z, c, expected_cohort=qn).update(
        torch.full((d,), math.nan), None, make_ctx(torch.ones(0)))[0]
    assert torch.isfinite(empty).all() and abs(float(empty.std()) / (z * c / qn) - 1) < 0.2
    with pytest.raises(ValueError, match="at least one row"):
        central_noise(z, c).update(u, None, make_ctx(torch.ones(0)))


def test_central_noise_refuses_unequal_weights():
    stage = central_noise(1.0, 1.0)
    u = torch.zeros(4)
    with pytest.raises(ScenarioError, match="privacy.weighting"):
        stage.update(u, None, make_ctx(torch.tensor([10.0, 20.0, 10.0])))
    # equal counts (every client holds as many samples) are uniform weights
    out = stage.update(u, None, make_ctx(torch.full((3,), 7.0)))[0]
    assert out.shape == (4,)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_clip_validation(bad):
    for make in (lambda: clip_rows(bad), lambda: local_noise(1.0, bad),
                 lambda: central_noise(1.0, bad)):
        with pytest.raises(ScenarioError, match="privacy.clip"):
            make()


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, None, 1e39])
def test_noise_multiplier_validation(bad):
    for make in (lambda: local_noise(bad, 1.0), lambda: central_noise(bad, 1.0)):
        with pytest.raises(ScenarioError, match="privacy.noise_multiplier"):
            make()


@pytest.mark.parametrize("bad", [0, -3.0, math.inf, "10"])
def test_expected_cohort_validation(bad):
    with pytest.raises(ScenarioError, match="privacy.expected_cohort"):
        central_noise(1.0, 1.0, expected_cohort=bad)
