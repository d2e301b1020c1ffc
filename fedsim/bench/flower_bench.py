"""fedsim vs Flower's simulation engine (Ray backend): time per FedAvg round, same final model.

Both sides run the shared workload (``fedsim.bench.workload``): FedAvg over an
MLP 60-200-10, every client trains every round, 1 local epoch of plain SGD with
batch 10 on its 50 samples, sample-count weighted averaging.

- **fedsim**: ``run_scenario`` of the workload's scenario, ``--repeats`` times,
  on ``--threads`` torch threads (default: the runner's own choice,
  ``FEDSIM_TORCH_THREADS`` or 1; Flower's side uses every core, one Ray actor each);
  a run's per-round time is the median of its rounds' ``wall_time_s`` in
  ``timing.csv`` (sampling, clock, training of the whole cohort, aggregation;
  the last round also evaluates once) over rounds 2..R, and the figure is the
  median over runs.
- **Flower**: ``flwr.simulation.run_simulation`` with a ``ServerApp`` running the
  Message-API ``FedAvg`` strategy (``fraction_train=1.0``) and a ``ClientApp``
  that trains a torch ``nn.Module`` with ``torch.optim.SGD`` as a Flower user
  would write it, one Ray actor per core. It runs in a child process with a
  time limit, inside a temporary directory that holds Ray's session files and
  Flower's home; every process it started is stopped and the directory removed.
  Start-up runs from launching that process to the first ClientApp starting its
  local training (the clients report that wall-clock time in their metrics);
  round 1 runs from there, round r >= 2 from the end of the previous
  ``aggregate_train``, to the end of its own; the per-round figure is the
  median over rounds 2..R.

Round 1 is reported apart on both sides (``steady_round_s``): it carries one-off
costs (fedsim's first vmapped call; Flower's Ray workers importing torch and the
client code).

The Flower clients visit their samples in exactly the order fedsim's clients do:
``sample_orders`` replays fedsim's draws (the cohort from the *sampling* stream,
its arrival order from fedsim's own clock, the shuffles from the *training*
stream with the same torch ops as ``Population._draw_orders``), and each client
looks up its order by its partition id and the server round. So the two final
global models must agree up to float32 summation order.

Code: this module (the CLI, the fedsim side, the matching sample orders, launching the
child and reading its figures); :mod:`fedsim.bench.flower_child` (what runs inside the
child: the ServerApp and ClientApp); :mod:`fedsim.bench.processes` (the child's
environment, stopping it and reaping what it left behind).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from fedsim.bench import common
from fedsim.bench.flower_child import DATA, FINAL, LOG, ORDERS, RAY_DIR, RESULT, SPEC
from fedsim.bench.processes import child_env, reap, stop_group, temp_root
from fedsim.bench.workload import Workload
from fedsim.errors import FedsimError

# Final models "agree" when allclose with these tolerances (float32 sums in another order).
AGREE_ATOL = 1e-4
AGREE_RTOL = 1e-4
# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedsim bench flower``."""
    parser.add_argument("--clients", type=int, default=1000,
                        help="clients, all trained every round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds (default 3)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fedsim runs; the median is reported (default 3)")
    parser.add_argument("--flower-timeout", type=common.positive_float, default=900.0,
                        metavar="S",
                        help="seconds before the Flower run is stopped (default 900)")
    parser.add_argument("--threads", type=int, default=None, metavar="T",
                        help="torch threads of fedsim's runs (sets FEDSIM_TORCH_THREADS for "
                             "them); default: the runner's choice (FEDSIM_TORCH_THREADS, else 1)")
    parser.add_argument("--flower-client-cpus", type=common.positive_float, default=1.0,
                        metavar="CPUS",
                        help="Ray CPUs per Flower client; Ray gets all cores, so this sets "
                             "how many clients train at once (default 1)")
    parser.add_argument("--device", default="cpu",
                        help="where fedsim's side trains: cpu (default), cuda, cuda:N or auto; "
                             "Flower's clients train on CPU in their Ray actors")


