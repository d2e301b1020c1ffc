"""Coded distributed gradient descent: equal to full-batch gradient descent, step for step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import grad

from fedsim.coding import (
    MSGC,
    SRSGC,
    GradientCodingScheme,
    gilbert_elliott_delays,
    load_linear,
    make_code,
)
from fedsim.coding.gradients import PieceGradients
from fedsim.coding.training import CodedLoop, full_batch_gd, make_module, run_coded
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


def _recording(loop):
    """Wrap ``loop.encode`` to keep every round's ``(tasks, encoding, messages)``."""
    calls, encode = [], loop.encode

    def rec(tasks):
        enc, msgs = encode(tasks)
        calls.append((list(tasks), enc, msgs))
        return enc, msgs

    loop.encode = rec
    return calls


@pytest.mark.parametrize("kind,n,s", [("frc", 4, 1), ("frc", 6, 2), ("crc", 4, 1),
                                      ("crc", 6, 2), ("crc", 5, 0)])
def test_gc_messages_are_one_product_b_at_g_and_decode_is_a_t_b_f_g(kind, n, s):
    code = make_code(kind, n, s, seed=3)
    g = torch.randn(n, 5, generator=torch.Generator().manual_seed(n + s), dtype=torch.float64)
    delays = np.ones((n, 1))
    delays[n - s:, 0] = 5.0  # the last s workers straggle
    loop = CodedLoop(GradientCodingScheme(code, jobs=1), delays,
                     [torch.zeros(5, dtype=torch.float64)], lambda theta: g.clone(), lr=1.0)
    calls = _recording(loop)
    row = loop.play()
    tasks, enc, msgs = calls[0]
    assert np.array_equal(enc.dense(), code.matrix) and enc.jobs.tolist() == [1]
    assert enc.shape == (n, n) and [t.worker for t in tasks] == list(range(n))
    assert msgs.shape == (n, 5)
    assert torch.allclose(msgs, torch.as_tensor(code.matrix) @ g, rtol=0, atol=1e-14)
    f = np.arange(n - s)  # the rows that arrived
    assert row["stragglers"] == s and row["arrived"] == n - s and row["decoded"] == 1
    a = torch.as_tensor(code.decoding(f).a)
    assert torch.allclose(a @ msgs[f], g.sum(0), rtol=0, atol=1e-12)
    assert torch.allclose(loop.thetas[0], -g.sum(0), rtol=0, atol=1e-12)  # one step, lr 1


def _check_messages(calls, grads_by_job, pieces):
    for tasks, enc, msgs in calls:
        if not tasks:
            assert msgs is None
            continue
        jobs = sorted({t.job for t in tasks})
        assert enc.jobs.tolist() == jobs and enc.shape == (len(tasks), len(jobs) * pieces)
        assert msgs.shape == (len(tasks), grads_by_job[1].shape[1])
        e = enc.dense()
        for k, t in enumerate(tasks):
            b = jobs.index(t.job)
            assert np.count_nonzero(e[k]) == np.count_nonzero(t.coeffs)
            assert np.array_equal(e[k, b * pieces + t.pieces], t.coeffs)
            g = grads_by_job[t.job]
            ref = torch.as_tensor(t.coeffs) @ g[torch.as_tensor(t.pieces)]
            assert torch.allclose(msgs[k], ref, rtol=0, atol=1e-13), (t.round, k)


def _job_grads(pieces, d=4):
    """A piece-gradient function handing out a new random ``G`` per job (kept by job)."""
    gen, by_job = torch.Generator().manual_seed(7), {}

    def piece_grads(theta):
        by_job[len(by_job) + 1] = torch.randn(pieces, d, generator=gen, dtype=torch.float64)
        return by_job[len(by_job)].clone()

    return piece_grads, by_job


def test_srsgc_round_with_reattempts_is_one_product_over_two_jobs():
    sch = SRSGC(4, 1, 3, 2, jobs=4)  # s = 1, T = 1
    delays = np.ones((4, sch.rounds))
    delays[:2, 0] = 5.0  # round 1: workers 0, 1 straggle -> worker 0 redoes job 1 in round 2
    piece_grads, by_job = _job_grads(4)
    loop = CodedLoop(sch, delays, [torch.zeros(4, dtype=torch.float64)] * 2, piece_grads, 1.0)
    calls = _recording(loop)
    for _ in range(sch.rounds):
        loop.play()
    _check_messages(calls, by_job, 4)
    b = sch.code.matrix
    tasks, enc, msgs = calls[1]
    expected = np.zeros((4, 8))
    expected[0, :4] = b[0]          # worker 0: its row of B on job 1's pieces
    expected[1:, 4:] = b[1:]        # the others: job 2
    assert enc.jobs.tolist() == [1, 2] and np.array_equal(enc.dense(), expected)
    assert torch.allclose(msgs, torch.as_tensor(expected) @ torch.cat([by_job[1], by_job[2]]),
                          rtol=0, atol=1e-14)
    assert loop.done == 4


def test_msgc_messages_are_one_product_dense_or_sparse(monkeypatch):
    import fedsim.coding.training as training

    out = {}
    for limit in (training.DENSE_ENTRIES, 0):  # 0: every round through the sparse product
        monkeypatch.setattr(training, "DENSE_ENTRIES", limit)
        sch = MSGC(4, 2, 3, 1, jobs=6)
        piece_grads, by_job = _job_grads(len(sch.fractions))
        loop = CodedLoop(sch, _delays(4, sch.rounds, seed=3),
                         [torch.zeros(4, dtype=torch.float64)] * (sch.T + 1), piece_grads, 1.0)
        calls = _recording(loop)
        for _ in range(sch.rounds):
            loop.play()
        _check_messages(calls, by_job, len(sch.fractions))
        assert loop.done == 6 and max(len(c[1].jobs) for c in calls) == sch.T + 1
        out[limit] = torch.stack(loop.thetas)
    assert torch.allclose(out[0], out[training.DENSE_ENTRIES], rtol=0, atol=1e-13)
