"""The example scripts run (at tiny size) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_fedavg_vs_fedprox_example(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fedavg_vs_fedprox.py"), "--rounds", "2",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "fedavg: final accuracy" in out.stdout and "fedprox" in out.stdout
    assert (tmp_path / "fedavg_vs_fedprox" / "compare.png").stat().st_size > 0


def test_gossip_averaging_example():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "gossip_averaging.py"), "--nodes", "16",
         "--seeds", "8"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    last = out.stdout.strip().splitlines()[-1]  # accelerated / boyd: measured X, exact Y
    measured, exact = (float(part.split()[-1]) for part in last.split(":")[1].split(","))
    assert exact == pytest.approx(2.64, abs=0.01)  # ring of 16 (test_gossip_moments)
    assert measured == pytest.approx(exact, rel=0.2)  # the guarantees give 3.74