def run(args: argparse.Namespace, log: TextIO) -> dict:
    """Run both sides on the workload, print a report to ``log`` and return the figures.

    Args:
        args: parsed options (see ``add_arguments``).
        log: where the readable report goes (the CLI passes stderr).

    Returns:
        The figures: per-round times of both sides, Flower's start-up, their ratio,
        and the agreement of the final models.
    """
    if args.clients < 2 or args.rounds < 1 or args.repeats < 1:
        raise FedsimError("fedsim bench flower: need --clients >= 2, --rounds >= 1, --repeats >= 1")
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise FedsimError(f"fedsim bench flower: --threads must be >= 1, got {threads}")
    device = common.bench_device(getattr(args, "device", "cpu"))
    w = Workload(clients=args.clients, rounds=args.rounds)
    print(f"fedsim bench flower: FedAvg, MLP {w.dim}-{w.hidden}-{w.classes}, {w.clients} clients "
          f"x {w.samples_per_client} samples, all clients every round, {w.rounds} rounds, "
          f"{w.epochs} epoch(s) of SGD (batch {w.batch_size}, lr {w.lr}), "
          f"{os.cpu_count()} CPU core(s)", file=log, flush=True)

    fs = run_fedsim(w, args.repeats, log, threads=threads, device=device)
    fl = run_flower(w, timeout_s=args.flower_timeout, client_cpus=args.flower_client_cpus,
                    log=log)

    figures: dict[str, Any] = {
        "bench": "flower", "clients": w.clients, "rounds": w.rounds, "repeats": args.repeats,
        "fedsim_per_round_s": fs["per_round_s"],
        "fedsim_per_round_runs_s": fs["per_round_runs_s"],
        "fedsim_first_round_s": fs["first_round_s"],
        "fedsim_setup_s": fs["setup_s"],
        "fedsim_total_s": fs["total_s"],
        "fedsim_threads": fs["threads"],
        "flower_startup_s": fl.get("startup_s"),
        "flower_per_round_s": fl.get("per_round_s"),
        "flower_first_round_s": fl.get("first_round_s"),
        "flower_round_s": fl.get("round_s"),
        "flower_shutdown_s": fl.get("shutdown_s"),
        "flower_total_s": fl.get("total_s"),
        "ratio_flower_over_fedsim_per_round": None,
        "max_abs_diff_final_model": None,
        "models_agree": False,
        "flower_leftover_processes_killed": fl.get("leftovers_killed", 0),
    }
    if fl.get("error"):
        figures["flower_error"] = fl["error"]
    if fl.get("per_round_s") is not None and fs["per_round_s"] > 0:
        figures["ratio_flower_over_fedsim_per_round"] = fl["per_round_s"] / fs["per_round_s"]
    if fl.get("final_params") is not None:
        diff, agree = compare_models(fs["final_params"], fl["final_params"])
        figures["max_abs_diff_final_model"] = diff
        figures["models_agree"] = agree
    _report(figures, log)
    return figures


def _report(f: dict, log: TextIO) -> None:
    """Print the readable summary of the figures, saying what each number covers."""
    def sec(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4g} s"

    rounds = f["flower_round_s"]
    lines = [
        "",
        "A round's time is the median over rounds 2..R (round 1 alone when R = 1); round 1 "
        "is shown on its own because both sides pay one-off costs in it.",
        f"fedsim  per round    {sec(f['fedsim_per_round_s'])}  (wall_time_s rows of timing.csv: "
        "sampling, simulated clock, training the whole cohort, aggregation; the last round "
        f"also evaluates once; median over {f['repeats']} run(s); "
        f"{f['fedsim_threads']} torch thread(s))",
        f"        first round  {sec(f['fedsim_first_round_s'])}",
        f"        set-up       {sec(f['fedsim_setup_s'])}  (run wall time minus its rounds: "
        "model, data to tensors, clock, run directory)",
        f"Flower  start-up     {sec(f['flower_startup_s'])}  (launch of the Flower process to "
        "the first ClientApp starting its local training: interpreter and imports, "
        "SuperNode registration, Ray start, actor pool, first message delivered)",
        f"        per round    {sec(f['flower_per_round_s'])}  (end of the previous "
        "aggregate_train to the end of this one: messages to every node, ClientApps in the "
        "Ray actors, replies, aggregation)",
        f"        first round  {sec(f['flower_first_round_s'])}  (from the end of start-up; "
        "includes the Ray workers' first import of torch and loading the data)",
        "        all rounds   " + ("n/a" if not rounds else
                                  ", ".join(f"{r:.3f}" for r in rounds) + " s"),
        f"        shutdown     {sec(f['flower_shutdown_s'])}  (last aggregation to process "
        "exit: Ray shutdown)",
    ]
    ratio = f["ratio_flower_over_fedsim_per_round"]
    lines.append("ratio   Flower / fedsim per round = "
                 + ("n/a" if ratio is None else f"{ratio:.1f}x"))
    lines.append(f"final models: max |diff| = {f['max_abs_diff_final_model']}, agree "
                 f"(allclose atol={AGREE_ATOL}, rtol={AGREE_RTOL}) = {f['models_agree']}")
    if f.get("flower_error"):
        lines.append(f"Flower FAILED: {f['flower_error']}")
    print("\n".join(lines), file=log, flush=True)


