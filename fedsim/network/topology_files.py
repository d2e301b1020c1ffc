"""Topology files: GraphML and edge lists -> undirected graphs on ``0..n-1`` (no torch).

:func:`load_topology` reads a ``.graphml`` / ``.xml`` file (networkx's reader) or an
edge list (``.edges``, ``.edgelist``, ``.txt``, ``.csv``), renumbers the nodes and keeps
numeric ``bandwidth_bps`` (bit/s) and ``latency_s`` (one-way seconds) on the links; its
docstring has the rules. Every error is one :class:`ScenarioError` naming
``network.topology`` and the file (and the line, for edge lists).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx

from fedsim.errors import ScenarioError

TOPOLOGY_KEY = "network.topology"
GRAPHML_SUFFIXES = (".graphml", ".xml")
EDGELIST_SUFFIXES = (".edges", ".edgelist", ".txt", ".csv")
FILE_SUFFIXES = GRAPHML_SUFFIXES + EDGELIST_SUFFIXES
LINK_ATTRS = ("bandwidth_bps", "latency_s")
_HEADER_TOKENS = {"source", "target", "src", "dst", "from", "to", "u", "v", "node1", "node2"}


def _to_float(value: Any, what: str, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(
            TOPOLOGY_KEY, f"{where}: {what} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(x) or x < 0 or (what == "bandwidth_bps" and x == 0):
        bound = "> 0" if what == "bandwidth_bps" else ">= 0"
        raise ScenarioError(TOPOLOGY_KEY, f"{where}: {what} must be finite and {bound}, got {x}")
    return x


def _merge_link(old: dict, new: dict) -> dict:
    """Parallel links between one pair: bandwidths add up, the faster latency wins."""
    out = {**new, **old}
    if "bandwidth_bps" in old and "bandwidth_bps" in new:
        out["bandwidth_bps"] = old["bandwidth_bps"] + new["bandwidth_bps"]
    if "latency_s" in old and "latency_s" in new:
        out["latency_s"] = min(old["latency_s"], new["latency_s"])
    return out


def _sorted_nodes(nodes: Iterable[Any]) -> list[Any]:
    """Nodes in numeric order when all are integers (or integer strings), else as given."""
    nodes = list(nodes)
    try:
        return sorted(nodes, key=lambda x: int(str(x).strip()))
    except ValueError:
        return nodes


def _relabel(nodes: list[Any], node_attrs: Mapping[Any, dict]) -> tuple[nx.Graph, dict]:
    """An empty graph on 0..n-1 carrying node attributes; keeps non-trivial ids as ``label``."""
    index = {v: i for i, v in enumerate(nodes)}
    G = nx.Graph()
    for v, i in index.items():
        attrs = dict(node_attrs.get(v, {}))
        if str(v).strip() != str(i):
            attrs.setdefault("label", str(v))
        G.add_node(i, **attrs)
    return G, index


def _simple_from_links(
    nodes: list[Any], node_attrs: Mapping[Any, dict], links: Iterable[tuple[Any, Any, dict]]
) -> nx.Graph:
    """Undirected simple graph on 0..n-1; self loops dropped, parallel links merged."""
    G, index = _relabel(_sorted_nodes(nodes), node_attrs)
    for u, v, attrs in links:
        a, b = index[u], index[v]
        if a == b:
            continue
        if G.has_edge(a, b):
            G.edges[a, b].update(_merge_link(G.edges[a, b], attrs))
        else:
            G.add_edge(a, b, **attrs)
    return G


def _graphml_links(raw: nx.Graph, where: str) -> list[tuple[Any, Any, dict]]:
    """Links of a read GraphML graph with numeric link attributes; directed arcs paired."""
    links: dict[tuple[Any, Any], dict] = {}
    for u, v, data in raw.edges(data=True):
        attrs = dict(data)
        for key in LINK_ATTRS:
            if key in attrs:
                attrs[key] = _to_float(attrs[key], key, f"{where}: edge {u}-{v}")
        links[(u, v)] = _merge_link(links[(u, v)], attrs) if (u, v) in links else attrs
    if not raw.is_directed():
        return [(u, v, a) for (u, v), a in links.items()]
    return _pair_arcs(links)


def _pair_arcs(arcs: dict[tuple[Any, Any], dict]) -> list[tuple[Any, Any, dict]]:
    """Opposite arcs u->v, v->u are one link: the smaller bandwidth and latency apply."""
    out: dict[frozenset, tuple[Any, Any, dict]] = {}
    for (u, v), attrs in arcs.items():
        key = frozenset((u, v))
        if key not in out:
            out[key] = (u, v, dict(attrs))
            continue
        merged = out[key][2]
        for name in LINK_ATTRS:
            if name in attrs and name in merged:
                merged[name] = min(merged[name], attrs[name])
    return list(out.values())


def _load_graphml(path: Path) -> nx.Graph:
    where = str(path)
    try:
        raw = nx.read_graphml(path)
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else "?"
        raise ScenarioError(
            TOPOLOGY_KEY, f"{where}: line {line}: not valid GraphML ({exc})"
        ) from None
    except (nx.NetworkXError, KeyError, ValueError, TypeError) as exc:
        raise ScenarioError(TOPOLOGY_KEY, f"{where}: not valid GraphML ({exc})") from None
    G = _simple_from_links(list(raw.nodes), dict(raw.nodes(data=True)), _graphml_links(raw, where))
    G.graph.update({k: v for k, v in raw.graph.items() if isinstance(v, str | int | float)})
    return G


def _split_line(line: str) -> list[str]:
    return line.split("#", 1)[0].replace(",", " ").split()


def _is_header(fields: list[str]) -> bool:
    low = [f.lower() for f in fields]
    return bool(set(low[2:]) & set(LINK_ATTRS)) or (
        low[0] in _HEADER_TOKENS and len(low) > 1 and low[1] in _HEADER_TOKENS
    )


def _parse_edge_line(fields: list[str], where: str) -> tuple[str, str, dict]:
    if not 2 <= len(fields) <= 4:
        raise ScenarioError(
            TOPOLOGY_KEY,
            f"{where}: expected 'u v [bandwidth_bps [latency_s]]', got {len(fields)} fields",
        )
    u, v = fields[0], fields[1]
    if u == v:
        raise ScenarioError(TOPOLOGY_KEY, f"{where}: self loop {u}-{v} is not allowed")
    attrs = {k: _to_float(x, k, where) for k, x in zip(LINK_ATTRS, fields[2:], strict=False)}
    return u, v, attrs


def _load_edgelist(path: Path) -> nx.Graph:
    nodes: dict[str, None] = {}
    links = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ScenarioError(TOPOLOGY_KEY, f"{path}: not a text edge list ({exc})") from None
    seen_data = False
    for lineno, line in enumerate(lines, start=1):
        fields = _split_line(line)
        if not fields:
            continue
        if not seen_data and _is_header(fields):
            seen_data = True
            continue
        seen_data = True
        u, v, attrs = _parse_edge_line(fields, f"{path}: line {lineno}")
        nodes.setdefault(u)
        nodes.setdefault(v)
        links.append((u, v, attrs))
    return _simple_from_links(list(nodes), {}, links)


def load_topology(path: str | Path) -> nx.Graph:
    """Read a topology file: GraphML (.graphml, .xml) or an edge list (.edges, .txt, .csv).

    Edge lists hold one link per line, ``u v [bandwidth_bps [latency_s]]``, separated by
    whitespace or commas; ``#`` starts a comment; one header line is skipped. Parallel
    links are merged (bandwidths add, the smaller latency wins), self loops are dropped
    (GraphML) or rejected (edge lists), and a directed GraphML is read as undirected.
    Nodes are renumbered 0..n-1 (numeric order when ids are integers); an original id
    that differs from its new number is kept as the node's ``label``.

    Args:
        path: the file.

    Returns:
        An undirected simple graph on 0..n-1; numeric ``bandwidth_bps``/``latency_s`` kept.
    """
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(TOPOLOGY_KEY, f"topology file not found: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix in GRAPHML_SUFFIXES:
        G = _load_graphml(path)
    elif suffix in EDGELIST_SUFFIXES:
        G = _load_edgelist(path)
    else:
        raise ScenarioError(
            TOPOLOGY_KEY,
            f"{path}: unsupported file type '{suffix}'; allowed: {', '.join(FILE_SUFFIXES)}",
        )
    if G.number_of_nodes() < 2:
        raise ScenarioError(TOPOLOGY_KEY, f"{path}: a topology needs at least 2 nodes")
    G.graph.setdefault("name", path.stem)
    G.graph["path"] = str(path)
    return G
