"""Summaries and pictures of a network graph (no torch here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from networkx.algorithms import approximation

from fedsim.network.gossip_moments import second_moment_rates
from fedsim.network.mixing import algebraic_connectivity, metropolis_weights, spectral_gap
from fedsim.network.spectral import closed_form, predicted_rates

# Above this many nodes the report skips what needs dense n x n matrices (spectra,
# effective resistances, the gossip rates) or a search from every node (the exact
# diameter, the longest shortest-path latency): it takes closed forms for fedsim's ring,
# torus, hypercube and complete graphs, a two-sweep lower bound for the diameter, and
# says so. At 1000 nodes the dense parts take about a second.
MAX_EXACT_NODES = 1000
MAX_GOSSIP_NODES = MAX_EXACT_NODES


def _link_stats(G: nx.Graph, attr: str) -> dict[str, Any]:
    """total/min/max of an edge attribute and how many edges lack it (None when none have it)."""
    values = [float(d[attr]) for _, _, d in G.edges(data=True) if attr in d]
    stats: dict[str, Any] = {"total": None, "min": None, "max": None}
    if values:
        stats = {"total": float(sum(values)), "min": min(values), "max": max(values)}
    stats["missing"] = G.number_of_edges() - len(values)
    return stats


def _max_path_latency(G: nx.Graph, connected: bool) -> float | None:
    """Largest shortest-path latency over node pairs (the latency 'diameter'), if defined."""
    if not connected or G.number_of_edges() == 0:
        return None
    if any("latency_s" not in d for _, _, d in G.edges(data=True)):
        return None
    lengths = nx.all_pairs_dijkstra_path_length(G, weight="latency_s")
    return float(max(max(d.values()) for _, d in lengths))


def gossip_rates(G: nx.Graph) -> dict[str, float | None] | None:
    """Decay rates of ``E ||x - mean||^2`` under gossip with one clock of rate 1 per edge.

    Args:
        G: undirected graph.

    Returns:
        ``None`` for a disconnected graph or one of more than ``MAX_GOSSIP_NODES`` nodes;
        else ``boyd`` / ``accelerated`` (the guaranteed rates, ``lambda_2 / 2`` and
        ``eta``) and ``boyd_exact`` / ``accelerated_exact`` (the exact mean-square
        rates, ``None`` past the exact solver's size limit).

    References:
        Boyd et al., IEEE Trans. Inf. Theory, 2006; Even et al., NeurIPS 2021.
    """
    n = G.number_of_nodes()
    if n < 2 or not nx.is_connected(G):
        return None
    if n > MAX_GOSSIP_NODES:
        return _closed_form_gossip(G)
    H = nx.Graph(G.edges)  # unit rates whatever the file's edge attributes
    H.add_nodes_from(G.nodes)
    guaranteed = predicted_rates(H)
    out: dict[str, float | None] = {k: guaranteed[k] for k in ("boyd", "accelerated")}
    try:
        exact = second_moment_rates(H)
    except ValueError:  # past the exact solver's size limit
        exact = {}
    for method in ("boyd", "accelerated"):
        out[f"{method}_exact"] = exact.get(method)
    return out


def _closed_form_gossip(G: nx.Graph) -> dict[str, float | None] | None:
    """Guaranteed rates from :func:`closed_form` (edge-transitive graphs), exact for K_n."""
    cf = closed_form(G)
    if cf is None or cf["edge_resistance"] is None:
        return None
    chi1, chi2 = 1.0 / cf["lambda2"], cf["edge_resistance"] / 2.0
    out: dict[str, float | None] = {"boyd": cf["lambda2"] / 2.0,
                                    "accelerated": 1.0 / (2.0 * (chi1 * chi2) ** 0.5)}
    exact = cf["lambda2"] / 2.0 if cf["family"] == "complete" else None  # gossip_moments
    out.update(boyd_exact=exact, accelerated_exact=exact)
    return out


def describe_topology(G: nx.Graph) -> dict[str, Any]:
    """Size, connectivity, degrees, spectra and link statistics of a graph.

    Args:
        G: undirected graph; links may carry ``latency_s`` and ``bandwidth_bps``.

    Returns:
        A dict with ``nodes``, ``edges``, ``is_connected``, ``components``, ``diameter``
        (hops; None when disconnected), ``min_degree``/``max_degree``/``mean_degree``,
        ``spectral_gap`` (of the Metropolis matrix; 0 when disconnected),
        ``algebraic_connectivity`` (Laplacian lambda_2), ``{total,min,max}_latency_s``,
        ``{total,min,max}_bandwidth_bps`` (None when no edge has the attribute),
        ``edges_missing_latency``/``edges_missing_bandwidth``, ``max_path_latency_s``
        (largest shortest-path latency; None when undefined), ``gossip``
        (:func:`gossip_rates`) and ``large`` (None up to ``MAX_EXACT_NODES`` nodes, else
        how the expensive parts were done: ``{"closed_form": family or None,
        "diameter": "closed form" | "two-sweep lower bound"}``; spectra without a closed
        form are then None).

    References:
        Boyd, Diaconis, Xiao, "Fastest mixing Markov chain on a graph" (SIAM Review, 2004).
    """
    n, m = G.number_of_nodes(), G.number_of_edges()
    components = nx.number_connected_components(G) if n else 0
    connected = components == 1
    degrees = np.array([d for _, d in G.degree()], dtype=float) if n else np.zeros(1)
    info: dict[str, Any] = {
        "nodes": n,
        "edges": m,
        "is_connected": connected,
        "components": components,
        "min_degree": int(degrees.min()),
        "max_degree": int(degrees.max()),
        "mean_degree": float(degrees.mean()),
        "large": None,
    }
    if n <= MAX_EXACT_NODES:
        info.update(diameter=nx.diameter(G) if connected else None,
                    spectral_gap=spectral_gap(metropolis_weights(G)) if n else 0.0,
                    algebraic_connectivity=algebraic_connectivity(G) if n else 0.0)
    else:
        cf = closed_form(G) if connected else None
        if cf is not None:
            diameter, how = cf["diameter"], "closed form"
        elif connected:
            diameter, how = approximation.diameter(G, seed=0), "two-sweep lower bound"
        else:
            diameter, how = None, None
        info.update(diameter=diameter,
                    spectral_gap=cf["spectral_gap"] if cf else (None if connected else 0.0),
                    algebraic_connectivity=cf["lambda2"] if cf else (None if connected
                                                                      else 0.0),
                    large={"closed_form": cf["family"] if cf else None, "diameter": how})
    for attr, short in (("latency_s", "latency"), ("bandwidth_bps", "bandwidth")):
        stats = _link_stats(G, attr)
        for key in ("total", "min", "max"):
            info[f"{key}_{attr}"] = stats[key]
        info[f"edges_missing_{short}"] = stats["missing"]
    info["max_path_latency_s"] = _max_path_latency(G, connected) if n <= MAX_EXACT_NODES \
        else None
    info["gossip"] = gossip_rates(G)
    return info


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value * scale:.{digits}g}{unit}"


def format_report(name: str, info: dict[str, Any]) -> str:
    """A short human-readable block from :func:`describe_topology`'s dict.

    Args:
        name: the topology's name (first line).
        info: the dict of describe_topology.

    Returns:
        Several lines of text, no trailing newline.
    """
    diameter = info["diameter"] if info["is_connected"] else "inf (disconnected)"
    large = info.get("large")
    if large and large["diameter"] == "two-sweep lower bound":
        diameter = f">= {diameter}"
    parts = info["components"]
    state = "connected" if info["is_connected"] else f"DISCONNECTED ({parts} components)"
    lines = [
        f"{name}: {info['nodes']} nodes, {info['edges']} edges, {state}",
        f"  diameter {diameter} hops; degree min {info['min_degree']} / "
        f"mean {info['mean_degree']:.2f} / max {info['max_degree']}",
        f"  Metropolis spectral gap {_fmt(info['spectral_gap'], digits=4)}; "
        f"algebraic connectivity {_fmt(info['algebraic_connectivity'], digits=4)}",
        f"  latency  total {_fmt(info['total_latency_s'], ' ms', 1e3)}, "
        f"min {_fmt(info['min_latency_s'], ' ms', 1e3)}, "
        f"max {_fmt(info['max_latency_s'], ' ms', 1e3)}, "
        f"longest shortest path {_fmt(info['max_path_latency_s'], ' ms', 1e3)}",
        f"  bandwidth total {_fmt(info['total_bandwidth_bps'], ' Gbit/s', 1e-9)}, "
        f"min {_fmt(info['min_bandwidth_bps'], ' Gbit/s', 1e-9)}, "
        f"max {_fmt(info['max_bandwidth_bps'], ' Gbit/s', 1e-9)}",
    ]
    gossip = info.get("gossip")
    if gossip:
        lines.append(_gossip_line(gossip))
    if large:
        lines.append(_large_line(info["nodes"], large))
    missing = info["edges_missing_latency"], info["edges_missing_bandwidth"]
    if any(missing):
        lines.append(
            f"  edges without latency_s: {missing[0]}, without bandwidth_bps: {missing[1]} "
            "(network defaults apply)"
        )
    return "\n".join(lines)


def _large_line(n: int, large: dict[str, Any]) -> str:
    """What a large graph's report skipped or approximated."""
    if large["diameter"] is None:  # disconnected: the gaps are 0, the diameter infinite
        done = "spectral gaps 0 (disconnected)"
    elif large["closed_form"]:
        done = (f"spectra, diameter and gossip rates from the {large['closed_form']} "
                "closed forms")
    else:
        done = (f"spectra and gossip rates skipped (n/a), diameter a "
                f"{large['diameter'] or 'n/a'}")
    return (f"  large graph ({n} nodes > {MAX_EXACT_NODES}): {done}; longest shortest-path "
            "latency skipped")


def _gossip_line(g: dict[str, float | None]) -> str:
    """Guaranteed (and exact, when known) rates of randomized and accelerated gossip."""

    def rate(method: str) -> str:
        exact = g[f"{method}_exact"]
        return f">= {g[method]:.4g}" + (f", exact {exact:.4g}" if exact is not None else "")

    if g["boyd_exact"] is not None and g["accelerated_exact"] is not None:
        speedup = f"{g['accelerated_exact'] / g['boyd_exact']:.2f}x (exact)"
    else:
        speedup = f"{g['accelerated'] / g['boyd']:.2f}x (guaranteed rates)"
    return ("  gossip, one exchange per edge per s: E||x - mean||^2 decays per s at\n"
            f"    randomized {rate('boyd')}; accelerated {rate('accelerated')}; "
            f"speed-up {speedup}")


def _layout(G: nx.Graph) -> tuple[dict[Any, tuple[float, float]], str]:
    """Node positions and where they come from: ``"lonlat"`` when every node has
    lon/lat, ``"pos"`` for a stored ``pos`` (the lattice builders), else a seeded
    ``"spring"`` layout."""
    nodes = G.nodes(data=True)
    if len(G) and all("lon" in d and "lat" in d for _, d in nodes):
        return {v: (float(d["lon"]), float(d["lat"])) for v, d in nodes}, "lonlat"
    if len(G) and all("pos" in d for _, d in nodes):
        return {v: tuple(map(float, d["pos"])) for v, d in nodes}, "pos"
    return nx.spring_layout(G, seed=0), "spring"


Point = tuple[float, float]


def edge_geometry(G: nx.Graph, pos: dict[Any, Point], lattice: bool = True
                  ) -> list[tuple[Any, Any, Point, Point, Point, bool]]:
    """Where each edge is drawn: ``(u, v, start, control, end, wrap)``, a quadratic
    Bézier curve (``control`` is the midpoint for a straight edge).

    On a lattice layout (``lattice``: the stored grid positions of ``grid``/``torus``)
    an axis-aligned edge longer than 1.5 grid steps is a wrap-around edge (a torus
    joins each row's and each column's ends). Drawn straight it would lie on the
    row or column it closes, and a torus would look like a grid; it is bent outward
    instead, away from the centre of the drawing, its middle half a grid step off
    the row (column), so each wrap-around edge shows as its own arc.
    """
    edges = list(G.edges())
    lengths = [math.dist(pos[u], pos[v]) for u, v in edges]
    step = min((d for d in lengths if d > 0), default=0.0)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    centre = ((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2) if pos else (0.0, 0.0)
    out = []
    for (u, v), length in zip(edges, lengths, strict=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        mid = ((x0 + x1) / 2, (y0 + y1) / 2)
        wrap = lattice and step > 0 and length > 1.5 * step and (x0 == x1 or y0 == y1)
        if not wrap:
            out.append((u, v, (x0, y0), mid, (x1, y1), False))
            continue
        if y0 == y1:  # a row's wrap: bend up above the centre line, down below it
            control = (mid[0], mid[1] + (step if y0 >= centre[1] else -step))
        else:  # a column's wrap: bend right of the centre line, left of it
            control = (mid[0] + (step if x0 >= centre[0] else -step), mid[1])
        out.append((u, v, (x0, y0), control, (x1, y1), True))
    return out


def draw_topology(G: nx.Graph, path: str | Path, name: str | None = None) -> Path:
    """Save a picture of the graph: edges coloured by bandwidth, nodes at lon/lat when known.

    A torus's wrap-around edges are drawn as dashed arcs (see ``edge_geometry``).

    Args:
        G: the graph.
        path: output file, its extension the format (png, pdf, svg; parents are created).
        name: title; default ``G.graph["name"]`` or the file stem.

    Returns:
        The path written.
    """
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MplPath

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    title = name or G.graph.get("name") or path.stem
    pos, source = _layout(G)
    geometry = edge_geometry(G, pos, lattice=source == "pos")
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot()
    bw = [G.edges[u, v].get("bandwidth_bps") for u, v, *_ in geometry]
    subtitle = ""
    colors = ["0.5"] * len(geometry)
    if geometry and all(b is not None for b in bw) and max(bw) > min(bw):
        norm = LogNorm(vmin=min(bw), vmax=max(bw))
        cmap = matplotlib.colormaps["viridis"]
        colors = [cmap(norm(b)) for b in bw]
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                     label="bandwidth (bit/s)")
    elif geometry and all(b is not None for b in bw):
        subtitle = f"\nevery link {bw[0] / 1e9:.3g} Gbit/s"
    width = 2.0 if colors[0] != "0.5" else 1.5
    wraps = 0
    for (_, _, start, control, end, wrap), color in zip(geometry, colors, strict=True):
        wraps += wrap
        if wrap and color == "0.5":
            color = "C3"
        curve = MplPath([start, control, end], [MplPath.MOVETO, MplPath.CURVE3, MplPath.CURVE3])
        ax.add_patch(PathPatch(curve, facecolor="none", edgecolor=color, linewidth=width,
                               linestyle="--" if wrap else "-", zorder=1))
    small = len(G) <= 80
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=120 if small else 20, node_color="C1")
    if small:
        labels = {v: str(d.get("label", v)) for v, d in G.nodes(data=True)}
        nx.draw_networkx_labels(G, pos, labels=labels, ax=ax, font_size=6)
    if wraps:
        subtitle += f"\ndashed arcs: the {wraps} wrap-around edges"
    ax.autoscale_view()
    ax.set_aspect("equal" if source == "pos" else "auto")
    ax.set_title(f"{title}  (n={G.number_of_nodes()}, m={G.number_of_edges()}){subtitle}",
                 fontsize="medium")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
