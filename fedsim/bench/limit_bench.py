"""fedsim vs the limit: a minimal hand-written vmapped torch program doing the same arithmetic.

The fedsim side is the whole simulator (``run_scenario`` of the shared workload:
clock, sampling, training, aggregation, metrics files, final evaluation). The
limit side is what an expert would write with no simulator at all: the
parameters of all N clients stacked, ``vmap(grad(loss))`` over them, the same
minibatches (the same sampling permutation and the same shuffles, drawn from the
same seeded streams as fedsim), a weighted average, R rounds, no metrics.

A third side, ``limit_chunked`` (skip with ``--no-chunked-limit``), is the same
program vmapping fedsim's CPU chunk of clients at a time (the chunk of fedsim's
generic ``vmap`` engine) and summing the weighted models chunk by chunk: a tuned
vmap program, while ``limit`` is the one the goal is stated against. The report
names the engine fedsim trains this model with (``Population.engine``: the
fused Linear/ReLU engine for this MLP) and its chunk.

All sides run in one process, interleaved per repeat (fedsim, limit, ...,
fedsim, limit, ...), and the medians are compared; each side's minor page faults
(fresh memory the kernel had to map and zero) are reported too, as they explain
much of the difference. The final models are checked to agree (allclose). A
separate instrumented fedsim run breaks its time down into setup and per-round
parts (clock, training, aggregation, evaluation, file writing).

Usage:
    fedsim bench limit [--clients 1000] [--rounds 3] [--repeats 5] [--threads 1[,2]]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import numpy as np

from fedsim.bench import common, limit_programs, workload
from fedsim.errors import FedsimError

# Tolerances of the final-model check: both sides do the same float32 arithmetic,
# but in a different order (masked vs plain mean, update-then-average vs average).
RTOL, ATOL = 1e-4, 1e-5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``fedsim bench limit``."""
    parser.add_argument("--clients", type=int, default=1000, help="clients N (all train)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds R")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per side")
    parser.add_argument("--threads", default=None,
                        help="torch threads: one number, or a comma list (e.g. 1,2) to compare "
                             "settings interleaved; default: fedsim's own choice "
                             "(FEDSIM_TORCH_THREADS, else 1 on CPU)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the instrumented fedsim run that splits its time")
    parser.add_argument("--no-chunked-limit", action="store_true",
                        help="skip the third side: the limit program vmapping fedsim's chunk "
                             "of clients at a time")
    common.add_device_argument(parser)