def compare_models(a: Any, b: Any) -> tuple[float, bool]:
    """Max absolute difference of two flat parameter vectors and whether they are allclose."""
    import torch

    ta = torch.as_tensor(np.asarray(a), dtype=torch.float32)
    tb = torch.as_tensor(np.asarray(b), dtype=torch.float32)
    if ta.shape != tb.shape:
        return math.inf, False
    diff = float((ta - tb).abs().max()) if ta.numel() else 0.0
    return diff, bool(torch.allclose(tb, ta, atol=AGREE_ATOL, rtol=AGREE_RTOL))


# ------------------------------------------------------------------- fedsim
def run_fedsim(w: Workload, repeats: int, log: TextIO, threads: int | None = None,
               device: str = "cpu") -> dict:
    """Time ``run_scenario`` on the workload ``repeats`` times.

    Args:
        w: the workload.
        repeats: number of runs (>= 1).
        log: progress lines go here.
        threads: torch threads of the runs, through ``FEDSIM_TORCH_THREADS`` (restored
            afterwards, as is the process's torch thread count); None leaves the
            runner's own choice.
        device: where the runs train.

    Returns:
        ``per_round_s`` (median over runs of each run's ``steady_round_s``),
        ``per_round_runs_s``, ``first_round_s``, ``setup_s`` and ``total_s`` (medians),
        ``threads`` (the torch threads the runs used), and ``final_params`` (``[d]`` CPU
        tensor of the first run; every run must give the same vector bit for bit).
    """
    with common.torch_threads(threads):
        return _run_fedsim(w, repeats, log, device)


def _run_fedsim(w: Workload, repeats: int, log: TextIO, device: str = "cpu") -> dict:
    """``run_fedsim`` under the thread setting already in place."""
    import torch

    from fedsim.bench import workload
    from fedsim.runners import run_scenario

    data = workload.make_data(w)
    sc = workload.scenario(w, device)
    per_round, first, setups, totals, final = [], [], [], [], None
    used_threads = None
    for i in range(repeats):
        with tempfile.TemporaryDirectory(prefix="fedsim_bench_") as tmp:
            start = time.perf_counter()
            res = run_scenario(sc, Path(tmp) / "run", progress=False, data=data)
            total = time.perf_counter() - start
            rounds = _round_walls(Path(tmp) / "run" / "timing.csv")
        used_threads = torch.get_num_threads()  # what the runner configured
        per_round.append(steady_round_s(rounds))
        first.append(rounds[0])
        setups.append(total - sum(rounds))
        totals.append(total)
        if final is None:
            final = res.final_params
        elif not torch.equal(final, res.final_params):
            print("  warning: fedsim runs gave different final models", file=log)
        print(f"  fedsim run {i + 1}/{repeats}: {total:.3f} s total, rounds "
              f"{', '.join(f'{r:.4f}' for r in rounds)} s", file=log, flush=True)
    return {"per_round_s": statistics.median(per_round), "per_round_runs_s": per_round,
            "first_round_s": statistics.median(first), "setup_s": statistics.median(setups),
            "total_s": statistics.median(totals), "threads": used_threads,
            "final_params": final}


def steady_round_s(rounds: list[float]) -> float:
    """Median duration of rounds 2..R (round 1 alone when R = 1).

    Round 1 carries one-off costs on both sides (fedsim: the first vmapped call;
    Flower: Ray workers importing torch and the client code, first deserialization),
    so it is reported on its own as the first round, not as a typical round.
    """
    return statistics.median(rounds[1:] if len(rounds) > 1 else rounds)


def _round_walls(timing_csv: Path) -> list[float]:
    """``wall_time_s`` of every round in a run's timing.csv."""
    with open(timing_csv, newline="") as fh:
        return [float(row["wall_time_s"]) for row in csv.DictReader(fh)]


