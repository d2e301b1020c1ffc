"""The decentralized clock: D-SGD rounds and the asynchronous gossip-SGD event stream."""

from __future__ import annotations

import math
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.config import ComputeConfig, NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.network.async_gossip_clock import (
    EXCHANGE,
    STEP,
    AsyncGossipClock,
    AsyncSchedule,
    batches,
    elapsed_times,
    last_event_times,
    previous_event,
    time_cuts,
)
from fedsim.network.gossip_events import poisson_edge_events
from fedsim.network.link_table import link_table
from fedsim.network.sync_gossip_clock import SyncGossipClock
from fedsim.network.topology import ring
from fedsim.seeding import numpy_rng


def _cfg(model: str = "constant", sps: float = 0.001, **kw) -> NetworkConfig:
    return NetworkConfig(compute=ComputeConfig(model=model, seconds_per_sample=sps, **kw))


@st.composite
def small_graphs(draw: st.DrawFn, max_nodes: int = 8) -> nx.Graph:
    """A random tree plus extra edges, with random latencies on some links."""
    n = draw(st.integers(min_value=2, max_value=max_nodes))
    G = nx.Graph()
    G.add_nodes_from(range(n))
    for i in range(1, n):
        G.add_edge(i, draw(st.integers(min_value=0, max_value=i - 1)))
    for u, v in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                              max_size=2 * n)):
        if u != v:
            G.add_edge(u, v)
    for u, v in G.edges:
        if draw(st.booleans()):
            G.edges[u, v]["latency_s"] = draw(st.floats(0.0, 0.5))
    return G


# --------------------------------------------------------------------------- synchronous


def _path3() -> nx.Graph:
    G = nx.path_graph(3)
    G.edges[0, 1].update(latency_s=0.01, bandwidth_bps=8e6)  # 1e5 bytes: 0.1 s on the wire
    G.edges[1, 2].update(bandwidth_bps=16e6)  # latency: the default 0.02; 0.05 s on the wire
    return G


def test_sync_round_by_hand_on_a_path() -> None:
    clock = SyncGossipClock(_cfg(), _path3(), seed=0)
    r = clock.run_round(0, [100, 200, 300], nbytes=100_000)  # compute 0.1, 0.2, 0.3 s
    np.testing.assert_allclose(r.compute_done_s, [0.1, 0.2, 0.3])
    assert r.src.tolist() == [0, 1, 1, 2] and r.dst.tolist() == [1, 0, 2, 1]
    # 0->1: 0.1+0.11, 1->0: 0.2+0.11, 1->2: 0.2+0.07, 2->1: 0.3+0.07
    np.testing.assert_allclose(r.arrival_s, [0.21, 0.31, 0.27, 0.37])
    np.testing.assert_allclose(r.done_s, [0.31, 0.37, 0.30])  # node 2 waits for its compute
    assert r.end_s == pytest.approx(0.37) and r.slowest == 1
    assert r.bytes_sent == 4 * 100_000 and r.start_s == 0.0
    assert clock.now == r.end_s
    r2 = clock.run_round(1, [100, 200, 300], nbytes=100_000)  # starts at the barrier
    assert r2.start_s == r.end_s
    np.testing.assert_allclose(r2.done_s - r2.start_s, r.done_s)


def test_sync_round_contention_by_hand() -> None:
    # node 1 sends 0.1 s (to 0) and 0.05 s (to 2) of bits from t = 0.2
    serial = SyncGossipClock(_cfg(), _path3(), contention="serial").run_round(
        0, [100, 200, 300], 100_000)
    # to 0 first: leaves 0.3, arrives 0.31; then to 2: leaves 0.35, arrives 0.37
    np.testing.assert_allclose(serial.arrival_s, [0.21, 0.31, 0.37, 0.37])
    np.testing.assert_allclose(serial.done_s, [0.31, 0.37, 0.37])
    fair = SyncGossipClock(_cfg(), _path3(), contention="fair").run_round(
        0, [100, 200, 300], 100_000)
    # shared: to 2 done after 2 * 0.05 (leaves 0.3, arrives 0.32); to 0 after 0.05 + 0.1
    np.testing.assert_allclose(fair.arrival_s, [0.21, 0.36, 0.32, 0.37])
    np.testing.assert_allclose(fair.done_s, [0.36, 0.37, 0.32])