def run(args: argparse.Namespace, log: TextIO) -> dict:
    """Time fedsim and the limit program side by side; print the report to ``log``.

    Returns:
        ``{"bench": "limit", "clients", "rounds", "fedsim_s", "limit_s",
        "ratio_fedsim_over_limit", "models_agree", ...}``; with several thread
        settings the main figures are those of the first, and ``"by_threads"``
        holds all of them.
    """
    import torch

    if args.clients < 1 or args.rounds < 1 or args.repeats < 1:
        raise FedsimError("--clients, --rounds and --repeats must be >= 1")
    thread_list = _parse_threads(args.threads)
    device = common.bench_device(args.device)
    w = workload.Workload(clients=args.clients, rounds=args.rounds)
    data = workload.make_data(w)
    sides: dict[str, Callable[[workload.Workload, Any], Any]] = {
        "fedsim": lambda w, data: _fedsim_side(w, data, device),
        "limit": lambda w, data: limit_programs.vmapped(w, data, device=device)}
    chunk = None
    if not args.no_chunked_limit:
        chunk = _fedsim_chunk(w, data, device)
        sides["limit_chunked"] = lambda w, data: limit_programs.vmapped(w, data, chunk, device)
    engine, engine_chunk = _fedsim_engine(w, data, device)
    if engine == "fused_mlp":  # like for like: a hand-written bmm program, fedsim's chunk
        sides["limit_fused"] = lambda w, data: limit_programs.fused(w, data, engine_chunk,
                                                                   device)
    print(f"limit bench: {w.clients} clients x {w.samples_per_client} samples, {w.rounds} rounds, "
          f"MLP {w.dim}-{w.hidden}-{w.classes}, batch {w.batch_size}, {w.epochs} epoch(s); "
          f"{args.repeats} interleaved repeats; torch {torch.__version__}, "
          f"{common.device_name(device)}", file=log)
    print(f"  fedsim trains with its {engine!r} engine, {engine_chunk} clients per chunk on "
          f"{device}", file=log)
    print("  limit: all clients in one vmapped batch (the straightforward program)"
          + (f"; limit_chunked: the same, {chunk} clients at a time (fedsim's vmap chunk), "
             "summing the weighted models per chunk" if chunk else "")
          + ("; limit_fused: the MLP's SGD by hand as bmm products, fedsim's fused chunk "
             "at a time" if "limit_fused" in sides else ""), file=log)

    times: dict[tuple[int | None, str], list[float]] = defaultdict(list)
    faults: dict[tuple[int | None, str], list[int]] = defaultdict(list)
    last: dict[tuple[int | None, str], Any] = {}
    with common.torch_threads(thread_list[0]):  # warm-up: imports, vmap tracing, allocator
        for fn in sides.values():
            fn(w, data)
    for _ in range(args.repeats):
        for threads in thread_list:
            with common.torch_threads(threads):
                for side, fn in sides.items():
                    faults0 = _minor_faults()
                    dt, out = common.timed(lambda fn=fn: fn(w, data))
                    times[threads, side].append(dt)
                    faults[threads, side].append(_minor_faults() - faults0)
                    last[threads, side] = out

    by_threads = {}
    for threads in thread_list:
        with common.torch_threads(threads):
            fedsim_params, source = _fedsim_final_params(last[threads, "fedsim"], w, data)
        med = {side: statistics.median(times[threads, side]) for side in sides}
        row: dict[str, Any] = {}
        print(f"threads {_label(threads)}: median wall time of one run (and every repeat)",
              file=log)
        for side in sides:
            final = fedsim_params if side == "fedsim" else last[threads, side].cpu()
            diff = float((fedsim_params - final).abs().max())
            agree = bool(torch.allclose(fedsim_params, final, rtol=RTOL, atol=ATOL))
            fault_mb = statistics.median(faults[threads, side]) * _PAGE_MB
            row[f"{side}_s"] = round(med[side], 4)
            row[f"{side}_page_faults_mb"] = round(fault_mb, 1)
            if side != "fedsim":
                row[f"ratio_fedsim_over_{side}"] = round(med["fedsim"] / med[side], 3)
                row[f"models_agree_{side}"] = agree
                row[f"max_abs_diff_{side}"] = diff
            ratio = "" if side == "fedsim" else f"  fedsim/{side} = {med['fedsim'] / med[side]:.3f}"
            check = "" if side == "fedsim" else (
                f"  final model {'agrees' if agree else 'DIFFERS'} (max |diff| {diff:.1e})")
            print(f"  {side:14s} {med[side]:7.3f} s {_fmt_times(times[threads, side])}  "
                  f"fresh pages {fault_mb:5.0f} MiB{ratio}{check}", file=log)
        print(f"  (fedsim's final model from {source}; allclose rtol {RTOL}, atol {ATOL}; fresh "
              "pages = minor page faults, memory the kernel had to hand out and zero)", file=log)
        by_threads[_label(threads)] = row

    first = by_threads[_label(thread_list[0])]
    figures: dict[str, Any] = {
        "bench": "limit", "clients": w.clients, "rounds": w.rounds,
        "fedsim_s": first["fedsim_s"], "limit_s": first["limit_s"],
        "ratio_fedsim_over_limit": first["ratio_fedsim_over_limit"],
        "models_agree": all(v for k, v in first.items() if k.startswith("models_agree")),
        "threads": _label(thread_list[0]), "repeats": args.repeats,
        "engine": engine, "engine_chunk": engine_chunk, "device": common.device_name(device),
    }
    if "limit_fused" in sides:
        figures.update(limit_fused_s=first["limit_fused_s"],
                       ratio_fedsim_over_limit_fused=first["ratio_fedsim_over_limit_fused"])
    if chunk:
        figures.update(limit_chunked_s=first["limit_chunked_s"], limit_chunk=chunk,
                       ratio_fedsim_over_limit_chunked=first["ratio_fedsim_over_limit_chunked"])
    if len(thread_list) > 1:
        figures["by_threads"] = {k: {kk: vv for kk, vv in v.items() if kk.endswith("_s")}
                                 for k, v in by_threads.items()}
    if not args.no_breakdown:
        with common.torch_threads(thread_list[0]):
            breakdown = _breakdown(w, data, device)
        _print_breakdown(breakdown, w.rounds, log)
        figures["breakdown_s"] = {k.strip(): round(v, 4) for k, v in breakdown.items()}
    return figures


def _fedsim_engine(w: workload.Workload, data, device: str) -> tuple[str, int]:
    """fedsim's training engine for this workload's model on ``device``, and its chunk of
    clients."""
    import torch

    from fedsim.population import Population

    pop = Population(workload.make_model(w), torch.from_numpy(data.x_train[:1]),
                     torch.from_numpy(data.y_train[:1]), device=device)
    chunk = (pop._fused_chunk_size(w.batch_size) if pop.engine == "fused_mlp"
             else pop._chunk_size(w.batch_size))
    return pop.engine, min(w.clients, chunk)


