"""Network graphs: named builders, resolving a name to a graph, link defaults (no torch here).

Every graph handed out is an undirected ``nx.Graph`` with integer nodes ``0..n-1``
and no self loops. Builders set no link attributes; files loaded by
:mod:`fedsim.network.topology_files` may carry ``bandwidth_bps`` (bit/s) and
``latency_s`` (one-way seconds) on their edges, and :func:`with_link_defaults` fills
whatever is missing. :func:`resolve_topology` takes a builder name, a shipped file's
name or a path.
"""

from __future__ import annotations

import inspect
import math
import numbers
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from fedsim.errors import ScenarioError
from fedsim.network.topology_files import FILE_SUFFIXES, TOPOLOGY_KEY, load_topology
from fedsim.shipped import TOPOLOGIES_DIR

PARAM_KEY = "network.topology_params"
MAX_CONNECT_TRIES = 100
MAX_NODES = 100_000  # builders refuse larger graphs (a guard against typos)
MAX_EDGES = 5_000_000
GNP_SKIP_PAIRS = 50_000_000  # G(n, p) past this many node pairs: geometric skips (_gnp_edges)


# --------------------------------------------------------------------------- params


def _int_param(name: str, value: Any, minimum: int, maximum: int = MAX_NODES) -> int:
    """An integer builder parameter in ``[minimum, maximum]``, or a ScenarioError naming it."""
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok and isinstance(value, float) and value.is_integer():
        ok, value = True, int(value)
    if not ok:
        raise ScenarioError(
            f"{PARAM_KEY}.{name}", f"must be an integer >= {minimum}, got {value!r}"
        )
    if value < minimum:
        raise ScenarioError(f"{PARAM_KEY}.{name}", f"must be >= {minimum}, got {value}")
    if value > maximum:
        raise ScenarioError(f"{PARAM_KEY}.{name}", f"must be <= {maximum}, got {value}")
    return int(value)


def _check_size(name: str, nodes: int, edges: float) -> None:
    """Refuse graphs beyond MAX_NODES nodes or MAX_EDGES (expected) edges."""
    if nodes > MAX_NODES or edges > MAX_EDGES:
        raise ScenarioError(
            f"{PARAM_KEY}.{name}",
            f"graph too large ({nodes} nodes, ~{int(edges)} edges); "
            f"limits: {MAX_NODES} nodes, {MAX_EDGES} edges",
        )