# ----------------------------------------------------- matching sample order
def draw_local_orders(counts: list[int], epochs: int, gen: Any) -> Any:
    """Shuffles of a cohort as ``Population._draw_orders`` draws them, as local positions.

    One ``torch.rand(m, max_n)`` per epoch from ``gen``; keys of padding positions
    are set to 2 so they sort last; the stable argsort of a row is the order in
    which client i visits its own samples (positions ``< counts[i]``).

    Args:
        counts: samples of each cohort member, in the cohort's order.
        epochs: local epochs.
        gen: the training stream (a ``torch.Generator``), advanced as fedsim advances it.

    Returns:
        ``[epochs, m, max_n]`` int64 tensor; row i's first ``counts[i]`` entries are a
        permutation of ``range(counts[i])``.
    """
    import torch

    m, max_n = len(counts), max(counts, default=0)
    pad = torch.arange(max_n) >= torch.tensor(counts, dtype=torch.long)[:, None]
    out = []
    for _ in range(epochs):
        keys = torch.rand(m, max_n, generator=gen, device=gen.device).cpu()
        out.append(keys.masked_fill_(pad, 2.0).argsort(dim=1, stable=True))
    return torch.stack(out) if out else torch.zeros(0, m, max_n, dtype=torch.long)


def sample_orders(w: Workload) -> np.ndarray:
    """The local sample order of every client in every round of fedsim's run of ``w``.

    Replays what ``run_scenario`` draws: the cohort from the *sampling* stream,
    the arrival order (``schedule.completed``) from fedsim's own clock, and the
    shuffles of the cohort, in that order, from the *training* stream.

    Args:
        w: the workload.

    Returns:
        ``[rounds, clients, epochs, max_n]`` int32; entry ``[r, c, e, :n_c]`` is the
        order client c visits its samples in epoch e of round r+1, -1 where a client
        did not train or beyond its sample count.
    """
    from fedsim.algorithms import build_algorithm
    from fedsim.bench import workload
    from fedsim.runners import build_clock
    from fedsim.seeding import numpy_rng, torch_generator

    sc = workload.scenario(w)
    if sc.network.policy != "all" or sc.clients_per_round > sc.data.num_clients:
        raise ValueError("sample_orders replays the 'all' policy with clients_per_round <= clients")
    sizes = np.array([w.samples_per_client] * w.clients, dtype=np.int64)
    d = sum(p.numel() for p in workload.make_model(w).parameters())
    alg = build_algorithm(sc.algorithm)
    clock = build_clock(sc, Path.cwd())
    sampling = numpy_rng(sc.seed, "sampling")
    gen = torch_generator(sc.seed, "training")
    out = np.full((w.rounds, w.clients, w.epochs, int(sizes.max())), -1, dtype=np.int32)
    for rnd in range(1, w.rounds + 1):
        available = np.asarray(clock.available(), dtype=np.int64)
        m = min(sc.clients_per_round, len(available))
        selected = sampling.choice(available, size=m, replace=False) if m else available[:0]
        sched = clock.run_round(rnd, selected.tolist(), (sizes[selected] * w.epochs).tolist(),
                                4 * d, alg.uplink.nbytes(d), k=None)
        done = list(sched.completed)
        if not done:
            continue
        counts = [int(sizes[c]) for c in done]
        orders = draw_local_orders(counts, w.epochs, gen).numpy()  # [E, m, max_n]
        for i, (c, n) in enumerate(zip(done, counts, strict=True)):
            out[rnd - 1, c, :, :n] = orders[:, i, :n]
    return out


