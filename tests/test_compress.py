"""Compression pieces: sketch / de-sketch round trip, FetchSGD golden runs, top-k error feedback."""

from __future__ import annotations

import pytest
import torch
from helpers import make_ctx
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.privacy.compress import (
    desketch_server,
    fetchsgd_server,
    fetchsgd_uplink,
    sketch_uplink,
    topk_uplink,
)
from fedsim.privacy.sketch import KINDS, CountSketch, make_sketch, round_seed

F64 = torch.float64
SETTINGS = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (2-core machines thrash with more), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ctx(m: int, step: int = 0, senders=None):
    return make_ctx(torch.ones(m), senders=senders)._replace(step=step)


# -- sketch / de-sketch -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_sketch_then_desketch_is_the_round_operator(kind: str) -> None:
    d, b, m, seed = 200, 40, 6, 17
    up, down = sketch_uplink(kind, b, seed, rows=4), desketch_server(kind, b, seed, rows=4)
    s_up, s_down = up.init(10, d), down.init(d)
    u = torch.randn(m, d, dtype=F64)
    outs = []
    for step in (3, 4):
        ctx = _ctx(m, step)
        y, s_up = up.update(u, s_up, ctx)  # [m, b]
        assert y.shape == (m, 40)
        mean = y.mean(dim=0)  # a linear aggregate of the sketches
        out, s_down = down.update(mean, s_down, ctx)
        op = make_sketch(kind, d, b, round_seed(seed, step), rows=4)
        assert torch.allclose(out, op.desketch(op.sketch(u.mean(dim=0))), atol=1e-10)
        outs.append(out)
    assert not torch.allclose(outs[0], outs[1])  # a fresh operator each round
    assert up.nbytes(d) == down.nbytes(d) == 4 * b


def test_desketched_update_is_unbiased_over_rounds() -> None:
    d, b, n = 64, 16, 300
    up, down = sketch_uplink("srht", b, 1), desketch_server("srht", b, 1)
    su, sd = up.init(2, d), down.init(d)
    u = torch.randn(2, d, dtype=F64)
    acc = torch.zeros(d, dtype=F64)
    for step in range(n):
        y, su = up.update(u, su, _ctx(2, step))
        out, sd = down.update(y.mean(dim=0), sd, _ctx(2, step))
        acc += out
    ubar = u.mean(dim=0)
    assert (acc / n - ubar).norm() < 2.5 * ((d + 1) / (b * n)) ** 0.5 * ubar.norm()


def test_countsketch_uplink_width_is_rows_times_columns() -> None:
    up = sketch_uplink("countsketch", 103, 0, rows=5)
    assert up.nbytes(1000) == 4 * 100
    y, _ = up.update(torch.randn(2, 1000), up.init(2, 1000), _ctx(2))
    assert y.shape == (2, 100)


def test_b_larger_than_d_is_refused_at_init() -> None:
    for piece in (sketch_uplink("gaussian", 9000, 0),):
        with pytest.raises(ScenarioError) as info:
            piece.init(10, 7850)
        assert str(info.value) == ("algorithm.compress.b: must be 1 <= b <= d (d = 7850), "
                                   "got 9000")
    with pytest.raises(ScenarioError, match=r"^algorithm\.compress\.b: must be 1 <= b <= d"):
        desketch_server("srht", 9000, 0).init(7850)


@pytest.mark.parametrize(("make", "key"), [
    (lambda: sketch_uplink("dct", 10, 0), "algorithm.compress.kind"),
    (lambda: sketch_uplink("gaussian", 0, 0), "algorithm.compress.b"),
    (lambda: desketch_server("srht", 1.5, 0), "algorithm.compress.b"),
    (lambda: sketch_uplink("srht", 10, -1), "algorithm.compress.seed"),
    (lambda: sketch_uplink("countsketch", 10, 0, rows=11), "algorithm.compress.rows"),
    (lambda: desketch_server("countsketch", 10, 0, rows=0), "algorithm.compress.rows"),
    (lambda: fetchsgd_uplink(0, 10, 0), "algorithm.compress.rows"),
    (lambda: fetchsgd_server(5, 0, 3, 0), "algorithm.compress.cols"),
    (lambda: fetchsgd_server(5, 10, 0, 0), "algorithm.compress.k"),
    (lambda: fetchsgd_server(5, 10, 3, 0, rho=1.0), "algorithm.compress.rho"),
    (lambda: fetchsgd_server(5, 10, 3, 0, error_update="reset"),
     "algorithm.compress.error_update"),
    (lambda: topk_uplink(0), "algorithm.compress.k"),
    (lambda: topk_uplink(True), "algorithm.compress.k"),
    (lambda: topk_uplink(10).init(3, 5), "algorithm.compress.k"),
    (lambda: fetchsgd_server(5, 10, 60, 0).init(55), "algorithm.compress.k"),
    (lambda: fetchsgd_server(5, 20, 6, 0).init(55), "algorithm.compress.cols"),
    (lambda: fetchsgd_uplink(5, 20, 0).init(3, 55), "algorithm.compress.cols"),
])
def test_bad_parameters_name_their_key(make, key: str) -> None:
    with pytest.raises(ScenarioError) as info:
        make()
    assert info.value.key == key
    assert "\n" not in str(info.value)


