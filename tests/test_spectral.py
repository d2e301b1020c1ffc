"""Spectral helpers of gossip and the Poisson edge-event stream (numpy side, no torch)."""

from __future__ import annotations

import math
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest

from fedsim.network.gossip_events import (
    EdgeEvents,
    dependency_levels,
    disjoint_runs,
    edge_rates,
    elapsed_times,
    last_event_times,
    matchings,
    poisson_edge_events,
    previous_event,
    schedule,
)
from fedsim.network.mixing import laplacian
from fedsim.network.spectral import (
    accelerated_parameters,
    chi1,
    chi2,
    closed_form,
    effective_resistances,
    lambda2,
    mean_dynamics_rates,
    predicted_rates,
    rate_laplacian,
)
from fedsim.network.topology import build_topology, complete, ring, torus
from fedsim.seeding import numpy_rng

# --------------------------------------------------------------------------- spectral


@pytest.mark.parametrize("n", [3, 5, 16, 64])
def test_ring_closed_forms(n: int) -> None:
    G = ring(n)
    assert lambda2(G) == pytest.approx(2 - 2 * math.cos(2 * math.pi / n), rel=1e-12)
    R = effective_resistances(G)
    assert len(R) == n
    for r in R.values():  # one edge in parallel with a path of n - 1 edges
        assert r == pytest.approx((n - 1) / n, rel=1e-12)
    assert chi1(G) == pytest.approx(1 / (2 - 2 * math.cos(2 * math.pi / n)), rel=1e-12)
    assert chi2(G) == pytest.approx((n - 1) / (2 * n), rel=1e-12)


def test_unit_rate_laplacian_is_the_combinatorial_one() -> None:
    G = torus(4, 5)
    L = rate_laplacian(G)
    np.testing.assert_array_equal(L, laplacian(G))
    # the ordered-pairs sum: 1/2 sum_{i != j, ij in E} p_ij (e_i - e_j)(e_i - e_j)^T
    n = G.number_of_nodes()
    M = np.zeros((n, n))
    for i, j in list(G.edges) + [(j, i) for i, j in G.edges]:
        e = np.zeros(n)
        e[i], e[j] = 1.0, -1.0
        M += 0.5 * np.outer(e, e)
    np.testing.assert_allclose(L, M, atol=1e-12)


def test_rates_forms_agree_and_scale() -> None:
    G = ring(8)
    for u, v in G.edges:
        G.edges[u, v]["p"] = 2.0
    doubled = {(u, v): 2.0 for u, v in G.edges}
    np.testing.assert_array_equal(rate_laplacian(G, "p"), 2 * rate_laplacian(G))
    np.testing.assert_array_equal(rate_laplacian(G, doubled), rate_laplacian(G, 2.0))
    eta1, a1 = accelerated_parameters(G, 1.0)
    eta2, a2 = accelerated_parameters(G, 2.0)
    # doubling every clock is a change of time unit: rates double, alpha_tilde does not move
    assert eta2 == pytest.approx(2 * eta1, rel=1e-12)
    assert a2 == pytest.approx(a1, rel=1e-12)
    assert lambda2(G, 2.0) == pytest.approx(2 * lambda2(G), rel=1e-12)


def test_complete_graph_closed_forms() -> None:
    n = 10
    G = complete(n)
    assert lambda2(G) == pytest.approx(n, rel=1e-12)
    assert all(r == pytest.approx(2 / n, rel=1e-12) for r in effective_resistances(G).values())
    eta, alpha = accelerated_parameters(G)
    assert eta == pytest.approx(n / 2, rel=1e-12)  # = lambda_2 / 2: no acceleration possible
    assert alpha == pytest.approx(0.5, rel=1e-12)


def test_effective_resistances_match_networkx_and_foster() -> None:
    G = nx.random_regular_graph(3, 12, seed=4)
    rng = np.random.default_rng(0)
    rates = {e: float(rng.uniform(0.5, 2.0)) for e in G.edges}
    R = effective_resistances(G, rates)
    H = nx.Graph()
    H.add_weighted_edges_from([(u, v, p) for (u, v), p in rates.items()])
    for u, v in G.edges:
        want = nx.resistance_distance(H, u, v, weight="weight", invert_weight=False)
        assert R[tuple(sorted((u, v)))] == pytest.approx(want, rel=1e-9)
    # Foster: sum over edges of conductance x resistance = n - 1
    foster = sum(p * R[tuple(sorted(e))] for e, p in rates.items())
    assert foster == pytest.approx(G.number_of_nodes() - 1, rel=1e-10)


