"""Server optimizers (fedsim.stages.server): FedAvgM, FedAdagrad, FedAdam, FedYogi.

Golden numbers worked by hand on a two-parameter problem; equality with Flower's
strategies of the same names (the ``flwr.server.strategy`` classes through
``aggregate_fit`` on hand-made ``FitRes``, the ``flwr.serverapp.strategy`` ones with their
FedAvg step replaced by the same weighted average) on random rounds; invariants by
hypothesis; a FedAdam run on digits that learns; one-line errors for bad parameters.

References: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.cli import main
from fedsim.config import AlgorithmConfig
from fedsim.errors import ScenarioError
from fedsim.stages.aggregate import weighted_mean
from fedsim.stages.server import (
    SERVER_OPTS,
    ServerState,
    build_server_opt,
    fedadagrad,
    fedadam,
    fedavgm,
    fedyogi,
    server_sgd,
)
from tests.helpers import make_ctx

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "fedsim" / "scenarios" / "quickstart.toml")
F64 = torch.float64


def _run(opt, x0, deltas):
    """The parameters after each update, and the final state."""
    x, state, out = torch.tensor(x0, dtype=F64), opt.init(len(x0)), []
    for delta in deltas:
        x, state = opt.apply(x, torch.tensor(delta, dtype=F64), state)
        out.append(x.tolist())
    return out, state


# ------------------------------------------------------------ golden numbers by hand


def test_fedavgm_by_hand():
    # m1 = D1 = [2, -4]; x1 = [0, 1] + 0.5 m1 = [1, -1]
    # m2 = 0.5 m1 + D2 = [1, -2] + [1, 2] = [2, 0]; x2 = x1 + 0.5 m2 = [2, -1]
    xs, state = _run(fedavgm(lr=0.5, momentum=0.5), [0.0, 1.0], [[2.0, -4.0], [1.0, 2.0]])
    assert xs == [[1.0, -1.0], [2.0, -1.0]]
    assert state.t == 2 and state.m.tolist() == [2.0, 0.0] and state.v is None


def test_fedadagrad_by_hand():
    # v1 = D1^2 = [9, 16]; x1 = [0, 1] + [3 / (3 + 1), -4 / (4 + 1)] = [0.75, 0.2]
    # v2 = v1 + [16, 0] = [25, 16]; x2 = x1 + [4 / (5 + 1), 0 / (4 + 1)] = [0.75 + 2/3, 0.2]
    xs, state = _run(fedadagrad(lr=1.0, tau=1.0), [0.0, 1.0], [[3.0, -4.0], [4.0, 0.0]])
    assert xs[0] == pytest.approx([0.75, 0.2], abs=1e-15)
    assert xs[1] == pytest.approx([0.75 + 2 / 3, 0.2], abs=1e-15)
    assert state.v.tolist() == [25.0, 16.0]


@pytest.mark.parametrize("correction", ["none", "adam", "flower"])
def test_fedadam_by_hand(correction):
    # beta1 = 0.5, beta2 = 0.75, tau = 1, D1 = [2, -4], D2 = [4, 0]:
    # m1 = 0.5 D1 = [1, -2]; v1 = 0.25 D1^2 = [1, 4]; step1 = c1 [1 / 2, -2 / 3]
    # m2 = 0.5 m1 + 0.5 D2 = [2.5, -1]; v2 = 0.75 v1 + 0.25 D2^2 = [4.75, 3]
    # step2 = c2 [2.5 / (sqrt(4.75) + 1), -1 / (sqrt(3) + 1)]
    c = {"none": (1.0, 1.0),
         "adam": (math.sqrt(1 - 0.75) / (1 - 0.5), math.sqrt(1 - 0.75**2) / (1 - 0.5**2)),
         "flower": (math.sqrt(1 - 0.75**2) / (1 - 0.5**2),
                    math.sqrt(1 - 0.75**3) / (1 - 0.5**3))}[correction]
    opt = fedadam(lr=1.0, beta1=0.5, beta2=0.75, tau=1.0, bias_correction=correction)
    xs, state = _run(opt, [0.0, 1.0], [[2.0, -4.0], [4.0, 0.0]])
    x1 = [c[0] * 0.5, 1.0 - c[0] * 2 / 3]
    x2 = [x1[0] + c[1] * 2.5 / (math.sqrt(4.75) + 1), x1[1] - c[1] / (math.sqrt(3) + 1)]
    assert np.allclose(xs, [x1, x2], rtol=0, atol=1e-15)
    assert state.m.tolist() == [2.5, -1.0] and state.v.tolist() == [4.75, 3.0]


def test_fedyogi_by_hand():
    # beta1 = 0.5, beta2 = 0.75, tau = 1, D1 = [2, -4], D2 = [4, 0]:
    # v1 = 0 - 0.25 D1^2 sign(0 - D1^2) = [1, 4]; m1 = [1, -2]; x1 = [0.5, 1 - 2/3]
    # v2 = [1 - 0.25 * 16 * sign(1 - 16), 4 - 0] = [5, 4]; m2 = [2.5, -1]
    # x2 = x1 + [2.5 / (sqrt(5) + 1), -1 / (2 + 1)] = [0.5 + 2.5 / (sqrt(5) + 1), 0]
    opt = fedyogi(lr=1.0, beta1=0.5, beta2=0.75, tau=1.0)
    xs, state = _run(opt, [0.0, 1.0], [[2.0, -4.0], [4.0, 0.0]])
    assert np.allclose(xs, [[0.5, 1 / 3], [0.5 + 2.5 / (math.sqrt(5) + 1), 0.0]], rtol=0,
                       atol=1e-15)
    assert state.v.tolist() == [5.0, 4.0]


def test_v0_starts_the_second_moment():
    # fedadagrad with v0 = 16: v1 = 16 + 9 = 25, x1 = 3 / (5 + 0) = 0.6 (tau tiny)
    xs, _ = _run(fedadagrad(lr=1.0, tau=1e-30, v0=16.0), [0.0], [[3.0]])
    assert xs[0] == pytest.approx([0.6], abs=1e-15)


# ------------------------------------------------------------ the default is today's step


def test_default_is_server_lr_sgd_bit_for_bit():
    assert AlgorithmConfig().server_opt == {"name": "sgd"}
    x, u = torch.randn(50, generator=torch.Generator().manual_seed(0)), torch.randn(50)
    for lr in (1.0, 0.3):
        built, _ = build_server_opt({"name": "sgd"}, lr).apply(x, u, None)
        assert torch.equal(built, server_sgd(lr).apply(x, u, None)[0])
        assert torch.equal(built, x + lr * u)


def test_state_stays_on_the_parameters_device_and_dtype():
    for name in ("fedavgm", "fedadagrad", "fedadam", "fedyogi"):
        opt = build_server_opt({"name": name})
        x = torch.zeros(4, dtype=torch.float32)
        x, state = opt.apply(x, torch.ones(4), opt.init(4))
        assert isinstance(state, ServerState) and state.t == 1
        assert state.m.dtype == torch.float32 and x.dtype == torch.float32


# ------------------------------------------------------------ equal to Flower


def _flower_cases():
    """(fedsim spec, legacy strategy factory, serverapp strategy factory) per optimizer.

    Flower's defaults on both sides, then non-default values; fedadam with Flower's bias
    correction (fedsim's default follows the paper, which has none)."""
    from flwr.server import strategy as legacy
    from flwr.serverapp import strategy as app

    def both(name, legacy_kw=None, **kw):
        return (lambda p: getattr(legacy, name)(initial_parameters=p, **(legacy_kw or kw)),
                lambda: getattr(app, name)(**kw))

    tau = {"tau": 1e-3}  # the serverapp default; the legacy FedAdam and FedAdagrad use 1e-9
    return [
        ({"name": "fedavgm", "momentum": 0.9}, *both("FedAvgM", server_momentum=0.9)),
        ({"name": "fedavgm", "lr": 0.7, "momentum": 0.5},
         *both("FedAvgM", server_learning_rate=0.7, server_momentum=0.5)),
        ({"name": "fedadagrad"}, *both("FedAdagrad", legacy_kw=tau)),
        ({"name": "fedadagrad", "lr": 0.03, "tau": 1e-9}, *both("FedAdagrad", eta=0.03,
                                                               tau=1e-9)),
        ({"name": "fedadam", "bias_correction": "flower"}, *both("FedAdam", legacy_kw=tau)),
        ({"name": "fedadam", "lr": 0.02, "beta1": 0.8, "beta2": 0.9, "tau": 1e-9,
          "bias_correction": "flower"},
         *both("FedAdam", eta=0.02, beta_1=0.8, beta_2=0.9, tau=1e-9)),
        ({"name": "fedyogi"}, *both("FedYogi")),
        ({"name": "fedyogi", "lr": 0.1, "beta1": 0.5, "beta2": 0.9, "tau": 1e-4},
         *both("FedYogi", eta=0.1, beta_1=0.5, beta_2=0.9, tau=1e-4)),
    ]


def test_defaults_are_flowers():
    """fedsim's defaults are those of Flower's current (serverapp) strategies, but FedAvgM's
    momentum (0.9: Flower's 0 makes it FedAvg) and FedAdam's bias correction (the paper's
    none; Flower's is ``"flower"``)."""
    import inspect

    from flwr.serverapp import strategy as app

    names = {"eta": "lr", "beta_1": "beta1", "beta_2": "beta2", "tau": "tau",
             "server_learning_rate": "lr", "server_momentum": "momentum"}
    for flower, ours in [("FedAdagrad", fedadagrad), ("FedAdam", fedadam),
                         ("FedYogi", fedyogi), ("FedAvgM", fedavgm)]:
        theirs = {names[k]: p.default for k, p in
                  inspect.signature(getattr(app, flower)).parameters.items() if k in names}
        mine = {k: p.default for k, p in inspect.signature(ours).parameters.items()
                if k in theirs}
        if flower == "FedAvgM":
            assert theirs.pop("momentum") == 0.0 and mine.pop("momentum") == 0.9
        assert mine == theirs, flower
    assert app.FedAdagrad().beta_1 == 0.0 == inspect.signature(fedadagrad).parameters[
        "beta1"].default


SHAPES = [(3, 4), (5,), (2, 2, 2)]
ROUNDS = 6


def _rounds(seed: int):
    """Per round: client models as lists of arrays (around a drifting centre), sample counts."""
    rng = np.random.default_rng(seed)
    x0 = [rng.normal(size=s) for s in SHAPES]
    rounds = []
    for _ in range(ROUNDS):
        m = int(rng.integers(1, 6))
        scale = 10.0 ** rng.uniform(-3, 0)
        models = [[a + scale * rng.normal(size=a.shape) for a in x0] for _ in range(m)]
        rounds.append((models, rng.integers(1, 60, size=m)))
    return x0, rounds


def _flat(arrays) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _fedsim_round(opt, x, state, models, counts):
    """fedsim's round in float64: rows w_k - x, the sample-weighted mean, the server step."""
    xt = torch.tensor(x, dtype=F64)
    rows = torch.stack([torch.tensor(_flat(w), dtype=F64) - xt for w in models])
    agg, _ = weighted_mean().aggregate(rows, None, make_ctx(torch.tensor(counts, dtype=F64)))
    x_new, state = opt.apply(xt, agg, state)
    return x_new.numpy(), state


def _compare(spec, make_legacy, make_app, seed, monkeypatch) -> dict[str, float]:
    """Max abs difference over the rounds between Flower's new global model and fedsim's:
    fedsim's own pipeline in float64 against either Flower API; and fedsim's step in float32
    on Flower's aggregate (``avg - x``), from Flower's model each round."""
    from flwr.app import Array, ArrayRecord
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.serverapp.strategy import fedavg as app_fedavg

    x0, rounds = _rounds(seed)
    keys = [f"p{i}" for i in range(len(x0))]
    box = {}
    # the serverapp strategies' own FedAvg step needs a running Flower app (Messages with
    # a run id); it is replaced by the same sample-weighted average of the client models
    monkeypatch.setattr(app_fedavg.FedAvg, "aggregate_train",
                        lambda self, rnd, replies: (box["avg"], None))
    legacy, app = make_legacy(ndarrays_to_parameters(x0)), make_app()
    opt64, opt32 = build_server_opt(spec), build_server_opt(spec)
    d = int(sum(a.size for a in x0))
    x, st64, st32 = _flat(x0), opt64.init(d), opt32.init(d)
    current = [a.copy() for a in x0]
    worst = {"legacy": 0.0, "serverapp": 0.0, "float32": 0.0}
    for rnd, (offsets, counts) in enumerate(rounds, start=1):
        # each client trained from the current global model
        models = [[c + (w - a) for c, w, a in zip(current, mw, x0, strict=True)]
                  for mw in offsets]
        res = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(w), int(n), {}))
               for w, n in zip(models, counts, strict=True)]
        flower = _flat(parameters_to_ndarrays(legacy.aggregate_fit(rnd, res, [])[0]))
        total = float(np.sum(counts))
        avg = [sum(w[i] * (n / total) for w, n in zip(models, counts, strict=True))
               for i in range(len(x0))]
        box["avg"] = ArrayRecord(dict(zip(keys, [Array(a) for a in avg], strict=True)))
        if hasattr(app, "beta_1"):  # FedOpt: what configure_train would set
            app.current_arrays = dict(zip(keys, current, strict=True))
        elif app.current_arrays is None:  # FedAvgM keeps its own from round 1
            app.current_arrays = ArrayRecord(dict(zip(keys, [Array(a) for a in current],
                                                      strict=True)))
        out, _ = app.aggregate_train(rnd, [])
        served = _flat([out[k].numpy() for k in keys])
        x, st64 = _fedsim_round(opt64, x, st64, models, counts)
        x32, st32 = opt32.apply(torch.tensor(_flat(current), dtype=torch.float32),
                                torch.tensor(_flat(avg) - _flat(current), dtype=torch.float32),
                                st32)
        worst["legacy"] = max(worst["legacy"], float(np.max(np.abs(flower - x))))
        worst["serverapp"] = max(worst["serverapp"], float(np.max(np.abs(served - x))))
        worst["float32"] = max(worst["float32"],
                               float(np.max(np.abs(served - x32.double().numpy()))))
        current = np.split(served, np.cumsum([a.size for a in x0])[:-1])
        current = [c.reshape(a.shape) for c, a in zip(current, x0, strict=True)]
    return worst