def _prob_param(name: str, value: Any) -> float:
    """A probability in (0, 1], or a ScenarioError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ScenarioError(f"{PARAM_KEY}.{name}", f"must be a number in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ScenarioError(f"{PARAM_KEY}.{name}", f"must be in (0, 1], got {value}")
    return float(value)


def _named(G: nx.Graph, name: str) -> nx.Graph:
    G.graph["name"] = name
    return G


# --------------------------------------------------------------------------- builders


def ring(n: int) -> nx.Graph:
    """Cycle of ``n >= 3`` nodes, node i linked to i +/- 1 mod n."""
    n = _int_param("n", n, 3)
    G = nx.cycle_graph(n)
    for i in G:
        G.nodes[i]["pos"] = (math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n))
    return _named(G, f"ring(n={n})")


def _lattice(rows: int, cols: int, periodic: bool) -> nx.Graph:
    """Row-major 2-D lattice: node ``r * cols + c`` sits at ``pos = (c, -r)``."""
    G = nx.grid_2d_graph(rows, cols, periodic=periodic)
    mapping = {(r, c): r * cols + c for r, c in G.nodes}
    G = nx.relabel_nodes(G, mapping)
    H = nx.Graph()
    H.add_nodes_from(range(rows * cols))
    H.add_edges_from(G.edges)
    for (r, c), i in mapping.items():
        H.nodes[i]["pos"] = (float(c), float(-r))
    return H


def torus(rows: int | None = None, cols: int | None = None, n: int | None = None) -> nx.Graph:
    """Periodic 2-D grid (every node has degree 4): ``rows x cols`` (>= 3 each), or ``n = k*k``."""
    if rows is None and cols is None:
        if n is None:
            raise ScenarioError(f"{PARAM_KEY}.rows", "torus needs rows and cols (>= 3 each), or n")
        n = _int_param("n", n, 9)
        side = math.isqrt(n)
        if side * side != n:
            raise ScenarioError(
                f"{PARAM_KEY}.n", f"torus shortcut n must be a perfect square >= 9, got {n}"
            )
        rows = cols = side
    if rows is None or cols is None:
        missing = "cols" if rows is not None else "rows"
        raise ScenarioError(f"{PARAM_KEY}.{missing}", "torus needs both rows and cols (>= 3 each)")
    rows, cols = _int_param("rows", rows, 3), _int_param("cols", cols, 3)
    _check_size("rows", rows * cols, 2 * rows * cols)
    if n is not None and _int_param("n", n, 9) != rows * cols:
        raise ScenarioError(f"{PARAM_KEY}.n", f"must equal rows*cols = {rows * cols}, got {n}")
    return _named(_lattice(rows, cols, periodic=True), f"torus({rows}x{cols})")


def grid(rows: int, cols: int) -> nx.Graph:
    """Non-periodic 2-D grid of ``rows x cols`` nodes (>= 1 each, at least 2 nodes)."""
    rows, cols = _int_param("rows", rows, 1), _int_param("cols", cols, 1)
    _check_size("rows", rows * cols, 2 * rows * cols)
    if rows * cols < 2:
        raise ScenarioError(f"{PARAM_KEY}.rows", "grid needs rows*cols >= 2, got 1x1")
    return _named(_lattice(rows, cols, periodic=False), f"grid({rows}x{cols})")


def hypercube(dim: int) -> nx.Graph:
    """Hypercube of ``2**dim`` nodes; i and j linked when their bits differ in one place."""
    dim = _int_param("dim", dim, 1, maximum=16)
    n = 2**dim
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from((i, i ^ (1 << b)) for i in range(n) for b in range(dim) if i < i ^ (1 << b))
    return _named(G, f"hypercube(dim={dim})")


def complete(n: int) -> nx.Graph:
    """Complete graph on ``n >= 2`` nodes."""
    n = _int_param("n", n, 2)
    _check_size("n", n, n * (n - 1) / 2)
    return _named(nx.complete_graph(n), f"complete(n={n})")


def star(n: int) -> nx.Graph:
    """Star of ``n >= 2`` nodes: node 0 is the hub, 1..n-1 are leaves."""
    n = _int_param("n", n, 2)
    return _named(nx.star_graph(n - 1), f"star(n={n})")


def _gnp_edges(n: int, p: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Edges of one G(n, p) sample, drawn row by row (memory O(n)).

    Past ``GNP_SKIP_PAIRS`` node pairs the row-by-row draw (one uniform per pair) takes
    minutes, so larger graphs are drawn by geometric skips between edges (Batagelj &
    Brandes, Phys. Rev. E 71, 2005): the same distribution in O(n + m), a different
    sample for a given seed than the row-by-row draw would give.
    """
    if n * (n - 1) // 2 > GNP_SKIP_PAIRS and p < 1.0:
        return _gnp_edges_skipping(n, p, rng)
    edges: list[tuple[int, int]] = []
    for i in range(n - 1):
        hits = np.flatnonzero(rng.random(n - i - 1) < p)
        edges.extend((i, i + 1 + int(j)) for j in hits)
    return edges


def _gnp_edges_skipping(n: int, p: float, rng: np.random.Generator) -> list[tuple[int, int]]:
    """G(n, p) edges as the pair indices hit by geometric gaps, pairs in row-major order."""
    pairs = n * (n - 1) // 2
    hits: list[np.ndarray] = []
    last = -1
    block = int(p * pairs * 1.05) + 1024
    while last < pairs:
        k = last + np.cumsum(rng.geometric(p, size=block))
        hits.append(k[k < pairs])
        last = int(k[-1])
    k = np.concatenate(hits)
    # row i holds the pairs (i, i+1..n-1), starting at s(i) = i (2n - i - 1) / 2
    b = 2.0 * n - 1.0
    i = np.floor((b - np.sqrt(np.maximum(b * b - 8.0 * k, 0.0))) / 2.0).astype(np.int64)

    def start(r: np.ndarray) -> np.ndarray:
        return r * (2 * n - r - 1) // 2

    i -= start(i) > k  # float rounding: at most one row off either way
    i += start(i + 1) <= k
    j = k - start(i) + i + 1
    return list(zip(i.tolist(), j.tolist(), strict=True))