def test_accelerated_parameters_and_predictions() -> None:
    G = torus(8, 8)
    c1, c2 = chi1(G), chi2(G)
    eta, alpha = accelerated_parameters(G)
    assert eta == pytest.approx(1 / (2 * math.sqrt(c1 * c2)))
    assert alpha == pytest.approx(0.5 * math.sqrt(c1 / c2))
    assert c2 == pytest.approx(0.5 * 63 / 128)  # edge-transitive: R = (n - 1) / |E|
    p = predicted_rates(G)
    assert p["boyd"] == pytest.approx(lambda2(G) / 2)
    assert p["accelerated"] == pytest.approx(eta)
    assert p["accelerated"] / p["boyd"] == pytest.approx(2.634, abs=1e-3)


@pytest.mark.parametrize(
    "G", [ring(32), ring(64), torus(8, 8), complete(16)], ids=lambda G: G.graph["name"]
)
def test_mean_dynamics_are_critically_damped(G: nx.Graph) -> None:
    """With eta = lambda_2 alpha_tilde, the slowest mean mode decays at exactly eta."""
    p, m = predicted_rates(G), mean_dynamics_rates(G)
    assert m["boyd"] == pytest.approx(2 * p["boyd"], rel=1e-9)
    assert m["accelerated"] == pytest.approx(2 * p["accelerated"], rel=1e-6)


def test_spectral_needs_connected_graph() -> None:
    G = nx.Graph([(0, 1), (2, 3)])
    assert lambda2(G) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="connected"):
        chi1(G)
    with pytest.raises(ValueError, match="rates"):
        edge_rates(ring(4), -1.0)
    with pytest.raises(ValueError, match="no rate"):
        edge_rates(ring(4), {(0, 1): 1.0})


# --------------------------------------------------------------------------- events


def _stream(G: nx.Graph, t_end: float, seed: int = 0, rates=1.0) -> EdgeEvents:
    return poisson_edge_events(G, rates, t_end, numpy_rng(seed, "network/gossip"))


def test_poisson_stream_statistics() -> None:
    G = ring(10)
    rates = {(u, v): (3.0 if u == 0 else 1.0) for u, v in G.edges}  # edges (0,1), (0,9) fast
    t_end = 2000.0
    ev = _stream(G, t_end, rates=rates)
    total = 8 * 1.0 + 2 * 3.0
    assert abs(ev.times.size - total * t_end) < 5 * math.sqrt(total * t_end)
    assert np.all(np.diff(ev.times) >= 0) and ev.times[0] >= 0 and ev.times[-1] <= t_end
    assert np.all(ev.i < ev.j)
    counts = {}
    for a, b in zip(ev.i.tolist(), ev.j.tolist(), strict=True):
        counts[(a, b)] = counts.get((a, b), 0) + 1
    assert set(counts) == {tuple(sorted(e)) for e in G.edges}
    for (a, _b), c in counts.items():
        p = 3.0 if a == 0 else 1.0
        assert abs(c - p * t_end) < 5 * math.sqrt(p * t_end)
    gaps = np.diff(ev.times)
    assert gaps.mean() == pytest.approx(1 / total, rel=0.05)
    assert gaps.std() == pytest.approx(1 / total, rel=0.05)  # exponential: std = mean


def test_stream_is_reproducible_and_seeded() -> None:
    G = torus(3, 3)
    a, b, c = _stream(G, 50.0, 1), _stream(G, 50.0, 1), _stream(G, 50.0, 2)
    np.testing.assert_array_equal(a.times, b.times)
    np.testing.assert_array_equal(a.i, b.i)
    assert a.times.size != c.times.size or not np.array_equal(a.times, c.times)
    assert _stream(G, 0.0).times.size == 0


def _brute_previous(ev: EdgeEvents) -> tuple[list[int], list[int]]:
    last: dict[int, int] = {}
    pi, pj = [], []
    for k, (a, b) in enumerate(zip(ev.i.tolist(), ev.j.tolist(), strict=True)):
        pi.append(last.get(a, -1))
        pj.append(last.get(b, -1))
        last[a] = last[b] = k
    return pi, pj


