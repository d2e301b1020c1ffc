"""Geometric median of the client updates by the smoothed Weiszfeld algorithm (RFA).

The geometric median (GM) of rows ``w_1..w_m`` with weights ``alpha_i`` minimizes
``g(v) = sum_i alpha_i ||v - w_i||``. It has breakdown point 1/2: fewer than half
the weight, moved arbitrarily far, moves it only a bounded distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.stages.base import Aggregator, Ctx
from fedsim.stages.numerics import coordinate_median, row_norms, weighted_median_1d


@dataclass(frozen=True)
class GMInfo:
    """How one geometric-median computation went.

    Attributes:
        iterations: Weiszfeld updates performed (0 when the start is already exact).
        converged: whether the last step was at most ``ftol`` times the honest scale (the
            weighted median distance to the start), or at rounding level, before ``maxiter``.
        objective: the final ``g(v) = sum_i alpha_i ||v - w_i||`` with ``alpha`` summing to 1.
        objectives: ``g`` at the start and after each update, when asked for (``trace=True``).
    """

    iterations: int
    converged: bool
    objective: float
    objectives: tuple[float, ...] = ()


def check_gm_params(nu: float, maxiter: int, ftol: float) -> None:
    """Raise a ``ScenarioError`` naming ``algorithm.aggregator.<param>`` for a bad value."""
    if not isinstance(nu, int | float) or not (0 < nu < math.inf):
        raise ScenarioError("algorithm.aggregator.nu", f"must be a finite number > 0, got {nu!r}")
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
        raise ScenarioError(
            "algorithm.aggregator.maxiter", f"must be an integer >= 1, got {maxiter!r}"
        )
    if not isinstance(ftol, int | float) or not (0 <= ftol < math.inf):
        raise ScenarioError(
            "algorithm.aggregator.ftol", f"must be a finite number >= 0, got {ftol!r}"
        )


def normalize_weights(weights: Tensor | None, updates: Tensor) -> Tensor:
    """Row weights ``alpha [m]`` summing to 1, in the dtype and device of ``updates``.

    Args:
        weights: ``[m]`` non-negative weights, or None for equal weights.
        updates: ``[m, d]`` the rows they weigh.

    Returns:
        ``alpha [m]``.

    Raises:
        ValueError: wrong shape, a negative or non-finite weight, or weights summing to 0
            (no row would count; the GM is undefined rather than zero).
    """
    m = updates.shape[0]
    if weights is None:
        weights = torch.ones(m)
    w = weights.to(device=updates.device, dtype=updates.dtype)
    if w.shape != (m,):
        raise ValueError(f"weights must have shape ({m},) to match the rows, got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    total = w.sum()
    if not total > 0:
        raise ValueError(f"weights sum to {float(total)}: no row counts, the median is undefined")
    return w / total


def _distances(updates: Tensor, v: Tensor) -> Tensor:
    """``||w_i - v||`` for every row, float64 ``[m]``, free of overflow and underflow.

    Fast path: ``cdist`` without the Gram-matrix shortcut (no cancellation, no ``[m, d]``
    temporary). Rows where it overflowed (squares beyond the dtype) or may have underflowed
    are redone in float64 with ``row_norms``' scaling.
    """
    dist = torch.cdist(updates, v[None], compute_mode="donot_use_mm_for_euclid_dist")[:, 0]
    dist = dist.double()
    redo = ~torch.isfinite(dist) | (dist < torch.finfo(updates.dtype).tiny ** 0.5)
    if bool(redo.any()):
        idx = redo.nonzero()[:, 0]
        dist[idx] = row_norms(updates.index_select(0, idx).double() - v.double())
    return dist


def _combine(updates: Tensor, c: Tensor) -> Tensor:
    """``sum_i c_i w_i`` for float64 weights ``c [m]``, in the dtype of ``updates``.

    A far row's weight can be too small for the dtype (``alpha / 1e38`` in float32) while
    ``c_i w_i`` is of the honest scale: such rows are summed in float64 instead.
    """
    dtype = updates.dtype
    small = (c > 0) & (c < torch.finfo(dtype).tiny / torch.finfo(dtype).eps)  # 0: no term
    if not bool(small.any()):
        return c.to(dtype) @ updates
    near, far = (~small).nonzero()[:, 0], small.nonzero()[:, 0]
    out = c[near].to(dtype) @ updates.index_select(0, near)
    return out + (c[far] @ updates.index_select(0, far).double()).to(dtype)


def _rounding_floor(v: Tensor, scale: float, dtype: torch.dtype) -> float:
    """Moves below this are rounding noise: 16 eps times the estimate's norm plus the scale."""
    return 16 * torch.finfo(dtype).eps * (float(row_norms(v[None])[0]) + scale)


