"""Checkpoints and --resume: a run killed with SIGKILL and resumed writes the same files,
byte for byte, as a run never interrupted (federated, D-SGD, accelerated gossip)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import kill_then_resume, subprocess_env

import fedsim
from fedsim.errors import DataError, FedsimError, ScenarioError

# A CNN with BatchNorm and Dropout (buffers, and randomness inside the model).
MODEL = textwrap.dedent("""
    import torch.nn as nn

    def cnn(input_shape, num_classes):
        return nn.Sequential(nn.Conv2d(input_shape[0], 4, 3, padding=1), nn.BatchNorm2d(4),
                             nn.ReLU(), nn.Flatten(), nn.Dropout(0.2),
                             nn.Linear(4 * input_shape[1] * input_shape[2], num_classes))
""")

FEDERATED = textwrap.dedent("""
    name = "fed"
    rounds = 9
    checkpoint_every = 3
    clients_per_round = 6
    [data]
    num_clients = 16
    partition = "dirichlet"
    [model]
    factory = "ckmodel:cnn"
    buffers = "local"
    [algorithm]
    lr = 0.05
    batch_size = 16
    local_opt = {name = "sgd", momentum = 0.9, state = "keep"}
    server_opt = {name = "fedadam", lr = 0.01}
    aggregator = {name = "bgmd", k_fraction = 0.1}
    [network]
    policy = "first_k"
    [network.compute]
    model = "lognormal"
    [network.availability]
    model = "bernoulli"
    dropout = 0.2
    [attack]
    name = "sign_flip"
    fraction = 0.2
""")

DECENTRALIZED = textwrap.dedent("""
    name = "{name}"
    rounds = 8
    checkpoint_every = 3
    clients_per_round = 8
    [data]
    num_clients = 8
    [model]
    name = "mlp"
    hidden = [16]
    [algorithm]
    name = "{name}"
    lr = 0.1
    batch_size = 8
    eval_interval_s = 0.5
    [network]
    topology = "ring"
    topology_params = {{ n = 8 }}
    [network.compute]
    model = "lognormal"
    seconds_per_sample = 0.01
""")

FILES = ("metrics.csv", "metrics.jsonl", "consensus.csv")


def _scenario(tmp_path: Path, text: str) -> Path:
    (tmp_path / "ckmodel.py").write_text(MODEL)
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", ["fedavg", "dsgd", "accelerated_gossip_sgd"])
def test_kill9_then_resume_gives_identical_files(tmp_path, kind):
    text = FEDERATED if kind == "fedavg" else DECENTRALIZED.format(name=kind)
    path = _scenario(tmp_path, text)
    whole = fedsim.run(path, run_dir=tmp_path / "whole")
    resumed = kill_then_resume(path, tmp_path / "killed", kill_at=5)  # checkpoint at 3
    assert resumed.returncode == 0, resumed.stderr
    for name in FILES:
        a, b = tmp_path / "whole" / name, tmp_path / "killed" / name
        assert a.exists() == b.exists()
        if a.exists():
            assert a.read_bytes() == b.read_bytes(), name
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["rounds_completed"] == whole.summary["rounds_completed"]
    assert summary["final_accuracy"] == whole.summary["final_accuracy"]
    one = torch.load(tmp_path / "whole" / "model.pt")
    two = torch.load(tmp_path / "killed" / "model.pt")
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_model_pt_loads_into_the_users_module(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        path = _scenario(tmp_path, FEDERATED.replace("rounds = 9", "rounds = 2"))
        result = fedsim.run(path, run_dir=tmp_path / "run")
        import ckmodel

        module = ckmodel.cnn((1, 8, 8), 10)
        module.load_state_dict(torch.load(tmp_path / "run" / "model.pt"))
        expected = result.load_into(ckmodel.cnn((1, 8, 8), 10)).state_dict()
        assert all(torch.equal(module.state_dict()[k], v) for k, v in expected.items())
        assert result.summary["model_file"] == "model.pt"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("ckmodel", None)


def test_resume_refuses_what_it_cannot_continue(tmp_path):
    path = _scenario(tmp_path, DECENTRALIZED.format(name="dsgd").replace("rounds = 8",
                                                                         "rounds = 4"))
    run_dir = tmp_path / "run"
    with pytest.raises(FedsimError, match="no run to resume"):
        fedsim.run(path, run_dir=run_dir, resume=True)
    fedsim.run(path, run_dir=run_dir)
    with pytest.raises(FedsimError, match="complete; nothing to resume"):
        fedsim.run(path, run_dir=run_dir, resume=True)
    summary = run_dir / "summary.json"
    summary.write_text(summary.read_text().replace('"complete"', '"interrupted"'))
    with pytest.raises(ScenarioError, match=r"^algorithm\.lr: differs"):
        fedsim.run(path, run_dir=run_dir, resume=True, overrides=["algorithm.lr=0.2"])
    with pytest.raises(ScenarioError, match="^metrics: "):
        fedsim.run(path, run_dir=run_dir, resume=True, metrics={"m": lambda lg, y: 0.0})
    # where results go, and how often checkpoints are taken, may change
    fedsim.run(path, run_dir=run_dir, resume=True, overrides=["checkpoint_every=1"])
    (run_dir / "metrics.csv").write_text("round\n")  # shorter than at the checkpoint
    summary.write_text(summary.read_text().replace('"complete"', '"interrupted"'))
    with pytest.raises(DataError, match="cannot be resumed"):
        fedsim.run(path, run_dir=run_dir, resume=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a fedsim checkpoint"):
        fedsim.run(path, run_dir=run_dir, resume=True)
    (run_dir / "checkpoint.pt").unlink()
    with pytest.raises(DataError, match="no checkpoint to resume from"):
        fedsim.run(path, run_dir=run_dir, resume=True)


def test_cli_resume_of_several_runs_is_one_line(tmp_path):
    path = _scenario(tmp_path, DECENTRALIZED.format(name="dsgd")
                     + '\n[variants.a]\nalgorithm.lr = 0.1\n[variants.b]\nalgorithm.lr = 0.2\n')
    out = subprocess.run([sys.executable, "-m", "fedsim", "run", str(path), "--resume",
                          str(tmp_path)], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "fedsim: error: --resume: continues one run, but this plans 2; the scenario has "
        "variants (a, b): pick one with --variant"]


def test_no_checkpoint_unless_asked(tmp_path):
    path = _scenario(tmp_path, DECENTRALIZED.format(name="dsgd").replace(
        "checkpoint_every = 3", "").replace("rounds = 8", "rounds = 2"))
    fedsim.run(path, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert (tmp_path / "run" / "model.pt").exists()
