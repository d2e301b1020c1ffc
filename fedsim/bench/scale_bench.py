"""One FedAvg round of a 10k-client cohort drawn from a 100k-client population: time and memory.

The shared workload (MLP 60-200-10, synthetic data, batch 10, one epoch) with
``--population`` clients of ``--samples-per-client`` samples each (50 by
default: 100k x 50 x 60 float32 = 1.2 GB of training inputs), of which
``--cohort`` are sampled for one round of the full simulator
(``run_scenario``: clock, sampling, vmapped training, aggregation, metrics
files, final evaluation).

Reported: the time to build the data (the workload's, not fedsim's), fedsim's
setup (data to tensors, model, clock, the CSR client index), the round
itself, and memory: this process's peak RSS (``common.peak_rss_mb``, which also
covers building the data), the resident memory before the run, and the peak
while fedsim ran (sampled every 5 ms).

Usage:
    fedsim bench scale [--population 100000] [--cohort 10000] [--samples-per-client 50]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import threading
import time
from typing import Any, TextIO

from fedsim.bench import common, workload
from fedsim.errors import FedsimError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedsim bench scale``."""
    parser.add_argument("--population", type=int, default=100_000, help="clients in total")
    parser.add_argument("--cohort", type=int, default=10_000, help="clients sampled for the round")
    parser.add_argument("--samples-per-client", type=int, default=50,
                        help="training samples per client (fewer to save memory; 50 is the "
                             "shared workload)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (the figures are per round)")
    parser.add_argument("--hidden", type=int, default=200,
                        help="the MLP's hidden width (default 200, the shared workload); 0: "
                             "logistic regression, 610 parameters, for a million clients on a "
                             "small machine")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: fedsim's choice, 1 on CPU)")
    common.add_device_argument(parser)


def run(args: argparse.Namespace, log: TextIO) -> dict:
    """Build the population, run the rounds once, and report time and memory.

    Returns:
        ``{"bench": "scale", "population", "cohort", "round_s", "setup_s",
        "peak_rss_mb", ...}``; ``round_s`` is the median wall time of a round.
    """
    if not 1 <= args.cohort <= args.population:
        raise FedsimError("need 1 <= --cohort <= --population")
    if args.samples_per_client < 1 or args.rounds < 1:
        raise FedsimError("--samples-per-client and --rounds must be >= 1")
    if args.hidden < 0:
        raise FedsimError(f"--hidden: must be an integer >= 0, got {args.hidden}")
    _check_model_fits(workload.Workload(hidden=args.hidden))
    if args.threads is not None and args.threads < 1:
        raise FedsimError("--threads must be >= 1")
    from fedsim.bench.common import torch_threads

    device = common.bench_device(args.device)
    with torch_threads(args.threads):
        return _run(args, log, device)


