"""fedsim now vs fedsim at an earlier commit, on the benchmark workload, in one run.

    .venv/bin/python benchmarks/before_after.py --base 239acc3 [--clients 1000]
        [--cohort N] [--samples-per-client 50] [--rounds 3] [--repeats 5]

The earlier commit is checked out into a temporary git worktree (removed afterwards).
Each repeat runs one child process per side, alternating (before, now, before, now,
...), so both see the same machine load; a child builds the workload data, warms up
with a tiny run, then times ``run_scenario`` of the workload (every round, files and the
final evaluation included) and prints its wall times. Reported: the median run time of
each side, the ratio now/before, and whether the two sides' metrics.csv are identical
(the same seed must give the same run). One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import dataclasses, hashlib, json, sys, tempfile, time
from fedsim.bench import workload
from fedsim.runners import run_scenario
clients, cohort, per, rounds = map(int, sys.argv[1:5])
w = workload.Workload(clients=clients, rounds=rounds, samples_per_client=per)
data = workload.make_data(w)
tiny = workload.Workload(clients=4, rounds=1)
with tempfile.TemporaryDirectory() as tmp:
    run_scenario(workload.scenario(tiny), tmp, progress=False, data=workload.make_data(tiny))
sc = dataclasses.replace(workload.scenario(w), clients_per_round=cohort)
with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    run_scenario(sc, tmp, progress=False, data=data)
    wall = time.perf_counter() - t0
    digest = hashlib.sha256(open(tmp + "/metrics.csv", "rb").read()).hexdigest()
print(json.dumps({"run_s": wall, "metrics_sha256": digest}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--cohort", type=int, default=None, help="clients per round (default: all)")
    p.add_argument("--samples-per-client", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    cohort = args.cohort or args.clients
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q",
                       args.base + "^{commit}"], capture_output=True).returncode != 0:
        p.error(f"--base: no commit {args.base!r} in {ROOT}")
    if min(args.clients, cohort, args.samples_per_client, args.rounds, args.repeats) < 1 \
            or cohort > args.clients:
        p.error("--clients, --cohort (at most --clients), --samples-per-client, --rounds and "
                "--repeats must be >= 1")
    with tempfile.TemporaryDirectory(prefix="fedsim_before_") as tmp:
        base = Path(tmp) / "src"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base),
                        args.base], check=True)
        try:
            sides = {"before": base, "now": ROOT}
            times: dict[str, list[float]] = {k: [] for k in sides}
            digests: dict[str, set[str]] = {k: set() for k in sides}
            for _ in range(args.repeats):
                for side, src in sides.items():
                    env = {**os.environ, "PYTHONPATH": str(src), "FEDSIM_TORCH_THREADS": "1"}
                    out = subprocess.run(
                        [sys.executable, "-c", CHILD, str(args.clients), str(cohort),
                         str(args.samples_per_client), str(args.rounds)],
                        cwd=src, env=env, check=True, capture_output=True, text=True)
                    fig = json.loads(out.stdout.strip().splitlines()[-1])
                    times[side].append(fig["run_s"])
                    digests[side].add(fig["metrics_sha256"])
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                           check=False)
    med = {k: statistics.median(v) for k, v in times.items()}
    same = len(digests["before"] | digests["now"]) == 1
    print(f"workload: {args.clients} clients, cohort {cohort}, {args.samples_per_client} samples "
          f"each, {args.rounds} rounds; {args.repeats} alternating repeats, {os.cpu_count()} cpus",
          file=sys.stderr)
    for side in sides:
        runs = " ".join(f"{t:.2f}" for t in times[side])
        print(f"  {side:6s} ({args.base if side == 'before' else 'working tree'}): median "
              f"{med[side]:.3f} s  [{runs}]", file=sys.stderr)
    print(f"  now / before = {med['now'] / med['before']:.3f}; metrics.csv "
          f"{'identical' if same else 'DIFFERENT'} on both sides", file=sys.stderr)
    print(json.dumps({"bench": "before_after", "base": args.base, "clients": args.clients,
                      "cohort": cohort, "rounds": args.rounds, "before_s": round(med["before"], 4),
                      "now_s": round(med["now"], 4),
                      "ratio_now_over_before": round(med["now"] / med["before"], 3),
                      "metrics_identical": same}))


if __name__ == "__main__":
    main()
