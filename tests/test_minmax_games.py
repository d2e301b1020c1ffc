"""Games and the GAN task: exact equilibria, and the theory's predictions on them."""

from __future__ import annotations

import math

import pytest
import torch

from fedsim.errors import ScenarioError
from fedsim.minmax import (
    Operator,
    affine_operator,
    bilinear_game,
    dadam3,
    gaussian_mixture_gan,
    gt_extragradient,
    gt_gda,
    make_method,
    mode_metrics,
    quadratic_game,
    run_minmax,
)
from fedsim.minmax.gan import mode_centers
from fedsim.network.mixing import metropolis_weights, spectral_gap
from fedsim.network.topology import complete, ring, torus


def _op(task):
    return Operator(task, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("make", [bilinear_game, quadratic_game])
@pytest.mark.parametrize("bias", [0.0, 0.7])
def test_nash_is_exact(make, bias):
    task = make(num_nodes=6, dim=4, heterogeneity=1.0, bias=bias, seed=3)
    op = _op(task)
    assert float(op.mean(task.nash).norm()) < 1e-12
    local = op.exact(task.nash.expand(6, -1)).norm(dim=1)  # each node's own F_i(x*)
    if bias == 0:
        assert float(local.max()) < 1e-12
    else:
        assert float(local.min()) > 1e-3


def test_bilinear_local_matrices_average_to_a_skew_operator():
    task = bilinear_game(num_nodes=8, dim=3, heterogeneity=2.0, seed=0)
    M, _ = affine_operator(task)
    A_i = task.node_data[0]
    assert float((A_i - A_i.mean(0)).abs().max()) > 0.1  # the nodes really differ
    Mbar = M.mean(0)
    torch.testing.assert_close(Mbar + Mbar.T, torch.zeros(6, 6, dtype=torch.float64),
                               rtol=0, atol=1e-12)  # F = [[0, A], [-A^T, 0]]: monotone
    torch.testing.assert_close(Mbar[:3, 3:], A_i.mean(0), rtol=0, atol=1e-12)
    s = torch.linalg.svdvals(A_i.mean(0))
    assert float(s.min()) == pytest.approx(0.5) and float(s.max()) == pytest.approx(1.5)


def test_quadratic_is_strongly_monotone_on_average():
    task = quadratic_game(num_nodes=8, dim=4, mu=0.5, curvature_spread=3.0, seed=1)
    M, _ = affine_operator(task)
    sym = lambda A: (A + A.transpose(-1, -2)) / 2  # noqa: E731
    assert float(torch.linalg.eigvalsh(sym(M.mean(0))).min()) >= 0.5 - 1e-12
    assert float(torch.linalg.eigvalsh(sym(M)).min()) < 0  # some node's own game is not


# ------------------------------------------------------------------ bilinear, ring of 8

BILINEAR_ITERS = 3000


@pytest.fixture(scope="module")
def bilinear_rows():
    task = bilinear_game(num_nodes=8, dim=5, heterogeneity=0.5, seed=0)
    methods = {"gda": make_method("gda", lr=0.05),
               "extragradient": make_method("extragradient", lr=0.3),
               "dposg": make_method("dposg", lr=0.2),
               "ogda": make_method("adaptive", lr=0.2, beta1=0.0, preconditioner="none",
                                   lookahead="optimistic", mix="after"),
               "dadam3": dadam3(lr=0.2, beta1=0.5, beta2=0.9, beta3=0.9)}
    return {k: run_minmax(task, m, ring(8), 1000 if k == "gda" else BILINEAR_ITERS,
                          eval_every=250) for k, m in methods.items()}


def test_bilinear_gda_does_not_converge(bilinear_rows):
    rows = bilinear_rows["gda"]
    d = [r["dist_to_nash"] for r in rows if "dist_to_nash" in r]
    assert d[-1] > d[0]  # spirals out (Daskalakis et al. 2018)
    assert min(d[len(d) // 2:]) > 0.5 * d[0]


@pytest.mark.parametrize("name", ["extragradient", "dposg", "ogda", "dadam3"])
def test_bilinear_extragradient_optimistic_and_dadam3_converge(bilinear_rows, name):
    last = bilinear_rows[name][-1]
    assert last["iteration"] == BILINEAR_ITERS
    assert last["dist_to_nash"] < 1e-3
    assert last["dist_to_nash_max"] < 1e-3
    assert last["consensus"] < 1e-4


# ------------------------------------------------------------------ quadratic


@pytest.mark.parametrize("method", [make_method("extragradient", lr=0.05),
                                    make_method("dposg", lr=0.05),
                                    make_method("extragradient", lr=0.05, mix="before")])
def test_quadratic_linear_convergence(method):
    task = quadratic_game(num_nodes=8, dim=4, mu=1.0, seed=0)
    rows = run_minmax(task, method, ring(8), 600, eval_every=100)
    d = [r["dist_to_nash_max"] for r in rows]
    factors = [d[k + 1] / d[k] for k in range(1, 5)]  # per 100 iterations
    assert max(factors) < 0.05  # geometric: a fixed factor every 100 iterations
    assert d[-1] < 1e-9


def test_quadratic_heterogeneity_floor_grows_as_the_spectral_gap_shrinks():
    # node-specific saddle points (bias > 0): constant-step decentralized extragradient
    # converges linearly to a point at distance ~ lr * bias / gap from x*
    floors, gaps = [], []
    for G in (ring(16), torus(4, 4), complete(16)):
        task = quadratic_game(num_nodes=16, dim=4, mu=1.0, bias=1.0, seed=0)
        rows = run_minmax(task, make_method("extragradient", lr=0.05), G, 800,
                          eval_every=400)
        assert abs(rows[-1]["dist_to_nash_max"] - rows[-2]["dist_to_nash_max"]) < 1e-6
        floors.append(rows[-1]["dist_to_nash_max"])
        gaps.append(spectral_gap(metropolis_weights(G)))
    assert gaps[0] < gaps[1] < gaps[2]
    assert floors[0] > 2 * floors[1] > 4 * floors[2]


def _rate(rows, lo, hi):
    d = {r["iteration"]: r["dist_to_nash_max"] for r in rows}
    return (d[hi] / d[lo]) ** (1 / (hi - lo))


def test_gradient_tracking_rate_shrinks_with_the_spectral_gap():
    # node-specific saddle points (bias 1): extragradient with gradient tracking reaches
    # x* itself, linearly, at max(centralized EG rate, a mixing-limited rate): the ring's
    # rate is set by its mixing, the torus's too at lr 0.1, K_16's is the server's
    # (docs/minmax.md, "Quadratic game")
    task = quadratic_game(num_nodes=16, dim=4, mu=1.0, bias=1.0, seed=0)
    M = affine_operator(task)[0].mean(0)
    lr = 0.1
    eye = torch.eye(M.shape[0], dtype=M.dtype)
    central = float(torch.linalg.eigvals(eye - lr * M + lr * lr * M @ M).abs().max())
    rates, finals = {}, {}
    for label, G in (("ring", ring(16)), ("torus", torus(4, 4)), ("complete", complete(16))):
        rows = run_minmax(task, gt_extragradient(lr=lr, lazy=True), G, 300, eval_every=50)
        hi = 300 if label == "ring" else 200
        rates[label] = _rate(rows, 100, hi)
        finals[label] = rows[-1]["dist_to_nash_max"]
        if label == "ring":  # linear: the same factor over 100-200 and 200-300
            assert abs(_rate(rows, 100, 200) - _rate(rows, 200, 300)) < 1e-3
    assert rates["ring"] > rates["torus"] + 0.03 > rates["complete"] + 0.06
    assert rates["ring"] < 1.0
    assert abs(rates["complete"] - central) < 5e-3
    assert finals["torus"] < 1e-6 and finals["complete"] < 1e-12  # x* itself, no floor


def test_gradient_tracking_fixed_point_is_the_nash_of_the_average_game():
    # constant-step extragradient stops ~0.13 away on the torus (test above); tracking
    # gets to rounding level; GT-GDA too (lazy: with W itself it diverges there at this
    # step), and the tracker's average is the average of the latest evaluations
    task = quadratic_game(num_nodes=16, dim=4, mu=1.0, bias=1.0, seed=0)
    for m in (gt_extragradient(lr=0.05), gt_gda(lr=0.05, lazy=True)):
        rows = run_minmax(task, m, torus(4, 4), 800, eval_every=400)
        assert rows[-1]["dist_to_nash_max"] < 1e-10
        assert rows[-1]["consensus"] < 1e-10
    op = _op(task)
    m = gt_extragradient(lr=0.05)
    W = torch.as_tensor(metropolis_weights(torus(4, 4)))
    X = task.initial_states()
    st = m.init(X)
    for _ in range(5):
        X = m.step(X, st, op, W)
        torch.testing.assert_close(st["Y"].mean(0), op(X).mean(0), rtol=0, atol=1e-12)


def test_gradient_tracking_sends_its_trackers():
    task = quadratic_game(num_nodes=8, dim=3, seed=1)
    sent = {name: run_minmax(task, make_method(name, lr=0.01), ring(8), 3)[-1]["bytes"]
            for name in ("extragradient", "gt_extragradient", "gt_gda")}
    assert sent["gt_extragradient"] == 3 * sent["extragradient"]  # x, y, s
    assert sent["gt_gda"] == 2 * sent["extragradient"]  # x, y


# ------------------------------------------------------------------ GAN task


def test_mode_metrics_on_real_and_collapsed_samples():
    centers = mode_centers(8, 2.0)
    gen = torch.Generator().manual_seed(0)
    real = centers[torch.randint(0, 8, (2000,), generator=gen)]
    real = real + 0.1 * torch.randn(2000, 2, generator=gen)
    m = mode_metrics(real, centers, 0.1)
    assert m["modes_covered"] == 8 and m["high_quality"] > 0.95
    collapsed = centers[3] + 0.01 * torch.randn(2000, 2, generator=gen)
    assert mode_metrics(collapsed, centers, 0.1) == {"modes_covered": 1.0, "high_quality": 1.0}


def test_gan_shards_and_operator_shapes():
    task = gaussian_mixture_gan(num_nodes=9, split="modes", hidden=8, seed=0)
    shards = task.node_data[0]
    assert shards.shape == (9, 512, 2)
    centers = mode_centers(8, 2.0)
    for i in range(9):  # node i holds only mode i mod 8
        assert float((shards[i] - centers[i % 8]).norm(dim=1).max()) < 1.0
    op = _op(task)
    F = op(task.initial_states())
    assert F.shape == (9, task.dim) and F.dtype == torch.float32
    assert torch.isfinite(F).all()
    assert math.isfinite(float(op.mean(task.x0).norm()))


def test_gan_zero_sum_loss_negates_the_discriminator_loss():
    # zero-sum: F = (grad_theta f, -grad_phi f) with f = -l_phi; the theta part of the
    # non-saturating game differs, the phi part is the same
    ns = gaussian_mixture_gan(num_nodes=2, hidden=8, loss="non_saturating", seed=1)
    zs = gaussian_mixture_gan(num_nodes=2, hidden=8, loss="zero_sum", seed=1)
    X = ns.initial_states()
    F_ns, F_zs = _op(ns)(X), _op(zs)(X)
    d = ns.d_theta
    torch.testing.assert_close(F_ns[:, d:], F_zs[:, d:])
    assert not torch.allclose(F_ns[:, :d], F_zs[:, :d])


@pytest.mark.parametrize("key,kw", [("task.split", {"split": "random"}),
                                    ("task.loss", {"loss": "wgan"}),
                                    ("task.hidden", {"hidden": 0})])
def test_gan_bad_settings(key, kw):
    with pytest.raises(ScenarioError) as err:
        gaussian_mixture_gan(**kw)
    assert err.value.key == key


def test_game_bad_settings():
    with pytest.raises(ScenarioError) as err:
        bilinear_game(dim=0)
    assert err.value.key == "task.dim"
    with pytest.raises(ScenarioError) as err:
        quadratic_game(mu=0.0)
    assert err.value.key == "task.mu"
    with pytest.raises(ScenarioError) as err:
        bilinear_game(heterogeneity=-1.0)
    assert err.value.key == "task.heterogeneity"


# ------------------------------------------------------------------ digits GAN


def test_inception_score_and_frechet_distance_by_hand():
    from fedsim.minmax.gan import frechet_distance, inception_score

    assert inception_score(torch.eye(10)) == pytest.approx(10.0)  # sure and diverse
    assert inception_score(torch.full((5, 10), 0.1)) == pytest.approx(1.0)
    assert inception_score(torch.eye(10)[[3] * 7]) == pytest.approx(1.0)  # one class
    a = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(9.0, abs=1e-9)


def test_digits_gan_task_smoke(tmp_path):
    from fedsim.minmax import make_task
    from fedsim.minmax.gan import save_sample_grid

    task = make_task("digits", num_nodes=4, split="labels", hidden=16, z_dim=4,
                     batch_size=8, eval_samples=200)
    shards = task.node_data[0]
    assert shards.shape[0] == 4 and shards.shape[2] == 64
    assert float(shards.min()) >= -1 and float(shards.max()) <= 1
    rows = run_minmax(task, dadam3(lr=1e-3), ring(4), 2, eval_every=1)
    assert 1.0 <= rows[-1]["inception_score"] <= 10.0 and rows[-1]["fid"] > 0
    save_sample_grid(task, task.x0, tmp_path / "grid.png", rows=4)
    assert (tmp_path / "grid.png").stat().st_size > 0
