"""Tests of ``fedsim bench flower``: matched sample orders, and a tiny end-to-end run.

The end-to-end run starts a real Ray-backed Flower simulation (about 30-40 s on
two cores, most of it Ray and worker start-up); it checks the figures, that
both sides end with the same global model, and that no process it started and
no temporary file survives. Timings are never asserted.
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from fedsim.bench import flower_bench, processes
from fedsim.bench.workload import Workload
from fedsim.population import Population


def test_draw_local_orders_match_population_draws() -> None:
    """The replayed shuffles are the ones ``Population`` draws (unequal sizes, 2 epochs)."""
    x, y = torch.randn(40, 3), torch.randint(0, 2, (40,))
    pop = Population(nn.Linear(3, 2), x, y)
    indices = [torch.arange(0, 7), torch.arange(10, 13), torch.arange(20, 32), torch.arange(35, 36)]
    counts = [len(ix) for ix in indices]
    gen_pop, gen_mine = torch.Generator(), torch.Generator()
    gen_pop.manual_seed(123)
    gen_mine.manual_seed(123)

    drawn = pop.draw_orders(indices, 2, gen_pop)  # [E, m, max_n]
    local = flower_bench.draw_local_orders(counts, 2, gen_mine)

    assert local.shape == drawn.shape
    for e in range(2):
        for i, (ix, n) in enumerate(zip(indices, counts, strict=True)):
            assert torch.equal(ix[local[e, i, :n]], drawn[e, i, :n])
    # both generators advanced by the same draws
    assert torch.equal(torch.rand(3, generator=gen_pop), torch.rand(3, generator=gen_mine))


def test_sample_orders_are_permutations() -> None:
    """Every client trains every round, visiting each of its samples once per epoch."""
    w = Workload(clients=5, rounds=2)
    orders = flower_bench.sample_orders(w)
    assert orders.shape == (2, 5, w.epochs, w.samples_per_client)
    for row in orders.reshape(-1, w.samples_per_client):
        assert sorted(row.tolist()) == list(range(w.samples_per_client))
    assert not np.array_equal(orders[0], orders[1])


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_steady_round_is_the_median_of_rounds_after_the_first() -> None:
    assert flower_bench.steady_round_s([9.0, 1.0, 3.0, 2.0]) == 2.0
    assert flower_bench.steady_round_s([9.0, 1.0, 3.0]) == 2.0
    assert flower_bench.steady_round_s([9.0]) == 9.0


def test_add_arguments_defaults() -> None:
    parser = argparse.ArgumentParser()
    flower_bench.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.clients, args.rounds, args.repeats, args.flower_timeout) == (1000, 3, 3, 900.0)


def test_bench_flower_smoke(monkeypatch: pytest.MonkeyPatch) -> None:
    """4 clients, 2 rounds: figures complete, same final model, nothing left running."""
    base = tempfile.mkdtemp(prefix="fb")  # short: Ray's socket paths live below it
    monkeypatch.setattr(tempfile, "tempdir", base)
    try:
        parser = argparse.ArgumentParser()
        flower_bench.add_arguments(parser)
        args = parser.parse_args(["--clients", "4", "--rounds", "2", "--repeats", "1",
                                  "--flower-timeout", "240"])
        log = io.StringIO()
        figures = flower_bench.run(args, log)

        report = log.getvalue()
        assert not figures.get("flower_error"), report
        for key in ("bench", "clients", "rounds", "fedsim_per_round_s", "flower_startup_s",
                    "flower_per_round_s", "ratio_flower_over_fedsim_per_round",
                    "max_abs_diff_final_model", "models_agree"):
            assert figures.get(key) is not None, (key, report)
        assert figures["bench"] == "flower"
        assert (figures["clients"], figures["rounds"], figures["repeats"]) == (4, 2, 1)
        assert figures["models_agree"] is True, report
        assert figures["max_abs_diff_final_model"] < 1e-4
        # timings: finite and positive, and every derived figure follows from them
        rounds = figures["flower_round_s"]
        assert len(rounds) == 2 and _finite_positive(*rounds)
        assert figures["flower_first_round_s"] == rounds[0]
        assert figures["flower_per_round_s"] == rounds[1]  # the median of rounds 2..R
        assert _finite_positive(figures["flower_startup_s"], figures["flower_shutdown_s"])
        assert figures["flower_total_s"] == pytest.approx(
            figures["flower_startup_s"] + sum(rounds) + figures["flower_shutdown_s"])
        runs = figures["fedsim_per_round_runs_s"]
        assert len(runs) == 1 and figures["fedsim_per_round_s"] == runs[0]
        assert _finite_positive(figures["fedsim_per_round_s"], figures["fedsim_first_round_s"],
                                figures["fedsim_total_s"])
        assert figures["fedsim_setup_s"] >= 0
        assert figures["ratio_flower_over_fedsim_per_round"] == pytest.approx(
            figures["flower_per_round_s"] / figures["fedsim_per_round_s"])
        # everything Flower and Ray started is gone, and so are their files
        assert processes.processes_mentioning(base) == []
        assert [c for c in psutil.Process().children(recursive=True)
                if c.status() != psutil.STATUS_ZOMBIE] == []
        # (torch itself may leave a cache folder in the temp dir; the bench's dirs start "fl")
        assert [d.name for d in Path(base).iterdir() if d.name.startswith("fl")] == []
    finally:
        for p in processes.processes_mentioning(base):  # only if the checks above failed
            p.kill()
        shutil.rmtree(base, ignore_errors=True)
