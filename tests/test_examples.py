"""The example scripts run and print the numbers they promise (parsed and checked)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                          capture_output=True, text=True, timeout=300, check=True).stdout


def test_fedavg_vs_fedprox_example(tmp_path):
    # the example as documented (30 rounds, about 4 s)
    out = _run("fedavg_vs_fedprox.py", "--rounds", "30", "--out", str(tmp_path))
    printed = dict(re.findall(r"^(\w+): final accuracy (\d\.\d{3})$", out, re.M))
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")]
             for line in out.splitlines() if line.startswith("| fed"))}
    assert set(printed) == set(rows) == {"fedavg", "fedprox"}
    for label, row in rows.items():
        _, rounds, final, best, sim_time, total_bytes, stragglers, dropped = row
        assert int(rounds) == 30
        assert float(final) == pytest.approx(float(printed[label]), abs=5e-4)  # same figure
        assert float(best) >= float(final)
        # wait for all, no dropout: nobody straggles or drops
        assert (stragglers, dropped) == ("0", "0")
        # 30 rounds x 10 clients x (model down + update up), MLP 60-64-10 in float32:
        # (60 * 64 + 64 + 64 * 10 + 10) = 4,554 parameters, 18,216 bytes a message
        assert total_bytes == f"{30 * 10 * 2 * 18_216 / 1e6:.1f} MB" == "10.9 MB"
    # mu changes what clients compute, not when: the same clock, the same simulated time
    assert rows["fedavg"][4] == rows["fedprox"][4]
    # golden on CPU (Synthetic(1, 1), 10 classes: chance is 0.1); mu = 0.1 does no harm
    assert float(printed["fedavg"]) == pytest.approx(0.788, abs=0.01)
    assert float(printed["fedprox"]) == pytest.approx(0.795, abs=0.01)
    assert (tmp_path / "fedavg_vs_fedprox" / "compare.png").stat().st_size > 0


def test_gossip_averaging_example():
    n = 16
    out = _run("gossip_averaging.py", "--nodes", str(n), "--seeds", "8")
    line = r"^ *{}: measured (\S+) +guaranteed (\S+) +exact (\S+) +\(over (\d+) s\)$"
    figures = {}
    for name in ("boyd", "accelerated"):
        (found,) = re.findall(line.format(name), out, re.M)
        figures[name] = [float(v) for v in found]
    # the guaranteed rates by hand, ring of n with unit-rate edges: lambda_2 = 2 - 2 cos(2 pi/n),
    # boyd = lambda_2 / 2; chi_1 = 1 / lambda_2, chi_2 = (n - 1) / (2 n) (the effective
    # resistance of an edge, halved), accelerated = eta = 1 / (2 sqrt(chi_1 chi_2))
    lam2 = 2 - 2 * math.cos(2 * math.pi / n)
    eta = 1 / (2 * math.sqrt((1 / lam2) * (n - 1) / (2 * n)))
    assert figures["boyd"][1] == pytest.approx(lam2 / 2, rel=5e-4)  # 0.07612
    assert figures["accelerated"][1] == pytest.approx(eta, rel=5e-4)  # 0.2849
    for measured, guaranteed, exact, over in figures.values():
        assert exact >= guaranteed  # the guarantee is a lower bound
        assert measured == pytest.approx(exact, rel=0.1)  # 8 seeds: within 4 % today
        assert over == round(20 / exact)  # 20 time constants of the exact rate
    assert figures["boyd"][2] <= lam2  # and the mean dynamics' rate an upper bound
    (ratio,) = re.findall(r"^accelerated / boyd: measured (\S+), exact (\S+)$", out, re.M)
    measured_ratio, exact_ratio = map(float, ratio)
    assert exact_ratio == pytest.approx(2.64, abs=0.01)  # ring of 16 (test_gossip_moments)
    assert exact_ratio == pytest.approx(figures["accelerated"][2] / figures["boyd"][2], abs=0.01)
    assert measured_ratio == pytest.approx(
        figures["accelerated"][0] / figures["boyd"][0], abs=0.01)
    assert measured_ratio == pytest.approx(exact_ratio, rel=0.15)  # the guarantees give 3.74


def test_own_model_example(tmp_path):
    # the README's Python API example: own CNN (BatchNorm, Dropout) on own numpy arrays,
    # batched; about 5 s on 2 cores
    for buffers, golden in (("average", 0.969), ("local", 0.969)):
        out = _run("own_model.py", "--out", str(tmp_path), "--buffers", buffers)
        (final,) = re.findall(rf"^final accuracy (\d\.\d{{3}}) \(15 rounds, buffers {buffers}\)$",
                              out, re.M)
        (loaded,) = re.findall(r"^loaded model accuracy (\d\.\d{3})$", out, re.M)
        assert float(final) == pytest.approx(golden, abs=0.02)  # chance is 0.1 (10 digits)
        assert loaded == final  # the final model, loaded into a fresh module, is the same
        assert (tmp_path / f"own_model_{buffers}" / "metrics.csv").is_file()


def test_readme_python_api_block_runs(tmp_path):
    # the README's "Python API" code block, run as written (from a fresh folder)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    code = section[section.index("```python\n") + 10:section.index("\n```\n")]
    assert "fedsim.run(" in code and "from_arrays(" in code
    script = tmp_path / "readme_example.py"
    script.write_text(code + '\nprint("loaded", type(net).__name__)\n')
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    (final,) = re.findall(r"^final accuracy (\d\.\d{3})$", out, re.M)
    assert float(final) == pytest.approx(0.969, abs=0.02)  # the README's figure
    assert "loaded SmallCNN" in out
    assert (tmp_path / "runs" / "own_model" / "metrics.csv").is_file()
