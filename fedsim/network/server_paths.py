"""Client-to-server paths of the federated clock: a star, or routes over a graph.

Network shape (numpy, networkx; never torch):

- no graph (star): each client has its own access link (``bandwidth_bps``,
  ``latency_s``) to the server. If ``server_bandwidth_bps > 0``, the server's
  uplink and downlink are each one shared link of that capacity (no latency).
- a graph: the server sits at ``server_node`` (-1: the highest-degree node,
  ties to the smallest id). Client ``c`` hangs off node ``sorted(nodes)[c % n]``
  through its own access link, then follows the lowest-latency path of backbone
  links (shared, one ``Link`` per direction; missing ``bandwidth_bps`` /
  ``latency_s`` attributes take the scenario defaults) to the server node. A
  positive ``server_bandwidth_bps`` adds the shared server links here too.
"""

from __future__ import annotations

import networkx as nx

from fedsim.config import NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.network.link_table import edge_value
from fedsim.network.links import Link, Path


def _server_links(cfg: NetworkConfig) -> tuple[tuple[Link, ...], tuple[Link, ...]]:
    """The server's shared (downlink, uplink), empty when its capacity is unlimited."""
    if cfg.server_bandwidth_bps <= 0:
        return (), ()
    return ((Link(cfg.server_bandwidth_bps, 0.0, "server downlink"),),
            (Link(cfg.server_bandwidth_bps, 0.0, "server uplink"),))


def star_paths(cfg: NetworkConfig) -> tuple[list[Path], list[Path]]:
    """One (down, up) path pair shared by every client of a star."""
    down, up = _server_links(cfg)
    return ([Path(down, cfg.bandwidth_bps, cfg.latency_s)],
            [Path(up, cfg.bandwidth_bps, cfg.latency_s)])


def graph_paths(cfg: NetworkConfig, graph: nx.Graph, num_clients: int
                 ) -> tuple[int, int, list[Path], list[Path]]:
    """Server node, node count, and per-node (down, up) paths over the backbone."""
    nodes = sorted(graph.nodes)
    if not nodes:
        raise ScenarioError("network.topology", "the graph has no nodes")
    server = _server_node(cfg, graph, nodes)
    links, latency = _backbone_links(cfg, graph)
    routes = nx.single_source_dijkstra_path(graph, server,
                                            weight=lambda u, v, _d: latency[(u, v)])
    srv_down, srv_up = _server_links(cfg)
    downs, ups = [], []
    for j, node in enumerate(nodes):
        route = routes.get(node)
        if route is None:
            if j < num_clients:
                raise ScenarioError("network.topology", f"node {node} (client {j} and every "
                                    f"{len(nodes)}th after it) has no path to the server node "
                                    f"{server}")
            route = [server]
        hops = [links[(a, b)] for a, b in zip(route[:-1], route[1:], strict=True)]
        back = [links[(b, a)] for a, b in zip(route[:-1], route[1:], strict=True)][::-1]
        downs.append(Path((*srv_down, *hops), cfg.bandwidth_bps, cfg.latency_s))
        ups.append(Path((*back, *srv_up), cfg.bandwidth_bps, cfg.latency_s))
    return server, len(nodes), downs, ups


def _server_node(cfg: NetworkConfig, graph: nx.Graph, nodes: list[int]) -> int:
    """``cfg.server_node``, or the highest-degree node (ties: smallest id) for -1."""
    if cfg.server_node == -1:
        return min(nodes, key=lambda v: (-graph.degree(v), v))
    if cfg.server_node not in graph:
        raise ScenarioError("network.server_node", f"must be -1 or a node of the graph "
                                                   f"({nodes[0]}..{nodes[-1]}), got "
                                                   f"{cfg.server_node!r}")
    return cfg.server_node


def _backbone_links(cfg: NetworkConfig, graph: nx.Graph
                    ) -> tuple[dict[tuple, Link], dict[tuple, float]]:
    """One shared ``Link`` per edge direction, and each direction's latency."""
    links: dict[tuple, Link] = {}
    latency: dict[tuple, float] = {}
    for u, v, data in graph.edges(data=True):
        bw = edge_value(data, "bandwidth_bps", cfg.bandwidth_bps, u, v, positive=True)
        lat = edge_value(data, "latency_s", cfg.latency_s, u, v, positive=False)
        links[(u, v)] = Link(bw, lat, f"{u}->{v}")
        links[(v, u)] = Link(bw, lat, f"{v}->{u}")
        latency[(u, v)] = latency[(v, u)] = lat
    return links, latency
