"""Decentralized min-max: DADAM^3 vs DPOSG vs GDA vs extragradient vs server Adam.

Three studies, each against iterations, simulated time and bytes (fedsim's decentralized
clock, :mod:`fedsim.minmax.timing`):

1. bilinear game on a ring of 8 (``dim 5``, node-specific ``A_i``): distance to Nash;
   ``docs/minmax_bilinear.png`` and the table "iterations / time / bytes to 1e-3";
2. strongly-convex-strongly-concave quadratic game on a ring of 16, a 4x4 torus and
   K_16: decentralized extragradient's linear rate with a common saddle point
   (``bias 0``) and its distance floor with node-specific saddle points (``bias 1``);
   extragradient with gradient tracking on the ``bias 1`` game: exact, linear, at a
   rate ordered by the spectral gap;
3. 8-Gaussians GAN on a 3x3 torus (iid shards): modes covered and high-quality fraction
   vs time and bytes, ``--seeds`` seeds; ``docs/minmax_gan.png``.

Prints the Markdown tables of docs/minmax.md and writes ``--csv`` (every row).

Usage:
    .venv/bin/python benchmarks/minmax.py [--seeds 3] [--gan-iters 2000] [--quick]
        [--docs docs] [--csv benchmarks/results/minmax.csv]

References:
    Barazandeh, Huang, Michailidis (arXiv 2106.06075); Liu et al. (NeurIPS 2020);
    Daskalakis et al. (ICLR 2018).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedsim.minmax import (  # noqa: E402
    adam_server,
    bilinear_game,
    dadam3,
    extra_adam_server,
    gaussian_mixture_gan,
    make_method,
    optimistic_adam_server,
    quadratic_game,
    run_minmax,
)
from fedsim.network.mixing import metropolis_weights, spectral_gap  # noqa: E402
from fedsim.network.topology import complete, ring, torus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bilinear_methods() -> dict:
    """The methods of study 1 with their step sizes (each tuned once on a coarse grid)."""
    return {
        "gda": make_method("gda", lr=0.05),
        "extragradient": make_method("extragradient", lr=0.3),
        "dposg": make_method("dposg", lr=0.2),
        "ogda (family)": make_method("adaptive", lr=0.2, beta1=0.0, preconditioner="none",
                                     lookahead="optimistic", mix="after"),
        "dadam3": dadam3(lr=0.2),
        "dadam3 (beta1 0)": dadam3(lr=0.4, beta1=0.0),
        "adam_server": adam_server(lr=0.01, beta1=0.0),
        "optimistic_adam_server": optimistic_adam_server(lr=0.01, beta1=0.0),
        "extra_adam_server": extra_adam_server(lr=0.4, beta1=0.0),
    }


def first(rows: list[dict], key: str, ok) -> dict | None:
    """The first row whose ``key`` satisfies ``ok``."""
    for r in rows:
        if key in r and ok(r[key]):
            return r
    return None


def fmt(x: float | None, unit: str = "") -> str:
    return "never" if x is None else f"{x:.3g}{unit}"


def study_bilinear(iters: int, docs: Path, out: list[dict]) -> None:
    task = bilinear_game(num_nodes=8, dim=5, heterogeneity=0.5, seed=0)
    runs = {}
    for label, m in bilinear_methods().items():
        rows = run_minmax(task, m, ring(8), iters, eval_every=10)
        runs[label] = rows
        out += [{**r, "study": "bilinear", "label": label} for r in rows]
    print("\n### Bilinear game, ring of 8 (dim 5, target distance to Nash 1e-3)\n")
    print("| method | lr | beta1 | iterations | simulated s | MB | final distance |")
    print("|---|---|---|---|---|---|---|")
    methods = bilinear_methods()
    for label, rows in runs.items():
        hit = first(rows, "dist_to_nash", lambda d: d < 1e-3)
        last = rows[-1]
        final = "diverged" if last.get("diverged") else f"{last['dist_to_nash']:.2e}"
        b1 = getattr(methods[label], "beta1", "-")
        print(f"| {label} | {methods[label].lr} | {b1} | {fmt(hit and hit['iteration'])} | "
              f"{fmt(hit and hit['time_s'])} | {fmt(hit and hit['bytes'] / 1e6)} | {final} |")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    for label, rows in runs.items():
        rows = [r for r in rows if "dist_to_nash" in r]
        y = [max(r["dist_to_nash"], 1e-12) for r in rows]
        ls = "--" if "server" in label else "-"
        for ax, key, scale in zip(axes, ("iteration", "time_s", "bytes"), (1, 1, 1e6),
                                  strict=True):
            ax.semilogy([r[key] / scale for r in rows], y, ls, label=label)
    for ax, xl in zip(axes, ("iteration", "simulated seconds", "MB sent (all links)"),
                      strict=True):
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("||x_bar - x*||")
    axes[0].set_ylim(1e-8, 1e3)
    axes[2].legend(fontsize=8)
    fig.suptitle("Bilinear game, ring of 8 (server methods dashed: a star, 2 hops)")
    fig.tight_layout()
    fig.savefig(docs / "minmax_bilinear.png", dpi=110)
    plt.close(fig)


QUAD = {"num_nodes": 16, "dim": 4, "mu": 1.0, "bias": 1.0, "seed": 0}  # docs/minmax.md
QUAD_GRAPHS = (("ring 16", lambda: ring(16)), ("torus 4x4", lambda: torus(4, 4)),
               ("complete 16", lambda: complete(16)))


def measured_rate(rows: list[dict], lo: int = 100, hi: int = 300) -> float:
    """The per-iteration factor of ``max_i ||x_i - x*||`` from iteration ``lo`` to ``hi``
    (or to the last evaluated iteration before it falls under 1e-11, rounding's level)."""
    d = {r["iteration"]: r["dist_to_nash_max"] for r in rows}
    hi = max(k for k in d if lo < k <= hi and (d[k] > 1e-11 or k == lo + 10))
    return (d[hi] / d[lo]) ** (1 / (hi - lo))


def centralized_eg_rate(task, lr: float) -> float:
    """Extragradient on the network operator ``F = M x + q`` (a server): the spectral
    radius of ``I - lr M + lr^2 M^2``, the per-iteration factor it converges at."""
    from fedsim.minmax import affine_operator

    M = affine_operator(task)[0].mean(0)
    eye = torch.eye(M.shape[0], dtype=M.dtype)
    return float(torch.linalg.eigvals(eye - lr * M + lr * lr * M @ M).abs().max())


def study_quadratic(docs: Path, out: list[dict]) -> None:
    from fedsim.minmax import gt_extragradient

    print("\n### Quadratic SC-SC game, n = 16 (dim 4, mu 1, node-specific saddles: bias 1)\n")
    print("Decentralized extragradient (lr 0.05) with a common saddle point (bias 0), and "
          "with node-specific ones (bias 1); extragradient with gradient tracking "
          "(lazy mixing (I + W) / 2) on the bias-1 game, per-iteration rate of "
          "max_i ||x_i - x*|| measured from iteration 100 to 300 (or to where it reaches 1e-11).\n")
    lrs = (0.05, 0.1, 0.15)
    t1 = quadratic_game(**QUAD)
    print("| graph | spectral gap of W | gap of (I+W)/2 | EG rate (bias 0) | EG floor (bias 1) "
          "| " + " | ".join(f"GT-EG rate, lr {lr}" for lr in lrs) + " | GT-EG distance "
          "at 1500 (lr 0.1) |")
    print("|---|---|---|---|---|" + "---|" * len(lrs) + "---|")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, make_graph in QUAD_GRAPHS:
        G = make_graph()
        W = metropolis_weights(G)
        gap = spectral_gap(W)
        lazy_gap = spectral_gap((W + np.eye(len(W))) / 2)
        t0 = quadratic_game(**{**QUAD, "bias": 0.0})
        rows0 = run_minmax(t0, make_method("extragradient", lr=0.05), G, 600)
        rate0 = measured_rate(rows0, 200, 500)
        rows1 = run_minmax(t1, make_method("extragradient", lr=0.05), G, 1500,
                           eval_every=50)
        out += [{**r, "study": "quadratic", "label": f"{label} eg bias0"} for r in rows0[::10]]
        out += [{**r, "study": "quadratic", "label": f"{label} eg bias1"} for r in rows1]
        rates, final = [], None
        for lr in lrs:
            rows = run_minmax(t1, gt_extragradient(lr=lr, lazy=True), G,
                              1500 if lr == 0.1 else 400, eval_every=10)
            out += [{**r, "study": "quadratic", "label": f"{label} gt lr {lr}"} for r in rows]
            rates.append(measured_rate(rows))
            if lr == 0.1:
                final = rows[-1]["dist_to_nash_max"]
                line = ax.semilogy([r["iteration"] for r in rows],
                                   [max(r["dist_to_nash_max"], 1e-16) for r in rows],
                                   label=f"{label}: GT-EG")[0]
                ax.semilogy([r["iteration"] for r in rows1], [r["dist_to_nash_max"] for r in rows1],
                            "--", color=line.get_color(), label=f"{label}: EG")
        print(f"| {label} | {gap:.3f} | {lazy_gap:.3f} | {rate0:.4f} | "
              f"{rows1[-1]['dist_to_nash_max']:.3g} | "
              + " | ".join(f"{r:.4f}" for r in rates) + f" | {final:.2g} |")
    print("| centralized EG (a server) | - | - | - | - | "
          + " | ".join(f"{centralized_eg_rate(t1, lr):.4f}" for lr in lrs) + " | - |")
    ax.set_xlabel("iteration")
    ax.set_ylabel("max_i ||x_i - x*||")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Quadratic game, node-specific saddles (bias 1), n = 16: extragradient\n"
                 "with gradient tracking (lr 0.1, lazy) vs plain (lr 0.05, dashed)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(docs / "minmax_quadratic.png", dpi=110)
    plt.close(fig)


# The 8-Gaussians study (scenarios/gan_gaussians.toml plays the same): the task, the same
# for every method (gaussian_mixture_gan's defaults but the loss: the zero-sum min-max game),
# and each method's settings, tuned on a small grid (docs/minmax.md lists it; the server
# references keep their earlier steps, not re-tuned).
GAN_TASK = {"num_nodes": 9, "loss": "zero_sum"}
GAN_SETTINGS = {
    "dadam3": ("dadam3", {"lr": 2e-3, "beta1": 0.0}),
    "dposg": ("dposg", {"lr": 0.05}),
    "gda": ("gda", {"lr": 0.05}),
    "adam_server": ("adam_server", {"lr": 1e-3}),
    "optimistic_adam_server": ("optimistic_adam_server", {"lr": 1e-3}),
}
GAN_EVAL_EVERY = 100


def _settings(params: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items())


def study_gan(iters: int, seeds: int, docs: Path, out: list[dict]) -> None:
    runs: dict[str, list[list[dict]]] = {}
    walls = {}
    for label, (name, params) in GAN_SETTINGS.items():
        t0 = time.perf_counter()
        for seed in range(seeds):
            task = gaussian_mixture_gan(seed=seed, **GAN_TASK)
            rows = run_minmax(task, make_method(name, **params), torus(3, 3), iters,
                              seed=seed, eval_every=GAN_EVAL_EVERY)
            runs.setdefault(label, []).append(rows)
            out += [{**r, "study": "gan", "label": label, "seed": seed} for r in rows]
        walls[label] = (time.perf_counter() - t0) / seeds
    print(f"\n### 8-Gaussians GAN ({_settings(GAN_TASK)}), 3x3 torus, budget {iters} "
          f"iterations, {seeds} seeds (evaluated every {GAN_EVAL_EVERY})\n")
    print("| method | settings | seeds reaching >= 7 modes | first >= 7 modes (iteration / "
          "simulated s / MB), per seed | modes at the end, per seed | high-quality at the "
          "end (mean) | wall s per run |")
    print("|---|---|---|---|---|---|---|")
    for label, per_seed in runs.items():
        _, params = GAN_SETTINGS[label]
        modes = [rows[-1].get("modes_covered", math.nan) for rows in per_seed]
        hq = [rows[-1].get("high_quality", math.nan) for rows in per_seed]
        hits = []
        for rows in per_seed:
            h = first(rows, "modes_covered", lambda v: v >= 7)
            hits.append(None if h is None else
                        f"{h['iteration']} / {h['time_s']:.0f} / {h['bytes'] / 1e6:.0f}")
        reached = sum(h is not None for h in hits)
        print(f"| {label} | {_settings(params)} | {reached} of {len(hits)} | "
              f"{'; '.join(h or 'never' for h in hits)} | "
              f"{', '.join(f'{m:.0f}' for m in modes)} | {sum(hq) / len(hq):.2f} | "
              f"{walls[label]:.0f} |")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, per_seed in runs.items():
        ls = "--" if "server" in label else "-"
        for k, rows in enumerate(per_seed):
            rows = [r for r in rows if "modes_covered" in r]
            y = [r["modes_covered"] for r in rows]
            kw = {"label": label} if k == 0 else {}
            color = None if k == 0 else axes[0].lines[-1].get_color()
            axes[0].plot([r["time_s"] for r in rows], y, ls, color=color, alpha=0.8, **kw)
            axes[1].plot([r["bytes"] / 1e9 for r in rows], y, ls,
                         color=axes[0].lines[-1].get_color(), alpha=0.8)
    axes[0].set_xlabel("simulated seconds")
    axes[1].set_xlabel("GB sent (all links)")
    axes[0].set_ylabel("modes covered (of 8)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"8-Gaussians GAN ({GAN_TASK['loss']} loss), 3x3 torus, {iters} iterations, "
                 f"{seeds} seeds (one line per seed)")
    fig.tight_layout()
    fig.savefig(docs / "minmax_gan.png", dpi=110)
    plt.close(fig)


def digits_methods() -> dict:
    """The methods of study 4 (step sizes from the 8-Gaussians study, not re-tuned)."""
    return {"dadam3": dadam3(lr=1e-3), "dposg": make_method("dposg", lr=0.05),
            "gda": make_method("gda", lr=0.05), "adam_server": adam_server(lr=1e-3)}


def study_digits(iters: int, seeds: int, docs: Path, out: list[dict]) -> None:
    from fedsim.minmax.gan import digits_gan, save_sample_grid

    runs: dict[str, list[list[dict]]] = {}
    for seed in range(seeds):
        task = digits_gan(num_nodes=8, seed=seed)
        for label, m in digits_methods().items():
            final: list = []
            rows = run_minmax(task, m, ring(8), iters, seed=seed,
                              eval_every=max(iters // 10, 1), on_end=final.append)
            runs.setdefault(label, []).append(rows)
            out += [{**r, "study": "digits", "label": label, "seed": seed} for r in rows]
            if seed == 0:
                save_sample_grid(task, final[0].mean(dim=0), docs / f"minmax_digits_{label}.png")
    print(f"\n### Digits GAN (8x8), ring of 8, {iters} iterations, {seeds} seeds\n")
    print("| method | lr | inception score (final, mean / min-max) | FID (final, mean / "
          "min-max) | best FID (mean) | simulated s | GB |")
    print("|---|---|---|---|---|---|---|")
    methods = digits_methods()
    for label, per_seed in runs.items():
        isc = [rows[-1].get("inception_score", math.nan) for rows in per_seed]
        fid = [rows[-1].get("fid", math.nan) for rows in per_seed]
        best = [min(r.get("fid", math.inf) for r in rows) for rows in per_seed]
        last = per_seed[0][-1]
        print(f"| {label} | {methods[label].lr} | {sum(isc) / len(isc):.2f} "
              f"({min(isc):.2f}-{max(isc):.2f}) | {sum(fid) / len(fid):.1f} "
              f"({min(fid):.1f}-{max(fid):.1f}) | {sum(best) / len(best):.1f} | "
              f"{last['time_s']:.0f} | {last['bytes'] / 1e9:.2f} |")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, per_seed in runs.items():
        ls = "--" if "server" in label else "-"
        color = None
        for k, rows in enumerate(per_seed):
            rows = [r for r in rows if "fid" in r]
            kw = {"label": label} if k == 0 else {}
            line = axes[0].plot([r["time_s"] for r in rows], [r["fid"] for r in rows], ls,
                                color=color, alpha=0.8, **kw)[0]
            color = line.get_color()
            axes[1].plot([r["bytes"] / 1e9 for r in rows], [r["fid"] for r in rows], ls,
                         color=color, alpha=0.8)
    axes[0].set_xlabel("simulated seconds")
    axes[1].set_xlabel("GB sent (all links)")
    axes[0].set_ylabel("FID (classifier features; lower is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Digits GAN, ring of 8, {seeds} seeds (one line per seed)")
    fig.tight_layout()
    fig.savefig(docs / "minmax_digits.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gan-iters", type=int, default=2000)
    ap.add_argument("--bilinear-iters", type=int, default=3000)
    ap.add_argument("--digits-iters", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="1 seed, 300 GAN iterations")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs")
    ap.add_argument("--csv", type=Path, default=ROOT / "benchmarks/results/minmax.csv")
    ap.add_argument("--skip", default="", help="comma list of studies to skip: "
                    "bilinear,quadratic,gan,digits")
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.seeds, a.gan_iters, a.digits_iters = 1, 300, 200
    skip = set(a.skip.split(","))
    out: list[dict] = []
    if "bilinear" not in skip:
        study_bilinear(a.bilinear_iters, a.docs, out)
    if "quadratic" not in skip:
        study_quadratic(a.docs, out)
    if "gan" not in skip:
        study_gan(a.gan_iters, a.seeds, a.docs, out)
    if "digits" not in skip:
        study_digits(a.digits_iters, a.seeds, a.docs, out)
    a.csv.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for r in out for k in r})
    with a.csv.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(out)
    print(f"\nrows: {a.csv}")


if __name__ == "__main__":
    main()
