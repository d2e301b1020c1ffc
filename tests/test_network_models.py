"""Links with contention, compute-time models and availability models of fedsim.network."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import simpy

from fedsim.config import AvailabilityConfig, ComputeConfig
from fedsim.errors import ScenarioError
from fedsim.network.availability import make_availability_model
from fedsim.network.compute import make_compute_model
from fedsim.network.links import Link, LinkNetwork, Path

# -- links -----------------------------------------------------------------------------------


def _run_transfers(plan, until=None):
    """Start (path, nbytes) transfers at given times; return (arrival times, network, transfers)."""
    env = simpy.Environment()
    net = LinkNetwork(env)
    arrivals: dict[int, float] = {}
    transfers = {}

    def one(i, at, path, nbytes):
        yield env.timeout(at)
        tr = transfers[i] = net.send(path, nbytes)
        yield tr.done
        arrivals[i] = env.now

    for i, (at, path, nbytes) in enumerate(plan):
        env.process(one(i, at, path, nbytes))
    env.run(until=until)
    return arrivals, net, transfers


def test_private_transfer_is_latency_plus_bits_over_bandwidth():
    path = Path((), private_bps=8e6, private_latency_s=0.02)
    arrivals, _, _ = _run_transfers([(0.0, path, 1_000_000)])
    assert arrivals[0] == pytest.approx(0.02 + 1.0, rel=1e-12)


def test_two_transfers_share_a_link_equally():
    link = Link(1e6, 0.0, "server uplink")
    path = Path((link,), private_bps=1e9, private_latency_s=0.01)
    arrivals, _, _ = _run_transfers([(0.0, path, 125_000), (0.0, path, 125_000)])
    # 1e6 bits each at 0.5e6 bit/s, then the 0.01 s access latency
    assert arrivals[0] == pytest.approx(2.01, rel=1e-12)
    assert arrivals[1] == pytest.approx(2.01, rel=1e-12)


def test_late_transfer_gets_the_residual_share():
    link = Link(1e6, 0.0)
    path = Path((link,))
    arrivals, _, _ = _run_transfers([(0.0, path, 125_000), (0.5, path, 125_000)])
    # first: 0.5e6 bits alone, then 0.5e6 bits at half rate -> 1.5 s
    # second: 0.5e6 bits at half rate (0.5..1.5), then 0.5e6 alone -> 2.0 s
    assert arrivals[0] == pytest.approx(1.5, rel=1e-12)
    assert arrivals[1] == pytest.approx(2.0, rel=1e-12)


def test_bottleneck_share_is_not_max_min():
    """A transfer capped elsewhere keeps its equal share reserved (documented approximation)."""
    link = Link(3e6, 0.0)
    slow = Path((link,), private_bps=0.5e6)
    fast = Path((link,))
    arrivals, _, _ = _run_transfers([(0.0, slow, 62_500), (0.0, fast, 187_500)])
    # slow: 0.5e6 bits at min(0.5e6, 1.5e6) -> 1.0 s; fast: 1.5e6 bits at 1.5e6 -> 1.0 s
    assert arrivals[0] == pytest.approx(1.0, rel=1e-12)
    assert arrivals[1] == pytest.approx(1.0, rel=1e-12)


def test_path_rate_is_the_smallest_share_and_latencies_add():
    a, b = Link(4e6, 0.01), Link(1e6, 0.03)
    path = Path((a, b), private_bps=10e6, private_latency_s=0.005)
    other = Path((a,))
    arrivals, _, _ = _run_transfers([(0.0, path, 125_000), (0.0, other, 250_000)])
    # path: min(10e6, 4e6/2, 1e6/1) = 1e6 -> 1.0 s + 0.045 s latency
    assert arrivals[0] == pytest.approx(1.045, rel=1e-12)
    # other: 2e6 bits at 4e6/2 -> transmission ends at 1.0, + link a's 0.01 s latency
    assert arrivals[1] == pytest.approx(1.01, rel=1e-12)


def test_cancel_frees_bandwidth_and_counts_sent_bytes():
    link = Link(1e6, 0.0)
    path = Path((link,))
    env = simpy.Environment()
    net = LinkNetwork(env)
    t1, t2 = net.send(path, 125_000), net.send(path, 125_000)
    arrival = {}
    t2.done.callbacks.append(lambda _e: arrival.setdefault(2, env.now))

    def canceller():
        yield env.timeout(1.0)
        assert net.active_on(link) == 2
        net.cancel(t1)

    env.process(canceller())
    env.run()
    assert net.sent_bytes(t1) == 62_500  # 0.5e6 bits in 1 s at half rate
    assert net.active_on(link) == 0
    # t2: 0.5e6 bits by t=1, then 0.5e6 at the full 1e6 bit/s
    assert arrival[2] == pytest.approx(1.5, rel=1e-12)
    assert net.sent_bytes(t2) == 125_000


def test_many_transfers_finish_in_order_and_conserve_capacity():
    link = Link(1e6, 0.0)
    path = Path((link,))
    sizes = [1000 * (i + 1) for i in range(50)]
    plan = [(0.001 * i, path, s) for i, s in enumerate(sizes)]
    arrivals, _, _ = _run_transfers(plan)
    assert len(arrivals) == 50
    # the link is never idle from t=0 until the last bit: total bits / capacity
    assert max(arrivals.values()) == pytest.approx(8 * sum(sizes) / 1e6, rel=1e-9)


def test_link_rejects_bad_numbers():
    with pytest.raises(ValueError):
        Link(0.0, 0.0)
    with pytest.raises(ValueError):
        Link(1e6, -1.0)


# -- compute ---------------------------------------------------------------------------------


def _times(cfg: ComputeConfig, n=4, seed=0, base_dir=None, work=None):
    model = make_compute_model(cfg, n, base_dir)
    clients = np.arange(n)
    work = np.full(n, 10.0) if work is None else np.asarray(work, float)
    return model.times(clients, work, np.random.default_rng(seed))


def test_constant_compute():
    t = _times(ComputeConfig(model="constant", seconds_per_sample=0.5))
    assert t.tolist() == [5.0] * 4


def test_lognormal_has_median_one_and_mean_exp_half_sigma_squared():
    cfg = ComputeConfig(model="lognormal", seconds_per_sample=1.0, sigma=0.5)
    f = _times(cfg, n=200_000, work=np.ones(200_000))
    assert np.median(f) == pytest.approx(1.0, rel=0.02)
    assert f.mean() == pytest.approx(math.exp(0.5**2 / 2), rel=0.02)


def test_shifted_exponential_is_at_least_base_with_mean_base_times_one_plus_inverse_rate():
    cfg = ComputeConfig(model="shifted_exponential", seconds_per_sample=0.1, rate=2.0)
    t = _times(cfg, n=200_000, work=np.full(200_000, 10.0))
    assert t.min() >= 1.0
    assert t.mean() == pytest.approx(1.0 * (1 + 1 / 2.0), rel=0.02)


def test_compute_trace(tmp_path):
    (tmp_path / "speeds.csv").write_text("client,seconds_per_sample\n0,0.1\n1,0.2\n\n2,0.5\n")
    cfg = ComputeConfig(model="trace", trace="speeds.csv")
    t = _times(cfg, n=3, base_dir=tmp_path, work=[10, 10, 2])
    assert t.tolist() == pytest.approx([1.0, 2.0, 1.0])


@pytest.mark.parametrize(
    "cfg",
    [
        ComputeConfig(model="constant", seconds_per_sample=0.5),
        ComputeConfig(model="lognormal", seconds_per_sample=0.2, sigma=0.7),
        ComputeConfig(model="shifted_exponential", seconds_per_sample=0.1, rate=0.5),
    ],
    ids=lambda c: c.model,
)
def test_mean_times_is_the_mean_of_the_draws(cfg):
    n = 100_000
    model = make_compute_model(cfg, n)
    work = np.random.default_rng(1).uniform(1, 20, n)
    clients = np.arange(n)
    draws = model.times(clients, work, np.random.default_rng(2))
    assert (draws / work).mean() == pytest.approx((model.mean_times(clients, work) / work).mean(),
                                                  rel=0.02)


def test_trace_mean_times_are_the_trace(tmp_path):
    (tmp_path / "speeds.csv").write_text("client,seconds_per_sample\n0,0.1\n1,0.2\n")
    model = make_compute_model(ComputeConfig(model="trace", trace="speeds.csv"), 2, tmp_path)
    assert model.mean_times(np.array([1, 0]), np.array([10.0, 5.0])).tolist() == [2.0, 0.5]


def test_compute_trace_missing_file_names_key_and_path(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(ScenarioError) as err:
        make_compute_model(ComputeConfig(model="trace", trace=str(missing)), 3)
    assert "network.compute.trace" in str(err.value)
    assert str(missing) in str(err.value)


def test_compute_trace_missing_client(tmp_path):
    path = tmp_path / "speeds.csv"
    path.write_text("client,seconds_per_sample\n0,0.1\n2,0.3\n")
    with pytest.raises(ScenarioError) as err:
        make_compute_model(ComputeConfig(model="trace", trace=str(path)), 3)
    assert "network.compute.trace" in str(err.value)
    assert "client 1" in str(err.value)


@pytest.mark.parametrize("bad", ["0,0.1\n1,fast\n", "0,0.1\n1,0.2,3\n", "0,0.1\n-1,0.2\n",
                                 "0,0.1\n1.5,0.2\n"])
def test_compute_trace_malformed_line_names_the_line(tmp_path, bad):
    path = tmp_path / "speeds.csv"
    path.write_text("client,seconds_per_sample\n" + bad)
    with pytest.raises(ScenarioError) as err:
        make_compute_model(ComputeConfig(model="trace", trace=str(path)), 2)
    assert "network.compute.trace" in str(err.value)
    assert "line 3" in str(err.value)


def test_compute_trace_header_is_required(tmp_path):
    path = tmp_path / "speeds.csv"
    path.write_text("0,0.1\n1,0.2\n")
    with pytest.raises(ScenarioError, match="line 1"):
        make_compute_model(ComputeConfig(model="trace", trace=str(path)), 2)


def test_unknown_compute_model_and_bad_parameters():
    with pytest.raises(ScenarioError, match="network.compute.model"):
        make_compute_model(ComputeConfig(model="gamma"), 2)
    with pytest.raises(ScenarioError, match="network.compute.rate"):
        make_compute_model(ComputeConfig(model="shifted_exponential", rate=0.0), 2)
    with pytest.raises(ScenarioError, match="network.compute.sigma"):
        make_compute_model(ComputeConfig(model="lognormal", sigma=-1.0), 2)


# -- availability ----------------------------------------------------------------------------


def test_always_and_bernoulli_are_online():
    for cfg in (AvailabilityConfig(), AvailabilityConfig(model="bernoulli", dropout=0.5)):
        model = make_availability_model(cfg, 5)
        assert model.online(np.arange(5), 123.0).all()


def test_bernoulli_drop_moments_lie_within_the_nominal_round():
    model = make_availability_model(AvailabilityConfig(model="bernoulli", dropout=0.3), 10)
    nominal = np.full(10_000, 4.0)
    d = model.drop_times(np.arange(10_000) % 10, 100.0, nominal, np.random.default_rng(1))
    dropped = d[np.isfinite(d)]
    assert len(dropped) / 10_000 == pytest.approx(0.3, abs=0.02)
    assert dropped.min() >= 100.0 and dropped.max() < 104.0


def test_availability_trace(tmp_path):
    path = tmp_path / "online.csv"
    path.write_text("client,start_s,end_s\n0,0,10\n0,10,20\n1,5,15\n3,0,inf\n9,0,100\n")
    model = make_availability_model(AvailabilityConfig(model="trace", trace=str(path)), 4)
    ids = np.arange(4)
    assert model.online(ids, 0.0).tolist() == [True, False, False, True]
    assert model.online(ids, 15.0).tolist() == [True, False, False, True]  # [5, 15) ends
    assert model.online(ids, 20.0).tolist() == [False, False, False, True]
    # touching intervals merge: client 0 goes offline at 20, not 10
    drops = model.drop_times(ids, 3.0, np.ones(4), np.random.default_rng(0))
    assert drops.tolist() == [20.0, 3.0, 3.0, math.inf]
    assert model.next_online_s(3.0) == 5.0
    assert model.next_online_s(5.0) == math.inf


def test_availability_trace_missing_file_names_key_and_path(tmp_path):
    missing = tmp_path / "gone.csv"
    with pytest.raises(ScenarioError) as err:
        make_availability_model(AvailabilityConfig(model="trace", trace=str(missing)), 3)
    assert "network.availability.trace" in str(err.value)
    assert str(missing) in str(err.value)


def test_availability_trace_relative_path_uses_base_dir(tmp_path):
    (tmp_path / "on.csv").write_text("client,start_s,end_s\n0,0,1\n")
    cfg = AvailabilityConfig(model="trace", trace="on.csv")
    model = make_availability_model(cfg, 1, base_dir=tmp_path)
    assert model.online(np.arange(1), 0.5).tolist() == [True]
    with pytest.raises(ScenarioError, match="network.availability.trace"):
        make_availability_model(cfg, 1, base_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize("bad", ["0,0,1\n1,2\n", "0,0,1\nx,0,1\n", "0,0,1\n1,5,4\n"])
def test_availability_trace_malformed_line_names_the_line(tmp_path, bad):
    path = tmp_path / "on.csv"
    path.write_text("client,start_s,end_s\n" + bad)
    with pytest.raises(ScenarioError) as err:
        make_availability_model(AvailabilityConfig(model="trace", trace=str(path)), 2)
    assert "network.availability.trace" in str(err.value)
    assert "line 3" in str(err.value)


def test_bad_availability_settings():
    with pytest.raises(ScenarioError, match="network.availability.dropout"):
        make_availability_model(AvailabilityConfig(model="bernoulli", dropout=1.5), 2)
    with pytest.raises(ScenarioError, match="network.availability.model"):
        make_availability_model(AvailabilityConfig(model="sometimes"), 2)
    with pytest.raises(ScenarioError, match="network.availability.trace"):
        make_availability_model(AvailabilityConfig(model="trace", trace=""), 2)


# -- the import rule -------------------------------------------------------------------------


def test_network_package_never_imports_torch():
    """Principle 1: the clock says when, never touching tensors (fresh interpreter)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import fedsim.network as pkg\n"
        "names = [m.name for m in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert 'fedsim.network.clock' in sys.modules, names\n"
        "print(','.join(names))\n"
        "sys.exit(3 if 'torch' in sys.modules else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "fedsim.network.links" in proc.stdout


