"""Spectral quantities of gossip on a graph with Poisson edge clocks (numpy only).

Convention (used by every function here and by :mod:`fedsim.decentralized.gossip`):
each *undirected edge* ``{i, j}`` carries one clock of rate ``p_ij`` and

    L = sum_{edges {i,j}} p_ij (e_i - e_j)(e_i - e_j)^T
      = 1/2 sum_{ordered pairs (i,j)} p_ij (e_i - e_j)(e_i - e_j)^T   (p_ij = p_ji),

so "unit-rate edges" (``p_ij = 1``) give the combinatorial Laplacian ``D - A``. If one
instead gives every *ordered* pair its own clock of rate ``p_ij`` (e.g. node ``i`` wakes
and calls ``j``), each edge fires at ``2 p_ij`` and ``L`` doubles: pass ``2 p_ij``.

References:
    Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
    Theory, 2006. Even, Berthier, Bach, Flammarion, Hendrikx, Gaillard, Massoulié,
    Taylor, "A Continuized View on Nesterov Acceleration for Stochastic Gradient Descent
    and Randomized Gossip", NeurIPS 2021 (chi_1, chi_2, Section 6).
"""

from __future__ import annotations

import math
import re
from typing import Any

import networkx as nx
import numpy as np

from fedsim.network.gossip_events import Rates, edge_rates


def rate_laplacian(G: nx.Graph, rates: Rates = 1.0) -> np.ndarray:
    """Rate-weighted Laplacian ``L = sum_edges p_ij (e_i - e_j)(e_i - e_j)^T``.

    Args:
        G: undirected graph; rows follow ``sorted(G.nodes)``.
        rates: a float for every edge, an edge attribute name, or a mapping edge -> rate.

    Returns:
        ``[n, n]`` float64 symmetric positive semi-definite matrix.

    References:
        Boyd et al., "Randomized Gossip Algorithms", IEEE Trans. Inf. Theory, 2006.
    """
    u, v, p = edge_rates(G, rates)
    n = G.number_of_nodes()
    L = np.zeros((n, n))
    np.add.at(L, (u, v), -p)
    np.add.at(L, (v, u), -p)
    np.add.at(L, (u, u), p)
    np.add.at(L, (v, v), p)
    return L


def lambda2(G: nx.Graph, rates: Rates = 1.0) -> float:
    """Second-smallest eigenvalue of the rate Laplacian (0 iff G is disconnected).

    Args:
        G: undirected graph with at least 2 nodes.
        rates: edge rates.

    Returns:
        ``lambda_2(L)``.

    References:
        Fiedler, "Algebraic connectivity of graphs", Czech. Math. J., 1973.
    """
    lam = np.linalg.eigvalsh(rate_laplacian(G, rates))
    return float(max(0.0, lam[1]))


def _pinv(L: np.ndarray) -> np.ndarray:
    """Moore-Penrose pseudo-inverse of a connected graph's Laplacian."""
    n = L.shape[0]
    J = np.full((n, n), 1.0 / n)
    return np.linalg.inv(L + J) - J  # exact for a connected graph, better conditioned


def effective_resistances(G: nx.Graph, rates: Rates = 1.0) -> dict[tuple, float]:
    """Effective resistance ``R_ij = (e_i - e_j)^T L^+ (e_i - e_j)`` of every edge.

    Rates are conductances: a unit-rate ring of n nodes has ``R = (n - 1) / n`` between
    neighbours.

    Args:
        G: connected undirected graph.
        rates: edge rates (conductances).

    Returns:
        ``{(u, v): R_uv}`` keyed by the graph's own node labels, ``u`` before ``v`` in
        ``sorted(G.nodes)``.

    References:
        Klein & Randić, "Resistance distance", J. Math. Chem., 1993.
    """
    _require_connected(G)
    u, v, _ = edge_rates(G, rates)
    P = _pinv(rate_laplacian(G, rates))
    R = P[u, u] + P[v, v] - 2.0 * P[u, v]
    labels = sorted(G.nodes)
    return {(labels[a], labels[b]): float(r) for a, b, r in zip(u, v, R, strict=True)}


def chi1(G: nx.Graph, rates: Rates = 1.0) -> float:
    """``chi_1 = 1 / lambda_2(L)``: the relaxation time of plain randomized gossip.

    References:
        Even et al., "A Continuized View on Nesterov Acceleration...", NeurIPS 2021.
    """
    _require_connected(G)
    return 1.0 / lambda2(G, rates)


