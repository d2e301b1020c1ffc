"""Games with a known Nash equilibrium, split over ``n`` nodes with node-specific data.

* :func:`bilinear_game`: ``f_i(theta, phi) = (theta - theta*)^T A_i (phi - phi*)
  + db_i^T theta + dc_i^T phi`` with ``(1/n) sum_i A_i = A`` (square, singular values in
  ``sv_range``) and ``sum_i db_i = sum_i dc_i = 0``. The network objective is
  ``f = (theta - theta*)^T A (phi - phi*)`` (the form ``theta^T A phi + b^T theta +
  c^T phi`` with ``b = -A phi*``, ``c = -A^T theta*``, constant dropped), whose unique
  Nash equilibrium is ``x* = (theta*, phi*)``. Plain gradient descent-ascent spirals out
  on it; extragradient and optimistic methods converge linearly (Daskalakis et al.,
  2018; Mokhtari, Ozdaglar, Pattathil, 2020).
* :func:`quadratic_game`: ``f_i = 1/2 u^T P_i u + u^T B_i w - 1/2 w^T Q_i w + db_i^T theta
  + dc_i^T phi`` with ``u = theta - theta*``, ``w = phi - phi*``, ``P_i, Q_i >= mu I``:
  strongly-convex-strongly-concave, unique Nash ``x*``.

With ``bias = 0`` every node's own operator also vanishes at ``x*`` (the nodes disagree
on the game's curvature, not on its solution), so decentralized methods with a constant
step reach ``x*`` exactly; ``bias > 0`` gives every node its own saddle point and
constant-step decentralized methods stop at a distance of order
``lr * bias / spectral gap`` (the heterogeneity floor of D-SGD, Koloskova et al. 2020).

References:
    Daskalakis, Ilyas, Syrgkanis, Zeng, "Training GANs with Optimism" (ICLR 2018);
    Mokhtari, Ozdaglar, Pattathil, "A Unified Analysis of Extra-gradient and Optimistic
    Gradient Methods for Saddle Point Problems" (AISTATS 2020); Koloskova et al., "A
    Unified Theory of Decentralized SGD with Changing Topology and Local Updates"
    (ICML 2020).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.minmax.operator import MinMaxTask
from fedsim.seeding import torch_generator

_KEY = "task"


def _check(num_nodes: int, dim: int, heterogeneity: float, bias: float,
           noise_std: float) -> None:
    for key, value, low in (("num_nodes", num_nodes, 1), ("dim", dim, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ScenarioError(f"{_KEY}.{key}", f"must be an integer >= {low}, got {value!r}")
    for key, value in (("heterogeneity", heterogeneity), ("bias", bias),
                       ("noise_std", noise_std)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ScenarioError(f"{_KEY}.{key}", f"must be a number >= 0, got {value!r}")


def _centered(gen: torch.Generator, shape: tuple[int, ...], scale: float) -> Tensor:
    """``[n, ...]`` Gaussian draws with their mean over the first axis removed."""
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    return scale * (z - z.mean(dim=0, keepdim=True))


def _orthogonal(gen: torch.Generator, p: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def bilinear_game(num_nodes: int = 8, dim: int = 5, heterogeneity: float = 0.5,
                  bias: float = 0.0, noise_std: float = 0.0, sv_range: tuple[float, float]
                  = (0.5, 1.5), seed: int = 0) -> MinMaxTask:
    """The bilinear game ``theta^T A phi + b^T theta + c^T phi`` split over ``n`` nodes.

    Args:
        num_nodes: ``n``.
        dim: ``p``: ``theta`` and ``phi`` are both ``p``-dimensional (``d = 2p``).
        heterogeneity: scale of the node deviations ``A_i - A`` (entries ``~ h / sqrt(p)``).
        bias: scale of the node deviations ``db_i, dc_i`` (0: ``x*`` is every node's
            own saddle point too).
        noise_std: std of Gaussian noise on every evaluation of ``F_i`` (0: exact).
        sv_range: ``A``'s singular values are spread evenly over this range.
        seed: the root seed (stream ``minmax/game``).

    Returns:
        The task; ``task.nash`` is ``x*`` and ``task.node_data = (A_i [n, p, p],
        db_i [n, p], dc_i [n, p])``.

    References:
        Daskalakis et al., "Training GANs with Optimism" (ICLR 2018).
    """
    _check(num_nodes, dim, heterogeneity, bias, noise_std)
    lo, hi = sv_range
    if not 0 < lo <= hi:
        raise ScenarioError(f"{_KEY}.sv_range", f"must be 0 < low <= high, got {sv_range!r}")
    gen = torch_generator(seed, "minmax/game")
    n, p = num_nodes, dim
    s = torch.linspace(lo, hi, p, dtype=torch.float64)
    A = _orthogonal(gen, p) @ torch.diag(s) @ _orthogonal(gen, p).T
    A_i = A + _centered(gen, (n, p, p), heterogeneity / p**0.5)
    db, dc = _centered(gen, (n, p), bias), _centered(gen, (n, p), bias)
    theta_star = torch.randn(p, generator=gen, dtype=torch.float64)
    phi_star = torch.randn(p, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2 * p, generator=gen, dtype=torch.float64)

    def loss(x: Tensor, Ai: Tensor, bi: Tensor, ci: Tensor) -> Tensor:
        theta, phi = x[:p], x[p:]
        return (theta - theta_star) @ Ai @ (phi - phi_star) + bi @ theta + ci @ phi

    return MinMaxTask(name="bilinear", num_nodes=n, d_theta=p, d_phi=p, loss=loss,
                      node_data=(A_i, db, dc), x0=x0, noise_std=float(noise_std),
                      nash=torch.cat((theta_star, phi_star)))


def quadratic_game(num_nodes: int = 8, dim: int = 5, mu: float = 0.5, coupling: float = 1.0,
                   heterogeneity: float = 0.5, curvature_spread: float = 0.0,
                   bias: float = 0.0, noise_std: float = 0.0, seed: int = 0) -> MinMaxTask:
    """A strongly-convex-strongly-concave quadratic game split over ``n`` nodes.

    ``f_i = 1/2 u^T P_i u + u^T B_i w - 1/2 w^T Q_i w + db_i^T theta + dc_i^T phi`` with
    ``u = theta - theta*``, ``w = phi - phi*``, ``P_i = mu (1 + s c_i) I + S_i S_i^T / p``,
    the same form for ``Q_i``, and ``B_i = coupling * (B + deviation)``; ``c_i`` is
    ``+1, -1, +1, ...`` minus its mean and ``s = curvature_spread``. The network game is
    ``mu``-strongly-convex-strongly-concave for every ``s``; with ``s > 1`` some nodes'
    own games are not (their curvature is negative), so they cannot reach ``x*`` alone and
    the rate depends on the graph (how fast the others' curvature reaches them).

    Args:
        num_nodes: ``n``.
        dim: ``p`` (``d = 2p``).
        mu: strong convexity/concavity modulus of every node (> 0).
        coupling: scale of the bilinear coupling ``B``.
        heterogeneity: scale of the node deviations of ``S_i`` and ``B_i``.
        curvature_spread: ``s`` (>= 0), the spread of the nodes' own curvature.
        bias: scale of the node deviations ``db_i, dc_i``.
        noise_std: std of Gaussian noise on every evaluation of ``F_i``.
        seed: the root seed (stream ``minmax/game``).

    Returns:
        The task; ``task.nash`` is ``x*``; ``node_data = (P_i, B_i, Q_i, db_i, dc_i)``.

    References:
        Mokhtari, Ozdaglar, Pattathil (AISTATS 2020).
    """
    _check(num_nodes, dim, heterogeneity, bias, noise_std)
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not mu > 0:
        raise ScenarioError(f"{_KEY}.mu", f"must be a number > 0, got {mu!r}")
    gen = torch_generator(seed, "minmax/game")
    n, p = num_nodes, dim
    if isinstance(curvature_spread, bool) or not curvature_spread >= 0:
        raise ScenarioError(f"{_KEY}.curvature_spread",
                            f"must be a number >= 0, got {curvature_spread!r}")
    eye = torch.eye(p, dtype=torch.float64)
    sign = 1.0 - 2.0 * (torch.arange(n, dtype=torch.float64) % 2)  # +1, -1, ...
    scale = mu * (1.0 + curvature_spread * (sign - sign.mean()))  # [n], mean mu

    def spd() -> Tensor:
        S = torch.randn(p, p, generator=gen, dtype=torch.float64)
        S_i = S + heterogeneity * torch.randn(n, p, p, generator=gen, dtype=torch.float64)
        return scale[:, None, None] * eye + S_i @ S_i.transpose(1, 2) / p

    P_i, Q_i = spd(), spd()
    B = torch.randn(p, p, generator=gen, dtype=torch.float64) / p**0.5
    B_i = coupling * (B + _centered(gen, (n, p, p), heterogeneity / p**0.5))
    db, dc = _centered(gen, (n, p), bias), _centered(gen, (n, p), bias)
    theta_star = torch.randn(p, generator=gen, dtype=torch.float64)
    phi_star = torch.randn(p, generator=gen, dtype=torch.float64)
    x0 = torch.randn(2 * p, generator=gen, dtype=torch.float64)

    def loss(x: Tensor, Pi: Tensor, Bi: Tensor, Qi: Tensor, bi: Tensor, ci: Tensor) -> Tensor:
        theta, phi = x[:p], x[p:]
        u, w = theta - theta_star, phi - phi_star
        return 0.5 * u @ Pi @ u + u @ Bi @ w - 0.5 * w @ Qi @ w + bi @ theta + ci @ phi

    return MinMaxTask(name="quadratic", num_nodes=n, d_theta=p, d_phi=p, loss=loss,
                      node_data=(P_i, B_i, Q_i, db, dc), x0=x0, noise_std=float(noise_std),
                      nash=torch.cat((theta_star, phi_star)))


def affine_operator(task: MinMaxTask) -> tuple[Tensor, Tensor]:
    """``(M, q)`` with ``F_i(x) = M_i x + q_i`` for a game (``M`` ``[n, d, d]``, ``q`` ``[n, d]``).

    Read off the operator by differentiation (games are quadratic, so ``F_i`` is affine).

    Args:
        task: a game from this module.

    Returns:
        ``(M, q)``; the network operator is ``F(x) = M.mean(0) x + q.mean(0)``.

    References:
        Facchinei & Pang, "Finite-Dimensional Variational Inequalities" (2003).
    """
    from fedsim.minmax.operator import Operator

    op = Operator(task, torch.Generator())
    n, d = task.num_nodes, task.dim
    zeros = torch.zeros(n, d, dtype=task.dtype)
    q = op.exact(zeros)
    cols = [op.exact(zeros + torch.eye(d, dtype=task.dtype)[k]) - q for k in range(d)]
    M = torch.stack(cols, dim=2)  # [n, d, d]
    return M, q
