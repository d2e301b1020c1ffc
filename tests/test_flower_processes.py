"""fedsim.flower with real Flower 1.42 processes: a SuperLink and SuperNodes on 127.0.0.1
started by ``fedsim deploy --local``, every one stopped by PID at the end (checked here).

Parity: the model after 3 rounds through the processes equals ``fedsim run``'s (FedAvg
over TLS; the geometric median with SuperNode authentication, which flwr 1.42 allows over
TLS only). Faults: a SuperNode killed
after round 1; the next rounds complete with the other within the round timeout. An
unregistered SuperNode key is refused by a SuperLink with authentication on.
"""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

from fedsim.flower.deploy import deploy  # noqa: E402
from fedsim.flower.local import LocalFederation, executable  # noqa: E402
from fedsim.results.toml_writer import to_toml  # noqa: E402
from fedsim.runners import run_scenario  # noqa: E402
from fedsim.scenario import load_scenario  # noqa: E402

try:
    executable("flower-superlink")
    executable("flower-supernode")
except Exception:  # noqa: BLE001
    pytest.skip("flwr's executables are not installed", allow_module_level=True)

SCENARIO = {
    "name": "flower_procs", "seed": 5, "rounds": 3, "clients_per_round": 2, "device": "cpu",
    "data": {"dataset": "digits", "num_clients": 2, "partition": "dirichlet", "alpha": 0.5},
    "model": {"name": "mlp", "hidden": [16]},
    "algorithm": {"name": "fedavg", "lr": 0.1, "local_epochs": 1, "batch_size": 16},
    "network": {"policy": "all",
                "compute": {"model": "lognormal", "seconds_per_sample": 0.01, "sigma": 1.0}},
}
TOL = 1e-5


def write_scenario(tmp_path: Path, **algorithm) -> Path:
    raw = {**SCENARIO, "algorithm": {**SCENARIO["algorithm"], **algorithm}}
    path = tmp_path / "scenario.toml"
    path.write_text(to_toml(raw))
    return path


def assert_all_stopped(pids) -> None:
    """No process the run started is still running (zombies of others' children count as
    ended)."""
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append((pid, p.name()))
        except psutil.Error:
            continue
    assert not alive, alive


def final_model(run_dir: Path) -> torch.Tensor:
    state = torch.load(run_dir / "model.pt", weights_only=False)
    return torch.cat([t.reshape(-1).float() for t in state.values()])


def deploy_and_simulate(tmp_path: Path, **kwargs):
    path = write_scenario(tmp_path, **kwargs.pop("algorithm", {}))
    log = io.StringIO()
    t0 = time.perf_counter()
    res = deploy(path, out=tmp_path / "out", local=2, round_timeout_s=60.0,
                 run_timeout_s=150.0, log=log, **kwargs)
    seconds = time.perf_counter() - t0
    sc = load_scenario(path)
    sim = run_scenario(sc, tmp_path / "sim", base_dir=tmp_path, progress=False)
    diff = float((final_model(res.run_dir) - sim.final_params).abs().max())
    print(f"{sc.algorithm.aggregator}: max |flower - fedsim run| = {diff:.3g} "
          f"({seconds:.0f} s)")
    return res, sim, diff, log.getvalue()


def test_fedavg_over_tls_equals_fedsim_run(tmp_path):
    res, sim, diff, log = deploy_and_simulate(tmp_path, tls=True)
    assert diff <= TOL, diff
    assert "TLS" in log and "round 3/3" in log
    assert res.summary["rounds_completed"] == 3 and res.summary["deploy"]["failed_replies"] == 0
    ours = (res.run_dir / "metrics.csv").read_text().splitlines()
    theirs = (sim.run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:10] for r in ours] == [r.split(",")[:10] for r in theirs]
    assert (res.run_dir / "accuracy_vs_round.png").is_file()
    assert res.leftovers == 0
    assert_all_stopped(res.pids)


def test_geometric_median_with_supernode_auth_equals_fedsim_run(tmp_path):
    res, _, diff, log = deploy_and_simulate(tmp_path, auth=True,
                                            algorithm={"aggregator": {"name": "gm"}})
    assert diff <= TOL, diff
    assert "SuperNode authentication" in log
    assert res.summary["deploy"]["nodes"] == 2
    assert_all_stopped(res.pids)


def test_a_supernode_killed_mid_run_is_a_failure_and_the_run_finishes(tmp_path):
    path = write_scenario(tmp_path)
    t0 = time.perf_counter()
    res = deploy(path, out=tmp_path / "out", local=2, round_timeout_s=12.0, run_timeout_s=150.0,
                 log=io.StringIO(), kill_node_after_round=1)
    assert time.perf_counter() - t0 < 150
    rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["participants"] == 2 and rows[0]["dropped"] == 0
    for row in rows[1:]:
        assert row["participants"] == 1 and row["dropped"] == 1
    assert res.summary["deploy"]["failed_replies"] == 2
    assert res.summary["status"] == "complete"
    assert_all_stopped(res.pids)


def test_an_unregistered_supernode_key_is_refused(tmp_path):
    work = tmp_path / "fed"
    from fedsim.flower.tls import make_certificates

    fed = LocalFederation(work, tls=make_certificates(work / "tls"), auth=True,
                          log=lambda _: None)
    try:
        fed.start_superlink()
        good = fed.start_node("partition-id=0")
        bad = fed.start_node("partition-id=1", register=False)
        deadline = time.monotonic() + 30
        while bad.alive() and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not bad.alive() and bad.popen.returncode != 0
        assert "Failed to activate SuperNode" in bad.log.read_text()
        assert good.alive()
    finally:
        fed.stop()
        pids = fed.pids()
    assert_all_stopped(pids)
    shutil.rmtree(work, ignore_errors=True)
