"""Coded scenarios (``algorithm.name = "coded"``): end to end through ``fedsim.run`` and the
CLI, metrics columns, kill -9 and --resume byte-identical, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import kill_then_resume, subprocess_env

import fedsim
from fedsim.errors import ScenarioError
from fedsim.results.records import METRIC_FIELDS
from fedsim.runs.coded import CODED_COLUMNS
from fedsim.scenario import load_scenario

CODED = textwrap.dedent("""
    name = "coded"
    rounds = {rounds}
    checkpoint_every = 3
    [data]
    num_clients = 6
    [model]
    name = "logreg"
    [algorithm]
    name = "coded"
    lr = 1.0
    [algorithm.coding]
    scheme = "{scheme}"
    s = 1
    B = 1
    W = 3
    lam = 2
    models = 3
    [network.delays]
    model = "bursts"
    p_slow = 0.1
    burst = 1
    gap = 2
""")


def _scenario(tmp_path: Path, scheme: str = "m-sgc", rounds: int = 10) -> Path:
    path = tmp_path / f"{scheme}.toml"
    path.write_text(CODED.format(scheme=scheme, rounds=rounds))
    return path


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_coded_scenario_runs_and_writes_the_schemes_columns(tmp_path):
    seen = []
    result = fedsim.run(_scenario(tmp_path), run_dir=tmp_path / "run", callback=seen.append)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == [*METRIC_FIELDS, *CODED_COLUMNS]
    rows = _rows(tmp_path / "run")
    assert len(rows) == 10 == len(seen)  # jobs + T = 8 + 2 rounds
    for row in rows:
        assert int(row["selected"]) == 6
        assert int(row["participants"]) + int(row["stragglers"]) == 6
        if int(row["waited"]):
            assert int(row["stragglers"]) == 0
    assert int(rows[-1]["jobs_done"]) == 8 == int(rows[-1]["steps"])
    assert max(float(r["grad_error"]) for r in rows if r["grad_error"]) < 1e-9
    s = result.summary
    assert s["scheme"] == "m-sgc" and s["delay_T"] == 2 and s["jobs"] == 8
    assert s["jobs_done"] == 8 and s["model_file"] == "model.pt"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "complete"
    assert 0.0 < s["final_accuracy"] <= 1.0 and s["sim_time_s"] > 0
    assert "waited" in seen[0] and "test_accuracy" in seen[-1]


def test_gc_follows_wait_for_all_step_for_step_and_ignoring_stragglers_does_not(tmp_path):
    finals = {}
    for scheme in ("wait-for-all", "gc", "ignore-stragglers"):
        result = fedsim.run(_scenario(tmp_path, scheme, rounds=8),
                            run_dir=tmp_path / scheme)
        finals[scheme] = result.final_params
    assert torch.allclose(finals["gc"], finals["wait-for-all"], atol=1e-6)
    assert not torch.allclose(finals["ignore-stragglers"], finals["wait-for-all"], atol=1e-6)
    time = {k: float(_rows(tmp_path / k)[-1]["sim_time_s"]) for k in finals}
    assert time["gc"] != time["wait-for-all"]


def test_a_user_model_and_loss_get_their_gradients_through_the_population_engine(tmp_path):
    """Piece gradients come from fedsim's population engine: the fused engine for the
    built-in logreg, vmap over the pieces for a user's module and loss; exact decodes."""
    logreg = fedsim.run(_scenario(tmp_path, "gc", rounds=4), run_dir=tmp_path / "logreg")
    assert logreg.summary["gradient_engine"] == "fused_mlp"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 12), torch.nn.Tanh(),
                              torch.nn.Linear(12, 10))

    def loss(logits, labels):  # per-sample: cross-entropy plus a logit penalty
        return torch.nn.functional.cross_entropy(logits, labels, reduction="none") + \
            1e-3 * (logits ** 2).sum(1)

    user = fedsim.run(_scenario(tmp_path, "sr-sgc", rounds=6), model=net, loss=loss,
                      run_dir=tmp_path / "user")
    s = user.summary
    assert s["gradient_engine"] == "vmap" and s["num_params"] == 64 * 12 + 12 + 12 * 10 + 10
    assert s["jobs_done"] == 5 and s["max_grad_error"] < 1e-9


def test_kill9_then_resume_gives_identical_files(tmp_path, scheme="m-sgc"):
    path = _scenario(tmp_path, scheme)
    fedsim.run(path, run_dir=tmp_path / "whole")
    resumed = kill_then_resume(path, tmp_path / "killed", 5)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.csv", "metrics.jsonl"):
        assert ((tmp_path / "whole" / name).read_bytes()
                == (tmp_path / "killed" / name).read_bytes()), name
    one = torch.load(tmp_path / "whole" / "model.pt")
    two = torch.load(tmp_path / "killed" / "model.pt")
    assert all(torch.equal(one[k], two[k]) for k in one)
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["jobs_done"] == summary["jobs"]


