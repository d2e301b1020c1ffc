"""Your own model and data: fedsim.run, model.factory, FederatedData.from_arrays, and the
buffers policy (model.buffers = average | local) against a hand-written per-client loop."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import fedsim
from fedsim.config import AlgorithmConfig, DataConfig, ModelConfig, NetworkConfig, Scenario
from fedsim.errors import DataError, ScenarioError
from fedsim.runners import FederatedRun, build_population

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = str(Path(sys.executable).with_name("fedsim"))


def _arrays(n_train=48, n_test=24, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n_train + n_test)
    x = rng.normal(size=(n_train + n_test, 1, 4, 4)).astype(np.float32) + y[:, None, None, None]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _data(num_clients=4, **kw):
    return fedsim.FederatedData.from_arrays(*_arrays(), num_clients=num_clients, **kw)


class ConvBN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Linear: buffers, no randomness."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _model():
    torch.manual_seed(0)
    return ConvBN()


def _scenario(buffers: str, rounds: int = 1, batched: bool = True, **alg) -> Scenario:
    return Scenario(name="bn", rounds=rounds, clients_per_round=4, batched=batched,
                    data=DataConfig(num_clients=4), model=ModelConfig(buffers=buffers),
                    algorithm=AlgorithmConfig(**{"lr": 0.1, "local_epochs": 1, "batch_size": 64,
                                                 **alg}))


# ------------------------------------------------------------------ hand-written loop


def _flat_buffers(module: nn.Module) -> torch.Tensor:
    return torch.cat([b.detach().reshape(-1).float() for b in module.buffers()])


def _client_step(module: nn.Module, params: torch.Tensor, buffers: torch.Tensor, x, y, lr):
    """One full-batch SGD step of one client, in train mode: (params, buffers) after it."""
    m = copy.deepcopy(module)
    vector_to_parameters(params.clone(), m.parameters())
    offset = 0
    with torch.no_grad():
        for b in m.buffers():
            b.copy_(buffers[offset:offset + b.numel()].reshape(b.shape).to(b.dtype))
            offset += b.numel()
    m.train()
    loss = F.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y))
    grads = torch.autograd.grad(loss, list(m.parameters()))
    new = parameters_to_vector([p.detach() - lr * g for p, g in zip(m.parameters(), grads,
                                                                     strict=True)])
    return new, _flat_buffers(m)


def _hand_round(module, params, start_buffers, data, lr):
    """Every client of ``data`` one full-batch step: ([n, d] params, [n, b] buffers)."""
    out = [_client_step(module, params, start_buffers[k], data.x_train[ix], data.y_train[ix], lr)
           for k, ix in enumerate(data.client_indices)]
    return torch.stack([p for p, _ in out]), torch.stack([b for _, b in out])


def _weighted(rows: torch.Tensor, sizes) -> torch.Tensor:
    w = torch.as_tensor(sizes, dtype=rows.dtype).reshape(-1, 1)
    return (rows * w).sum(0) / w.sum()


# ------------------------------------------------------------------ buffers policy


@pytest.mark.parametrize("batched", [True, False])
def test_buffers_average_equals_hand_loop(batched):
    data, model = _data(), _model()
    run = FederatedRun(_scenario("average", rounds=2, batched=batched), Path.cwd(), data, model)
    init = parameters_to_vector(model.parameters()).detach()
    b0 = _flat_buffers(model)
    sizes = data.client_sizes()
    params, bufs = init, b0.expand(4, -1)
    for rnd in (1, 2):
        run.round(rnd, 0)
        rows, local = _hand_round(model, params, bufs, data, 0.1)
        params = _weighted(rows, sizes)
        avg = _weighted(local, sizes)
        bufs = avg.expand(4, -1)
        assert torch.allclose(run.params, params, atol=1e-5)
        assert torch.allclose(run.buffers, avg, atol=1e-5)
        assert torch.equal(run.eval_buffers(), run.buffers)
        # num_batches_tracked: every client took one step per round
        assert run.buffers[-1].item() == rnd
    assert run.client_buffers is None


@pytest.mark.parametrize("batched", [True, False])
def test_buffers_local_equals_hand_loop(batched):
    data, model = _data(), _model()
    run = FederatedRun(_scenario("local", rounds=2, batched=batched), Path.cwd(), data, model)
    params = parameters_to_vector(model.parameters()).detach()
    bufs = _flat_buffers(model).expand(4, -1)
    sizes = data.client_sizes()
    for rnd in (1, 2):
        run.round(rnd, 0)
        rows, bufs = _hand_round(model, params, bufs, data, 0.1)  # each from its own row
        params = _weighted(rows, sizes)
        assert torch.allclose(run.params, params, atol=1e-5)
        assert torch.allclose(run.client_buffers, bufs, atol=1e-5)
        # the global model is evaluated with the weighted mean of the local rows
        assert torch.allclose(run.eval_buffers(), _weighted(bufs, sizes), atol=1e-5)
    # each client kept its own statistics (with everyone in every round their weighted
    # mean equals the averaged run's: BatchNorm's moving average is linear)
    assert not torch.allclose(run.client_buffers[0], run.client_buffers[1], atol=1e-3)


def test_local_buffers_evaluate_only_clients_that_trained():
    data, model = _data(), _model()
    sc = _scenario("local")
    sc = Scenario(**{**sc.__dict__, "clients_per_round": 2})
    run = FederatedRun(sc, Path.cwd(), data, model)
    assert torch.equal(run.eval_buffers(), _flat_buffers(model))  # nobody trained yet
    run.round(1, 0)
    trained = np.flatnonzero(run.trained)
    assert len(trained) == 2
    untouched = np.setdiff1d(np.arange(4), trained)
    assert torch.equal(run.client_buffers[untouched], _flat_buffers(model).expand(2, -1))
    expect = _weighted(run.client_buffers[trained], data.client_sizes()[trained])
    assert torch.allclose(run.eval_buffers(), expect)


def _dsgd(buffers: str) -> Scenario:
    return Scenario(name="bn_dsgd", rounds=1, clients_per_round=4,
                    data=DataConfig(num_clients=4), model=ModelConfig(buffers=buffers),
                    algorithm=AlgorithmConfig(name="dsgd", lr=0.1, batch_size=64),
                    network=NetworkConfig(topology="ring", topology_params={"n": 4}))


@pytest.mark.parametrize("policy", ["average", "local"])
def test_dsgd_buffers_equal_hand_loop(policy):
    from fedsim.decentralized.runner import DecentralizedRun
    from fedsim.network.mixing import metropolis_weights

    data, model = _data(), _model()
    run = DecentralizedRun(_dsgd(policy), Path.cwd(), data, model)
    run.play(lambda *args: None)
    W = torch.as_tensor(metropolis_weights(run.graph), dtype=torch.float32)
    init = parameters_to_vector(model.parameters()).detach()
    rows, bufs = _hand_round(model, init, _flat_buffers(model).expand(4, -1), data, 0.1)
    assert torch.allclose(run.x, W @ rows, atol=1e-5)
    expect = W @ bufs if policy == "average" else bufs
    assert torch.allclose(run.bufs, expect, atol=1e-5)
    assert torch.allclose(run.mean_buffers()[:-1], bufs.mean(0)[:-1], atol=1e-5)


@pytest.mark.parametrize("algorithm", ["gossip_sgd", "accelerated_gossip_sgd"])
def test_gossip_with_buffers_runs_and_reruns_identically(tmp_path, algorithm):
    data = _data()
    sc = {"name": "bn_gossip", "rounds": 2, "clients_per_round": 4,
          "algorithm": {"name": algorithm, "lr": 0.05, "batch_size": 8},
          "network": {"topology": "ring", "topology_params": {"n": 4}}}
    texts = {}
    for policy in ("average", "local", "local"):
        sc["model"] = {"buffers": policy}
        res = fedsim.run(sc, model=_model(), data=data, run_dir=tmp_path / "run",
                         overwrite=True)
        assert res.final_buffers is not None and torch.isfinite(res.final_buffers).all()
        text = (tmp_path / "run" / "metrics.csv").read_text()
        assert texts.setdefault(policy, text) == text  # a rerun is byte-identical
    assert texts["average"] != texts["local"]


def test_reruns_byte_identical_with_dropout_and_batchnorm(tmp_path):
    def factory(shape, classes):
        return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 16, classes))

    data = _data()
    sc = {"rounds": 3, "clients_per_round": 3}
    files = []
    for policy in ("average", "average", "local", "local"):
        out = tmp_path / f"run{len(files)}"
        fedsim.run(sc, model=factory, data=data, run_dir=out,
                   overrides=[f"model.buffers={policy}"])
        files.append((out / "metrics.csv").read_text())
    assert files[0] == files[1] and files[2] == files[3] and files[0] != files[2]


def test_a_model_without_buffers_ignores_the_policy(tmp_path):
    texts = []
    for policy in ("average", "local"):
        res = fedsim.run("quickstart", overrides=["rounds=2", f"model.buffers={policy}"],
                         variant="wait_for_all", run_dir=tmp_path / policy)
        assert res.final_buffers is None
        texts.append((tmp_path / policy / "metrics.csv").read_text())
    assert texts[0] == texts[1]


# ------------------------------------------------------------------ the Python API


def test_run_with_module_and_dict_and_load_into(tmp_path):
    data, model = _data(), _model()
    res = fedsim.run({"rounds": 3, "clients_per_round": 2}, model=model, data=data,
                     run_dir=tmp_path / "r")
    assert res.summary["rounds_completed"] == 3 and res.summary["num_clients"] == 4
    assert res.summary["num_params"] == sum(p.numel() for p in model.parameters())
    net = res.load_into(ConvBN()).eval()
    assert torch.equal(parameters_to_vector(net.parameters()).detach(), res.final_params)
    assert torch.equal(_flat_buffers(net), res.final_buffers)
    with torch.no_grad():
        acc = (net(torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean()
    assert acc == pytest.approx(res.summary["final_accuracy"])
    # the given module itself is not trained
    assert torch.equal(parameters_to_vector(model.parameters()), parameters_to_vector(
        _model().parameters()))
    with pytest.raises(Exception, match="holds"):  # the folder is used: refused
        fedsim.run({"rounds": 1, "clients_per_round": 2}, model=model, data=data,
                   run_dir=tmp_path / "r")


def test_run_errors_are_one_line_scenario_errors(tmp_path):
    data = _data()
    with pytest.raises(ScenarioError, match=r"^model\.factory: .*returned int, not a torch"):
        fedsim.run({"rounds": 1, "clients_per_round": 2}, model=lambda s, k: 3, data=data,
                   run_dir=tmp_path / "a")
    with pytest.raises(ScenarioError, match=r"^model\.factory: .*\[batch, 3\] logits, got "
                                            r"\[2, 5\]"):
        fedsim.run({"rounds": 1, "clients_per_round": 2}, data=data, run_dir=tmp_path / "b",
                   model=lambda s, k: nn.Sequential(nn.Flatten(), nn.Linear(16, 5)))
    with pytest.raises(ScenarioError, match="^clients_per_round: cohort of 9"):
        fedsim.run({"clients_per_round": 9}, model=_model(), data=data, run_dir=tmp_path / "c")
    with pytest.raises(ScenarioError, match="^variant: the scenario has variants; allowed: "):
        fedsim.run("quickstart")
    with pytest.raises(ScenarioError, match="^model.buffers: unknown value 'fedbn'"):
        fedsim.run({"clients_per_round": 4, "model": {"buffers": "fedbn"}}, model=_model(),
                   data=data)


def test_generic_models_take_the_vmap_path():
    data = _data()
    sc = _scenario("average")
    for model, engine in [
        (nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), "fused_mlp"),
        (nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)), "vmap"),
        (_model(), "vmap"),
    ]:
        pop, _, _ = build_population(sc, data, "cpu", model=model)
        assert pop.engine == engine
    # the README's example model (BatchNorm and Dropout) trains batched, not in the loop
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from own_model import make_model
    finally:
        sys.path.remove(str(ROOT / "examples"))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 40)
    run = FederatedRun(_scenario("average"), Path.cwd(), fedsim.FederatedData.from_arrays(
        x, y, x, y, num_clients=4, num_classes=10), make_model)
    run.round(1, 0)
    assert run.pop.engine == "vmap" and run.pop.stochastic and run.pop.d_buffers


def test_from_arrays_one_liner_and_errors():
    x, y, xt, yt = _arrays()
    data = fedsim.FederatedData.from_arrays(x.astype(np.float64), y.astype(np.int32), xt,
                                            yt.tolist(), num_clients=5)
    assert data.num_clients == 5 and data.num_classes == 3 and data.input_shape == (1, 4, 4)
    assert data.x_train.dtype == np.float32 and data.y_test.dtype == np.int64
    assert sorted(np.concatenate(data.client_indices).tolist()) == list(range(len(y)))
    # the partition stream of the same seed as a scenario's
    again = fedsim.FederatedData.from_arrays(x, y, xt, yt, num_clients=5)
    assert all(np.array_equal(a, b) for a, b in zip(data.client_indices, again.client_indices,
                                                    strict=True))
    own = fedsim.FederatedData.from_arrays(x, y, xt, yt, partition=[np.arange(10),
                                                                     np.arange(10, 48)])
    assert own.num_clients == 2 and own.client_sizes().tolist() == [10, 38]
    skewed = fedsim.FederatedData.from_arrays(x, y, xt, yt, partition="dirichlet", alpha=0.3,
                                              num_clients=3)
    assert skewed.num_clients == 3 and skewed.partition == "dirichlet(α=0.3)"
    assert (data.partition, own.partition) == ("iid", "given")
    with pytest.raises(DataError, match="y_train: labels must be integers"):
        fedsim.FederatedData.from_arrays(x, y + 0.5, xt, yt)
    with pytest.raises(DataError, match="y_test: labels must be >= 0"):
        fedsim.FederatedData.from_arrays(x, y, xt, yt - 1)
    with pytest.raises(DataError, match="partition: client index sets overlap"):
        fedsim.FederatedData.from_arrays(x, y, xt, yt, partition=[np.arange(5), np.arange(5)])
    with pytest.raises(DataError, match="expected x"):
        fedsim.FederatedData.from_arrays(x, y[:-1], xt, yt)
    with pytest.raises(ScenarioError, match="^data.num_clients"):
        fedsim.FederatedData.from_arrays(x, y, xt, yt, num_clients=100)


# ------------------------------------------------------------------ model.factory (TOML)

MODELS_PY = """
from torch import nn