def test_previous_elapsed_and_last_times_match_brute_force() -> None:
    ev = _stream(ring(6), 20.0, seed=3)
    pi, pj = previous_event(ev)
    bi, bj = _brute_previous(ev)
    assert pi.tolist() == bi and pj.tolist() == bj
    di, dj = elapsed_times(ev)
    t = ev.times
    np.testing.assert_allclose(di, [t[k] - (t[p] if p >= 0 else 0) for k, p in enumerate(bi)])
    np.testing.assert_allclose(dj, [t[k] - (t[p] if p >= 0 else 0) for k, p in enumerate(bj)])
    at = np.array([0.0, 0.5, 3.3, 7.0, 20.0])
    got = last_event_times(ev, at)
    for row, tau in zip(got, at, strict=True):
        for v in range(6):
            touched = t[((ev.i == v) | (ev.j == v)) & (t <= tau)]
            assert row[v] == (touched[-1] if touched.size else 0.0)


@pytest.mark.parametrize("how", ["levels", "runs", "events"])
def test_schedules_are_node_disjoint_and_keep_each_nodes_order(how: str) -> None:
    ev = _stream(torus(4, 4), 30.0, seed=5)
    E = ev.times.size
    cuts = np.array([0, E // 3, E // 2, E])
    order, bounds = schedule(ev, how, cuts)
    assert sorted(order.tolist()) == list(range(E))
    assert set(cuts.tolist()) <= set(bounds.tolist())
    position = np.empty(E, dtype=np.int64)
    position[order] = np.arange(E)
    for c in cuts.tolist():  # nothing crosses a cut
        assert np.all(position[:c] < c) and np.all(position[c:] >= c)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        nodes = np.concatenate((ev.i[order[a:b]], ev.j[order[a:b]]))
        assert np.unique(nodes).size == nodes.size
    batch_of = np.repeat(np.arange(bounds.size - 1), np.diff(bounds))[position]
    for v in range(16):
        mine = np.flatnonzero((ev.i == v) | (ev.j == v))
        assert np.all(np.diff(batch_of[mine]) > 0)


def test_levels_need_fewer_batches_than_runs() -> None:
    ev = _stream(ring(64), 200.0)
    runs = disjoint_runs(ev)
    _, levels = dependency_levels(ev)
    assert levels.size < runs.size / 2
    m = matchings(ev)
    assert m[0][0] == 0 and m[-1][1] == ev.times.size and len(m) == runs.size - 1


def test_network_side_imports_no_torch() -> None:
    code = (
        "import sys; import fedsim.network.gossip_events, fedsim.network.spectral, "
        "fedsim.network.gossip_moments; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------- closed forms

CLOSED = [("ring", {"n": 7}), ("ring", {"n": 8}), ("torus", {"rows": 3, "cols": 5}),
          ("torus", {"rows": 4, "cols": 4}), ("torus", {"rows": 6, "cols": 3}),
          ("hypercube", {"dim": 1}), ("hypercube", {"dim": 4}), ("complete", {"n": 6})]


@pytest.mark.parametrize(("name", "params"), CLOSED)
def test_closed_forms_match_the_dense_computation(name, params):
    from fedsim.network.mixing import metropolis_weights, spectral_gap

    G = build_topology(name, params)
    cf = closed_form(G)
    lam = np.linalg.eigvalsh(laplacian(G))
    assert cf["family"] == name
    assert cf["lambda2"] == pytest.approx(lam[1], abs=1e-12)
    assert cf["lambda_max"] == pytest.approx(lam[-1], abs=1e-12)
    assert cf["spectral_gap"] == pytest.approx(spectral_gap(metropolis_weights(G)), abs=1e-12)
    assert cf["diameter"] == nx.diameter(G)
    resistances = np.array(list(effective_resistances(G).values()))
    if cf["edge_resistance"] is None:  # a non-square torus: two kinds of edges
        assert np.ptp(resistances) > 1e-3
    else:
        assert resistances == pytest.approx(cf["edge_resistance"], abs=1e-12)


def test_closed_form_checks_the_structure_not_just_the_name():
    G = ring(12)
    H = nx.relabel_nodes(G, {0: 1, 1: 0})  # same name, two nodes swapped: not C_12 in order
    assert closed_form(G) is not None and closed_form(H) is None
    E = G.copy()
    E.remove_edge(0, 1)
    E.add_edge(0, 2)  # same counts, different graph
    assert closed_form(E) is None
    assert closed_form(nx.cycle_graph(12)) is None  # no builder name: not recognised
