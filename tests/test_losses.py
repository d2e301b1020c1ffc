"""The clients' loss as a choice: cross-entropy, or a per-sample function of the user's
(from Python or from ``algorithm.loss`` in TOML)."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fedsim
from fedsim.errors import ScenarioError
from fedsim.population import Population

SCENARIO = {"rounds": 3, "clients_per_round": 5, "data": {"num_clients": 10},
            "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"lr": 0.1}}


def hand_cross_entropy(logits, labels):
    return -logits.log_softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


def smoothed(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.2)


def test_a_hand_written_cross_entropy_trains_as_fedsims_own(tmp_path):
    own = fedsim.run(SCENARIO, run_dir=tmp_path / "own")
    hand = fedsim.run(SCENARIO, run_dir=tmp_path / "hand", loss=hand_cross_entropy)
    torch.testing.assert_close(hand.final_params, own.final_params, rtol=1e-4, atol=1e-5)
    assert hand.summary["final_accuracy"] == pytest.approx(own.summary["final_accuracy"],
                                                           abs=0.01)


def test_another_loss_trains_to_another_model(tmp_path):
    own = fedsim.run(SCENARIO, run_dir=tmp_path / "own")
    smooth = fedsim.run(SCENARIO, run_dir=tmp_path / "smooth", loss=smoothed)
    assert not torch.allclose(smooth.final_params, own.final_params, atol=1e-4)
    # 10 classes, chance 0.1; cross-entropy itself reaches about the same in 3 rounds
    assert smooth.summary["final_accuracy"] > 0.3
    assert smooth.summary["final_accuracy"] == pytest.approx(own.summary["final_accuracy"],
                                                             abs=0.1)


def test_batched_equals_loop_with_a_users_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    idx = [torch.arange(0, 7), torch.arange(7, 20), torch.arange(20, 40)]
    out = []
    for batched in (True, False):
        pop = Population(model, x, y, batched=batched, loss=smoothed)
        gen = torch.Generator().manual_seed(3)
        out.append(pop.train(pop.flat_params(), idx, lr=0.1, epochs=2, batch_size=4, gen=gen))
    torch.testing.assert_close(out[0].updates, out[1].updates, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0].losses, out[1].losses, rtol=1e-5, atol=1e-6)


def test_test_loss_is_the_users_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    plain = Population(model, x, y)
    double = Population(model, x, y, loss=lambda z, t: 2 * F.cross_entropy(z, t,
                                                                           reduction="none"))
    loss, acc = plain.evaluate(plain.flat_params(), x, y)
    loss2, acc2 = double.evaluate(double.flat_params(), x, y)
    assert loss2 == pytest.approx(2 * loss) and acc2 == acc


def test_loss_from_the_scenario_file(tmp_path):
    (tmp_path / "mylosses.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F

        def smooth(logits, labels):
            return F.cross_entropy(logits, labels, reduction="none", label_smoothing=0.2)
    """))
    path = tmp_path / "s.toml"
    path.write_text(textwrap.dedent("""
        rounds = 3
        clients_per_round = 5
        [data]
        num_clients = 10
        [model]
        name = "mlp"
        hidden = [16]
        [algorithm]
        lr = 0.1
        loss = "mylosses:smooth"
    """))
    from_file = fedsim.run(path, run_dir=tmp_path / "file")
    from_python = fedsim.run(SCENARIO, run_dir=tmp_path / "python", loss=smoothed)
    assert torch.equal(from_file.final_params, from_python.final_params)


@pytest.mark.parametrize(("loss", "message"), [
    (lambda z, y: F.cross_entropy(z, y), r"must return one loss per sample \(\[B\]"),
    (lambda z, y: 1 / 0, "raised ZeroDivisionError"),
    (lambda z, y: torch.zeros(len(y)), "does not depend on the logits"),
])
def test_bad_losses_are_one_line_errors(tmp_path, loss, message):
    with pytest.raises(ScenarioError, match=f"^algorithm.loss: .*{message}") as err:
        fedsim.run(SCENARIO, run_dir=tmp_path / "r", loss=loss)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("spec", "message"), [
    ("smooth", "must be 'cross_entropy' or 'package.module:function'"),
    ("no_such_module_here:f", "cannot import module 'no_such_module_here'"),
    ("math:pi", "'math:pi' is a float, not a function \\(logits, labels\\)"),
])
def test_bad_loss_specs_are_one_line_errors(tmp_path, spec, message):
    with pytest.raises(ScenarioError, match=f"^algorithm.loss: {message}"):
        fedsim.run({**SCENARIO, "algorithm": {"loss": spec}}, run_dir=tmp_path / "r")
