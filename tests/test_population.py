"""Cohort training: the vmapped path equals the per-client loop, golden SGD steps, fallbacks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parameters_to_vector

from fedsim.config import ModelConfig
from fedsim.models import build_model
from fedsim.population import DEFAULT_CHUNK_BYTES, Population


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n: int, shape: tuple[int, ...], classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def _clients(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Disjoint, shuffled index sets of the given sizes."""
    perm = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))
    return list(torch.split(perm, sizes))


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


SIZES = [7, 3, 4, 1, 9, 5]  # batch 4: larger, smaller, exactly one batch, a single sample


@pytest.mark.parametrize("name,shape", [("mlp", (6,)), ("cnn", (1, 8, 8))])
@pytest.mark.parametrize("mu", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [None, 4])
def test_batched_equals_loop(name, shape, mu, chunk):
    x, y = _data(sum(SIZES), shape)
    model = build_model(ModelConfig(name, (8,)), shape, 4, seed=1)
    batched = Population(model, x, y, max_batched_clients=chunk)
    loop = Population(model, x, y, batched=False)
    w0 = batched.flat_params()
    kw = dict(lr=0.2, epochs=2, batch_size=4, mu=mu)
    a = batched.train(w0, _clients(SIZES), **kw, gen=_gen())
    b = loop.train(w0, _clients(SIZES), **kw, gen=_gen())
    assert a.updates.shape == (len(SIZES), batched.d) and a.updates.dtype == torch.float32
    assert (a.updates.abs().sum(dim=1) > 0).all()
    torch.testing.assert_close(a.updates, b.updates, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.losses, b.losses, atol=1e-5, rtol=1e-4)
    assert a.num_samples.tolist() == SIZES and a.num_samples.dtype == torch.int64


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=5),
    batch_size=st.integers(1, 5),
    epochs=st.integers(0, 2),
    chunk=st.sampled_from([None, 1, 2]),
)
def test_batched_equals_loop_property(sizes, batch_size, epochs, chunk):
    x, y = _data(max(sum(sizes), 1), (3,))
    model = build_model(ModelConfig("logreg"), (3,), 4, seed=2)
    batched = Population(model, x, y, max_batched_clients=chunk)
    loop = Population(model, x, y, batched=False)
    w0 = batched.flat_params()
    kw = dict(lr=0.3, epochs=epochs, batch_size=batch_size, mu=0.05)
    a = batched.train(w0, _clients(sizes), **kw, gen=_gen())
    b = loop.train(w0, _clients(sizes), **kw, gen=_gen())
    torch.testing.assert_close(a.updates, b.updates, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.losses, b.losses, atol=1e-5, rtol=1e-4)
    empty = torch.tensor(sizes) == 0
    assert (a.updates[empty] == 0).all() and (a.losses[empty] == 0).all()


def _logreg_population(x, y, batched=True):
    model = build_model(ModelConfig("logreg"), (2,), 2)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return Population(model, x, y, batched=batched)


@pytest.mark.parametrize("batched", [True, False])
def test_golden_logreg_single_step(batched):
    # W = 0, b = 0: softmax is (1/2, 1/2) for both samples and the loss is ln 2.
    # dL/dz_i = (p_i - onehot(y_i)) / 2:  z1 -> (-1/4, 1/4),  z2 -> (1/4, -1/4)
    # dW = dz1 x1^T + dz2 x2^T = [[0.5, -0.75], [-0.5, 0.75]],  db = 0
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    y = torch.tensor([0, 1])
    pop = _logreg_population(x, y, batched)
    res = pop.train(
        pop.flat_params(), [torch.tensor([0, 1])], lr=0.5, epochs=1, batch_size=2, gen=_gen()
    )
    expected = -0.5 * torch.tensor([0.5, -0.75, -0.5, 0.75, 0.0, 0.0])  # W row-major, then b
    torch.testing.assert_close(res.updates[0], expected)
    assert res.losses[0].item() == pytest.approx(math.log(2.0))


def _softmax_ce_grad(w: list[list[float]], b: list[float], x: list[float], y: int):
    """Analytic gradient of the cross-entropy of one sample for 2-class logreg."""
    z = [w[k][0] * x[0] + w[k][1] * x[1] + b[k] for k in range(2)]
    e = [math.exp(v - max(z)) for v in z]
    p = [v / sum(e) for v in e]
    dz = [p[k] - (1.0 if k == y else 0.0) for k in range(2)]
    return [[dz[k] * x[0], dz[k] * x[1]] for k in range(2)], dz


