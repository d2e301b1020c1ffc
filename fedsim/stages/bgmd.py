"""Block coordinate geometric median descent (BGMD): the GM of a chosen block of coordinates.

The geometric median costs a few passes over all ``[m, d]`` numbers per Weiszfeld update.
BGMD runs it only on k << d coordinates chosen by column norm and carries what was left
out to the next step in a memory, so nothing is dropped for good.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.stages.base import Aggregator, Ctx
from fedsim.stages.geomed import GMInfo, check_gm_params, geometric_median_rows, normalize_weights
from fedsim.stages.numerics import finite_rows

SELECTIONS = ("topk", "norm_sampling")
MEMORIES = (True, False, "client")


@dataclass(frozen=True)
class BGMDState:
    """What BGMD carries from one step to the next.

    Attributes:
        memory: ``[d]`` the mean of what the last block left out (zeros with memory off);
            one vector for the server, indexed by coordinate; with ``memory="client"``
            ``[num_clients, d]``, each client's own left-out part, indexed by sender.
        info: the ``GMInfo`` of the last block's geometric median (None before the first step).
        kept: ``[k]`` the coordinates aggregated at the last step, ascending (None before).
    """

    memory: Tensor
    info: GMInfo | None = None
    kept: Tensor | None = None


def block_size(k_fraction: float, d: int) -> int:
    """``k = max(1, round(k_fraction * d))`` coordinates, at most ``d``."""
    return min(d, max(1, round(k_fraction * d)))


def _check_params(k_fraction: float, selection: str, memory: bool | str) -> None:
    if (
        not isinstance(k_fraction, int | float)
        or isinstance(k_fraction, bool)
        or not (0 < k_fraction <= 1)
    ):
        raise ScenarioError(
            "algorithm.aggregator.k_fraction", f"must be in (0, 1], got {k_fraction!r}"
        )
    if selection not in SELECTIONS:
        raise ScenarioError(
            "algorithm.aggregator.selection", f"must be one of {SELECTIONS}, got {selection!r}"
        )
    if not any(memory is m or (isinstance(m, str) and memory == m) for m in MEMORIES):
        raise ScenarioError("algorithm.aggregator.memory",
                            f"must be true, false or \"client\", got {memory!r}")


def column_sq_norms(updates: Tensor, shift: Tensor | None = None) -> Tensor:
    """``||G[:, j]||^2`` for ``G = updates + shift`` (shift broadcast to every row), ``[d]``.

    Accumulated row by row, which never builds ``G`` and is faster on CPU than a reduction
    over dim 0; in the rows' dtype, and again in float64 when a square overflowed it (a
    float32 entry beyond about 1e19).
    """
    acc = _accumulate_squares(updates, shift, updates.dtype)
    if not bool(torch.isfinite(acc).all()):
        acc = _accumulate_squares(updates, shift, torch.float64)
    return acc


def _accumulate_squares(updates: Tensor, shift: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``sum_i (u_i + shift)^2`` per column, accumulated in ``dtype``."""
    acc = torch.zeros(updates.shape[1], dtype=dtype, device=updates.device)
    row = torch.empty_like(acc)
    shift = None if shift is None else shift.to(dtype)
    for u in updates:
        if shift is None and u.dtype == dtype:
            acc.addcmul_(u, u)
            continue
        if shift is None:
            row.copy_(u)
        else:
            torch.add(u.to(dtype), shift, out=row)
        acc.addcmul_(row, row)
    return acc


def select_columns(sq_norms: Tensor, k: int, selection: str, gen: torch.Generator | None) -> Tensor:
    """The k kept coordinates, ascending ``[k]``.

    ``topk``: the k largest column norms. ``norm_sampling``: k columns drawn without
    replacement, each draw with probability proportional to ``||G[:, j]||^2`` among those
    left (exponential keys ``E_j / ||G[:, j]||^2``, the k smallest), from ``gen``; columns of
    norm 0 are taken only after all the others (if every column is 0, uniformly).
    """
    if selection == "topk":
        kept = torch.topk(sq_norms, k).indices
    else:
        w = sq_norms if bool((sq_norms > 0).any()) else torch.ones_like(sq_norms)
        device = gen.device if gen is not None else sq_norms.device
        e = torch.empty(sq_norms.shape[0], dtype=sq_norms.dtype, device=device)
        keys = e.exponential_(generator=gen).to(sq_norms.device) / w  # inf where w = 0
        kept = torch.topk(keys, k, largest=False).indices
    return kept.sort().values


