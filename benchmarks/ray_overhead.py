"""Cost per round of ``fedsim run --ray`` with 1 and 2 local actors vs the single-process path.

The shared benchmark workload (``fedsim.bench.workload``: FedAvg, MLP 60-200-10,
synthetic data, 50 samples a client, batch 10, one epoch, every client every round) at
each ``--clients`` N, side by side in one process: the single-process run first, then
the same scenario with ``--actors`` K shard actors on one local Ray (127.0.0.1, started
here, stopped at the end). For each: the median wall time of a round after the first
(from ``timing.csv``), its training part, the setup (Ray actors started and given their
clients' data), the bytes sent to the actors and back per round, and whether
``metrics.csv`` is byte-identical to the single-process run's. Ratios are printed
against the single-process round.

On a machine with few cores this measures the overhead of going through Ray (process
hops, serialization, the rows' copies), not a speed-up: the actors share the cores the
single process had to itself.

Usage:
    python benchmarks/ray_overhead.py [--clients 1000,10000] [--actors 1,2] [--rounds 4]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers separated by commas, got {text!r}"
                                         ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return values


def _walls(run_dir: Path) -> tuple[list[float], list[float]]:
    """Per-round ``wall_time_s`` and ``train_wall_s`` from a run's timing.csv."""
    with open(run_dir / "timing.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["wall_time_s"]) for r in rows], [float(r["train_wall_s"]) for r in rows]


def _steady(values: list[float]) -> float:
    """Median of the rounds after the first (the first one alone when there is one)."""
    return statistics.median(values[1:] if len(values) > 1 else values)


def measure(clients: int, actors: list[int], rounds: int, out: Path, log) -> dict:
    """One workload size: the single-process run, then one run per actor count."""
    import fedsim.distributed.ray_shards as shards
    from fedsim.bench import workload
    from fedsim.distributed import RayOptions
    from fedsim.runners import run_scenario

    w = workload.Workload(clients=clients, rounds=rounds)
    data = workload.make_data(w)
    sc = replace(workload.scenario(w), eval_every=rounds)
    t0 = time.perf_counter()
    run_scenario(sc, out / f"n{clients}_single", progress=False, data=data)
    total = time.perf_counter() - t0
    walls, trains = _walls(out / f"n{clients}_single")
    single = {"round_s": _steady(walls), "train_s": _steady(trains),
              "setup_s": total - sum(walls)}
    want = (out / f"n{clients}_single" / "metrics.csv").read_bytes()
    result = {"clients": clients, "single": single}
    print(f"N = {clients}: single process: round {single['round_s']:.3f} s "
          f"(training {single['train_s']:.3f} s), setup {single['setup_s']:.2f} s", file=log)

    captured: list = []

    class Capturing(shards.RayTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured.append(self)

    original, shards.RayTrainer = shards.RayTrainer, Capturing
    try:
        for k in actors:
            run_dir = out / f"n{clients}_ray{k}"
            t0 = time.perf_counter()
            run_scenario(sc, run_dir, progress=False, data=data, ray=RayOptions(actors=k))
            total = time.perf_counter() - t0
            walls, trains = _walls(run_dir)
            traffic = captured[-1].traffic
            row = {"round_s": _steady(walls), "train_s": _steady(trains),
                   "setup_s": total - sum(walls),
                   "to_actors_mb_per_round": traffic["to_actors"] / traffic["rounds"] / 2**20,
                   "from_actors_mb_per_round": traffic["from_actors"] / traffic["rounds"]
                   / 2**20,
                   "setup_data_mb": traffic["setup"] / 2**20,
                   "identical_metrics": (run_dir / "metrics.csv").read_bytes() == want}
            row["round_ratio"] = row["round_s"] / single["round_s"]
            result[f"ray{k}"] = row
            print(f"  {k} actor{'s' if k > 1 else ''}: round {row['round_s']:.3f} s "
                  f"(x{row['round_ratio']:.2f} the single process; training "
                  f"{row['train_s']:.3f} s), setup {row['setup_s']:.2f} s "
                  f"({row['setup_data_mb']:.1f} MiB of data sent once); per round "
                  f"{row['to_actors_mb_per_round']:.2f} MiB to the actors, "
                  f"{row['from_actors_mb_per_round']:.1f} MiB back; metrics.csv identical: "
                  f"{row['identical_metrics']}", file=log)
    finally:
        shards.RayTrainer = original
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=_ints, default=[1000, 10_000],
                        help="workload sizes N (default 1000,10000)")
    parser.add_argument("--actors", type=_ints, default=[1, 2],
                        help="actor counts (default 1,2)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds per run; the figure is the median after the first")
    args = parser.parse_args(argv)
    import torch

    from fedsim.distributed.session import ray_session

    print(f"ray overhead: torch {torch.__version__}, {os.cpu_count()} cpus, "
          f"FEDSIM_TORCH_THREADS={os.environ.get('FEDSIM_TORCH_THREADS', '1')}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="fsrayb") as tmp, \
            ray_session(None, num_cpus=max(os.cpu_count() or 1, max(args.actors))) as session:
        t0 = time.perf_counter()
        print(f"local Ray up ({len(session.processes)} processes)", file=sys.stderr)
        for n in args.clients:
            results.append(measure(n, args.actors, args.rounds, Path(tmp), sys.stderr))
        elapsed = time.perf_counter() - t0
    print(json.dumps({"bench": "ray_overhead", "cpus": os.cpu_count(), "rounds": args.rounds,
                      "results": results, "elapsed_s": round(elapsed, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
