"""Overflow-free row norms, robust starting points, and the rejection of non-finite rows.

Attackers choose their rows' scale. Squaring a float32 entry above about 1e19 overflows,
so a plain ``sqrt(sum x^2)`` turns a large but finite row into ``inf`` and every rule
built on it (distances, clipping, stopping tests) into ``nan``. Here norms are taken the
LAPACK ``nrm2`` way where needed (``a * ||x / a||`` with ``a = max |x_j|``, in float64), and
rows that are not finite, or whose norm does not fit the dtype, are set aside before any
aggregator sees them (``reject_nonfinite``), counted, and never enter the global model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from fedsim.stages.base import Ctx


def row_norms(x: Tensor) -> Tensor:
    """``||x_i||`` for every row ``[m]`` in float64, without overflow or underflow.

    Fast path: torch's norm in the input dtype. Rows whose result overflowed (inf from
    finite entries) or may have underflowed are recomputed in float64 as
    ``a * ||x_i / a||`` with ``a = max_j |x_ij|``. Rows holding inf or nan keep inf or nan.

    References: Blue, "A Portable Fortran Program to Find the Euclidean Norm of a Vector",
    ACM TOMS 4 (1978); LAPACK ``dnrm2`` (scaled sum of squares).
    """
    norms = torch.linalg.vector_norm(x, dim=1).double()  # [m]
    tiny = torch.finfo(x.dtype).tiny ** 0.5 if x.is_floating_point() else 0.0
    redo = torch.isinf(norms) | (norms < tiny)
    if bool(redo.any()):
        idx = redo.nonzero()[:, 0]
        r = x.index_select(0, idx).double()  # [b, d]
        ok = torch.isfinite(r).all(dim=1)
        a = r.abs().amax(dim=1, keepdim=True) if r.shape[1] else r.new_zeros(len(idx), 1)
        a = torch.where((a > 0) & ok[:, None], a, torch.ones_like(a))
        scaled = torch.linalg.vector_norm(r / a, dim=1) * a[:, 0]
        norms[idx] = torch.where(ok, scaled, norms[idx].to(scaled))
    return norms


def finite_rows(x: Tensor) -> Tensor:
    """``[m]`` bool: the rows whose entries are finite and whose norm fits ``x``'s dtype."""
    norms = row_norms(x)
    return torch.isfinite(norms) & (norms <= torch.finfo(x.dtype).max)


def reject_nonfinite(rows: Tensor, ctx: Ctx) -> tuple[Tensor, Ctx, int]:
    """Drop the rows that are not ``finite_rows``, with their senders, weights and flags.

    Aggregators then only ever see finite rows of representable norm, whatever a
    Byzantine client (or an overflowing honest one) sent. Used by the federated runner
    around ``Aggregator.aggregate``; usable by any code that reduces rows.

    Args:
        rows: ``[m, d]`` the received updates.
        ctx: their context (``senders``, ``weights``, ``byzantine`` are indexed alike).

    Returns:
        ``(kept rows [m', d], ctx for them, number rejected m - m')``; the inputs
        themselves when nothing is rejected.
    """
    keep = finite_rows(rows)
    rejected = int((~keep).sum())
    if rejected == 0:
        return rows, ctx, 0
    idx = keep.nonzero()[:, 0]

    def pick(t: Tensor) -> Tensor:
        return t.index_select(0, idx.to(t.device))

    ctx = ctx._replace(senders=pick(ctx.senders), weights=pick(ctx.weights),
                       byzantine=pick(ctx.byzantine))
    return rows.index_select(0, idx), ctx, rejected


def weighted_median_1d(values: Tensor, weights: Tensor) -> float:
    """The lower weighted median of ``values [m]``: the smallest with cumulative weight >= 1/2."""
    order = torch.argsort(values)
    cum = torch.cumsum(weights.double()[order], 0)
    i = int(torch.searchsorted(cum, cum[-1] / 2))
    return float(values[order[min(i, len(order) - 1)]])


def coordinate_median(updates: Tensor, weights: Tensor | None = None,
                      chunk: int = 1 << 15) -> Tensor:
    """The (weighted) coordinate-wise median ``[d]``, a start no minority of weight can move far.

    With equal weights (or None) it is the usual median (the mean of the two middle values
    for an even count). With weights, per coordinate the mean of the lower and upper
    weighted medians (cumulative weight reaching, and passing, half the total), computed
    on chunks of columns so the sort's indices stay small.
    """
    m = updates.shape[0]
    if weights is None or bool((weights == weights[0]).all()):
        if updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64):
            s = torch.from_numpy(np.sort(updates.detach().numpy(), axis=0))
        else:
            s = torch.sort(updates, dim=0).values
        return s[m // 2] if m % 2 else s[m // 2 - 1] / 2 + s[m // 2] / 2  # no overflow
    if updates.device.type == "cpu" and updates.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(_weighted_median_numpy(updates.detach().numpy(),
                                                       weights.double().numpy(), chunk))
    w = weights.to(device=updates.device, dtype=torch.float64)
    half = w.sum() / 2
    out = torch.empty(updates.shape[1], dtype=updates.dtype, device=updates.device)
    for start in range(0, updates.shape[1], chunk):
        s, order = torch.sort(updates[:, start:start + chunk].T, dim=1)  # [c, m]
        cum = torch.cumsum(w[order], dim=1)  # [c, m]
        lo = (cum < half).sum(1).clamp_max(m - 1)  # first index reaching half
        hi = (cum <= half).sum(1).clamp_max(m - 1)  # first index passing half
        out[start:start + chunk] = s.gather(1, lo[:, None])[:, 0] / 2 + \
            s.gather(1, hi[:, None])[:, 0] / 2
    return out


def _weighted_median_numpy(x: np.ndarray, w: np.ndarray, chunk: int) -> np.ndarray:
    """``coordinate_median``'s weighted rule on CPU: numpy sorts rows of a transposed chunk."""
    m, half = x.shape[0], w.sum() / 2
    out = np.empty(x.shape[1], dtype=x.dtype)
    for start in range(0, x.shape[1], chunk):
        block = np.ascontiguousarray(x[:, start:start + chunk].T)  # [c, m]
        order = np.argsort(block, axis=1)
        s = np.take_along_axis(block, order, 1)
        cum = np.cumsum(w[order], axis=1)
        lo = np.minimum((cum < half).sum(1), m - 1)[:, None]  # first index reaching half
        hi = np.minimum((cum <= half).sum(1), m - 1)[:, None]  # first index passing half
        out[start:start + chunk] = (np.take_along_axis(s, lo, 1)[:, 0] / 2
                                    + np.take_along_axis(s, hi, 1)[:, 0] / 2)
    return out