def bgmd(
    k_fraction: float = 0.1,
    selection: str = "topk",
    memory: bool | str = True,
    nu: float = 1e-6,
    maxiter: int = 100,
    ftol: float = 1e-6,
) -> Aggregator:
    """BGMD: the weighted geometric median of a block of k coordinates, with memory of the rest.

    Pseudo-code, one step with rows G [m, d] and memory M [d] (zeros at first):
        G <- G + M                                 (memory added to every row; skipped if off)
        K <- k = max(1, round(k_fraction * d)) columns of G:
               topk: largest ||G[:, j]||;  norm_sampling: drawn prop. to ||G[:, j]||^2
        u[K] <- GM(G[:, K]) (weights ctx.weights), u[j] = 0 elsewhere
        M <- sum_i alpha_i G_i with the columns K set to 0  (what was left out; 0 if off)
    so for every coordinate outside K, u + M equals the weighted mean of G: nothing is lost,
    only postponed. The memory is a plain (weighted) mean, so it is not itself robust:
    ``memory=False`` is the ablation.

    ``memory="client"`` (a fedsim variant, error feedback per client): each row keeps
    its own memory, ``G_i <- G_i + M_i`` and ``M_i <- G_i`` with the columns K set to 0.
    A Byzantine row's memory only ever enters its own row, so the block GM keeps its
    breakdown point of 1/2; a client's memory waits while it is not selected.

    Any scale: the block GM is ``geometric_median_rows`` (robust start, stopping on the
    honest scale, overflow-free distances) and column norms are summed in float64. A row
    whose memory has grown past the dtype (``memory="client"``) is used without it, and
    a shared-memory entry that overflowed is dropped, so the state stays finite.

    Deviations from the paper: the paper scales G by the learning rate before adding the
    memory (G <- gamma G + M); here rows are pseudo-gradients and the server optimizer takes
    the step, so the memory is kept in update units (the same for a constant learning rate,
    as the GM is positively homogeneous, up to the smoothing nu). The paper weighs rows
    equally; here ``ctx.weights`` weigh both the GM and the memory's mean.

    Args:
        k_fraction: the fraction of coordinates aggregated per step, in (0, 1].
        selection: ``"topk"`` (largest column norms) or ``"norm_sampling"`` (random, from
            ``ctx.gen``, probability proportional to the squared column norm).
        memory: carry the left-out mean to the next step (True), not (False), or keep
            one memory per client (``"client"``).
        nu: smoothing floor of the Weiszfeld iterations (> 0).
        maxiter: most Weiszfeld updates per step (>= 1).
        ftol: relative tolerance on the GM objective (>= 0).

    Returns:
        An ``Aggregator`` whose output has at most k nonzeros; its state is a ``BGMDState``
        (memory [d], the block GM's ``GMInfo``, the kept coordinates).

    Raises:
        ScenarioError: a bad parameter, named ``algorithm.aggregator.<param>``.

    References: Acharya, Hashemi, Jain, Sanghavi, Dhillon, Topcu, "Robust Training in High
    Dimensions via Block Coordinate Geometric Median Descent" (AISTATS 2022), Algorithm 1.
    """
    _check_params(k_fraction, selection, memory)
    check_gm_params(nu, maxiter, ftol)

    per_client = memory == "client"

    def init(num_clients: int, d: int) -> BGMDState:
        return BGMDState(memory=torch.zeros(num_clients, d) if per_client else torch.zeros(d))

    def aggregate(updates: Tensor, state: BGMDState, ctx: Ctx) -> tuple[Tensor, BGMDState]:
        d = updates.shape[1]
        if per_client:
            return _aggregate_client_memory(updates, state, ctx)
        mem = state.memory.to(updates)  # [d]
        sq = column_sq_norms(updates, mem if memory else None)  # [d]
        kept = select_columns(sq, block_size(k_fraction, d), selection, ctx.gen)  # [k]
        block = updates.index_select(1, kept)  # [m, k]
        if memory:
            block += mem[kept]
        median, info = geometric_median_rows(block, ctx.weights, nu, maxiter, ftol)  # [k]
        out = torch.zeros_like(mem)
        out[kept] = median
        new_mem = _left_out_mean(updates, mem, ctx.weights, kept) if memory else mem  # [d]
        return out, BGMDState(memory=new_mem, info=info, kept=kept)

    def _aggregate_client_memory(updates: Tensor, state: BGMDState,
                                 ctx: Ctx) -> tuple[Tensor, BGMDState]:
        d = updates.shape[1]
        mem = state.memory.to(updates)  # [num_clients, d]
        rows = updates + mem.index_select(0, ctx.senders)  # [m, d]
        overflowed = ~finite_rows(rows)  # a memory grown past the dtype is dropped
        if bool(overflowed.any()):
            rows[overflowed] = updates[overflowed]
        kept = select_columns(column_sq_norms(rows), block_size(k_fraction, d), selection,
                              ctx.gen)  # [k]
        median, info = geometric_median_rows(rows.index_select(1, kept), ctx.weights, nu,
                                             maxiter, ftol)  # [k]
        out = torch.zeros(d, dtype=updates.dtype, device=updates.device)
        out[kept] = median
        rows[:, kept] = 0
        mem = mem.index_copy(0, ctx.senders, rows)  # what each sender left out
        return out, BGMDState(memory=mem, info=info, kept=kept)

    return Aggregator(init=init, aggregate=aggregate)


def _left_out_mean(updates: Tensor, mem: Tensor, weights: Tensor, kept: Tensor) -> Tensor:
    """``sum_i alpha_i (updates_i + mem)`` with the kept coordinates set to 0, ``[d]``."""
    alpha = normalize_weights(weights, updates)  # [m], sums to 1
    left = alpha @ updates + mem
    left[kept] = 0
    return torch.nan_to_num(left, nan=0.0, posinf=0.0, neginf=0.0)  # overflowed: dropped