def _run(args: argparse.Namespace, log: TextIO, device: str) -> dict:
    """``run`` under the chosen thread setting."""
    import torch

    w = workload.Workload(clients=args.population, rounds=args.rounds,
                          samples_per_client=args.samples_per_client, hidden=args.hidden)
    n_train = w.clients * w.samples_per_client
    print(f"scale bench: cohort {args.cohort} of {w.clients} clients x {w.samples_per_client} "
          f"samples ({n_train * w.dim * 4 / 2**30:.2f} GiB of float32 inputs), "
          f"{w.rounds} round(s), {_model_text(w)}, batch {w.batch_size}; "
          f"torch {torch.__version__}, {common.device_name(device)}", file=log)

    warm_s, _ = common.timed(lambda: _warm_up(device))
    data_s, data = common.timed(lambda: workload.make_data(w))
    sc = dataclasses.replace(workload.scenario(w, device), clients_per_round=args.cohort)
    from fedsim.bench.limit_bench import Probe, patched_runner
    from fedsim.runners import run_scenario

    probe = Probe()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with _RssSampler() as sampler, patched_runner(probe), \
            tempfile.TemporaryDirectory(prefix="fedsim_scale_") as tmp:
        rss_before = sampler.start_mb
        t0 = time.perf_counter()
        result = run_scenario(sc, tmp, progress=False, data=data)
        total_s = time.perf_counter() - t0
        round_walls = _round_walls(os.path.join(tmp, "timing.csv"))

    setup_s = probe.marks["rounds_start"] - t0
    rounds_s = probe.marks["rounds_end"] - probe.marks["rounds_start"]
    round_s = sorted(round_walls)[len(round_walls) // 2] if round_walls else rounds_s
    parts = {k.strip(): v / w.rounds for k, v in probe.totals.items() if k.startswith(("round",
                                                                                   "  "))}
    # the simulator's own overhead: the round minus its training and aggregation work
    work_s = (parts.get("training: local SGD", 0.0) + parts.get("training: shuffles", 0.0)
              + parts.get("round: aggregation + server step", 0.0))
    mean_round_s = sum(round_walls) / len(round_walls) if round_walls else rounds_s / w.rounds
    overhead_s = max(0.0, mean_round_s - work_s)  # means over the rounds, like the parts
    figures: dict[str, Any] = {
        "bench": "scale", "population": w.clients, "cohort": args.cohort, "hidden": w.hidden,
        "samples_per_client": w.samples_per_client, "rounds": w.rounds,
        "round_s": round(round_s, 3), "setup_s": round(setup_s, 3),
        "peak_rss_mb": round(common.peak_rss_mb(), 1),
        "rss_before_run_mb": round(rss_before, 1),
        "peak_rss_during_run_mb": round(sampler.peak_mb, 1),
        "data_build_s": round(data_s, 3), "warm_up_s": round(warm_s, 3),
        "total_run_s": round(total_s, 3),
        "clients_per_s": round(args.cohort / round_s, 1),
        "client_updates_per_s": round(args.cohort * w.rounds / sum(round_walls), 1)
        if round_walls else None,
        "device": common.device_name(device),
        "peak_device_memory_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                                  if device.startswith("cuda") else None),
        "overhead_s": round(overhead_s, 4),
        "overhead_us_per_client": round(overhead_s / args.cohort * 1e6, 3),
        "round_parts_s": {k: round(v, 4) for k, v in parts.items()},
        "final_accuracy": result.summary.get("final_accuracy"),
    }
    _report(figures, parts, probe.totals, log)
    return figures


def _check_model_fits(w: workload.Workload) -> None:
    """A ``--hidden`` whose model alone would not fit in memory is a one-line error (the
    run's own check sizes the cohort once the model is built)."""
    from fedsim.resources import MODEL_COPIES, available_memory, fmt_bytes

    need = MODEL_COPIES * 4 * w.num_params
    avail, source = available_memory()
    if need > avail:
        raise FedsimError(f"--hidden: a model of {w.num_params:,} parameters needs about "
                          f"{fmt_bytes(need)}, more than the {fmt_bytes(avail)} available "
                          f"({source}); use a smaller width")


def _model_text(w: workload.Workload) -> str:
    return (f"MLP {w.dim}-{w.hidden}-{w.classes}" if w.hidden
            else f"logistic regression {w.dim}-{w.classes}")


def _warm_up(device: str) -> None:
    """A tiny run first, so the measured round does not pay torch's one-off first-use costs."""
    from fedsim.runners import run_scenario

    tiny = workload.Workload(clients=4, rounds=1)
    with tempfile.TemporaryDirectory(prefix="fedsim_scale_warm_") as tmp:
        run_scenario(workload.scenario(tiny, device), tmp, progress=False,
                     data=workload.make_data(tiny))


def _report(fig: dict, parts: dict[str, float], totals: dict[str, float], log: TextIO) -> None:
    """The figures as a few readable lines."""
    print(f"  warm-up (a 4-client run: imports, first vmap; not counted): {fig['warm_up_s']:.2f} s",
          file=log)
    print(f"  building the workload data (numpy, not fedsim): {fig['data_build_s']:.2f} s",
          file=log)
    setup_parts = ", ".join(f"{k.split(': ')[1]} {v:.3f} s" for k, v in totals.items()
                            if k.startswith("setup"))
    print(f"  fedsim setup: {fig['setup_s']:.3f} s ({setup_parts}; the rest: the CSR client "
          "index, writer, algorithm)", file=log)
    print(f"  one round of {fig['cohort']} clients: {fig['round_s']:.3f} s "
          f"({fig['clients_per_s']:.0f} clients/s)", file=log)
    for k, v in parts.items():
        print(f"    {k:40s} {v:8.4f} s", file=log)
    print(f"  overhead (the round minus local SGD, shuffles and aggregation): "
          f"{fig['overhead_s']:.4f} s = {fig['overhead_us_per_client']:.3f} us per client",
          file=log)
    print(f"  memory: peak RSS {fig['peak_rss_mb']:.0f} MiB (whole process, data building "
          f"included); {fig['rss_before_run_mb']:.0f} MiB before the run, peak "
          f"{fig['peak_rss_during_run_mb']:.0f} MiB during it", file=log)
    if fig["peak_device_memory_mb"] is not None:
        print(f"  device memory: peak {fig['peak_device_memory_mb']:.0f} MiB allocated by torch",
              file=log)


def _round_walls(timing_csv: str) -> list[float]:
    """``wall_time_s`` of every round in the run's timing.csv."""
    import csv

    with open(timing_csv, newline="") as fh:
        return [float(row["wall_time_s"]) for row in csv.DictReader(fh)]


def _rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class _RssSampler:
    """Samples the resident memory in a background thread; ``peak_mb`` is the maximum seen,
    ``start_mb`` the reading taken as it starts (the first sample: memory released during
    the run cannot put the peak below it)."""

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.peak_mb = self.start_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _rss_mb())
            self._stop.wait(self.period_s)

    def __enter__(self) -> _RssSampler:
        self.start_mb = self.peak_mb = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())
