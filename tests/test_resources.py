"""Sizing a scenario before it runs: the estimate, the refusals (one line, exit 2), the report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsim import resources
from fedsim.cli import main
from fedsim.config import DataConfig, ModelConfig, Scenario
from fedsim.errors import ScenarioError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "scenarios" / "quickstart.toml")
GOSSIP = str(ROOT / "scenarios" / "gossip_ring.toml")
CAP = "8e9"  # the 8 GB cap
SYN = ["data.dataset=synthetic", "data.partition=iid"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _sets(*pairs: str) -> list[str]:
    return [x for p in pairs for x in ("--set", p)]


REFUSED = [
    # (scenario, overrides, field named in the error)
    (QUICKSTART, [*SYN, "data.num_clients=1000000"], "data.num_clients"),
    (QUICKSTART, ["model.hidden=[15000000]"], "model.hidden[0]"),
    (QUICKSTART, ["model.hidden=[1000000000]"], "model.hidden[0]"),
    (QUICKSTART, ["model.hidden=[64, 15000000]"], "model.hidden[1]"),
    (QUICKSTART, [*SYN, "data.synthetic_dim=1000000000"], "data.synthetic_dim"),
    (QUICKSTART, [*SYN, "data.synthetic_classes=1000000000"], "data.synthetic_classes"),
    (QUICKSTART, [*SYN, "data.synthetic_mean_samples=1000000000"],
     "data.synthetic_mean_samples"),
    (QUICKSTART, ["clients_per_round=50", "model.hidden=[4000000]"], "model.hidden[0]"),
    (GOSSIP, ["algorithm.name=gossip_sgd", "algorithm.gossip_rate=1e7"],
     "algorithm.gossip_rate"),
    (GOSSIP, ["algorithm.name=gossip_sgd", "algorithm.eval_interval_s=1e9"],
     "algorithm.eval_interval_s"),
    (GOSSIP, ["algorithm.name=accelerated_gossip_sgd", "algorithm.eval_interval_s=1e9"],
     "algorithm.eval_interval_s"),
]


@pytest.mark.parametrize(("scenario", "overrides", "key"), REFUSED,
                         ids=[r[2] + "-" + r[1][-1] for r in REFUSED])
def test_validate_refuses_what_will_not_fit(capsys, monkeypatch, scenario, overrides, key):
    monkeypatch.setenv(resources.MEMORY_ENV, CAP)
    code, out, err = _cli(capsys, "validate", scenario, *_sets(*overrides))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fedsim: error: ")
    assert f".{key}: " in err or f"error: {key}: " in err


def test_run_refuses_before_writing_anything(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv(resources.MEMORY_ENV, CAP)
    out_dir = tmp_path / "out"
    code, _, err = _cli(capsys, "run", QUICKSTART, "--quiet", "--out", str(out_dir),
                        *_sets("model.hidden=[15000000]"))
    assert code == 2 and err.count("\n") == 1
    assert "model.hidden[0]: the run needs about" in err
    assert "more than the 7.45 GiB available (FEDSIM_MEMORY_LIMIT_BYTES)" in err
    assert not out_dir.exists()


def test_large_population_that_fits_is_accepted_and_reported(capsys, monkeypatch, tmp_path):
    # the 100k-client synthetic population, 10 samples each, cohort 10k (825 MB)
    monkeypatch.setenv(resources.MEMORY_ENV, CAP)
    path = tmp_path / "big.toml"
    path.write_text('name = "big"\nclients_per_round = 10000\n[data]\ndataset = "synthetic"\n'
                    'partition = "iid"\nnum_clients = 100000\nsynthetic_mean_samples = 10\n')
    code, out, err = _cli(capsys, "validate", str(path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{path}: ok (big: synthetic, mlp, fedavg, 20 rounds)"
    assert len(lines) == 2 and lines[1].startswith("  memory: about 1.43 GiB (runtime 400 MiB, ")
    assert "data 536 MiB" in lines[1] and "model 4,554 parameters" in lines[1]


def test_validate_reports_event_counts_of_asynchronous_runs(capsys):
    code, out, _ = _cli(capsys, "validate", GOSSIP)
    assert code == 0
    # 16 nodes x 100 s at a mean step of 0.16 s x exp(0.5^2 / 2); 16 edges x 100 s x 1
    assert "    events: about 8,824 local steps and 1,600 exchanges" in out.splitlines()


def test_device_memory_is_checked_for_cuda(monkeypatch):
    monkeypatch.setenv(resources.DEVICE_MEMORY_ENV, "1e6")
    sc = Scenario(device="cuda", model=ModelConfig(hidden=(256,)))
    with pytest.raises(ScenarioError, match=r"^clients_per_round: .* of GPU memory \(cohort"):
        resources.check_resources(sc)
    resources.check_resources(Scenario(device="cpu"))  # the GPU limit is not asked on CPU


@pytest.mark.parametrize("value", ["0", "-5", "lots", "nan"])
def test_bad_memory_override_is_one_error(monkeypatch, value):
    monkeypatch.setenv(resources.MEMORY_ENV, value)
    with pytest.raises(ScenarioError, match=resources.MEMORY_ENV):
        resources.available_memory()


def test_available_memory_reads_the_machine(monkeypatch):
    monkeypatch.delenv(resources.MEMORY_ENV, raising=False)
    avail, source = resources.available_memory()
    assert avail > 0 and source


MODELS = [
    (DataConfig(), ModelConfig(name="logreg")),
    (DataConfig(), ModelConfig(name="mlp", hidden=(64,))),
    (DataConfig(), ModelConfig(name="mlp", hidden=())),
    (DataConfig(), ModelConfig(name="mlp", hidden=(7, 5, 3))),
    (DataConfig(), ModelConfig(name="cnn")),
    (DataConfig(dataset="synthetic", synthetic_dim=13, synthetic_classes=4),
     ModelConfig(name="mlp", hidden=(9,))),
    (DataConfig(dataset="synthetic", synthetic_dim=13, synthetic_classes=4),
     ModelConfig(name="logreg")),
]


@pytest.mark.parametrize(("data", "model"), MODELS)
def test_parameter_count_matches_the_built_model(data, model):
    from fedsim.models import build_model

    sc = Scenario(data=data, model=model)
    built = build_model(model, resources.input_shape(sc), resources.num_classes(sc))
    assert resources.num_params(sc) == sum(p.numel() for p in built.parameters())


def test_mnist_and_cifar_cnn_counts():
    from fedsim.models import CNN_CHANNELS, CNN_POOL_MIN_SIZE, cnn

    assert (resources.CNN_CHANNELS, resources.CNN_POOL_MIN_SIZE) == (CNN_CHANNELS,
                                                                       CNN_POOL_MIN_SIZE)
    for dataset in ("mnist", "cifar10"):
        sc = Scenario(data=DataConfig(dataset=dataset), model=ModelConfig(name="cnn"))
        built = cnn(resources.input_shape(sc), 10)
        assert resources.num_params(sc) == sum(p.numel() for p in built.parameters())


def test_estimate_grows_with_what_drives_it():
    small = resources.estimate(Scenario(data=DataConfig(dataset="synthetic", num_clients=100)))
    big = resources.estimate(Scenario(data=DataConfig(dataset="synthetic", num_clients=10_000)))
    part = {p.name: p.bytes for p in small.host}, {p.name: p.bytes for p in big.host}
    # 100x the clients: 100x the samples (50 each, 60 features: 8 * 60 + 32 bytes each)
    assert part[1]["data"] - part[0]["data"] == 9_900 * (50 * 512 + resources.BYTES_PER_CLIENT)
    assert part[1]["cohort"] == part[0]["cohort"] and big.num_params == small.num_params
    # the model part grows only by one evaluation batch (1000 -> 4096 test samples, 64 wide)
    assert part[1]["model"] - part[0]["model"] == 2 * 4 * (4096 - 1000) * 64


@pytest.mark.parametrize("n", [2_000, 20_000])
def test_dsgd_counts_its_mixing_matrix(n):
    """Dense ``n x n`` up to ``DENSE_MAX_NODES`` nodes, sparse (an entry per node and per
    edge direction) beyond."""
    sc = Scenario(algorithm=Scenario().algorithm.__class__(name="dsgd"),
                  data=DataConfig(num_clients=n),
                  network=Scenario().network.__class__(topology="ring",
                                                        topology_params={"n": n}))
    parts = {p.name: p for p in resources.estimate(sc).host}
    dense = n <= resources.DENSE_MAX_NODES
    assert parts["mixing"].bytes == (12 * n**2 if dense else 20 * 3 * n)
    assert parts["graph"].detail == f"{n:,} nodes, {n:,} edges"


def test_resources_imports_no_torch():
    code = ("import sys, fedsim.resources as r; from fedsim.config import Scenario; "
            "r.check_resources(Scenario()); a = 'torch' in sys.modules; "
            "r.check_resources(Scenario(device='auto')); print(a, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    # "auto" asks torch about a GPU only where an NVIDIA driver is loaded
    assert out.split() == ["False", str(resources._nvidia_driver())]


def test_a_factory_model_is_sized_once_built(monkeypatch, tmp_path):
    # 20M parameters (80 MB built): 6 copies in training do not fit in 600 MB
    (tmp_path / "wide.py").write_text(
        "import torch.nn as nn\n\n"
        "def make(shape, classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 300_000), nn.Linear(300_000, 10))\n")
    path = tmp_path / "s.toml"
    path.write_text('[model]\nfactory = "wide:make"\n')
    monkeypatch.setenv(resources.MEMORY_ENV, str(600 * 2**20))
    from fedsim.scenario import load_scenario, validate_scenario

    sc = load_scenario(path, validate=False)
    with pytest.raises(ScenarioError, match=r"^model\.factory: the run needs about"):
        validate_scenario(sc, tmp_path)
    monkeypatch.setenv(resources.MEMORY_ENV, CAP)
    validate_scenario(sc, tmp_path)  # fits in 8 GB


def test_a_run_built_from_python_is_refused_before_its_first_round(monkeypatch, tmp_path):
    """``run_scenario`` with data given (fedsim.run, the benches) checks the cohort it
    built: the stacked updates against the memory free, one line naming the field."""
    import dataclasses

    from fedsim.bench import workload
    from fedsim.runners import run_scenario

    w = workload.Workload(clients=40, rounds=1, samples_per_client=5)
    data = workload.make_data(w)
    d = 60 * 200 + 200 + 200 * 10 + 10
    monkeypatch.setenv(resources.MEMORY_ENV, str(40 * d * 4 - 1))  # one byte short
    with pytest.raises(ScenarioError, match=r"^clients_per_round: .*1 x 40 clients x "
                                            r"14,210 parameters x 4 bytes") as err:
        run_scenario(workload.scenario(w), tmp_path / "a", progress=False, data=data)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "a" / "metrics.csv").exists()
    # a robust aggregator and an update attack each add a working copy of the rows
    sc = workload.scenario(w)
    sc = dataclasses.replace(sc, algorithm=dataclasses.replace(sc.algorithm,
                                                               aggregator={"name": "gm"}))
    with pytest.raises(ScenarioError, match=r"2 x 40 clients"):
        run_scenario(sc, tmp_path / "b", progress=False, data=data)
    monkeypatch.setenv(resources.MEMORY_ENV, str(40 * d * 4))  # exactly enough: it runs
    run_scenario(workload.scenario(w), tmp_path / "c", progress=False, data=data)