def chi2(G: nx.Graph, rates: Rates = 1.0) -> float:
    """``chi_2 = max_edges 1/2 (e_i - e_j)^T L^+ (e_i - e_j)``: half the largest edge resistance.

    References:
        Even et al., "A Continuized View on Nesterov Acceleration...", NeurIPS 2021.
    """
    return 0.5 * max(effective_resistances(G, rates).values())


def accelerated_parameters(G: nx.Graph, rates: Rates = 1.0) -> tuple[float, float]:
    """``(eta, alpha_tilde)`` of continuized accelerated gossip.

    ``eta = 1 / (2 sqrt(chi_1 chi_2))`` (mixing rate of ``x`` and ``x_tilde``) and
    ``alpha_tilde = 1/2 sqrt(chi_1 / chi_2)`` (step of ``x_tilde`` at an event).

    Args:
        G: connected undirected graph.
        rates: edge rates.

    Returns:
        ``(eta, alpha_tilde)``.

    References:
        Even et al., "A Continuized View on Nesterov Acceleration...", NeurIPS 2021.
    """
    c1, c2 = chi1(G, rates), chi2(G, rates)
    return 1.0 / (2.0 * math.sqrt(c1 * c2)), 0.5 * math.sqrt(c1 / c2)


def predicted_rates(G: nx.Graph, rates: Rates = 1.0) -> dict[str, float]:
    """Predicted exponential decay rates of ``E ||x(t) - mean||^2`` per unit of time.

    ``boyd = lambda_2 / 2`` (Boyd et al.'s bound ``E||x - xbar||^2 <= e^{-lambda_2 t/2}
    ||x_0 - xbar||^2``) and ``accelerated = eta = 1 / (2 sqrt(chi_1 chi_2))``.
    Both are guaranteed rates (lower bounds on the true decay rate).

    Args:
        G: connected undirected graph.
        rates: edge rates.

    Returns:
        ``{"boyd": ..., "accelerated": ..., "lambda2": ..., "chi1": ..., "chi2": ...}``.

    References:
        Boyd et al., IEEE Trans. Inf. Theory, 2006; Even et al., NeurIPS 2021.
    """
    lam = lambda2(G, rates)
    c1, c2 = 1.0 / lam, chi2(G, rates)
    eta = 1.0 / (2.0 * math.sqrt(c1 * c2))
    return {"boyd": lam / 2.0, "accelerated": eta, "lambda2": lam, "chi1": c1, "chi2": c2}


def mean_dynamics_rates(G: nx.Graph, rates: Rates = 1.0) -> dict[str, float]:
    """Decay rates of ``||E x(t) - mean||^2``: the expected (noise-free) dynamics.

    Taking expectations over the clocks, randomized gossip follows ``dx/dt = -L x / 2``
    and accelerated gossip follows, on each eigenvector of ``L`` with eigenvalue
    ``lambda``, the 2x2 system ``d(x, x~)/dt = [[-eta - lambda/2, eta],
    [eta - alpha_tilde lambda, -eta]] (x, x~)``. By Jensen, ``E||x - mean||^2 >=
    ||E x - mean||^2``, so these are upper bounds on the true rates of the squared
    distance, as :func:`predicted_rates` are lower bounds: ``boyd`` lies in
    ``[lambda_2 / 2, lambda_2]``.

    Args:
        G: connected undirected graph.
        rates: edge rates.

    Returns:
        ``{"boyd": lambda_2, "accelerated": 2 min_lambda |Re s_max(lambda)|}``.

    References:
        Boyd et al., IEEE Trans. Inf. Theory, 2006; Even et al., NeurIPS 2021.
    """
    lam = np.linalg.eigvalsh(rate_laplacian(G, rates))[1:]  # the mean-zero modes
    eta, alpha = accelerated_parameters(G, rates)
    A = np.zeros((lam.size, 2, 2))
    A[:, 0, 0] = -eta - lam / 2
    A[:, 0, 1] = eta
    A[:, 1, 0] = eta - alpha * lam
    A[:, 1, 1] = -eta
    slowest = np.linalg.eigvals(A).real.max()
    return {"boyd": float(lam[0]), "accelerated": float(-2.0 * slowest)}


def _require_connected(G: nx.Graph) -> None:
    if G.number_of_nodes() < 2 or not nx.is_connected(G):
        raise ValueError("needs a connected graph with at least 2 nodes")


# --------------------------------------------------------------------------- closed forms

