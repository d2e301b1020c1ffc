"""Metropolis mixing matrices and spectral helpers."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from helpers import connected_graphs
from hypothesis import given, settings

from fedsim.network.mixing import (
    algebraic_connectivity,
    is_doubly_stochastic,
    laplacian,
    metropolis_csr,
    metropolis_weights,
    second_largest_eigenvalue_modulus,
    spectral_gap,
)
from fedsim.network.topology import build_topology

BUILDER_CASES = [
    ("ring", {"n": 7}),
    ("torus", {"rows": 3, "cols": 4}),
    ("grid", {"rows": 2, "cols": 5}),
    ("hypercube", {"dim": 3}),
    ("complete", {"n": 6}),
    ("star", {"n": 9}),
    ("erdos_renyi", {"n": 15, "p": 0.3}),
    ("random_regular", {"n": 12, "degree": 3}),
    ("exponential", {"n": 13}),
]


def assert_valid_mixing(W: np.ndarray, G: nx.Graph) -> None:
    n = G.number_of_nodes()
    assert W.shape == (n, n)
    np.testing.assert_allclose(W, W.T, atol=0)
    assert (W >= 0).all()
    assert is_doubly_stochastic(W)
    off = ~np.eye(n, dtype=bool)
    adj = nx.to_numpy_array(G, nodelist=range(n)) > 0
    assert not (W[off & ~adj] != 0).any(), "weight on a non-edge"
    assert (W[adj] > 0).all()
    assert (np.diag(W) > 0).all()


@pytest.mark.parametrize(("name", "params"), BUILDER_CASES)
def test_metropolis_valid_for_every_builder(name: str, params: dict) -> None:
    G = build_topology(name, params, seed=3)
    W = metropolis_weights(G)
    assert_valid_mixing(W, G)
    assert 0 < spectral_gap(W) <= 1  # connected -> positive gap


@settings(max_examples=60, deadline=None)
@given(connected_graphs(max_nodes=30))
def test_metropolis_valid_for_random_connected_graphs(G: nx.Graph) -> None:
    W = metropolis_weights(G)
    assert_valid_mixing(W, G)
    gap = spectral_gap(W)
    assert 0 < gap <= 1
    assert math.isclose(gap, 1 - second_largest_eigenvalue_modulus(W))
    # averaging is preserved and gossip converges toward the mean
    x = np.arange(G.number_of_nodes(), dtype=float)
    assert math.isclose((W @ x).mean(), x.mean(), abs_tol=1e-9)
    assert algebraic_connectivity(G) > 0


@pytest.mark.parametrize("n", [3, 4, 5, 8, 11, 32])
def test_ring_spectral_gap_closed_form(n: int) -> None:
    W = metropolis_weights(build_topology("ring", {"n": n}))
    assert np.allclose(W[0, [n - 1, 0, 1]], 1 / 3)
    eig = [1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n) for k in range(1, n)]
    expected = 1 - max(abs(e) for e in eig)
    assert spectral_gap(W) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_complete_graph_is_exact_averaging(n: int) -> None:
    W = metropolis_weights(build_topology("complete", {"n": n}))
    np.testing.assert_allclose(W, np.full((n, n), 1 / n), atol=1e-15)
    assert spectral_gap(W) == pytest.approx(1.0, abs=1e-12)
    assert second_largest_eigenvalue_modulus(W) == pytest.approx(0.0, abs=1e-12)


def test_star_weights_by_hand() -> None:
    W = metropolis_weights(build_topology("star", {"n": 4}))  # hub degree 3 -> 1/4 per link
    assert np.allclose(W[0], [0.25, 0.25, 0.25, 0.25])
    assert np.allclose(W[1], [0.25, 0.75, 0, 0])


def test_disconnected_graph_has_zero_gap() -> None:
    G = nx.Graph([(0, 1), (2, 3)])
    W = metropolis_weights(G)
    assert is_doubly_stochastic(W)
    assert spectral_gap(W) == pytest.approx(0.0, abs=1e-12)
    assert algebraic_connectivity(G) == pytest.approx(0.0, abs=1e-12)


def test_laplacian_and_algebraic_connectivity() -> None:
    n = 8
    G = build_topology("ring", {"n": n})
    L = laplacian(G)
    np.testing.assert_allclose(L, nx.laplacian_matrix(G, nodelist=range(n)).toarray())
    assert algebraic_connectivity(G) == pytest.approx(2 - 2 * math.cos(2 * math.pi / n))
    assert algebraic_connectivity(build_topology("complete", {"n": 5})) == pytest.approx(5.0)
    nx.set_edge_attributes(G, 3.0, "rate")
    np.testing.assert_allclose(laplacian(G, weight="rate"), 3 * L)
    assert algebraic_connectivity(G, weight="rate") == pytest.approx(
        3 * (2 - 2 * math.cos(2 * math.pi / n))
    )


def test_is_doubly_stochastic_rejects() -> None:
    assert not is_doubly_stochastic(np.array([[0.5, 0.5], [0.2, 0.8]]))  # columns off
    assert not is_doubly_stochastic(np.array([[1.5, -0.5], [-0.5, 1.5]]))  # negative
    assert not is_doubly_stochastic(np.ones((2, 3)) / 3)  # not square
    assert is_doubly_stochastic(np.eye(3))


def test_spectral_helpers_reject_non_symmetric() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        spectral_gap(np.array([[0.5, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError):
        metropolis_weights(nx.DiGraph([(0, 1)]))


@settings(max_examples=40, deadline=None)
@given(connected_graphs(max_nodes=30))
def test_sparse_metropolis_holds_the_dense_weights(G: nx.Graph) -> None:
    """``metropolis_csr`` (D-SGD beyond ``DENSE_MAX_NODES``) is the dense matrix's CSR form."""
    indptr, indices, data = metropolis_csr(G)
    n = G.number_of_nodes()
    dense = np.zeros((n, n))
    for i in range(n):
        cols = indices[indptr[i]:indptr[i + 1]]
        assert list(cols) == sorted(cols)  # CSR: increasing columns within a row
        dense[i, cols] = data[indptr[i]:indptr[i + 1]]
    np.testing.assert_allclose(dense, metropolis_weights(G), rtol=0, atol=1e-15)
    edges = sum(1 for u, v in G.edges if u != v)
    assert len(data) == n + 2 * edges  # no stored zeros off the graph
