"""The federated round clock: hand-computed rounds, policies, drops, determinism, invariants."""

from __future__ import annotations

import math
from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.config import AvailabilityConfig, ComputeConfig, NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.network.clock import FederatedClock, first_k_count

INF = math.inf
approx = pytest.approx

# Two clients, 8 Mbit/s access links with 10 ms latency, 0.01 s per sample, a model of
# 1 MB (1 s to download) and an update of 0.5 MB (0.5 s to upload):
#   client 0: work 100 -> download 1.01, compute 1 s -> 2.01, upload -> 2.52
#   client 1: work 200 -> download 1.01, compute 2 s -> 3.01, upload -> 3.52
BASE = NetworkConfig(bandwidth_bps=8e6, latency_s=0.01,
                     compute=ComputeConfig(model="constant", seconds_per_sample=0.01))
MODEL_BYTES, UPDATE_BYTES = 1_000_000, 500_000


def _two_clients(fast: bool = True, **net) -> tuple[FederatedClock, object]:
    clock = FederatedClock(replace(BASE, **net), num_clients=2)
    clock.fast_path = fast
    sched = clock.run_round(1, [0, 1], [100, 200], MODEL_BYTES, UPDATE_BYTES,
                            k=1 if net.get("policy") == "first_k" else None)
    return clock, sched


def _timing(sched, client):
    return next(t for t in sched.timings if t.client == client)


@pytest.mark.parametrize("fast", [True, False])
def test_policy_all_hand_computed(fast):
    clock, s = _two_clients(fast)
    assert s.start_s == 0.0
    assert s.end_s == approx(3.52, rel=1e-12)
    assert clock.now == s.end_s
    assert s.completed == (0, 1) and s.stragglers == () and s.dropped == ()
    t0, t1 = _timing(s, 0), _timing(s, 1)
    assert (t0.download_done_s, t0.compute_done_s, t0.upload_done_s) == approx((1.01, 2.01, 2.52))
    assert (t1.download_done_s, t1.compute_done_s, t1.upload_done_s) == approx((1.01, 3.01, 3.52))
    assert t0.status == t1.status == "ok"
    assert s.bytes_down == 2 * MODEL_BYTES and s.bytes_up == 2 * UPDATE_BYTES


@pytest.mark.parametrize("fast", [True, False])
def test_deadline_hand_computed_with_a_straggler(fast):
    _, s = _two_clients(fast, policy="deadline", deadline_s=3.2)
    assert s.end_s == approx(3.2, rel=1e-12)
    assert s.completed == (0,) and s.stragglers == (1,) and s.dropped == ()
    t1 = _timing(s, 1)
    assert t1.status == "straggler"
    assert t1.compute_done_s == approx(3.01)
    assert t1.upload_done_s == INF  # abandoned at the deadline
    # client 1 uploaded from 3.01 to 3.2 at 1 MB/s: 190_000 bytes count
    assert s.bytes_up == UPDATE_BYTES + 190_000
    assert s.bytes_down == 2 * MODEL_BYTES


@pytest.mark.parametrize("fast", [True, False])
def test_deadline_round_ends_early_when_all_report(fast):
    _, s = _two_clients(fast, policy="deadline", deadline_s=100.0)
    assert s.end_s == approx(3.52, rel=1e-12)
    assert s.completed == (0, 1)


@pytest.mark.parametrize("fast", [True, False])
def test_first_k_hand_computed(fast):
    _, s = _two_clients(fast, policy="first_k")
    assert s.end_s == approx(2.52, rel=1e-12)
    assert s.completed == (0,) and s.stragglers == (1,)
    t1 = _timing(s, 1)
    assert t1.download_done_s == approx(1.01)
    assert t1.compute_done_s == INF and t1.upload_done_s == INF  # still computing at 2.52
    assert s.bytes_up == UPDATE_BYTES


def test_rounds_follow_each_other():
    clock = FederatedClock(BASE, num_clients=2)
    first = clock.run_round(1, [0, 1], [100, 200], MODEL_BYTES, UPDATE_BYTES)
    second = clock.run_round(2, [1], [100], MODEL_BYTES, UPDATE_BYTES)
    assert second.start_s == first.end_s
    assert second.end_s == approx(first.end_s + 2.52, rel=1e-12)