# -- FetchSGD ---------------------------------------------------------------------------------


def _fetch(d: int, rows: int, cols: int, k: int, rho: float = 0.0, seed: int = 5,
           error_update: str = "subtract"):
    up = fetchsgd_uplink(rows, cols, seed)
    server = fetchsgd_server(rows, cols, k, seed, rho=rho, error_update=error_update)
    return up, up.init(4, d), server, server.init(d)


def _fetch_round(up, s_up, server, s_srv, u: torch.Tensor, step: int):
    ctx = _ctx(u.shape[0], step)
    y, s_up = up.update(u, s_up, ctx)
    delta, s_srv = server.update(y.mean(dim=0), s_srv, ctx)
    return delta, s_up, s_srv


@pytest.mark.parametrize("error_update", ["subtract", "zero"])
def test_fetchsgd_recovers_a_sparse_gradient(error_update: str) -> None:
    """Clients whose mean update is 5-sparse: the first Delta is that update, exactly."""
    d = 2000
    up, s_up, server, s_srv = _fetch(d, rows=5, cols=400, k=5, error_update=error_update)
    g = torch.zeros(d, dtype=F64)
    g[[3, 70, 512, 1000, 1999]] = torch.tensor([2.0, -1.5, 4.0, 0.75, -3.0], dtype=F64)
    noise = torch.randn(d, dtype=F64)
    u = torch.stack([g + noise, g - noise, g + 2 * noise, g - 2 * noise])  # mean g
    delta, s_up, s_srv = _fetch_round(up, s_up, server, s_srv, u, 0)
    assert torch.allclose(delta, g, atol=1e-9)
    assert set(s_srv.sent.tolist()) == {3, 70, 512, 1000, 1999}
    assert s_srv.error.abs().max().item() < 1e-9  # everything accumulated was sent
    assert up.nbytes(d) == 4 * 2000 and server.nbytes(d) == 8 * 5


def test_fetchsgd_error_accumulation_sends_small_coordinates_eventually() -> None:
    """g = three large coordinates + one small one, k = 3: the small one waits in S_e until it
    outgrows a large one (round 27: 27 * 0.3 = 8.1 > 8), and what is sent tracks T g."""
    d = 1000
    up, s_up, server, s_srv = _fetch(d, rows=5, cols=100, k=3)
    op = CountSketch(d, 500, 5, rows=5)
    g = torch.zeros(d, dtype=F64)
    g[[10, 20, 30]] = torch.tensor([10.0, 9.0, 8.0], dtype=F64)
    g[400] = 0.3
    u = g.expand(2, d).clone()
    sent_total = torch.zeros(d, dtype=F64)
    first_small = None
    rounds = 60
    for t in range(rounds):
        delta, s_up, s_srv = _fetch_round(up, s_up, server, s_srv, u, t)
        assert (delta != 0).sum().item() <= 3
        if delta[400] != 0 and first_small is None:
            first_small = t + 1
        sent_total += delta
    assert first_small == 27
    # subtract variant, rho = 0: S_e is exactly the sketch of what was accumulated, not sent
    assert torch.allclose(s_srv.error, op.sketch(rounds * g - sent_total), atol=1e-9)
    assert (sent_total - rounds * g).abs().max().item() <= 10.0  # at most about one round late
    assert sent_total[400].item() > 0.5 * rounds * 0.3


def test_fetchsgd_momentum_is_stopped_where_delta_was_sent() -> None:
    """rho = 0.5 on a constant sparse g: without momentum stopping round 2 would send
    (1 + rho) g; with it, the sent coordinates restart from g."""
    d = 500
    up, s_up, server, s_srv = _fetch(d, rows=5, cols=50, k=2, rho=0.5)
    g = torch.zeros(d, dtype=F64)
    g[[7, 300]] = torch.tensor([1.0, -2.0], dtype=F64)
    u = g.expand(3, d).clone()
    d1, s_up, s_srv = _fetch_round(up, s_up, server, s_srv, u, 0)
    d2, s_up, s_srv = _fetch_round(up, s_up, server, s_srv, u, 1)
    assert torch.allclose(d1, g, atol=1e-12) and torch.allclose(d2, g, atol=1e-12)
    assert s_srv.momentum.abs().max().item() < 1e-12


