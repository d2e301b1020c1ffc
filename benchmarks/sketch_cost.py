"""Cost of one round of sketching next to the local training of that round, side by side.

    python benchmarks/sketch_cost.py                 # the tables in docs/sketching.md
    python benchmarks/sketch_cost.py --hidden 200    # the benchmark workload's width only

For each model width ``d`` (one per ``--hidden``: the benchmark workload of
``fedsim.bench.workload``, an MLP ``60-H-10``; ``H = 200`` is the workload itself,
``d = 14 210``; ``H = 1408`` scales it to ``d = 99 978 ~ 1e5``) one run measures, with one
torch thread:

- **local training**: one round of fedsim's population training (``Population.train``) for
  ``m = 100`` clients of the workload (50 samples each, 1 epoch, batch 10, SGD lr 0.05),
  all of them starting from the same global model;
- **sketch + de-sketch**, per operator (``b = d / ratio``): one round through the pipeline
  pieces of a run, ``sketch_uplink`` on the ``m`` client rows ``[m, d]`` and
  ``desketch_server`` on their mean ``[b] -> [d]``, each round with a fresh step (so a
  fresh operator, built from its round seed as in a run);
- the local top-k error-feedback baseline (``k = b / 2``, the same bytes as a width-b
  sketch), for reference.

Everything of one width is timed interleaved (each repeat runs every item once, after one
warm-up) and the median over repeats is printed with its ratio to the local training.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch

from fedsim.privacy.compress import desketch_server, sketch_uplink, topk_uplink
from fedsim.privacy.sketch import KINDS
from fedsim.stages.base import Ctx

TRAINING = "local training"


def _ctx(m: int, step: int) -> Ctx:
    return Ctx(step=step, senders=torch.arange(m), weights=torch.ones(m),
               byzantine=torch.zeros(m, dtype=torch.bool), gen=None)


def sketch_round(kind: str, x: torch.Tensor, b: int) -> Callable[[], None]:
    """One round of ``kind`` through the run's pieces: uplink on ``x [m, d]``, server on the
    mean. Every call is a new round (a new step, so a new operator)."""
    m, d = x.shape
    up, server = sketch_uplink(kind, b, seed=0), desketch_server(kind, b, seed=0)
    up_state, server_state = up.init(m, d), server.init(d)
    steps = itertools.count()

    def run() -> None:
        ctx = _ctx(m, next(steps))
        y, _ = up.update(x, up_state, ctx)  # [m, b]
        server.update(y.mean(dim=0), server_state, ctx)  # [d]

    return run


def topk_round(x: torch.Tensor, k: int) -> Callable[[], None]:
    """One round of local top-k with error feedback for the rows ``x [m, d]``."""
    stage = topk_uplink(k)
    m, d = x.shape
    state = stage.init(m, d)

    def run() -> None:
        stage.update(x, state, _ctx(m, 0))

    return run


def training_round(m: int, hidden: int) -> tuple[int, Callable[[], None]]:
    """(d, one round of local training of ``m`` clients) of the workload with ``hidden``."""
    from fedsim.bench import workload
    from fedsim.population import Population

    w = workload.Workload(clients=m, rounds=1, hidden=hidden)
    data = workload.make_data(w)
    pop = Population(workload.make_model(w), torch.from_numpy(data.x_train),
                     torch.from_numpy(data.y_train))
    clients = [torch.from_numpy(ix) for ix in data.client_indices]
    params = pop.flat_params()
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        pop.train(params, clients, lr=w.lr, epochs=w.epochs, batch_size=w.batch_size, mu=0.0,
                  gen=gen)

    return params.numel(), run


def timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, interleaved over ``repeats`` (after one warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(hidden: int, m: int, ratio: int, kinds: list[str], repeats: int,
          training: bool = True) -> tuple[int, dict[str, float]]:
    """(d, median seconds per item) for the workload with ``hidden`` units."""
    fns: dict[str, Callable[[], None]] = {}
    if training:
        d, fns[TRAINING] = training_round(m, hidden)
    else:
        d = 71 * hidden + 10  # 60-H-10: 60 H + H + 10 H + 10
    b = max(1, d // ratio)
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(1))  # [m, d]
    for kind in kinds:
        fns[kind] = sketch_round(kind, x, b)
    fns[f"topk_ef (k = {max(1, b // 2)})"] = topk_round(x, max(1, b // 2))
    return d, timed(fns, repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[200, 1408],
                   help="hidden units of the workload MLP 60-H-10, one table each "
                        "(default 200 = the workload, d = 14210; 1408: d = 99978)")
    p.add_argument("--m", type=int, default=100, help="clients per round (default 100)")
    p.add_argument("--ratio", type=int, default=100, help="b = d / ratio (default 100)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-training", action="store_true",
                   help="skip the local training (sketch timings only)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), m = {args.m} "
          f"clients, b = d / {args.ratio}, median of {args.repeats} interleaved repeats")
    for hidden in args.hidden:
        d, res = table(hidden, args.m, args.ratio, args.kinds, args.repeats,
                       training=not args.no_training)
        base = res.get(TRAINING)
        print(f"\nMLP 60-{hidden}-10, d = {d}, b = {max(1, d // args.ratio)}")
        for name, sec in res.items():
            ratio = f"  {sec / base:5.2f} x local training" if base else ""
            print(f"  {name:<22} {1e3 * sec:9.1f} ms / round{ratio}")


if __name__ == "__main__":
    main()
