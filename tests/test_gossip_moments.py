"""Exact mean-square decay rates of gossip (fedsim.network.gossip_moments)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.network.gossip_events import edge_rates
from fedsim.network.gossip_moments import second_moment_rates, switched_rate
from fedsim.network.spectral import (
    accelerated_parameters,
    lambda2,
    mean_dynamics_rates,
    predicted_rates,
)
from fedsim.network.topology import complete, ring, torus


def _dense_rate(G: nx.Graph, method: str, rates=1.0) -> float:
    """Brute force: the whole generator of Sigma = E[z z^T] as a dense matrix, built event
    by event from the update rules, and its slowest mode on zero-mean symmetric Sigma."""
    u, v, p = edge_rates(G, rates)
    n = G.number_of_nodes()
    k = 1 if method == "boyd" else 2
    N = k * n
    flow = np.zeros((N, N))
    if method != "boyd":
        eta, alpha = accelerated_parameters(G, rates)
        flow[:n, :n] = flow[n:, n:] = -eta * np.eye(n)
        flow[:n, n:] = flow[n:, :n] = eta * np.eye(n)
    jumps = []
    for i, j, pe in zip(u, v, p, strict=True):
        A = np.eye(N)  # the event's update matrix, written from the pseudo-code
        A[[i, i, j, j], [i, j, i, j]] = 0.5  # x_i, x_j <- (x_i + x_j) / 2
        if method != "boyd":  # x~_i -= alpha (x_i - x_j); x~_j += alpha (x_i - x_j)
            A[n + i, [i, j]] += [-alpha, alpha]
            A[n + j, [i, j]] += [alpha, -alpha]
        jumps.append((pe, A))
    eye = np.eye(N)
    gen = np.kron(flow, eye) + np.kron(eye, flow)  # vec(F S + S F^T), row-major vec
    for pe, A in jumps:
        gen += pe * (np.kron(A, A) - np.eye(N * N))
    P = np.kron(np.eye(k), np.eye(n) - 1.0 / n)  # remove the (preserved) averages
    proj = np.kron(P, P)
    vals = np.linalg.eigvals(proj @ gen @ proj)
    vals = vals[np.abs(vals) > 1e-9]  # the projected-out directions give 0
    return float(-vals.real.max())


GRAPHS = [
    nx.path_graph(4),
    nx.cycle_graph(5),
    nx.star_graph(4),
    nx.lollipop_graph(3, 2),
    nx.complete_graph(4),
]


@pytest.mark.parametrize("G", GRAPHS, ids=lambda G: f"{len(G)}n{G.number_of_edges()}e")
@pytest.mark.parametrize("method", ["boyd", "accelerated"])
def test_matches_the_dense_generator(G: nx.Graph, method: str) -> None:
    assert second_moment_rates(G)[method] == pytest.approx(_dense_rate(G, method), rel=1e-7)


@settings(max_examples=15, deadline=None)
@given(st.integers(3, 6), st.integers(0, 2**31 - 1))
def test_matches_the_dense_generator_with_random_rates(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    G = nx.random_labeled_tree(n, seed=seed)
    G.add_edges_from((a, b) for a in range(n) for b in range(a) if rng.random() < 0.3)
    rates = {e: float(rng.uniform(0.2, 3.0)) for e in G.edges}
    got = second_moment_rates(G, rates)
    for method in ("boyd", "accelerated"):
        assert got[method] == pytest.approx(_dense_rate(G, method, rates), rel=1e-6)


def test_closed_forms() -> None:
    # two nodes: the first event reaches consensus, so E||x - mean||^2 = e^{-t}
    assert second_moment_rates(nx.path_graph(2))["boyd"] == pytest.approx(1.0, rel=1e-9)
    # K_n: d/dt E||x - mean||^2 = -1/2 E[x^T L x] = -n/2 E||x - mean||^2, and there the
    # accelerated method is randomized gossip (alpha_tilde = 1/2)
    for n in (3, 8, 16):  # the solver (one rate nudged: no shortcut), then the closed form
        rates = {e: 1.0 for e in complete(n).edges} | {(0, 1): 1.0 + 1e-12}
        r = second_moment_rates(complete(n), rates)
        assert r["boyd"] == pytest.approx(n / 2, rel=1e-9)
        assert r["accelerated"] == pytest.approx(n / 2, rel=1e-9)
        assert second_moment_rates(complete(n), 2.0) == {"boyd": n, "accelerated": n}


@pytest.mark.parametrize("G", [ring(16), ring(64), torus(8, 8)], ids=lambda G: G.graph["name"])
def test_between_the_guarantee_and_the_mean_dynamics(G: nx.Graph) -> None:
    exact, low, high = second_moment_rates(G), predicted_rates(G), mean_dynamics_rates(G)
    for method in ("boyd", "accelerated"):
        assert low[method] < exact[method] <= high[method] * (1 + 1e-9)


def test_golden_ratios() -> None:
    """Accelerated / Boyd mean-square rates: the figures docs/gossip.md quotes."""
    ratio = {}
    for G in (ring(32), ring(64), ring(128), torus(8, 8)):
        r = second_moment_rates(G)
        ratio[G.graph["name"]] = r["accelerated"] / r["boyd"]
        if G.graph["name"].startswith("ring"):  # Boyd sits at the mean dynamics' lambda_2
            assert r["boyd"] == pytest.approx(lambda2(G), rel=2e-3)
    assert ratio["ring(n=32)"] == pytest.approx(5.567, abs=2e-3)
    assert ratio["ring(n=64)"] == pytest.approx(11.78, abs=1e-2)
    assert ratio["ring(n=128)"] == pytest.approx(24.70, abs=1e-2)
    assert ratio["torus(8x8)"] == pytest.approx(1.941, abs=2e-3)


def test_scaling_the_rates_scales_time() -> None:
    G = torus(3, 4)
    one, three = second_moment_rates(G), second_moment_rates(G, 3.0)
    for method in ("boyd", "accelerated"):
        assert three[method] == pytest.approx(3 * one[method], rel=1e-8)


def test_a_non_decaying_system_and_big_graphs_are_refused() -> None:
    with pytest.raises(ValueError, match="does not decay"):  # the flow pumps energy in
        switched_rate(ring(5), [[2.0]], [-0.5], [1.0])
    with pytest.raises(ValueError, match="too large"):
        second_moment_rates(ring(200))
    assert second_moment_rates(complete(64)) == {"boyd": 32.0, "accelerated": 32.0}
    with pytest.raises(ValueError, match="connected"):
        second_moment_rates(nx.Graph([(0, 1), (2, 3)]))


def test_the_issue_parameters_beat_a_factor_two_either_way() -> None:
    """No hidden factor 2: halving or doubling eta or alpha_tilde lowers the exact rate
    on the 64-ring, or makes E||x - mean||^2 grow."""
    G = ring(64)
    eta, alpha = accelerated_parameters(G)

    def rate(fe: float, fa: float) -> float:
        flow = fe * eta * np.array([[-1.0, 1.0], [1.0, -1.0]])
        try:
            return switched_rate(G, flow, [-0.5, -fa * alpha], [1.0, 0.0])
        except ValueError:  # no decay in mean square
            return 0.0

    best = rate(1, 1)
    assert best == pytest.approx(1.621 * eta, rel=1e-3)
    for fe, fa in ((0.5, 1), (2, 1), (1, 0.5), (1, 2)):
        assert rate(fe, fa) < 0.7 * best
    assert rate(1, 2) == 0.0  # diverges