@pytest.mark.parametrize("case", range(8))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_flower_strategies(case, seed, monkeypatch):
    spec, make_legacy, make_app = _flower_cases()[case]
    worst = _compare(spec, make_legacy, make_app, seed, monkeypatch)
    assert worst["legacy"] < 1e-10 and worst["serverapp"] < 1e-10  # seen: 4e-13
    assert worst["float32"] < 1e-6  # seen: 3.4e-7


# ------------------------------------------------------------ invariants


deltas = st.lists(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=3, max_size=3),
                  min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(deltas, st.floats(0.0, 0.99), st.floats(0.0, 0.999))
def test_second_moments_stay_nonnegative(ds, beta1, beta2):
    for opt in (fedadam(beta1=beta1, beta2=beta2), fedyogi(beta1=beta1, beta2=beta2),
                fedadagrad(beta1=beta1)):
        _, state = _run(opt, [0.0, 0.0, 0.0], ds)
        assert bool((state.v >= 0).all()) and bool(torch.isfinite(state.v).all())


@settings(max_examples=60, deadline=None)
@given(deltas, st.floats(1e-3, 10.0))
def test_fedadagrad_without_momentum_moves_each_coordinate_at_most_lr(ds, lr):
    # |Delta_t| <= sqrt(v_t) since v_t sums every Delta^2: each step is at most lr
    xs, _ = _run(fedadagrad(lr=lr, tau=1e-9), [0.0, 0.0, 0.0], ds)
    prev = [0.0, 0.0, 0.0]
    for x in xs:
        assert max(abs(a - b) for a, b in zip(x, prev, strict=True)) <= lr * (1 + 1e-12)
        prev = x


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(1e-3, 1e3), min_size=3, max_size=3), st.lists(st.booleans(),
       min_size=3, max_size=3), st.floats(1e-3, 10.0))