def _pull(updates: Tensor, alpha: Tensor, v: Tensor, dist: Tensor, nu: float,
          floor: float) -> tuple[Tensor, float, float]:
    """Weiszfeld's target from ``v``, the weight ``eta`` at ``v``, and the others' pull.

    Rows within the rounding ``floor`` of ``v`` (total weight ``eta``) are left out of the
    weighted mean ``T`` (weights ``beta_i = alpha_i / max(nu, ||w_i - v||)``); the pull is
    ``r = ||sum_i beta_i (w_i - v)||``, the length of the objective's descent direction.

    Returns:
        ``(T [d], eta, r)``; ``T`` is ``v`` when every row lies within the floor of ``v``.
    """
    at = dist <= floor
    beta = torch.where(at, torch.zeros_like(alpha), alpha / dist.clamp_min(nu))  # [m]
    total = beta.sum()
    eta = float(alpha[at].sum())
    if not total > 0:  # every row within rounding of v
        return v, eta, 0.0
    target = _combine(updates, beta / total)  # [d]
    return target, eta, float(total) * float(row_norms((target - v)[None])[0])


KUHN_TEST_FROM = 10  # Weiszfeld iterations before the nearest row is first put to Kuhn's test


def _weiszfeld_step(updates: Tensor, alpha: Tensor, v: Tensor, dist: Tensor, nu: float,
                    floor: float) -> Tensor:
    """One Weiszfeld update from ``v``, modified at a row (Vardi and Zhang's step).

    ``v + (1 - min(1, eta / r)) (T - v)`` with ``_pull``'s ``T, eta, r``: plain Weiszfeld
    away from the rows, and no move from a row that is a geometric median (``r <= eta``).
    """
    target, eta, pull = _pull(updates, alpha, v, dist, nu, floor)
    if eta == 0.0:
        return target
    keep = min(1.0, eta / pull) if pull > 0 else 1.0
    return v if keep == 1.0 else target - keep * (target - v)


def _row_is_median(updates: Tensor, alpha: Tensor, k: int, nu: float, floor: float) -> bool:
    """Kuhn's test with a margin: the other rows pull row ``k`` less than its own weight.

    A strict margin (1e-4) leaves ties (a non-unique median, e.g. two equal halves on a
    line) to the iterations, and rounding in float32 cannot pass a row that fails.
    """
    row = updates[k]
    _, eta, pull = _pull(updates, alpha, row, _distances(updates, row), nu, floor)
    return pull <= (1 - 1e-4) * eta


