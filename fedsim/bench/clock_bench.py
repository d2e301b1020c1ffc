"""The network layer vs a raw simpy loop: one round of N clients over a shared server link.

The workload (the same on both sides): N clients, all selected, each
downloads ``--bytes-down`` bytes (default 0: a latency-only message), computes
for a lognormal time (fedsim's ``lognormal`` compute model, the same draws on
both sides), then uploads ``--bytes-up`` bytes over its access link
(``bandwidth_bps``, ``latency_s``) and ONE server uplink of capacity
``--server-bps`` shared equally by the uploads in flight (processor sharing,
each upload capped by its access link). The round ends when the last update
has arrived (policy ``all``).

- **raw**: a minimal hand-written simpy program: one process per client and a
  processor-sharing link driven by timer callbacks (see :class:`_SharedLink`).
  A ``simpy.Resource`` would *not* be the same work: it serves uploads one (or
  c) at a time, FIFO, so the arrival times, and the round's end, differ from a
  fairly shared link; the test checks that the raw program and fedsim agree on
  the round's end time.
- **fedsim**: ``FederatedClock.run_round`` with ``NetworkConfig(topology="star",
  server_bandwidth_bps=C, compute=lognormal, policy="all")``, forced through the
  simpy path (``fast_path = False``). The default path is reported too (with a
  shared server link it is the simpy path as well).

Events. Both sides are charged for the same *domain events*: per client that
completes, download start and end, compute end, upload start and end (5 per
client). ``events_per_s`` is domain events / wall seconds, so the ratio
fedsim/raw is ``raw seconds / fedsim seconds`` for identical simulated work.
The simpy events each side processed (scheduled minus still queued at the end,
read from ``Environment._eid``) are reported next to it: 7 per client for raw
(process start, download latency, compute, link timer, transmission done,
upload latency, process end) and 6 for fedsim, whose link layer schedules the
arrival event one latency ahead instead of a timeout that then triggers it.

Ratios (median over interleaved pairs): ``ratio_fedsim_over_raw`` on wall time
(the goal, >= 0.5), ``ratio_cpu`` on process CPU time (less disturbed by other
load), and ``ratio_fedsim_over_raw_nogc`` against the raw program run with
Python's cyclic garbage collector paused, as fedsim's clock does during a round.

Each N runs in a fresh subprocess (timings, sides interleaved, medians of
``--repeats``), plus one fresh subprocess per side for its peak resident memory
(fedsim: the default path, as a user runs it).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import simpy

    from fedsim.config import NetworkConfig

DOMAIN_EVENTS_PER_CLIENT = 5  # download start/end, compute end, upload start/end
_REL_TOL = 1e-12  # a finish mark this close (relative) to the link clock is due now
_GOAL_RATIO = 0.5
_GOAL_RSS_MB = 4096.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedsim bench clock``."""
    parser.add_argument("--clients", type=int, nargs="+", default=[1000, 10000, 100000],
                        metavar="N", help="numbers of clients, one round each (default: "
                                          "1000 10000 100000)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per side and N; the median is reported (default 3)")
    from fedsim.bench.common import non_negative_int, positive_float

    parser.add_argument("--server-bps", type=positive_float, default=1e9,
                        help="capacity of the shared server uplink in bit/s (default 1e9)")
    parser.add_argument("--bytes-up", type=non_negative_int, default=100_000,
                        help="update size per client in bytes (default 100000)")
    parser.add_argument("--bytes-down", type=non_negative_int, default=0,
                        help="model size per client in bytes, sent over a shared server "
                             "downlink of the same capacity (default 0: latency only)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="root seed (default 0)")


@dataclass(frozen=True)
class Workload:
    """One round of the comparison."""

    clients: int
    server_bps: float = 1e9
    bytes_up: int = 100_000
    bytes_down: int = 0
    seed: int = 0
    work: float = 50.0  # samples x epochs per client (compute median 0.05 s)

    def network(self) -> NetworkConfig:
        """fedsim's network section for this workload."""
        from fedsim.config import ComputeConfig, NetworkConfig

        return NetworkConfig(topology="star", server_bandwidth_bps=self.server_bps,
                             compute=ComputeConfig(model="lognormal"), policy="all")


@dataclass
class SideResult:
    """What one run of one side produced."""

    wall_s: float
    cpu_s: float  # this process's CPU time (less sensitive to other load on the machine)
    completed: int  # clients whose update arrived
    end_s: float  # the round's end (last arrival), simulated seconds
    simpy_events: int  # simpy events processed (-1 if unknown)


# -- event counting -----------------------------------------------------------------------------


@contextmanager
def recording_envs() -> Iterator[list]:
    """Record every ``simpy.Environment`` created inside the block (no per-event cost)."""
    import simpy

    envs: list = []
    original = simpy.Environment.__init__

    def init(self, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        envs.append(self)

    simpy.Environment.__init__ = init
    try:
        yield envs
    finally:
        simpy.Environment.__init__ = original


def processed_events(env: simpy.Environment) -> int:
    """Events ``env`` has processed: scheduled (its event-id counter) minus still queued.

    Reads simpy 4's private ``_eid`` counter (``itertools.count``, one id per scheduled
    event; taking the next id is harmless once the run is over); -1 if absent.
    """
    eid = getattr(env, "_eid", None)
    if eid is None:
        return -1
    return next(eid) - len(env._queue)


# -- the raw simpy program ----------------------------------------------------------------------


class _SharedLink:
    """A link of ``capacity_bps`` shared equally by the transfers on it, each capped at ``cap_bps``.

    A virtual clock ``v`` counts the bits each active transfer has sent since the
    link was created; a transfer of ``b`` bits joining at ``v0`` is done when
    ``v`` reaches ``v0 + b``. All transfers here have the same size and cap, so
    they finish in the order they joined: a deque is the queue. One timer is
    pending at a time; a join only slows the others, so the pending timer fires
    early at worst and then re-plans.
    """

    def __init__(self, env: simpy.Environment, capacity_bps: float, cap_bps: float):
        self.env = env
        self.capacity_bps = capacity_bps
        self.cap_bps = cap_bps
        self.v = 0.0
        self.t = env.now
        self.rate = 0.0
        self.queue: deque = deque()  # (finish mark, event) in join order
        self.timer_pending = False

    def send(self, bits: float) -> simpy.Event:
        """Start a transfer now; returns the event that fires when its last bit is sent."""
        self._advance()
        done = self.env.event()
        self.queue.append((self.v + bits, done))
        self.rate = min(self.cap_bps, self.capacity_bps / len(self.queue))
        if not self.timer_pending:
            self._plan()
        return done

    def _advance(self) -> None:
        now = self.env.now
        self.v += self.rate * (now - self.t)
        self.t = now

    def _plan(self) -> None:
        delay = max(0.0, (self.queue[0][0] - self.v) / self.rate)
        self.env.timeout(delay).callbacks.append(self._on_timer)
        self.timer_pending = True

    def _on_timer(self, _event) -> None:
        self.timer_pending = False
        self._advance()
        queue = self.queue
        while queue and queue[0][0] - self.v <= _REL_TOL * max(1.0, queue[0][0]):
            mark, done = queue.popleft()
            self.v = max(self.v, mark)
            done.succeed()
        if queue:
            self.rate = min(self.cap_bps, self.capacity_bps / len(queue))
            self._plan()
        else:
            self.rate = 0.0


def raw_round(w: Workload, collect_garbage: bool = True) -> SideResult:
    """The round as a minimal simpy program; returns its wall time and outcome.

    Args:
        w: the workload.
        collect_garbage: False runs it with Python's cyclic garbage collector paused, as
            fedsim's clock does during a round (a like-for-like reference).
    """
    import gc

    import numpy as np
    import simpy

    from fedsim.network.compute import make_compute_model
    from fedsim.seeding import numpy_rng

    cfg = w.network()
    n = w.clients
    gc_was_enabled = gc.isenabled()
    if not collect_garbage:
        gc.disable()
    start, cpu = time.perf_counter(), time.process_time()
    comp = make_compute_model(cfg.compute, n).times(
        np.arange(n), np.full(n, w.work), numpy_rng(w.seed, "network/compute")).tolist()
    latency, access = cfg.latency_s, cfg.bandwidth_bps
    env = simpy.Environment()
    downlink = _SharedLink(env, w.server_bps, access)
    uplink = _SharedLink(env, w.server_bps, access)
    bits_down, bits_up = 8.0 * w.bytes_down, 8.0 * w.bytes_up
    arrived = [math.inf] * n

    def client(i: int):
        if bits_down > 0:
            yield downlink.send(bits_down)
        yield env.timeout(latency)  # the model arrives one latency after its last bit
        yield env.timeout(comp[i])
        yield uplink.send(bits_up)
        yield env.timeout(latency)
        arrived[i] = env.now

    for i in range(n):
        env.process(client(i))
    env.run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if gc_was_enabled:
        gc.enable()
    done = [t for t in arrived if t < math.inf]
    return SideResult(wall, cpu, len(done), max(done, default=0.0), processed_events(env))


# -- fedsim -------------------------------------------------------------------------------------


def fedsim_round(w: Workload, fast_path: bool = False) -> tuple[SideResult, str]:
    """The round through ``FederatedClock.run_round``; also says which path it took."""
    from fedsim.network.clock import FederatedClock

    clock = FederatedClock(w.network(), w.clients, seed=w.seed)
    clock.fast_path = fast_path
    selected = list(range(w.clients))
    work = [w.work] * w.clients
    with recording_envs() as envs:
        start, cpu = time.perf_counter(), time.process_time()
        sched = clock.run_round(0, selected, work, w.bytes_down, w.bytes_up)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    events = sum(processed_events(e) for e in envs) if envs else 0
    path = "simpy" if envs else "closed form"
    return SideResult(wall, cpu, len(sched.completed), sched.end_s, events), path


# -- one N in a child process -------------------------------------------------------------------


def _timing_child(w: Workload, repeats: int) -> dict:
    """Interleave raw, raw without GC and fedsim ``repeats`` times, plus one default-path run."""
    import gc

    warm = Workload(**{**vars(w), "clients": min(w.clients, 1000)})
    raw_round(warm)  # imports and first-call costs stay out of the timings
    fedsim_round(warm)
    runs: dict[str, list[SideResult]] = {"raw": [], "raw_nogc": [], "fedsim": []}
    for _ in range(max(1, repeats)):
        runs["raw"].append(raw_round(w))
        gc.collect()
        runs["raw_nogc"].append(raw_round(w, collect_garbage=False))
        gc.collect()
        runs["fedsim"].append(fedsim_round(w)[0])
        gc.collect()
    default, path = fedsim_round(w, fast_path=True)
    out: dict[str, Any] = {k: [vars(r) for r in v] for k, v in runs.items()}
    return {**out, "default": vars(default), "default_path": path}


def _memory_child(w: Workload, side: str) -> dict:
    """One run of one side in this fresh process, and the process's peak RSS."""
    from fedsim.bench.common import peak_rss_mb

    result = raw_round(w) if side == "raw" else fedsim_round(w, fast_path=True)[0]
    return {"wall_s": result.wall_s, "peak_rss_mb": peak_rss_mb()}


def _child_main(argv: list[str]) -> None:
    """Entry of the child processes: ``--mode timing|raw|fedsim`` and the workload."""
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["timing", "raw", "fedsim"], required=True)
    p.add_argument("--workload", required=True, help="the Workload as JSON")
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    from fedsim.bench.processes import die_with_parent

    die_with_parent()
    w = Workload(**json.loads(a.workload))
    out = _timing_child(w, a.repeats) if a.mode == "timing" else _memory_child(w, a.mode)
    print(json.dumps(out), flush=True)


def _in_child(mode: str, w: Workload, repeats: int = 1) -> dict:
    """Run ``_child_main`` in a fresh interpreter and parse its JSON line."""
    from fedsim.bench.processes import child_env_of_this_process

    cmd = [sys.executable, "-m", "fedsim.bench.clock_bench", "--mode", mode,
           "--workload", json.dumps(vars(w)), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env_of_this_process())
    if proc.returncode != 0:
        raise RuntimeError(f"clock bench child ({mode}, {w.clients} clients) failed:\n"
                           f"{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the command --------------------------------------------------------------------------------


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _pair_ratio(base: list[dict], fed: list[dict], key: str) -> float:
    """Median over the interleaved repeats of ``base[key] / fed[key]`` (time ratio)."""
    return statistics.median(b[key] / f[key] for b, f in zip(base, fed, strict=True))


def _figures(w: Workload, timing: dict, mem_raw: dict, mem_fed: dict) -> dict:
    """One row of the JSON report from the children's answers."""
    raw, nogc, fed = timing["raw"], timing["raw_nogc"], timing["fedsim"]
    raw_s, fed_s = _median(raw, "wall_s"), _median(fed, "wall_s")
    completed_raw, completed_fed = raw[0]["completed"], fed[0]["completed"]
    raw_events = DOMAIN_EVENTS_PER_CLIENT * completed_raw
    events = DOMAIN_EVENTS_PER_CLIENT * completed_fed
    raw_simpy, fed_simpy = raw[0]["simpy_events"], fed[0]["simpy_events"]
    return {
        "clients": w.clients,
        "events": events,
        "raw_events": raw_events,
        "raw_simpy_events": raw_simpy,
        "fedsim_simpy_events": fed_simpy,
        "raw_wall_s": raw_s,
        "fedsim_wall_s": fed_s,
        "raw_events_per_s": raw_events / raw_s,
        "fedsim_events_per_s": events / fed_s,
        "ratio_fedsim_over_raw": _pair_ratio(raw, fed, "wall_s"),
        "ratio_cpu": _pair_ratio(raw, fed, "cpu_s"),
        "raw_nogc_wall_s": _median(nogc, "wall_s"),
        "ratio_fedsim_over_raw_nogc": _pair_ratio(nogc, fed, "wall_s"),
        "ratio_cpu_nogc": _pair_ratio(nogc, fed, "cpu_s"),
        "raw_simpy_events_per_s": raw_simpy / raw_s,
        "fedsim_simpy_events_per_s": fed_simpy / fed_s,
        "raw_completed": completed_raw,
        "fedsim_completed": completed_fed,
        "raw_end_s": raw[0]["end_s"],
        "fedsim_end_s": fed[0]["end_s"],
        "default_path": timing["default_path"],
        "default_wall_s": timing["default"]["wall_s"],
        "raw_wall_s_all": [r["wall_s"] for r in raw],
        "raw_nogc_wall_s_all": [r["wall_s"] for r in nogc],
        "fedsim_wall_s_all": [r["wall_s"] for r in fed],
        "raw_peak_rss_mb": mem_raw["peak_rss_mb"],
        "fedsim_peak_rss_mb": mem_fed["peak_rss_mb"],
    }


def run(args: argparse.Namespace, log: TextIO) -> dict:
    """Run the comparison for every N; a table to ``log``, the figures returned."""
    from fedsim.errors import FedsimError

    if min(args.clients) < 1 or args.repeats < 1:
        raise FedsimError("fedsim bench clock: --clients values and --repeats must be >= 1")
    if not (math.isfinite(args.server_bps) and args.server_bps > 0):
        raise FedsimError(f"fedsim bench clock: --server-bps must be a finite number > 0, "
                          f"got {args.server_bps}")
    if min(args.bytes_up, args.bytes_down, args.seed) < 0:
        raise FedsimError("fedsim bench clock: --bytes-up, --bytes-down and --seed must be >= 0")
    results = []
    print(f"clock bench: one round, all clients selected, shared server uplink "
          f"{args.server_bps:g} bit/s, update {args.bytes_up} B, model {args.bytes_down} B; "
          f"median of {args.repeats} interleaved repeats, each N in fresh processes.\n"
          f"events = {DOMAIN_EVENTS_PER_CLIENT} per completing client; ratio = raw time / "
          f"fedsim time (wall; cpu; and against raw with the garbage collector paused)",
          file=log)
    print(f"{'clients':>8} {'events':>8} {'raw s':>7} {'fedsim s':>8} {'raw ev/s':>9} "
          f"{'fed ev/s':>9} {'ratio':>5} {'cpu':>5} {'nogc':>5} {'simpy ev raw/fed':>17} "
          f"{'path':>5} {'RSS raw':>7} {'RSS fed':>7}", file=log, flush=True)
    for n in args.clients:
        w = Workload(clients=int(n), server_bps=float(args.server_bps),
                     bytes_up=int(args.bytes_up), bytes_down=int(args.bytes_down),
                     seed=int(args.seed))
        timing = _in_child("timing", w, args.repeats)
        fig = _figures(w, timing, _in_child("raw", w), _in_child("fedsim", w))
        results.append(fig)
        simpy_events = f"{fig['raw_simpy_events']}/{fig['fedsim_simpy_events']}"
        print(f"{n:>8} {fig['events']:>8} {fig['raw_wall_s']:>7.3f} {fig['fedsim_wall_s']:>8.3f} "
              f"{fig['raw_events_per_s']:>9.0f} {fig['fedsim_events_per_s']:>9.0f} "
              f"{fig['ratio_fedsim_over_raw']:>5.2f} {fig['ratio_cpu']:>5.2f} "
              f"{fig['ratio_fedsim_over_raw_nogc']:>5.2f} {simpy_events:>17} "
              f"{fig['default_path']:>5} {fig['raw_peak_rss_mb']:>6.0f}M "
              f"{fig['fedsim_peak_rss_mb']:>6.0f}M", file=log, flush=True)
    _goals(results, log)
    return {"bench": "clock",
            "events": f"{DOMAIN_EVENTS_PER_CLIENT} domain events per completing client "
                      "(download start/end, compute end, upload start/end)",
            "results": results}


def _goals(results: list[dict], log: TextIO) -> None:
    """One line per goal: ratio >= 0.5 for every N, < 4 GB at the largest N."""
    worst = min(results, key=lambda r: r["ratio_fedsim_over_raw"])
    ok = worst["ratio_fedsim_over_raw"] >= _GOAL_RATIO
    print(f"goal ratio >= {_GOAL_RATIO}: {'met' if ok else 'NOT met'} (worst "
          f"{worst['ratio_fedsim_over_raw']:.2f} at {worst['clients']} clients)", file=log)
    biggest = max(results, key=lambda r: r["clients"])
    ok = biggest["fedsim_peak_rss_mb"] < _GOAL_RSS_MB
    print(f"goal peak RSS < {_GOAL_RSS_MB:.0f} MB: {'met' if ok else 'NOT met'} "
          f"({biggest['fedsim_peak_rss_mb']:.0f} MB at {biggest['clients']} clients)", file=log)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
