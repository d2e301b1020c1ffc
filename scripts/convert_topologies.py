"""Convert Internet Topology Zoo GraphML files into fedsim topologies.

Usage:
    python scripts/convert_topologies.py [--src DIR] [--dst DIR] [NAME ...]

Defaults: read ``abilene`` and ``geant2012`` from ``/work/shared/data/topologies`` (or
``$FEDSIM_TOPOLOGY_SRC``), write ``fedsim/topologies/<name>.graphml`` (shipped in the wheel).

Each output graph is undirected and simple, with nodes 0..n-1 carrying ``label``,
``lat``, ``lon`` and ``country``; every edge carries

- ``latency_s``: great-circle (haversine, R = 6371 km) distance between its end points
  divided by 2e8 m/s (light in fibre, about 2/3 of c);
- ``bandwidth_bps``: from ``LinkSpeedRaw``, ``LinkSpeed`` + ``LinkSpeedUnits``, or a
  ``LinkLabel``/``LinkType`` such as "10 Gbps", "155 Mbps", "OC-192", "STM-64"; else
  DEFAULT_BANDWIDTH_BPS (10 Gbit/s, typical of these research backbones);
- ``bandwidth_source``: "data" or "default"; ``distance_km``; ``link_label`` if given.

Parallel links are merged (bandwidths add, smaller latency wins) and only the largest
connected component is kept if a graph is disconnected.

Data from the Internet Topology Zoo (S. Knight, H. Nguyen, N. Falkner, R. Bowden,
M. Roughan, "The Internet Topology Zoo", IEEE JSAC 2011), www.topology-zoo.org
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import networkx as nx

EARTH_RADIUS_M = 6_371_000.0
FIBRE_SPEED_MPS = 2.0e8
DEFAULT_BANDWIDTH_BPS = 10e9
OC1_BPS = 51.84e6  # SONET OC-n = n x 51.84 Mbit/s
STM1_BPS = 155.52e6  # SDH STM-n = n x 155.52 Mbit/s
UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
ATTRIBUTION = (
    "Data from the Internet Topology Zoo (S. Knight, H. Nguyen, N. Falkner, R. Bowden, "
    "M. Roughan, 'The Internet Topology Zoo', IEEE JSAC 2011), www.topology-zoo.org"
)
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = Path(os.environ.get("FEDSIM_TOPOLOGY_SRC", "/work/shared/data/topologies"))
DEFAULT_NAMES = ("abilene", "geant2012")

_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)\s*(?:bit/s|bps|b/s|bit|b)\b", re.IGNORECASE)
_OC = re.compile(r"\bOC-?(\d+)", re.IGNORECASE)
_STM = re.compile(r"\bSTM-?(\d+)", re.IGNORECASE)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two (lat, lon) points in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def rate_from_text(text: str) -> float | None:
    """bit/s from a label like "10 Gbps", "155 Mbps", "OC-192c" or "STM-16"; None if unknown."""
    if m := _RATE.search(text):
        return float(m.group(1)) * UNITS[m.group(2).upper()]
    if m := _OC.search(text):
        return int(m.group(1)) * OC1_BPS
    if m := _STM.search(text):
        return int(m.group(1)) * STM1_BPS
    return None


def link_bandwidth(data: dict) -> float | None:
    """bit/s of a Topology Zoo link from its attributes, or None when none is given."""
    raw = data.get("LinkSpeedRaw")
    if raw not in (None, "") and float(raw) > 0:
        return float(raw)
    speed, unit = data.get("LinkSpeed"), str(data.get("LinkSpeedUnits", "")).strip().upper()
    if speed not in (None, "") and unit in UNITS:
        return float(speed) * UNITS[unit]
    for key in ("LinkLabel", "LinkType"):
        if data.get(key) and (rate := rate_from_text(str(data[key]))):
            return rate
    return None


def _node_attrs(data: dict, where: str) -> dict:
    if "Latitude" not in data or "Longitude" not in data:
        raise SystemExit(f"{where}: node without Latitude/Longitude; cannot derive latency")
    return {
        "label": str(data.get("label", "")).strip(),
        "lat": float(data["Latitude"]),
        "lon": float(data["Longitude"]),
        "country": str(data.get("Country", "")).strip(),
    }


def _edge_attrs(a: dict, b: dict, data: dict) -> dict:
    dist = haversine_m(a["lat"], a["lon"], b["lat"], b["lon"])
    bw = link_bandwidth(data)
    attrs = {
        "latency_s": dist / FIBRE_SPEED_MPS,
        "distance_km": dist / 1e3,
        "bandwidth_bps": bw if bw is not None else DEFAULT_BANDWIDTH_BPS,
        "bandwidth_source": "data" if bw is not None else "default",
    }
    if data.get("LinkLabel"):
        attrs["link_label"] = str(data["LinkLabel"]).strip()
    return attrs


def _merge(old: dict, new: dict) -> None:
    old["bandwidth_bps"] += new["bandwidth_bps"]
    old["latency_s"] = min(old["latency_s"], new["latency_s"])
    if new["bandwidth_source"] == "default":
        old["bandwidth_source"] = "default"


def convert(src: Path) -> tuple[nx.Graph, list[str]]:
    """The converted graph of one Topology Zoo file, and notes on what was changed."""
    raw = nx.read_graphml(src, force_multigraph=True)
    notes: list[str] = []
    order = sorted(raw.nodes, key=lambda v: (int(v) if str(v).isdigit() else 0, str(v)))
    index = {v: i for i, v in enumerate(order)}
    G = nx.Graph(name=str(raw.graph.get("Network", src.stem)))
    for v in order:
        G.add_node(index[v], **_node_attrs(raw.nodes[v], f"{src}: node {v}"))
    for u, v, data in raw.edges(data=True):
        i, j = index[u], index[v]
        if i == j:
            notes.append(f"dropped self loop at {G.nodes[i]['label']}")
            continue
        attrs = _edge_attrs(G.nodes[i], G.nodes[j], data)
        if G.has_edge(i, j):
            notes.append(f"merged parallel link {G.nodes[i]['label']}-{G.nodes[j]['label']}")
            _merge(G.edges[i, j], attrs)
        else:
            G.add_edge(i, j, **attrs)
    return _largest_component(G, notes), notes


def _largest_component(G: nx.Graph, notes: list[str]) -> nx.Graph:
    if nx.is_connected(G):
        return G
    keep = max(nx.connected_components(G), key=len)
    dropped = sorted(G.nodes[v]["label"] for v in G if v not in keep)
    notes.append(f"kept the largest component; dropped {len(dropped)} nodes: {dropped}")
    H = nx.convert_node_labels_to_integers(G.subgraph(sorted(keep)).copy(), ordering="sorted")
    return H


def write(G: nx.Graph, src: Path, dst: Path) -> None:
    """Write G as GraphML with provenance in the graph attributes."""
    G.graph.update(
        {
            "source_file": src.name,
            "attribution": ATTRIBUTION,
            "latency_model": "haversine(R=6371 km) / 2e8 m/s",
            "default_bandwidth_bps": DEFAULT_BANDWIDTH_BPS,
        }
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    nx.write_graphml(G, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(DEFAULT_NAMES))
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC)
    parser.add_argument("--dst", type=Path, default=REPO / "fedsim" / "topologies")
    args = parser.parse_args(argv)
    for name in args.names:
        src = args.src / f"{name}.graphml"
        G, notes = convert(src)
        write(G, src, args.dst / f"{name}.graphml")
        n_default = sum(d["bandwidth_source"] == "default" for *_, d in G.edges(data=True))
        print(
            f"{name}: {G.number_of_nodes()} nodes, {G.number_of_edges()} edges, "
            f"{n_default} with default bandwidth -> {args.dst / (name + '.graphml')}"
        )
        for note in notes:
            print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
