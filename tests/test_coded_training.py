"""Coded distributed gradient descent: equal to full-batch gradient descent, step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad

from fedsim.coding import SRSGC, gilbert_elliott_delays, load_linear
from fedsim.coding.gradients import PieceGradients
from fedsim.coding.training import full_batch_gd, make_module, run_coded
from fedsim.errors import ScenarioError

N = 240  # training samples used: fast


def _relu_mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 7), torch.nn.ReLU(), torch.nn.Linear(7, 10))


def _dropout_mlp():
    return torch.nn.Sequential(torch.nn.Linear(64, 7), torch.nn.Dropout(0.5), torch.nn.Tanh(),
                               torch.nn.Linear(7, 10))


def _squared_loss(logits, y):  # a user's per-sample loss
    return torch.nn.functional.cross_entropy(logits, y, reduction="none") ** 2 + \
        (logits ** 2).mean(1)


@pytest.mark.parametrize("build,loss,engine", [
    (lambda: make_module("logreg", 64, 10), None, "fused_mlp"),
    (lambda: make_module("mlp", 64, 10, 7), None, "vmap"),
    (_relu_mlp, None, "fused_mlp"),
    (_relu_mlp, _squared_loss, "vmap"),
    (_dropout_mlp, None, "eval_per_sample")])
def test_piece_gradients_through_the_population_engine_equal_autograd(build, loss, engine):
    """Row p = grad of (1/N) sum_{i in piece p} loss_i (eval mode), an empty piece is 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 64, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (30,), generator=g)
    piece_of = torch.randint(0, 4, (30,), generator=g)  # piece 4 stays empty
    model = build().double()
    pg = PieceGradients(model, x, y, piece_of, 5, loss=loss)
    assert pg.engine == engine
    theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach() + 0.1
    got = pg(theta)
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    model.eval()
    lossf = loss or (lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"))

    def total(th, idx):
        chunks = torch.split(th, [s.numel() for s in shapes])
        params = {k: c.reshape(s) for k, c, s in zip(names, chunks, shapes, strict=True)}
        return lossf(torch.func.functional_call(model, params, (x[idx],)), y[idx]).sum() / 30

    for p in range(5):
        idx = torch.nonzero(piece_of == p).flatten()
        ref = grad(total)(theta, idx) if len(idx) else torch.zeros_like(theta)
        assert torch.allclose(got[p], ref, atol=1e-13, rtol=0), p
    assert got[4].abs().max() == 0


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
