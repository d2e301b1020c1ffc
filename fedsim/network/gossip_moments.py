"""Exact decay rates of ``E ||x(t) - mean||^2`` for randomized and accelerated gossip (numpy).

:func:`~fedsim.network.spectral.predicted_rates` gives the guaranteed rates (lower bounds)
and :func:`~fedsim.network.spectral.mean_dynamics_rates` the rates of the expected states
(upper bounds). Both leave a factor of up to 2. This module removes it: gossip is a
linear system switched by Poisson clocks, so the second moment ``Sigma = E[z z^T]`` of the
state obeys a *deterministic* linear ODE, and its slowest mode is the true rate.

Model. Each node keeps ``z_v`` (``x_v`` for Boyd et al.; ``(x_v, x_tilde_v)`` for the
accelerated gossip of Even et al.). Stack ``z = (x, x_tilde)`` variable-major. Between
events ``dz/dt = (B kron I) z``; an event on edge ``e`` (clock rate ``p_e``, ``u_e = e_i -
e_j``) applies ``z <- (I + a b^T kron u_e u_e^T) z``:

* Boyd: ``B = 0``, ``a = (-1/2)``, ``b = (1)``: ``x <- x - 1/2 u u^T x``.
* accelerated: ``B = eta [[-1, 1], [1, -1]]``, ``a = (-1/2, -alpha_tilde)``, ``b = (1, 0)``:
  ``x_tilde <- x_tilde - alpha_tilde u (u^T x)`` and ``x <- x - 1/2 u u^T x`` (the
  difference ``d = x_i - x_j`` is read before the average, as in
  :func:`~fedsim.decentralized.gossip.accelerated_gossip`).

Taking expectations over the clocks (``L = sum_e p_e u_e u_e^T``, ``w_e = b kron u_e``)::

    dSigma/dt = M Sigma + Sigma M^T + (a a^T) kron sum_e p_e (w_e^T Sigma w_e) u_e u_e^T,
    M = B kron I + (a b^T) kron L.

A decaying mode ``Sigma(t) = e^{-r t} S`` solves ``(M + r/2) S + S (M + r/2)^T =
-(a a^T) kron U diag(p q) U^T`` with ``q_e = w_e^T S w_e`` (``u_e^T S_xx u_e`` for both
methods). In the eigenbasis ``Phi`` of ``L`` the left side splits into blocks (1x1 for
Boyd, 2x2 accelerated), one per pair of modes ``(k, l)``, so ``q = F(r) q`` with the
nonnegative ``E x E`` matrix::

    F(r)_fe = p_e sum_{k,l} phi_fk phi_fl s_kl(r) phi_ek phi_el,   phi_e = Phi^T u_e,
    s_kl(r) = b^T S_kl b,  m_k S_kl + S_kl m_l^T + r S_kl = -a a^T,  m_k = B + lambda_k a b^T.

``F(r)`` grows with ``r`` and blows up at the mean-dynamics rate; the true rate is the
``r`` where its Perron root crosses 1 (found by bisection). Cost: ``O(n^2 E^2)`` per
bisection step, fine for rings, tori and backbone graphs up to ~100 nodes.

References:
    Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
    Theory, 2006 (their second-moment analysis, in discrete time). Even, Berthier, Bach,
    Flammarion, Hendrikx, Gaillard, Massoulié, Taylor, "A Continuized View on Nesterov
    Acceleration for Stochastic Gradient Descent and Randomized Gossip", NeurIPS 2021.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from fedsim.network.gossip_events import Rates, edge_rates
from fedsim.network.spectral import accelerated_parameters, rate_laplacian

MAX_EDGE_PAIRS = 4e8  # n^2 E^2 above this: too slow to be useful, refuse


def second_moment_rates(G: nx.Graph, rates: Rates = 1.0) -> dict[str, float]:
    """Exact asymptotic decay rates of ``E ||x(t) - mean||^2`` per unit of simulated time.

    Args:
        G: connected undirected graph (``n^2 E^2 <= 4e8``, e.g. up to ~100-node rings, or
            a complete graph with one rate on every edge, which has a closed form).
        rates: edge rates, as for :func:`~fedsim.network.spectral.rate_laplacian`.

    Returns:
        ``{"boyd": r_boyd, "accelerated": r_acc}``; the accelerated one uses
        :func:`~fedsim.network.spectral.accelerated_parameters`.

    References:
        Boyd et al., IEEE Trans. Inf. Theory, 2006; Even et al., NeurIPS 2021.
    """
    _, _, p = edge_rates(G, rates)
    n = G.number_of_nodes()
    if n >= 2 and nx.is_connected(G) and p.size == n * (n - 1) // 2 and np.ptp(p) == 0:
        # K_n, one rate: a closed form. d/dt E||x - mean||^2 = -1/2 E[x^T L x] =
        # -(n p / 2) E||x - mean||^2, and alpha_tilde = 1/2 keeps x_tilde = x: the
        # accelerated method is Boyd's
        return {"boyd": n * float(p[0]) / 2, "accelerated": n * float(p[0]) / 2}
    _check_size(n, p.size)  # before the dense n x n work of accelerated_parameters
    eta, alpha = accelerated_parameters(G, rates)  # also checks connectivity
    boyd = ([[0.0]], [-0.5], [1.0])
    accelerated = (eta * np.array([[-1.0, 1.0], [1.0, -1.0]]), [-0.5, -alpha], [1.0, 0.0])
    return {
        "boyd": switched_rate(G, *boyd, rates=rates),
        "accelerated": switched_rate(G, *accelerated, rates=rates),
    }


def switched_rate(G: nx.Graph, B, a, b, rates: Rates = 1.0, rtol: float = 1e-10) -> float:
    """Slowest decay rate of ``E ||x - mean||^2`` for the switched system in the module doc.

    Args:
        G: connected undirected graph.
        B: ``[dim, dim]`` per-node flow between events (``dim`` variables per node).
        a, b: ``[dim]`` an event on ``e`` applies ``I + a b^T kron u_e u_e^T``.
        rates: edge rates.
        rtol: relative tolerance of the bisection on ``r``.

    Returns:
        The rate ``r`` with ``E ||x(t) - mean||^2 ~ C e^{-r t}``.
    """
    B, a, b = np.asarray(B, float), np.asarray(a, float), np.asarray(b, float)
    u, v, p = edge_rates(G, rates)
    n, E = G.number_of_nodes(), p.size
    _check_size(n, E)
    lam, Phi = np.linalg.eigh(rate_laplacian(G, rates))
    lam, Phi = lam[1:], Phi[:, 1:]  # drop the consensus mode: every u_e is orthogonal to it
    A = Phi[u] - Phi[v]  # [E, n-1], row e = phi_e = Phi^T u_e
    R = (A[:, :, None] * A[:, None, :]).reshape(E, -1)  # [E, (n-1)^2]: phi_ek phi_el
    sqrt_p = np.sqrt(p)
    m = B + lam[:, None, None] * np.outer(a, b)  # [n-1, dim, dim]: M's block on mode k
    dim = B.shape[0]  # variables per node
    eye = np.eye(dim)
    # (k, l) block of the Lyapunov operator, row-major vec: m_k kron I + I kron m_l
    left = np.einsum("qic,jd->qijcd", m, eye).reshape(-1, 1, dim * dim, dim * dim)
    right = np.einsum("ic,qjd->qijcd", eye, m).reshape(1, -1, dim * dim, dim * dim)
    lyap = left + right  # [n-1, n-1, dim^2, dim^2]
    bb = np.outer(b, b).reshape(dim * dim)
    rhs = np.broadcast_to(-np.outer(a, a).reshape(dim * dim, 1), lyap.shape[:3] + (1,))

    def perron(r: float) -> float:
        """Perron root of F(r), via the symmetric matrix similar to it."""
        s = np.linalg.solve(lyap + r * np.eye(dim * dim), rhs)
        sym = (R * (s[..., 0] @ bb).reshape(-1)) @ R.T  # s_kl = b^T S_kl b
        return float(np.linalg.eigvalsh(sqrt_p[:, None] * sym * sqrt_p[None, :])[-1])

    hi = -2.0 * np.linalg.eigvals(m).real.max()  # F(r) blows up here: the mean dynamics
    lo = 0.0
    if not (hi > 0.0 and perron(lo) < 1.0):
        raise ValueError("the switched system does not decay in mean square")
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        rho = perron(mid)
        lo, hi = (mid, hi) if np.isfinite(rho) and 0.0 <= rho < 1.0 else (lo, mid)
    return float(0.5 * (lo + hi))


def _check_size(n: int, E: int) -> None:
    if n**2 * E**2 > MAX_EDGE_PAIRS:
        raise ValueError(f"graph too large for the exact rate (n={n}, E={E}); needs n^2 E^2 <= 4e8")