# -- contention ------------------------------------------------------------------------------

# Clients with fast access links (1 Gbit/s, 10 ms) behind a 1 Mbit/s server link each way;
# 125_000 bytes = 1e6 bits, no compute unless work is given.
SHARED = NetworkConfig(bandwidth_bps=1e9, latency_s=0.01, server_bandwidth_bps=1e6,
                       compute=ComputeConfig(model="constant", seconds_per_sample=0.1))
B = 125_000


def test_two_uploads_share_the_server_link():
    clock = FederatedClock(SHARED, num_clients=2)
    s = clock.run_round(1, [0, 1], [0, 0], B, B)
    for t in s.timings:
        # both downloads at 0.5 Mbit/s: 2 s (+0.01 latency); both uploads likewise
        assert t.download_done_s == approx(2.0 + 0.01, rel=1e-12)
        assert t.upload_done_s == approx(2.01 + 2.0 + 0.01, rel=1e-12)
    assert s.end_s == approx(4.02, rel=1e-12)


def test_a_later_upload_gets_the_residual_share():
    clock = FederatedClock(SHARED, num_clients=2)
    s = clock.run_round(1, [0, 1], [0, 5], B, B)  # client 1 computes 0.5 s
    t0, t1 = _timing(s, 0), _timing(s, 1)
    # client 0 uploads alone from 2.01 to 2.51 (0.5e6 bits), then shares: 0.5e6 bits at
    # 0.5e6 bit/s -> transmission ends 3.51, arrives 3.52.
    # client 1 starts at 2.51, 0.5e6 bits by 3.51, the rest alone -> 4.01, arrives 4.02.
    assert t0.upload_done_s == approx(3.52, rel=1e-12)
    assert t1.upload_done_s == approx(4.02, rel=1e-12)
    assert s.completed == (0, 1)


def test_first_k_with_contention_abandons_the_straggler_and_counts_partial_bytes():
    cfg = replace(SHARED, policy="first_k")
    clock = FederatedClock(cfg, num_clients=2)
    s = clock.run_round(1, [0, 1], [0, 5], B, B, k=1)
    assert s.end_s == approx(3.52, rel=1e-12) and s.completed == (0,)
    # client 1's upload had sent 0.5e6 bits (62_500 bytes) when client 0's transmission
    # ended at 3.51, then 0.01 s alone at 1e6 bit/s (1_250 bytes) until the round ended
    assert s.bytes_up == B + 62_500 + 1_250


# -- a graph ---------------------------------------------------------------------------------


def _path_graph() -> nx.Graph:
    g = nx.path_graph(3)
    g.edges[0, 1].update(bandwidth_bps=1e6, latency_s=0.01)
    g.edges[1, 2].update(bandwidth_bps=2e6, latency_s=0.03)
    return g


def test_graph_path_hand_computed():
    cfg = NetworkConfig(server_node=0, bandwidth_bps=4e6, latency_s=0.005,
                        compute=ComputeConfig(seconds_per_sample=0.01))
    clock = FederatedClock(cfg, num_clients=3, graph=_path_graph())
    assert clock.server_node == 0
    s = clock.run_round(1, [2], [50], B, B)  # client 2 hangs off node 2
    t = s.timings[0]
    # latency: access 0.005 + 0.01 + 0.03; rate: bottleneck 1e6 bit/s -> 1 s per 1e6 bits
    assert t.download_done_s == approx(1.045, rel=1e-12)
    assert t.compute_done_s == approx(1.545, rel=1e-12)
    assert t.upload_done_s == approx(2.59, rel=1e-12)


