"""``fedsim run --ray``: the cohort sharded over Ray actors gives the same run as one process.

One local Ray (127.0.0.1, 4 logical CPUs, started by the fixture, stopped at the end)
serves every test of the module; each run starts and stops its own shard actors. The
runs are tiny (digits, 20 clients, 3 rounds); most of the time is Ray's start and the
actors' (a Python process importing torch each). Checked: metrics.csv byte-identical
to the single-process run with 1, 2 and 4 actors (FedAvg), with a robust aggregator
(gm), and with kept local optimizer state; refusals are one-line errors; no process Ray
started outlives the module. No timing is asserted.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import torch
from torch import nn

from fedsim.cli import main
from fedsim.distributed import RayOptions
from fedsim.distributed.session import alive, ray_session
from fedsim.errors import ScenarioError
from fedsim.runners import run_scenario
from fedsim.scenario import load_scenario

ray = pytest.importorskip("ray")

TINY = """\
name = "ray_tiny"
seed = 3
rounds = 3
clients_per_round = 9
device = "cpu"
eval_every = 1
output_dir = "runs"

[data]
dataset = "digits"
num_clients = 20
partition = "dirichlet"
alpha = 0.5

[model]
name = "mlp"
hidden = [32]

[algorithm]
name = "fedavg"
lr = 0.1
local_epochs = 2
batch_size = 10
"""


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the module; afterwards, none of the processes it started runs."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with ray_session(None, num_cpus=4) as session:
        assert session.started and session.processes
        yield session
    assert not alive(session.processes)
    after = {p.pid for p in psutil.Process().children(recursive=True)
             if p.status() != psutil.STATUS_ZOMBIE}
    assert after <= before
    assert not ray.is_initialized()


def _scenario(tmp: Path, *overrides: str):
    path = tmp / "tiny.toml"
    path.write_text(TINY)
    return load_scenario(path, list(overrides))


def _run(sc, out: Path, actors: int | None):
    result = run_scenario(sc, out, progress=False,
                          ray=None if actors is None else RayOptions(actors=actors))
    return (out / "metrics.csv").read_bytes(), result


def test_ray_listens_on_loopback_only(local_ray) -> None:
    """Every listening socket of the local Ray's processes is on 127.0.0.1."""
    addresses = set()
    for p in alive(local_ray.processes):
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        addresses |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1"}


def test_fedavg_same_metrics_with_1_2_4_actors(local_ray, tmp_path: Path) -> None:
    sc = _scenario(tmp_path)
    want, single = _run(sc, tmp_path / "single", None)
    for k in (1, 2, 4):
        got, result = _run(sc, tmp_path / f"ray{k}", k)
        assert got == want, f"{k} actors"
        assert torch.equal(result.final_params, single.final_params)
    assert ray.is_initialized()  # the runs joined the module's Ray and left it running


def test_gm_and_kept_momentum_same_metrics(local_ray, tmp_path: Path) -> None:
    """Geometric median (needs every row) and SGD momentum kept per client (shipped to
    the actors and back each round; clients reappear across rounds)."""
    sc = _scenario(tmp_path, "algorithm.aggregator.name=gm",
                   "algorithm.local_opt.momentum=0.9", "algorithm.local_opt.state=keep",
                   "clients_per_round=12")
    want, _ = _run(sc, tmp_path / "single", None)
    got, _ = _run(sc, tmp_path / "ray3", 3)
    assert got == want


def test_cli_run_with_ray(local_ray, tmp_path: Path) -> None:
    """``fedsim run SCENARIO --ray --ray-actors 2`` (joins the running Ray) = plain run."""
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert main(["run", str(path), "--quiet", "--out", str(tmp_path / "b"),
                 "--ray", "--ray-actors", "2"]) == 0
    assert ((tmp_path / "a/ray_tiny/metrics.csv").read_bytes()
            == (tmp_path / "b/ray_tiny/metrics.csv").read_bytes())


def test_dropout_model_is_refused(local_ray, tmp_path: Path) -> None:
    sc = _scenario(tmp_path)

    def model(shape, classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5),
                             nn.Linear(16, classes))

    with pytest.raises(ScenarioError, match="dropout") as err:
        run_scenario(sc, tmp_path / "out", progress=False, model=model,
                     ray=RayOptions(actors=1))
    assert "\n" not in str(err.value)


def test_too_many_actors_is_refused(local_ray, tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="--ray-actors"):
        run_scenario(_scenario(tmp_path), tmp_path / "out", progress=False,
                     ray=RayOptions(actors=9))


def test_refusals_without_ray(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Errors caught before any Ray starts: decentralized algorithms, bad options."""
    sc = _scenario(tmp_path)
    gossip = replace(sc, algorithm=replace(sc.algorithm, name="dsgd"))
    with pytest.raises(ScenarioError, match="decentralized"):
        run_scenario(gossip, tmp_path / "g", progress=False, ray=RayOptions())
    with pytest.raises(ScenarioError, match="--ray-actors"):
        RayOptions(actors=0)
    path = tmp_path / "tiny.toml"
    assert main(["run", str(path), "--ray-actors", "2"]) == 2
    assert "--ray-actors needs --ray" in capsys.readouterr().err
    assert main(["run", "--ray", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Ray address" in err and err.count("\n") == 1
