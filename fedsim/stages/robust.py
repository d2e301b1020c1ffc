"""Byzantine-robust aggregators: coordinate median, trimmed mean, (Multi-)Krum, centered clipping.

Each reduces the stacked client updates ``[n, d] -> [d]`` (``n`` rows received this
round). None of them uses ``ctx.weights``: the papers define them on unweighted rows,
and a sample count is something a Byzantine client could inflate. The weighted robust
aggregate is the geometric median (``fedsim.stages.geomed``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.stages.base import Aggregator, Ctx
from fedsim.stages.numerics import row_norms


def _require_rows(updates: Tensor) -> int:
    """The number of rows, refusing an empty round (there is nothing to aggregate)."""
    n = updates.shape[0]
    if n == 0:
        raise ValueError("no rows to aggregate (every sender was lost this round)")
    return n


def _sorted_columns(updates: Tensor) -> Tensor:
    """Every column sorted ascending ``[n, d]`` (on CPU numpy's sort along axis 0, ~10x torch's)."""
    if updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(np.sort(updates.detach().numpy(), axis=0))
    return torch.sort(updates, dim=0).values


def coordinate_median() -> Aggregator:
    """Coordinate-wise median of the rows; ``ctx.weights`` is ignored.

    Pseudo-code: u_j = median(U[1, j], ..., U[n, j]) for every coordinate j; with an even
    number of rows the median is the mean of the two middle values.

    Returns:
        An ``Aggregator`` without state (None).

    References: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates" (ICML 2018), median-based gradient descent.
    """

    def aggregate(updates: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        n = _require_rows(updates)
        s = _sorted_columns(updates)  # [n, d]
        if n % 2:
            return s[n // 2], state
        return (s[n // 2 - 1] + s[n // 2]) / 2, state

    return Aggregator(init=lambda num_clients, d: None, aggregate=aggregate)


def trimmed_mean(beta: float) -> Aggregator:
    """Coordinate-wise beta-trimmed mean of the rows; ``ctx.weights`` is ignored.

    Pseudo-code: for every coordinate j, drop the b = floor(beta * n) largest and the b
    smallest of U[:, j] and average the n - 2b values left.

    Args:
        beta: the fraction trimmed at each end, ``0 <= beta < 0.5`` (0 is the mean).

    Returns:
        An ``Aggregator`` without state (None).

    Raises:
        ScenarioError: ``algorithm.aggregator.beta`` outside ``[0, 0.5)``.

    References: Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates" (ICML 2018), trimmed-mean-based gradient descent.
    """
    if not isinstance(beta, int | float) or isinstance(beta, bool) or not 0 <= beta < 0.5:
        raise ScenarioError("algorithm.aggregator.beta", f"must be in [0, 0.5), got {beta!r}")

    def aggregate(updates: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        n = _require_rows(updates)
        b = math.floor(beta * n)
        return _sorted_columns(updates)[b : n - b].mean(dim=0), state

    return Aggregator(init=lambda num_clients, d: None, aggregate=aggregate)


def pairwise_sq_distances(updates: Tensor, chunk: int = 1 << 16) -> Tensor:
    """``||U_i - U_j||^2`` for every pair of rows ``[n, n]`` in float64.

    A Gram matrix accumulated over column chunks, each chunk centred first on its
    coordinate-wise median (distances do not change under a shift), so neither a large
    common offset nor far outliers cancel away the digits of the distances between the
    rows near the median (centring on the mean would move them by the outliers' 1/n share).
    """
    n = updates.shape[0]
    gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    for block in updates.split(chunk, dim=1):
        b = block.double()
        b = b - b.median(dim=0).values
        gram += b @ b.T
    sq = gram.diagonal()
    return (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)


def krum_scores(updates: Tensor, f: int) -> Tensor:
    """Krum's score of each row: the sum of squared distances to its n - f - 2 nearest other rows.

    Args:
        updates: ``[n, d]`` with ``n - f - 2 >= 1``.
        f: the number of Byzantine rows tolerated.

    Returns:
        ``[n]`` float64 scores.
    """
    n = updates.shape[0]
    d2 = pairwise_sq_distances(updates)
    d2.fill_diagonal_(math.inf)  # a row is not its own neighbour
    return d2.topk(n - f - 2, dim=1, largest=False).values.sum(dim=1)


def _check_krum_params(f: int, m: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ScenarioError("algorithm.aggregator.f", f"must be an integer >= 0, got {f!r}")
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ScenarioError("algorithm.aggregator.m", f"must be an integer >= 1, got {m!r}")


def _check_krum_rows(f: int, m: int, n: int) -> None:
    if not 2 * f + 2 < n:
        raise ScenarioError(
            "algorithm.aggregator.f",
            f"Krum needs 2f + 2 < n (n = rows received this round, which stragglers, "
            f"dropouts and rejected non-finite rows reduce); got f={f}, n={n}",
        )
    if m > n:
        raise ScenarioError(
            "algorithm.aggregator.m", f"Multi-Krum averages m <= n rows; got m={m}, n={n}"
        )


def krum(f: int, m: int = 1) -> Aggregator:
    """Krum (m = 1) or Multi-Krum (m > 1): the mean of the m rows with the lowest Krum score.

    Pseudo-code: for every row i, s(i) = sum of ||U_i - U_j||^2 over the n - f - 2 rows j != i
    nearest to U_i; Krum returns the row of lowest score, Multi-Krum the mean of the m rows of
    lowest score (ties broken by row order). ``ctx.weights`` is ignored.

    ``n`` is the number of rows received this round, which stragglers and dropouts can make
    smaller than the cohort: the condition 2f + 2 < n is checked at every call.

    Args:
        f: the number of Byzantine rows tolerated (>= 0).
        m: how many lowest-scored rows are averaged (>= 1; ``n - f`` is the usual Multi-Krum).

    Returns:
        An ``Aggregator`` without state (None).

    Raises:
        ScenarioError: ``algorithm.aggregator.f`` when 2f + 2 >= n (at aggregate time) or f < 0;
            ``algorithm.aggregator.m`` when m < 1 or m > n.

    References: Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent" (NeurIPS 2017), Krum and Multi-Krum.
    """
    _check_krum_params(f, m)

    def aggregate(updates: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        _check_krum_rows(f, m, _require_rows(updates))
        scores = krum_scores(updates, f)  # [n]
        chosen = torch.argsort(scores, stable=True)[:m]
        return updates[chosen].mean(dim=0), state

    return Aggregator(init=lambda num_clients, d: None, aggregate=aggregate)


def _check_cc_params(tau: float, iterations: int) -> None:
    if not isinstance(tau, int | float) or isinstance(tau, bool) or not tau > 0:
        raise ScenarioError("algorithm.aggregator.tau", f"must be > 0 (inf allowed), got {tau!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ScenarioError(
            "algorithm.aggregator.iterations", f"must be an integer >= 1, got {iterations!r}"
        )


def centered_clipping(tau: float, iterations: int = 1) -> Aggregator:
    """Centered clipping: the rows clipped to radius tau around the previous aggregate, averaged.

    Pseudo-code, with v the previous aggregate (zeros at the first call):
        repeat `iterations` times:
            v <- v + (1/n) sum_i (U_i - v) * min(1, tau / ||U_i - v||)
    Each repetition moves v by at most tau, however far the rows are: norms are taken without
    overflow (``row_norms``) and a far row's clipped step is summed in float64, so a row at
    1e38 pulls exactly as hard as one at 1e3. ``ctx.weights`` is ignored (the paper averages
    uniformly). The paper's robustness relies on clients sending momentum; here the rows are
    whatever the uplink chain produced, so pair it with a client momentum stage for the paper's
    setting.

    Args:
        tau: the clipping radius (> 0; ``math.inf`` gives the plain mean).
        iterations: clipping repetitions per call (>= 1), the paper's l.

    Returns:
        An ``Aggregator``; its state is the last aggregate ``v [d]`` (zeros after ``init``).

    Raises:
        ScenarioError: ``algorithm.aggregator.tau`` <= 0 or ``algorithm.aggregator.iterations`` < 1.

    References: Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization" (ICML 2021), centered clipping (CC).
    """
    _check_cc_params(tau, iterations)

    def init(num_clients: int, d: int) -> Tensor:
        return torch.zeros(d)

    def aggregate(updates: Tensor, state: Tensor, ctx: Ctx) -> tuple[Tensor, Tensor]:
        n = _require_rows(updates)
        v = state.to(updates)  # [d]
        for _ in range(iterations):
            diff = updates - v  # [n, d]
            norms = row_norms(diff)  # [n] float64, no overflow
            v = v + _clipped_sum(updates, v, diff, norms, tau) / n
        return v, v

    return Aggregator(init=init, aggregate=aggregate)


def _clipped_sum(updates: Tensor, v: Tensor, diff: Tensor, norms: Tensor, tau: float) -> Tensor:
    """``sum_i min(1, tau / ||U_i - v||) (U_i - v)`` with float64 ``norms [n]``, in the rows' dtype.

    Where the clipping factor is too small for the dtype, or ``U_i - v`` overflowed it, that
    row's term (of length at most tau) is formed in float64 from the row itself.
    """
    dtype = updates.dtype
    scale = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
    far = (scale < torch.finfo(dtype).tiny / torch.finfo(dtype).eps) | ~torch.isfinite(norms)
    if not bool(far.any()):
        return scale.to(dtype) @ diff
    near, idx = (~far).nonzero()[:, 0], far.nonzero()[:, 0]
    out = scale[near].to(dtype) @ diff.index_select(0, near)
    d64 = updates.index_select(0, idx).double() - v.double()  # [f, d]
    n64 = row_norms(d64)
    s64 = torch.where(n64 > tau, tau / n64, torch.ones_like(n64))
    return out + (s64 @ d64).to(dtype)