def test_graph_backbone_is_shared_and_missing_attributes_use_defaults():
    g = nx.path_graph(3)  # no attributes: 4e6 bit/s, 0.005 s per link
    cfg = NetworkConfig(server_node=0, bandwidth_bps=4e6, latency_s=0.005,
                        compute=ComputeConfig(seconds_per_sample=0.0))
    clock = FederatedClock(cfg, num_clients=6, graph=g)
    s = clock.run_round(1, [2, 5], [0, 0], 500_000, 0)  # both at node 2: 4e6 bits each
    for t in s.timings:
        # the backbone links carry both: 2e6 bit/s each -> 2 s; latency 3 * 0.005
        assert t.download_done_s == approx(2.015, rel=1e-12)


def test_default_server_node_is_highest_degree_smallest_id():
    cfg = NetworkConfig()
    assert FederatedClock(cfg, 3, graph=nx.path_graph(3)).server_node == 1
    assert FederatedClock(cfg, 3, graph=nx.cycle_graph(5)).server_node == 0
    assert FederatedClock(cfg, 3, graph=nx.star_graph(4)).server_node == 0


def test_graph_errors_name_the_key():
    with pytest.raises(ScenarioError, match="network.server_node"):
        FederatedClock(NetworkConfig(server_node=7), 3, graph=nx.path_graph(3))
    g = nx.Graph()
    g.add_edge(0, 1)
    g.add_node(2)
    with pytest.raises(ScenarioError, match="network.topology"):
        FederatedClock(NetworkConfig(server_node=0), 3, graph=g)
    g = nx.path_graph(2)
    g.edges[0, 1]["bandwidth_bps"] = -5
    with pytest.raises(ScenarioError, match="network.topology"):
        FederatedClock(NetworkConfig(), 2, graph=g)


# -- drops -----------------------------------------------------------------------------------


def _bernoulli(p: float, **net) -> NetworkConfig:
    return replace(BASE, availability=AvailabilityConfig(model="bernoulli", dropout=p), **net)


@pytest.mark.parametrize("policy", ["all", "first_k", "deadline"])
@pytest.mark.parametrize("fast", [True, False])
def test_everyone_drops_and_the_round_still_ends(policy, fast):
    clock = FederatedClock(_bernoulli(1.0, policy=policy, deadline_s=7.0), num_clients=5)
    clock.fast_path = fast
    for rnd in range(3):
        start = clock.now
        s = clock.run_round(rnd, range(5), [100] * 5, MODEL_BYTES, UPDATE_BYTES, k=2)
        assert s.dropped == tuple(range(5)) and s.completed == () and s.stragglers == ()
        assert s.end_s > start
        if policy == "deadline":
            assert s.end_s == approx(start + 7.0)
        else:
            assert s.end_s >= start + 1.01  # at least the longest download
        assert all(t.upload_done_s == INF for t in s.timings)


@pytest.mark.parametrize("policy", ["all", "first_k"])
@pytest.mark.parametrize("fast", [True, False])
def test_a_round_where_everyone_drops_early_lasts_the_longest_download(tmp_path, policy, fast):
    # Both clients go offline during their download (0.3 s and 0.5 s into a 1.01 s download):
    # the last drop is at 0.5, but the round lasts until start + the longest uncontended
    # download, 1 s at 8 Mbit/s + 10 ms = 1.01 s.
    (tmp_path / "on.csv").write_text("client,start_s,end_s\n0,0,0.3\n1,0,0.5\n")
    cfg = replace(BASE, policy=policy,
                  availability=AvailabilityConfig(model="trace", trace="on.csv"))
    clock = FederatedClock(cfg, num_clients=2, base_dir=tmp_path)
    clock.fast_path = fast
    s = clock.run_round(1, [0, 1], [100, 200], MODEL_BYTES, UPDATE_BYTES, k=1)
    assert s.dropped == (0, 1) and s.completed == ()
    assert all(t.download_done_s == INF for t in s.timings)
    assert s.end_s == approx(1.01, rel=1e-12)
    assert clock.now == s.end_s
    # bytes pushed onto the wire before each drop: 0.3 s and 0.5 s at 1 MB/s
    assert s.bytes_down == 300_000 + 500_000 and s.bytes_up == 0


