"""Min-max scenarios (``algorithm.name = "minmax"``): end to end through ``fedsim.run`` and
the CLI, the same numbers as ``run_minmax``, metrics columns, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import subprocess_env

import fedsim
from fedsim.config import NetworkConfig
from fedsim.errors import FedsimError, ScenarioError
from fedsim.minmax import make_task, run_minmax
from fedsim.network.topology import ring
from fedsim.results.records import METRIC_FIELDS
from fedsim.runs.minmax import MINMAX_COLUMNS
from fedsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]

MINMAX = textwrap.dedent("""
    name = "mm"
    seed = 3
    rounds = {rounds}
    eval_every = 5
    [algorithm]
    name = "minmax"
    [algorithm.minmax]
    method = "{method}"
    lr = 0.2
    [algorithm.minmax.task]
    name = "bilinear"
    dim = 3
    heterogeneity = 0.5
    [network]
    topology = "ring"
    topology_params = {{ n = 6 }}
    bandwidth_bps = 1e6
    latency_s = 0.01
""")


def _scenario(tmp_path: Path, method: str = "dposg", rounds: int = 40) -> Path:
    path = tmp_path / f"{method}.toml"
    path.write_text(MINMAX.format(method=method, rounds=rounds))
    return path


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", ["dposg", "dadam3", "adam_server"])
def test_a_minmax_scenario_writes_the_same_numbers_as_run_minmax(tmp_path, method):
    seen: list[dict] = []
    result = fedsim.run(_scenario(tmp_path, method), run_dir=tmp_path / "run",
                        callback=seen.append)
    rows = _rows(tmp_path / "run")
    assert list(rows[0]) == [*METRIC_FIELDS, *MINMAX_COLUMNS]
    assert len(rows) == len(seen) == 40 and [int(r["round"]) for r in rows] == list(range(1, 41))
    ref = run_minmax(make_task("bilinear", 6, 3, dim=3, heterogeneity=0.5), method,
                     ring(6), 40, 3, eval_every=5, method_params={"lr": 0.2},
                     network=NetworkConfig(topology="ring", bandwidth_bps=1e6,
                                           latency_s=0.01))
    for want in ref[1:]:
        got = rows[want["iteration"] - 1]
        assert float(got["sim_time_s"]) == pytest.approx(want["time_s"], rel=1e-12)
        assert int(got["cum_bytes"]) == want["bytes"]
        assert int(got["grad_evals"]) == want["grad_evals"]
        for col in ("dist_to_nash", "dist_to_nash_max", "grad_norm", "consensus"):
            assert float(got[col]) == pytest.approx(want[col], rel=1e-9, abs=1e-15), col
    assert rows[1]["dist_to_nash"] == "" and rows[4]["dist_to_nash"] != ""  # eval_every 5
    assert all(r["test_accuracy"] == "" and r["selected"] == "6" for r in rows)
    s = result.summary
    assert s["method"] == method and s["task"] == "bilinear" and s["nodes"] == 6
    assert s["final_minmax"]["dist_to_nash"] == pytest.approx(ref[-1]["dist_to_nash"])
    assert s["rounds_completed"] == 40 and s["final_accuracy"] is None
    assert result.final_params.shape == (6,)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "complete"


def test_the_shipped_scenario_compares_the_methods_from_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedsim", "run", "minmax_bilinear", "--quiet",
                          "--out", str(tmp_path)], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    study = tmp_path / "minmax_bilinear"
    table = (study / "compare.md").read_text()
    names = ("dadam3", "dposg", "gda", "extragradient", "adam_server")
    assert all(f"| {name} |" in table for name in names)
    assert (study / "compare_accuracy_vs_time.png").is_file()
    final = {n: json.loads((study / n / "summary.json").read_text())["final_minmax"]
             for n in names}
    for name in ("dadam3", "dposg", "extragradient"):
        assert final[name]["dist_to_nash"] < 1e-3, name
    assert final["gda"]["dist_to_nash"] > 1.0  # plain GDA spirals out on a bilinear game
    # the comparison is scored by the distance to Nash, each run's final value in its row
    assert "| final dist_to_nash | best dist_to_nash |" in table
    for name in names:
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert float(row.split("|")[3]) == pytest.approx(final[name]["dist_to_nash"], rel=1e-2)


def test_a_gan_task_adds_its_own_columns(tmp_path):
    result = fedsim.run(_scenario(tmp_path, "dposg", rounds=3), run_dir=tmp_path / "run",
                        overrides=["algorithm.minmax.task={name='gaussians', "
                                   "samples_per_node=64, eval_samples=256, hidden=8}",
                                   "network.topology_params={n=4}", "eval_every=3"])
    header = list(_rows(tmp_path / "run")[0])
    assert "dist_to_nash" not in header and "grad_norm" in header
    extra = header[header.index("grad_evals") + 1:]
    assert extra and set(extra) <= set(result.summary["final_minmax"])


BAD = [
    (["algorithm.minmax.method='adamw'"], "algorithm.minmax.method"),
    (["algorithm.minmax.beta3=0.9"], "algorithm.minmax.beta3"),  # dposg takes no beta3
    (["algorithm.minmax.lr=-1"], "algorithm.minmax.lr"),
    (["algorithm.minmax.method='dadam3'", "algorithm.minmax.beta1=1.0"],
     "algorithm.minmax.beta1"),
    (["algorithm.minmax.method='adaptive'", "algorithm.minmax.lookahead='far'"],
     "algorithm.minmax.lookahead"),
    (["algorithm.minmax.task.name='go'"], "algorithm.minmax.task.name"),
    (["algorithm.minmax.task.dim=0"], "algorithm.minmax.task.dim"),
    (["algorithm.minmax.task.depth=2"], "algorithm.minmax.task.depth"),
    (["algorithm.minmax.task={name='digits', depth=2}"], "algorithm.minmax.task.depth"),
    (["algorithm.minmax.task=3"], "algorithm.minmax.task"),
    (["network.topology='star'"], "network.topology"),
    (["network.topology='two.edges'", "network.topology_params={}"], "network.topology"),
    (["attack.name='sign_flip'", "attack.fraction=0.2"], "attack.name"),
    (["algorithm.name='fedavg'", "network.topology='star'"], "algorithm.minmax"),
]


@pytest.mark.parametrize("overrides, key", BAD)
def test_bad_minmax_fields_are_one_line_errors(tmp_path, overrides, key):
    (tmp_path / "two.edges").write_text("0 1\n1 2\n3 4\n4 5\n")  # two components
    with pytest.raises(ScenarioError) as info:
        load_scenario(_scenario(tmp_path), overrides)
    assert info.value.key == key, str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_method_and_a_resume_without_checkpoint_are_refused(tmp_path):
    path = tmp_path / "nomethod.toml"
    path.write_text(MINMAX.format(method="dposg", rounds=5).replace('method = "dposg"\n', ""))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.key == "algorithm.minmax.method"
    fedsim.run(_scenario(tmp_path, rounds=3), run_dir=tmp_path / "run")
    with pytest.raises(FedsimError) as info:  # checkpoint_every = 0: nothing to resume from
        fedsim.run(_scenario(tmp_path), run_dir=tmp_path / "run", resume=True)
    assert "\n" not in str(info.value)


def test_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedsim", "validate", str(_scenario(tmp_path)),
                          "--set", "algorithm.minmax.gossip_steps=0"], cwd=tmp_path,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("fedsim: error: algorithm.minmax.gossip_steps: ")


def test_the_gaussians_scenario_plays_the_documented_settings(tmp_path):
    # the budget and settings of docs/minmax.md's 8-Gaussians table (benchmarks/minmax.py)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_minmax",
                                                  ROOT / "benchmarks" / "minmax.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from fedsim.scenario import expand_variants

    sc = load_scenario(ROOT / "fedsim" / "scenarios" / "gan_gaussians.toml")
    variants = dict(expand_variants(sc))
    for label, (method, params) in bench.GAN_SETTINGS.items():
        mm = variants[label].algorithm.minmax
        assert mm["method"] == method, label
        assert {k: mm[k] for k in params} == params, label
        assert mm["task"] == {"name": "gaussians", "loss": bench.GAN_TASK["loss"]}
        assert variants[label].rounds == 2000 and variants[label].network.topology == "torus"
    result = fedsim.run(ROOT / "fedsim" / "scenarios" / "gan_gaussians.toml",
                        run_dir=tmp_path / "run", variant="dposg",
                        overrides=["rounds=3", "eval_every=3"])
    assert result.summary["nodes"] == 9 and result.summary["iterations"] == 3
    assert 0 <= result.summary["final_minmax"]["modes_covered"] <= 8
