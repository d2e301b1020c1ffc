"""Gradient-leakage attacks (fedsim.privacy.leakage) and their grid (leakage_grid).

The thresholds were measured on the untrained 8x8 sigmoid CNN (seed 0) with the
first digits of scikit-learn's set; every run is seeded and deterministic on CPU.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from fedsim.errors import FedsimError
from fedsim.privacy.leakage import (
    ThreatModel,
    dlg,
    gaussian_sketch,
    idlg,
    infer_label,
    inverting_gradients,
    label_accuracy,
    matrix_sketch,
    observe,
    operator_sketch,
    orthogonal_sketch,
    psnr,
    run_attack,
    total_variation,
    update_message,
    victim_cnn,
)
from fedsim.privacy.leakage_grid import markdown_table, run_leakage_grid, summarize

SHAPE = (1, 1, 8, 8)


@pytest.fixture(autouse=True)
def one_thread():
    """Small double-backward graphs run fastest (and most predictably) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data[:8] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, torch.tensor(bunch.target[:8], dtype=torch.int64)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return victim_cnn(0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def attack_images(attack, model, x, y, threat, iterations, images=range(3)):
    """PSNRs and label accuracies of ``attack`` on single images; dummy seed = image index."""
    ps, accs = [], []
    for i in images:
        obs = observe(model, x[i : i + 1], y[i : i + 1], threat, gen(100 + i))
        res = run_attack(
            attack, model, obs, threat, x_shape=SHAPE, num_classes=10, generator=gen(i),
            iterations=iterations,
        )  # fmt: skip
        ps.append(psnr(res.x, x[i : i + 1]))
        accs.append(label_accuracy(res.labels, y[i : i + 1]))
    return ps, accs


# ----------------------------------------------------------------------------- metrics


def test_psnr_golden_numbers():
    a = torch.zeros(2, 1, 8, 8)
    assert psnr(a, a) == math.inf
    assert psnr(a + 0.1, a) == pytest.approx(20.0)  # MSE 1e-2, range 1
    assert psnr(a + 0.01, a) == pytest.approx(40.0)
    assert psnr(a + 1.0, a) == pytest.approx(0.0)
    assert psnr(a + 2.0, a, data_range=2.0) == pytest.approx(0.0)
    b = a.clone()
    b[0, 0, 0, :2] = 1.0  # MSE = 2 / 128
    assert psnr(b, a) == pytest.approx(10 * math.log10(64.0))
    with pytest.raises(ValueError, match="shape"):
        psnr(a[:1], a)


def test_label_accuracy_and_tv():
    assert label_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    x = torch.zeros(1, 1, 2, 2)
    x[..., 0, 0] = 1.0
    # |dx|: 2 pairs, one of them 1; |dy|: same -> 0.5 + 0.5
    assert float(total_variation(x)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- messages


def test_k_step_message_is_the_sgd_update_in_gradient_units(digits):
    x, y = digits
    net = victim_cnn(3, channels=4, dtype=torch.float64)
    w0 = torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    params = {k: v.detach() for k, v in net.named_parameters()}
    msg = update_message(net, params, x[:2].double(), y[:2], local_steps=3, lr=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:2].double()), y[:2]).backward()
        opt.step()
    wk = torch.nn.utils.parameters_to_vector(net.parameters()).detach()
    torch.testing.assert_close(msg, (w0 - wk) / 0.2, rtol=1e-9, atol=1e-10)


def test_observe_sketch_and_noise_are_seeded(digits, model):
    x, y = digits
    d = sum(p.numel() for p in model.parameters())
    r = gaussian_sketch(d, 50, gen(1))
    threat = ThreatModel(sketch=matrix_sketch(r), noise_std=0.01)
    a = observe(model, x[:1], y[:1], threat, gen(7))
    b = observe(model, x[:1], y[:1], threat, gen(7))
    plain = observe(model, x[:1], y[:1], ThreatModel())
    assert a.shape == (50,)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, r @ plain + 0.01 * torch.randn(50, generator=gen(7)))
    with pytest.raises(ValueError, match="generator"):
        observe(model, x[:1], y[:1], threat)
    with pytest.raises(ValueError, match="local_steps"):
        ThreatModel(local_steps=0)


# ---------------------------------------------------------------------------- attacks


def test_idlg_recovers_label_and_image_from_plain_gradient(digits, model):
    x, y = digits
    ps, accs = attack_images("idlg", model, x, y, ThreatModel(), 100, images=range(4))
    assert accs == [1.0] * 4
    assert min(ps) > 30.0, ps