def test_dropout_is_reproducible_and_about_the_probability():
    def dropped_counts(seed):
        clock = FederatedClock(_bernoulli(0.3), num_clients=50, seed=seed)
        return [len(clock.run_round(r, range(50), [10] * 50, 1000, 1000).dropped)
                for r in range(200)]

    counts = dropped_counts(4)
    assert counts == dropped_counts(4)
    assert counts != dropped_counts(5)
    assert sum(counts) / (200 * 50) == approx(0.3, abs=0.02)


def test_trace_availability_drops_a_client_that_goes_offline(tmp_path):
    # client 0 online forever; client 1 goes offline at 2.0, during its compute
    (tmp_path / "on.csv").write_text("client,start_s,end_s\n0,0,inf\n1,0,2\n2,5,9\n")
    cfg = replace(BASE, availability=AvailabilityConfig(model="trace", trace="on.csv"))
    for fast in (True, False):
        clock = FederatedClock(cfg, num_clients=3, base_dir=tmp_path)
        clock.fast_path = fast
        assert clock.available() == [0, 1]
        assert clock.available([2, 1]) == [1]
        s = clock.run_round(1, [0, 1], [100, 200], MODEL_BYTES, UPDATE_BYTES)
        assert s.completed == (0,) and s.dropped == (1,)
        t1 = _timing(s, 1)
        assert t1.download_done_s == approx(1.01)
        assert t1.compute_done_s == INF and t1.upload_done_s == INF
        assert s.end_s == approx(2.52)  # the server learns of the drop at 2.0
        assert s.bytes_up == UPDATE_BYTES
        assert clock.available() == [0]
        assert clock.next_online_s() == 5.0


@pytest.mark.parametrize("fast", [True, False])
def test_a_drop_at_the_moment_of_arrival_loses_the_update(tmp_path, fast):
    clock = FederatedClock(BASE, num_clients=1)
    arrival = clock.run_round(1, [0], [100], MODEL_BYTES, UPDATE_BYTES).end_s
    (tmp_path / "on.csv").write_text(f"client,start_s,end_s\n0,0,{arrival!r}\n")
    cfg = replace(BASE, availability=AvailabilityConfig(model="trace", trace="on.csv"))
    clock = FederatedClock(cfg, num_clients=1, base_dir=tmp_path)
    clock.fast_path = fast
    s = clock.run_round(1, [0], [100], MODEL_BYTES, UPDATE_BYTES)
    assert s.dropped == (0,)
    assert s.end_s == arrival
    assert s.bytes_up == UPDATE_BYTES  # fully sent; lost in flight


def test_nobody_selected_waits_for_the_next_client(tmp_path):
    (tmp_path / "on.csv").write_text("client,start_s,end_s\n0,5,9\n")
    cfg = replace(BASE, availability=AvailabilityConfig(model="trace", trace="on.csv"))
    clock = FederatedClock(cfg, num_clients=2, base_dir=tmp_path)
    assert clock.available() == []
    s = clock.run_round(1, [], [], MODEL_BYTES, UPDATE_BYTES, k=0)
    assert (s.start_s, s.end_s, s.selected, s.bytes_down) == (0.0, 5.0, (), 0)
    assert clock.available() == [0]
    clock.advance_to(9.0)
    assert clock.available() == []


# -- determinism -----------------------------------------------------------------------------


def _lognormal_rounds(seed: int, rounds: int = 3):
    cfg = replace(SHARED, compute=ComputeConfig(model="lognormal", seconds_per_sample=0.01,
                                                sigma=1.0),
                  availability=AvailabilityConfig(model="bernoulli", dropout=0.2))
    clock = FederatedClock(cfg, num_clients=20, seed=seed)
    return [clock.run_round(r, list(range(0, 20, 2)), [50] * 10, 10_000, 5_000)
            for r in range(rounds)]


def test_same_seed_same_schedules_different_seed_different_times():
    assert _lognormal_rounds(7) == _lognormal_rounds(7)
    a, b = _lognormal_rounds(7)[0], _lognormal_rounds(8)[0]
    assert [t.compute_done_s for t in a.timings] != [t.compute_done_s for t in b.timings]


