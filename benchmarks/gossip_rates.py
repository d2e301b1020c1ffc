"""Randomized (Boyd et al.) vs continuized accelerated (Even et al.) gossip: measured rates.

Writes ``docs/gossip_consensus.png`` (log distance to consensus against simulated time,
one panel per graph, unit-rate edges, with the exact rates' slopes) and prints a Markdown
table of measured against guaranteed and exact (:mod:`fedsim.network.gossip_moments`)
rates of ``E||x - mean||^2``. With ``--scan`` it also prints the exact accelerated rate
when ``eta`` and ``alpha_tilde`` are scaled away from their values.

Usage:
    .venv/bin/python benchmarks/gossip_rates.py [--seeds 16] [--out docs/gossip_consensus.png]
        [--scan]

References:
    Boyd, Ghosh, Prabhakar, Shah, "Randomized Gossip Algorithms", IEEE Trans. Inf.
    Theory, 2006. Even, Berthier, Bach, Flammarion, Hendrikx, Gaillard, Massoulié,
    Taylor, "A Continuized View on Nesterov Acceleration for Stochastic Gradient Descent
    and Randomized Gossip", NeurIPS 2021.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fedsim.decentralized import accelerated_gossip, fit_rate, randomized_gossip  # noqa: E402
from fedsim.network.gossip_events import poisson_edge_events  # noqa: E402
from fedsim.network.gossip_moments import second_moment_rates, switched_rate  # noqa: E402
from fedsim.network.spectral import accelerated_parameters, predicted_rates  # noqa: E402
from fedsim.network.topology import complete, resolve_topology, ring, torus  # noqa: E402
from fedsim.seeding import numpy_rng  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLOTTED = ("ring(n=64)", "torus(8x8)", "complete(n=64)", "Abilene")


def graphs() -> list[nx.Graph]:
    """The graphs of the table; the plot shows those named in PLOTTED."""
    return [ring(32), ring(64), ring(128), torus(8, 8), complete(64), resolve_topology("abilene")]


def run(G: nx.Graph, method: str, t_end: float, seed: int, times: np.ndarray) -> np.ndarray:
    """Relative distance to consensus ``||x(t) - mean||^2 / ||x(0) - mean||^2`` at ``times``."""
    events = poisson_edge_events(G, 1.0, t_end, numpy_rng(seed, "network/gossip"))
    x = torch.as_tensor(numpy_rng(seed, "gossip/init").standard_normal((len(G), 8)))
    if method == "boyd":
        trace = randomized_gossip(x, events, times).trace
    else:
        eta, alpha = accelerated_parameters(G)
        trace = accelerated_gossip(x, events, eta, alpha, times).trace
    trace = trace.numpy()
    return trace / trace[0]


def measure(G: nx.Graph, seeds: int) -> dict:
    """Guaranteed, exact and measured rates on the windows used by tests/test_gossip.py.

    Measured: the rate of the seed-averaged trace (the estimate of ``E||x - mean||^2``).
    """
    p = predicted_rates(G)
    pb, pa = p["boyd"], p["accelerated"]
    if pa <= 1.05 * pb:  # no acceleration to expect: the same window for both
        windows = {"boyd": (12 / pb, 2 / pb), "accelerated": (12 / pb, 2 / pb)}
    else:
        windows = {"boyd": (3 / pb, 1 / pb), "accelerated": (12 / pa, 3 / pa)}
    out = dict(p)
    for method, rate in second_moment_rates(G).items():
        out[f"{method}_exact"] = rate
    for method, (t_end, t_min) in windows.items():
        times = np.linspace(0.0, t_end, 121)
        traces = np.array([run(G, method, t_end, s, times) for s in range(seeds)])
        out[f"{method}_measured"] = fit_rate(times, traces.mean(axis=0), t_min)
    return out


def table(rows: list[tuple[str, dict]]) -> str:
    """The Markdown table of guaranteed, exact and measured rates and their ratios."""
    head = (
        "| graph | n | lambda_2 | chi_2 | Boyd: guaranteed lambda_2/2 | exact | measured "
        "| accelerated: guaranteed eta | exact | measured "
        "| ratio: guaranteed | exact | measured |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for name, r in rows:
        cells = [name, str(r["n"]), f"{r['lambda2']:.4g}", f"{r['chi2']:.4g}"]
        for method in ("boyd", "accelerated"):
            m = r[f"{method}_measured"]
            exact = r[f"{method}_exact"]
            cells += [f"{r[method]:.4g}", f"{exact:.4g}", f"{m:.4g} ({m / exact:.2f}x)"]
        for key in ("", "_exact", "_measured"):
            cells.append(f"{r['accelerated' + key] / r['boyd' + key]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, plotted: list[tuple[nx.Graph, dict]]) -> None:
    """Log distance to consensus vs time, Boyd vs accelerated, one panel per graph.

    Horizon: Boyd down to ~1e-14, or 4x the time the accelerated method needs to reach
    ~1e-16, whichever is shorter.
    """
    fig, axes = plt.subplots(1, len(plotted), figsize=(4.2 * len(plotted), 3.6))
    for ax, (G, r) in zip(np.atleast_1d(axes), plotted, strict=True):
        t_end = min(32 / r["boyd_measured"], 4 * 37 / r["accelerated_measured"])
        times = np.linspace(0.0, t_end, 241)
        for method, color in (("boyd", "tab:blue"), ("accelerated", "tab:red")):
            traces = [run(G, method, t_end, seed, times) for seed in range(3)]
            name = "randomized (Boyd)" if method == "boyd" else "accelerated"
            for seed, rel in enumerate(traces):
                label = None if seed else name
                ax.semilogy(times, rel, color=color, alpha=0.8, lw=1.2, label=label)
            # the exact rate's slope, through the seeds' mean at a quarter of the horizon
            rate, anchor = r[f"{method}_exact"], len(times) // 4
            level = np.mean(traces, axis=0)[anchor] * np.exp(rate * times[anchor])
            exact = level * np.exp(-rate * times)
            label = "exact mean-square rates" if method == "boyd" else None
            ax.semilogy(times, exact, color="k", ls="--", lw=0.9, label=label)
        ax.set_ylim(1e-16, 3)
        ax.set_title(G.graph.get("name", ""))
        ax.set_xlabel("simulated time (unit-rate edges)")
        ax.grid(True, which="major", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("||x - mean||² / ||x₀ - mean||²")
    np.atleast_1d(axes)[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scan(G: nx.Graph) -> str:
    """Exact accelerated rate / eta when eta and alpha_tilde are scaled by factors."""
    eta, alpha = accelerated_parameters(G)
    factors = (0.5, 0.75, 1.0, 1.25, 1.5)
    lines = [
        f"{G.graph.get('name')}: exact rate / eta (rows: eta x, columns: alpha_tilde x)",
        "| eta \\ alpha | " + " | ".join(f"{f}" for f in factors) + " |",
        "|---" * (len(factors) + 1) + "|",
    ]
    for fe in factors:
        cells = []
        for fa in factors:
            flow = fe * eta * np.array([[-1.0, 1.0], [1.0, -1.0]])
            try:
                rate = switched_rate(G, flow, [-0.5, -fa * alpha], [1.0, 0.0])
                cells.append(f"{rate / eta:.2f}")
            except ValueError:  # no decay in mean square
                cells.append("diverges")
        lines.append(f"| {fe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gossip_consensus.png")
    parser.add_argument("--scan", action="store_true", help="also scan eta, alpha_tilde (exact)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for G in graphs():
        r = measure(G, args.seeds)
        r["n"] = G.number_of_nodes()
        rows.append((G, r))
    print(table([(G.graph.get("name", "?"), r) for G, r in rows]))
    plot(args.out, [(G, r) for G, r in rows if G.graph.get("name") in PLOTTED])
    print(f"\nplot: {args.out}")
    if args.scan:
        for G in (torus(8, 8), ring(64)):
            print("\n" + scan(G))
    print(f"\n({time.perf_counter() - start:.1f} s, {args.seeds} seeds)")


if __name__ == "__main__":
    main()
