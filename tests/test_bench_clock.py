"""``fedsim bench clock``: the CLI's JSON line, and the raw simpy baseline doing fedsim's work."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace

import pytest

from fedsim.bench.clock_bench import Workload, fedsim_round, raw_round
from fedsim.cli import main


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_cli_reports_both_sides_with_consistent_figures(capsys):
    assert main(["bench", "clock", "--clients", "20", "50", "--repeats", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    figures = json.loads(out[-1])
    assert figures["bench"] == "clock"
    rows = figures["results"]
    assert [row["clients"] for row in rows] == [20, 50]  # one row per N, in order
    for row in rows:
        n = row["clients"]
        # every client completes; 5 domain events each on both sides; simpy events: 7 per
        # client for raw, 6 for fedsim (its arrival is scheduled one latency ahead)
        assert row["raw_completed"] == row["fedsim_completed"] == n
        assert row["events"] == row["raw_events"] == 5 * n
        assert (row["raw_simpy_events"], row["fedsim_simpy_events"]) == (7 * n, 6 * n)
        # both sides simulate the same round
        assert row["raw_end_s"] == pytest.approx(row["fedsim_end_s"], rel=1e-12)
        assert row["default_path"] == "simpy"  # a shared server link is never the closed form
        # timings: finite and positive, and the reported figures derive from them
        walls = {side: row[f"{side}_wall_s_all"] for side in ("raw", "raw_nogc", "fedsim")}
        assert all(len(v) == 3 and _finite_positive(*v) for v in walls.values())
        assert row["raw_wall_s"] == statistics.median(walls["raw"])
        assert row["fedsim_wall_s"] == statistics.median(walls["fedsim"])
        assert row["raw_nogc_wall_s"] == statistics.median(walls["raw_nogc"])
        assert row["fedsim_events_per_s"] == pytest.approx(5 * n / row["fedsim_wall_s"])
        assert row["raw_events_per_s"] == pytest.approx(5 * n / row["raw_wall_s"])
        assert row["ratio_fedsim_over_raw"] == pytest.approx(statistics.median(
            r / f for r, f in zip(walls["raw"], walls["fedsim"], strict=True)))
        assert _finite_positive(row["ratio_cpu"], row["ratio_cpu_nogc"], row["default_wall_s"])
        # each side's peak memory, from its own fresh process: a Python process with simpy
        # and numpy, far from the 4 GB goal at this size
        assert 10 < row["raw_peak_rss_mb"] < 1024 and 10 < row["fedsim_peak_rss_mb"] < 1024


def test_without_a_shared_link_the_default_path_is_the_closed_form():
    # docs/performance.md: with no shared link the clock computes the round in closed form
    w = Workload(clients=40, server_bps=0.0, bytes_down=20_000, seed=3)
    fast, path = fedsim_round(w, fast_path=True)
    slow, slow_path = fedsim_round(w)
    assert (path, slow_path) == ("closed form", "simpy")
    assert fast.simpy_events == 0 and fast.completed == slow.completed == 40
    assert fast.end_s == pytest.approx(slow.end_s, rel=1e-12)


@pytest.mark.parametrize("bytes_down", [0, 20_000])
def test_raw_baseline_matches_fedsim_on_a_contended_link(bytes_down):
    # 40 clients, 10 Mbit/s access links, a 20 Mbit/s server link: up to 40 uploads share it
    w = Workload(clients=40, server_bps=20e6, bytes_up=50_000, bytes_down=bytes_down, seed=3)
    raw = raw_round(w)
    fed, path = fedsim_round(w)
    assert path == "simpy"
    assert raw.completed == fed.completed == 40
    assert raw.end_s == pytest.approx(fed.end_s, rel=1e-9)
    # contention really happened: the round is longer than with an unlimited server
    uncontended, _ = fedsim_round(replace(w, server_bps=0.0))
    assert fed.end_s > uncontended.end_s + 0.1
    # and the same number of simpy events but for fedsim's transfer arrivals (one event
    # each instead of a timeout plus the event it triggers)
    assert raw.simpy_events - fed.simpy_events == (2 if bytes_down else 1) * 40


def test_raw_baseline_without_garbage_collection_is_the_same_round():
    w = Workload(clients=30, server_bps=5e6, seed=1)
    a, b = raw_round(w), raw_round(w, collect_garbage=False)
    assert (a.completed, a.end_s, a.simpy_events) == (b.completed, b.end_s, b.simpy_events)
