"""Decentralized SGD on stacked node states ``x [n, d]``: D-SGD and (accelerated) gossip SGD.

Node ``v`` holds row ``v`` of ``x`` (its own model) and the data of client ``v``; there is
no server. The clocks (:mod:`fedsim.network.sync_gossip_clock`,
:mod:`fedsim.network.async_gossip_clock`) say *when* a node steps and which edge
exchanges; the functions here say *what* that does to the rows.

* :func:`dsgd_round` -- synchronous D-SGD (Lian et al. 2017), the adapt-then-combine form:
  every node runs local SGD from its own row, then ``x <- W x``.
* :func:`async_gossip_sgd` -- asynchronous gossip SGD in the continuized framework (Even
  et al. 2021): node ``v`` takes a local gradient step at each of its step events, edge
  ``(i, j)`` averages its endpoints at each exchange event (Boyd et al. 2006). With
  ``accelerated`` the exchanges are those of continuized accelerated gossip
  (:func:`fedsim.decentralized.accelerated_gossip`, docs/gossip.md): every node carries a
  second variable ``x~_v`` mixed with ``x_v`` between its events.

**The accelerated step rule** (the convention of this module). At a local step of node
``v`` at time ``t``: mix ``(x_v, x~_v)`` up to ``t`` (the mixing ODE of docs/gossip.md),
compute the step from ``x_v``, ``delta = SGD(x_v) - x_v``, and apply it to both:
``x_v += delta``, ``x~_v += delta``. This is Even et al.'s continuized SGD update
(``x <- x - gamma grad f(x)``, ``z <- z - gamma' grad f(x)`` at a gradient event) with
``gamma' = gamma``: a common translation of the pair, which leaves the gap
``x_v - x~_v`` (and so the accelerated averaging) untouched. Only the *averaging* is
accelerated, not the optimisation; with ``lr = 0`` the method is accelerated gossip
exactly.

Every function applies a stream batch by batch (node-disjoint events, each node's order
kept: :func:`fedsim.network.async_gossip_clock.batches`), which equals applying the
events one by one.

References:
    Lian, Zhang, Zhang, Hsieh, Zhang, Liu, "Can Decentralized Algorithms Outperform
    Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic Gradient
    Descent", NeurIPS 2017. Even, Berthier, Bach, Flammarion, Hendrikx, Gaillard,
    Massoulié, Taylor, "A Continuized View on Nesterov Acceleration for Stochastic
    Gradient Descent and Randomized Gossip", NeurIPS 2021. Boyd, Ghosh, Prabhakar, Shah,
    "Randomized Gossip Algorithms", IEEE Trans. Inf. Theory 52(6), 2006.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from fedsim.decentralized.gossip import _accelerated_pairs, _average_pairs, _mix
from fedsim.network.async_gossip_clock import (
    STEP,
    AsyncSchedule,
    batches,
    elapsed_times,
    last_event_times,
    time_cuts,
)

# (nodes [m], k [m] the step's ordinal at its node, rows [m, d]) -> rows after the step [m, d]
LocalStep = Callable[[Tensor, np.ndarray, Tensor], Tensor]
# (nodes [m], rows [m, d]) -> rows after local SGD [m, d]
LocalSGD = Callable[[Tensor, Tensor], Tensor]


def mean_consensus_distance(x: Tensor) -> float:
    """Mean over nodes of ``||x_v - mean(x)||_2``: how far the rows are from agreeing."""
    return float((x - x.mean(dim=0, keepdim=True)).norm(dim=1).mean())


# --------------------------------------------------------------------------- synchronous


def dsgd_round(x: Tensor, W: Tensor, local_sgd: LocalSGD) -> Tensor:
    """One round of D-SGD: local SGD on every node from its own row, then mixing with ``W``.

    ::

        for every node v (at once):  x_v <- LocalSGD_v(x_v)     # E epochs, batch B, lr
        x <- W x                                                # Metropolis weights

    Args:
        x: ``[n, d]`` the nodes' models.
        W: ``[n, n]`` doubly stochastic mixing matrix
            (:func:`fedsim.network.mixing.metropolis_weights`).
        local_sgd: the local work, ``(nodes, rows) -> rows``.

    Returns:
        ``[n, d]`` the models after the round (a new tensor).

    References:
        Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?",
        NeurIPS 2017 (Algorithm 1; local steps before mixing, as in its local-SGD variants).
    """
    n = x.shape[0]
    half = local_sgd(torch.arange(n, device=x.device), x)  # [n, d]
    return W.to(x.dtype) @ half


# --------------------------------------------------------------------------- asynchronous


class AsyncBatch(NamedTuple):
    """One node-disjoint batch of the asynchronous stream, laid out for tensor work.

    Attributes:
        steps: ``[s]`` nodes taking a local step.
        step_ord: ``[s]`` numpy, the ordinal of each step among its node's steps.
        step_decay: ``[s, 1]`` ``exp(-2 eta dt)`` since each stepping node's previous event.
        ends: ``[2b]`` exchange endpoints, first ends then second ends.
        ends_decay: ``[2b, 1]`` the same decay for each endpoint.
    """

    steps: Tensor
    step_ord: np.ndarray
    step_decay: Tensor
    ends: Tensor
    ends_decay: Tensor


class AsyncPlan(NamedTuple):
    """The stream cut at the evaluation instants, batch by batch.

    Attributes:
        segments: ``T + 1`` lists of batches: those applied by instant 0, ..., by instant
            ``T - 1``, and after the last instant.
        instants: ``[T + 1]`` the evaluation instants, then ``t_end``.
        mix_decay: ``[T + 1, n, 1]`` ``exp(-2 eta (instant - last event time))`` per node:
            what mixes every node up to each instant (accelerated variant).
        exchanges: ``[T + 1]`` exchanges completed in each segment.
        steps: ``[T + 1]`` local steps completed in each segment.
    """

    segments: list[list[AsyncBatch]]
    instants: np.ndarray
    mix_decay: Tensor
    exchanges: np.ndarray
    steps: np.ndarray


def plan_async(sched: AsyncSchedule, instants: Sequence[float] | np.ndarray, eta: float = 0.0,
               how: str = "levels", device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> AsyncPlan:
    """Lay a step/exchange stream out as node-disjoint batches between evaluation instants.

    Args:
        sched: the clock's stream (:meth:`AsyncGossipClock.events`).
        instants: non-decreasing evaluation instants in ``[0, t_end]``.
        eta: mixing rate of the accelerated variant (0: no mixing, plain gossip SGD).
        how: batching, ``"levels"`` (default), ``"runs"`` or ``"events"``; all equivalent.
        device: where the index tensors live.
        dtype: dtype of the decay factors (that of the states).

    Returns:
        The :class:`AsyncPlan`.
    """
    instants = np.asarray(instants, dtype=np.float64).reshape(-1)
    if instants.size and (np.any(np.diff(instants) < 0) or instants[0] < 0
                          or instants[-1] > sched.t_end):
        raise ValueError(f"instants must be non-decreasing in [0, t_end = {sched.t_end}]")
    cuts = time_cuts(sched, instants)
    order, bounds = batches(sched, how, cuts)
    dt_i, dt_j = elapsed_times(sched)
    decay_i, decay_j = np.exp(-2.0 * eta * dt_i), np.exp(-2.0 * eta * dt_j)
    is_step = sched.kind == STEP
    ordinal = np.zeros(sched.num_events, dtype=np.int64)  # k-th step of its node
    step_ids = np.flatnonzero(is_step)
    nodes = sched.i[step_ids]
    by_node = np.argsort(nodes, kind="stable")
    first = np.searchsorted(nodes[by_node], nodes[by_node], side="left")
    ordinal[step_ids[by_node]] = np.arange(step_ids.size) - first

    def tensor(a: np.ndarray, float_: bool = False) -> Tensor:
        return torch.as_tensor(a, dtype=dtype if float_ else torch.long, device=device)

    ends_all = np.concatenate((instants, [sched.t_end]))
    segments: list[list[AsyncBatch]] = [[] for _ in range(ends_all.size)]
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        ev = order[a:b]
        st, ex = ev[is_step[ev]], ev[~is_step[ev]]
        ends = np.concatenate((sched.i[ex], sched.j[ex]))
        segments[int(np.searchsorted(cuts, ev[0], side="right"))].append(AsyncBatch(
            steps=tensor(sched.i[st]), step_ord=ordinal[st],
            step_decay=tensor(decay_i[st], True).unsqueeze(1),
            ends=tensor(ends), ends_decay=tensor(np.concatenate((decay_i[ex], decay_j[ex])),
                                                 True).unsqueeze(1)))
    last = last_event_times(sched, ends_all)  # [T + 1, n]
    mix_decay = tensor(np.exp(-2.0 * eta * (ends_all[:, None] - last)), True).unsqueeze(2)
    seg = np.searchsorted(cuts, np.arange(sched.num_events), side="right")
    count = np.bincount
    return AsyncPlan(segments, ends_all, mix_decay,
                     exchanges=count(seg[~is_step], minlength=ends_all.size),
                     steps=count(seg[is_step], minlength=ends_all.size))


def async_gossip_sgd(
    x: Tensor,
    plan: AsyncPlan,
    local_step: LocalStep,
    alpha_tilde: float | None = None,
    on_instant: Callable[[int, Tensor], None] | None = None,
    *,
    start: int = 0,
    x_tilde: Tensor | None = None,
    on_state: Callable[[int, Tensor, Tensor | None], None] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Asynchronous gossip SGD (plain, or accelerated when ``alpha_tilde`` is given).

    ::

        for each event, in time order (node-disjoint batches at once):
            step on v:        [accelerated: mix (x_v, x~_v) up to t]
                              delta = SGD step of v on its next minibatch, from x_v
                              x_v += delta            [accelerated: x~_v += delta]
            exchange (i, j):  plain:       x_i, x_j <- (x_i + x_j) / 2
                              accelerated: mix i, j up to t; d = x_i - x_j;
                                           x~_i -= alpha~ d; x~_j += alpha~ d;
                                           x_i, x_j <- (x_i + x_j) / 2
        at each evaluation instant: [accelerated: every node mixed up to it, on a copy]
                              on_instant(k, x)

    Args:
        x: ``[n, d]`` initial models (not modified); ``x~`` starts equal to it.
        plan: the stream (:func:`plan_async`, with the accelerated ``eta`` when
            ``alpha_tilde`` is given, else ``eta = 0``).
        local_step: one SGD step of nodes ``[m]`` (ordinals ``[m]``) from rows ``[m, d]``.
        alpha_tilde: the ``x~`` step of accelerated gossip
            (:func:`fedsim.network.spectral.accelerated_parameters`); None: plain.
        on_instant: called with ``(k, x_k)`` at evaluation instant ``k`` (``x_k`` mixed to
            the instant; do not modify it).
        start: the first segment to play: ``k`` continues after instant ``k - 1`` from
            the states ``on_state`` gave there (``x``, and ``x_tilde``).
        x_tilde: ``[n, d]`` the ``x~`` to continue with (accelerated; default: ``x``).
        on_state: called with ``(k, x, x~)`` at instant ``k``, before ``on_instant``: the
            states as they are (not mixed to the instant), what a checkpoint keeps.

    Returns:
        ``(x, x~)`` at ``t_end`` (``x~`` is None for plain gossip SGD).

    References:
        Even et al., NeurIPS 2021 (continuized gossip and continuized SGD); Boyd et al.,
        IEEE Trans. Inf. Theory, 2006 (pairwise averaging).
    """
    accelerated = alpha_tilde is not None
    x = x.clone()
    xt = (x if x_tilde is None else x_tilde).clone() if accelerated else None
    T = len(plan.segments) - 1
    xk, xtk = x, xt
    for k in range(start, T + 1):
        for batch in plan.segments[k]:
            if batch.steps.numel():
                v = batch.steps
                rows = x.index_select(0, v)
                if accelerated:
                    rows, rows_t = _mix(rows, xt.index_select(0, v), batch.step_decay)
                delta = local_step(v, batch.step_ord, rows) - rows
                x.index_copy_(0, v, rows + delta)
                if accelerated:
                    xt.index_copy_(0, v, rows_t + delta)
            if batch.ends.numel():
                if accelerated:
                    _accelerated_pairs(x, xt, batch.ends, batch.ends_decay, alpha_tilde)
                else:
                    _average_pairs(x, batch.ends.view(2, -1))
        xk, xtk = _mix(x, xt, plan.mix_decay[k]) if accelerated else (x, None)
        if k < T and on_state is not None:
            on_state(k, x, xt)
        if k < T and on_instant is not None:
            on_instant(k, xk)
    return xk, xtk
