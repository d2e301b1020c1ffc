"""The simulated clock of synchronous decentralized rounds (D-SGD).

The clock says when; the algorithm says what. This module (numpy only, never torch)
turns a graph with links, a compute model and message sizes into round timings that a
runner replays with tensor work: in a round of :class:`SyncGossipClock` every node
computes, sends its model to each neighbour, and waits for all of its neighbours' models;
a barrier closes the round (:class:`DecentralizedRound`). Nodes, links and compute follow
the conventions shared with the asynchronous clock, see :mod:`fedsim.network.link_table`.

Synchronous rounds (D-SGD). A round starts at :attr:`SyncGossipClock.now`. Node ``v``
computes (``compute_done_s[v] = start + compute time``), then sends ``nbytes`` to each
neighbour. Node ``v`` is done when it has computed and received every neighbour's model
(``done_s[v]``; a node with no neighbour is done when it has computed); a barrier ends
the round at the last node's ``done_s``, and the next round starts there. Messages that
arrive while the receiver still computes are buffered (receiving costs nothing).
How a node's sends share its sender (``contention``):

* ``"duplex"`` (default): every directed edge is its own link; a node's sends do not
  slow each other (a router with one port per link). Arrival ``u -> v``:
  ``compute_done_s[u] + latency_uv + 8 nbytes / bw_uv``.
* ``"serial"``: a node has one transmitter and sends its messages one after the other,
  to its neighbours in increasing id order; a message's bits take ``8 nbytes / bw_uv``
  of the transmitter, then its latency (propagation overlaps the next transmission).
* ``"fair"``: one transmitter shared in equal parts by the node's unfinished messages
  (processor sharing); a message alone would take ``8 nbytes / bw_uv``. With equal
  bandwidths every message's last bit leaves ``degree * 8 nbytes / bw`` after the start.

Receivers are never a bottleneck (their downlinks are not shared) in any of the three.
Bytes moved: ``nbytes`` per directed edge, ``2 |E| nbytes`` per round.

Determinism: :class:`SyncGossipClock` keeps one compute stream (``network/compute``)
across its rounds, like the federated clock.

Speed: rounds are closed-form numpy (``O(|E| log |E|)``).

References:
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case
    Study for Decentralized Parallel Stochastic Gradient Descent" (NeurIPS 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from fedsim.config import NetworkConfig
from fedsim.network.compute import ComputeModel, make_compute_model
from fedsim.network.link_table import check_nbytes, check_work, link_table
from fedsim.seeding import numpy_rng

CONTENTIONS = ("duplex", "serial", "fair")


@dataclass(frozen=True)
class DecentralizedRound:
    """One synchronous D-SGD round as the clock saw it (absolute simulated seconds).

    Attributes:
        round: the round number.
        start_s: when every node started computing.
        end_s: the barrier: the last node's ``done_s``.
        compute_done_s: ``[n]`` when each node finished its local work.
        done_s: ``[n]`` when each node had computed and received every neighbour's model.
        src: ``[2m]`` sender of each message (sorted by sender, then receiver).
        dst: ``[2m]`` receiver of each message.
        arrival_s: ``[2m]`` when each message's last bit arrived.
        bytes_sent: bytes moved in the round (``nbytes`` per message).
    """

    round: int
    start_s: float
    end_s: float
    compute_done_s: np.ndarray
    done_s: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    arrival_s: np.ndarray
    bytes_sent: int

    @property
    def duration_s(self) -> float:
        """``end_s - start_s``."""
        return self.end_s - self.start_s

    @property
    def slowest(self) -> int:
        """The node whose ``done_s`` set the barrier (the smallest id on ties)."""
        return int(np.argmax(self.done_s))


class SyncGossipClock:
    """Timing of synchronous decentralized rounds (D-SGD): compute, send, barrier.

    Args:
        cfg: the network section (link defaults, compute model).
        graph: undirected graph; one learner per node.
        seed: the scenario's root seed (compute stream ``network/compute``).
        base_dir: folder that relative compute-trace paths are resolved against.
        contention: how a node's sends share its sender: ``"duplex"`` (default, no
            sharing), ``"serial"`` or ``"fair"`` (see the module docstring).

    Raises:
        ScenarioError: a bad graph, link value or compute section.

    References:
        Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?"
        (NeurIPS 2017).
    """

    def __init__(self, cfg: NetworkConfig, graph: nx.Graph, seed: int = 0,
                 base_dir: Path | None = None, contention: str = "duplex"):
        if contention not in CONTENTIONS:
            raise ValueError(f"unknown contention {contention!r}; allowed: "
                             f"{', '.join(CONTENTIONS)}")
        self.cfg = cfg
        self.contention = contention
        self.links = link_table(cfg, graph)
        self.num_nodes = self.links.num_nodes
        self._compute: ComputeModel = make_compute_model(cfg.compute, self.num_nodes, base_dir)
        self._rng = numpy_rng(seed, "network/compute")
        self._now = 0.0
        lk = self.links
        src = np.concatenate((lk.u, lk.v))
        dst = np.concatenate((lk.v, lk.u))
        order = np.lexsort((dst, src))  # messages sorted by sender, then receiver
        self._src, self._dst = src[order], dst[order]
        self._lat = np.concatenate((lk.latency_s, lk.latency_s))[order]
        self._bps = np.concatenate((lk.bandwidth_bps, lk.bandwidth_bps))[order]

    @property
    def now(self) -> float:
        """Simulated seconds since the run started (the end of the last round)."""
        return self._now

    def run_round(self, round: int, work: float | Sequence[float], nbytes: int
                  ) -> DecentralizedRound:
        """Simulate one round starting at :attr:`now`; afterwards ``now`` is its end.

        Args:
            round: the round number (recorded).
            work: samples each node processes this round (one number for all, or ``[n]``).
            nbytes: size of the model each node sends to each neighbour.

        Returns:
            The :class:`DecentralizedRound`.
        """
        n = self.num_nodes
        w = check_work(work, n, "work", positive=False)
        nbytes = check_nbytes(nbytes)
        start = self._now
        comp = np.asarray(self._compute.times(np.arange(n), w, self._rng), dtype=np.float64)
        compute_done = start + comp
        send_s = 8.0 * nbytes / self._bps  # [2m] transmitter time of each message alone
        arrival = compute_done[self._src] + self._sent_after(send_s) + self._lat
        done = compute_done.copy()
        np.maximum.at(done, self._dst, arrival)
        end = float(done.max())
        self._now = end
        return DecentralizedRound(round=int(round), start_s=start, end_s=end,
                                  compute_done_s=compute_done, done_s=done,
                                  src=self._src.copy(), dst=self._dst.copy(), arrival_s=arrival,
                                  bytes_sent=nbytes * int(self._src.size))

    def _sent_after(self, send_s: np.ndarray) -> np.ndarray:
        """``[2m]`` seconds from the sender's compute end to each message's last bit leaving."""
        if self.contention == "duplex" or send_s.size == 0:
            return send_s
        src = self._src
        if self.contention == "serial":  # one after the other, in receiver order
            total = np.cumsum(send_s)
            first = _group_starts(src)
            return total - (total[first] - send_s[first])[_group_index(src)]
        # fair: processor sharing; with sizes s_1 <= .. <= s_d of one sender, the k-th
        # (1-based) finishes at s_1 + .. + s_{k-1} + (d - k + 1) s_k
        order = np.lexsort((send_s, src))
        s, g = send_s[order], src[order]
        first = _group_starts(g)
        group = _group_index(g)
        total = np.cumsum(s)
        before = total - s - (total[first] - s[first])[group]  # sum of the smaller ones
        rank = np.arange(s.size) - first[group]  # k - 1
        size = np.diff(np.append(first, s.size))[group]  # d
        out = np.empty_like(send_s)
        out[order] = before + (size - rank) * s
        return out


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """First index of each run of equal values in a sorted array."""
    return np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))


def _group_index(sorted_keys: np.ndarray) -> np.ndarray:
    """For each entry of a sorted array, the number of its run of equal values."""
    return np.cumsum(np.concatenate(([0], sorted_keys[1:] != sorted_keys[:-1])))