def test_network_streams_are_the_only_randomness():
    cfg = replace(BASE, compute=ComputeConfig(model="shifted_exponential",
                                              seconds_per_sample=0.01, rate=1.0))
    rng_state = np.random.get_state()
    s1 = FederatedClock(cfg, 4, seed=1).run_round(1, range(4), [10] * 4, 100, 100)
    np.random.seed(12345)
    s2 = FederatedClock(cfg, 4, seed=1).run_round(1, range(4), [10] * 4, 100, 100)
    np.random.set_state(rng_state)
    assert s1 == s2


# -- argument and config checks --------------------------------------------------------------


def test_bad_arguments():
    clock = FederatedClock(BASE, num_clients=3)
    with pytest.raises(ValueError):
        clock.run_round(1, [0, 0], [1, 1], 10, 10)
    with pytest.raises(ValueError):
        clock.run_round(1, [3], [1], 10, 10)
    with pytest.raises(ValueError):
        clock.run_round(1, [0, 1], [1], 10, 10)
    with pytest.raises(ValueError):
        clock.run_round(1, [0], [1], -10, 10)
    with pytest.raises(ScenarioError, match="network.policy"):
        FederatedClock(replace(BASE, policy="fastest"), 3)
    with pytest.raises(ScenarioError, match="network.deadline_s"):
        FederatedClock(replace(BASE, policy="deadline", deadline_s=0.0), 3)
    with pytest.raises(ScenarioError, match="network.bandwidth_bps"):
        FederatedClock(replace(BASE, bandwidth_bps=0.0), 3)


def test_first_k_count_inverts_over_selection():
    for k_target in range(1, 60):
        for over in (1.0, 1.1, 1.3, 1.5, 2.0, 2.7):
            assert first_k_count(math.ceil(k_target * over), over) == k_target


# -- invariants (hypothesis) -----------------------------------------------------------------


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 6))
    policy = draw(st.sampled_from(["all", "first_k", "deadline"]))
    model = draw(st.sampled_from(["constant", "lognormal", "shifted_exponential"]))
    cfg = NetworkConfig(
        bandwidth_bps=draw(st.sampled_from([1e5, 1e6, 3e7])),
        latency_s=draw(st.sampled_from([0.0, 0.003, 0.05])),
        server_bandwidth_bps=draw(st.sampled_from([0.0, 0.0, 2e5, 5e6])),
        policy=policy, deadline_s=draw(st.sampled_from([0.05, 0.5, 3.0])),
        compute=ComputeConfig(model=model, seconds_per_sample=draw(st.sampled_from([0.0, 1e-3])),
                              sigma=1.0, rate=2.0),
        availability=AvailabilityConfig(model="bernoulli",
                                        dropout=draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))))
    graph = None
    if draw(st.booleans()):
        graph = nx.path_graph(draw(st.integers(1, 4)))
        for u, v in graph.edges:
            graph.edges[u, v]["bandwidth_bps"] = draw(st.sampled_from([2e5, 1e6]))
    selected = draw(st.permutations(range(n)).map(lambda p: p[: draw(st.integers(0, n))]))
    work = [draw(st.integers(0, 500)) for _ in selected]
    k = draw(st.integers(1, max(1, len(selected))))
    sizes = (draw(st.sampled_from([0, 1000, 50_000])), draw(st.sampled_from([0, 1000, 50_000])))
    return cfg, n, graph, list(selected), work, k, sizes, draw(st.integers(0, 3))