def erdos_renyi(n: int, p: float, seed: int = 0) -> nx.Graph:
    """Connected G(n, p) sample: resampled from the seeded stream until connected.

    Args:
        n: nodes (>= 2).
        p: edge probability in (0, 1].
        seed: seed of a numpy Generator; the same seed gives the same graph.

    Returns:
        The first connected sample among up to 100 draws.
    """
    n, p = _int_param("n", n, 2), _prob_param("p", p)
    _check_size("p", n, p * n * (n - 1) / 2)
    rng = np.random.default_rng(seed)
    for _ in range(MAX_CONNECT_TRIES):
        G = nx.Graph()
        G.add_nodes_from(range(n))
        G.add_edges_from(_gnp_edges(n, p, rng))
        if nx.is_connected(G):
            return _named(G, f"erdos_renyi(n={n}, p={p:g})")
    threshold = math.log(n) / n
    raise ScenarioError(
        f"{PARAM_KEY}.p",
        f"no connected G(n={n}, p={p:g}) in {MAX_CONNECT_TRIES} samples; "
        f"use p well above ln(n)/n = {threshold:.3g}",
    )


def random_regular(n: int, degree: int, seed: int = 0) -> nx.Graph:
    """Connected random ``degree``-regular graph, resampled until connected.

    Args:
        n: nodes (>= 3).
        degree: every node's degree, 2 <= degree < n, with n * degree even.
        seed: seed of the sampler; the same seed gives the same graph.

    Returns:
        The first connected sample among up to 100 draws.
    """
    n = _int_param("n", n, 3)
    degree = _int_param("degree", degree, 2)
    _check_size("degree", n, n * degree / 2)
    if degree >= n:
        raise ScenarioError(f"{PARAM_KEY}.degree", f"must be < n = {n}, got {degree}")
    if (n * degree) % 2:
        raise ScenarioError(
            f"{PARAM_KEY}.degree", f"n * degree must be even, got n={n}, degree={degree}"
        )
    rand = random.Random(seed)
    for _ in range(MAX_CONNECT_TRIES):
        G = nx.random_regular_graph(degree, n, seed=rand)
        if nx.is_connected(G):
            H = nx.Graph()
            H.add_nodes_from(range(n))
            H.add_edges_from(sorted(tuple(sorted(e)) for e in G.edges))
            return _named(H, f"random_regular(n={n}, degree={degree})")
    raise ScenarioError(
        f"{PARAM_KEY}.degree", f"no connected {degree}-regular graph in {MAX_CONNECT_TRIES} samples"
    )


def exponential(n: int) -> nx.Graph:
    """Undirected static exponential graph: i linked to i +/- 2**k mod n, k = 0..floor(log2(n-1)).

    Args:
        n: nodes (>= 2).

    Returns:
        The graph; each node has degree about 2 * log2(n).

    References:
        Ying, Yuan, Chen, Hu, Pan, Yin, "Exponential Graph is Provably Efficient for
        Decentralized Deep Training" (NeurIPS 2021).
    """
    n = _int_param("n", n, 2)
    G = nx.Graph()
    G.add_nodes_from(range(n))
    for k in range((n - 1).bit_length()):  # k = 0..floor(log2(n-1))
        step = 2**k
        G.add_edges_from((i, (i + step) % n) for i in range(n) if (i + step) % n != i)
    return _named(G, f"exponential(n={n})")


BUILDERS: dict[str, Callable[..., nx.Graph]] = {
    "ring": ring,
    "torus": torus,
    "grid": grid,
    "hypercube": hypercube,
    "complete": complete,
    "star": star,
    "erdos_renyi": erdos_renyi,
    "random_regular": random_regular,
    "exponential": exponential,
}


def _builder_params(name: str, builder: Callable[..., nx.Graph]) -> tuple[set[str], set[str]]:
    """(all parameter names, required ones) of a builder, ``seed`` excluded."""
    sig = inspect.signature(builder).parameters
    names = {p for p in sig if p != "seed"}
    required = {p for p in names if sig[p].default is inspect.Parameter.empty}
    return names, required


def build_topology(name: str, params: Mapping[str, Any] | None = None, seed: int = 0) -> nx.Graph:
    """Build the named topology with its parameters.

    Args:
        name: one of ``BUILDERS``.
        params: the builder's parameters (e.g. ``{"n": 16}``); unknown or missing ones
            raise a ScenarioError naming ``network.topology_params.<p>``.
        seed: seed for the random builders (erdos_renyi, random_regular).

    Returns:
        An undirected graph on nodes 0..n-1 without link attributes.
    """
    if name not in BUILDERS:
        raise _unknown_topology(name)
    builder = BUILDERS[name]
    params = dict(params or {})
    allowed, required = _builder_params(name, builder)
    for key in params:
        if key not in allowed:
            raise ScenarioError(
                f"{PARAM_KEY}.{key}",
                f"unknown parameter for {name}; allowed: {', '.join(sorted(allowed))}",
            )
    missing = sorted(required - params.keys())
    if missing:
        raise ScenarioError(
            f"{PARAM_KEY}.{missing[0]}", f"{name} needs {', '.join(sorted(required))}"
        )
    if "seed" in inspect.signature(builder).parameters:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ScenarioError("seed", f"must be an integer >= 0, got {seed!r}")
        params["seed"] = int(seed)
    return builder(**params)