def test_label_inference_through_gaussian_sketch_and_local_steps(digits, model):
    x, y = digits
    d = sum(p.numel() for p in model.parameters())
    threat = ThreatModel(sketch=matrix_sketch(gaussian_sketch(d, d // 10, gen(2))), local_steps=3)
    for i in range(8):
        obs = observe(model, x[i : i + 1], y[i : i + 1], threat)
        assert int(infer_label(model, obs, threat)) == int(y[i])


def test_dlg_and_ig_also_break_the_plain_gradient(digits, model):
    x, y = digits
    i = 0
    obs = observe(model, x[i : i + 1], y[i : i + 1], ThreatModel())
    res = dlg(model, obs, ThreatModel(), x_shape=SHAPE, num_classes=10, generator=gen(i))
    assert psnr(res.x, x[:1]) > 30 and int(res.labels) == int(y[0])
    res = inverting_gradients(
        model, obs, ThreatModel(), x_shape=SHAPE, num_classes=10, generator=gen(i), iterations=200
    )
    assert psnr(res.x, x[:1]) > 30 and int(res.labels) == int(y[0])


def test_idlg_through_unrolled_local_steps(digits, model):
    x, y = digits
    ps, accs = attack_images("idlg", model, x, y, ThreatModel(local_steps=3, lr=0.1), 100, [0, 2])
    assert accs == [1.0, 1.0]
    assert min(ps) > 30.0, ps


@pytest.mark.parametrize("attack", ["dlg", "idlg", "ig"])
def test_orthogonal_full_width_sketch_equals_plain_attack(digits, attack):
    """‖Q a − Q b‖ = ‖a − b‖ and cos(Qa, Qb) = cos(a, b): the known sketch changes nothing."""
    x, y = digits
    net = victim_cnn(0, channels=4, dtype=torch.float64)
    d = sum(p.numel() for p in net.parameters())
    q = orthogonal_sketch(d, gen(5), dtype=torch.float64)
    torch.testing.assert_close(q.T @ q, torch.eye(d, dtype=torch.float64))
    xi, yi = x[1:2].double(), y[1:2]
    outs = []
    for threat in (ThreatModel(), ThreatModel(sketch=matrix_sketch(q))):
        obs = observe(net, xi, yi, threat)
        outs.append(
            run_attack(
                attack,
                net,
                obs,
                threat,
                x_shape=SHAPE,
                num_classes=10,
                generator=gen(1),
                iterations=100,
            )  # fmt: skip
        )
    plain, sketched = outs
    assert torch.equal(plain.labels, sketched.labels)
    torch.testing.assert_close(sketched.x, plain.x, rtol=0, atol=1e-6)
    assert psnr(sketched.x, xi) == pytest.approx(psnr(plain.x, xi), abs=0.1)


class NumpyOperator:
    """A sketch operator in the fedsim.privacy.sketch shape, not differentiable in torch."""

    def __init__(self, r: torch.Tensor):
        self.r = r.numpy()

    def sketch(self, x: torch.Tensor) -> torch.Tensor:  # [m, d] -> [m, b]
        return torch.from_numpy(x.detach().numpy() @ self.r.T)

    def desketch(self, y: torch.Tensor) -> torch.Tensor:  # [m, b] -> [m, d]
        return torch.from_numpy(y.detach().numpy() @ self.r)


def test_operator_sketch_attacks_like_its_matrix(digits):
    """An operator is differentiated through its transpose: same attack as the dense matrix."""
    x, y = digits
    net = victim_cnn(0, channels=4, dtype=torch.float64)
    d = sum(p.numel() for p in net.parameters())
    r = gaussian_sketch(d, 200, gen(4), dtype=torch.float64)
    v = torch.randn(d, generator=gen(1), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(operator_sketch(NumpyOperator(r))(v).sin().sum(), v)
    torch.testing.assert_close(g, r.T @ (r @ v).cos().detach())
    xi, yi = x[2:3].double(), y[2:3]
    outs = []
    for threat in (
        ThreatModel(sketch=matrix_sketch(r)),
        ThreatModel(sketch=operator_sketch(NumpyOperator(r))),
    ):
        obs = observe(net, xi, yi, threat)
        assert int(infer_label(net, obs, threat)) == int(yi)
        outs.append(idlg(net, obs, threat, x_shape=SHAPE, num_classes=10, generator=gen(0)))
    torch.testing.assert_close(outs[1].x, outs[0].x, rtol=0, atol=1e-6)
    assert psnr(outs[1].x, xi) > 30


def test_psnr_drops_as_sketch_narrows(digits, model):
    """Below ~64 measurements (the pixels) the known sketch starts to hide the image."""
    x, y = digits
    d = sum(p.numel() for p in model.parameters())
    means = []
    for ratio in (0.1, 0.01, 0.002):
        r = gaussian_sketch(d, max(1, round(ratio * d)), gen(123))
        ps, _ = attack_images("ig", model, x, y, ThreatModel(sketch=matrix_sketch(r)), 200)
        means.append(float(np.mean(ps)))
    assert means[0] > 30.0, means
    assert means[0] > means[1] + 5 > means[2] + 10, means


def test_psnr_drops_as_noise_grows(digits, model):
    x, y = digits
    means = []
    for std in (0.0, 1e-3, 1e-2, 0.1):
        ps, accs = attack_images("idlg", model, x, y, ThreatModel(noise_std=std), 150)
        means.append(float(np.mean(ps)))
        assert accs == [1.0] * 3  # the label leaks even under noise 0.1
    assert all(a > b + 5 for a, b in zip(means, means[1:], strict=False)), means


@pytest.mark.parametrize("attack", ["idlg", "ig"])
def test_noise_std_01_defeats_the_attack(digits, model, attack):
    x, y = digits
    ps, _ = attack_images(attack, model, x, y, ThreatModel(noise_std=0.1), 200)
    assert max(ps) < 20.0, ps


def test_attacks_are_deterministic(digits, model):
    x, y = digits
    obs = observe(model, x[:1], y[:1], ThreatModel(noise_std=1e-3), gen(3))
    for attack in ("dlg", "ig"):
        a, b = (
            run_attack(attack, model, obs, ThreatModel(), x_shape=SHAPE, num_classes=10,
                       generator=gen(9), iterations=30)
            for _ in range(2)
        )  # fmt: skip
        assert torch.equal(a.x, b.x) and a.losses == b.losses


def test_attack_errors(digits, model):
    obs = observe(model, digits[0][:1], digits[1][:1], ThreatModel())
    with pytest.raises(ValueError, match="attack: must be one of"):
        run_attack("nope", model, obs, ThreatModel(), x_shape=SHAPE, num_classes=10,
                   generator=gen(0))  # fmt: skip
    with pytest.raises(ValueError, match="single example"):
        idlg(model, obs, ThreatModel(), x_shape=(2, 1, 8, 8), num_classes=10, generator=gen(0))


# ------------------------------------------------------------------------------- grid


def test_grid_writes_csv_and_figure(tmp_path, digits):
    x, y = digits
    seen = []
    rows = run_leakage_grid(
        x[:2].numpy()[:, 0], y[:2].numpy(), out_dir=tmp_path, ratios=(0.1, 0.01),
        noise_stds=(0.0, 0.1), attacks=("idlg", "ig"), iterations={"idlg": 40, "ig": 40},
        figure_images=2, progress=seen.append,
    )  # fmt: skip
    assert len(rows) == 2 * 2 * 2 * 2 == len(seen)
    with open(tmp_path / "leakage.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert {"attack", "b/d", "noise", "steps", "image", "psnr_db", "label_acc"} <= set(table[0])
    assert {r["b"] for r in rows} == {467, 47} and rows[0]["d"] == 4666
    assert (tmp_path / "leakage_grid.png").stat().st_size > 1000
    summary = summarize(rows)
    assert len(summary) == 8 and all(s["images"] == 2 for s in summary)
    noiseless = [s for s in summary if s["attack"] == "idlg" and s["noise"] == 0.0]
    noisy = [s for s in summary if s["attack"] == "idlg" and s["noise"] == 0.1]
    assert noiseless[0]["psnr_db"] > noisy[0]["psnr_db"]
    assert "| idlg | 0.1 | 1 |" in markdown_table(rows)
    # same seed, same numbers
    again = run_leakage_grid(
        x[:2].numpy(), y[:2].numpy(), out_dir=tmp_path / "again", ratios=(0.1,),
        noise_stds=(0.0,), attacks=("idlg",), iterations={"idlg": 40},
    )  # fmt: skip
    assert again[0]["psnr_db"] == rows[0]["psnr_db"]


def test_grid_errors(tmp_path, digits):
    x, y = digits
    with pytest.raises(FedsimError, match="attacks"):
        run_leakage_grid(x[:1].numpy(), y[:1].numpy(), out_dir=tmp_path, attacks=("zz",))
    with pytest.raises(ValueError, match="ratios"):
        run_leakage_grid(x[:1].numpy(), y[:1].numpy(), out_dir=tmp_path, ratios=(2.0,))
    with pytest.raises(ValueError, match="labels"):
        run_leakage_grid(x[:2].numpy(), y[:1].numpy(), out_dir=tmp_path)
