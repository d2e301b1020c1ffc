"""run_minmax: rows, simulated time and bytes from the clock, divergence, errors."""

from __future__ import annotations

import networkx as nx
import pytest

from fedsim.config import NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.minmax import (
    GossipClock,
    ServerClock,
    bilinear_game,
    dadam3,
    make_method,
    make_task,
    run_minmax,
)
from fedsim.network.topology import ring, torus

LINK_S = 0.02 + 8 * 40 / 10e6  # default latency + one 40-byte state (d = 10, float32)


def test_rows_have_the_metrics_and_start_at_iteration_zero():
    task = bilinear_game(num_nodes=8, dim=5)
    rows = run_minmax(task, dadam3(lr=0.1), ring(8), 10, eval_every=4)
    assert [r["iteration"] for r in rows] == [0, 4, 8, 10]
    for key in ("time_s", "bytes", "grad_evals", "dist_to_nash", "dist_to_nash_max",
                "grad_norm", "consensus", "method", "task"):
        assert key in rows[-1]
    assert rows[0]["consensus"] == 0.0 and rows[0]["bytes"] == 0
    assert rows[-1]["method"] == "dadam3" and rows[-1]["grad_evals"] == 20


@pytest.mark.parametrize("name,params,per_it_s,per_it_bytes", [
    # 2 evaluations (0.001 s each), one round: 8 edges x 2 directions x 40 bytes
    ("dadam3", {}, 0.002 + LINK_S, 640),
    ("dadam3", {"gossip_steps": 3}, 0.002 + 3 * LINK_S, 3 * 640),
    ("gda", {}, 0.001 + LINK_S, 640),
    # a round trip per averaged evaluation: up and down, 8 nodes x 2 x 40 bytes
    ("adam_server", {}, 0.001 + 2 * LINK_S, 640),
    ("extra_adam_server", {}, 2 * (0.001 + 2 * LINK_S), 1280),
])
def test_time_and_bytes_follow_the_link_model(name, params, per_it_s, per_it_bytes):
    task = bilinear_game(num_nodes=8, dim=5)
    rows = run_minmax(task, make_method(name, lr=0.01, **params), ring(8), 5)
    assert rows[-1]["bytes"] == 5 * per_it_bytes
    assert rows[-1]["time_s"] == pytest.approx(5 * per_it_s, rel=1e-12)


def test_dposg_first_iteration_pays_the_extra_evaluation():
    task = bilinear_game(num_nodes=8, dim=5)
    rows = run_minmax(task, make_method("dposg", lr=0.01), ring(8), 3)
    assert rows[1]["grad_evals"] == 2 and rows[-1]["grad_evals"] == 4
    assert rows[-1]["time_s"] == pytest.approx(0.004 + 3 * LINK_S, rel=1e-12)


def test_slower_links_cost_more_time_not_more_bytes():
    task = bilinear_game(num_nodes=9, dim=5)
    fast = run_minmax(task, dadam3(lr=0.1), torus(3, 3), 4)
    slow = run_minmax(task, dadam3(lr=0.1), torus(3, 3), 4,
                      network=NetworkConfig(bandwidth_bps=1e3, latency_s=0.1))
    assert slow[-1]["bytes"] == fast[-1]["bytes"] == 4 * 2 * 18 * 40
    assert slow[-1]["time_s"] == pytest.approx(4 * (0.002 + 0.1 + 8 * 40 / 1e3))
    assert slow[-1]["dist_to_nash"] == fast[-1]["dist_to_nash"]  # the clock says only when


def test_clocks_directly():
    g = GossipClock(ring(4))
    cost = g.iteration(1, 10.0, 2, 100)
    assert cost.bytes_sent == 2 * 2 * 4 * 100 and cost.rounds == 2
    assert cost.duration_s == pytest.approx(0.01 + 2 * (0.02 + 800 / 10e6))
    s = ServerClock(4, NetworkConfig(server_bandwidth_bps=1e4))
    cost = s.iteration(1, 10.0, 1, 100)  # the server link carries 4 x 800 bits each way
    assert cost.duration_s == pytest.approx(0.01 + 2 * (0.02 + 3200 / 1e4))
    assert cost.bytes_sent == 800


def test_the_same_seed_gives_the_same_rows():
    task = bilinear_game(num_nodes=8, dim=3, noise_std=0.1)
    a = run_minmax(task, dadam3(lr=0.1), ring(8), 30, seed=5)
    b = run_minmax(task, dadam3(lr=0.1), ring(8), 30, seed=5)
    c = run_minmax(task, dadam3(lr=0.1), ring(8), 30, seed=6)
    assert a == b
    assert a[-1]["dist_to_nash"] != c[-1]["dist_to_nash"]


def test_divergence_stops_with_a_flagged_row():
    task = bilinear_game(num_nodes=8, dim=3)
    rows = run_minmax(task, make_method("gda", lr=1.0), ring(8), 10_000, divergence=1e6)
    assert rows[-1]["diverged"] is True
    assert rows[-1]["iteration"] < 10_000


def test_server_methods_need_only_the_node_count():
    rows = run_minmax(bilinear_game(num_nodes=4, dim=2), "adam_server",
                      nx.empty_graph(4), 3, method_params={"lr": 0.01})
    assert rows[-1]["bytes"] == 3 * 2 * 4 * 16


def test_method_by_name_and_task_by_name():
    task = make_task("quadratic", num_nodes=8, dim=3, mu=1.0)
    rows = run_minmax(task, "extragradient", ring(8), 5, method_params={"lr": 0.05})
    assert rows[-1]["method"] == "extragradient"
    assert rows[-1]["dist_to_nash"] < rows[0]["dist_to_nash"]


def test_gan_smoke():
    task = make_task("gaussians", num_nodes=9, hidden=8, batch_size=16, eval_samples=200)
    rows = run_minmax(task, dadam3(lr=1e-3), torus(3, 3), 6, eval_every=3)
    assert [r["iteration"] for r in rows] == [0, 3, 6]
    assert {"modes_covered", "high_quality", "grad_norm"} <= set(rows[-1])
    assert rows[-1]["bytes"] == 6 * 2 * 18 * 4 * task.dim


@pytest.mark.parametrize("call,key", [
    (lambda: run_minmax(bilinear_game(num_nodes=8), "gda", ring(7), 3), "network.topology"),
    (lambda: run_minmax(bilinear_game(num_nodes=4), "gda", nx.Graph([(0, 1), (2, 3)]), 3),
     "network.topology"),
    (lambda: run_minmax(bilinear_game(num_nodes=8), "gda", ring(8), -1), "rounds"),
    (lambda: run_minmax(bilinear_game(num_nodes=8), "gda", ring(8), 3, eval_every=0),
     "eval_every"),
    (lambda: run_minmax(bilinear_game(num_nodes=8), "gda", ring(8), 3,
                        method_params={"lr": -1.0}), "algorithm.lr"),
    (lambda: make_task("mnist_gan", num_nodes=8), "task.name"),
    (lambda: make_task("bilinear", num_nodes=8, width=3), "task.width"),
])
def test_errors_are_one_line_scenario_errors(call, key):
    with pytest.raises(ScenarioError) as err:
        call()
    assert err.value.key == key
    assert "\n" not in str(err.value)