# -- the event-driven sharing against a brute-force reference ------------------------------


def _reference_tx_ends(links, transfers):
    """Transmission end times by direct recomputation of every rate at every event."""
    remaining = {i: 8.0 * nbytes for i, (_, _, _, nbytes) in enumerate(transfers)}
    ends: dict[int, float] = {}
    t = 0.0
    while len(ends) < len(transfers):
        active = [i for i in remaining if transfers[i][0] <= t and i not in ends]
        counts = {j: sum(j in transfers[i][1] for i in active) for j in range(len(links))}
        rates = {i: min([transfers[i][2]] + [links[j] / counts[j] for j in transfers[i][1]])
                 for i in active}
        starts = [s - t for s, *_ in transfers if s > t]
        step = min([min(starts, default=math.inf)]
                   + [remaining[i] / rates[i] for i in active])
        for i in active:
            remaining[i] -= rates[i] * step
            if remaining[i] <= 1e-6:
                ends[i] = t + step
        t += step
    return ends


def _transfer_plans():
    from hypothesis import strategies as st

    link_bw = st.lists(st.sampled_from([1e6, 2e6, 5e6]), min_size=1, max_size=3)
    return link_bw.flatmap(lambda bws: st.tuples(st.just(bws), st.lists(st.tuples(
        st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.3]),
        st.sets(st.integers(0, len(bws) - 1), min_size=1).map(sorted),
        st.sampled_from([math.inf, 1e6, 3e6]),
        st.integers(1, 400_000)), min_size=1, max_size=8)))


def test_link_network_matches_brute_force_reference():
    from hypothesis import given, settings

    @settings(max_examples=200, deadline=None)
    @given(_transfer_plans())
    def check(plan):
        bws, transfers = plan
        links = [Link(bw, 0.0, f"l{j}") for j, bw in enumerate(bws)]
        env = simpy.Environment()
        net = LinkNetwork(env)
        sent = {}

        def one(i, at, idx, cap, nbytes):
            yield env.timeout(at)
            tr = sent[i] = net.send(Path([links[j] for j in idx], private_bps=cap), nbytes)
            yield tr.done

        for i, tr in enumerate(transfers):
            env.process(one(i, *tr))
        env.run()
        expected = _reference_tx_ends(bws, transfers)
        for i, tr in sent.items():
            assert tr.tx_done_s == pytest.approx(expected[i], rel=1e-9, abs=1e-9)
            assert net.sent_bytes(tr) == tr.nbytes

    check()
