"""The graph's links as arrays, and the argument checks shared by the decentralized clocks.

This module (numpy only, never torch) reads an undirected graph's links, with the
scenario's defaults where an edge has no value, into a :class:`LinkTable`
(:func:`link_table`). Both decentralized clocks build on it:
:mod:`fedsim.network.sync_gossip_clock` (synchronous D-SGD rounds) and
:mod:`fedsim.network.async_gossip_clock` (asynchronous gossip SGD); :func:`check_nbytes`
and :func:`check_work` are their common argument checks. :func:`edge_value` reads and
checks one link attribute; the federated clock's routes
(:mod:`fedsim.network.server_paths`) use it too.

Conventions (shared by both clocks):

* **Nodes.** One learner per graph node; node ``v`` is the rank of ``v`` in
  ``sorted(G.nodes)`` (for the graphs of :mod:`fedsim.network.topology`, node ``v`` is
  ``v``). That rank is also the client id passed to the compute model (trace rows).
* **Links.** Every undirected edge is one full-duplex link whose ``latency_s`` (one way)
  and ``bandwidth_bps`` come from the edge's attributes, missing ones from
  ``NetworkConfig.latency_s`` / ``bandwidth_bps``
  (:func:`~fedsim.network.topology.with_link_defaults`). A message of ``nbytes`` alone on a
  link takes ``latency_s + 8 * nbytes / bandwidth_bps``. Self loops are ignored.
* **Compute.** A node's local work of ``work`` samples takes what
  ``make_compute_model(cfg.compute, n, base_dir)`` draws, from the stream
  ``seeding.numpy_rng(seed, "network/compute")``. ``cfg.availability``, ``policy`` and
  ``deadline_s`` belong to federated rounds and are not used here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import networkx as nx
import numpy as np

from fedsim.config import NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.network.topology import with_link_defaults


class LinkTable(NamedTuple):
    """The graph's links as arrays, one row per undirected edge (``u < v``, sorted).

    Attributes:
        num_nodes: ``n``.
        u: ``[m]`` int64 first endpoint.
        v: ``[m]`` int64 second endpoint.
        latency_s: ``[m]`` one-way latency (s).
        bandwidth_bps: ``[m]`` bandwidth (bit/s), in each direction.
    """

    num_nodes: int
    u: np.ndarray
    v: np.ndarray
    latency_s: np.ndarray
    bandwidth_bps: np.ndarray

    def message_s(self, nbytes: int) -> np.ndarray:
        """``[m]`` seconds one message of ``nbytes`` takes alone on each link."""
        return self.latency_s + 8.0 * nbytes / self.bandwidth_bps


def link_table(cfg: NetworkConfig, graph: nx.Graph) -> LinkTable:
    """The links of ``graph`` with the scenario's defaults where an edge has no value.

    Args:
        cfg: the network section (``bandwidth_bps``, ``latency_s`` defaults).
        graph: undirected graph; nodes are numbered by their rank in ``sorted(graph)``.

    Returns:
        The :class:`LinkTable`.

    Raises:
        ScenarioError: an empty or directed graph, or a link value out of range.
    """
    if graph.is_directed():
        raise ScenarioError("network.topology", "the decentralized clock needs an undirected "
                                                "graph")
    if graph.number_of_nodes() == 0:
        raise ScenarioError("network.topology", "the graph has no nodes")
    G = with_link_defaults(graph, cfg.bandwidth_bps, cfg.latency_s)
    index = {node: k for k, node in enumerate(sorted(G.nodes))}
    rows = []
    for a, b, data in G.edges(data=True):
        if a == b:
            continue
        bw = edge_value(data, "bandwidth_bps", cfg.bandwidth_bps, a, b, positive=True)
        lat = edge_value(data, "latency_s", cfg.latency_s, a, b, positive=False)
        rows.append((min(index[a], index[b]), max(index[a], index[b]), lat, bw))
    rows.sort()
    if rows:
        u, v, lat, bw = (np.asarray(c) for c in zip(*rows, strict=True))
    else:
        u = v = np.zeros(0, dtype=np.int64)
        lat = bw = np.zeros(0)
    return LinkTable(len(index), u.astype(np.int64), v.astype(np.int64),
                     lat.astype(np.float64), bw.astype(np.float64))


def edge_value(data: dict, name: str, default: float, u, v, positive: bool) -> float:
    """An edge attribute as a finite float (> 0 or >= 0; ``default`` when missing), or a
    ScenarioError naming the edge."""
    raw = data.get(name)
    try:
        value = float(default if raw is None else raw)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        bound = "> 0" if positive else ">= 0"
        raise ScenarioError("network.topology", f"edge ({u}, {v}): {name} must be a finite "
                                                f"number {bound}, got {raw!r}")
    return value


def check_nbytes(nbytes: int) -> int:
    """``nbytes`` as an int >= 0."""
    if isinstance(nbytes, bool) or int(nbytes) != nbytes or nbytes < 0:
        raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
    return int(nbytes)


def check_work(work: float | Sequence[float], n: int, name: str, positive: bool
               ) -> np.ndarray:
    """``work`` (a number or one per node) as ``[n]`` finite floats (> 0 or >= 0)."""
    w = np.asarray(work, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n, float(w))
    w = w.reshape(-1)
    if w.size != n:
        raise ValueError(f"{name} has {w.size} entries for {n} nodes")
    ok = np.isfinite(w).all() and (w.min() > 0 if positive else w.min() >= 0)
    if not ok:
        raise ValueError(f"{name} must be finite and {'> 0' if positive else '>= 0'}")
    return w
