"""Coded distributed gradient descent: equal to full-batch gradient descent, step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad

from fedsim.coding import SRSGC, gilbert_elliott_delays, load_linear
from fedsim.coding.training import (
    full_batch_gd,
    make_forward,
    per_sample_gradients,
    run_coded,
)
from fedsim.errors import ScenarioError

N = 240  # training samples used: fast


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_per_sample_gradients_equal_autograd(model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 64, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 3, 1])
    forward, d = make_forward(model, 64, 10, 7)
    theta = torch.randn(d, generator=g, dtype=torch.float64)
    mine = per_sample_gradients(model, theta, x, y, 10, 7)
    for i in range(5):
        ref = grad(lambda th, i=i: torch.nn.functional.cross_entropy(
            forward(th, x[i:i + 1]), y[i:i + 1]))(theta)
        assert torch.allclose(mine[i], ref, atol=1e-12)


def _delays(n, rounds, seed=1):
    rng = np.random.default_rng(seed)
    return load_linear(gilbert_elliott_delays(n, rounds, rng, p_slow=0.1, p_recover=0.4),
                       0.25, 2.2)


@pytest.mark.parametrize("scheme,kw", [
    ("gc", {"s": 2}), ("gc", {"s": 1, "code": "frc"}), ("sr-sgc", {"B": 1, "W": 3, "lam": 2}),
    ("m-sgc", {"B": 1, "W": 3, "lam": 2}), ("m-sgc", {"B": 2, "W": 3, "lam": 1})])
def test_coded_runs_follow_full_batch_gd_step_for_step(scheme, kw):
    rows = run_coded(scheme, 6, jobs=12, samples=N, delays=_delays(6, 20), lr=0.5,
                     record_params=True, **kw)
    models = len(rows[0]["params"])
    refs = [full_batch_gd(12, samples=N, model_index=m, lr=0.5) for m in range(models)]
    for m in range(models):  # each model visits exactly the GD iterates, in order
        seen = [rows[0]["params"][m]]
        for row in rows[1:]:
            if not np.array_equal(row["params"][m], seen[-1]):
                seen.append(row["params"][m])
        # the first row already holds round 1's step when job 1 decoded in round 1
        start = 0 if np.allclose(seen[0], refs[m][0], atol=1e-10) else 1
        for k, params in enumerate(seen):
            assert np.allclose(params, refs[m][start + k], atol=1e-10), (m, k)
    assert rows[-1]["jobs_done"] == 12 and rows[-1]["steps"] == 12
    final = rows[-1]["params"]
    for m in range(models):
        assert np.allclose(final[m], refs[m][len(range(m, 12, models))], atol=1e-10)
    assert np.nanmax([r["grad_error"] for r in rows]) < 1e-9


def test_gc_trajectory_equals_wait_for_all_and_ignore_stragglers_differs():
    d = _delays(6, 10)
    base = run_coded("wait-for-all", 6, jobs=10, samples=N, delays=d, record_params=True)
    gc = run_coded("gc", 6, s=2, jobs=10, samples=N, delays=d, record_params=True)
    ig = run_coded("ignore-stragglers", 6, s=2, jobs=10, samples=N, delays=d,
                   record_params=True)
    for a, b in zip(base, gc, strict=True):
        assert np.allclose(a["params"][0], b["params"][0], atol=1e-12)
    assert not np.allclose(base[-1]["params"][0], ig[-1]["params"][0], atol=1e-6)
    assert max(r["grad_error"] for r in ig) > 1e-3
    # timing: ignoring is never slower than waiting for everyone
    assert ig[-1]["sim_time_s"] <= base[-1]["sim_time_s"]


def test_rows_report_clock_and_decode():
    d = np.ones((4, 6))
    d[3, 1] = 5.0  # worker 3 straggles in round 2
    rows = run_coded("gc", 4, s=1, jobs=6, samples=N, delays=d)
    assert [r["round"] for r in rows] == list(range(1, 7))
    assert rows[1]["stragglers"] == 1 and not rows[1]["waited"]
    assert rows[1]["duration_s"] == 2.0 and rows[0]["duration_s"] == 1.0
    assert rows[-1]["sim_time_s"] == pytest.approx(7.0)
    assert all(r["cond"] >= 1.0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    wait = run_coded("wait-for-all", 4, jobs=6, samples=N, delays=d)
    assert wait[1]["waited"] and wait[1]["duration_s"] == 5.0 and wait[-1]["waits"] == 1


def test_sequential_needs_t_plus_one_models_and_right_delay_shape():
    with pytest.raises(ScenarioError, match=r"^algorithm\.coding\.models: must be an integer "
                                            r">= T \+ 1 = 2"):
        run_coded("sr-sgc", 4, B=1, W=3, lam=2, jobs=3, models=1, samples=N)
    with pytest.raises(ScenarioError, match=r"^network\.delays: need a \[4, >= 4\]"):
        run_coded(SRSGC(4, 1, 3, 2, jobs=3), delays=np.ones((4, 3)), samples=N)
