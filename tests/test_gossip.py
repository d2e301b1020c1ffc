"""Gossip averaging: invariants, exactness of batching, golden values and measured rates."""

from __future__ import annotations

import functools
import math

import networkx as nx
import numpy as np
import pytest
import torch
from helpers import connected_graphs
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.decentralized import (
    accelerated_gossip,
    consensus_distance,
    fit_rate,
    measured_rate,
    randomized_gossip,
    sync_gossip,
)
from fedsim.network.gossip_events import EdgeEvents, poisson_edge_events
from fedsim.network.gossip_moments import second_moment_rates
from fedsim.network.mixing import metropolis_weights
from fedsim.network.spectral import accelerated_parameters, predicted_rates
from fedsim.network.topology import complete, ring, torus
from fedsim.seeding import numpy_rng


def _events(G: nx.Graph, t_end: float, seed: int = 0, rates=1.0) -> EdgeEvents:
    return poisson_edge_events(G, rates, t_end, numpy_rng(seed, "network/gossip"))


def _states(n: int, d: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(numpy_rng(seed, "gossip/init").standard_normal((n, d)))


def _hand_events(pairs: list[tuple[int, int]], times: list[float], t_end: float, n: int):
    return EdgeEvents(
        np.asarray(times, dtype=np.float64),
        np.asarray([min(p) for p in pairs], dtype=np.int64),
        np.asarray([max(p) for p in pairs], dtype=np.int64),
        float(t_end),
        n,
    )


# --------------------------------------------------------------------------- invariants


@settings(max_examples=40, deadline=None)
@given(connected_graphs(), st.integers(0, 2**16), st.booleans())
def test_every_variant_preserves_the_average(G: nx.Graph, seed: int, varied: bool) -> None:
    n = G.number_of_nodes()
    rng = np.random.default_rng(seed)
    rates = {e: float(rng.uniform(0.2, 5.0)) for e in G.edges} if varied else 1.0
    x = torch.as_tensor(rng.standard_normal((n, 3)) * 10.0)
    mean = x.mean(dim=0)
    events = _events(G, t_end=8.0, seed=seed, rates=rates)
    eta, alpha = accelerated_parameters(G, rates)
    results = {
        "sync": sync_gossip(x, metropolis_weights(G), steps=25).x,
        "randomized": randomized_gossip(x, events).x,
        "accelerated": accelerated_gossip(x, events, eta, alpha).x,
    }
    for name, y in results.items():
        torch.testing.assert_close(y.mean(dim=0), mean, rtol=0, atol=1e-12, msg=name)
    acc = accelerated_gossip(x, events, eta, alpha, trace_times=[1.0, 4.0])
    torch.testing.assert_close(acc.x_tilde.mean(dim=0), mean, rtol=0, atol=1e-12)


@pytest.mark.parametrize("G", [ring(12), torus(4, 5), complete(9)], ids=lambda G: G.graph["name"])
def test_batched_equals_one_by_one(G: nx.Graph) -> None:
    x = _states(G.number_of_nodes(), d=4, seed=1)
    events = _events(G, t_end=30.0, seed=2)
    eta, alpha = accelerated_parameters(G)
    times = [0.0, 3.3, 10.0, 29.0]
    ref_r = randomized_gossip(x, events, times, batching="events")
    ref_a = accelerated_gossip(x, events, eta, alpha, times, batching="events")
    for how in ("runs", "levels"):
        r = randomized_gossip(x, events, times, batching=how)
        a = accelerated_gossip(x, events, eta, alpha, times, batching=how)
        assert torch.equal(r.x, ref_r.x) and torch.equal(r.trace, ref_r.trace), how
        assert torch.equal(a.x, ref_a.x) and torch.equal(a.x_tilde, ref_a.x_tilde), how
        assert torch.equal(a.trace, ref_a.trace), how


def _reference_accelerated(x: np.ndarray, ev: EdgeEvents, eta: float, alpha: float):
    """Literal per-event transcription of the pseudo-code (numpy, one event at a time)."""
    x, xt = x.copy(), x.copy()
    last = np.zeros(len(x))

    def mix(v: int, t: float) -> None:
        m = (x[v] + xt[v]) / 2
        h = (x[v] - xt[v]) / 2 * math.exp(-2 * eta * (t - last[v]))
        x[v], xt[v], last[v] = m + h, m - h, t

    for t, i, j in zip(ev.times.tolist(), ev.i.tolist(), ev.j.tolist(), strict=True):
        mix(i, t)
        mix(j, t)
        d = x[i] - x[j]
        xt[i] -= alpha * d
        xt[j] += alpha * d
        x[i] = x[j] = (x[i] + x[j]) / 2
    for v in range(len(x)):
        mix(v, ev.t_end)
    return x, xt


def test_accelerated_matches_a_literal_transcription() -> None:
    G = nx.random_regular_graph(3, 10, seed=7)
    x = _states(10, d=2, seed=3)
    events = _events(G, t_end=15.0, seed=4)
    eta, alpha = accelerated_parameters(G)
    got = accelerated_gossip(x, events, eta, alpha)
    want_x, want_xt = _reference_accelerated(x.numpy(), events, eta, alpha)
    np.testing.assert_allclose(got.x.numpy(), want_x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.x_tilde.numpy(), want_xt, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- golden values


def test_randomized_golden_path() -> None:
    x = torch.tensor([[0.0], [3.0], [6.0]], dtype=torch.float64)
    ev = _hand_events([(0, 1), (1, 2), (0, 1)], [1.0, 2.0, 3.0], 4.0, 3)
    r = randomized_gossip(x, ev, trace_times=[0.0, 1.5, 4.0])
    assert r.x.flatten().tolist() == [2.625, 2.625, 3.75]
    # distances at t = 0 (x), 1.5 ([1.5, 1.5, 6]) and 4 (the final x)
    assert r.trace.tolist() == pytest.approx([18.0, 13.5, 2 * 0.375**2 + 0.75**2])


def test_accelerated_golden_two_nodes() -> None:
    eta, alpha = 0.5, 0.25
    x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    ev = _hand_events([(0, 1)], [1.0], 2.0, 2)
    r = accelerated_gossip(x, ev, eta, alpha, trace_times=[0.5, 1.0])
    e = math.exp(-2 * eta * 1.0)  # both nodes mix for 1 unit after the event
    # at t=1: x~ = (0.75, 0.25), x = (0.5, 0.5); then each pair mixes toward its midpoint
    assert r.x.flatten().tolist() == pytest.approx([0.625 - 0.125 * e, 0.375 + 0.125 * e])
    assert r.x_tilde.flatten().tolist() == pytest.approx([0.625 + 0.125 * e, 0.375 - 0.125 * e])
    assert r.trace.tolist() == pytest.approx([0.5, 0.0])  # before, then right at the event


def test_sync_gossip_is_a_matrix_power() -> None:
    G = torus(3, 4)
    W = metropolis_weights(G)
    x = _states(12, d=2)
    r = sync_gossip(x, W, steps=7, trace_steps=[0, 3, 7])
    want = np.linalg.matrix_power(W, 7) @ x.numpy()
    np.testing.assert_allclose(r.x.numpy(), want, rtol=0, atol=1e-12)
    assert r.trace[0] == consensus_distance(x)
    assert r.trace[-1] == pytest.approx(float(consensus_distance(r.x)))


def test_accelerated_on_the_complete_graph_is_plain_gossip() -> None:
    """alpha_tilde = 1/2 on K_n: x~_i - alpha d = (x_i + x_j)/2, so x~ stays equal to x."""
    G = complete(12)
    eta, alpha = accelerated_parameters(G)
    assert alpha == pytest.approx(0.5)
    x = _states(12)
    ev = _events(G, 1.0)
    a, r = accelerated_gossip(x, ev, eta, alpha), randomized_gossip(x, ev)
    torch.testing.assert_close(a.x, r.x, rtol=0, atol=1e-12)


def test_user_errors_are_clear() -> None:
    G = ring(5)
    ev = _events(G, 2.0)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        randomized_gossip(torch.zeros(4, 1, dtype=torch.float64), ev)
    with pytest.raises(ValueError, match="non-decreasing"):
        randomized_gossip(torch.zeros(5, 1, dtype=torch.float64), ev, [1.0, 0.5])
    with pytest.raises(ValueError, match=r"lie in \[0, t_end"):
        accelerated_gossip(torch.zeros(5, 1, dtype=torch.float64), ev, 0.1, 1.0, [3.0])
    with pytest.raises(ValueError, match="allowed: levels, runs, events"):
        randomized_gossip(torch.zeros(5, 1, dtype=torch.float64), ev, batching="fast")
    with pytest.raises(ValueError, match="fewer than 3"):
        fit_rate(np.arange(3.0), np.ones(3), t_min=5.0)


# --------------------------------------------------------------------------- rates


def test_fit_rate_is_scale_free_hand_computed() -> None:
    # trace = C exp(-2 t): rate 2 whatever C, even when every value is below the floor
    t = np.arange(11.0)
    assert fit_rate(t, 1e-30 * np.exp(-2.0 * t)) == pytest.approx(2.0, rel=1e-12)
    assert fit_rate(t, 1e30 * np.exp(-2.0 * t)) == pytest.approx(2.0, rel=1e-12)
    # float precision reached at 1e-25 of the start: the floor (1e-20 of trace[0]) keeps
    # t = 0..23 (exp(-46) = 1.1e-20) and drops the plateau t = 24..30, so the rate is exact
    t = np.arange(31.0)
    plateau = 1e10 * np.maximum(np.exp(-2.0 * t), 1e-25)
    assert fit_rate(t, plateau) == pytest.approx(2.0, rel=1e-12)


def test_measured_rate_averages_normalised_traces_hand_computed() -> None:
    # K_2, Boyd gossip: the first event averages both nodes exactly, so seed s's trace is
    # c_s = (x0 - x1)^2 / 2 before its first event time T_s and 0 after. measured_rate
    # divides each trace by its start before averaging: the average is the fraction of
    # seeds with T_s > t, and the zeros fall below the floor.
    G = nx.path_graph(2)
    seeds, t_end, t_min = tuple(range(6)), 1.8, 0.0
    times = np.linspace(0.0, t_end, 19)
    first = np.array([_events(G, t_end, seed=s).times[0] for s in seeds])
    # T_s = 1.261, 0.512, 0.266, 1.370, 0.793, 1.757 (numpy_rng(s, "network/gossip"))
    np.testing.assert_allclose(first, [1.2611, 0.5123, 0.2660, 1.3704, 0.7929, 1.7569],
                               atol=1e-4)
    alive = (first[None, :] > times[:, None]).mean(axis=1)  # 1, ..., 5/6, ..., 1/6, 0
    keep = alive > 0
    expected = -np.polyfit(times[keep], np.log(alive[keep]), 1)[0]
    got = measured_rate(G, "boyd", t_end=t_end, t_min=t_min, seeds=seeds, dim=1,
                        num_points=19)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(1.16055, abs=1e-5)
    # averaging the raw traces (weights c_s, from 0.065 to 1.94) would give another rate
    c = np.array([np.diff(_states(2, d=1, seed=s)[:, 0].numpy())[0] ** 2 / 2 for s in seeds])
    raw = (c[None, :] * (first[None, :] > times[:, None])).sum(axis=1)
    weighted = -np.polyfit(times[keep], np.log(raw[keep] / raw[0]), 1)[0]
    assert abs(weighted - expected) > 0.1


# Measured: the rate of the seed-averaged trace (an estimate of E||x - mean||^2) on windows
# in units of the guaranteed rates p: Boyd on [1/p, 3/p] after a burn-in of 1/p (the second
# ring mode is 4x faster, so it is gone by then); accelerated on [3/eta, 12/eta] (its other
# modes decay barely faster than its slowest one: a longer burn-in), 8 seeds. Expected:
# the exact mean-square rates of fedsim.network.gossip_moments (on K_64 its closed form,
# n/2 for both).

GRAPHS = {
    "ring32": ring(32),
    "ring64": ring(64),
    "ring128": ring(128),
    "torus8x8": torus(8, 8),
    "complete64": complete(64),
}


@functools.cache
def _rates(name: str) -> tuple[float, float]:
    G = GRAPHS[name]
    p = predicted_rates(G)
    pb, pa = p["boyd"], p["accelerated"]
    if name == "complete64":  # the same process: fit both on the same window and seeds
        window = dict(t_end=12 / pb, t_min=2 / pb, seeds=tuple(range(8)))
        return measured_rate(G, "boyd", **window), measured_rate(G, "accelerated", **window)
    boyd = measured_rate(G, "boyd", t_end=3 / pb, t_min=1 / pb, seeds=tuple(range(8)))
    acc = measured_rate(G, "accelerated", t_end=12 / pa, t_min=3 / pa, seeds=tuple(range(8)))
    return boyd, acc


@functools.cache
def _exact(name: str) -> tuple[float, float]:
    r = second_moment_rates(GRAPHS[name])
    return r["boyd"], r["accelerated"]


def _ratio(name: str) -> float:
    boyd, acc = _rates(name)
    return acc / boyd


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_measured_rates_match_the_exact_mean_square_rates(name: str) -> None:
    for measured, exact in zip(_rates(name), _exact(name), strict=True):
        assert measured == pytest.approx(exact, rel=0.08)


def test_cycle64_acceleration_is_large() -> None:
    # exact 11.78; the guaranteed rates' ratio eta / (lambda_2 / 2) is 14.5
    assert _ratio("ring64") >= 5.0
    assert _ratio("ring64") == pytest.approx(11.78, rel=0.1)


def test_torus_acceleration() -> None:
    # exact 1.94, not the guarantees' 2.63: Boyd runs at lambda_2, 2x its guarantee, the
    # accelerated method at 1.46 eta (docs/gossip.md, "Against the numbers")
    assert _ratio("torus8x8") == pytest.approx(1.94, rel=0.1)


def test_cycle_acceleration_grows_linearly_with_n() -> None:
    r32, r64, r128 = _ratio("ring32"), _ratio("ring64"), _ratio("ring128")
    assert r32 < r64 < r128
    assert 3.0 <= r128 / r32 <= 5.5  # exact 4.44; linear growth gives 4


def test_no_gain_on_the_complete_graph() -> None:
    assert _ratio("complete64") < 1.5
