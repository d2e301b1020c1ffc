"""FedAvg vs D-SGD vs (accelerated) gossip SGD on ring, torus and Abilene: the docs figure.

Runs ``scenarios/gossip_{ring,torus,abilene}.toml`` (every variant of each: fedavg over a
star, dsgd, gossip_sgd, accelerated_gossip_sgd) into ``--out``, writes
``docs/gossip_training.png`` (test accuracy of the average model, solid, and the mean
test accuracy of the nodes' own models, dotted, vs simulated time, one panel per
topology; below, the mean distance of the nodes' models to their average) and prints
the Markdown table of docs/gossip.md.

Usage:
    .venv/bin/python benchmarks/gossip_training.py [--out runs/gossip_training]
        [--plot docs/gossip_training.png] [--set data.alpha=0.3] [--target 0.85]

References:
    Lian et al., NeurIPS 2017 (D-SGD); Even et al., NeurIPS 2021 (continuized gossip SGD);
    Boyd et al., IEEE Trans. Inf. Theory, 2006 (randomized gossip).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedsim.results.plots import format_bytes  # noqa: E402
from fedsim.results.records import read_metrics  # noqa: E402
from fedsim.study import run_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOPOLOGIES = ("ring", "torus", "abilene")
TITLES = {"ring": "ring of 16", "torus": "torus 4x4", "abilene": "Abilene (11 nodes)"}


def time_to(records: list[dict], target: float) -> float | None:
    """First simulated time at which the test accuracy reached ``target`` (None: never)."""
    for r in records:
        if r["test_accuracy"] is not None and r["test_accuracy"] >= target:
            return r["sim_time_s"]
    return None


def node_rows(run_dir: Path) -> list[dict[str, float | None]]:
    """The rows of a decentralized run's consensus.csv (empty for fedavg)."""
    path = run_dir / "consensus.csv"
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k: float(v) if v else None for k, v in r.items()} for r in csv.DictReader(fh)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gossip_training", help="run folders go here")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "gossip_training.png"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every scenario file (repeatable)")
    parser.add_argument("--target", type=float, default=0.85,
                        help="accuracy for the time-to-accuracy column")
    args = parser.parse_args()

    fig, axes = plt.subplots(2, len(TOPOLOGIES), figsize=(13, 7), sharex="col",
                             gridspec_kw={"height_ratios": [2, 1]})
    lines = ["| topology | algorithm | final acc | best acc | simulated time (s) | "
             f"time to {args.target:.0%} (s) | bytes on the wire | final consensus dist. | "
             "mean node acc | wall (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for col, topo in enumerate(TOPOLOGIES):
        results = run_file(ROOT / "scenarios" / f"gossip_{topo}.toml", args.set,
                           output_dir=args.out, progress=False, log=None, overwrite=True)
        for res in results:
            name = res.run_dir.name
            records = read_metrics(res.run_dir)
            xs = [r["sim_time_s"] for r in records if r["test_accuracy"] is not None]
            ys = [r["test_accuracy"] for r in records if r["test_accuracy"] is not None]
            (line,) = axes[0, col].plot(xs, ys, marker=".", markersize=3, linewidth=1.2,
                                        label=name)
            nodes = node_rows(res.run_dir)
            if nodes:
                evaluated = [r for r in nodes if r["node_accuracy_mean"] is not None]
                axes[0, col].plot([r["sim_time_s"] for r in evaluated],
                                  [r["node_accuracy_mean"] for r in evaluated], linestyle=":",
                                  linewidth=1.2, color=line.get_color())
                axes[1, col].semilogy([r["sim_time_s"] for r in nodes],
                                      [r["consensus_distance"] for r in nodes], linewidth=1.2,
                                      color=line.get_color(), label=name)
            s = res.summary
            reach = time_to(records, args.target)
            dist = s.get("final_consensus_distance")
            node_acc = s.get("final_node_accuracy_mean")
            lines.append(
                f"| {topo} | {name} | {s['final_accuracy']:.3f} | {s['best_accuracy']:.3f} | "
                f"{s['sim_time_s']:.1f} | {'-' if reach is None else f'{reach:.1f}'} | "
                f"{format_bytes(s['total_bytes'])} | "
                f"{'-' if dist is None else f'{dist:.3f}'} | "
                f"{'-' if node_acc is None else f'{node_acc:.3f}'} | {s['wall_time_s']:.1f} |")
        axes[0, col].set_title(TITLES[topo])
        axes[0, col].set_ylim(0.0, 1.0)
        axes[0, col].grid(alpha=0.3)
        axes[1, col].grid(alpha=0.3, which="both")
        axes[1, col].set_xlabel("simulated time (s)")
    axes[0, 0].set_ylabel("test accuracy: average model (solid),\n"
                          "mean of the nodes' models (dotted)")
    axes[1, 0].set_ylabel("mean ||x_v - x_bar||")
    axes[0, 0].legend(fontsize="small", loc="lower right")
    extra = f" ({', '.join(args.set)})" if args.set else ""
    fig.suptitle(f"Decentralized training on digits, Dirichlet labels{extra}")
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print("\n".join(lines))
    print(f"\nplot: {args.plot}; runs in {args.out}")


if __name__ == "__main__":
    main()