@pytest.mark.parametrize("batched", [True, False])
def test_golden_fedprox_two_steps(batched):
    # One client holding the same sample twice, batch 1: two SGD steps, the second
    # with the proximal pull mu * (w - w_global) where w_global = 0.
    x, y = torch.tensor([[1.0, -2.0]]), torch.tensor([1])
    lr, mu = 0.5, 0.4
    w, b = [[0.0, 0.0], [0.0, 0.0]], [0.0, 0.0]
    for _ in range(2):
        gw, gb = _softmax_ce_grad(w, b, [1.0, -2.0], 1)
        w = [[w[k][j] - lr * (gw[k][j] + mu * w[k][j]) for j in range(2)] for k in range(2)]
        b = [b[k] - lr * (gb[k] + mu * b[k]) for k in range(2)]
    pop = _logreg_population(x, y, batched)
    res = pop.train(
        pop.flat_params(), [torch.tensor([0, 0])], lr=lr, epochs=1, batch_size=1, mu=mu, gen=_gen()
    )
    expected = torch.tensor([w[0][0], w[0][1], w[1][0], w[1][1], b[0], b[1]])
    torch.testing.assert_close(res.updates[0], expected)


@pytest.mark.parametrize("batched", [True, False])
def test_zero_learning_rate_leaves_params_unchanged(batched):
    x, y = _data(20, (6,))
    pop = Population(build_model(ModelConfig("mlp", (8,)), (6,), 4), x, y, batched=batched)
    res = pop.train(
        pop.flat_params(), _clients([12, 5, 3]), lr=0.0, epochs=2, batch_size=4, mu=0.5, gen=_gen()
    )
    assert (res.updates == 0).all()


def test_padded_only_steps_leave_a_client_unchanged_with_prox():
    # Client 1 (2 samples) takes one real step, then sits through a padded-only step
    # of the cohort (client 0 has 8 samples); with mu > 0 an unmasked step would pull it.
    x, y = _data(10, (6,))
    model = build_model(ModelConfig("mlp", (8,)), (6,), 4)
    pop = Population(model, x, y)
    w0 = pop.flat_params()
    kw = dict(lr=0.3, epochs=1, batch_size=4, mu=0.5)
    cohort = pop.train(w0, [torch.arange(2, 10), torch.arange(2)], **kw, gen=_gen())
    # the same client alone, with its shuffle drawn the same way (client 0 first)
    alone = Population(model, x, y, max_batched_clients=1)
    ref = alone.train(w0, [torch.arange(2, 10), torch.arange(2)], **kw, gen=_gen())
    torch.testing.assert_close(cohort.updates[1], ref.updates[1], atol=1e-6, rtol=0)
    assert cohort.updates[1].abs().sum() > 0


