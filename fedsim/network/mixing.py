"""Mixing matrices for gossip and decentralized SGD, and their spectra (no torch here).

Rows and columns follow ``sorted(G.nodes)``, i.e. node i is row i for the graphs of
:mod:`fedsim.network.topology`.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

# D-SGD mixes with the dense Metropolis matrix up to this many nodes, with its sparse
# CSR form (``metropolis_csr``) beyond: the same weights, summed in another order.
DENSE_MAX_NODES = 2048


def _undirected(G: nx.Graph) -> None:
    if G.is_directed():
        raise ValueError("mixing matrices need an undirected graph")


def _index(G: nx.Graph) -> dict:
    return {v: i for i, v in enumerate(sorted(G.nodes))}


def metropolis_weights(G: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings mixing matrix of an undirected graph.

    ``W_ij = 1 / (1 + max(d_i, d_j))`` on edges, ``W_ii = 1 - sum_j W_ij``, zero elsewhere.
    The ``+1`` keeps every self-weight positive (the "lazy" form), so W is symmetric,
    non-negative and doubly stochastic for any graph, and its spectral gap is positive
    when G is connected. Self loops are ignored.

    Args:
        G: undirected graph on n nodes.

    Returns:
        ``[n, n]`` float64 matrix.

    References:
        Xiao & Boyd, "Fast linear iterations for distributed averaging" (Systems &
        Control Letters, 2004); Boyd, Diaconis, Xiao, "Fastest mixing Markov chain on a
        graph" (SIAM Review, 2004).
    """
    _undirected(G)
    index = _index(G)
    n = len(index)
    deg = np.zeros(n)
    edges = [(index[u], index[v]) for u, v in G.edges if u != v]
    for i, j in edges:
        deg[i] += 1
        deg[j] += 1
    W = np.zeros((n, n))
    if edges:
        rows, cols = np.array(edges).T
        w = 1.0 / (1.0 + np.maximum(deg[rows], deg[cols]))
        W[rows, cols] = w
        W[cols, rows] = w
    W[np.diag_indices(n)] = 1.0 - W.sum(axis=1)
    return W


def metropolis_csr(G: nx.Graph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`metropolis_weights` as a sparse CSR matrix ``(indptr, indices, data)``,
    without the dense ``n x n`` matrix (a 10k-node graph's is 800 MB): row i holds the
    self-weight and one entry per neighbour, columns in increasing order."""
    _undirected(G)
    index = _index(G)
    n = len(index)
    pairs = np.array([(index[u], index[v]) for u, v in G.edges if u != v],
                     dtype=np.int64).reshape(-1, 2)
    deg = np.bincount(pairs.ravel(), minlength=n).astype(np.float64)
    w = 1.0 / (1.0 + np.maximum(deg[pairs[:, 0]], deg[pairs[:, 1]]))
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    off = np.bincount(rows[: 2 * len(w)], weights=np.concatenate([w, w]), minlength=n)
    vals = np.concatenate([w, w, 1.0 - off])
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order], vals[order]


def laplacian(G: nx.Graph, weight: str | None = None) -> np.ndarray:
    """Graph Laplacian ``L = D - A`` (rate-weighted when ``weight`` names an edge attribute).

    Args:
        G: undirected graph on n nodes; self loops are ignored.
        weight: edge attribute used as the rate of a link (missing on an edge -> 1.0);
            ``None`` for the combinatorial Laplacian.

    Returns:
        ``[n, n]`` float64 symmetric positive semi-definite matrix.

    References:
        Fiedler, "Algebraic connectivity of graphs" (Czech. Math. J., 1973).
    """
    _undirected(G)
    index = _index(G)
    n = len(index)
    L = np.zeros((n, n))
    for u, v, data in G.edges(data=True):
        if u == v:
            continue
        i, j = index[u], index[v]
        w = 1.0 if weight is None else float(data.get(weight, 1.0))
        L[i, j] -= w
        L[j, i] -= w
        L[i, i] += w
        L[j, j] += w
    return L


def _symmetric_eigvals(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"need a square matrix, got shape {W.shape}")
    if not np.allclose(W, W.T, atol=1e-10):
        raise ValueError("need a symmetric matrix")
    return np.linalg.eigvalsh((W + W.T) / 2)  # ascending


def second_largest_eigenvalue_modulus(W: np.ndarray) -> float:
    """``max(|lambda_2|, |lambda_n|)`` of a symmetric stochastic matrix (0 when n == 1).

    Args:
        W: ``[n, n]`` symmetric stochastic matrix (largest eigenvalue 1).

    Returns:
        The modulus; gossip with W contracts disagreement by this factor per step.

    References:
        Boyd, Diaconis, Xiao, "Fastest mixing Markov chain on a graph" (SIAM Review, 2004).
    """
    lam = _symmetric_eigvals(W)
    if lam.size < 2:
        return 0.0
    return float(max(abs(lam[-2]), abs(lam[0])))


def spectral_gap(W: np.ndarray) -> float:
    """``1 - max(|lambda_2|, |lambda_n|)`` of a symmetric stochastic matrix.

    Args:
        W: ``[n, n]`` symmetric stochastic matrix.

    Returns:
        The gap in [0, 1]; 0 for a disconnected graph, 1 for ``W = J / n``.

    References:
        Boyd, Diaconis, Xiao, "Fastest mixing Markov chain on a graph" (SIAM Review, 2004).
    """
    return float(min(1.0, max(0.0, 1.0 - second_largest_eigenvalue_modulus(W))))


def algebraic_connectivity(G: nx.Graph, weight: str | None = None) -> float:
    """Second-smallest Laplacian eigenvalue ``lambda_2`` (0 iff G is disconnected).

    Args:
        G: undirected graph.
        weight: edge attribute used as the link rate, or ``None``.

    Returns:
        ``lambda_2`` (0.0 for fewer than 2 nodes).

    References:
        Fiedler, "Algebraic connectivity of graphs" (Czech. Math. J., 1973).
    """
    lam = np.linalg.eigvalsh(laplacian(G, weight))
    if lam.size < 2:
        return 0.0
    return float(max(0.0, lam[1]))


def is_doubly_stochastic(W: np.ndarray, atol: float = 1e-10) -> bool:
    """Whether W is square, non-negative, and every row and column sums to 1.

    Args:
        W: matrix.
        atol: tolerance on the sums and on negativity.

    Returns:
        True when doubly stochastic.

    References:
        Xiao & Boyd, "Fast linear iterations for distributed averaging" (2004).
    """
    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        return False
    ones = np.ones(W.shape[0])
    return bool(
        np.all(W >= -atol)
        and np.allclose(W.sum(axis=1), ones, rtol=0, atol=atol)
        and np.allclose(W.sum(axis=0), ones, rtol=0, atol=atol)
    )