class Stop(Exception):
    pass


def test_a_run_stopped_by_an_error_resumes_to_the_same_files(tmp_path):
    path = _scenario(tmp_path, "sr-sgc", rounds=9)
    fedsim.run(path, run_dir=tmp_path / "whole")

    def stop(row):
        if row["round"] == 7:
            raise Stop

    with pytest.raises(Stop):
        fedsim.run(path, run_dir=tmp_path / "again", callback=stop)
    fedsim.run(path, run_dir=tmp_path / "again", resume=True)
    for name in ("metrics.csv", "metrics.jsonl"):
        assert ((tmp_path / "whole" / name).read_bytes()
                == (tmp_path / "again" / name).read_bytes()), name


def test_the_shipped_scenario_compares_the_five_schemes_from_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedsim", "run", "gradient_coding", "--quiet",
                          "--out", str(tmp_path)], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    study = tmp_path / "gradient_coding"
    table = (study / "compare.md").read_text()
    names = ("wait_for_all", "ignore_stragglers", "gc", "sr_sgc", "m_sgc")
    assert all(f"| {name} |" in table for name in names)
    assert (study / "compare_accuracy_vs_time.png").is_file()
    sums = {n: json.loads((study / n / "summary.json").read_text()) for n in names}
    assert all(s["jobs_done"] == 60 for s in sums.values())
    exact = [sums[n]["final_accuracy"] for n in ("wait_for_all", "gc", "sr_sgc", "m_sgc")]
    assert max(exact) - min(exact) < 1e-9  # the exact schemes reach the same models
    t = {n: sums[n]["sim_time_s"] for n in names}  # docs: 121.4 / 132.1 / 135.9 / 184.7
    assert t["m_sgc"] < t["sr_sgc"] < t["gc"] < t["wait_for_all"]
    assert all(sums[n]["gradient_engine"] == "fused_mlp" for n in names)


BAD = [
    (["algorithm.coding.scheme=gc", "algorithm.coding.s=6"], "algorithm.coding.s"),
    (["algorithm.coding.scheme=gc", "algorithm.coding.code=frc", "algorithm.coding.s=3"],
     "algorithm.coding.s"),
    (["algorithm.coding.scheme=sr-sgc", "algorithm.coding.B=2", "algorithm.coding.W=4"],
     "algorithm.coding.B"),
    (["algorithm.coding.lam=7"], "algorithm.coding.lam"),
    (["algorithm.coding.scheme=fast"], "algorithm.coding.scheme"),
    (["algorithm.coding.speed=1"], "algorithm.coding.speed"),
    (["algorithm.coding.jobs=5"], "algorithm.coding.jobs"),
    (["algorithm.coding.models=2"], "algorithm.coding.models"),
    (["algorithm.coding.s=true"], "algorithm.coding.s"),
    (["rounds=2"], "rounds"),
    (["network.delays.model=weibull"], "network.delays.model"),
    (["network.delays.p_slow=1.5"], "network.delays.p_slow"),
    (["network.delays.model=trace"], "network.delays.trace"),
    (["network.delays.model=trace", "network.delays.trace=short.csv"], "network.delays.trace"),
    (["network.delays.model=trace", "network.delays.trace=missing.csv"],
     "network.delays.trace"),
    (["attack.name=sign_flip", "attack.fraction=0.2"], "attack.name"),
    (["algorithm.name=fedavg", "clients_per_round=3"], "algorithm.coding"),
]


@pytest.mark.parametrize("overrides, key", BAD)
def test_bad_coding_fields_are_one_line_errors(tmp_path, overrides, key):
    (tmp_path / "short.csv").write_text("\n".join(["1.0,1.0,1.0"] * 6) + "\n")  # 3 rounds
    with pytest.raises(ScenarioError) as info:
        load_scenario(_scenario(tmp_path), overrides)
    assert info.value.key == key
    assert "\n" not in str(info.value)


def test_a_trace_of_the_right_shape_is_used_as_is(tmp_path):
    rng = np.random.default_rng(0)
    trace = rng.uniform(1.0, 1.5, size=(6, 10))
    trace[2, 3] = 9.0  # worker 2 straggles in round 4
    lines = [",".join(str(float(v)) for v in row) for row in trace]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    result = fedsim.run(_scenario(tmp_path), run_dir=tmp_path / "run", overrides=[
        "network.delays.model=trace", "network.delays.trace=t.csv",
        "network.delays.load_linear=false"])
    rows = _rows(tmp_path / "run")
    assert int(rows[3]["stragglers"]) == 1 and int(rows[3]["slow"]) == 1
    assert float(rows[0]["round_time_s"]) == pytest.approx(trace[:, 0].max())
    assert result.summary["rounds_completed"] == 10


def test_cli_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "fedsim", "validate", str(_scenario(tmp_path)),
                          "--set", "algorithm.coding.lam=9"], cwd=tmp_path, env=subprocess_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("fedsim: error: algorithm.coding.lam: ")
