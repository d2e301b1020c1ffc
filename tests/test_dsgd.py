"""Decentralized SGD: D-SGD rounds, asynchronous (accelerated) gossip SGD, their runner."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from fedsim.config import NetworkConfig
from fedsim.decentralized import accelerated_gossip, randomized_gossip
from fedsim.decentralized.dsgd import async_gossip_sgd, dsgd_round, plan_async
from fedsim.decentralized.runner import mixing_matrix, train_rows
from fedsim.errors import ScenarioError
from fedsim.network.async_gossip_clock import AsyncGossipClock
from fedsim.network.mixing import metropolis_weights
from fedsim.network.spectral import accelerated_parameters
from fedsim.network.topology import ring, torus
from fedsim.results.records import read_metrics
from fedsim.scenario import from_dict, load_scenario, validate_scenario
from fedsim.study import run_file

ROOT = Path(__file__).resolve().parents[1]

BASE = """
name = "dec"
seed = 2
rounds = {rounds}
clients_per_round = {n}
[data]
dataset = "digits"
num_clients = {n}
partition = "{partition}"
[model]
name = "{model}"
hidden = [32]
[algorithm]
name = "dsgd"
lr = {lr}
local_epochs = 1
batch_size = {batch}
weighted = false
gossip_rate = 2.0
eval_interval_s = 0.5
[network]
topology = "{topology}"
topology_params = {{ n = {n} }}
bandwidth_bps = 1e6
[network.compute]
model = "shifted_exponential"
seconds_per_sample = 0.01
[variants.fedavg]
algorithm.name = "fedavg"
network.topology = "star"
network.topology_params = {{}}
[variants.dsgd]
algorithm.name = "dsgd"
[variants.gossip_sgd]
algorithm.name = "gossip_sgd"
[variants.accelerated_gossip_sgd]
algorithm.name = "accelerated_gossip_sgd"
"""


def write(tmp_path: Path, **kw) -> Path:
    values = {"rounds": 3, "n": 8, "partition": "iid", "model": "logreg", "lr": 0.1,
              "batch": 16, "topology": "ring"}
    values.update(kw)
    path = tmp_path / "dec.toml"
    path.write_text(BASE.format(**values))
    return path


def run(path: Path, out: Path, *variants: str, overrides=()):
    return run_file(path, overrides, output_dir=str(out), only=list(variants), progress=False,
                    log=None)


# --------------------------------------------------------------------------- theory


def test_dsgd_on_complete_graph_with_one_local_step_is_fedavg(tmp_path):
    """W = J/n (Metropolis on K_n) and one full-batch step: D-SGD's rows stay equal to FedAvg.

    With every client in every round, uniform weights and one local step, FedAvg's
    w <- w + mean_i (SGD_i(w) - w) is the average of the rows after local SGD, which is
    what W = J/n produces on every node.
    """
    path = write(tmp_path, topology="complete", batch=1000, rounds=4, model="mlp")
    assert np.allclose(metropolis_weights(nx.complete_graph(8)), np.full((8, 8), 1 / 8))
    fed, dec = run(path, tmp_path / "out", "fedavg", "dsgd")
    assert torch.allclose(fed.final_params, dec.final_params, atol=1e-5, rtol=0)
    a, b = read_metrics(fed.run_dir), read_metrics(dec.run_dir)
    assert [r["test_accuracy"] for r in a] == pytest.approx([r["test_accuracy"] for r in b],
                                                           abs=2e-3)
    assert [r["train_loss"] for r in a] == pytest.approx([r["train_loss"] for r in b],
                                                        rel=1e-4)
    assert json.loads((dec.run_dir / "summary.json").read_text())["final_consensus_distance"] \
        < 1e-5


def _stream(G: nx.Graph, t_end: float = 6.0, seed: int = 0, rate: float = 1.5):
    clock = AsyncGossipClock(NetworkConfig(bandwidth_bps=1e6, latency_s=0.01), G, seed=seed)
    return clock, clock.events(t_end, work_per_step=20, nbytes=4000, gossip_rate=rate)


def _identity(nodes, ordinals, rows):
    return rows


def test_mixing_only_preserves_the_average():
    """lr = 0: D-SGD and both asynchronous variants keep the mean of the rows."""
    gen = torch.Generator().manual_seed(0)
    for G in (ring(7), torus(3, 4), nx.barbell_graph(4, 2)):
        n = G.number_of_nodes()
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
        W = torch.as_tensor(metropolis_weights(G))
        y = x
        for _ in range(5):
            y = dsgd_round(y, W, lambda nodes, rows: rows)
        assert torch.allclose(y.mean(0), x.mean(0), atol=1e-12)
        assert not torch.allclose(y, x)  # it did mix
        _, sched = _stream(G)
        plain = plan_async(sched, [2.0, 4.0], dtype=torch.float64)
        y, _ = async_gossip_sgd(x, plain, _identity)
        assert torch.allclose(y.mean(0), x.mean(0), atol=1e-12)
        eta, alpha = accelerated_parameters(G, 1.5)
        acc = plan_async(sched, [2.0, 4.0], eta=eta, dtype=torch.float64)
        y, yt = async_gossip_sgd(x, acc, _identity, alpha_tilde=alpha)
        assert torch.allclose(y.mean(0), x.mean(0), atol=1e-12)
        assert torch.allclose(yt.mean(0), x.mean(0), atol=1e-12)


def test_lr0_is_gossip_on_the_same_events():
    """With no gradient step the asynchronous variants are (accelerated) gossip exactly."""
    G = torus(3, 4)
    _, sched = _stream(G, t_end=8.0)
    x = torch.randn(12, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    instants = [1.0, 2.5, 5.0, 8.0]
    ex = sched.exchanges()
    assert ex.times.size > 50 and (sched.kind == 0).sum() > 100

    traces = []
    plan = plan_async(sched, instants, dtype=torch.float64)
    y, yt = async_gossip_sgd(x, plan, _identity,
                             on_instant=lambda k, xk: traces.append(_dist(xk)))
    ref = randomized_gossip(x, ex, instants)
    assert yt is None
    assert torch.allclose(y, ref.x, atol=1e-12)
    assert torch.allclose(torch.stack(traces), ref.trace, rtol=1e-10)

    eta, alpha = accelerated_parameters(G, 1.5)
    traces = []
    plan = plan_async(sched, instants, eta=eta, dtype=torch.float64)
    y, yt = async_gossip_sgd(x, plan, _identity, alpha_tilde=alpha,
                             on_instant=lambda k, xk: traces.append(_dist(xk)))
    ref = accelerated_gossip(x, ex, eta, alpha, instants)
    assert torch.allclose(y, ref.x, atol=1e-10)
    assert torch.allclose(yt, ref.x_tilde, atol=1e-10)
    assert torch.allclose(torch.stack(traces), ref.trace, rtol=1e-8)


def _dist(x):
    return (x - x.mean(0, keepdim=True)).square().sum()


@pytest.mark.parametrize("accelerated", [False, True])
def test_batching_does_not_change_the_result(accelerated):
    """Levels, runs and one event at a time give bit-identical states with gradient steps."""
    G = ring(9)
    _, sched = _stream(G, t_end=5.0, seed=3)
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    target = torch.randn(9, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def step(nodes, ordinals, rows):  # a gradient step on 1/2 ||x - target_v||^2 (k-dependent)
        lr = torch.as_tensor(0.1 / (1.0 + ordinals), dtype=rows.dtype).unsqueeze(1)
        return rows - lr * (rows - target[nodes])

    eta, alpha = accelerated_parameters(G, 1.5) if accelerated else (0.0, None)
    out = [async_gossip_sgd(x, plan_async(sched, [2.0], eta=eta, how=how,
                                          dtype=torch.float64), step, alpha)
           for how in ("levels", "runs", "events")]
    for y, _ in out[1:]:
        assert torch.equal(y, out[0][0])
    assert not torch.allclose(out[0][0].mean(0), x.mean(0))  # the steps did move the mean


def test_train_rows_equal_starts_match_one_by_one():
    """The population adapter: a shared start trains as one cohort, the same as one by one."""
    from fedsim.models import build_model
    from fedsim.population import Population

    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    model = build_model(from_dict({"model": {"name": "logreg"}}).model, (6,), 3, seed=0)
    pop = Population(model, x, y)
    idx = [torch.arange(0, 10), torch.arange(10, 25), torch.arange(25, 40)]
    w = pop.flat_params()
    same, loss = train_rows(pop, w.expand(3, -1), idx, lr=0.3, epochs=1, batch_size=64,
                            gen=torch.Generator().manual_seed(0))
    starts = torch.stack([w, w + 0.01, w - 0.02])
    apart, _ = train_rows(pop, starts, idx, lr=0.3, epochs=1, batch_size=64,
                          gen=torch.Generator().manual_seed(0))
    for r in range(3):
        one = pop.train(starts[r], [idx[r]], lr=0.3, epochs=1, batch_size=64,
                        gen=torch.Generator().manual_seed(0))
        assert torch.allclose(apart[r], starts[r] + one.updates[0], atol=1e-6)
    assert torch.allclose(same[0], train_rows(pop, w.expand(1, -1), idx[:1], lr=0.3, epochs=1,
                                              batch_size=64,
                                              gen=torch.Generator().manual_seed(0))[0][0],
                          atol=1e-6)
    assert loss.shape == (3,)


# --------------------------------------------------------------------------- runner


@pytest.mark.parametrize("variant", ["gossip_sgd", "accelerated_gossip_sgd"])
def test_async_runner_on_a_tiny_ring_is_reproducible(tmp_path, variant):
    path = write(tmp_path, n=4, rounds=4)
    (a,) = run(path, tmp_path / "a", variant)
    (b,) = run(path, tmp_path / "b", variant)
    for name in ("metrics.csv", "metrics.jsonl", "consensus.csv"):
        assert (a.run_dir / name).read_bytes() == (b.run_dir / name).read_bytes(), name
    rows = read_metrics(a.run_dir)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert [r["sim_time_s"] for r in rows] == [0.5, 1.0, 1.5, 2.0]
    assert all(r["participants"] == 4 and r["bytes_down"] == 0 for r in rows)
    assert all(r["test_accuracy"] is not None and r["train_loss"] > 0 for r in rows)
    summary = a.summary
    assert summary["steps"] > 0 and summary["exchanges"] > 0
    assert summary["total_bytes"] == summary["exchanges"] * 2 * 4 * summary["num_params"]
    files = {p.name for p in a.run_dir.iterdir()}
    assert {"summary.json", "scenario.toml", "timing.csv", "accuracy_vs_time.png"} <= files
    (c,) = run(path, tmp_path / "c", variant, overrides=["seed=5"])
    assert (c.run_dir / "metrics.csv").read_bytes() != (a.run_dir / "metrics.csv").read_bytes()


def test_dsgd_runner_rows_and_bytes(tmp_path):
    path = write(tmp_path, n=6, rounds=3)
    (r,) = run(path, tmp_path / "out", "dsgd")
    rows = read_metrics(r.run_dir)
    d = r.summary["num_params"]
    assert all(row["bytes_up"] == 2 * 6 * 4 * d for row in rows)  # 2 |E| messages of 4 d bytes
    times = [row["sim_time_s"] for row in rows]
    assert times == sorted(times) and times[0] > 0.01 * 1000 / 6  # compute at least
    assert r.summary["messages_per_round"] == 12


def test_dsgd_on_a_ring_of_8_is_close_to_fedavg(tmp_path):
    """Enough rounds of D-SGD on a ring reach FedAvg's accuracy on the same digits data."""
    path = write(tmp_path, n=8, rounds=25, model="mlp", lr=0.1, partition="dirichlet")
    fed, dec, gos = run(path, tmp_path / "out", "fedavg", "dsgd", "accelerated_gossip_sgd",
                        overrides=["algorithm.eval_interval_s=2.0"])
    acc = {k: v.summary["final_accuracy"] for k, v in
           (("fedavg", fed), ("dsgd", dec), ("acc", gos))}
    assert acc["fedavg"] > 0.85, acc
    assert acc["dsgd"] > acc["fedavg"] - 0.08, acc
    assert acc["acc"] > acc["fedavg"] - 0.10, acc


