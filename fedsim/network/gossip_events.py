"""Poisson edge clocks -> a time-ordered stream of pairwise gossip events (numpy only).

Each undirected edge ``{u, v}`` of the graph carries one Poisson clock of rate ``p_uv``
("unit-rate edges": ``p_uv = 1`` on every edge). The superposition of these clocks is a
single Poisson process of total rate ``R = sum_edges p_uv`` whose marks (the edge that
fired) are drawn independently with probability ``p_uv / R``. This module draws that
stream vectorised, and derives from it everything about *time* that the tensor side
needs: the previous event of each node, the time elapsed since it, the last event time
of every node at chosen instants, and a split of the stream into consecutive runs of
node-disjoint events that can be applied as one batch.

Nodes are numbered by their rank in ``sorted(G.nodes)`` (node ``v`` of the graphs of
:mod:`fedsim.network.topology` is row ``v``).

References:
    Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
    Theory 52(6), 2006 (asynchronous time model, Section II).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import networkx as nx
import numpy as np

Rates = float | str | Mapping


class EdgeEvents(NamedTuple):
    """A gossip event stream on ``num_nodes`` nodes over ``[0, t_end]``.

    Attributes:
        times: ``[E]`` float64 event times, non-decreasing, in ``[0, t_end]``.
        i: ``[E]`` int64 first endpoint of the edge that fired (``i < j``).
        j: ``[E]`` int64 second endpoint.
        t_end: the simulated horizon.
        num_nodes: ``n``.
    """

    times: np.ndarray
    i: np.ndarray
    j: np.ndarray
    t_end: float
    num_nodes: int


def edge_rates(G: nx.Graph, rates: Rates = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The edges of ``G`` as index arrays with the rate of each edge's clock.

    Args:
        G: undirected graph; self loops are ignored.
        rates: one rate for every edge (float), the name of an edge attribute (missing on
            an edge -> 1.0), or a mapping ``(u, v) -> rate`` (either orientation).

    Returns:
        ``(u [m], v [m], p [m])`` with ``u < v`` node indices (ranks in ``sorted(G)``) and
        ``p > 0`` float64 rates, edges in a deterministic order.
    """
    if G.is_directed():
        raise ValueError("gossip needs an undirected graph")
    index = {v: k for k, v in enumerate(sorted(G.nodes))}
    rows = []
    for a, b, data in G.edges(data=True):
        if a == b:
            continue
        rows.append((min(index[a], index[b]), max(index[a], index[b]), _rate(rates, a, b, data)))
    if not rows:
        raise ValueError("gossip needs a graph with at least one edge")
    rows.sort()
    u, v, p = zip(*rows, strict=True)
    p_arr = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(p_arr) & (p_arr > 0)):
        raise ValueError(f"edge rates must be finite and > 0, got min {p_arr.min()}")
    return np.asarray(u, dtype=np.int64), np.asarray(v, dtype=np.int64), p_arr


def _rate(rates: Rates, a, b, data: dict) -> float:
    if isinstance(rates, str):
        return float(data.get(rates, 1.0))
    if isinstance(rates, Mapping):
        if (a, b) in rates:
            return float(rates[(a, b)])
        if (b, a) in rates:
            return float(rates[(b, a)])
        raise ValueError(f"no rate given for edge ({a}, {b})")
    return float(rates)


def poisson_edge_events(
    G: nx.Graph, rates: Rates, t_end: float, rng: np.random.Generator
) -> EdgeEvents:
    """Draw the events of independent Poisson edge clocks on ``[0, t_end]``.

    Superposition: inter-arrival times are exponential with mean ``1 / R``,
    ``R = sum_edges p_uv``, and each event picks edge ``uv`` with probability ``p_uv / R``.
    Drawn in vectorised blocks (no per-event Python loop).

    Args:
        G: undirected graph.
        rates: edge rates (see :func:`edge_rates`); ``1.0`` for unit-rate edges.
        t_end: horizon (>= 0).
        rng: the caller's stream, e.g. ``seeding.numpy_rng(seed, "network/gossip")``.

    Returns:
        The :class:`EdgeEvents` stream.

    References:
        Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
        Theory, 2006.
    """
    if not np.isfinite(t_end) or t_end < 0:
        raise ValueError(f"t_end must be finite and >= 0, got {t_end}")
    u, v, p = edge_rates(G, rates)
    total = float(p.sum())
    times = _arrival_times(total, float(t_end), rng)
    edge = np.searchsorted(np.cumsum(p) / total, rng.random(times.size), side="right")
    edge = np.minimum(edge, p.size - 1)  # guards the round-off at the top of the cdf
    return EdgeEvents(times, u[edge], v[edge], float(t_end), G.number_of_nodes())