def test_fedadam_without_memory_is_sign_descent(mags, signs, lr):
    delta = [m if s else -m for m, s in zip(mags, signs, strict=True)]
    (x,), _ = _run(fedadam(lr=lr, beta1=0.0, beta2=0.0, tau=1e-30), [0.0, 0.0, 0.0], [delta])
    assert x == pytest.approx([lr * math.copysign(1.0, d) for d in delta], rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(deltas, st.floats(1e-3, 10.0))
def test_fedavgm_without_momentum_is_server_sgd(ds, lr):
    assert _run(fedavgm(lr=lr, momentum=0.0), [1.0, 2.0, 3.0], ds)[0] == \
        _run(server_sgd(lr), [1.0, 2.0, 3.0], ds)[0]


def test_a_zero_aggregate_from_rest_moves_nothing():
    for name in SERVER_OPTS:
        xs, _ = _run(build_server_opt({"name": name}), [1.0, -2.0], [[0.0, 0.0]])
        assert xs == [[1.0, -2.0]]


# ------------------------------------------------------------ end to end


def test_fedadam_learns_digits(tmp_path):
    from fedsim.results.records import read_metrics
    from fedsim.study import run_file

    path = tmp_path / "adam.toml"
    path.write_text(
        'name = "adam"\nrounds = 10\nclients_per_round = 10\ndevice = "cpu"\n'
        '[data]\ndataset = "digits"\nnum_clients = 20\npartition = "iid"\n'
        '[model]\nname = "mlp"\nhidden = [32]\n'
        '[algorithm]\nlr = 0.1\nlocal_epochs = 1\nbatch_size = 16\n'
        'server_opt = { name = "fedadam", lr = 0.01, beta1 = 0.9, beta2 = 0.99, tau = 1e-3 }\n'
        '[network]\npolicy = "all"\n')
    (result,) = run_file(path, (), output_dir=str(tmp_path / "out"), progress=False, log=None)
    rows = read_metrics(result.run_dir)
    assert rows[-1]["test_accuracy"] > 0.5  # chance is 0.1; seen: 0.78
    assert rows[-1]["test_accuracy"] > rows[0]["test_accuracy"]


# ------------------------------------------------------------ scenario errors


@pytest.mark.parametrize(("setting", "key"), [
    ('{name = "adam"}', "algorithm.server_opt.name"),
    ('{name = ["fedadam"]}', "algorithm.server_opt.name"),
    ('{name = "fedadam", lr = 0}', "algorithm.server_opt.lr"),
    ('{name = "fedadam", lr = 1e39}', "algorithm.server_opt.lr"),
    ('{name = "fedadam", lr = nan}', "algorithm.server_opt.lr"),
    ('{name = "fedadam", beta1 = 1.0}', "algorithm.server_opt.beta1"),
    ('{name = "fedyogi", beta2 = -0.1}', "algorithm.server_opt.beta2"),
    ('{name = "fedadam", tau = 0}', "algorithm.server_opt.tau"),
    ('{name = "fedadam", tau = 1e-45}', "algorithm.server_opt.tau"),
    ('{name = "fedadagrad", v0 = -1}', "algorithm.server_opt.v0"),
    ('{name = "fedavgm", momentum = true}', "algorithm.server_opt.momentum"),
    ('{name = "fedadam", bias_correction = "kingma"}', "algorithm.server_opt.bias_correction"),
    ('{name = "fedyogi", bias_correction = "adam"}', "algorithm.server_opt.bias_correction"),
    ('{name = "fedadam", eta = 0.1}', "algorithm.server_opt.eta"),
    ('{name = "sgd", lr = 0.5}', "algorithm.server_opt.lr"),  # with server_lr = 0.5 below
])
def test_bad_parameters_are_one_line_exit_2(setting, key, capsys):
    extra = ["--set", "algorithm.server_lr=0.5"] if "sgd" in setting else []
    code = main(["validate", QUICK, "--set", f"algorithm.server_opt={setting}", *extra])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and key in err and "Traceback" not in err


def test_server_lr_belongs_to_sgd(capsys):
    code = main(["validate", QUICK, "--set", "algorithm.server_lr=0.5",
                 "--set", 'algorithm.server_opt={name = "fedadam"}'])
    err = capsys.readouterr().err
    assert code == 2 and "algorithm.server_lr" in err and err.count("\n") == 1


def test_decentralized_algorithms_have_no_server(capsys):
    ring = str(ROOT / "fedsim" / "scenarios" / "gossip_ring.toml")
    code = main(["validate", ring, "--set", 'algorithm.server_opt={name = "fedadam"}'])
    err = capsys.readouterr().err
    assert code == 2 and "algorithm.server_opt.name" in err and err.count("\n") == 1


def test_a_good_table_validates(capsys):
    assert main(["validate", QUICK, "--set", "variants={}", "--set",
                 'algorithm.server_opt={name = "fedyogi", lr = 0.01, tau = 1e-3}']) == 0


def test_every_server_opt_builds_from_its_defaults():
    for name in SERVER_OPTS:
        build_server_opt({"name": name})
    cfg = dataclasses.replace(AlgorithmConfig(), server_opt={"name": "fedadam"})
    from fedsim.algorithms import build_algorithm

    assert build_algorithm(cfg).server.init(3) == ServerState(0, None, None)


def test_variants_compare_server_optimizers(tmp_path):
    from fedsim.scenario import expand_variants, load_scenario

    path = tmp_path / "v.toml"
    path.write_text(
        'name = "v"\nrounds = 1\nclients_per_round = 2\n[data]\ndataset = "digits"\n'
        'num_clients = 4\n[variants]\nsgd = {}\n'
        'adam = { "algorithm.server_opt" = { name = "fedadam", lr = 0.01 } }\n'
        'yogi = { "algorithm.server_opt.name" = "fedyogi" }\n')
    runs = dict(expand_variants(load_scenario(path)))
    assert runs["sgd"].algorithm.server_opt == {"name": "sgd"}
    assert runs["adam"].algorithm.server_opt == {"name": "fedadam", "lr": 0.01}
    assert runs["yogi"].algorithm.server_opt == {"name": "fedyogi"}
    path.write_text(path.read_text().replace("lr = 0.01", "lr = -1"))
    with pytest.raises(ScenarioError, match=r"variants\.adam\.algorithm\.server_opt\.lr"):
        load_scenario(path)