def test_sparse_mixing_beyond_the_dense_limit_gives_the_same_run(tmp_path, monkeypatch):
    """Past ``DENSE_MAX_NODES`` D-SGD mixes with the sparse CSR matrix: the same weights,
    summed in another order, so the same run up to float rounding."""
    import fedsim.network.mixing as mixing

    path = write(tmp_path, n=8, rounds=3, model="mlp")
    (dense,) = run(path, tmp_path / "dense", "dsgd")
    monkeypatch.setattr(mixing, "DENSE_MAX_NODES", 4)
    assert mixing_matrix(ring(8), torch.float32, "cpu").layout == torch.sparse_csr
    (sparse,) = run(path, tmp_path / "sparse", "dsgd")
    a, b = read_metrics(dense.run_dir), read_metrics(sparse.run_dir)
    for ra, rb in zip(a, b, strict=True):
        assert ra["test_loss"] == pytest.approx(rb["test_loss"], rel=1e-5)
        assert ra["bytes_up"] == rb["bytes_up"] and ra["sim_time_s"] == rb["sim_time_s"]


# --------------------------------------------------------------------------- validation


def test_decentralized_needs_a_graph(tmp_path):
    path = write(tmp_path)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, ["network.topology=star"])
    assert err.value.key == "network.topology" and "\n" not in str(err.value)


def test_decentralized_needs_one_client_per_node(tmp_path):
    path = write(tmp_path)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, ["data.num_clients=9", "clients_per_round=9"])
    assert err.value.key == "data.num_clients" and "8 nodes" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path, ["network.topology=abilene", "network.topology_params={}"])
    assert err.value.key == "data.num_clients" and "11 nodes" in str(err.value)
    sc = load_scenario(path, ["network.topology=abilene", "network.topology_params={}",
                              "data.num_clients=11", "clients_per_round=11"])
    validate_scenario(sc, ROOT / "scenarios")


@pytest.mark.parametrize("key", ["algorithm.gossip_rate", "algorithm.eval_interval_s"])
def test_async_fields_must_be_positive(tmp_path, key):
    with pytest.raises(ScenarioError) as err:
        load_scenario(write(tmp_path), [f"{key}=0"])
    assert err.value.key == key


@pytest.mark.parametrize("name", ["gossip_ring", "gossip_torus", "gossip_abilene"])
def test_shipped_gossip_scenarios_validate(name):
    sc = load_scenario(ROOT / "scenarios" / f"{name}.toml")
    assert set(sc.variants) == {"fedavg", "dsgd", "gossip_sgd", "accelerated_gossip_sgd"}
