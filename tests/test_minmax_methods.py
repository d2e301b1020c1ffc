"""The min-max methods: golden steps, reductions between them, average preservation, errors."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch
from helpers import connected_graphs
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.minmax import (
    DPOSG,
    METHODS,
    AdaptiveMinMax,
    DecentralizedExtragradient,
    DecentralizedGDA,
    MinMaxTask,
    Operator,
    bilinear_game,
    dadam3,
    gossip,
    make_method,
    mixing_matrix,
)
from fedsim.network.topology import complete, ring

ONE = torch.ones(1, 1, dtype=torch.float64)  # W of a single node


def scalar_game() -> MinMaxTask:
    """``f(theta, phi) = theta * phi`` on one node: ``F(x) = (phi, -theta)``."""

    def loss(x, dummy):
        return x[0] * x[1]

    return MinMaxTask(name="scalar", num_nodes=1, d_theta=1, d_phi=1, loss=loss,
                      node_data=(torch.zeros(1, 1, dtype=torch.float64),),
                      x0=torch.tensor([1.0, 2.0], dtype=torch.float64))


def F_scalar(x):
    return torch.tensor([x[1], -x[0]], dtype=torch.float64)


def play(method, task, W, steps, seed=0):
    op = Operator(task, torch.Generator().manual_seed(seed))
    X = task.initial_states()
    st_ = method.init(X)
    for _ in range(steps):
        X = method.step(X, st_, op, W)
    return X, op


# ------------------------------------------------------------------ golden numbers


def test_dadam3_degenerate_betas_golden_by_hand():
    # beta1 = beta2 = beta3 = 0, eps = 0: the direction is g / max_k |g_k| (per coordinate)
    task = scalar_game()
    m = dadam3(lr=0.5, beta1=0.0, beta2=0.0, beta3=0.0, eps=0.0)
    X, op = play(m, task, ONE, 1)
    # g1 = F(1, 2) = (2, -1) -> d = (1, -1); z = (0.5, 2.5); g2 = (2.5, -0.5)
    # vbar = max((4, 1), (6.25, 0.25)) = (6.25, 1) -> d = (1, -0.5); x = (0.5, 2.25)
    assert X[0].tolist() == [0.5, 2.25]
    assert op.calls == 2


def test_dadam3_beta3_smoothing_golden_by_hand():
    task = scalar_game()
    m = dadam3(lr=0.5, beta1=0.0, beta2=0.0, beta3=0.5, eps=0.0)
    X, _ = play(m, task, ONE, 1)
    # vbar = 0.5 (4, 1) + 0.5 max((4, 1), (6.25, 0.25)) = (5.125, 1)
    expected = [1.0 - 0.5 * 2.5 / math.sqrt(5.125), 2.0 + 0.5 * 0.5]
    assert X[0].tolist() == pytest.approx(expected, abs=1e-15)


def test_optimistic_no_preconditioner_is_ogda_by_hand():
    task = scalar_game()
    m = AdaptiveMinMax(lr=0.1, beta1=0.0, preconditioner="none", lookahead="optimistic")
    X, _ = play(m, task, ONE, 2)
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x1 = x0 - 0.1 * F_scalar(x0)
    x2 = x1 - 0.1 * (2 * F_scalar(x1) - F_scalar(x0))
    torch.testing.assert_close(X[0], x2, rtol=0, atol=1e-15)


def test_dposg_by_hand():
    task = scalar_game()
    X, op = play(DPOSG(lr=0.1), task, ONE, 2)
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    z1 = x0 - 0.1 * F_scalar(x0)
    x1 = x0 - 0.1 * F_scalar(z1)
    z2 = x1 - 0.1 * F_scalar(z1)
    x2 = x1 - 0.1 * F_scalar(z2)
    torch.testing.assert_close(X[0], x2, rtol=0, atol=1e-15)
    assert op.calls == 3  # F(x0) once, then one per iteration


# ------------------------------------------------------------------ reductions


@pytest.mark.parametrize("mix", ["before", "after"])
@pytest.mark.parametrize("lookahead,baseline", [("none", DecentralizedGDA),
                                                ("extragradient", DecentralizedExtragradient)])
def test_family_without_moments_is_the_baseline_exactly(mix, lookahead, baseline):
    task = bilinear_game(num_nodes=8, dim=3, seed=1)
    W = mixing_matrix(ring(8))
    fam = AdaptiveMinMax(lr=0.1, beta1=0.0, preconditioner="none", lookahead=lookahead,
                         gossip_steps=2, mix=mix)
    X_f, _ = play(fam, task, W, 25)
    X_b, _ = play(baseline(lr=0.1, gossip_steps=2, mix=mix), task, W, 25)
    assert torch.equal(X_f, X_b)


@pytest.mark.parametrize("lookahead", ["none", "optimistic"])
def test_complete_graph_equals_the_server_method(lookahead):
    # W = J / n on K_n: one mixing round is exact averaging, so adapt-then-combine equals
    # the server-based method for the linear (moment-free) directions
    task = bilinear_game(num_nodes=6, dim=3, heterogeneity=1.0, seed=2)
    kw = dict(lr=0.1, beta1=0.0, preconditioner="none", lookahead=lookahead)
    X_d, _ = play(AdaptiveMinMax(mix="after", **kw), task, mixing_matrix(complete(6)), 40)
    X_s, _ = play(AdaptiveMinMax(mix="server", **kw), task, mixing_matrix(complete(6)), 40)
    torch.testing.assert_close(X_d, X_s, rtol=0, atol=1e-12)


def test_many_gossip_steps_on_a_ring_approach_the_server_method():
    task = bilinear_game(num_nodes=8, dim=3, heterogeneity=1.0, seed=3)
    kw = dict(lr=0.1, beta1=0.0, preconditioner="none", lookahead="optimistic")
    W = mixing_matrix(ring(8))
    X_s, _ = play(AdaptiveMinMax(mix="server", **kw), task, W, 30)
    gaps = []
    for k in (1, 10, 200):
        X_d, _ = play(AdaptiveMinMax(mix="after", gossip_steps=k, **kw), task, W, 30)
        gaps.append(float((X_d - X_s).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-9


def test_server_rows_stay_identical():
    task = bilinear_game(num_nodes=5, dim=2, heterogeneity=1.0, bias=0.5, seed=4)
    m = make_method("optimistic_adam_server", lr=0.05)
    X, _ = play(m, task, mixing_matrix(ring(5)), 20)
    assert torch.equal(X, X[:1].expand_as(X))


# ------------------------------------------------------------------ average and consensus


def _all_methods(lr: float, steps: int = 2):
    out = []
    for name in METHODS:
        params = {"lr": lr}
        if name in ("dadam3", "dposg", "gda", "extragradient", "adaptive", "gt_extragradient",
                    "gt_gda"):
            params["gossip_steps"] = steps
        out.append(make_method(name, **params))
    out.append(make_method("gt_extragradient", lr=lr, gossip_steps=steps, lazy=True))
    for lookahead in ("none", "extragradient", "optimistic"):
        for mix in ("before", "after"):
            out.append(AdaptiveMinMax(lr=lr, lookahead=lookahead, mix=mix, gossip_steps=steps))
    return out


@settings(max_examples=15, deadline=None)
@given(G=connected_graphs(max_nodes=12), seed=st.integers(0, 2**16))
def test_every_variant_preserves_the_network_average_without_a_step(G, seed):
    n = G.number_of_nodes()
    task = bilinear_game(num_nodes=n, dim=2, heterogeneity=1.0, bias=1.0, seed=seed % 97)
    gen = torch.Generator().manual_seed(seed)
    task.x0 = torch.randn(n, task.dim, generator=gen, dtype=torch.float64)  # disagreeing
    W = mixing_matrix(G)
    for m in _all_methods(lr=0.0):
        X, _ = play(m, task, W, 3)
        torch.testing.assert_close(X.mean(0), task.x0.mean(0), rtol=0, atol=1e-12)


def test_gossip_alone_reaches_consensus_on_a_connected_graph():
    W = mixing_matrix(ring(8))
    X = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = gossip(X, W, 400)
    assert float((Y - X.mean(0)).abs().max()) < 1e-10


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("name,params,key", [
    ("dadam3", {"beta1": 1.0}, "algorithm.beta1"),
    ("dadam3", {"beta2": -0.1}, "algorithm.beta2"),
    ("dadam3", {"beta3": 1.5}, "algorithm.beta3"),
    ("dadam3", {"lr": -0.1}, "algorithm.lr"),
    ("dposg", {"lr": float("nan")}, "algorithm.lr"),
    ("adaptive", {"lookahead": "nesterov"}, "algorithm.lookahead"),
    ("adaptive", {"mix": "sideways"}, "algorithm.mix"),
    ("adaptive", {"preconditioner": "rmsprop"}, "algorithm.preconditioner"),
    ("gda", {"gossip_steps": 0}, "algorithm.gossip_steps"),
    ("dposg", {"gossip_steps": 1.5}, "algorithm.gossip_steps"),
    ("dadam3", {"eps": -1.0}, "algorithm.eps"),
    ("dadam3", {"lookahead": "none"}, "algorithm.lookahead"),  # not a dadam3 parameter
    ("gt_extragradient", {"lazy": "yes"}, "algorithm.lazy"),
    ("gt_gda", {"lr": -1.0}, "algorithm.lr"),
    ("sgda", {}, "algorithm.name"),
])
def test_bad_settings_are_one_line_scenario_errors(name, params, key):
    with pytest.raises(ScenarioError) as err:
        make_method(name, **params)
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_disconnected_graph_is_a_scenario_error():
    G = nx.Graph([(0, 1), (2, 3)])
    with pytest.raises(ScenarioError, match="disconnected") as err:
        mixing_matrix(G)
    assert err.value.key == "network.topology"
