"""Accuracy vs attack scale for every aggregator (docs/robustness.md, "Attack scale").

    python benchmarks/robust_scale.py                 # the table in docs/robustness.md
    python benchmarks/robust_scale.py --rounds 5 --aggregators gm --scales 100 1e38

The 8x8 digits (inside scikit-learn), 32 i.i.d. clients that all take part every round,
20 % of them Byzantine, an MLP 64-64-10, FedAvg with one local epoch, seed 0. Each cell is
one run; the number is the final test accuracy (%), "div" when the run diverged (its
``diverged_round``: the global model, or the honest clients' training from it, overflowed).
Attacks: ``sign_flip`` (rows -c g), ``alie`` (mu - c sigma), ``gaussian_noise``
(g + N(0, c^2)), with the scale c from 100 to 1e38 (float32's largest is 3.4e38; a larger
parameter is a validation error). Rows with NaN/inf or a norm beyond float32 are rejected
before aggregating (the "rej" column counts them over the run, summed over aggregators).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from fedsim.runners import run_scenario
from fedsim.scenario import apply_overrides, from_dict, validate_scenario

ATTACKS = {"sign_flip": "scale", "alie": "z", "gaussian_noise": "sigma"}
AGGREGATORS = {
    "mean": {"name": "mean"},
    "cmd": {"name": "coordinate_median"},
    "trimmed_mean": {"name": "trimmed_mean", "beta": 0.25},
    "krum": {"name": "krum", "f": 7},
    "cc": {"name": "centered_clipping", "tau": 0.1, "iterations": 3},
    "gm": {"name": "gm"},
    "bgmd": {"name": "bgmd", "k_fraction": 0.1},
    "bgmd_client": {"name": "bgmd", "k_fraction": 0.1, "memory": "client"},
}
SCALES = (1e2, 1e4, 1e8, 1e20, 1e38)


def base(rounds: int = 20, seed: int = 0) -> dict:
    """The scenario every cell starts from (a raw table, as a TOML file would give)."""
    return {
        "name": "robust_scale", "seed": seed, "rounds": rounds, "clients_per_round": 32,
        "data": {"dataset": "digits", "num_clients": 32, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [64]},
        "algorithm": {"name": "fedavg", "lr": 0.1, "local_epochs": 1, "batch_size": 8},
        "network": {"compute": {"model": "constant"}},
    }


def cell(aggregator: dict, attack: str, scale: float, rounds: int = 20, seed: int = 0,
         fraction: float = 0.2) -> dict:
    """One run's scenario table: ``aggregator`` under ``attack`` at parameter ``scale``."""
    return apply_overrides(base(rounds, seed), [
        ("algorithm.aggregator", dict(aggregator)), ("attack.name", attack),
        ("attack.fraction", fraction), ("attack.params", {ATTACKS[attack]: scale}),
    ])


def run_cell(raw: dict, out: Path) -> tuple[float, bool, int]:
    """(final accuracy, diverged, rows rejected over the run) of one scenario table."""
    sc = from_dict(raw)
    validate_scenario(sc)
    res = run_scenario(sc, out, progress=False)
    s = res.summary
    return s["final_accuracy"], s["diverged_round"] is not None, s["rejected_rows"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES))
    p.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS))
    args = p.parse_args(argv)
    head = ["attack", "scale", *args.aggregators, "rej"]
    print("| " + " | ".join(head) + " |")
    print("|---|---:|" + "---:|" * (len(head) - 2))
    with tempfile.TemporaryDirectory() as tmp:
        for attack in ATTACKS:
            for scale in args.scales:
                cells, rejected = [], 0
                for name in args.aggregators:
                    raw = cell(AGGREGATORS[name], attack, scale, args.rounds)
                    acc, div, rej = run_cell(raw, Path(tmp) / f"{attack}_{scale:g}_{name}")
                    rejected += rej
                    cells.append("div" if div else f"{100 * acc:.1f}")
                print(f"| {attack} | {scale:g} | " + " | ".join(cells) + f" | {rejected} |",
                      flush=True)


if __name__ == "__main__":
    main()
