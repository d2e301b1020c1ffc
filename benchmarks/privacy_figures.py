"""The figures and tables of docs/privacy.md: sketched FedAvg's global step, accuracy vs
uploaded bytes for every compressor, and DP-FedAvg's accuracy vs epsilon, on 8x8 digits.

    python benchmarks/privacy_figures.py [OUT_DIR]     # about 3 minutes on 2 cores

Every number is one run of ``fedsim.run`` with the settings printed next to it (seed 0).
Each compressor gets the best server step of a small grid (printed), as in the papers'
comparisons; the tables are written to OUT_DIR/privacy_tables.md and the figures to
OUT_DIR/privacy_bytes.png and OUT_DIR/privacy_epsilon.png (default: docs/).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import fedsim  # noqa: E402
from fedsim.results.records import read_metrics  # noqa: E402

BASE = {"name": "privacy", "seed": 0, "rounds": 40, "clients_per_round": 10,
        "data": {"num_clients": 50, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [64]},
        "algorithm": {"lr": 0.3, "local_epochs": 1, "batch_size": 16}}
RATIO = 0.02  # b / d = 1 / 50
# each method's candidate settings at an uplink of about d/50 floats (the best one is shown)
COMPRESSORS = {
    "uncompressed": [{"name": "none"}],
    "gaussian": [{"name": "sketch", "kind": "gaussian", "ratio": RATIO}],
    "srht": [{"name": "sketch", "kind": "srht", "ratio": RATIO}],
    "countsketch": [{"name": "sketch", "kind": "countsketch", "ratio": RATIO}],
    "fetchsgd": [{"name": "fetchsgd", "ratio": RATIO, "k": k, "error_update": e, "rows": r}
                 for r in (1, 5) for k in (5, 20) for e in ("subtract", "zero")],
    "topk": [{"name": "topk", "ratio": RATIO / 2}],
}
STEPS = (0.1, 0.3, 1.0, 3.0)


def scenario(**algorithm) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    out["algorithm"] = {**BASE["algorithm"], **algorithm}
    return out


def run(sc: dict, where: Path, **kw) -> tuple[dict, list[dict]]:
    res = fedsim.run(sc, run_dir=where, overwrite=True, **kw)
    return res.summary, read_metrics(where)


def step_study(tmp: Path, lines: list[str]) -> None:
    """Sketched FedAvg (Gaussian) at b/d = 1/50 and 1/200: global step 1 vs smaller."""
    lines += ["## Sketched FedAvg: the global step", "",
              "| model | b/d | server_lr | final accuracy | best accuracy |",
              "|---|---:|---:|---:|---:|"]
    for model in ("mlp", "cnn"):
        for ratio in (0.02, 0.005):
            for lr in (1.0, 0.3, 0.1):
                sc = scenario(server_lr=lr, compress={"name": "sketch", "kind": "gaussian",
                                                      "ratio": ratio})
                sc["model"] = {"name": model, "hidden": [64]} if model == "mlp" else {
                    "name": "cnn"}
                s, _ = run(sc, tmp / "step")
                lines.append(f"| {model} | 1/{round(1 / ratio)} | {lr:g} | "
                             f"{s['final_accuracy']:.3f} | {s['best_accuracy']:.3f} |")
                print(lines[-1], flush=True)
    lines.append("")


def bytes_study(tmp: Path, out: Path, lines: list[str]) -> None:
    """Accuracy vs uploaded bytes, each compressor at its best server step."""
    lines += ["## Accuracy vs uploaded bytes (uplink about d/50 floats per client and round)",
              "", "| method | best setting | best server_lr | final accuracy | upload per client "
              "per round (bytes) | uploaded in total |", "|---|---|---:|---:|---:|---:|"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, specs in COMPRESSORS.items():
        best = None
        for spec in specs:
            for lr in STEPS:
                s, rows = run(scenario(server_lr=lr, compress=spec), tmp / name)
                if best is None or s["final_accuracy"] > best[1]["final_accuracy"]:
                    best = (lr, s, rows, spec)
        lr, s, rows, spec = best
        up = [sum(r["bytes_up"] for r in rows[: i + 1]) for i in range(len(rows))]
        ax.plot(up, [r["test_accuracy"] for r in rows], label=f"{name} (server_lr {lr:g})")
        setting = ", ".join(f"{k} {v}" for k, v in spec.items() if k != "name")
        lines.append(f"| {name} | {setting or '-'} | {lr:g} | {s['final_accuracy']:.3f} | "
                     f"{s['bytes_up_per_client']} | {up[-1] / 1e6:.3f} MB |")
        print(lines[-1], flush=True)
    ax.set_xscale("log")
    ax.set_xlabel("uploaded bytes, all clients (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits, 50 clients (10 per round), MLP 64: accuracy vs uplink bytes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "privacy_bytes.png", dpi=120)
    lines.append("")


def epsilon_study(tmp: Path, out: Path, lines: list[str]) -> None:
    """DP-FedAvg (central) on 500 clients, 100 per round: accuracy vs epsilon."""
    lines += ["## DP-FedAvg (central): accuracy vs epsilon (delta = 1e-3, RDP)", "",
              "| noise multiplier z | epsilon after 40 rounds | final accuracy |",
              "|---:|---:|---:|"]
    points = []
    for z in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0):
        sc = scenario(lr=0.3, server_lr=1.0)
        sc.update(clients_per_round=100, data={"num_clients": 500, "partition": "iid"},
                  privacy={"mode": "central", "clip": 1.0, "noise_multiplier": z,
                           "delta": 1e-3})
        s, rows = run(sc, tmp / f"dp{z}")
        eps = rows[-1]["epsilon"]
        points.append((eps, s["final_accuracy"], z))
        lines.append(f"| {z:g} | {eps:.3g} | {s['final_accuracy']:.3f} |")
        print(lines[-1], flush=True)
    s, _ = run(scenario(lr=0.3) | {"clients_per_round": 100,
                                   "data": {"num_clients": 500, "partition": "iid"}},
               tmp / "nodp")
    lines.append(f"| no DP (no clipping) | - | {s['final_accuracy']:.3f} |")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = [(e, a, z) for e, a, z in points if e != float("inf")]
    ax.plot([e for e, _, _ in finite], [a for _, a, _ in finite], "o-")
    for e, a, z in finite:
        ax.annotate(f"z={z:g}", (e, a), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axhline(s["final_accuracy"], ls="--", color="gray", label="no DP")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon after 40 rounds (delta = 1e-3, RDP; log scale)")
    ax.set_ylabel("final test accuracy")
    ax.set_title("DP-FedAvg on digits: 500 clients, 100 per round, C = 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "privacy_epsilon.png", dpi=120)
    lines.append("")


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    out = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "docs"
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# privacy figures (benchmarks/privacy_figures.py)", ""]
    with tempfile.TemporaryDirectory() as tmp:
        step_study(Path(tmp), lines)
        bytes_study(Path(tmp), out, lines)
        epsilon_study(Path(tmp), out, lines)
    (out / "privacy_tables.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
