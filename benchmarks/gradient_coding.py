"""Gradient coding vs sequential gradient coding on bursty delay profiles.

    .venv/bin/python -u benchmarks/gradient_coding.py [--quick] [--only SECTION]

1. Runtime (the comparison of Krishnan et al., ICLR 2023, Section 5): n = 256 workers,
   J = 80 jobs, persistent bounded bursts (a slow worker stays slow 2 consecutive
   rounds; 2 % slow per round; slow = 3x fast), made load-linear (``base + load * 2.2 s``:
   a worker's gradient over the whole data takes 2.2 s, so each scheme pays for its
   load). Every scheme at its best parameters from a grid of the shape the authors
   search (every s, lambda; B | W - 1; a bound on T); total simulated time of the
   ``J + T`` rounds. The best GC, SR-SGC and M-SGC are then replayed through their full
   state machines (every job decoded by its deadline, same total). Three seeds.
2. The regime sweep: the same grid on geometric (Gilbert-Elliott) and bounded bursts of
   several lengths, same slow share, three seeds: where does M-SGC <= SR-SGC < GC <
   wait-for-all hold?
3. Training (n = 8, digits, logistic regression, a bursty profile): loss vs simulated
   time and the per-round duration distribution per scheme, written to
   docs/gradient_coding_loss.png and docs/gradient_coding_durations.png.
4. CRC decode: relative error and condition number vs n (random sets of s stragglers).

References:
    Tandon et al., "Gradient Coding" (ICML 2017); Krishnan, Ebrahimi, Khisti, "Sequential
    Gradient Coding for Straggler Mitigation" (ICLR 2023).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fedsim.coding import (
    AtMostS,
    BurstyModel,
    DecodeError,
    gilbert_elliott_delays,
    load_linear,
    make_code,
    make_scheme,
    msgc_load,
    play_clock,
    play_schedule,
    srsgc_s,
    straggler_mask,
)
from fedsim.coding.playback import srsgc_timing
from fedsim.network.stragglers import burst_delays

DOCS = Path(__file__).resolve().parents[1] / "docs"
N, JOBS, SEC_PER_GRAD, MU = 256, 80, 2.2, 1.0
SHARE = 0.02  # the workers slow in a round, on average, in every profile below
# The headline profile: persistent, bounded bursts (burst_delays): a slow worker stays
# slow for exactly 2 consecutive rounds and is then fast for at least 10; 2 % of the
# workers are slow in a round; a slow worker takes 3x a fast one (a straggler at mu = 1;
# waiting for it costs ~1.5x a round cut at 2x the fastest). Bursts that persist over
# consecutive rounds and are bounded are what the (B, W, lambda) model describes and what
# the paper's measured trace shows; the sweep below varies the burst shape.
HEADLINE = ("bounded", 2)
SEEDS = (0, 1, 2)
# the regime sweep, all at the same slow share: geometric bursts (Gilbert-Elliott, mean
# length 1 / p_recover), bounded ones (burst_delays, fixed length, then >= GAP fast
# rounds) and bounded ones that may recur at once (gap 0)
SWEEP = [("geometric", m) for m in (1.0, 1.25, 2.0, 2.5, 5.0)] + \
        [("bounded", b) for b in (1, 2, 3, 4)] + [("bounded, gap 0", b) for b in (2, 3)]
FAST_S, SLOW_FACTOR, JITTER, GAP = 0.6, 3.0, 0.08, 10
# The grid, the shape of the authors' search: GC every s; SR-SGC every B | W - 1 up to a
# bound on the delay T = B; M-SGC every B < W with T = W - 2 + B up to that bound; every
# lambda. Bounds here: T <= 16 for both, SR-SGC W <= 64. Exact pruning (no better point
# is skipped): s and lambda only up to the most stragglers the profile ever has in a
# round (a window), beyond which the model never binds harder and the load only grows;
# SR-SGC only the largest lambda of each s = ceil(B lambda / (W - 1 + B)) (same load,
# weakest model).
T_MAX, SR_W_MAX = 16, 64
def profile(kind: str, burst: float, seed: int = 0, n: int = N,
            rounds: int = JOBS + T_MAX, share: float = SHARE) -> np.ndarray:
    """``[n, rounds]`` base delays: ``kind`` ``"geometric"`` (Gilbert-Elliott, mean burst
    ``burst`` rounds), ``"bounded"`` (``burst_delays``: bursts of exactly ``burst`` rounds,
    then at least ``GAP`` fast ones) or ``"bounded, gap 0"``; ``share`` of the workers
    slow in a round on average."""
    rng = np.random.default_rng(seed)
    if kind == "geometric":
        p_recover = 1.0 / burst
        return gilbert_elliott_delays(n, rounds, rng, p_slow=share * p_recover / (1 - share),
                                      p_recover=p_recover, fast_s=FAST_S,
                                      slow_factor=SLOW_FACTOR, jitter=JITTER)
    # renewal cycle: ~1/p fast rounds, `burst` slow, `gap` fast: slow share burst / cycle
    gap = 0 if kind == "bounded, gap 0" else GAP
    p_slow = 1.0 / (burst / share - burst - gap)
    return burst_delays(n, rounds, rng, p_slow=p_slow, burst=int(burst), gap=gap,
                        fast_s=FAST_S, slow_factor=SLOW_FACTOR, jitter=JITTER)


def base_profile(seed: int = 0) -> np.ndarray:
    return profile(*HEADLINE, seed)


def timed(base, load, model, rounds):
    d = load_linear(base[:, :rounds], load, SEC_PER_GRAD)
    clock = play_clock(d, model, MU)
    return sum(c.duration_s for c in clock), sum(c.waited for c in clock)


def _max_distinct(slow: np.ndarray, w: int) -> int:
    """Most distinct workers slow in any ``w`` consecutive rounds."""
    r = slow.shape[1]
    return max(int(slow[:, max(0, k - w + 1):k + 1].any(axis=1).sum()) for k in range(r))


def grid_search(base: np.ndarray, quick: bool = False) -> dict:
    """Every scheme at its best parameters on ``base`` (load-linear), by total time."""
    n = base.shape[0]
    # the most stragglers there can be: the profile at the smallest load (a larger load
    # adds the same constant to every delay, which only removes stragglers)
    slow = np.stack([straggler_mask(c, MU) for c in
                     load_linear(base, 1 / n, SEC_PER_GRAD).T], axis=1)
    best: dict = {}

    def keep(name, total, waits, params, load, T):
        if name not in best or total < best[name]["total_s"]:
            best[name] = {"total_s": total, "waits": waits, "params": params, "load": load,
                          "T": T}

    t, w = timed(base, 1 / n, AtMostS(0), JOBS)
    keep("wait-for-all", t, w, {}, 1 / n, 0)
    for s in range(1, min(n - 1, int(slow[:, :JOBS].sum(axis=0).max())) + 1):
        t, w = timed(base, (s + 1) / n, AtMostS(s), JOBS)
        keep("gc", t, w, {"s": s}, (s + 1) / n, 0)
    step = 2 if quick else 1
    for B in range(1, T_MAX + 1):
        for W in range(B + 1, SR_W_MAX + 1, B):
            top = min(n, _max_distinct(slow[:, :JOBS + B], W))
            lams = sorted({min(top, (s * (W - 1 + B)) // B)
                           for s in range(1, srsgc_s(B, W, top) + 1)})
            for lam in lams[::step] if lams[-1] == top else lams:
                s = srsgc_s(B, W, lam)
                d = load_linear(base[:, :JOBS + B], (s + 1) / n, SEC_PER_GRAD)
                dur, waited = srsgc_timing(d, B, W, lam, JOBS, MU)
                keep("sr-sgc", float(dur.sum()), int(waited.sum()),
                     {"B": B, "W": W, "lam": lam}, (s + 1) / n, B)
    for W in range(2, T_MAX + 2):
        for B in range(1, min(W - 1, T_MAX + 2 - W) + 1):
            top = min(n - 1, _max_distinct(slow[:, :JOBS + W - 2 + B], W))
            for lam in range(1, top + 1, step):
                load = msgc_load(n, B, W, lam)
                t, w = timed(base, load, BurstyModel(B, W, lam), JOBS + W - 2 + B)
                keep("m-sgc", t, w, {"B": B, "W": W, "lam": lam}, load, W - 2 + B)
    return best


def verify(base: np.ndarray, best: dict) -> None:
    """Replay the best GC, SR-SGC and M-SGC through their state machines: every job
    decoded by its deadline, and the same total time as the grid's clock."""
    for name in ("gc", "sr-sgc", "m-sgc"):
        sch = make_scheme(name, base.shape[0], JOBS, **best[name]["params"])
        res = play_schedule(sch, load_linear(base[:, :sch.rounds], sch.load, SEC_PER_GRAD),
                            MU)
        assert len(res.decodes) == JOBS
        assert abs(res.rows[-1]["sim_time_s"] - best[name]["total_s"]) < 1e-9, name
        best[name]["verified"] = True


