"""Cost of one round of sketching: sketch m rows and de-sketch their mean, per operator.

    python benchmarks/sketch_cost.py                    # the table in docs/sketching.md
    python benchmarks/sketch_cost.py --d 1048576 --kinds srht countsketch

For each operator (``gaussian``, ``srht``, ``countsketch``; ``b = d / ratio``) one round is:
build the round's operator from its seed, sketch ``m`` client rows ``[m, d]``, and de-sketch
the mean sketch ``[b] -> [d]`` (what ``sketch_uplink`` + ``desketch_server`` do). The kinds
are timed interleaved (repeat r runs every kind once), and the median over repeats is
printed. For reference the same is measured at the width of the benchmark workload
(``fedsim.bench.workload``: MLP 60-200-10, d = 14210) next to the local training of one
round of that workload for ``m`` clients (50 samples, 1 epoch, batch 10, fedsim's
``Population.train``), plus the local top-k error-feedback baseline (``k = b / 2``, the same
bytes as a width-b sketch).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from fedsim.privacy.compress import topk_uplink
from fedsim.privacy.sketch import KINDS, make_sketch, round_seed
from fedsim.stages.base import Ctx


def sketch_round(kind: str, x: torch.Tensor, b: int, step: int) -> Callable[[], None]:
    """One round of ``kind`` on the rows ``x [m, d]`` (operator built inside, as in a run)."""

    def run() -> None:
        op = make_sketch(kind, x.shape[1], b, round_seed(0, step))
        y = op.sketch(x)  # [m, b]
        op.desketch(y.mean(dim=0))  # [d]

    return run


def topk_round(x: torch.Tensor, k: int) -> Callable[[], None]:
    """One round of local top-k with error feedback for the rows ``x [m, d]``."""
    stage = topk_uplink(k)
    m, d = x.shape
    state = stage.init(m, d)
    ctx = Ctx(step=0, senders=torch.arange(m), weights=torch.ones(m),
              byzantine=torch.zeros(m, dtype=torch.bool), gen=None)

    def run() -> None:
        stage.update(x, state, ctx)

    return run


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


def training_round(m: int) -> tuple[int, Callable[[], None]]:
    """(d, one round of local training of m clients) on the benchmark workload."""
    from fedsim.bench import workload
    from fedsim.population import Population

    w = workload.Workload(clients=m, rounds=1)
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


def table(d: int, m: int, ratio: int, kinds: list[str], repeats: int,
          extra: dict[str, Callable[[], None]] | None = None) -> dict[str, float]:
    b = max(1, d // ratio)
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(1))
    fns = {kind: sketch_round(kind, x, b, 1) for kind in kinds}
    fns[f"topk_ef (k = {max(1, b // 2)})"] = topk_round(x, max(1, b // 2))
    fns.update(extra or {})
    return timed(fns, repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=100_000, help="model width (default 1e5)")
    p.add_argument("--m", type=int, default=100, help="client rows per round (default 100)")
    p.add_argument("--ratio", type=int, default=100, help="b = d / ratio (default 100)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-workload", action="store_true",
                   help="skip the comparison with the benchmark workload's local training")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), m = {args.m} rows, "
          f"b = d / {args.ratio}, median of {args.repeats}")
    for name, sec in table(args.d, args.m, args.ratio, args.kinds, args.repeats).items():
        print(f"d = {args.d:>8}  {name:<22} {1e3 * sec:9.1f} ms / round")
    if args.no_workload:
        return
    d_w, train = training_round(args.m)
    res = table(d_w, args.m, args.ratio, args.kinds, args.repeats,
                extra={"local training": train})
    base = res["local training"]
    for name, sec in res.items():
        print(f"d = {d_w:>8}  {name:<22} {1e3 * sec:9.1f} ms / round  "
              f"({sec / base:5.2f} x local training)")


if __name__ == "__main__":
    main()