def _check_invariants(cfg, sched, selected, k):
    sel = set(selected)
    parts = [set(sched.completed), set(sched.stragglers), set(sched.dropped)]
    assert sum(len(p) for p in parts) == len(selected)
    assert set().union(*parts) == sel
    assert sched.end_s >= sched.start_s
    by_client = {t.client: t for t in sched.timings}
    arrivals = [by_client[c].upload_done_s for c in sched.completed]
    assert arrivals == sorted(arrivals)
    for t in sched.timings:
        for x in (t.download_done_s, t.compute_done_s, t.upload_done_s):
            assert x == INF or sched.start_s <= x <= sched.end_s
        assert t.download_done_s <= t.compute_done_s <= t.upload_done_s
        assert (t.status == "ok") == (t.client in sched.completed)
    if cfg.policy == "deadline":
        assert sched.end_s <= sched.start_s + cfg.deadline_s
    if cfg.policy == "first_k":
        assert len(sched.completed) <= k
    if cfg.policy == "all":
        assert sched.stragglers == ()
        if cfg.availability.dropout == 0:
            assert sched.completed and set(sched.completed) == sel or not selected


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_round_invariants(case):
    cfg, n, graph, selected, work, k, (bdown, bup), seed = case
    clock = FederatedClock(cfg, n, graph=graph, seed=seed)
    for rnd in range(2):
        sched = clock.run_round(rnd, selected, work, bdown, bup, k=k)
        _check_invariants(cfg, sched, selected, k)
        assert 0 <= sched.bytes_down <= bdown * len(selected)
        assert 0 <= sched.bytes_up <= bup * len(selected)
        assert clock.now == sched.end_s


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_closed_form_matches_the_event_simulation(case):
    cfg, n, _, selected, work, k, (bdown, bup), seed = case
    cfg = replace(cfg, server_bandwidth_bps=0.0)  # no shared link: both engines apply
    fast, slow = (FederatedClock(cfg, n, seed=seed) for _ in range(2))
    slow.fast_path = False
    for rnd in range(2):
        a = fast.run_round(rnd, selected, work, bdown, bup, k=k)
        b = slow.run_round(rnd, selected, work, bdown, bup, k=k)
        assert a == b


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.integers(2, 5))
def test_split_round_matches_the_event_simulation(case, nodes):
    """On a graph without a server link, the clients at the server node share no link
    (closed form) and the others do (simulated): the split round is the full
    simulation's round, end, timings and bytes, under every policy."""
    cfg, n, _, selected, work, k, (bdown, bup), seed = case
    cfg = replace(cfg, server_bandwidth_bps=0.0, server_node=0)
    graph = nx.star_graph(nodes - 1)  # node 0, the server, in the middle
    for u, v in graph.edges:
        graph.edges[u, v]["bandwidth_bps"] = 3e5
    fast, slow = (FederatedClock(cfg, n, graph=graph, seed=seed) for _ in range(2))
    slow.fast_path = False
    for rnd in range(2):
        a = fast.run_round(rnd, selected, work, bdown, bup, k=k)
        b = slow.run_round(rnd, selected, work, bdown, bup, k=k)
        assert a == b


def test_split_round_simulates_only_the_sharing_clients(monkeypatch):
    """Clients 0, 3, 6 sit at the server node: only the other six enter simpy."""
    import fedsim.network.clock as clock_mod

    cfg = NetworkConfig(bandwidth_bps=1e6, server_bandwidth_bps=0.0, server_node=0)
    graph = nx.star_graph(2)
    clock = FederatedClock(cfg, 9, graph=graph, seed=0)
    simulated = []
    real = clock_mod._RoundSim.__init__

    def spy(self, c, start, pidx, *a, **kw):
        simulated.append(len(pidx))
        real(self, c, start, pidx, *a, **kw)

    monkeypatch.setattr(clock_mod._RoundSim, "__init__", spy)
    s = clock.run_round(1, range(9), [10] * 9, 10_000, 10_000)
    assert simulated == [6] and len(s.completed) == 9


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_contention_never_makes_a_transfer_faster(case):
    cfg, n, _, selected, work, _, (bdown, bup), seed = case
    cfg = replace(cfg, policy="all", availability=AvailabilityConfig())
    free = FederatedClock(replace(cfg, server_bandwidth_bps=0.0), n, seed=seed)
    shared = FederatedClock(replace(cfg, server_bandwidth_bps=1e5), n, seed=seed)
    a = free.run_round(1, selected, work, bdown, bup)
    b = shared.run_round(1, selected, work, bdown, bup)
    for ta, tb in zip(a.timings, b.timings, strict=True):
        assert tb.download_done_s >= ta.download_done_s * (1 - 1e-12)
        assert tb.upload_done_s - tb.compute_done_s >= (
            ta.upload_done_s - ta.compute_done_s) * (1 - 1e-9)
