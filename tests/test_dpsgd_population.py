"""DP-SGD inside local training (``privacy.mode = "sample"``): the population's steps are
``fedsim.privacy.dpsgd``'s (checked against opacus in test_dpsgd.py), and a run reports
each client's sample-level epsilon from opacus' accountant."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fedsim
from fedsim.errors import ScenarioError
from fedsim.population import Population
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.dpsgd import dp_sgd_step, stack_params
from fedsim.results.records import read_metrics


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


def test_one_step_equals_dp_sgd_step_without_noise():
    model = _model()
    x, y = torch.randn(24, 5) * 3, torch.randint(0, 3, (24,))
    idx = [torch.arange(0, 8), torch.arange(8, 16), torch.arange(16, 24)]
    pop = Population(model, x, y, dp_sgd=(0.5, 0.0))
    assert pop.engine == "vmap"
    gen = torch.Generator().manual_seed(1)
    orders = pop.draw_orders(idx, 1, torch.Generator().manual_seed(1))
    res = pop.train(pop.flat_params(), idx, lr=0.2, epochs=1, batch_size=8, gen=gen)
    # the same minibatch (the whole client, in the drawn order) through dp_sgd_step
    xb, yb = x[orders[0]], y[orders[0]]  # [3, 8, 5], [3, 8]
    new = dp_sgd_step(model, stack_params(model, 3), xb, yb, lr=0.2, clip=0.5,
                      noise_multiplier=0.0, gen=torch.Generator())
    start = stack_params(model, 3)
    expected = torch.cat([(new[k] - start[k]).reshape(3, -1) for k in start], dim=1)
    torch.testing.assert_close(res.updates, expected, rtol=1e-5, atol=1e-6)
    # clipping bites: every per-sample gradient is clipped to 0.5, so a step is <= lr * 0.5
    assert float(res.updates.norm(dim=1).max()) <= 0.2 * 0.5 * (1 + 1e-5)


def test_noise_is_seeded_and_has_its_std():
    model = _model()
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    idx = [torch.arange(0, 20), torch.arange(20, 40)]
    pop = Population(model, x, y, dp_sgd=(1.0, 2.0))
    quiet = Population(model, x, y, dp_sgd=(1.0, 0.0))

    def run(p, seed):
        return p.train(p.flat_params(), idx, lr=1.0, epochs=1, batch_size=20,
                       gen=torch.Generator().manual_seed(seed)).updates

    a, b = run(pop, 3), run(pop, 3)
    assert torch.equal(a, b)  # reruns are identical
    noise = a - run(quiet, 3)  # one step: lr * N(0, (zC)^2) / 20 per coordinate
    assert float(noise.std()) == pytest.approx(2.0 / 20, rel=0.25)


def test_refused_where_it_cannot_run():
    x, y = torch.randn(10, 5), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="BatchNorm"):
        Population(nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)), x, y, dp_sgd=(1.0, 1.0))
    with pytest.raises(ValueError, match="batched"):
        Population(_model(), x, y, batched=False, dp_sgd=(1.0, 1.0))


SC = {"rounds": 3, "clients_per_round": 8, "data": {"num_clients": 8, "partition": "iid"},
      "model": {"name": "mlp", "hidden": [16]},
      "algorithm": {"lr": 0.1, "batch_size": 32, "local_epochs": 2},
      "privacy": {"mode": "sample", "clip": 1.0, "noise_multiplier": 1.5, "delta": 1e-5}}


def test_a_run_reports_the_worst_clients_epsilon(tmp_path):
    res = fedsim.run(SC, run_dir=tmp_path / "run")
    rows = read_metrics(res.run_dir)
    from fedsim.data import load_federated
    from fedsim.scenario import from_dict

    sizes = load_federated(from_dict(SC).data, 0, tmp_path).client_sizes()
    for t, row in enumerate(rows, start=1):  # every client trains every round
        want = max(epsilon("rdp", 1.5, min(1.0, 32 / n), t * 2 * -(-int(n) // 32), 1e-5)
                   for n in sizes)
        assert row["epsilon"] == pytest.approx(want, rel=1e-12)
    assert res.summary["privacy"]["mode"] == "sample"
    assert res.summary["final_accuracy"] > 0.1  # it trains


@pytest.mark.parametrize(("change", "message"), [
    ({"batched": False}, r"^batched: must be true with privacy\.mode = 'sample'"),
    ({"privacy": {**SC["privacy"], "target_epsilon": 3.0}}, r"^privacy\.target_epsilon: "),
])
def test_one_line_errors(tmp_path, change, message):
    with pytest.raises(ScenarioError, match=message):
        fedsim.run({**SC, **change}, run_dir=tmp_path / "bad")


def test_a_batchnorm_model_is_refused_naming_the_mode(tmp_path):
    def bn(shape, classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8),
                             nn.Linear(8, classes))

    with pytest.raises(ScenarioError, match=r"^privacy\.mode: 'sample' \(DP-SGD\): .*BatchNorm"):
        fedsim.run(SC, model=bn, run_dir=tmp_path / "bn")