def _fedsim_chunk(w: workload.Workload, data, device: str) -> int:
    """How many clients fedsim's generic (vmap) engine takes at once for this workload."""
    import torch

    from fedsim.population import Population

    pop = Population(workload.make_model(w), torch.from_numpy(data.x_train[:1]),
                     torch.from_numpy(data.y_train[:1]), device=device)
    return min(w.clients, pop._chunk_size(w.batch_size))


# --------------------------------------------------------------------------- the two sides
def _fedsim_side(w: workload.Workload, data, device: str = "cpu") -> Any:
    """One full fedsim run of the workload into a fresh temporary directory."""
    from fedsim.runners import run_scenario

    with tempfile.TemporaryDirectory(prefix="fedsim_limit_") as tmp:
        return run_scenario(workload.scenario(w, device), tmp, progress=False, data=data)


def _fedsim_final_params(result: Any, w: workload.Workload, data):
    """fedsim's final global parameters: ``RunResult.final_params`` if the runner has it.

    Otherwise the run is replayed with fedsim's own pieces (Population, the same
    streams, the FedAvg aggregator and server step), and the replay's test loss is
    checked against the run's summary so that the replay stands for the run.

    Returns:
        ``(flat [d] tensor, where it came from)``.
    """
    import torch

    params = getattr(result, "final_params", None)
    if params is not None:
        return torch.as_tensor(params).detach().reshape(-1).cpu(), "RunResult.final_params"
    params, test_loss = _replay_fedsim(w, data)
    ran = result.summary.get("final_test_loss")
    if ran is None or abs(test_loss - ran) > 1e-6 * max(1.0, abs(ran)):
        raise RuntimeError(f"the fedsim replay does not match the run (test loss {test_loss} "
                           f"vs {ran}); the limit bench cannot check the final models")
    return params, "replay of the run (test loss matches)"


