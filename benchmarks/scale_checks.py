"""The smaller measurements behind docs/performance.md's "A round of 100k clients".

    .venv/bin/python benchmarks/scale_checks.py dsgd [--nodes 10000]
    .venv/bin/python benchmarks/scale_checks.py fused-limit [--clients 100000]
    .venv/bin/python benchmarks/scale_checks.py fresh-buffer [--clients 100000]
    .venv/bin/python benchmarks/scale_checks.py update-layout
    .venv/bin/python benchmarks/scale_checks.py write-updates [--clients 20000]

- ``dsgd``: D-SGD on a ring of N nodes (the benchmark MLP, 10 samples a node), two rounds,
  the second evaluated (every node's accuracy): each round's wall time, training (local
  SGD and mixing) and evaluation, from the run's timing.csv. Run it with
  ``PYTHONPATH=<an older checkout>`` to time that code.
- ``fused-limit``: three rounds of fedsim and of the hand-written fused program
  (``limit_programs.fused``, fedsim's fused chunk) on N clients x 10 samples, fedsim first,
  twice: fedsim's round walls and the program's total.
- ``fresh-buffer``: writing ``[N, 14210]`` float32 rows chunk by chunk into a fresh buffer
  (twice) and into a reused one: the cost of first-touch page faults.
- ``update-layout``: one chunk's update written from the engine's stored layout: the
  subtraction on the strided, transposed views (before) against the subtraction in
  place then the copy (now).
- ``write-updates``: three rounds of training N clients with the runner's kept update
  buffer, and the time spent writing the updates (``FusedMLP._write_updates``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from fedsim.bench import workload
from fedsim.runners import run_scenario

D_MLP = 60 * 200 + 200 + 200 * 10 + 10


def _walls(run_dir: str) -> list[dict]:
    with open(run_dir + "/timing.csv", newline="") as fh:
        return [{k: round(float(v), 3) for k, v in row.items()} for row in csv.DictReader(fh)]


def dsgd(nodes: int) -> None:
    w = workload.Workload(clients=nodes, rounds=2, samples_per_client=10)
    sc = workload.scenario(w)
    sc = dataclasses.replace(
        sc, eval_every=2, algorithm=dataclasses.replace(sc.algorithm, name="dsgd"),
        network=dataclasses.replace(sc.network, topology="ring", topology_params={"n": nodes}))
    data = workload.make_data(w)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_scenario(sc, tmp, progress=False, data=data)
        total = time.perf_counter() - t0
        for row in _walls(tmp):
            print(f"round {row['round']:.0f}: {row['wall_time_s']} s (training and mixing "
                  f"{row['train_wall_s']} s, evaluation {row['eval_wall_s']} s)")
    print(f"whole run {total:.1f} s, ring of {nodes} nodes")


def fused_limit(clients: int) -> None:
    from fedsim.bench import limit_programs

    w = workload.Workload(clients=clients, rounds=3, samples_per_client=10)
    data = workload.make_data(w)
    tiny = workload.Workload(clients=4, rounds=1)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up
        run_scenario(workload.scenario(tiny), tmp, progress=False, data=workload.make_data(tiny))
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            res = run_scenario(workload.scenario(w), tmp, progress=False, data=data)
            fedsim_s = time.perf_counter() - t0
            walls = [row["wall_time_s"] for row in _walls(tmp)]
        t0 = time.perf_counter()
        final = limit_programs.fused(w, data, 132)
        limit_s = time.perf_counter() - t0
        agree = torch.allclose(res.final_params, final, rtol=1e-4, atol=1e-5)
        print(f"fedsim {fedsim_s:.2f} s (rounds {walls}); fused program {limit_s:.2f} s; "
              f"final models agree: {agree}")


def fresh_buffer(clients: int, chunk: int = 132) -> None:
    src, g = torch.randn(chunk, D_MLP), torch.randn(D_MLP)

    def fill(out: torch.Tensor) -> float:
        t0 = time.perf_counter()
        for i in range(0, clients, chunk):
            torch.sub(src[: min(chunk, clients - i)], g, out=out[i : i + chunk])
        return time.perf_counter() - t0

    for _ in range(2):
        print(f"fresh buffer: {fill(torch.empty(clients, D_MLP)):.2f} s")
    out = torch.empty(clients, D_MLP)
    out.zero_()
    print(f"reused buffer: {fill(out):.2f} s  ({clients} x {D_MLP} float32)")


def update_layout(m: int = 132, repeats: int = 50) -> None:
    k, n, fan_in, fan_out = 61, 208, 60, 200  # the benchmark MLP's first layer, stored
    p, t0_ = torch.randn(m, k, n), torch.randn(k, n)
    w0 = t0_[:fan_in, :fan_out].T.contiguous()
    out = torch.empty(m, D_MLP)
    view = out[:, : fan_out * fan_in].unflatten(-1, (fan_out, fan_in))

    def before() -> None:
        torch.sub(p[:, :fan_in, :fan_out].transpose(1, 2), w0, out=view)

    def now() -> None:  # in place: the engine's chunk parameters are dead after training
        p.sub_(t0_)
        view.copy_(p[:, :fan_in, :fan_out].transpose(1, 2))

    for name, fn in (("before: subtract on the strided views", before),
                     ("now: subtract in place, then copy", now)) * 2:
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        print(f"{name}: {(time.perf_counter() - t0) / repeats * 1e3:.3f} ms per chunk of {m}")


def write_updates(clients: int) -> None:
    import numpy as np

    import fedsim.fastmlp as fastmlp
    from fedsim.runners import FederatedRun

    w = workload.Workload(clients=clients, rounds=3, samples_per_client=10)
    with tempfile.TemporaryDirectory() as tmp:
        run = FederatedRun(workload.scenario(w), Path(tmp), data=workload.make_data(w))
        ids, out = np.arange(clients), run.workspace.rows(clients)
        spent = [0.0]
        inner = fastmlp.FusedMLP._write_updates

        def timed(self, *args):
            t0 = time.perf_counter()
            inner(self, *args)
            spent[0] += time.perf_counter() - t0

        fastmlp.FusedMLP._write_updates = timed
        for r in range(4):
            spent[0] = 0.0
            t0 = time.perf_counter()
            run.trainer.train(run.params, ids, lr=w.lr, epochs=1, batch_size=w.batch_size,
                              mu=0.0, gen=run.gens["training"], buffers=None, out=out)
            if r:  # the first is a warm-up
                print(f"training {time.perf_counter() - t0:.3f} s, of which writing the "
                      f"updates {spent[0]:.3f} s ({clients} clients)")
        fastmlp.FusedMLP._write_updates = inner


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=["dsgd", "fused-limit", "fresh-buffer", "update-layout",
                                     "write-updates"])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.check == "dsgd":
        dsgd(a.nodes)
    elif a.check == "fused-limit":
        fused_limit(a.clients or 100_000)
    elif a.check == "fresh-buffer":
        fresh_buffer(a.clients or 100_000)
    elif a.check == "update-layout":
        update_layout()
    else:
        write_updates(a.clients or 20_000)


if __name__ == "__main__":
    main()