def cnn_bn(input_shape, num_classes):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * h * w, num_classes))

def not_a_module(input_shape, num_classes):
    return [input_shape]

def raises(input_shape, num_classes):
    raise ValueError("bad width")

VALUE = 3
"""

SCENARIO = """
name = "own"
rounds = 2
clients_per_round = 4
[data]
num_clients = 8
[model]
factory = "mymodels:cnn_bn"
buffers = "local"
"""


def _cli(*args, cwd):
    return subprocess.run([FEDSIM, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_factory_from_toml_runs_and_validates(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODELS_PY)
    (tmp_path / "own.toml").write_text(SCENARIO)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the module is found next to the scenario, from any working folder
    proc = _cli("run", str(tmp_path / "own.toml"), "--out", str(tmp_path / "runs"), "--quiet",
                cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "runs" / "own" / "summary.json").read_text()
    assert '"num_params": 2618' in summary  # 36+4 conv, 4+4 BN, 256*10+10 linear
    cases = {
        "mymodels:not_a_module": "model.factory: mymodels:not_a_module((1, 8, 8), 10) "
                                 "returned list, not a torch.nn.Module",
        "mymodels:raises": "model.factory: mymodels:raises((1, 8, 8), 10) raised ValueError: "
                           "bad width",
        "mymodels:nope": "model.factory: module 'mymodels' has no attribute 'nope'",
        "mymodels:VALUE": "model.factory: 'mymodels:VALUE' is a int, not a function "
                          "(input_shape, num_classes) -> nn.Module",
        "nomodule:f": "model.factory: cannot import module 'nomodule'; it must be importable "
                      "(installed, or a .py file next to the scenario or in the working folder)",
        "no colon": "model.factory: must be 'package.module:function', got 'no colon'",
    }
    for spec, message in cases.items():
        proc = _cli("validate", str(tmp_path / "own.toml"), "--set", f'model.factory="{spec}"',
                    cwd=elsewhere)
        assert proc.returncode == 2, (spec, proc.stderr)
        assert proc.stderr == f"fedsim: error: {message}\n"
    proc = _cli("validate", str(tmp_path / "own.toml"), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ user metrics


def _accuracy(logits, labels):
    return (logits.argmax(1) == labels).float().mean()


def _nll(logits, labels):
    return F.cross_entropy(logits, labels).item()


def test_user_metrics_are_columns_of_metrics_csv(tmp_path):
    from fedsim.results.plots import compare_table, plot_run
    from fedsim.results.records import METRIC_FIELDS, read_metrics

    data = _data()
    res = fedsim.run({"rounds": 4, "clients_per_round": 2, "eval_every": 2}, model=_model(),
                     data=data, run_dir=tmp_path / "run",
                     metrics={"my_accuracy": _accuracy, "my_loss": _nll})
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == [*METRIC_FIELDS, "my_accuracy", "my_loss"]
    rows = read_metrics(tmp_path / "run")
    for row in rows:
        if row["test_accuracy"] is None:  # rounds not evaluated: empty cells
            assert row["my_accuracy"] is None and row["my_loss"] is None
        else:  # the global model in eval mode, with its buffers: what fedsim evaluates
            assert row["my_accuracy"] == pytest.approx(row["test_accuracy"])
            assert row["my_loss"] == pytest.approx(row["test_loss"], rel=1e-5)
    assert [r["round"] for r in rows if r["my_loss"] is not None] == [2, 4]
    assert res.summary["final_metrics"] == {"my_accuracy": rows[-1]["my_accuracy"],
                                            "my_loss": rows[-1]["my_loss"]}
    jsonl = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert '"my_loss": null' in jsonl[0] and '"my_accuracy": ' in jsonl[1]
    plot_run(tmp_path / "run")  # fedsim plot and compare still read the file
    from fedsim.results.plots import setup_text  # titles name the given data and its split

    assert setup_text(tmp_path / "run") == "arrays, iid, 4 clients (2 per round), 4 rounds"
    assert "| run |" in compare_table([tmp_path / "run"], labels=["run"])
    # decentralized: the average model's metrics
    res = fedsim.run({"rounds": 2, "clients_per_round": 4, "algorithm": {"name": "dsgd"},
                      "network": {"topology": "ring", "topology_params": {"n": 4}}},
                     model=_model(), data=data, run_dir=tmp_path / "dsgd",
                     metrics={"my_accuracy": _accuracy})
    rows = read_metrics(tmp_path / "dsgd")
    assert [r["my_accuracy"] for r in rows] == pytest.approx([r["test_accuracy"] for r in rows])


def test_user_metric_errors_are_one_line(tmp_path):
    from fedsim.errors import FedsimError

    data = _data()
    sc = {"rounds": 1, "clients_per_round": 2}
    for metrics, message in [
        ({"test_loss": _nll}, "^metrics: 'test_loss' is one of fedsim's own columns"),
        ({"my loss": _nll}, "^metrics: names must be identifiers"),
        ({"m": 3}, r"^metrics\.m: must be a function \(logits, labels\) -> float, got int"),
        ([_nll], "^metrics: must be a dict"),
    ]:
        with pytest.raises(ScenarioError, match=message):
            fedsim.run(sc, model=_model(), data=data, run_dir=tmp_path / "a", metrics=metrics)
        assert not (tmp_path / "a").exists()  # refused before anything is written

    def broken(logits, labels):
        raise KeyError("oops")

    with pytest.raises(FedsimError, match=r"^metrics\.bad: .*broken\(logits, labels\) raised "
                                          "KeyError: 'oops'") as info:
        fedsim.run(sc, model=_model(), data=data, run_dir=tmp_path / "b",
                   metrics={"bad": broken})
    assert "\n" not in str(info.value)


def test_integer_buffers_average_rounded():
    # num_batches_tracked counts steps: clients of 5, 10, 15, 18 samples at batch size 8
    # take 1, 2, 2, 3 steps; the sample-weighted mean 109/48 = 2.27 is rounded to 2
    x, y, xt, yt = _arrays()
    bounds = np.cumsum([0, 5, 10, 15, 18])
    split = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    data = fedsim.FederatedData.from_arrays(x, y, xt, yt, partition=split)
    run = FederatedRun(_scenario("average", batch_size=8), Path.cwd(), data, _model())
    run.round(1, 0)
    assert run.buffers[-1].item() == 2.0 == round(109 / 48)
    local = FederatedRun(_scenario("local", batch_size=8), Path.cwd(), data, _model())
    local.round(1, 0)
    assert local.client_buffers[:, -1].tolist() == [1.0, 2.0, 2.0, 3.0]
    assert local.eval_buffers()[-1].item() == 2.0