def _replay_fedsim(w: workload.Workload, data):
    """The runner's loop for the workload (star network, everyone completes, arrival ties)."""
    import torch

    from fedsim.algorithms import build_algorithm
    from fedsim.population import Population
    from fedsim.seeding import numpy_rng, torch_generator
    from fedsim.stages.base import Ctx

    sc = workload.scenario(w)
    alg = build_algorithm(sc.algorithm)
    pop = Population(workload.make_model(w), torch.from_numpy(data.x_train),
                     torch.from_numpy(data.y_train))
    client_idx = [torch.from_numpy(ix) for ix in data.client_indices]
    params = pop.flat_params()
    sampling = numpy_rng(sc.seed, "sampling")
    gen = torch_generator(sc.seed, "training")
    for rnd in range(1, w.rounds + 1):
        done = sampling.choice(np.arange(w.clients), size=w.clients, replace=False).tolist()
        res = pop.train(params, [client_idx[c] for c in done], lr=alg.client.lr,
                        epochs=alg.client.epochs, batch_size=alg.client.batch_size,
                        mu=alg.client.mu, gen=gen)
        weights = res.num_samples.to(params.dtype)
        ctx = Ctx(step=rnd, senders=torch.tensor(done), weights=weights,
                  byzantine=torch.zeros(len(done), dtype=torch.bool), gen=gen)
        agg, _ = alg.aggregate.aggregate(res.updates, None, ctx)
        params, _ = alg.server.apply(params, agg, None)
    loss, _ = pop.evaluate(params, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    return params, loss


# --------------------------------------------------------------------------- breakdown
class Probe:
    """Accumulated wall time per label of wrapped callables, plus a few timestamps."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.marks: dict[str, float] = {}

    def wrap(self, label: str, fn: Callable, mark_first: str | None = None,
             mark_last: str | None = None) -> Callable:
        """``fn`` timed under ``label``; optionally stamp its first start / last end."""

        def wrapped(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            if mark_first is not None:
                self.marks.setdefault(mark_first, t0)
            try:
                return fn(*a, **kw)
            finally:
                t1 = time.perf_counter()
                self.totals[label] += t1 - t0
                if mark_last is not None:
                    self.marks[mark_last] = t1

        return wrapped


@contextlib.contextmanager
def patched_runner(probe: Probe) -> Iterator[None]:
    """Wrap the runner's collaborators with timers for the duration of the block."""
    import fedsim.algorithms
    import fedsim.models
    import fedsim.runners
    import fedsim.stages.numerics
    from fedsim.network.clock import FederatedClock
    from fedsim.population import Population
    from fedsim.population.index import ClientIndex
    from fedsim.results.records import RunWriter

    def timed_algorithm(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        alg = build_algorithm(cfg, *args, **kwargs)
        agg = "round: aggregation + server step"
        return dataclasses.replace(
            alg,
            uplink=alg.uplink._replace(update=probe.wrap(agg, alg.uplink.update)),
            aggregate=alg.aggregate._replace(aggregate=probe.wrap(agg, alg.aggregate.aggregate)),
            server=alg.server._replace(apply=probe.wrap(agg, alg.server.apply)),
        )

    build_algorithm = fedsim.algorithms.build_algorithm
    patches = [
        (fedsim.models, "build_model", probe.wrap("setup: model", fedsim.models.build_model)),
        (fedsim.runners, "build_clock", probe.wrap("setup: clock", fedsim.runners.build_clock)),
        (fedsim.algorithms, "build_algorithm", timed_algorithm),
        (Population, "__init__",
         probe.wrap("setup: population (data to tensors)", Population.__init__)),
        (FederatedClock, "available_ids",
         probe.wrap("round: clock", FederatedClock.available_ids, mark_first="rounds_start")),
        (FederatedClock, "run_round", probe.wrap("round: clock", FederatedClock.run_round)),
        (Population, "train", probe.wrap("round: training", Population.train)),
        (ClientIndex, "cohort", probe.wrap("round: cohort indices (CSR gather)",
                                           ClientIndex.cohort)),
        (fedsim.stages.numerics, "reject_nonfinite",
         probe.wrap("round: aggregation + server step", fedsim.stages.numerics.reject_nonfinite)),
        (Population, "_draw_orders", probe.wrap("  training: shuffles", Population._draw_orders)),
        (Population, "_dispatch", probe.wrap("  training: local SGD", Population._dispatch)),
        (Population, "evaluate", probe.wrap("round: evaluation", Population.evaluate)),
        (RunWriter, "append",
         probe.wrap("round: file writing", RunWriter.append, mark_last="rounds_end")),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


def _breakdown(w: workload.Workload, data, device: str = "cpu", repeats: int = 3
               ) -> dict[str, float]:
    """Median seconds per part of an instrumented fedsim run (totals over all rounds)."""
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        probe = Probe()
        with patched_runner(probe):
            t0 = time.perf_counter()
            _fedsim_side(w, data, device)
            t1 = time.perf_counter()
        parts = dict(probe.totals)
        start, end = probe.marks["rounds_start"], probe.marks["rounds_end"]
        setup_total, rounds_total = start - t0, end - start
        setup_known = sum(v for k, v in parts.items() if k.startswith("setup:"))
        round_known = sum(v for k, v in parts.items() if k.startswith("round:"))
        parts["setup: other (runner, writer, algorithm)"] = setup_total - setup_known
        parts["round: other (sampling, bookkeeping)"] = rounds_total - round_known
        parts["finish: summary, files"] = t1 - end
        parts["total"] = t1 - t0
        runs.append(parts)
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys}


def _print_breakdown(parts: dict[str, float], rounds: int, log: TextIO) -> None:
    """The breakdown as a table, setup first, then per-round parts (total and per round)."""
    total = parts["total"]
    print(f"fedsim time breakdown (instrumented run, median of 3; total {total:.3f} s):", file=log)
    prefixes = ("setup", "round", "finish")
    main = sorted((k for k in parts if k.startswith(prefixes)),
                  key=lambda k: (prefixes.index(k.split(":")[0]), k))
    subs = [k for k in parts if k.startswith("  ")]  # parts of "round: training"
    for k in main:
        v = parts[k]
        per = f"  ({1e3 * v / rounds:7.1f} ms/round)" if k.startswith("round") else ""
        print(f"  {k:44s} {v:8.4f} s {100 * v / total:5.1f}%{per}", file=log)
        if k == "round: training":
            for s in subs:
                print(f"    {s.strip():42s} {parts[s]:8.4f} s {100 * parts[s] / total:5.1f}%",
                      file=log)


# --------------------------------------------------------------------------- threads
def _parse_threads(text: str | None) -> list[int | None]:
    """``None`` -> [None] (fedsim's default); ``"1,2"`` -> [1, 2]."""
    if text is None:
        return [None]
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise FedsimError(f"--threads must be a number or a comma list, got {text!r}") from None
    if not values or min(values) < 1:
        raise FedsimError(f"--threads values must be >= 1, got {text!r}")
    return values


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4 / 1024


def _minor_faults() -> int:
    """Minor page faults of this process so far (each one is a fresh page touched)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _label(threads: int | None) -> str:
    """How a thread setting is named in the report."""
    if threads is not None:
        return str(threads)
    return f"default({os.environ.get('FEDSIM_TORCH_THREADS', '1')})"


def _fmt_times(ts: list[float]) -> str:
    """``[0.812, 0.799, ...]``."""
    return "[" + ", ".join(f"{t:.3f}" for t in ts) + "]"
