"""Topology builders, loaders, shipped files and the topology report."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import networkx as nx
import pytest

from fedsim.errors import ScenarioError
from fedsim.network.topology import (
    BUILDERS,
    available_topologies,
    build_topology,
    resolve_topology,
    with_link_defaults,
)
from fedsim.network.topology_files import load_topology
from fedsim.network.topology_report import (
    MAX_EXACT_NODES,
    describe_topology,
    draw_topology,
    format_report,
)

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = REPO / "topologies"
SMALL = {
    "ring": {"n": 6},
    "torus": {"rows": 3, "cols": 5},
    "grid": {"rows": 3, "cols": 4},
    "hypercube": {"dim": 3},
    "complete": {"n": 5},
    "star": {"n": 6},
    "erdos_renyi": {"n": 12, "p": 0.4},
    "random_regular": {"n": 10, "degree": 3},
    "exponential": {"n": 10},
}


def edge_set(G: nx.Graph) -> set[frozenset]:
    return {frozenset(e) for e in G.edges}


# ----------------------------------------------------------------------------- builders


def test_every_builder_is_covered() -> None:
    assert set(SMALL) == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builders_return_simple_connected_graphs(name: str) -> None:
    G = build_topology(name, SMALL[name], seed=1)
    assert type(G) is nx.Graph
    assert sorted(G.nodes) == list(range(G.number_of_nodes()))
    assert nx.number_of_selfloops(G) == 0
    assert nx.is_connected(G)
    assert all(not d for *_, d in G.edges(data=True)), "builders set no link attributes"


def test_ring_star_complete_shapes() -> None:
    ring = build_topology("ring", {"n": 5})
    assert edge_set(ring) == {frozenset((i, (i + 1) % 5)) for i in range(5)}
    star = build_topology("star", {"n": 6})
    assert dict(star.degree()) == {0: 5, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert build_topology("complete", {"n": 6}).number_of_edges() == 15


@pytest.mark.parametrize(("rows", "cols"), [(3, 3), (3, 5), (4, 6)])
def test_torus_counts(rows: int, cols: int) -> None:
    G = build_topology("torus", {"rows": rows, "cols": cols})
    assert G.number_of_nodes() == rows * cols
    assert G.number_of_edges() == 2 * rows * cols
    assert set(dict(G.degree()).values()) == {4}
    assert G.has_edge(0, cols - 1) and G.has_edge(0, (rows - 1) * cols)  # wrap-around


def test_torus_square_shortcut_and_grid_counts() -> None:
    assert edge_set(build_topology("torus", {"n": 16})) == edge_set(
        build_topology("torus", {"rows": 4, "cols": 4})
    )
    G = build_topology("grid", {"rows": 3, "cols": 4})
    assert (G.number_of_nodes(), G.number_of_edges()) == (12, 3 * 3 + 2 * 4)
    assert build_topology("grid", {"rows": 1, "cols": 4}).number_of_edges() == 3


@pytest.mark.parametrize("dim", [1, 2, 4, 5])
def test_hypercube_degrees(dim: int) -> None:
    G = build_topology("hypercube", {"dim": dim})
    assert G.number_of_nodes() == 2**dim
    assert set(dict(G.degree()).values()) == {dim}
    assert G.has_edge(0, 1) and (dim < 2 or G.has_edge(0, 2))
    assert nx.diameter(G) == dim


@pytest.mark.parametrize(("n", "degree"), [(2, 1), (3, 2), (8, 5), (10, 6), (16, 7), (17, 8)])
def test_exponential_degrees(n: int, degree: int) -> None:
    G = build_topology("exponential", {"n": n})
    assert set(dict(G.degree()).values()) == {degree}
    hops = {2**k for k in range(int(math.floor(math.log2(n - 1))) + 1)}
    expected = {(h % n) for h in hops} | {(-h) % n for h in hops}
    assert set(G[0]) == expected - {0}


def test_erdos_renyi_reproducible_and_connected() -> None:
    params = {"n": 30, "p": 0.15}
    a, b = build_topology("erdos_renyi", params, seed=7), build_topology("erdos_renyi", params, 7)
    assert nx.is_connected(a)
    assert edge_set(a) == edge_set(b)
    assert edge_set(a) != edge_set(build_topology("erdos_renyi", params, seed=8))


def test_random_regular_reproducible() -> None:
    a = build_topology("random_regular", {"n": 20, "degree": 4}, seed=2)
    assert set(dict(a.degree()).values()) == {4} and nx.is_connected(a)
    assert edge_set(a) == edge_set(build_topology("random_regular", {"n": 20, "degree": 4}, 2))


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("ring", {"n": 2}, "n"),
        ("ring", {"n": "8"}, "n"),
        ("ring", {"n": True}, "n"),
        ("ring", {}, "n"),
        ("ring", {"n": 5, "degree": 2}, "degree"),
        ("torus", {"rows": 2, "cols": 4}, "rows"),
        ("torus", {"rows": 4}, "cols"),
        ("torus", {"n": 10}, "n"),
        ("grid", {"rows": 0, "cols": 3}, "rows"),
        ("hypercube", {"dim": 0}, "dim"),
        ("complete", {"n": 1}, "n"),
        ("star", {"n": 1}, "n"),
        ("erdos_renyi", {"n": 10, "p": 0}, "p"),
        ("erdos_renyi", {"n": 10, "p": 1.5}, "p"),
        ("erdos_renyi", {"n": 10}, "p"),
        ("random_regular", {"n": 7, "degree": 3}, "degree"),
        ("random_regular", {"n": 5, "degree": 5}, "degree"),
        ("exponential", {"n": 1}, "n"),
        ("ring", {"n": 10**9}, "n"),  # refused before any memory is used
        ("complete", {"n": 5000}, "n"),
        ("hypercube", {"dim": 40}, "dim"),
    ],
)
def test_bad_params_name_the_param(name: str, params: dict, key: str) -> None:
    with pytest.raises(ScenarioError) as err:
        build_topology(name, params)
    assert err.value.key == f"network.topology_params.{key}"


def test_erdos_renyi_gives_up_clearly() -> None:
    with pytest.raises(ScenarioError, match="no connected") as err:
        build_topology("erdos_renyi", {"n": 200, "p": 0.001})
    assert err.value.key == "network.topology_params.p"


def test_unknown_topology_names_the_key() -> None:
    with pytest.raises(ScenarioError) as err:
        resolve_topology("moebius")
    assert err.value.key == "network.topology"
    assert "moebius" in str(err.value) and "ring" in str(err.value)
    assert "abilene" in str(err.value)
    with pytest.raises(ScenarioError):
        build_topology("moebius", {})


def test_with_link_defaults_fills_only_missing() -> None:
    G = nx.Graph([(0, 1), (1, 2)])
    G.edges[0, 1]["latency_s"] = 0.5
    H = with_link_defaults(G, bandwidth_bps=1e6, latency_s=0.01)
    assert H.edges[0, 1] == {"latency_s": 0.5, "bandwidth_bps": 1e6}
    assert H.edges[1, 2] == {"latency_s": 0.01, "bandwidth_bps": 1e6}
    assert "latency_s" not in G.edges[1, 2], "input is not modified"
    with pytest.raises(ScenarioError) as err:
        with_link_defaults(G, bandwidth_bps=0, latency_s=0.01)
    assert err.value.key == "network.bandwidth_bps"


# ----------------------------------------------------------------------------- shipped files


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(h))


@pytest.mark.parametrize(("name", "n", "m"), [("abilene", 11, 14), ("geant2012", 40, 61)])
def test_shipped_files(name: str, n: int, m: int) -> None:
    G = resolve_topology(name)
    assert (G.number_of_nodes(), G.number_of_edges()) == (n, m)
    assert sorted(G.nodes) == list(range(n)) and nx.is_connected(G)
    for _, _, d in G.edges(data=True):
        assert d["latency_s"] > 0 and d["bandwidth_bps"] > 0
        assert d["bandwidth_source"] in ("data", "default")
    assert all({"label", "lat", "lon", "country"} <= set(d) for _, d in G.nodes(data=True))
    assert name in available_topologies()


def test_abilene_latency_and_bandwidth_by_hand() -> None:
    G = resolve_topology("abilene.graphml")
    by_label = {d["label"]: v for v, d in G.nodes(data=True)}
    ny, chi = by_label["New York"], by_label["Chicago"]
    a, b = G.nodes[ny], G.nodes[chi]
    km = haversine_km(a["lat"], a["lon"], b["lat"], b["lon"])
    assert 1100 < km < 1200  # New York - Chicago is about 1145 km
    assert G.edges[ny, chi]["latency_s"] == pytest.approx(km * 1e3 / 2e8, rel=1e-9)
    assert G.edges[ny, chi]["bandwidth_bps"] == pytest.approx(192 * 51.84e6)  # OC-192


def test_geant_uses_default_bandwidth_where_missing() -> None:
    G = resolve_topology("geant2012")
    sources = [d["bandwidth_source"] for *_, d in G.edges(data=True)]
    assert sources.count("default") == 22
    assert all(
        d["bandwidth_bps"] == 10e9
        for *_, d in G.edges(data=True)
        if d["bandwidth_source"] == "default"
    )
    assert min(d["bandwidth_bps"] for *_, d in G.edges(data=True)) == pytest.approx(155e6)


# ----------------------------------------------------------------------------- loaders


def test_load_graphml_with_string_ids(tmp_path: Path) -> None:
    G = nx.Graph()
    G.add_edge("b", "a", bandwidth_bps=2e9, latency_s=0.003)
    G.add_edge("a", "c")
    path = tmp_path / "net.graphml"
    nx.write_graphml(G, path)
    H = load_topology(path)
    assert sorted(H.nodes) == [0, 1, 2]
    labels = {d["label"]: v for v, d in H.nodes(data=True)}
    e = H.edges[labels["a"], labels["b"]]
    assert e["bandwidth_bps"] == 2e9 and e["latency_s"] == 0.003
    assert "bandwidth_bps" not in H.edges[labels["a"], labels["c"]]


def test_load_directed_multigraph_graphml(tmp_path: Path) -> None:
    G = nx.MultiDiGraph()
    G.add_edge(0, 1, bandwidth_bps=1e9, latency_s=0.01)
    G.add_edge(0, 1, bandwidth_bps=1e9, latency_s=0.02)  # parallel: bandwidths add
    G.add_edge(1, 0, bandwidth_bps=5e8, latency_s=0.01)  # reverse arc: slower direction
    G.add_edge(1, 2)
    G.add_edge(2, 2)
    path = tmp_path / "d.graphml"
    nx.write_graphml(G, path)
    H = load_topology(path)
    assert type(H) is nx.Graph and nx.number_of_selfloops(H) == 0
    assert H.edges[0, 1]["bandwidth_bps"] == 5e8 and H.edges[0, 1]["latency_s"] == 0.01
    assert H.number_of_edges() == 2


def test_load_graphml_rejects_bad_values(tmp_path: Path) -> None:
    G = nx.Graph()
    G.add_edge(0, 1, latency_s="slow")
    nx.write_graphml(G, tmp_path / "bad.graphml")
    with pytest.raises(ScenarioError, match="latency_s"):
        load_topology(tmp_path / "bad.graphml")
    (tmp_path / "broken.graphml").write_text("<graphml>\n<graph>\n</graphml>\n")
    with pytest.raises(ScenarioError, match="line 3") as err:
        load_topology(tmp_path / "broken.graphml")
    assert err.value.key == "network.topology"


def test_load_edge_list(tmp_path: Path) -> None:
    path = tmp_path / "net.edges"
    path.write_text("# a small net\n1 2 1e9 0.005\n2 3 1e8  # no latency\n\n3 1\n2 1 1e9 0.001\n")
    G = load_topology(path)
    assert sorted(G.nodes) == [0, 1, 2] and G.number_of_edges() == 3
    assert G.nodes[0]["label"] == "1"  # 1-based ids renumbered
    assert G.edges[0, 1] == {"bandwidth_bps": 2e9, "latency_s": 0.001}  # merged parallel links
    assert G.edges[1, 2] == {"bandwidth_bps": 1e8}
    assert G.edges[2, 0] == {}


def test_load_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "net.csv"
    path.write_text("source,target,bandwidth_bps,latency_s\n0,1,1e6,0.1\n1,2,2e6,0.2\n")
    G = load_topology(path)
    assert G.edges[1, 2] == {"bandwidth_bps": 2e6, "latency_s": 0.2}
    assert "label" not in G.nodes[0]


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("0 1\n1 2 fast\n", 2, "bandwidth_bps"),
        ("0 1\n# c\n\n1\n", 4, "fields"),
        ("0 1 1 2 3\n", 1, "fields"),
        ("0 1\n1 2 1e9 -0.1\n", 2, "latency_s"),
        ("0 1\n1 2 0\n", 2, "bandwidth_bps"),
        ("0 1\n2 2\n", 2, "self loop"),
    ],
)
def test_malformed_edge_list_names_the_line(
    tmp_path: Path, text: str, line: int, what: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=f"line {line}") as err:
        load_topology(path)
    assert what in str(err.value)
    assert str(path) in str(err.value)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="not found") as err:
        load_topology(tmp_path / "nope.graphml")
    assert "nope.graphml" in str(err.value)
    with pytest.raises(ScenarioError, match="not found"):
        resolve_topology(str(tmp_path / "nope.edges"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ScenarioError, match="unsupported"):
        load_topology(tmp_path / "x.json")


def test_resolve_by_stem_path_and_search_dirs(tmp_path: Path) -> None:
    (tmp_path / "tri.edges").write_text("0 1\n1 2\n2 0\n")
    G = resolve_topology("tri", search_dirs=[tmp_path])
    assert G.number_of_edges() == 3
    assert resolve_topology(str(tmp_path / "tri.edges")).number_of_edges() == 3
    assert "tri" in available_topologies([tmp_path])
    with pytest.raises(ScenarioError) as err:
        resolve_topology("tri", {"n": 3}, search_dirs=[tmp_path])
    assert err.value.key == "network.topology_params"
    assert resolve_topology("ring", {"n": 4}).number_of_edges() == 4


# ----------------------------------------------------------------------------- report


def test_describe_ring() -> None:
    for n in (6, 7):
        info = describe_topology(build_topology("ring", {"n": n}))
        assert info["diameter"] == n // 2
        assert info["is_connected"] and info["nodes"] == n and info["edges"] == n
        assert info["min_degree"] == info["max_degree"] == 2
        assert info["total_latency_s"] is None and info["edges_missing_latency"] == n
    text = format_report("ring", info)
    assert "ring: 7 nodes, 7 edges, connected" in text


def test_describe_disconnected_and_links() -> None:
    G = with_link_defaults(nx.Graph([(0, 1), (2, 3)]), bandwidth_bps=1e9, latency_s=0.01)
    info = describe_topology(G)
    assert info["diameter"] is None and not info["is_connected"] and info["components"] == 2
    assert info["spectral_gap"] == pytest.approx(0.0, abs=1e-12)
    assert info["total_latency_s"] == pytest.approx(0.02)
    assert info["max_bandwidth_bps"] == 1e9
    assert "DISCONNECTED" in format_report("two", info)
    assert info["gossip"] is None and "gossip" not in format_report("two", info)


def test_describe_abilene() -> None:
    info = describe_topology(resolve_topology("abilene"))
    assert info["is_connected"] and info["diameter"] >= 4
    assert 0 < info["spectral_gap"] < 1 and info["algebraic_connectivity"] > 0
    assert info["max_path_latency_s"] > info["max_latency_s"] > info["min_latency_s"] > 0
    g = info["gossip"]  # unit-rate edges, whatever the links' bandwidths
    assert g["boyd"] == pytest.approx(info["algebraic_connectivity"] / 2)
    assert g["accelerated_exact"] / g["boyd_exact"] == pytest.approx(2.067, abs=1e-3)
    assert g["boyd"] < g["boyd_exact"] and g["accelerated"] < g["accelerated_exact"]
    assert "speed-up 2.07x (exact)" in format_report("abilene", info)


def test_gossip_rates_beyond_the_exact_solver_are_guaranteed_only() -> None:
    info = describe_topology(build_topology("ring", {"n": 300}))
    g = info["gossip"]
    assert g["boyd_exact"] is None and g["accelerated_exact"] is None
    assert g["accelerated"] / g["boyd"] == pytest.approx(300 / (math.pi * math.sqrt(2)), rel=0.01)
    assert "(guaranteed rates)" in format_report("ring", info)


@pytest.mark.parametrize("which", ["abilene", "ring"])
def test_draw_topology_writes_png(tmp_path: Path, which: str) -> None:
    G = resolve_topology(which, {"n": 8} if which == "ring" else None)
    out = draw_topology(G, tmp_path / "sub" / f"{which}.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ----------------------------------------------------------------------------- layering


@pytest.mark.parametrize("module", ["topology.py", "mixing.py", "topology_report.py"])
def test_network_modules_do_not_import_torch(module: str) -> None:
    tree = ast.parse((REPO / "fedsim" / "network" / module).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "torch" not in names


# ----------------------------------------------------------------------------- large graphs


def test_gnp_skipping_maps_pair_indices_in_row_major_order() -> None:
    import numpy as np

    from fedsim.network.topology import _gnp_edges_skipping

    n = 300
    every = [(i, j) for i in range(n) for j in range(i + 1, n)]
    assert _gnp_edges_skipping(n, 1.0 - 1e-12, np.random.default_rng(1)) == every
    edges = _gnp_edges_skipping(2000, 0.01, np.random.default_rng(2))
    assert len(set(edges)) == len(edges) and all(0 <= i < j < 2000 for i, j in edges)
    mean = 0.01 * 2000 * 1999 / 2
    sd = mean**0.5
    assert abs(len(edges) - mean) < 5 * sd


def test_large_erdos_renyi_is_drawn_by_skips_and_reproducible() -> None:
    from fedsim.network.topology import GNP_SKIP_PAIRS

    n = 12_000  # 7.2e7 pairs: past GNP_SKIP_PAIRS, where the row-by-row draw takes minutes
    assert n * (n - 1) // 2 > GNP_SKIP_PAIRS
    a = build_topology("erdos_renyi", {"n": n, "p": 0.002}, seed=3)
    assert nx.is_connected(a) and a.number_of_nodes() == n
    pairs, p = n * (n - 1) / 2, 0.002
    assert abs(a.number_of_edges() - p * pairs) < 5 * (p * pairs) ** 0.5
    assert edge_set(a) == edge_set(build_topology("erdos_renyi", {"n": n, "p": 0.002}, seed=3))


@pytest.mark.parametrize(("name", "params", "diameter"), [
    ("ring", {"n": 100_000}, 50_000),
    ("hypercube", {"dim": 12}, 12),
    ("torus", {"rows": 40, "cols": 30}, 35),
    ("complete", {"n": 1500}, 1),
])
def test_report_on_large_builder_graphs_uses_closed_forms(name, params, diameter) -> None:
    G = build_topology(name, params)
    assert G.number_of_nodes() > MAX_EXACT_NODES
    info = describe_topology(G)
    assert info["diameter"] == diameter
    assert info["large"] == {"closed_form": name, "diameter": "closed form"}
    assert info["max_path_latency_s"] is None
    text = format_report(name, info)
    assert f"large graph ({G.number_of_nodes()} nodes > {MAX_EXACT_NODES}): spectra, " \
        f"diameter and gossip rates from the {name} closed forms" in text
    if name == "ring":
        n = 100_000
        assert info["algebraic_connectivity"] == pytest.approx(2 - 2 * math.cos(2 * math.pi / n))
        g = info["gossip"]  # the guaranteed rates, as below the threshold
        assert g["accelerated"] / g["boyd"] == pytest.approx(n / (math.pi * math.sqrt(2)),
                                                             rel=0.01)
        assert g["boyd_exact"] is None
    if name == "torus":  # 40 x 30 is not edge-transitive: no closed form for chi_2
        assert info["gossip"] is None and info["spectral_gap"] > 0
    if name == "complete":
        assert info["gossip"]["boyd_exact"] == info["gossip"]["accelerated_exact"] == 750


def test_report_on_other_large_graphs_skips_spectra_and_bounds_the_diameter() -> None:
    G = build_topology("random_regular", {"n": 1500, "degree": 3}, seed=0)
    info = describe_topology(G)
    assert info["spectral_gap"] is None and info["algebraic_connectivity"] is None
    assert info["gossip"] is None
    assert info["large"] == {"closed_form": None, "diameter": "two-sweep lower bound"}
    assert 0 < info["diameter"] <= nx.diameter(G)
    text = format_report("rr", info)
    assert f"diameter >= {info['diameter']} hops" in text
    assert "Metropolis spectral gap n/a; algebraic connectivity n/a" in text
    assert "spectra and gossip rates skipped (n/a), diameter a two-sweep lower bound" in text


def test_report_at_the_threshold_stays_exact() -> None:
    info = describe_topology(build_topology("ring", {"n": MAX_EXACT_NODES}))
    assert info["large"] is None and info["diameter"] == MAX_EXACT_NODES // 2
    assert "large graph" not in format_report("ring", info)


def test_report_on_a_large_disconnected_graph() -> None:
    G = nx.disjoint_union(nx.cycle_graph(600), nx.cycle_graph(600))
    info = describe_topology(G)
    assert info["spectral_gap"] == 0.0 and info["algebraic_connectivity"] == 0.0
    assert info["diameter"] is None and info["gossip"] is None
    text = format_report("two", info)
    assert "DISCONNECTED (2 components)" in text and "spectral gaps 0 (disconnected)" in text


def test_cli_topology_report_on_a_large_ring(capsys) -> None:
    from fedsim.cli import main

    assert main(["topology", "ring", "--param", "n=100000"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ring: 100000 nodes, 100000 edges, connected"
    assert out[1].startswith("  diameter 50000 hops;")
    assert "  large graph (100000 nodes > 1000): spectra, diameter and gossip rates from the " \
        "ring closed forms; longest shortest-path latency skipped" in out
