"""Checkpoints of min-max runs: killed with SIGKILL (or stopped by an error) and resumed,
a run writes the same metrics files, byte for byte, as one never interrupted."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import kill_then_resume

import fedsim

GAN = textwrap.dedent("""
    name = "mm_ckpt"
    seed = 2
    rounds = 12
    eval_every = 3
    checkpoint_every = 4
    [algorithm]
    name = "minmax"
    [algorithm.minmax]
    method = "{method}"
    lr = {lr}
    [algorithm.minmax.task]
    {task}
    [network]
    topology = "ring"
    topology_params = {{ n = 4 }}
    bandwidth_bps = 1e6
    latency_s = 0.01
    compute = {{ model = "lognormal", seconds_per_sample = 0.001, sigma = 0.5 }}
""")
GAUSSIANS = ('name = "gaussians"\n    samples_per_node = 64\n    eval_samples = 128\n'
             '    hidden = 8\n    batch_size = 8')
BILINEAR = 'name = "bilinear"\n    dim = 3\n    heterogeneity = 0.5\n    bias = 0.3'


def _scenario(tmp_path: Path, method: str = "dadam3", lr: float = 1e-3,
              task: str = GAUSSIANS) -> Path:
    path = tmp_path / f"{method}.toml"
    path.write_text(GAN.format(method=method, lr=lr, task=task))
    return path


def _same_files(one: Path, two: Path) -> None:
    for name in ("metrics.csv", "metrics.jsonl"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_kill9_then_resume_gives_identical_files(tmp_path):
    # a GAN (minibatches from the oracle's stream), DADAM^3 (moments and vbar), a random
    # compute model (the clock's stream): all of it must come back from checkpoint.pt
    path = _scenario(tmp_path)
    whole = fedsim.run(path, run_dir=tmp_path / "whole")
    resumed = kill_then_resume(path, tmp_path / "killed", 6)
    assert resumed.returncode == 0, resumed.stderr
    _same_files(tmp_path / "whole", tmp_path / "killed")
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["iterations"] == 12
    assert summary["final_minmax"] == pytest.approx(whole.summary["final_minmax"])


class Stop(Exception):
    pass


@pytest.mark.parametrize("method, lr", [("gt_extragradient", 0.1), ("dposg", 0.2),
                                        ("optimistic_adam_server", 0.05)])
def test_a_run_stopped_by_an_error_resumes_to_the_same_files(tmp_path, method, lr):
    # trackers, DPOSG's stored gradient, the server's clock and optimistic Adam's d_prev
    path = _scenario(tmp_path, method, lr, BILINEAR)
    whole = fedsim.run(path, run_dir=tmp_path / "whole")

    def stop(row):
        if row["round"] == 10:
            raise Stop

    with pytest.raises(Stop):
        fedsim.run(path, run_dir=tmp_path / "again", callback=stop)
    again = fedsim.run(path, run_dir=tmp_path / "again", resume=True)
    _same_files(tmp_path / "whole", tmp_path / "again")
    assert again.final_params.equal(whole.final_params)


def test_resume_of_another_scenario_is_refused(tmp_path):
    path = _scenario(tmp_path, "dposg", 0.2, BILINEAR)

    def stop(row):
        if row["round"] == 5:
            raise Stop

    with pytest.raises(Stop):
        fedsim.run(path, run_dir=tmp_path / "run", callback=stop)
    with pytest.raises(fedsim.errors.ScenarioError) as info:
        fedsim.run(path, run_dir=tmp_path / "run", resume=True,
                   overrides=["algorithm.minmax.lr=0.1"])
    assert info.value.key == "algorithm.minmax.lr" and "\n" not in str(info.value)