# --------------------------------------------------------------------------- resolving


def default_search_dirs() -> list[Path]:
    """``./topologies`` and the shipped ``fedsim/topologies/`` (package data)."""
    return [Path.cwd() / "topologies", TOPOLOGIES_DIR]


def _topology_files(search_dirs: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for d in search_dirs:
        if Path(d).is_dir():
            files.extend(sorted(p for p in Path(d).iterdir() if p.suffix.lower() in FILE_SUFFIXES))
    return files


def available_topologies(search_dirs: Iterable[Path] | None = None) -> list[str]:
    """Builder names, then the stems of topology files found in the search directories."""
    dirs = default_search_dirs() if search_dirs is None else search_dirs
    stems = dict.fromkeys(p.stem for p in _topology_files(dirs) if p.stem not in BUILDERS)
    return list(BUILDERS) + sorted(stems)


def _unknown_topology(name: str) -> ScenarioError:
    """The error for a name that is no builder and no file; hints at the shipped files."""
    files = available_topologies()[len(BUILDERS) :]
    shipped = f" ({', '.join(files)})" if files else ""
    return ScenarioError(
        TOPOLOGY_KEY,
        f"unknown topology {name!r}; allowed: {', '.join(BUILDERS)}, or a file in "
        f"topologies/{shipped} or a path to a .graphml/.edges file",
    )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False where the name cannot be a path (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _find_file(name: str, search_dirs: Iterable[Path]) -> Path | None:
    for d in search_dirs:
        d = Path(d)
        for candidate in [d / name] + [d / f"{name}{s}" for s in FILE_SUFFIXES]:
            if _is_file(candidate):
                return candidate
    return None


def resolve_topology(
    name: str,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    search_dirs: Iterable[str | Path] | None = None,
) -> nx.Graph:
    """A topology by builder name, shipped file name (``"abilene"``) or path.

    Args:
        name: a builder in ``BUILDERS``, a file in a search directory with or without its
            extension, or a path to a .graphml/.edges/.txt/.csv file.
        params: builder parameters; a file topology takes none.
        seed: seed for random builders.
        search_dirs: where to look for files; default ``./topologies`` and the shipped ones.

    Returns:
        An undirected graph on 0..n-1 (links may lack attributes; see with_link_defaults).
    """
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(TOPOLOGY_KEY, f"must be a non-empty string, got {name!r}")
    if name in BUILDERS:
        return build_topology(name, params, seed)
    dirs = [Path(d) for d in (default_search_dirs() if search_dirs is None else search_dirs)]
    path = Path(name)
    try:
        path = path.expanduser()
    except RuntimeError:  # "~user" of no such user: kept as written, then not found
        pass
    found = path if _is_file(path) else _find_file(name, dirs)
    if found is None:
        looks_like_path = path.suffix.lower() in FILE_SUFFIXES or len(path.parts) > 1
        if looks_like_path:
            raise ScenarioError(TOPOLOGY_KEY, f"topology file not found: {str(path)!r}")
        raise _unknown_topology(name)
    if params:
        raise ScenarioError(
            PARAM_KEY, f"a file topology ({found.name}) takes no parameters, got {sorted(params)}"
        )
    return load_topology(found)


def _is_number(x: Any) -> bool:
    """A finite real number (bool excluded)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def with_link_defaults(G: nx.Graph, bandwidth_bps: float, latency_s: float) -> nx.Graph:
    """A copy of ``G`` where every edge has ``bandwidth_bps`` and ``latency_s``.

    Args:
        G: the graph; its own link attributes are kept.
        bandwidth_bps: bandwidth (bit/s, > 0) for edges without one.
        latency_s: one-way latency (s, >= 0) for edges without one.

    Returns:
        The filled copy.
    """
    if not _is_number(bandwidth_bps) or bandwidth_bps <= 0:
        raise ScenarioError(
            "network.bandwidth_bps", f"must be a finite number > 0, got {bandwidth_bps}"
        )
    if not _is_number(latency_s) or latency_s < 0:
        raise ScenarioError("network.latency_s", f"must be a finite number >= 0, got {latency_s}")
    H = G.copy()
    for _, _, data in H.edges(data=True):
        data.setdefault("bandwidth_bps", float(bandwidth_bps))
        data.setdefault("latency_s", float(latency_s))
    return H