def test_same_seed_same_updates_other_seed_other_updates():
    x, y = _data(30, (6,))
    pop = Population(build_model(ModelConfig("mlp", (8,)), (6,), 4), x, y)
    w0 = pop.flat_params()
    kw = dict(lr=0.2, epochs=1, batch_size=3)
    a = pop.train(w0, _clients([10, 20]), **kw, gen=_gen(1)).updates
    b = pop.train(w0, _clients([10, 20]), **kw, gen=_gen(1)).updates
    c = pop.train(w0, _clients([10, 20]), **kw, gen=_gen(2)).updates
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_evaluate_perfect_model_on_separable_data():
    x = torch.tensor([[2.0, 0.3], [1.0, -1.0], [-1.5, 0.2], [-0.5, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    pop = _logreg_population(x, y)
    params = torch.tensor([10.0, 0.0, -10.0, 0.0, 0.0, 0.0])  # class 0 iff x0 > 0
    loss, acc = pop.evaluate(params, x, y, batch_size=3)
    assert acc == 1.0
    assert 0.0 <= loss < 1e-3
    loss0, acc0 = pop.evaluate(torch.zeros(6), x, y)
    assert loss0 == pytest.approx(math.log(2.0)) and acc0 == 0.5


class _ItemNet(nn.Module):
    """A model whose forward calls .item(), which vmap cannot batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        scale = 1.0 / (1.0 + x.abs().max().item())
        return self.fc(x * scale)


def test_model_without_vmap_support_falls_back_with_one_warning():
    x, y = _data(16, (6,))
    model = _ItemNet()
    pop = Population(model, x, y)
    w0 = pop.flat_params()
    kw = dict(lr=0.2, epochs=1, batch_size=4)
    with pytest.warns(RuntimeWarning, match="vmap"):
        res = pop.train(w0, _clients([10, 6]), **kw, gen=_gen())
    assert pop.vmap_fallback is not None
    assert res.updates.shape == (2, pop.d) and res.losses.shape == (2,)
    ref = Population(model, x, y, batched=False).train(w0, _clients([10, 6]), **kw, gen=_gen())
    torch.testing.assert_close(res.updates, ref.updates)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pop.train(w0, _clients([10, 6]), **kw, gen=_gen())


def test_flat_params_and_d_follow_parameters_to_vector():
    x, y = _data(4, (6,))
    model = build_model(ModelConfig("mlp", (8,)), (6,), 4, seed=5)
    pop = Population(model, x, y)
    assert pop.d == 6 * 8 + 8 + 8 * 4 + 4
    assert torch.equal(pop.flat_params(), parameters_to_vector(model.parameters()).detach())
    pop.flat_params().zero_()  # a copy: the population's init is unaffected
    assert torch.equal(pop.flat_params(), parameters_to_vector(model.parameters()).detach())


def test_default_chunk_fits_the_memory_budget():
    x, y = _data(4, (60,))
    pop = Population(build_model(ModelConfig("mlp", (200,)), (60,), 10), x, y)
    chunk = pop._chunk_size(10)
    assert 100 <= chunk
    assert chunk * 4 * 4 * pop.d <= DEFAULT_CHUNK_BYTES


def test_empty_cohort_and_bad_arguments():
    x, y = _data(8, (6,))
    pop = Population(build_model(ModelConfig("logreg"), (6,), 4), x, y)
    w0 = pop.flat_params()
    res = pop.train(w0, [], lr=0.1, epochs=1, batch_size=2, gen=_gen())
    assert res.updates.shape == (0, pop.d)
    with pytest.raises(ValueError, match="batch_size"):
        pop.train(w0, [torch.arange(4)], lr=0.1, epochs=1, batch_size=0, gen=_gen())
    with pytest.raises(IndexError):
        pop.train(w0, [torch.tensor([3, 8])], lr=0.1, epochs=1, batch_size=2, gen=_gen())
    with pytest.raises(ValueError, match="max_batched_clients"):
        Population(build_model(ModelConfig("logreg"), (6,), 4), x, y, max_batched_clients=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _data(40, (6,))
    model = build_model(ModelConfig("mlp", (8,)), (6,), 4)
    kw = dict(lr=0.2, epochs=2, batch_size=4, mu=0.1)
    cpu = Population(model, x, y)
    gpu = Population(model, x, y, device="cuda")
    a = cpu.train(cpu.flat_params(), _clients([20, 13, 7]), **kw, gen=_gen())
    b = gpu.train(gpu.flat_params(), _clients([20, 13, 7]), **kw, gen=_gen())
    assert b.updates.device.type == "cuda"
    torch.testing.assert_close(a.updates, b.updates.cpu(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("mu", [0.0, 0.1])
def test_per_client_starting_points(name, mu):
    """global_params [m, d]: client r trains from row r, as if trained alone from it."""
    shape = (1, 8, 8)
    x, y = _data(60, shape)
    model = build_model(ModelConfig(name=name, hidden=(8,)), shape, 4, seed=1)
    pop = Population(model, x, y)
    clients = _clients([7, 3, 9, 5])
    starts = pop.flat_params() + 0.1 * torch.randn(4, pop.d, generator=_gen(3))
    kw = dict(lr=0.1, epochs=2, batch_size=4, mu=mu)
    together = pop.train(starts, clients, gen=_gen(), **kw)
    loop = Population(model, x, y, batched=False).train(starts, clients, gen=_gen(), **kw)
    assert torch.allclose(together.updates, loop.updates, atol=1e-5)
    assert torch.allclose(together.losses, loop.losses, atol=1e-5)
    # equal rows give exactly what one shared starting point gives
    same = pop.flat_params().expand(4, -1)
    rows = pop.train(same, clients, gen=_gen(), **kw)
    shared = pop.train(pop.flat_params(), clients, gen=_gen(), **kw)
    assert torch.allclose(rows.updates, shared.updates, atol=1e-5)
    with pytest.raises(ValueError, match="global_params"):
        pop.train(starts[:2], clients, gen=_gen(), **kw)


@pytest.mark.parametrize("kind", ["mlp", "cnn_bn"])
def test_accuracy_rows_is_evaluate_row_by_row(kind: str) -> None:
    """The batched accuracy of many models (a graph's nodes) equals evaluating each alone,
    with per-row buffers for a model with BatchNorm."""
    if kind == "mlp":
        model = build_model(ModelConfig("mlp", (16,)), (6,), 4, seed=3)
        x, y = _data(70, (6,))
    else:
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 4 * 4, 4))
        x, y = _data(70, (1, 6, 6))
    pop = Population(model, x, y)
    g = torch.Generator().manual_seed(1)
    rows = pop.flat_params() + 0.5 * torch.randn(9, pop.d, generator=g)
    bufs = None
    if pop.d_buffers:
        bufs = pop.flat_buffers().expand(9, -1).clone()
        bufs[:, :3] += torch.rand(9, 3, generator=g)  # running means differ per row
    got = pop.accuracy_rows(rows, x, y, batch_size=32, buffers=bufs)
    want = [pop.evaluate(r, x, y, batch_size=32,
                         buffers=None if bufs is None else bufs[i])[1]
            for i, r in enumerate(rows)]
    assert got == want
    assert len(set(want)) > 1  # the rows are different models


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=12), st.data())
def test_csr_cohort_is_the_concatenation_of_its_clients(sizes, data) -> None:
    """``ClientIndex.cohort(ids)`` gathers exactly ``cat(client_indices[i] for i in ids)``,
    for any ids (any order, repeats), and the counts are the clients' sizes."""
    import numpy as np

    from fedsim.population.index import ClientIndex

    rng = np.random.default_rng(len(sizes))
    total = sum(sizes)
    perm = rng.permutation(max(total, 1))
    clients = np.split(perm[:total], np.cumsum(sizes)[:-1])
    index = ClientIndex(clients, num_samples=max(total, 1))
    ids = np.array(data.draw(st.lists(st.integers(0, len(sizes) - 1), max_size=20)),
                   dtype=np.int64)
    got = index.cohort(ids)
    want = np.concatenate([clients[i] for i in ids]) if len(ids) else np.zeros(0, np.int64)
    assert got.flat.tolist() == want.tolist()
    assert got.counts.tolist() == [sizes[i] for i in ids]
    everyone = index.cohort(np.arange(len(sizes)))
    assert everyone.flat.tolist() == np.concatenate(clients).tolist()


def test_csr_index_refuses_out_of_range_samples_and_trains_like_the_lists() -> None:
    from fedsim.population.index import ClientIndex

    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        ClientIndex([np.array([0, 5])], num_samples=5)
    x, y = _data(40, (6,))
    pop = Population(build_model(ModelConfig("mlp", (8,)), (6,), 4, seed=1), x, y)
    clients = [c.numpy() for c in _clients([7, 3, 12, 9])]
    ids = np.array([2, 0, 3])
    a = pop.train(pop.flat_params(), ClientIndex(clients, 40).cohort(ids), lr=0.1, epochs=2,
                  batch_size=4, gen=_gen())
    b = pop.train(pop.flat_params(), [torch.from_numpy(clients[i]) for i in ids], lr=0.1,
                  epochs=2, batch_size=4, gen=_gen())
    assert torch.equal(a.updates, b.updates) and torch.equal(a.losses, b.losses)
    out = torch.full((3, pop.d), float("nan"))
    c = pop.train(pop.flat_params(), ClientIndex(clients, 40).cohort(ids), lr=0.1, epochs=2,
                  batch_size=4, gen=_gen(), out=out)
    assert c.updates.data_ptr() == out.data_ptr() and torch.equal(out, a.updates)
    with pytest.raises(ValueError, match="out must be"):
        pop.train(pop.flat_params(), ClientIndex(clients, 40).cohort(ids), lr=0.1, epochs=1,
                  batch_size=4, gen=_gen(), out=torch.empty(2, pop.d))


@pytest.mark.parametrize("sizes", [[4, 4, 4, 4], [0, 0, 0], [3, 5, 0, 2]])
def test_csr_cohort_with_equal_and_unequal_sizes(sizes) -> None:
    """Equal sizes take the row-gather path, unequal ones the general one: same answer."""
    from fedsim.population.index import ClientIndex

    total = sum(sizes)
    clients = np.split(np.random.default_rng(0).permutation(max(total, 1))[:total],
                       np.cumsum(sizes)[:-1])
    index = ClientIndex(clients, max(total, 1))
    assert (index._rows is not None) == (len(set(sizes)) == 1)
    ids = np.array([2, 0, 2, 1])
    want = np.concatenate([clients[i] for i in ids])
    assert index.cohort(ids).flat.tolist() == want.tolist()