def test_fair_sharing_with_equal_links_ends_at_degree_times() -> None:
    G = nx.star_graph(4)  # hub 0 with 4 leaves, default links 10 Mbit/s, 20 ms
    nbytes = 12_500  # 0.01 s on the wire
    rounds = {c: SyncGossipClock(_cfg(sps=0.0), G, contention=c).run_round(0, 0, nbytes)
              for c in ("duplex", "serial", "fair")}
    hub = rounds["fair"].src == 0
    np.testing.assert_allclose(rounds["fair"].arrival_s[hub], 4 * 0.01 + 0.02)
    np.testing.assert_allclose(rounds["serial"].arrival_s[hub], 0.02 + 0.01 * np.arange(1, 5))
    np.testing.assert_allclose(rounds["duplex"].arrival_s, 0.03)
    assert rounds["fair"].end_s == pytest.approx(rounds["serial"].end_s)


def test_sync_ring_one_slow_node_sets_the_barrier(tmp_path) -> None:
    n, slow = 8, 5
    rows = "".join(f"{c},{0.01 if c == slow else 0.001}\n" for c in range(n))
    (tmp_path / "speeds.csv").write_text("client,seconds_per_sample\n" + rows)
    cfg = NetworkConfig(compute=ComputeConfig(model="trace", trace="speeds.csv"))
    clock = SyncGossipClock(cfg, ring(n), seed=3, base_dir=tmp_path)
    r = clock.run_round(0, 100, nbytes=1250)  # compute 0.1 s (slow: 1 s); message 21 ms
    assert r.end_s == pytest.approx(1.0 + 0.021)
    assert r.slowest in (slow - 1, slow + 1)  # a neighbour of the slow node waits longest
    np.testing.assert_allclose(r.done_s[[slow - 1, slow + 1]], 1.021)
    assert r.done_s[slow] == pytest.approx(1.0)  # its neighbours' models came long before
    far = [v for v in range(n) if abs(v - slow) > 1]
    np.testing.assert_allclose(r.done_s[far], 0.121)


def test_sync_rounds_are_deterministic_per_seed() -> None:
    cfg = _cfg("lognormal", sigma=1.0)

    def ends(seed: int) -> list[float]:
        clock = SyncGossipClock(cfg, ring(10), seed=seed)
        return [clock.run_round(k, 50, 1000).end_s for k in range(5)]

    assert ends(1) == ends(1)
    assert ends(1) != ends(2)
    assert np.all(np.diff(ends(1)) > 0)


# --------------------------------------------------------------------------- asynchronous


def test_async_stream_is_sorted_and_well_formed() -> None:
    clock = AsyncGossipClock(_cfg("lognormal", sigma=0.5), ring(12), seed=0)
    s = clock.events(t_end=20.0, work_per_step=10, nbytes=5000, gossip_rate=2.0)
    assert np.all(np.diff(s.time) >= 0) and s.time.min() >= 0 and s.time.max() <= 20.0
    steps, ex = s.kind == STEP, s.kind == EXCHANGE
    assert steps.sum() > 0 and ex.sum() > 0 and steps.sum() + ex.sum() == s.num_events
    assert np.all(s.j[steps] == -1) and np.all(s.i[ex] < s.j[ex])
    assert all(abs(a - b) in (1, 11) for a, b in zip(s.i[ex], s.j[ex], strict=True))
    assert np.all(s.fired_s <= s.start_s) and np.all(s.start_s <= s.time)
    cost = 0.02 + 8 * 5000 / 10e6
    np.testing.assert_allclose((s.time - s.start_s)[ex], cost)
    # each node's steps chain from 0: a step starts where the node's previous one ended
    for v in range(12):
        mine = s.kind[(s.i == v) & steps] == STEP
        t = s.time[(s.i == v) & steps]
        st_ = s.start_s[(s.i == v) & steps]
        assert mine.all() and st_[0] == 0.0 and np.array_equal(st_[1:], t[:-1])
    events = s.exchanges()
    assert events.times.size == ex.sum() and np.all(np.diff(events.times) >= 0)


