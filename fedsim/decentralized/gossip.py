"""Decentralized averaging on stacked node states ``x [n, d]``: three gossip algorithms.

* :func:`sync_gossip` -- every node mixes with its neighbours each step, ``x <- W x``.
* :func:`randomized_gossip` -- Boyd et al.: edge ``(i, j)`` fires, both take the average.
* :func:`accelerated_gossip` -- Even et al.'s continuized Nesterov acceleration.

The two asynchronous ones replay an :class:`~fedsim.network.gossip_events.EdgeEvents`
stream drawn by the clock (principle 1: the clock says when, here the tensors say what).
A stream is applied batch by batch, a batch being node-disjoint events
(:func:`~fedsim.network.gossip_events.schedule`): one ``index_select`` / ``index_put_``
per batch, exactly equal to applying its events one by one in time order.

References:
    Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
    Theory 52(6), 2006. Even, Berthier, Bach, Flammarion, Hendrikx, Gaillard, Massoulié,
    Taylor, "A Continuized View on Nesterov Acceleration for Stochastic Gradient Descent
    and Randomized Gossip", NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from fedsim.network.gossip_events import (
    EdgeEvents,
    Rates,
    elapsed_times,
    last_event_times,
    poisson_edge_events,
    schedule,
)
from fedsim.network.spectral import accelerated_parameters
from fedsim.seeding import numpy_rng


class GossipResult(NamedTuple):
    """Final states and the trace of the distance to consensus.

    Attributes:
        x: ``[n, d]`` final states (at ``t_end`` / after the last step).
        trace: ``[T]`` values of ``||x - mean(x)||_F^2`` at the requested times or steps
            (empty when none were requested).
        x_tilde: ``[n, d]`` the second variable of accelerated gossip (else ``None``).
    """

    x: Tensor
    trace: Tensor
    x_tilde: Tensor | None = None


def consensus_distance(x: Tensor) -> Tensor:
    """``||x - 1 mean(x)^T||_F^2`` of stacked states ``x [n, d]`` (a scalar tensor)."""
    return (x - x.mean(dim=0, keepdim=True)).square().sum()


# --------------------------------------------------------------------------- synchronous


def sync_gossip(
    x: Tensor, W: Tensor | np.ndarray, steps: int, trace_steps: Sequence[int] = ()
) -> GossipResult:
    """Synchronous gossip ``x <- W x`` for ``steps`` rounds.

    Args:
        x: ``[n, d]`` initial states.
        W: ``[n, n]`` doubly stochastic mixing matrix, e.g.
            :func:`fedsim.network.mixing.metropolis_weights`.
        steps: number of rounds (>= 0).
        trace_steps: rounds ``k`` (0..steps) after which to record the distance to consensus.

    Returns:
        :class:`GossipResult`.

    References:
        Xiao & Boyd, "Fast linear iterations for distributed averaging", Systems & Control
        Letters, 2004; Boyd et al., "Randomized Gossip Algorithms", 2006.
    """
    W = torch.as_tensor(W, dtype=x.dtype, device=x.device)
    _check_states(x, W.shape[0])
    wanted = set(int(k) for k in trace_steps)
    trace = {}
    for k in range(steps + 1):
        if k in wanted:
            trace[k] = consensus_distance(x)
        if k < steps:
            x = W @ x
    return GossipResult(x, _stack([trace[k] for k in trace_steps], x))


# --------------------------------------------------------------------------- randomized


def randomized_gossip(
    x: Tensor,
    events: EdgeEvents,
    trace_times: Sequence[float] | np.ndarray = (),
    batching: str = "levels",
) -> GossipResult:
    """Randomized pairwise gossip: at each event ``(i, j)``, ``x_i, x_j <- (x_i + x_j) / 2``.

    Args:
        x: ``[n, d]`` initial states (not modified).
        events: the clock's event stream
            (:func:`~fedsim.network.gossip_events.poisson_edge_events`).
        trace_times: non-decreasing instants at which to record ``||x - mean||^2``.
        batching: ``"levels"`` (default, fewest node-disjoint batches), ``"runs"``
            (consecutive matchings) or ``"events"`` (one event at a time, the reference);
            all give the same result (:func:`~fedsim.network.gossip_events.schedule`).

    Returns:
        :class:`GossipResult`.

    References:
        Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
        Theory, 2006.
    """
    _check_states(x, events.num_nodes)
    x = x.clone()
    ends, _, segments = _plan(events, trace_times, batching, x.device)
    trace = []
    for k, batches in enumerate(segments):
        for a, b in batches:
            _average_pairs(x, ends[2 * a : 2 * b].view(2, b - a))
        if k < len(segments) - 1:
            trace.append(consensus_distance(x))
    return GossipResult(x, _stack(trace, x))


def _average_pairs(x: Tensor, ends: Tensor) -> None:
    """One node-disjoint batch, ``ends = [[i_1..i_b], [j_1..j_b]]``: both take the average."""
    x[ends] = x[ends].mean(dim=0)  # [2, b, d] -> [b, d], written back to both ends


# --------------------------------------------------------------------------- accelerated


def accelerated_gossip(
    x: Tensor,
    events: EdgeEvents,
    eta: float,
    alpha_tilde: float,
    trace_times: Sequence[float] | np.ndarray = (),
    batching: str = "levels",
) -> GossipResult:
    """Continuized accelerated gossip (Even et al.), exact event-driven simulation.

    Every node keeps ``x_v``, ``x_tilde_v`` (initialised to ``x_v``, which preserves the
    average) and the time of its last event. Between its events the pair mixes by the
    linear ODE ``dx = eta (x_tilde - x) dt``, ``dx_tilde = eta (x - x_tilde) dt``, solved
    lazily. On an event ``(i, j)`` at time ``t``::

        for v in (i, j):                       # mix v up to t (elapsed delta)
            m = (x_v + x_tilde_v) / 2
            h = (x_v - x_tilde_v) / 2 * exp(-2 eta delta)
            x_v, x_tilde_v = m + h, m - h
        d = x_i - x_j
        x_tilde_i -= alpha_tilde d;  x_tilde_j += alpha_tilde d
        x_i, x_j <- (x_i + x_j) / 2

    A node is always mixed up to ``t`` before it is read; at trace times and at ``t_end``
    every node is mixed up to that instant.

    Args:
        x: ``[n, d]`` initial states (not modified).
        events: the clock's event stream.
        eta: mixing rate, :func:`fedsim.network.spectral.accelerated_parameters`.
        alpha_tilde: step of ``x_tilde`` per event (same function).
        trace_times: non-decreasing instants at which to record ``||x - mean||^2``.
        batching: ``"levels"`` (default, fewest node-disjoint batches), ``"runs"``
            (consecutive matchings) or ``"events"`` (one event at a time, the reference);
            all give the same result (:func:`~fedsim.network.gossip_events.schedule`).

    Returns:
        :class:`GossipResult` with ``x`` and ``x_tilde`` mixed up to ``t_end``.

    References:
        Even, Berthier, Bach, Flammarion, Hendrikx, Gaillard, Massoulié, Taylor, "A
        Continuized View on Nesterov Acceleration for Stochastic Gradient Descent and
        Randomized Gossip", NeurIPS 2021.
    """
    _check_states(x, events.num_nodes)
    x, xt = x.clone(), x.clone()
    ends, source, segments = _plan(events, trace_times, batching, x.device)
    dt_i, dt_j = elapsed_times(events)
    elapsed = torch.as_tensor(np.concatenate((dt_i, dt_j))[source], dtype=x.dtype, device=x.device)
    decay = torch.exp(-2.0 * eta * elapsed).unsqueeze(1)  # [2E, 1], in batch layout

    instants = np.append(np.asarray(trace_times, dtype=np.float64), events.t_end)
    last = torch.as_tensor(last_event_times(events, instants), dtype=x.dtype, device=x.device)
    trace = []
    for k, batches in enumerate(segments):
        for a, b in batches:
            _accelerated_pairs(x, xt, ends[2 * a : 2 * b], decay[2 * a : 2 * b], alpha_tilde)
        mix = torch.exp(-2.0 * eta * (float(instants[k]) - last[k])).unsqueeze(1)  # [n, 1]
        xk, xtk = _mix(x, xt, mix)
        if k < len(segments) - 1:
            trace.append(consensus_distance(xk))
    return GossipResult(xk, _stack(trace, x), xtk)


def _mix(x: Tensor, xt: Tensor, decay: Tensor) -> tuple[Tensor, Tensor]:
    """Solve the mixing ODE: the mean of (x, x_tilde) stays, their half-gap decays."""
    m = (x + xt) * 0.5
    h = (x - xt) * 0.5 * decay
    return m + h, m - h


def _accelerated_pairs(x: Tensor, xt: Tensor, ends: Tensor, decay: Tensor, alpha: float) -> None:
    """One node-disjoint batch of events, ``ends = [i_1..i_b, j_1..j_b]``, decays ``[2b, 1]``."""
    b = ends.numel() // 2
    v, vt = _mix(x.index_select(0, ends), xt.index_select(0, ends), decay)  # [2b, d], mixed to t
    d = v[:b] - v[b:]  # x_i - x_j
    vt = vt - alpha * torch.cat((d, -d))  # x_tilde_i -= alpha d; x_tilde_j += alpha d
    avg = (v[:b] + v[b:]) * 0.5
    x.index_copy_(0, ends, torch.cat((avg, avg)))
    xt.index_copy_(0, ends, vt)


# --------------------------------------------------------------------------- rates


def fit_rate(
    times: np.ndarray,
    trace: np.ndarray | Tensor,
    t_min: float = 0.0,
    t_max: float = float("inf"),
    floor: float = 1e-20,
) -> float:
    """Exponential decay rate of a trace: minus the least-squares slope of its log.

    Args:
        times: ``[T]`` instants of the trace.
        trace: ``[T]`` values of ``||x - mean||^2`` (positive).
        t_min: start of the fitted window (after the burn-in).
        t_max: end of the fitted window.
        floor: points below ``floor * trace[0]`` are dropped (float precision reached).

    Returns:
        The rate ``r`` of ``trace ~ C exp(-r t)`` per unit of simulated time.
    """
    times = np.asarray(times, dtype=np.float64)
    rel = np.asarray(trace, dtype=np.float64) / float(trace[0])
    keep = (times >= t_min) & (times <= t_max) & (rel > floor)
    if keep.sum() < 3:
        raise ValueError("fewer than 3 trace points in the fitted window; lengthen it")
    return float(-np.polyfit(times[keep], np.log(rel[keep]), 1)[0])


def measured_rate(
    G: nx.Graph,
    method: str,
    t_end: float,
    t_min: float,
    seeds: Sequence[int] = (0, 1, 2),
    rates: Rates = 1.0,
    dim: int = 8,
    num_points: int = 121,
) -> float:
    """Simulate gossip on ``G`` and fit the decay rate of ``E ||x - mean||^2``.

    Events come from ``numpy_rng(seed, "network/gossip")``, initial states ``[n, dim]``
    (float64, standard normal) from ``numpy_rng(seed, "gossip/init")``. The traces,
    each divided by its initial value, are averaged over the seeds (the estimate of the
    expectation) and the rate is fitted on ``[t_min, t_end]`` by :func:`fit_rate`; it
    estimates :func:`fedsim.network.gossip_moments.second_moment_rates`.

    Args:
        G: connected undirected graph.
        method: ``"boyd"`` (:func:`randomized_gossip`) or ``"accelerated"``.
        t_end: simulated horizon.
        t_min: burn-in before the fitted window.
        seeds: root seeds averaged over.
        rates: edge rates (see :func:`fedsim.network.gossip_events.edge_rates`).
        dim: columns of the state (each a scalar averaging problem on the same events).
        num_points: trace instants on ``[0, t_end]``.

    Returns:
        The fitted rate of the seed-averaged trace.

    References:
        Boyd et al., IEEE Trans. Inf. Theory, 2006; Even et al., NeurIPS 2021.
    """
    if method not in ("boyd", "accelerated"):
        raise ValueError(f"unknown method {method!r}; allowed: boyd, accelerated")
    times = np.linspace(0.0, t_end, num_points)
    params = accelerated_parameters(G, rates) if method == "accelerated" else None
    traces = []
    for seed in seeds:
        events = poisson_edge_events(G, rates, t_end, numpy_rng(seed, "network/gossip"))
        init = numpy_rng(seed, "gossip/init").standard_normal((G.number_of_nodes(), dim))
        x = torch.as_tensor(init, dtype=torch.float64)
        if params is None:
            result = randomized_gossip(x, events, times)
        else:
            result = accelerated_gossip(x, events, *params, trace_times=times)
        trace = result.trace.numpy()
        traces.append(trace / trace[0])
    return fit_rate(times, np.mean(traces, axis=0), t_min)


# --------------------------------------------------------------------------- plumbing


def _plan(
    events: EdgeEvents, trace_times: Sequence[float] | np.ndarray, batching: str, device
) -> tuple[Tensor, np.ndarray, list[list[tuple[int, int]]]]:
    """Lay the stream out batch by batch and cut it at the trace times.

    Returns:
        ``ends [2E]``: for a batch at layout positions ``[a, b)``, ``ends[2a:2b]`` holds its
        first endpoints then its second endpoints;
        ``source [2E]``: for each slot of ``ends``, its index in ``concatenate((i, j))``;
        ``segments``: the batches ``(a, b)`` before the 1st trace time, ..., after the last.
    """
    trace_times = np.asarray(trace_times, dtype=np.float64)
    if trace_times.size and np.any(np.diff(trace_times) < 0):
        raise ValueError("trace_times must be non-decreasing")
    if trace_times.size and (trace_times[0] < 0 or trace_times[-1] > events.t_end):
        raise ValueError(f"trace_times must lie in [0, t_end = {events.t_end}]")
    E = events.times.size
    cuts = np.searchsorted(events.times, trace_times, side="right")
    order, bounds = schedule(events, batching, cuts)
    batch = np.repeat(np.arange(bounds.size - 1), np.diff(bounds))  # [E] batch of position p
    p = np.arange(E)
    slots = np.concatenate((bounds[batch] + p, bounds[batch + 1] + p))  # slot of i, of j
    source = np.empty(2 * E, dtype=np.int64)
    source[slots] = np.concatenate((order, order + E))
    ends = np.concatenate((events.i, events.j))[source]
    batches = list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))
    segments, r = [], 0
    for c in cuts.tolist() + [E]:  # a cut is a layout boundary: nothing moves across it
        first = r
        while r < len(batches) and batches[r][1] <= c:
            r += 1
        segments.append(batches[first:r])
    return torch.as_tensor(ends, device=device), source, segments


def _check_states(x: Tensor, n: int) -> None:
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"states must be [n, d] with n = {n} nodes, got shape {tuple(x.shape)}")


def _stack(values: list[Tensor], like: Tensor) -> Tensor:
    if not values:
        return torch.empty(0, dtype=like.dtype, device=like.device)
    return torch.stack(values)
