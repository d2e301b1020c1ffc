"""The simulated clock of federated rounds: who downloads, computes and uploads when.

The clock says when; the algorithm says what. This module never imports torch:
``FederatedClock.run_round`` turns a selection, the work and the message sizes
into a :class:`~fedsim.network.schedule.RoundSchedule` that the runner replays.

A round, for each selected client: download ``bytes_down`` from the server over
the client's down path, compute (``fedsim.network.compute``), upload
``bytes_up`` over its up path. Transfers follow ``fedsim.network.links``: path
latency plus bits at the path's rate, with equal shares on shared links.

Network shape: a star, or routes over a graph to the server node
(:mod:`fedsim.network.server_paths`).

Round policies (``network.policy``):

- ``all``: the round ends when every selected client has uploaded or dropped.
- ``first_k``: it ends at the k-th arrival; later clients are stragglers. With
  fewer than k possible arrivals it ends when every client has uploaded or dropped.
- ``deadline``: it ends at ``start + deadline_s``, or earlier once every client
  has uploaded or dropped; it never lasts longer than ``deadline_s``
  (``end_s <= start_s + deadline_s``). An upload arriving exactly at the end counts.

Behaviour choices:

- Stragglers are abandoned at the round's end: timings after ``end_s`` are
  ``inf``. Bytes count what was pushed onto the wire before the round ended (or
  before the client dropped), to the nearest byte: a complete transfer counts in
  full, an interrupted one in part, one never started not at all.
- Drops: see ``fedsim.network.availability``. A client that drops has done
  exactly the phases that finished strictly before its drop moment; a drop at
  the same moment as its upload's arrival wins (the update is lost).
- Every selected client dropped: the round ends at the deadline (``deadline``),
  otherwise at the later of the last drop and ``start + the longest uncontended
  download`` among the selected, so rounds always make progress.
- Nobody selected: ``deadline`` rounds last ``deadline_s``; other rounds end
  when the next client comes online (trace availability) or at once.
- Order: ``completed`` is in arrival order, ties by selection order;
  ``stragglers`` and ``dropped`` and ``timings`` are in selection order.

Randomness comes only from ``seeding.numpy_rng(seed, "network/compute")`` and
``seeding.numpy_rng(seed, "network/availability")``.

Speed: with no shared link on any selected client's paths (the default star), a
round is computed in closed form with numpy (``O(m log m)``); otherwise the clients
whose paths share no link are still computed in closed form and only the others go
through an event-driven simpy simulation (whose per-event work depends on the graph,
not on the number of clients), which counts the closed-form clients' arrivals toward
the round's end. All give identical schedules (``fast_path = False`` forces the
simulation of every client). The schedule holds its clients as arrays: nothing is
built per client.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path as FsPath

import networkx as nx
import numpy as np
import simpy

from fedsim.config import NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.limits import check_bandwidth, check_seconds
from fedsim.network.availability import AvailabilityModel, make_availability_model
from fedsim.network.compute import ComputeModel, make_compute_model
from fedsim.network.links import LinkNetwork, Path, Transfer
from fedsim.network.schedule import RoundSchedule
from fedsim.network.server_paths import graph_paths, star_paths
from fedsim.seeding import numpy_rng

POLICIES = ("all", "first_k", "deadline")
INF = math.inf
_OK, _STRAGGLER, _DROPPED = 0, 1, 2
_ARRIVED = object()  # stands for a transfer that has arrived in full (see _RoundSim._client)


def first_k_count(num_selected: int, over_selection: float) -> int:
    """How many arrivals a ``first_k`` round keeps when ``num_selected = ceil(K * over)``.

    Args:
        num_selected: clients selected.
        over_selection: the scenario's ``network.over_selection`` (>= 1).

    Returns:
        ``K = floor(num_selected / over_selection)``, at least 1 and at most ``num_selected``.
    """
    if num_selected <= 0:
        return 0
    return min(num_selected, max(1, math.floor(num_selected / over_selection + 1e-9)))


@dataclass
class _Outcome:
    """Per selected client (absolute seconds, inf = did not happen) and a byte counter."""

    down: np.ndarray  # [m] model received
    comp: np.ndarray  # [m] local work done
    up: np.ndarray  # [m] update received by the server
    drop: np.ndarray  # [m] when the client dropped
    sent: Callable[[float], tuple[np.ndarray, np.ndarray]]  # end_s -> bytes down, up [m]


class FederatedClock:
    """The simulated network clock for federated rounds.

    Args:
        cfg: the scenario's network section.
        num_clients: number of clients (ids 0..num_clients-1).
        graph: backbone graph (int nodes, optional edge attrs ``bandwidth_bps`` and
            ``latency_s``), or None for a star (every client has its own link to the server).
        seed: the scenario's root seed.
        base_dir: folder that relative trace paths are resolved against.

    Raises:
        ScenarioError: a network field out of range, a bad trace file or graph.
    """

    def __init__(self, cfg: NetworkConfig, num_clients: int, graph: nx.Graph | None = None,
                 seed: int = 0, base_dir: FsPath | None = None):
        if int(num_clients) < 1:
            raise ValueError(f"num_clients must be >= 1, got {num_clients}")
        _check_config(cfg)
        self.cfg = cfg
        self.num_clients = int(num_clients)
        self.fast_path = True
        self._now = 0.0
        self._compute: ComputeModel = make_compute_model(cfg.compute, self.num_clients, base_dir)
        self._avail: AvailabilityModel = make_availability_model(
            cfg.availability, self.num_clients, base_dir)
        self._rng_compute = numpy_rng(seed, "network/compute")
        self._rng_avail = numpy_rng(seed, "network/availability")
        self.server_node: int | None = None
        if graph is None:
            self._down_paths, self._up_paths = star_paths(cfg)
            self._path_index = np.zeros(self.num_clients, dtype=np.int64)
        else:
            self.server_node, nodes, self._down_paths, self._up_paths = graph_paths(
                cfg, graph, self.num_clients)
            self._path_index = np.arange(self.num_clients, dtype=np.int64) % nodes
        self._path_arrays()

    def _path_arrays(self) -> None:
        """Per-path numbers for the closed-form (no shared link) rounds."""
        downs, ups = self._down_paths, self._up_paths
        self._down_lat = np.array([p.latency_s for p in downs])
        self._down_bps = np.array([p.private_bps for p in downs])
        self._up_lat = np.array([p.latency_s for p in ups])
        self._up_bps = np.array([p.private_bps for p in ups])
        self._private = np.array([d.is_private and u.is_private
                                  for d, u in zip(downs, ups, strict=True)])

    @property
    def now(self) -> float:
        """Simulated seconds since the run started (the end of the last round)."""
        return self._now

    def paths(self, client: int) -> tuple[Path, Path]:
        """The (down, up) paths between the server and ``client``."""
        idx = int(self._path_index[self._check_client(client)])
        return self._down_paths[idx], self._up_paths[idx]

    def available(self, clients: Iterable[int] | None = None) -> list[int]:
        """Clients online at :attr:`now` (all of them unless the availability model is a trace).

        Args:
            clients: restrict to these ids (kept in the given order); None: all clients.

        Returns:
            The online client ids.
        """
        return self.available_ids(clients).tolist()

    def available_ids(self, clients: Iterable[int] | None = None) -> np.ndarray:
        """:meth:`available` as an int64 array."""
        ids = self._ids(clients)
        return ids[self._avail.online(ids, self._now)]

    def next_online_s(self) -> float:
        """The first moment after :attr:`now` when a client comes online (inf: never)."""
        return self._avail.next_online_s(self._now)

    def advance_to(self, t_s: float) -> None:
        """Let simulated time pass with no round (e.g. to wait for clients to come online).

        Args:
            t_s: the new time; must not be before :attr:`now`.
        """
        if not t_s >= self._now or math.isinf(t_s):
            raise ValueError(f"cannot move the clock from {self._now} to {t_s}")
        self._now = float(t_s)

    def run_round(self, round: int, selected: Sequence[int], work: Sequence[float],
                  bytes_down: int, bytes_up: int, k: int | None = None) -> RoundSchedule:
        """Simulate one round starting at :attr:`now`; afterwards ``now`` is its end.

        Args:
            round: the round number (recorded in the schedule).
            selected: distinct client ids asked to train, in selection order.
            work: samples processed by each selected client this round (samples x epochs).
            bytes_down: model size sent to each selected client.
            bytes_up: update size each client sends back.
            k: ``first_k`` only: how many arrivals end the round (None: derived from
                ``over_selection``, see :func:`first_k_count`); ignored by other policies.

        Returns:
            The round's :class:`RoundSchedule`.
        """
        sel = self._ids(selected)
        w = self._check_work(work, len(sel))
        bytes_down, bytes_up = _check_bytes(bytes_down, "bytes_down"), _check_bytes(bytes_up,
                                                                                  "bytes_up")
        k = self._keep_count(k, len(sel))
        start = self._now
        if len(sel) == 0:
            return self._finish(round, start, self._empty_end(start), sel, _empty_outcome())
        pidx = self._path_index[sel]
        comp = np.asarray(self._compute.times(sel, w, self._rng_compute), dtype=np.float64)
        down_unc = np.array([p.uncontended_s(bytes_down) for p in self._down_paths])[pidx]
        up_unc = np.array([p.uncontended_s(bytes_up) for p in self._up_paths])[pidx]
        drop_at = np.asarray(self._avail.drop_times(sel, start, down_unc + comp + up_unc,
                                                    self._rng_avail), dtype=np.float64)
        private = self._private[pidx]
        with _gc_paused():
            if self.fast_path and bool(private.all()):
                out = self._closed_form(start, pidx, comp, drop_at, bytes_down, bytes_up)
            elif self.fast_path and bool(private.any()):
                out = self._split(start, pidx, comp, drop_at, bytes_down, bytes_up, k, private)
            else:
                sim = _RoundSim(self, start, pidx, comp, drop_at, bytes_down, bytes_up, k)
                out = sim.run()
            floor_end = start + float(down_unc.max())
            end = _round_end(self.cfg, start, out, k, floor_end)
            return self._finish(round, start, end, sel, out, k)

    # -- helpers of run_round ---------------------------------------------------------------

    def _closed_form(self, start: float, pidx: np.ndarray, comp: np.ndarray,
                     drop_at: np.ndarray, bytes_down: int, bytes_up: int) -> _Outcome:
        """A round with no shared link: every client's times in closed form."""
        bps_d, bps_u = self._down_bps[pidx], self._up_bps[pidx]
        down = start + (self._down_lat[pidx] + 8 * bytes_down / bps_d)
        done = down + comp
        up = done + (self._up_lat[pidx] + 8 * bytes_up / bps_u)
        dropped = drop_at <= up

        def sent(end: float) -> tuple[np.ndarray, np.ndarray]:
            stop = np.minimum(np.where(dropped, drop_at, INF), end)
            return (_private_sent(bytes_down, start, stop, bps_d),
                    _private_sent(bytes_up, done, stop, bps_u))

        return _Outcome(down=np.where(down < drop_at, down, INF),
                        comp=np.where(done < drop_at, done, INF),
                        up=np.where(up < drop_at, up, INF),
                        drop=np.where(dropped, drop_at, INF), sent=sent)

    def _split(self, start: float, pidx: np.ndarray, comp: np.ndarray, drop_at: np.ndarray,
               bytes_down: int, bytes_up: int, k: int, private: np.ndarray) -> _Outcome:
        """A round where only some clients' paths share a link: the others in closed form,
        the sharing ones simulated; the simulation counts the closed-form clients'
        arrivals and settlements (by their times) toward the policy's end, so it stops
        exactly where the simulation of everyone would."""
        mine, shared = np.flatnonzero(private), np.flatnonzero(~private)
        cf = self._closed_form(start, pidx[mine], comp[mine], drop_at[mine], bytes_down,
                               bytes_up)
        sim = _RoundSim(self, start, pidx[shared], comp[shared], drop_at[shared], bytes_down,
                        bytes_up, k, ext_up=np.sort(cf.up[cf.up < INF]),
                        ext_settle=np.sort(np.minimum(cf.up, cf.drop)))
        so = sim.run()
        cols = []
        for a, b in ((cf.down, so.down), (cf.comp, so.comp), (cf.up, so.up),
                     (cf.drop, so.drop)):
            col = np.empty(len(pidx))
            col[mine], col[shared] = a, b
            cols.append(col)

        def sent(end: float) -> tuple[np.ndarray, np.ndarray]:
            out = []
            for a, b in zip(cf.sent(end), so.sent(end), strict=True):
                col = np.empty(len(pidx), dtype=np.int64)
                col[mine], col[shared] = a, b
                out.append(col)
            return out[0], out[1]

        return _Outcome(*cols, sent=sent)

    def _empty_end(self, start: float) -> float:
        """When a round with nobody selected ends."""
        if self.cfg.policy == "deadline":
            return start + self.cfg.deadline_s
        nxt = self._avail.next_online_s(start)
        return nxt if nxt < INF else start

    def _finish(self, round: int, start: float, end: float, sel: np.ndarray, out: _Outcome,
                k: int = 0) -> RoundSchedule:
        """Classify clients, mask what happened after the end, count bytes, build the schedule
        (arrays only: nothing per client)."""
        status, completed = _classify(self.cfg.policy, out, end, k)
        down_b, up_b = out.sent(end)
        times = np.stack([out.down, out.comp, out.up]) if len(sel) else np.zeros((3, 0))
        times[times > end] = INF
        self._now = end
        return RoundSchedule(
            round=round, start_s=start, end_s=end, selected_ids=sel,
            completed_ids=sel[completed], status_codes=status, times=times,
            bytes_down=int(down_b.sum()), bytes_up=int(up_b.sum()))

    def _check_client(self, client: int) -> int:
        """``client`` as an int in range."""
        c = int(client)
        if not 0 <= c < self.num_clients:
            raise ValueError(f"client {client} out of range 0..{self.num_clients - 1}")
        return c

    def _ids(self, clients: Iterable[int] | None) -> np.ndarray:
        """Distinct in-range client ids as an int64 array (None: all clients)."""
        if clients is None:
            return np.arange(self.num_clients, dtype=np.int64)
        ids = np.asarray(list(clients) if not isinstance(clients, np.ndarray) else clients)
        ids = ids.astype(np.int64, copy=False).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_clients):
            raise ValueError(f"client ids must be in 0..{self.num_clients - 1}")
        seen = np.zeros(self.num_clients, dtype=bool)
        seen[ids] = True
        if int(seen.sum()) != len(ids):  # O(n + m), not a sort
            raise ValueError("client ids must be distinct")
        return ids

    def _check_work(self, work: Sequence[float], m: int) -> np.ndarray:
        """``work`` as a float array of length ``m`` with finite values >= 0."""
        w = np.asarray(work, dtype=np.float64).reshape(-1)
        if len(w) != m:
            raise ValueError(f"work has {len(w)} entries for {m} selected clients")
        if len(w) and not (np.isfinite(w).all() and w.min() >= 0):
            raise ValueError("work must be finite and >= 0")
        return w

    def _keep_count(self, k: int | None, m: int) -> int:
        """The number of arrivals that end a ``first_k`` round (0 for other policies)."""
        if self.cfg.policy != "first_k":
            return 0
        if k is None:
            return first_k_count(m, self.cfg.over_selection)
        if int(k) != k or (m > 0 and k < 1):
            raise ValueError(f"k must be an int >= 1 for policy first_k, got {k}")
        return int(k)