def _arrival_times(rate: float, t_end: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times of a Poisson process of ``rate`` on ``[0, t_end]``, in blocks."""
    mean = rate * t_end
    block = int(mean + 6.0 * np.sqrt(mean) + 16)
    chunks, last = [], 0.0
    while last <= t_end:
        t = last + np.cumsum(rng.exponential(1.0 / rate, size=block))
        chunks.append(t)
        last = float(t[-1])
    times = np.concatenate(chunks)
    return times[: np.searchsorted(times, t_end, side="right")]


Stream = Any  # EdgeEvents, or async_gossip_clock.AsyncSchedule (steps have j = -1)


def _times(stream: Stream) -> np.ndarray:
    """The event times of either kind of stream."""
    return stream.times if hasattr(stream, "times") else stream.time


def previous_event(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """For every event, the index of the previous event of each endpoint (-1 if none).

    Args:
        stream: the events (``EdgeEvents``, or an ``AsyncSchedule`` whose steps have ``j = -1``).

    Returns:
        ``(prev_i [N], prev_j [N])`` int64; ``prev_j`` is -1 for steps.
    """
    N = len(_times(stream))
    node = np.stack((stream.i, stream.j), axis=1).ravel()  # [2N]: slots 2k, 2k+1 of event k
    slot = np.flatnonzero(node >= 0)
    order = np.argsort(node[slot], kind="stable")  # by node, then by event
    s_node, s_slot = node[slot][order], slot[order]
    prev_sorted = np.full(s_slot.size, -1, dtype=np.int64)
    same = s_node[1:] == s_node[:-1]
    prev_sorted[1:][same] = s_slot[:-1][same] // 2
    prev = np.full(2 * N, -1, dtype=np.int64)
    prev[s_slot] = prev_sorted
    return prev[0::2], prev[1::2]


def elapsed_times(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """Time since each endpoint's previous event of any kind (or since 0) at every event.

    What the accelerated (continuized) variant mixes by: a node's pair ``(x, x~)`` follows
    the mixing ODE between *any* two of its events, steps included.

    Args:
        stream: the events (``EdgeEvents``, or an ``AsyncSchedule`` whose steps have ``j = -1``).

    Returns:
        ``(dt_i [N], dt_j [N])`` float64 >= 0; ``dt_j`` is 0 for steps.
    """
    prev_i, prev_j = previous_event(stream)
    t = _times(stream)
    before_i = np.where(prev_i >= 0, t[np.maximum(prev_i, 0)], 0.0)
    before_j = np.where(prev_j >= 0, t[np.maximum(prev_j, 0)], 0.0)
    return t - before_i, np.where(stream.j >= 0, t - before_j, 0.0)


def last_event_times(stream: Stream, at: Sequence[float] | np.ndarray) -> np.ndarray:
    """Each node's last event time at or before each instant of ``at`` (0 if none yet).

    Args:
        stream: the events (``EdgeEvents``, or an ``AsyncSchedule`` whose steps have ``j = -1``).
        at: ``[T]`` instants.

    Returns:
        ``[T, n]`` float64.
    """
    at = np.asarray(at, dtype=np.float64).reshape(-1)
    n, N = stream.num_nodes, len(_times(stream))
    if N == 0:
        return np.zeros((at.size, n))
    node = np.concatenate((stream.i, stream.j))
    idx = np.concatenate((np.arange(N), np.arange(N)))
    real = node >= 0
    keys = np.sort(node[real] * (N + 1) + idx[real])
    count = np.searchsorted(_times(stream), at, side="right")  # events applied by each instant
    nodes = np.arange(n)[None, :]
    pos = np.searchsorted(keys, nodes * (N + 1) + count[:, None], side="left") - 1  # [T, n]
    hit = keys[np.maximum(pos, 0)]
    found = (pos >= 0) & (hit // (N + 1) == nodes)
    return np.where(found, _times(stream)[np.minimum(hit % (N + 1), N - 1)], 0.0)


def dependency_levels(stream: Stream, cuts: Sequence[int] | np.ndarray = ()
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Group the stream into node-disjoint batches by dependency level.

    An event's level is one more than the highest level among the previous events of its
    endpoints (one for a step, two for an exchange), and above every level before the
    last cut preceding it. One level touches each node at most once, and every node meets
    its events in stream order.

    Args:
        stream: the events (``EdgeEvents``, or an ``AsyncSchedule`` whose steps have ``j = -1``).
        cuts: event indices ``c`` that must be batch boundaries (nothing moves across).

    Returns:
        ``(order [N], bounds [B + 1])``: batch ``b`` is events ``order[bounds[b]:bounds[b+1]]``.
    """
    N = len(_times(stream))
    prev_i, prev_j = previous_event(stream)
    level = [0] * N + [-1]  # index -1 (no previous event) reads the sentinel -1
    cut_at = set(np.asarray(cuts, dtype=np.int64).reshape(-1).tolist())
    floor, top = -1, -1
    for k, (a, b) in enumerate(zip(prev_i.tolist(), prev_j.tolist(), strict=True)):
        if k in cut_at:
            floor = top
        la, lb = level[a], level[b]
        lev = (la if la > lb else lb) + 1
        if lev <= floor:
            lev = floor + 1
        level[k] = lev
        if lev > top:
            top = lev
    levels = np.asarray(level[:N], dtype=np.int64)
    order = np.argsort(levels, kind="stable")
    if N == 0:
        return order, np.zeros(1, dtype=np.int64)
    bounds = np.concatenate(([0], np.cumsum(np.bincount(levels))))
    return order, np.unique(bounds.astype(np.int64))


def disjoint_runs(stream: Stream, cuts: Sequence[int] | np.ndarray = ()) -> np.ndarray:
    """Split the stream into consecutive runs of node-disjoint events (greedy).

    Args:
        stream: the events (``EdgeEvents``, or an ``AsyncSchedule`` whose steps have ``j = -1``).
        cuts: extra event indices where a run must start.

    Returns:
        ``[R + 1]`` int64 boundaries ``b``: run ``r`` is events ``b[r]:b[r + 1]``.
    """
    N = len(_times(stream))
    prev_i, prev_j = previous_event(stream)
    latest = np.maximum(prev_i, prev_j).tolist()
    starts, start = [0], 0
    for k in range(1, N):
        if latest[k] >= start:
            starts.append(k)
            start = k
    bounds = np.asarray(starts + [N], dtype=np.int64)
    return np.union1d(bounds, np.clip(np.asarray(cuts, dtype=np.int64), 0, N))


def matchings(events: EdgeEvents) -> list[tuple[int, int]]:
    """The runs of :func:`disjoint_runs` as ``(start, stop)`` pairs (each a matching)."""
    b = disjoint_runs(events)
    return list(zip(b[:-1].tolist(), b[1:].tolist(), strict=True))


def schedule(
    events: Stream, how: str = "levels", cuts: Sequence[int] | np.ndarray = ()
) -> tuple[np.ndarray, np.ndarray]:
    """A batch schedule of the stream: ``(order [E], bounds [B + 1])``.

    Args:
        events: the stream (``EdgeEvents`` or an ``AsyncSchedule``).
        how: ``"levels"`` (:func:`dependency_levels`, fewest batches), ``"runs"``
            (:func:`disjoint_runs`, consecutive matchings) or ``"events"`` (one per batch).
        cuts: event indices that must be batch boundaries (with nothing reordered across).

    Returns:
        Batch ``b`` is events ``order[bounds[b]:bounds[b + 1]]``; each batch is node-disjoint.
    """
    E = len(_times(events))
    cuts = np.clip(np.asarray(cuts, dtype=np.int64).reshape(-1), 0, E)
    if how == "levels":
        return dependency_levels(events, cuts)
    if how == "runs":
        return np.arange(E), disjoint_runs(events, cuts)
    if how == "events":
        return np.arange(E), np.arange(E + 1)
    raise ValueError(f"unknown batching {how!r}; allowed: levels, runs, events")