def geometric_median_rows(
    updates: Tensor,
    weights: Tensor | None = None,
    nu: float = 1e-6,
    maxiter: int = 100,
    ftol: float = 1e-6,
    trace: bool = False,
) -> tuple[Tensor, GMInfo]:
    """Weighted geometric median of the rows by smoothed Weiszfeld iterations.

    Pseudo-code (RFA's smoothed Weiszfeld algorithm, from a robust start):
        v <- the weighted coordinate-wise median of the rows
        s <- the weighted median of ||w_i - v||           (the honest scale)
        if s = 0: return v            (half the weight sits at v: v is a geometric median)
        repeat up to maxiter times:
            beta_i <- alpha_i / max(nu, ||v - w_i||)      (0 for rows at v)
            v' <- sum_i beta_i w_i / sum_i beta_i         (Vardi-Zhang's step when v is a row)
            after 10, 20, 40, ... updates: if the row w_k nearest v' passes Kuhn's test,
                v' <- w_k
            stop when ||v' - v|| <= ftol * s + (rounding floor);  v <- v'

    Nothing here grows with the outliers' distance: less than half the weight cannot move
    the start or ``s`` farther than the honest rows' spread, distances are computed without
    squaring overflow (``row_norms``, float64), a far row's tiny weight is summed in float64,
    and the stopping rule measures the estimate's own movement against ``s``, not a change
    of the objective (which outliers at distance R inflate to about R). Weiszfeld stalls at
    a row that is not the median and creeps (sublinearly) towards one that is: Vardi and
    Zhang's step leaves a row unless it passes Kuhn's test (the pull of the other rows is at
    most its own weight). When the iterations are slow (after 10, 20, 40, ... of them) the
    row nearest the estimate is put to that test (once per row: the test does not depend
    on the estimate) and taken as the answer if it passes; runs that converge in fewer
    than 10 iterations (the usual case for high-dimensional updates) never pay for it.
    The rounding floor,
    16 machine epsilons times ``||v|| + s``, ends the iterations once the moves are at
    rounding level. ``converged`` is False when ``maxiter`` ran out first.

    Each update minimizes a majorizer of the nu-smoothed objective, so that objective never
    increases; the plain ``g(v) = sum_i alpha_i ||v - w_i||`` never increases while every
    distance is >= nu, and can rise by at most nu/2 otherwise. Weiszfeld converges linearly
    away from the rows, so the error left is about ``ftol * s`` times a constant.

    Args:
        updates: ``[m, d]`` rows ``w_i``.
        weights: ``[m]`` non-negative weights (normalized to ``alpha``), None for equal weights.
        nu: smoothing floor on the distances (> 0), avoids dividing by zero at a row.
        maxiter: most Weiszfeld updates (>= 1).
        ftol: tolerance on a step's length, relative to the honest scale ``s`` (>= 0).
        trace: also record ``g`` at the start and after each update in ``GMInfo.objectives``.

    Returns:
        ``(v [d], GMInfo)``. Identical rows give that row, never zeros.

    Raises:
        ValueError: weights that sum to 0, negative or of the wrong shape.

    References: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE Transactions on Signal Processing 70 (2022), smoothed Weiszfeld algorithm (RFA);
    Weiszfeld (1937); Kuhn, "A note on Fermat's problem", Math. Programming 4 (1973);
    Vardi and Zhang, "The multivariate L1-median and associated data depth", PNAS 97 (2000);
    Minsker, "Geometric median and robust estimation in Banach spaces",
    Bernoulli 21 (2015) (the median of distances as a robust scale).
    """
    check_gm_params(nu, maxiter, ftol)
    alpha = normalize_weights(weights, updates).double()  # [m]
    raw = None if weights is None else weights.to(device=updates.device, dtype=torch.float64)
    v = coordinate_median(updates, raw)  # [d]; raw counts sum exactly
    dist = _distances(updates, v)  # [m] float64
    objective = float(alpha @ dist)
    objectives = [objective]
    scale = weighted_median_1d(dist, alpha)
    floor = _rounding_floor(v, scale, updates.dtype)
    if scale <= floor:  # half the weight within rounding of v: v is a geometric median
        return v, GMInfo(0, True, objective, tuple(objectives) if trace else ())
    iterations, converged, tested, next_test = 0, False, set(), KUHN_TEST_FROM
    while iterations < maxiter and not converged:
        iterations += 1
        new = _weiszfeld_step(updates, alpha, v, dist, nu, floor)  # [d]
        step = float(row_norms((new - v)[None])[0])
        v = new
        dist = _distances(updates, v)
        k = int(torch.argmin(dist))
        if iterations == next_test and k not in tested:  # slow: is the nearest row the median?
            next_test *= 2
            tested.add(k)
            if _row_is_median(updates, alpha, k, nu, floor):
                v, step = updates[k].clone(), 0.0
                dist = _distances(updates, v)
        objective = float(alpha @ dist)
        objectives.append(objective)
        converged = step <= ftol * scale + floor
    return v, GMInfo(iterations, converged, objective, tuple(objectives) if trace else ())


def geometric_median(nu: float = 1e-6, maxiter: int = 100, ftol: float = 1e-6) -> Aggregator:
    """Weighted geometric median of the rows (RFA's robust aggregate), weights ``ctx.weights``.

    Args:
        nu: smoothing floor on the distances (> 0).
        maxiter: most Weiszfeld updates per call (>= 1).
        ftol: tolerance on a Weiszfeld step, relative to the honest scale (>= 0).

    Returns:
        An ``Aggregator``; its state is the ``GMInfo`` of the last call (None before the
        first): iterations used, whether it converged, and the final objective.

    Raises:
        ScenarioError: a bad parameter, named ``algorithm.aggregator.<param>``.

    References: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
    IEEE Transactions on Signal Processing 70 (2022): RFA with the smoothed Weiszfeld algorithm.
    """
    check_gm_params(nu, maxiter, ftol)

    def aggregate(updates: Tensor, state: GMInfo | None, ctx: Ctx) -> tuple[Tensor, GMInfo]:
        return geometric_median_rows(updates, ctx.weights, nu, maxiter, ftol)

    return Aggregator(init=lambda num_clients, d: None, aggregate=aggregate)
