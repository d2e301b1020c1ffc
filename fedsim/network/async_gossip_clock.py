"""The simulated clock of asynchronous (continuized) gossip SGD.

The clock says when; the algorithm says what. This module (numpy only, never torch)
turns a graph with links, a compute model and message sizes into a time-ordered stream
of local gradient steps and pairwise exchanges (:class:`AsyncSchedule`, drawn by
:class:`AsyncGossipClock`) that a runner replays with tensor work. It re-exports the
stream helpers of :mod:`fedsim.network.gossip_events`, which read this stream as they
read a gossip stream: :func:`elapsed_times`, :func:`last_event_times` and
:func:`previous_event` for the accelerated variant, and a split of the stream into
node-disjoint batches (:func:`batches`, ``gossip_events.schedule``). Nodes, links and
compute follow the conventions shared with the synchronous clock, see
:mod:`fedsim.network.link_table`.

Asynchronous gossip SGD. Over ``[0, t_end]``:

* **Steps.** Every node takes local gradient steps from time 0; a step is an event at
  its *end* (when its update is applied) and its ``start_s`` is the previous step's end
  (0 for the first). ``step_times="poisson"`` (default): the step ends of node ``v`` are
  a Poisson process of rate ``1 / mean step time of v`` (the compute model's mean for
  ``work_per_step`` samples): the continuized model of Even et al., where every node
  acts at its own exponential clock's rings. ``step_times="back_to_back"``: the node
  computes without pause, each step a fresh compute-model draw (a renewal process with
  the compute model's own spread). Both take ``~ t_end / mean step time`` steps.
* **Exchange clocks.** Every undirected edge fires as an independent Poisson process of
  rate ``gossip_rate`` per simulated second
  (:func:`~fedsim.network.gossip_events.poisson_edge_events`, stream
  ``numpy_rng(seed, "network/gossip")``; unit-rate edges as in docs/gossip.md).
* **Cost.** An exchange on ``{i, j}`` sends both models at once in opposite directions
  of the full-duplex link, so it takes ``latency_ij + 8 nbytes / bw_ij`` (one message
  time, not two).
* **When the averaging applies.** An exchange is one *atomic* event at its completion
  time ``start_s + cost`` (the stream's ``time``), reading both nodes' values *at that
  time*: the cost shows up as a delay before the averaging and as time the nodes are busy
  with it. Why: the stream stays a sequence of atomic events that the existing replay
  machinery (``index_select`` / ``index_put_`` batches) applies without per-exchange
  snapshots, and a local step that ends during the exchange is never overwritten (reading
  the values at ``start_s`` and writing the average at completion would erase it). The
  cost is that the average includes the few local steps taken while the messages were in
  flight, which the real messages (sent at ``start_s``) would not; ``start_s`` is
  returned, so a runner wanting the send-time semantics can snapshot there.
* **Busy nodes.** A node computes and communicates concurrently (separate resources):
  exchanges never delay local steps and steps never delay exchanges. A node takes part in
  at most one exchange at a time. ``busy="queue"`` (default): an exchange that fires
  while an endpoint is busy waits; exchanges are served in firing order per node (FIFO,
  no overtaking: an exchange reserves both endpoints from its firing, so a free endpoint
  waits for the busy one), i.e. ``start_s = max(fired_s, end of every earlier-fired
  exchange of i or of j)``. When ``degree * gossip_rate * cost`` approaches 1 the queues
  grow without bound (watch ``start_s - fired_s``). ``busy="drop"``: an exchange that
  fires while an endpoint is busy is lost (counted in ``dropped``); ``start_s = fired_s``.
  Either way the exchanges of one node never overlap in time (half-open intervals
  ``[start_s, time)``). Exchanges not completed by ``t_end`` are left out (counted in
  ``unfinished``).
* **Order.** Events are sorted by ``time``; ties go steps first, then by node, then in
  firing order. Every node's events are therefore in time order and a node's exchanges
  in firing order.
* **Batches.** A step on ``v`` conflicts with every other event touching ``v``; an
  exchange on ``{i, j}`` with every event touching ``i`` or ``j``. :func:`batches` groups
  node-disjoint events without changing any node's order of events (dependency levels by
  default), so applying batch after batch equals applying the events one by one.
* **Determinism.** :meth:`AsyncGossipClock.events` is a pure function of the seed and its
  arguments: it draws from fresh ``network/compute`` and ``network/gossip`` streams at
  every call (unlike :class:`~fedsim.network.sync_gossip_clock.SyncGossipClock`, which
  keeps one compute stream across its rounds).

Speed: the stream draws steps in vectorised blocks; the busy rule and the dependency
levels are one pass over the exchanges / events with plain lists (about 1 s per million
events).

References:
    Lian et al., "Asynchronous Decentralized Parallel Stochastic Gradient Descent"
    (ICML 2018); Even et al., "A Continuized View on Nesterov Acceleration for Stochastic
    Gradient Descent and Randomized Gossip" (NeurIPS 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import networkx as nx
import numpy as np

from fedsim.config import NetworkConfig
from fedsim.network.compute import ComputeModel, make_compute_model
from fedsim.network.gossip_events import (
    EdgeEvents,
    poisson_edge_events,
)
from fedsim.network.gossip_events import elapsed_times as elapsed_times  # re-exported:
from fedsim.network.gossip_events import last_event_times as last_event_times  # one stream
from fedsim.network.gossip_events import previous_event as previous_event  # code for both
from fedsim.network.gossip_events import schedule as batches  # noqa: F401  (same batching)
from fedsim.network.link_table import check_nbytes, check_work, link_table
from fedsim.seeding import numpy_rng

BUSY_RULES = ("queue", "drop")
STEP_TIMES = ("poisson", "back_to_back")
STEP, EXCHANGE = 0, 1
_FIRST_BLOCK = 16  # steps per node in the first block of draws (then doubling)
_BLOCK_CELLS = 1 << 22  # at most this many draws per block


class AsyncSchedule(NamedTuple):
    """A merged, time-ordered stream of local steps and pairwise exchanges on ``[0, t_end]``.

    Attributes:
        kind: ``[N]`` int8, ``0`` (``STEP``) a local gradient step, ``1`` (``EXCHANGE``).
        time: ``[N]`` float64 when the event is applied (a step's end, an exchange's
            completion), non-decreasing, in ``[0, t_end]``.
        i: ``[N]`` int64 the stepping node, or an exchange's first endpoint (``i < j``).
        j: ``[N]`` int64 an exchange's second endpoint; ``-1`` for steps.
        start_s: ``[N]`` when the step started / the exchange's messages left.
        fired_s: ``[N]`` when the exchange's edge clock fired (``<= start_s``; a step's
            ``start_s``).
        t_end: the horizon.
        num_nodes: ``n``.
        dropped: exchanges lost because an endpoint was busy (``busy="drop"``).
        unfinished: exchanges fired but not completed by ``t_end`` (left out).
    """

    kind: np.ndarray
    time: np.ndarray
    i: np.ndarray
    j: np.ndarray
    start_s: np.ndarray
    fired_s: np.ndarray
    t_end: float
    num_nodes: int
    dropped: int = 0
    unfinished: int = 0

    @property
    def num_events(self) -> int:
        """``N``."""
        return int(self.time.size)

    def steps_per_node(self) -> np.ndarray:
        """``[n]`` local steps each node completed."""
        return np.bincount(self.i[self.kind == STEP], minlength=self.num_nodes)

    def exchanges(self) -> EdgeEvents:
        """The exchanges alone, as a gossip stream at their completion times."""
        ex = self.kind == EXCHANGE
        return EdgeEvents(self.time[ex], self.i[ex], self.j[ex], self.t_end, self.num_nodes)


class AsyncGossipClock:
    """Timing of asynchronous (continuized) gossip SGD: local steps and Poisson exchanges.

    Args:
        cfg: the network section (link defaults, compute model).
        graph: undirected graph; one learner per node.
        seed: the scenario's root seed (streams ``network/compute``, ``network/gossip``).
        base_dir: folder that relative compute-trace paths are resolved against.
        busy: what happens to an exchange that fires while an endpoint is in another
            exchange: ``"queue"`` (default, it waits) or ``"drop"`` (it is lost).

    Raises:
        ScenarioError: a bad graph, link value or compute section.

    References:
        Lian et al., "Asynchronous Decentralized Parallel Stochastic Gradient Descent"
        (ICML 2018); Even et al., "A Continuized View on Nesterov Acceleration for
        Stochastic Gradient Descent and Randomized Gossip" (NeurIPS 2021).
    """

    def __init__(self, cfg: NetworkConfig, graph: nx.Graph, seed: int = 0,
                 base_dir: Path | None = None, busy: str = "queue"):
        if busy not in BUSY_RULES:
            raise ValueError(f"unknown busy rule {busy!r}; allowed: {', '.join(BUSY_RULES)}")
        self.cfg = cfg
        self.busy = busy
        self.seed = int(seed)
        self.links = link_table(cfg, graph)
        self.num_nodes = self.links.num_nodes
        self._graph = nx.Graph()  # the links on ranks, as poisson_edge_events reads them
        self._graph.add_nodes_from(range(self.num_nodes))
        self._graph.add_edges_from(zip(self.links.u.tolist(), self.links.v.tolist(),
                                       strict=True))
        self._compute: ComputeModel = make_compute_model(cfg.compute, self.num_nodes, base_dir)

    def events(self, t_end: float, work_per_step: float | Sequence[float], nbytes: int,
               gossip_rate: float, step_times: str = "poisson",
               max_events: int = 50_000_000) -> AsyncSchedule:
        """The stream of local steps and exchanges on ``[0, t_end]``.

        Args:
            t_end: the horizon (simulated seconds, finite, >= 0).
            work_per_step: samples one local step processes (a number, or ``[n]``), > 0.
            nbytes: size of the model each endpoint of an exchange sends.
            gossip_rate: rate of each edge's Poisson clock, per simulated second (>= 0).
            step_times: ``"poisson"`` (default) or ``"back_to_back"``, see the module doc.
            max_events: refuse to draw more steps than this (a guard against a tiny
                compute time or a huge horizon).

        Returns:
            The :class:`AsyncSchedule`.

        Raises:
            ValueError: an argument out of range, a zero compute time, too many events.
        """
        t_end = float(t_end)
        if not (math.isfinite(t_end) and t_end >= 0):
            raise ValueError(f"t_end must be finite and >= 0, got {t_end}")
        rate = float(gossip_rate)
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"gossip_rate must be finite and >= 0, got {gossip_rate}")
        if step_times not in STEP_TIMES:
            raise ValueError(f"unknown step_times {step_times!r}; allowed: "
                             f"{', '.join(STEP_TIMES)}")
        w = check_work(work_per_step, self.num_nodes, "work_per_step", positive=True)
        nbytes = check_nbytes(nbytes)
        s_node, s_start, s_end = self._steps(t_end, w, int(max_events), step_times)
        x = self._exchanges(t_end, nbytes, rate)
        x_fired, x_start, x_end, x_i, x_j, x_seq, dropped, unfinished = x
        kind = np.concatenate((np.zeros(s_node.size, np.int8), np.ones(x_i.size, np.int8)))
        time = np.concatenate((s_end, x_end))
        node_i = np.concatenate((s_node, x_i))
        seq = np.concatenate((np.arange(s_node.size, dtype=np.int64), x_seq))  # tie-breaks
        order = np.lexsort((seq, node_i, kind, time))
        return AsyncSchedule(
            kind=kind[order], time=time[order], i=node_i[order],
            j=np.concatenate((np.full(s_node.size, -1, np.int64), x_j))[order],
            start_s=np.concatenate((s_start, x_start))[order],
            fired_s=np.concatenate((s_start, x_fired))[order],
            t_end=t_end, num_nodes=self.num_nodes, dropped=dropped, unfinished=unfinished)

    def _steps(self, t_end: float, w: np.ndarray, max_events: int, step_times: str
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every node's local steps ending by ``t_end``: node, start, end."""
        rng = numpy_rng(self.seed, "network/compute")
        n = self.num_nodes
        offset = np.zeros(n)  # end of each node's last drawn step
        active = np.arange(n, dtype=np.int64)
        nodes, starts, ends = [], [], []
        block, total = _FIRST_BLOCK, 0
        while active.size:
            clients = np.repeat(active, block)
            if step_times == "poisson":  # exponential gaps of the node's mean step time
                mean = self._compute.mean_times(clients, w[clients])
                dur = rng.standard_exponential(clients.size) * mean
            else:
                dur = self._compute.times(clients, w[clients], rng)
            dur = np.asarray(dur, dtype=np.float64)
            if not (np.isfinite(dur).all() and dur.min() > 0):
                bad = int(clients[np.flatnonzero(~(np.isfinite(dur) & (dur > 0)))[0]])
                raise ValueError(f"node {bad}: a local step must take a finite time > 0 "
                                 f"(check network.compute and work_per_step)")
            dur = dur.reshape(active.size, block)
            end = offset[active, None] + np.cumsum(dur, axis=1)  # [A, block]
            start = np.concatenate((offset[active, None], end[:, :-1]), axis=1)
            keep = end <= t_end
            total += int(keep.sum())
            if total > max_events:
                raise ValueError(f"more than max_events = {max_events} local steps by t_end = "
                                 f"{t_end}; shorten the horizon or raise max_events")
            nodes.append(np.broadcast_to(active[:, None], keep.shape)[keep])
            starts.append(start[keep])
            ends.append(end[keep])
            offset[active] = end[:, -1]
            active = active[end[:, -1] <= t_end]
            block = min(2 * block, max(_FIRST_BLOCK, _BLOCK_CELLS // max(active.size, 1)))
        if not nodes:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        return np.concatenate(nodes), np.concatenate(starts), np.concatenate(ends)

    def _exchanges(self, t_end: float, nbytes: int, rate: float):
        """Fired, start and completion times, endpoints, firing index, dropped, unfinished."""
        lk = self.links
        if rate == 0 or lk.u.size == 0:
            e = np.zeros(0)
            z = np.zeros(0, np.int64)
            return e, e, e, z, z, z, 0, 0
        ev = poisson_edge_events(self._graph, rate, t_end, numpy_rng(self.seed, "network/gossip"))
        n = self.num_nodes
        edge = np.searchsorted(lk.u * n + lk.v, ev.i * n + ev.j)
        cost = lk.message_s(nbytes)[edge]
        start, kept = _busy_rule(self.busy, ev.times, ev.i, ev.j, cost, n)
        end = start + cost
        done = kept & (end <= t_end)
        idx = np.flatnonzero(done)
        dropped = int((~kept).sum())
        unfinished = int((kept & ~done).sum())
        return (ev.times[idx], start[idx], end[idx], ev.i[idx], ev.j[idx], idx, dropped,
                unfinished)


def _busy_rule(busy: str, fired: np.ndarray, i: np.ndarray, j: np.ndarray, cost: np.ndarray,
               n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start time of each fired exchange and whether it is kept, one pass in firing order."""
    free = [0.0] * n  # when each node's last exchange ends
    starts = []
    keep = []
    push, mark = starts.append, keep.append
    if busy == "queue":
        for t, a, b, c in zip(fired.tolist(), i.tolist(), j.tolist(), cost.tolist(),
                              strict=True):
            fa, fb = free[a], free[b]
            s = t if (t >= fa and t >= fb) else (fa if fa > fb else fb)
            free[a] = free[b] = s + c
            push(s)
        return np.asarray(starts, dtype=np.float64), np.ones(fired.size, dtype=bool)
    for t, a, b, c in zip(fired.tolist(), i.tolist(), j.tolist(), cost.tolist(), strict=True):
        ok = t >= free[a] and t >= free[b]
        if ok:
            free[a] = free[b] = t + c
        mark(ok)
    return fired.copy(), np.asarray(keep, dtype=bool).reshape(-1)


# --------------------------------------------------------------------------- stream helpers


def time_cuts(sched: AsyncSchedule, times: Sequence[float] | np.ndarray) -> np.ndarray:
    """Event indices where trace instants fall, for the ``cuts`` of :func:`batches`.

    Args:
        sched: the stream.
        times: ``[T]`` non-decreasing instants.

    Returns:
        ``[T]`` int64 ``c``: events ``< c`` are applied by the instant, events ``>= c`` after.
    """
    return np.searchsorted(sched.time, np.asarray(times, dtype=np.float64), side="right")