def holds(best: dict) -> bool:
    t = {k: v["total_s"] for k, v in best.items()}
    return t["m-sgc"] <= t["sr-sgc"] < t["gc"] < t["wait-for-all"]


def _params(b: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in b["params"].items()) or "-"


def sweep(quick: bool) -> list[tuple]:
    """The regime table: burst shape x seed, best of the grid each."""
    out = []
    for kind, burst in SWEEP[::3] if quick else SWEEP:
        for seed in SEEDS[:1] if quick else SEEDS:
            out.append((kind, burst, seed, grid_search(profile(kind, burst, seed), quick)))
    return out


def training_figures(quick: bool) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsim.coding.training import run_coded

    n, jobs = 8, 40 if quick else 80
    # the headline's shape (bounded bursts of 2 rounds, gap 10) with 10 % slow: ~1 of 8
    base = profile("bounded", 2, seed=7, n=n, rounds=jobs + 10, share=0.1)
    schemes = {"wait-for-all": {}, "ignore-stragglers": {"s": 1}, "gc": {"s": 1},
               "sr-sgc": {"B": 2, "W": 3, "lam": 2}, "m-sgc": {"B": 2, "W": 3, "lam": 2}}
    runs = {}
    for name, kw in schemes.items():
        sch = make_scheme(name, n, jobs, **kw)
        # a partition costs what it costs at n = 256 (2.2 s / 256 per worker and round)
        d = load_linear(base, sch.load, SEC_PER_GRAD * n / N)
        runs[name] = run_coded(sch, delays=d, lr=0.5, models=4, seed=0)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, rows in runs.items():
        ax.plot([r["sim_time_s"] for r in rows], [r["loss"] for r in rows], label=name)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("training loss (mean of 4 models)")
    ax.set_title(f"digits, logistic regression, n = {n} workers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(DOCS / "gradient_coding_loss.png", dpi=110)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.boxplot([[r["duration_s"] for r in rows] for rows in runs.values()])
    ax.set_xticks(range(1, len(runs) + 1), list(runs), rotation=15)
    ax.set_ylabel("round duration (s)")
    fig.tight_layout()
    fig.savefig(DOCS / "gradient_coding_durations.png", dpi=110)
    plt.close("all")
    return {k: (v[-1]["sim_time_s"], v[-1]["waits"], v[-1]["loss"], v[-1]["accuracy"])
            for k, v in runs.items()}


def decode_errors(quick: bool, codes: int = 5, sets: int = 10) -> list[tuple]:
    """CRC (random ``H``, ``H 1 = 0``) decode vs ``n``: ``codes`` draws of ``H`` x ``sets``
    random sets of ``s`` stragglers each; the relative error of the decoded gradient
    (``d = 8`` columns of standard normal partition gradients) and the condition number."""
    out = []
    for n in (8, 16, 32, 64) if quick else (8, 16, 32, 64, 128, 256, 512):
        for s in sorted({1, n // 8, n // 4}):
            errs, conds, spread, failed = [], [], 0.0, 0
            for c in range(codes):
                code = make_code("crc", n, s, seed=1000 * n + 10 * s + c)
                spread = max(spread, float(np.abs(code.matrix).max()))
                rng = np.random.default_rng(c)
                for _ in range(sets):
                    arrived = np.setdiff1d(np.arange(n), rng.choice(n, s, replace=False))
                    g = rng.standard_normal((n, 8))
                    try:
                        dec = code.decoding(arrived)
                    except DecodeError:
                        failed += 1
                        continue
                    got = dec.a @ (code.matrix[dec.rows] @ g)
                    errs.append(np.linalg.norm(got - g.sum(0)) / np.linalg.norm(g.sum(0)))
                    conds.append(dec.cond)
            out.append((n, s, np.median(errs), max(errs), np.median(conds), max(conds),
                        spread, failed, codes * sets))
    return out


def decode_table(quick: bool) -> None:
    print("\n## CRC decode vs n (5 draws of H x 10 sets of s stragglers each)\n")
    print("| n | s | rel. error median | worst | cond median | worst | max abs B | "
          "not decodable |")
    print("|---|---|---|---|---|---|---|---|")
    for n, s, em, ew, cm, cw, spread, failed, total in decode_errors(quick):
        print(f"| {n} | {s} | {em:.1e} | {ew:.1e} | {cm:.1e} | {cw:.1e} | {spread:.1e} | "
              f"{failed} of {total} |", flush=True)


def runtime_table(quick: bool) -> None:
    kind, burst = HEADLINE
    print(f"## Runtime, n = {N}, J = {JOBS}, {kind} bursts of {burst} rounds, "
          f"{SHARE:.0%} slow, load-linear {SEC_PER_GRAD} s\n")
    print("| seed | scheme | best parameters | load | T | waits | total simulated time (s) |")
    print("|---|---|---|---|---|---|---|")
    for seed in SEEDS[:1] if quick else SEEDS:
        base = base_profile(seed)
        best = grid_search(base, quick)
        verify(base, best)
        for name in ("m-sgc", "sr-sgc", "gc", "wait-for-all"):
            b = best[name]
            print(f"| {seed} | {name} | {_params(b)} | {b['load']:.4f} | {b['T']} | "
                  f"{b['waits']} | {b['total_s']:.1f} |")
        print(f"| {seed} | ignore-stragglers (s = 16, inexact) | | | | | "
              f"{timed_ignore(base):.1f} |")
        print(f"| {seed} | M-SGC <= SR-SGC < GC < wait-for-all | "
              f"{'yes' if holds(best) else 'no'} | | | | |")


def sweep_table(quick: bool) -> None:
    print(f"\n## Regime sweep ({SHARE:.0%} slow per round), best of the grid per scheme\n")
    print("| bursts | mean length | seed | M-SGC | SR-SGC | GC | wait for all | "
          "M-SGC <= SR-SGC < GC < wait |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, burst, seed, b in sweep(quick):
        cell = {k: f"{b[k]['total_s']:.1f} ({_params(b[k])}; {b[k]['waits']} w)"
                for k in ("m-sgc", "sr-sgc", "gc")}
        print(f"| {kind} | {burst} | {seed} | {cell['m-sgc']} | {cell['sr-sgc']} | "
              f"{cell['gc']} | {b['wait-for-all']['total_s']:.1f} | "
              f"{'yes' if holds(b) else 'no'} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids, no n > 64 decode")
    ap.add_argument("--only", choices=("runtime", "sweep", "training", "decode"),
                    help="run one section")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.only in (None, "runtime"):
        runtime_table(args.quick)
    if args.only in (None, "sweep"):
        sweep_table(args.quick)
    if args.only in (None, "training"):
        print("\n## Training, n = 8, digits (final: simulated s, waits, loss, accuracy)\n")
        for name, (t, w, loss, acc) in training_figures(args.quick).items():
            print(f"| {name} | {t:.1f} | {w} | {loss:.3f} | {acc:.3f} |")
    if args.only in (None, "decode"):
        decode_table(args.quick)
    print(f"\n(wall {time.perf_counter() - t0:.0f} s)")


def timed_ignore(base: np.ndarray, s: int = 16) -> float:
    d = load_linear(base[:, :JOBS], 1 / base.shape[0], SEC_PER_GRAD)
    return float(np.sort(d, axis=0)[base.shape[0] - s - 1].sum())


if __name__ == "__main__":
    main()