class _RoundSim:
    """One round as a simpy simulation (used when transfers share links)."""

    def __init__(self, clock: FederatedClock, start: float, pidx: np.ndarray, comp: np.ndarray,
                 drop_at: np.ndarray, bytes_down: int, bytes_up: int, k: int,
                 ext_up: np.ndarray | None = None, ext_settle: np.ndarray | None = None):
        self.env = simpy.Environment(initial_time=start)
        self.net = LinkNetwork(self.env)
        self.cfg = clock.cfg
        self.start = start
        self.down_paths = [clock._down_paths[i] for i in pidx.tolist()]
        self.up_paths = [clock._up_paths[i] for i in pidx.tolist()]
        self.comp = comp.tolist()
        self.drop_at = drop_at.tolist()
        self.bytes_down, self.bytes_up, self.k = bytes_down, bytes_up, k
        m = len(self.comp)
        self.t_down, self.t_comp, self.t_up, self.t_drop = ([INF] * m for _ in range(4))
        self.tr_down: list[Transfer | object | None] = [None] * m  # object: _ARRIVED
        self.tr_up: list[Transfer | object | None] = [None] * m
        self.gone = [False] * m  # arrived or dropped
        self.arrived = 0
        self.resolved = 0
        self.ended = False
        # clients computed in closed form (``FederatedClock._split``): their sorted arrival
        # and settle times, counted toward the end condition by time
        self.ext_up = np.zeros(0) if ext_up is None else ext_up
        self.ext_settle = np.zeros(0) if ext_settle is None else ext_settle
        self.total = m + len(self.ext_settle)

    def run(self) -> _Outcome:
        """Run until the policy's end condition, then finish every event at that moment."""
        env = self.env
        m = len(self.comp)
        for i, d in enumerate(self.drop_at):  # scheduled first: a drop wins ties
            if d <= self.start:
                self._drop(i)
            elif d < INF:
                env.timeout(_delay_to(self.start, d)).callbacks.append(partial(self._on_drop, i))
        if self.cfg.policy == "deadline":
            env.timeout(self.cfg.deadline_s).callbacks.append(self._on_deadline)
        if len(self.ext_settle):  # when the closed-form clients have all settled
            self._check_at(float(self.ext_settle[-1]))
        self._watch_ext_arrivals()
        for i in range(m):
            if not self.gone[i]:
                env.process(self._client(i))
        self._check_end()
        step = env.step
        while not self.ended:
            step()
        end = env.now
        while env.peek() <= end:
            step()
        return _Outcome(np.array(self.t_down), np.array(self.t_comp), np.array(self.t_up),
                        np.array(self.t_drop), self._sent)

    def _client(self, i: int):
        """Download, compute, upload; stops quietly once the client has dropped.

        A transfer that has arrived is replaced by ``_ARRIVED`` so that it (and its
        simpy event) can be freed at once: fewer live objects, less garbage-collector work.
        """
        env, net = self.env, self.net
        tr = self.tr_down[i] = net.send(self.down_paths[i], self.bytes_down)
        yield tr.done
        if self.gone[i]:
            return
        self.tr_down[i] = _ARRIVED
        self.t_down[i] = env.now
        yield env.timeout(self.comp[i])
        if self.gone[i]:
            return
        self.t_comp[i] = env.now
        tr = self.tr_up[i] = net.send(self.up_paths[i], self.bytes_up)
        yield tr.done
        if self.gone[i]:
            return
        self.tr_up[i] = _ARRIVED
        self.t_up[i] = env.now
        self.gone[i] = True
        self.arrived += 1
        self.resolved += 1
        self._check_end()
        self._watch_ext_arrivals()

    def _on_drop(self, i: int, _event: simpy.Event) -> None:
        """The drop moment of client ``i`` came."""
        if not self.gone[i]:
            self._drop(i)
            self._check_end()

    def _drop(self, i: int) -> None:
        """Client ``i`` goes offline now: abandon its transfer in flight."""
        self.gone[i] = True
        self.t_drop[i] = self.drop_at[i]
        self.resolved += 1
        for tr in (self.tr_down[i], self.tr_up[i]):
            if tr is not None and tr is not _ARRIVED:
                self.net.cancel(tr)

    def _on_deadline(self, _event: simpy.Event) -> None:
        """The deadline passed: the round ends now."""
        self.ended = True

    def _check_end(self) -> None:
        """End the round when the policy says so."""
        now = self.env.now
        resolved, arrived = self.resolved, self.arrived
        if len(self.ext_settle):
            resolved += int(np.searchsorted(self.ext_settle, now, side="right"))
            arrived += int(np.searchsorted(self.ext_up, now, side="right"))
        if resolved == self.total or (self.cfg.policy == "first_k" and arrived >= self.k):
            self.ended = True

    def _check_at(self, t: float) -> None:
        """Check the end condition at time ``t`` (a closed-form client's event)."""
        if t >= self.env.now:
            self.env.timeout(_delay_to(self.env.now, t)).callbacks.append(
                lambda _event: self._check_end())

    def _watch_ext_arrivals(self) -> None:
        """``first_k``: check the end when the closed-form arrivals alone would bring the
        arrivals to k (earlier after each simulated arrival)."""
        need = self.k - self.arrived
        if self.cfg.policy == "first_k" and 0 < need <= len(self.ext_up):
            self._check_at(float(self.ext_up[need - 1]))

    def _sent(self, end: float) -> tuple[np.ndarray, np.ndarray]:
        """Bytes each client's download and upload pushed by the end of the simulation."""
        return self._sent_by(self.tr_down, self.bytes_down), self._sent_by(self.tr_up,
                                                                           self.bytes_up)

    def _sent_by(self, transfers: list, nbytes: int) -> np.ndarray:
        """Bytes pushed by each of ``transfers`` (None: never started; ``_ARRIVED``: all)."""
        at, sent_bytes = self.env.now, self.net.sent_bytes
        return np.array([0 if tr is None else nbytes if tr is _ARRIVED else sent_bytes(tr, at)
                         for tr in transfers], dtype=np.int64)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block (restored afterwards).

    A round allocates a few objects per event, which reference counting frees at
    once, while up to hundreds of thousands of processes, events and transfers are
    alive: the collector's repeated full passes over them took a quarter to a
    third of a 100k-client round. What a round leaves in reference cycles (its environment,
    link network and any still-pending processes) is collected as usual afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _round_end(cfg: NetworkConfig, start: float, out: _Outcome, k: int, floor_end: float
               ) -> float:
    """When the round ends under ``cfg.policy`` (see the module docstring)."""
    arrivals = out.up[out.up < INF]
    settled = float(np.minimum(out.up, out.drop).max())  # inf if someone is still working
    if len(arrivals) == 0:
        if cfg.policy == "deadline":
            return start + cfg.deadline_s
        return max(settled, floor_end)
    if cfg.policy == "all":
        return settled
    if cfg.policy == "first_k":
        return float(np.sort(arrivals)[k - 1]) if len(arrivals) >= k else settled
    return min(start + cfg.deadline_s, settled)