_FAMILIES = {
    "ring": re.compile(r"ring\(n=(\d+)\)"),
    "torus": re.compile(r"torus\((\d+)x(\d+)\)"),
    "hypercube": re.compile(r"hypercube\(dim=(\d+)\)"),
    "complete": re.compile(r"complete\(n=(\d+)\)"),
}


def _ring_laplacian_extremes(n: int) -> tuple[float, float]:
    """(lambda_2, lambda_max) of the cycle C_n: eigenvalues ``2 - 2 cos(2 pi k / n)``."""
    lam2 = 2.0 - 2.0 * math.cos(2.0 * math.pi / n)
    lam_max = 4.0 if n % 2 == 0 else 2.0 + 2.0 * math.cos(math.pi / n)
    return lam2, lam_max


def closed_form(G: nx.Graph) -> dict[str, Any] | None:
    """Spectra of a graph from fedsim's ring, torus, hypercube or complete builder, in O(m).

    The family is read from ``G.graph["name"]`` (as the builders set it) and then checked
    edge by edge against the family's structure, so a relabelled or edited graph gets
    ``None``. Unit-rate edges, as :func:`lambda2` with ``rates = 1``.

    Laplacian eigenvalues: the cycle ``C_n`` has ``2 - 2 cos(2 pi k / n)``; the torus
    ``C_r x C_c`` the sums of its two cycles'; the hypercube ``Q_d`` has ``2k`` (k = 0..d);
    ``K_n`` has ``n``. Every one is ``deg``-regular, so the Metropolis matrix is
    ``I - L / (deg + 1)``. Effective resistance of an edge: ``(n - 1) / m`` on an
    edge-transitive graph (Foster's theorem; ring, square torus, hypercube, K_n), else None.

    Args:
        G: undirected graph.

    Returns:
        ``None``, or ``{"family", "lambda2", "lambda_max", "degree", "diameter",
        "spectral_gap", "edge_resistance"}``.

    References:
        Brouwer & Haemers, "Spectra of Graphs" (Springer, 2012), Section 1.4; Foster,
        "The average impedance of an electrical network" (1949).
    """
    name = str(G.graph.get("name", ""))
    found = [(fam, pat.fullmatch(name)) for fam, pat in _FAMILIES.items()]
    family, match = next(((fam, mt) for fam, mt in found if mt), ("", None))
    if match is None:
        return None
    args = [int(a) for a in match.groups()]
    n, m = G.number_of_nodes(), G.number_of_edges()
    if family == "ring":
        (size,) = args
        lam2, lam_max = _ring_laplacian_extremes(size)
        deg, diameter, edges = 2, size // 2, size

        def neighbours(i: int) -> set[int]:
            return {(i + 1) % size, (i - 1) % size}
    elif family == "torus":
        rows, cols = args
        size = rows * cols
        (r2, rmax), (c2, cmax) = _ring_laplacian_extremes(rows), _ring_laplacian_extremes(cols)
        lam2, lam_max = min(r2, c2), rmax + cmax
        deg, diameter, edges = 4, rows // 2 + cols // 2, 2 * size

        def neighbours(i: int) -> set[int]:
            r, c = divmod(i, cols)
            return {((r + 1) % rows) * cols + c, ((r - 1) % rows) * cols + c,
                    r * cols + (c + 1) % cols, r * cols + (c - 1) % cols}
    elif family == "hypercube":
        (dim,) = args
        size = 2**dim
        lam2, lam_max = 2.0, 2.0 * dim
        deg, diameter, edges = dim, dim, dim * size // 2

        def neighbours(i: int) -> set[int]:
            return {i ^ (1 << b) for b in range(dim)}
    else:
        (size,) = args
        lam2 = lam_max = float(size)
        deg, diameter, edges = size - 1, 1, size * (size - 1) // 2

        def neighbours(i: int) -> set[int]:
            return set(range(size)) - {i}
    if (n, m) != (size, edges) or set(G.nodes) != set(range(size)) or size < 2:
        return None
    if family != "complete" and any(set(G.adj[i]) != neighbours(i) for i in range(size)):
        return None
    slem = max(abs(1.0 - lam2 / (deg + 1)), abs(1.0 - lam_max / (deg + 1)))
    transitive = family != "torus" or args[0] == args[1]
    return {"family": family, "lambda2": lam2, "lambda_max": lam_max, "degree": deg,
            "diameter": diameter, "spectral_gap": min(1.0, max(0.0, 1.0 - slem)),
            "edge_resistance": (size - 1) / edges if transitive else None}