def test_fetchsgd_momentum_accumulates_unsent_coordinates() -> None:
    """A coordinate never sent (k = 1 and a larger one) accumulates momentum:
    S_e after t rounds holds sum_{s<=t} sum_{j<s} rho^j g = (rho geometric) for it."""
    d, rho = 300, 0.5
    up, s_up, server, s_srv = _fetch(d, rows=5, cols=60, k=1, rho=rho)
    op = CountSketch(d, 300, 5, rows=5)
    g = torch.zeros(d, dtype=F64)
    g[0], g[1] = 100.0, 0.01
    u = g.expand(1, d).clone()
    expected_e = 0.0
    momentum = 0.0
    for t in range(5):
        _, s_up, s_srv = _fetch_round(up, s_up, server, s_srv, u, t)
        momentum = rho * momentum + 0.01
        expected_e += momentum
    est = op.median_estimate(s_srv.error)
    assert est[1].item() == pytest.approx(expected_e, rel=1e-9)


def test_fetchsgd_uplink_is_a_fixed_count_sketch() -> None:
    d = 400
    up = fetchsgd_uplink(3, 40, 9)
    u = torch.randn(2, d, dtype=F64)
    y0, st = up.update(u, up.init(2, d), _ctx(2, 0))
    y1, _ = up.update(u, st, _ctx(2, 7))
    assert torch.equal(y0, y1)  # the same operator every round (state lives in its space)
    assert torch.allclose(y0, CountSketch(d, 120, 9, rows=3).sketch(u), atol=1e-12)


# -- top-k with error feedback ----------------------------------------------------------------


def test_topk_sends_the_k_largest_and_keeps_the_rest() -> None:
    k = 2
    stage = topk_uplink(k)
    state = stage.init(3, 5)
    u = torch.tensor([[1.0, -5.0, 0.5, 3.0, 0.0], [0.1, 0.2, 0.3, 0.4, -0.5]])
    sent, state = stage.update(u, state, _ctx(2, senders=[2, 0]))
    assert torch.equal(sent, torch.tensor([[0.0, -5.0, 0.0, 3.0, 0.0],
                                           [0.0, 0.0, 0.0, 0.4, -0.5]]))
    assert torch.equal(state[2], torch.tensor([1.0, 0.0, 0.5, 0.0, 0.0]))
    assert torch.equal(state[0], torch.tensor([0.1, 0.2, 0.3, 0.0, 0.0]))
    assert torch.equal(state[1], torch.zeros(5))
    # client 2 again: its kept error joins the new update
    sent, state = stage.update(torch.tensor([[0.6, 0.0, 0.0, 0.0, 0.0]]), state,
                               _ctx(1, senders=[2]))
    assert torch.equal(sent, torch.tensor([[1.6, 0.0, 0.5, 0.0, 0.0]]))
    assert stage.nbytes(5) == 16 and topk_uplink(100).nbytes(7850) == 800


@SETTINGS
@given(n=st.integers(1, 6), d=st.integers(1, 30), rounds=st.integers(1, 5),
       data=st.data())
def test_topk_error_feedback_invariant(n: int, d: int, rounds: int, data) -> None:
    """sum of everything sent + the residual memory == sum of every input (nothing lost)."""
    k = data.draw(st.integers(1, d))
    stage = topk_uplink(k)
    state = stage.init(n, d)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    total_in = torch.zeros(n, d, dtype=F64)
    total_out = torch.zeros(n, d, dtype=F64)
    for _ in range(rounds):
        senders = torch.randperm(n, generator=g)[: data.draw(st.integers(1, n))]
        u = torch.randn(len(senders), d, generator=g, dtype=F64)
        sent, state = stage.update(u, state, _ctx(len(senders), senders=senders))
        assert ((sent != 0).sum(dim=1) <= k).all()
        total_in[senders] += u
        total_out[senders] += sent
    assert torch.allclose(total_out + state, total_in, atol=1e-12)


def test_round_operator_is_built_once_and_released(monkeypatch: pytest.MonkeyPatch) -> None:
    """The uplink builds round t's operator, the server reuses it and drops it."""
    import fedsim.privacy.compress as comp

    built: list[int] = []
    real = comp.make_sketch

    def counting(kind, d, b, seed, rows=5):
        built.append(seed)
        return real(kind, d, b, seed, rows=rows)

    monkeypatch.setattr(comp, "make_sketch", counting)
    monkeypatch.setattr(comp, "_round_cache", type(comp._round_cache)())
    d, b, m = 120, 12, 4
    up, down = sketch_uplink("srht", b, 5), desketch_server("srht", b, 5)
    s_up, s_down = up.init(m, d), down.init(d)
    u = torch.randn(m, d, dtype=F64)
    for step in (0, 1):
        y, s_up = up.update(u, s_up, _ctx(m, step))
        y2, s_up = up.update(u, s_up, _ctx(m, step))  # a second batch of the same round
        assert torch.equal(y, y2)
        out, s_down = down.update(y.mean(dim=0), s_down, _ctx(m, step))
        op = make_sketch("srht", d, b, round_seed(5, step))
        assert torch.allclose(out, op.desketch(op.sketch(u.mean(dim=0))), atol=1e-10)
    assert len(built) == 2  # once per round
    assert len(comp._round_cache) == 0  # released by the server stage
    out_again, _ = down.update(y.mean(dim=0), s_down, _ctx(m, 1))  # rebuilt: same result
    assert torch.equal(out_again, out)