# ------------------------------------------------------------------- Flower
def run_flower(w: Workload, timeout_s: float, client_cpus: float, log: TextIO) -> dict:
    """Run Flower's simulation of ``w`` in a child process and collect its figures.

    Args:
        w: the workload.
        timeout_s: the child is stopped after this many seconds.
        client_cpus: Ray CPUs per client (Ray is given every core).
        log: progress lines go here.

    Returns:
        ``startup_s``, ``round_s``, ``per_round_s``, ``shutdown_s``, ``total_s``,
        ``final_params`` (numpy ``[d]``), ``leftovers_killed``; or ``error`` with
        whatever was measured when the run failed.
    """
    with tempfile.TemporaryDirectory(prefix="fl", dir=temp_root(),
                                     ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        write_flower_inputs(work, w, timeout_s, client_cpus)
        print(f"  Flower: launching run_simulation with {w.clients} SuperNodes (Ray backend) ...",
              file=log, flush=True)
        out = _launch_child(work, timeout_s)
        if out.get("final_params") is None and not out.get("error"):
            out["error"] = "the Flower run wrote no final model"
        if out.get("error"):
            tail = _tail(work / LOG, 25)
            print(f"  Flower failed: {out['error']}\n  --- last lines of its log ---\n{tail}",
                  file=log, flush=True)
        elif out.get("round_s"):
            print(f"  Flower: start-up {out['startup_s']:.2f} s, rounds "
                  f"{', '.join(f'{r:.3f}' for r in out['round_s'])} s, shutdown "
                  f"{out['shutdown_s']:.2f} s", file=log, flush=True)
        if out.get("leftovers_killed"):
            print(f"  Flower: stopped {out['leftovers_killed']} leftover process(es)",
                  file=log, flush=True)
    if work.exists():  # a file a dying process still held open
        shutil.rmtree(work, ignore_errors=True)
    return out


def write_flower_inputs(work: Path, w: Workload, timeout_s: float, client_cpus: float) -> None:
    """Write what the Flower child reads into ``work``: spec, data, sample orders, folders.

    Args:
        work: an empty directory (the run's temporary directory).
        w: the workload.
        timeout_s: the Flower run's time limit (also the strategy's reply timeout).
        client_cpus: Ray CPUs per client.
    """
    from fedsim.bench import workload

    data = workload.make_data(w)
    for sub in (RAY_DIR, "flwr_home", "tmp"):
        (work / sub).mkdir()
    width = max(len(ix) for ix in data.client_indices)
    idx = np.zeros((w.clients, width), dtype=np.int64)
    for c, ix in enumerate(data.client_indices):
        idx[c, : len(ix)] = ix
    np.savez(work / DATA, x=data.x_train, y=data.y_train, idx=idx,
             counts=np.array([len(ix) for ix in data.client_indices]))
    np.save(work / ORDERS, sample_orders(w))
    (work / SPEC).write_text(json.dumps({
        "workload": asdict(w), "client_cpus": client_cpus, "timeout_s": timeout_s,
        "num_cpus": os.cpu_count() or 1,
    }))


def _launch_child(work: Path, timeout_s: float) -> dict:
    """Run ``_flower_child`` in a new session; stop it at the timeout; reap leftovers."""
    import psutil

    launch = time.time()
    code = "import sys; from fedsim.bench.flower_child import main; main(sys.argv[1])"
    seen: dict[int, float] = {}  # pid -> create_time of every descendant seen
    error = None
    with open(work / LOG, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-c", code, str(work)], env=child_env(work),
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=work)
        try:
            me = psutil.Process(proc.pid)
            seen[proc.pid] = me.create_time()
        except psutil.NoSuchProcess:
            me = None
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None:
            if me is not None:
                try:
                    for ch in me.children(recursive=True):
                        seen.setdefault(ch.pid, ch.create_time())
                except psutil.NoSuchProcess:
                    pass
            if time.monotonic() > deadline:
                error = f"timed out after {timeout_s:.0f} s"
                break
            time.sleep(0.2)
        if error:
            stop_group(proc)
    exited = time.time()
    killed = reap(seen, str(work) + os.sep)
    out: dict[str, Any] = {"leftovers_killed": killed, "total_s": exited - launch}
    if error is None and proc.returncode != 0:
        error = f"the Flower process exited with code {proc.returncode}"
    result_path = work / RESULT
    if result_path.exists():
        marks = json.loads(result_path.read_text())
        out.update(_flower_figures(marks, launch, exited))
        if marks.get("error") and error is None:
            error = marks["error"]
    if (work / FINAL).exists() and error is None:
        out["final_params"] = np.load(work / FINAL)
    if error:
        out["error"] = error
    return out


def _flower_figures(marks: dict, launch: float, exited: float) -> dict:
    """Start-up, round durations and shutdown from the child's wall-clock marks.

    Start-up ends when the first ClientApp begins its local training (Ray, its
    actors and the first message delivered); round 1 runs from there to the end
    of its ``aggregate_train``, round r >= 2 from the end of the previous one.
    """
    ends = marks.get("round_end", [])
    first = marks.get("first_client_start")
    out: dict[str, Any] = {"marks": marks}
    if first is None:
        return out
    out["startup_s"] = first - launch
    if ends:
        bounds = [first, *ends]
        rounds = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        out["round_s"] = rounds
        out["first_round_s"] = rounds[0]
        out["per_round_s"] = steady_round_s(rounds)
        out["shutdown_s"] = exited - ends[-1]
    return out


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ('' if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


