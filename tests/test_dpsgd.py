"""fedsim.privacy.dpsgd: per-sample gradients and DP-SGD steps batched over clients, checked
against opacus' GradSampleModule + DPOptimizer client by client."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsim.errors import ScenarioError
from fedsim.privacy.dpsgd import (
    clip_per_sample,
    dp_sgd_step,
    per_sample_grads,
    private_grad,
    stack_params,
)

torch.set_num_threads(1)
SETTINGS = settings(max_examples=25, deadline=None)
M, B, D_IN, K = 3, 6, 5, 3
LR, CLIP = 0.5, 0.8


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, 8), nn.ReLU(), nn.Linear(8, K))


def client_params(model: nn.Module, m: int = M) -> dict[str, torch.Tensor]:
    """Different parameters per client: the model's plus a client-specific perturbation."""
    g = torch.Generator().manual_seed(1)
    return {k: v + 0.3 * torch.randn(v.shape, generator=g)
            for k, v in stack_params(model, m).items()}


def batch(m: int = M, b: int = B, seed: int = 2, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(m, b, D_IN, generator=g)
    y = torch.randint(0, K, (m, b), generator=g)
    return x, y


def opacus_client(model: nn.Module, params: dict[str, torch.Tensor], i: int, x, y,
                  noise: float = 0.0, ebs: int = B, gen=None):
    """One opacus DP-SGD step for client i: (grad_sample dict, new params dict)."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    net = copy.deepcopy(model)
    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(params[k][i])
    gsm = GradSampleModule(net)
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=LR), noise_multiplier=noise,
                      max_grad_norm=CLIP, expected_batch_size=ebs, generator=gen)
    opt.zero_grad()
    F.cross_entropy(gsm(x), y).backward()
    samples = {k: p.grad_sample.detach().clone() for k, p in net.named_parameters()}
    opt.step()
    return samples, {k: p.detach().clone() for k, p in net.named_parameters()}


def test_per_sample_grads_equal_opacus_grad_sample_for_each_client():
    model, x, y = mlp(), *batch()
    params = client_params(model)
    ours = per_sample_grads(model, params, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(M):
            ref, _ = opacus_client(model, params, i, x[i], y[i])
            for k in params:
                assert ours[k].shape == (M, B, *params[k].shape[1:])
                torch.testing.assert_close(ours[k][i], ref[k], rtol=1e-5, atol=1e-6)


def test_noiseless_step_equals_three_opacus_runs():
    """z = 0: the batched step equals DPOptimizer(SGD) run separately on each client; opacus
    divides C by (norm + 1e-6), the only difference (~1e-6 relative)."""
    model, x, y = mlp(), *batch()
    params = client_params(model)
    norms = clip_per_sample(per_sample_grads(model, params, x, y), CLIP)[1]
    assert bool((norms > CLIP).any()) and bool((norms < CLIP).any())  # both branches taken
    new = dp_sgd_step(model, params, x, y, lr=LR, clip=CLIP, noise_multiplier=0.0,
                      gen=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(M):
            _, ref = opacus_client(model, params, i, x[i], y[i])
            for k in params:
                torch.testing.assert_close(new[k][i], ref[k], rtol=1e-5, atol=1e-6)


def test_single_client_noised_step_equals_opacus_with_the_same_generator():
    """m = 1, same seed: our noise (randn * zC per parameter, in parameter order) is opacus'."""
    model, x, y = mlp(), *batch(m=1)
    params = client_params(model, 1)
    new = dp_sgd_step(model, params, x, y, lr=LR, clip=CLIP, noise_multiplier=1.3,
                      gen=torch.Generator().manual_seed(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref = opacus_client(model, params, 0, x[0], y[0], noise=1.3,
                               gen=torch.Generator().manual_seed(7))
    for k in params:
        torch.testing.assert_close(new[k][0], ref[k], rtol=1e-5, atol=1e-6)


def test_noise_std_is_z_clip_over_batch_size_per_coordinate():
    """Zero gradients: the noised gradient is N(0, (zC/B)^2) per coordinate (4000 clients)."""
    m, b, z, c = 4000, 8, 1.5, 2.0
    grads = {"w": torch.zeros(m, b, 4, 3), "b": torch.zeros(m, b, 3)}
    out = private_grad(grads, c, z, torch.Generator().manual_seed(3))
    want = z * c / b
    for v in out.values():
        assert v.shape[0] == m
        std = v.std(dim=0)  # per coordinate over 4000 draws: relative error ~ 1/sqrt(8000)
        assert torch.allclose(std, torch.full_like(std, want), rtol=0.06)
        assert abs(float(v.mean())) < 4 * want / (v.numel() ** 0.5)


def test_padded_samples_contribute_nothing_and_do_not_count():
    """A mask [m, B]: client i's step equals the unpadded step on its real samples alone."""
    model, x, y = mlp(), *batch()
    params = client_params(model)
    counts = [6, 4, 1]
    mask = torch.zeros(M, B)
    for i, n in enumerate(counts):
        mask[i, :n] = 1
    xg = x.clone()
    xg[mask == 0] = 1e30  # garbage in the padding must not leak in
    new = dp_sgd_step(model, params, xg, y, lr=LR, clip=CLIP, noise_multiplier=0.0,
                      gen=torch.Generator(), mask=mask)
    for i, n in enumerate(counts):
        one = {k: v[i:i + 1] for k, v in params.items()}
        ref = dp_sgd_step(model, one, x[i:i + 1, :n], y[i:i + 1, :n], lr=LR, clip=CLIP,
                          noise_multiplier=0.0, gen=torch.Generator())
        for k in params:
            assert torch.isfinite(new[k]).all()
            torch.testing.assert_close(new[k][i], ref[k][0], rtol=1e-5, atol=1e-6)


def test_expected_batch_size_and_inactive_clients():
    model, x, y = mlp(), *batch()
    params = client_params(model)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = dp_sgd_step(model, params, x, y, lr=LR, clip=CLIP, noise_multiplier=0.7, gen=gen_a,
                    expected_batch_size=2.0 * B)
    b = dp_sgd_step(model, params, x, y, lr=LR / 2, clip=CLIP, noise_multiplier=0.7,
                    gen=gen_b)
    active = torch.tensor([True, False, True])
    gen_c = torch.Generator().manual_seed(5)
    c = dp_sgd_step(model, params, x, y, lr=LR, clip=CLIP, noise_multiplier=0.7, gen=gen_c,
                    active=active, expected_batch_size=torch.full((M,), 2.0 * B))
    for k in params:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)  # divisor 2B = half lr
        torch.testing.assert_close(c[k][1], params[k][1], rtol=0, atol=0)
        torch.testing.assert_close(c[k][[0, 2]], a[k][[0, 2]], rtol=0, atol=0)
    # the noise stream advanced alike whoever was active
    assert torch.equal(torch.randn(3, generator=gen_a), torch.randn(3, generator=gen_c))


@SETTINGS
@given(scale=st.floats(1e-3, 1e6), n_real=st.integers(1, B))
def test_step_norm_bounded_by_lr_clip_count_over_divisor(scale: float, n_real: int):
    """Without noise, ||w' - w|| <= lr * C * (real samples) / divisor for every client."""
    model, x, y = mlp(), *batch(scale=scale)
    params = client_params(model)
    mask = torch.zeros(M, B)
    mask[:, :n_real] = 1
    new = dp_sgd_step(model, params, x, y, lr=LR, clip=CLIP, noise_multiplier=0.0,
                      gen=torch.Generator(), mask=mask, expected_batch_size=float(B))
    sq = sum((new[k] - params[k]).flatten(1).double().pow(2).sum(1) for k in params)
    assert bool((sq.sqrt() <= LR * CLIP * n_real / B * (1 + 1e-5)).all())


def test_validation_and_batchnorm_refused():
    model, x, y = mlp(), *batch()
    params = client_params(model)
    with pytest.raises(ScenarioError, match="privacy.clip"):
        dp_sgd_step(model, params, x, y, lr=LR, clip=0.0, noise_multiplier=1.0,
                    gen=torch.Generator())
    with pytest.raises(ScenarioError, match="privacy.noise_multiplier"):
        dp_sgd_step(model, params, x, y, lr=LR, clip=1.0, noise_multiplier=-1.0,
                    gen=torch.Generator())
    bn = nn.Sequential(nn.Linear(D_IN, 4), nn.BatchNorm1d(4), nn.Linear(4, K))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        per_sample_grads(bn, stack_params(bn, M), x, y)