def test_back_to_back_step_counts_follow_the_compute_model() -> None:
    const = AsyncGossipClock(_cfg(sps=0.125 / 4), ring(5), seed=0)  # 0.125 s per step
    s = const.events(10.0, 4, nbytes=0, gossip_rate=0.0, step_times="back_to_back")
    assert np.array_equal(s.steps_per_node(), np.full(5, 80)) and s.num_events == 400
    sigma, n, t_end = 0.5, 40, 50.0
    clock = AsyncGossipClock(_cfg("lognormal", sps=0.01, sigma=sigma), ring(n), seed=7)
    counts = clock.events(t_end, 10, 0, 0.0, step_times="back_to_back").steps_per_node()
    mean = 0.1 * math.exp(sigma**2 / 2)
    var = 0.1**2 * (math.exp(sigma**2) - 1) * math.exp(sigma**2)
    per_node_sd = math.sqrt(t_end * var / mean**3)  # renewal CLT
    expected = t_end / mean
    assert abs(counts.mean() - expected) < 5 * per_node_sd / math.sqrt(n) + 1
    assert np.all(np.abs(counts - expected) < 6 * per_node_sd + 2)


@pytest.mark.parametrize(
    ("model", "mean_step"),
    [("constant", 0.1), ("lognormal", 0.1 * math.exp(0.5**2 / 2)), ("shifted_exponential", 0.2)],
)
def test_poisson_steps_are_a_poisson_process_of_the_mean_step_rate(
    model: str, mean_step: float
) -> None:
    """Counts per node: Poisson of mean t_end / mean step time (variance = mean); gaps
    exponential (their coefficient of variation is 1, a renewal's of constant steps 0)."""
    n, t_end = 200, 40.0
    cfg = _cfg(model, sps=0.01, sigma=0.5, rate=1.0)
    s = AsyncGossipClock(cfg, ring(n), seed=3).events(t_end, 10, nbytes=0, gossip_rate=0.0)
    counts = s.steps_per_node()
    lam = t_end / mean_step
    assert abs(counts.mean() - lam) < 5 * math.sqrt(lam / n)
    assert counts.var(ddof=1) == pytest.approx(lam, rel=0.3)  # sd of the ratio ~0.1
    gaps = (s.time - s.start_s)[s.kind == STEP]
    assert gaps.mean() == pytest.approx(mean_step, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
    for v in (0, n - 1):  # starts chain: each step starts where the node's previous ended
        mine = (s.i == v) & (s.kind == STEP)
        assert s.start_s[mine][0] == 0.0
        assert np.array_equal(s.start_s[mine][1:], s.time[mine][:-1])


def test_unknown_step_times_is_refused() -> None:
    with pytest.raises(ValueError, match="step_times.*poisson, back_to_back"):
        AsyncGossipClock(_cfg(), ring(4)).events(1.0, 1, 0, 1.0, step_times="uniform")


def test_exchange_counts_per_edge_are_poisson() -> None:
    G = ring(10)
    rate, t_end = 3.0, 100.0
    s = AsyncGossipClock(_cfg(), G, seed=2).events(t_end, 1, nbytes=0,
                                                   gossip_rate=rate)  # cost 20 ms
    ex = s.kind == EXCHANGE
    counts = np.bincount(s.i[ex] * 10 + s.j[ex], minlength=100)
    lam = rate * t_end
    per_edge = np.array([counts[min(u, v) * 10 + max(u, v)] for u, v in G.edges])
    assert np.all(np.abs(per_edge - lam) < 5 * math.sqrt(lam))
    assert abs(per_edge.sum() - lam * 10) < 5 * math.sqrt(lam * 10)
    assert s.dropped == 0 and s.unfinished <= 3


def _reference_busy(rule: str, fired, i, j, cost) -> list[tuple[int, float]]:
    """(firing index, start) of each exchange kept by the rule, straight from the definition."""
    kept: list[tuple[int, float, float]] = []  # (index, start, end)
    for k in range(len(fired)):
        mine = [(s, e) for (q, s, e) in kept if {i[q], j[q]} & {i[k], j[k]}]
        if rule == "queue":
            start = max([fired[k]] + [e for _, e in mine])
        else:
            if any(s <= fired[k] < e for s, e in mine):
                continue
            start = fired[k]
        kept.append((k, start, start + cost[k]))
    return [(k, s) for k, s, _ in kept]


@settings(max_examples=40, deadline=None)
@given(G=small_graphs(), rule=st.sampled_from(["queue", "drop"]),
       rate=st.floats(0.2, 5.0), nbytes=st.integers(0, 400_000), seed=st.integers(0, 99))
def test_busy_node_rule(G: nx.Graph, rule: str, rate: float, nbytes: int, seed: int) -> None:
    t_end = 5.0
    clock = AsyncGossipClock(_cfg(sps=0.01), G, seed=seed, busy=rule)
    s = clock.events(t_end, 10, nbytes, rate)
    ex = np.flatnonzero(s.kind == EXCHANGE)
    # no node is in two exchanges at once: its intervals [start, time) do not overlap
    for v in range(G.number_of_nodes()):
        mine = ex[(s.i[ex] == v) | (s.j[ex] == v)]
        order = np.argsort(s.start_s[mine], kind="stable")
        starts, ends = s.start_s[mine][order], s.time[mine][order]
        assert np.all(starts[1:] >= ends[:-1])
        assert np.array_equal(mine, np.sort(mine))  # and the stream keeps that order
    if rule == "drop":
        assert np.array_equal(s.start_s[ex], s.fired_s[ex])
    else:
        assert s.dropped == 0
    # against the rule's definition on the same fired stream
    lk = clock.links
    H = nx.Graph(list(zip(lk.u.tolist(), lk.v.tolist(), strict=True)))
    H.add_nodes_from(range(lk.num_nodes))
    ev = poisson_edge_events(H, rate, t_end, numpy_rng(seed, "network/gossip"))
    cost_of = {(a, b): c for a, b, c in zip(lk.u.tolist(), lk.v.tolist(),
                                            lk.message_s(nbytes).tolist(), strict=True)}
    cost = [cost_of[(a, b)] for a, b in zip(ev.i.tolist(), ev.j.tolist(), strict=True)]
    ref = _reference_busy(rule, ev.times.tolist(), ev.i.tolist(), ev.j.tolist(), cost)
    done = [(k, st_) for k, st_ in ref if st_ + cost[k] <= t_end]
    assert len(done) == ex.size
    assert len(ref) - len(done) == s.unfinished and len(ev.times) - len(ref) == s.dropped
    got = sorted(zip(s.fired_s[ex].tolist(), s.start_s[ex].tolist(), s.i[ex].tolist(),
                     s.j[ex].tolist(), strict=True))
    want = sorted((ev.times[k], st_, int(ev.i[k]), int(ev.j[k])) for k, st_ in done)
    assert got == want


def test_queue_waits_and_drop_loses_on_a_slow_link() -> None:
    G = nx.path_graph(3)
    G.edges[0, 1]["latency_s"] = G.edges[1, 2]["latency_s"] = 1.0  # exchanges last ~1 s
    q = AsyncGossipClock(_cfg(), G, seed=4, busy="queue").events(50.0, 1, 0, 1.0)
    d = AsyncGossipClock(_cfg(), G, seed=4, busy="drop").events(50.0, 1, 0, 1.0)
    qx, dx = q.kind == EXCHANGE, d.kind == EXCHANGE
    assert np.any(q.start_s[qx] > q.fired_s[qx])  # some waited
    assert d.dropped > 0 and dx.sum() < qx.sum() + q.unfinished
    assert np.all(np.diff(np.sort(d.start_s[dx])) >= 1.0 - 1e-12)  # every pair shares node 1


def test_async_stream_is_deterministic_per_seed() -> None:
    cfg = _cfg("shifted_exponential", sps=0.01, rate=2.0)
    a = AsyncGossipClock(cfg, ring(9), seed=5).events(10.0, 5, 1000, 1.5)
    b = AsyncGossipClock(cfg, ring(9), seed=5).events(10.0, 5, 1000, 1.5)
    c = AsyncGossipClock(cfg, ring(9), seed=6).events(10.0, 5, 1000, 1.5)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert a.num_events != c.num_events or not np.array_equal(a.time, c.time)
    # the compute stream and the gossip stream are independent
    other = AsyncGossipClock(_cfg("constant", sps=0.01), ring(9), seed=5).events(
        10.0, 5, 1000, 1.5).exchanges()
    assert np.array_equal(other.times, a.exchanges().times)


# --------------------------------------------------------------------------- helpers, batches


def _stream(seed: int = 0, n: int = 10) -> AsyncSchedule:
    G = nx.random_regular_graph(3, n, seed=seed)
    cfg = _cfg("lognormal", sps=0.02, sigma=0.7)
    return AsyncGossipClock(cfg, G, seed=seed).events(6.0, 10, 20_000, 1.0)


def test_elapsed_and_last_times_against_brute_force() -> None:
    s = _stream()
    prev_i, prev_j = previous_event(s)
    dt_i, dt_j = elapsed_times(s)
    last = {}
    for k in range(s.num_events):
        for node, prev, dt in ((s.i[k], prev_i[k], dt_i[k]), (s.j[k], prev_j[k], dt_j[k])):
            if node < 0:
                assert prev == -1 and dt == 0.0
                continue
            assert prev == last.get(node, -1)
            assert dt == s.time[k] - (s.time[prev] if prev >= 0 else 0.0)
            last[node] = k
    at = [0.0, 1.3, 3.0, 6.0]
    got = last_event_times(s, at)
    for r, t in enumerate(at):
        for v in range(s.num_nodes):
            touch = ((s.i == v) | (s.j == v)) & (s.time <= t)
            assert got[r, v] == (s.time[touch].max() if touch.any() else 0.0)


@pytest.mark.parametrize("how", ["levels", "runs", "events"])
def test_batches_are_node_disjoint_and_keep_each_node_order(how: str) -> None:
    s = _stream(seed=1, n=12)
    cuts = time_cuts(s, [1.0, 2.5, 2.5, 4.0])
    order, bounds = batches(s, how, cuts)
    assert np.array_equal(np.sort(order), np.arange(s.num_events))
    seen_by_node: dict[int, list[int]] = {}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        ev = order[a:b]
        touched = np.concatenate((s.i[ev], s.j[ev][s.j[ev] >= 0]))
        assert touched.size == np.unique(touched).size  # node-disjoint (a step uses its node)
        for k in ev.tolist():
            for node in (s.i[k], s.j[k]):
                if node >= 0:
                    seen_by_node.setdefault(int(node), []).append(k)
    for ks in seen_by_node.values():
        assert ks == sorted(ks)  # every node meets its events in stream order
    pos = np.empty(s.num_events, dtype=np.int64)
    pos[order] = np.arange(s.num_events)
    for c in cuts.tolist():  # nothing moves across a cut
        assert pos[:c].max(initial=-1) < pos[c:].min(initial=s.num_events)
        assert c in bounds
    if how == "levels":
        runs = batches(s, "runs")[1]
        assert bounds.size < runs.size  # fewer batches than consecutive runs


def test_link_table_and_user_errors() -> None:
    G = nx.Graph([(2, 7), (7, 9)])
    G.edges[7, 9]["bandwidth_bps"] = 1e6
    lk = link_table(_cfg(), G)
    assert lk.num_nodes == 3 and lk.u.tolist() == [0, 1] and lk.v.tolist() == [1, 2]
    assert lk.bandwidth_bps.tolist() == [10e6, 1e6] and lk.latency_s.tolist() == [0.02, 0.02]
    bad = nx.path_graph(2)
    bad.edges[0, 1]["latency_s"] = -1.0
    with pytest.raises(ScenarioError, match="latency_s"):
        SyncGossipClock(_cfg(), bad)
    with pytest.raises(ValueError, match="contention"):
        SyncGossipClock(_cfg(), ring(4), contention="shared")
    with pytest.raises(ValueError, match="busy"):
        AsyncGossipClock(_cfg(), ring(4), busy="wait")
    with pytest.raises(ValueError, match="4 nodes"):
        SyncGossipClock(_cfg(), ring(4)).run_round(0, [1, 2], 10)
    with pytest.raises(ValueError, match="nbytes"):
        SyncGossipClock(_cfg(), ring(4)).run_round(0, 1, -5)
    with pytest.raises(ValueError, match="finite time > 0"):
        AsyncGossipClock(_cfg(sps=0.0), ring(4)).events(1.0, 10, 0, 1.0)
    with pytest.raises(ValueError, match="max_events"):
        AsyncGossipClock(_cfg(sps=1e-6), ring(4)).events(10.0, 1, 0, 1.0, max_events=1000)
    with pytest.raises(ScenarioError, match="network.compute.model"):
        AsyncGossipClock(_cfg(model="gpu"), ring(4))


def test_edgeless_graph_has_steps_only() -> None:
    G = nx.empty_graph(3)
    s = AsyncGossipClock(_cfg(sps=0.125), G).events(2.0, 1, 100, 5.0, "back_to_back")
    assert np.all(s.kind == STEP) and s.steps_per_node().tolist() == [16, 16, 16]
    r = SyncGossipClock(_cfg(sps=0.125), G).run_round(0, 1, 100)
    assert r.end_s == 0.125 and r.bytes_sent == 0


def test_decentralized_clock_imports_no_torch() -> None:
    code = ("import sys, fedsim.network.link_table, fedsim.network.sync_gossip_clock, "
            "fedsim.network.async_gossip_clock; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