def _classify(policy: str, out: _Outcome, end: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Status codes ``[m]`` and the indices of completed clients in arrival order."""
    order = np.argsort(out.up, kind="stable")
    in_time = order[out.up[order] <= end]
    completed = in_time[:k] if policy == "first_k" else in_time
    status = np.full(len(out.up), _STRAGGLER, dtype=np.int64)
    status[out.drop <= end] = _DROPPED
    status[completed] = _OK
    return status, completed


def _private_sent(nbytes: int, start: np.ndarray | float, stop: np.ndarray, bps: np.ndarray
                  ) -> np.ndarray:
    """Vectorized :func:`fedsim.network.links.private_sent_bytes` (same arithmetic)."""
    sent = np.minimum(float(nbytes), np.maximum(0.0, (stop - start) * bps / 8))
    return np.rint(sent).astype(np.int64)


def _empty_outcome() -> _Outcome:
    """The outcome of a round with nobody selected."""
    empty = np.zeros(0)
    return _Outcome(empty, empty, empty, empty,
                    lambda end: (np.zeros(0, np.int64), np.zeros(0, np.int64)))


def _delay_to(now: float, t: float) -> float:
    """A delay ``d >= 0`` with ``now + d == t`` exactly when one exists (else the nearest)."""
    d = t - now
    if now + d != t:
        for cand in (math.nextafter(d, INF), math.nextafter(d, -INF)):
            if now + cand == t:
                return max(0.0, cand)
    return max(0.0, d)


def _check_bytes(nbytes: int, name: str) -> int:
    """``nbytes`` as an int >= 0."""
    if int(nbytes) != nbytes or nbytes < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {nbytes}")
    return int(nbytes)


def _check_config(cfg: NetworkConfig) -> None:
    """Range checks of the network section (each error names its dotted key)."""
    if cfg.policy not in POLICIES:
        raise ScenarioError("network.policy", f"must be one of {', '.join(POLICIES)}; "
                                              f"got {cfg.policy!r}")
    # the bounds of fedsim.limits, as the scenario's validation applies them
    check_bandwidth(cfg.bandwidth_bps, "network.bandwidth_bps")
    check_seconds(cfg.latency_s, "network.latency_s")
    check_bandwidth(cfg.server_bandwidth_bps, "network.server_bandwidth_bps", zero_ok=True)
    if cfg.policy == "deadline":
        check_seconds(cfg.deadline_s, "network.deadline_s", positive=True)
    if cfg.policy == "first_k" and not (math.isfinite(cfg.over_selection)
                                        and cfg.over_selection >= 1):
        raise ScenarioError("network.over_selection", f"must be >= 1, got {cfg.over_selection}")

