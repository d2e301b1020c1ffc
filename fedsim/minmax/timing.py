"""Simulated seconds and bytes of min-max iterations, from fedsim's network clocks.

The clock says when; the method says what. Decentralized iterations are timed by
:class:`fedsim.network.sync_gossip_clock.SyncGossipClock` (the clock of D-SGD rounds): an
iteration with ``k = comm_rounds`` mixing rounds is ``k`` synchronous rounds of that
clock; the first carries the iteration's local work (every evaluation of ``F_i`` the
iteration makes, times the samples one evaluation processes), the other ``k - 1`` only
exchange models. Each round every node sends its ``nbytes`` state to each neighbour over
its link (``latency_s + 8 nbytes / bandwidth_bps``), then a barrier: ``2 |E| nbytes``
bytes per round.

Server-based references (a star around a server outside the graph) make one round trip
per evaluation of the averaged ``F`` (:class:`ServerClock`): every node computes its
share, uploads ``nbytes`` over its own link (``network.latency_s``,
``network.bandwidth_bps``), the server averages and sends the result back; with
``network.server_bandwidth_bps > 0`` the server's link is shared by the ``n`` messages
(``8 n nbytes / server_bandwidth_bps`` each way). ``2 n nbytes`` bytes per round trip.

No torch here (numpy only), like :mod:`fedsim.network`.

References:
    Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?"
    (NeurIPS 2017); Liu et al., "A Decentralized Parallel Algorithm for Training
    Generative Adversarial Nets" (NeurIPS 2020), whose comparison is against time on
    low-bandwidth, high-latency networks.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from fedsim.config import NetworkConfig
from fedsim.network.compute import make_compute_model
from fedsim.network.sync_gossip_clock import SyncGossipClock
from fedsim.network.topology import with_link_defaults
from fedsim.seeding import numpy_rng


@dataclass(frozen=True)
class IterationCost:
    """One iteration as the clock saw it.

    Attributes:
        end_s: simulated seconds since the start when the iteration ended.
        duration_s: the iteration's simulated seconds.
        bytes_sent: bytes the iteration moved (all links together).
        rounds: exchange rounds it made.
    """

    end_s: float
    duration_s: float
    bytes_sent: int
    rounds: int


class GossipClock:
    """Decentralized min-max iterations as rounds of :class:`SyncGossipClock`.

    Args:
        graph: the undirected graph (links without values get the network defaults).
        network: the network section (link defaults, compute model); None: defaults.
        seed: root seed (the compute stream ``network/compute``).

    References:
        Lian et al. (NeurIPS 2017); Liu et al. (NeurIPS 2020).
    """

    def __init__(self, graph: nx.Graph, network: NetworkConfig | None = None, seed: int = 0):
        net = network or NetworkConfig()
        graph = with_link_defaults(graph, net.bandwidth_bps, net.latency_s)
        self.num_nodes = graph.number_of_nodes()
        self._clock = SyncGossipClock(net, graph, seed=seed)

    @property
    def now(self) -> float:
        """Simulated seconds so far."""
        return self._clock.now

    def iteration(self, it: int, work: float, rounds: int, nbytes: int) -> IterationCost:
        """Time one iteration: ``rounds`` gossip rounds, the first with ``work`` samples.

        Args:
            it: the iteration number (recorded in the rounds).
            work: samples each node processes this iteration (all its ``F_i`` evaluations).
            rounds: mixing rounds (>= 1).
            nbytes: the size of one node's state on the wire.

        Returns:
            The :class:`IterationCost`.
        """
        start = self._clock.now
        sent = 0
        for r in range(rounds):
            sched = self._clock.run_round(it, work if r == 0 else 0.0, nbytes)
            sent += sched.bytes_sent
        return IterationCost(end_s=self._clock.now, duration_s=self._clock.now - start,
                             bytes_sent=sent, rounds=rounds)


class ServerClock:
    """Server-based iterations: per round trip, compute, upload, average, download.

    Args:
        num_nodes: ``n``.
        network: the network section (``bandwidth_bps``, ``latency_s``,
            ``server_bandwidth_bps``, compute model); None: defaults.
        seed: root seed (the compute stream ``network/compute``).

    References:
        Dean et al., "Large Scale Distributed Deep Networks" (NeurIPS 2012) for the
        parameter-server pattern; the costs follow fedsim's link conventions.
    """

    def __init__(self, num_nodes: int, network: NetworkConfig | None = None, seed: int = 0):
        self.net = network or NetworkConfig()
        self.num_nodes = num_nodes
        self._compute = make_compute_model(self.net.compute, num_nodes)
        self._rng = numpy_rng(seed, "network/compute")
        self._now = 0.0

    @property
    def now(self) -> float:
        """Simulated seconds so far."""
        return self._now

    def _hop_s(self, nbytes: int) -> float:
        net, n = self.net, self.num_nodes
        hop = net.latency_s + 8.0 * nbytes / net.bandwidth_bps
        if net.server_bandwidth_bps > 0:  # the server's link carries all n messages
            hop = max(hop, net.latency_s + 8.0 * n * nbytes / net.server_bandwidth_bps)
        return hop

    def iteration(self, it: int, work: float, rounds: int, nbytes: int) -> IterationCost:
        """Time one iteration of ``rounds`` round trips sharing ``work`` samples per node.

        Args:
            it: the iteration number (unused; the same call as :class:`GossipClock`).
            work: samples each node processes this iteration.
            rounds: round trips (one per evaluation of the averaged ``F``).
            nbytes: the size of one message.

        Returns:
            The :class:`IterationCost`.
        """
        start = self._now
        nodes = np.arange(self.num_nodes)
        share = np.full(self.num_nodes, work / max(rounds, 1), dtype=np.float64)
        for _ in range(rounds):
            comp = float(np.max(self._compute.times(nodes, share, self._rng)))
            self._now += comp + 2.0 * self._hop_s(nbytes)
        return IterationCost(end_s=self._now, duration_s=self._now - start,
                             bytes_sent=2 * self.num_nodes * nbytes * rounds, rounds=rounds)
