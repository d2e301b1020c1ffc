"""Local training as PyTorch defines it, pinned independently of the code both paths share.

* Modes: clients train in ``train()`` mode, ``evaluate`` runs in ``eval()`` mode.
* Randomness inside the model (Dropout) comes from the run's training stream: per
  client different, the same on a rerun, batched (``vmap(randomness="different")``),
  and the caller's global RNG is left alone.
* What each client trains on: a one-hot model whose update records which samples
  (and in which minibatch sizes) a client saw, and the drawn shuffles checked against
  their specification and replayed by a hand-written SGD loop.
"""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fedsim.config import ModelConfig
from fedsim.models import build_model
from fedsim.population import Population


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int, d_in: int = 6, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def _clients(sizes: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Disjoint, shuffled index sets of the given sizes."""
    perm = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))
    return list(torch.split(perm, sizes))


def _net(middle: nn.Module, d_in: int = 6, width: int = 16, classes: int = 4) -> nn.Sequential:
    """Linear -> ReLU -> ``middle`` -> Linear, with weights that depend only on the shapes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), middle, nn.Linear(width, classes))


ENGINES = {  # name -> Population keyword arguments
    "fused_mlp": {},
    "vmap": {"fused": False},
    "loop": {"batched": False},
}


# ----------------------------------------------------------------------------- modes
def test_evaluate_is_deterministic_and_ignores_dropout():
    x, y = _data(300)
    drop = Population(_net(nn.Dropout(0.5)), x, y)
    plain = Population(_net(nn.Identity()), x, y)
    w = drop.flat_params() * 3  # larger weights: dropout would change many predictions
    state = torch.random.get_rng_state()
    first = drop.evaluate(w, x, y)
    assert drop.evaluate(w, x, y) == first
    assert plain.evaluate(w, x, y) == first
    assert torch.equal(torch.random.get_rng_state(), state)  # evaluation draws nothing


class _ModeRecorder(nn.Module):
    """Identity that records the mode it runs in (a Python side effect, also under vmap)."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_train_runs_in_train_mode_and_evaluate_in_eval_mode(engine):
    x, y = _data(20)
    model = _net(_ModeRecorder())
    model.eval()  # the caller's mode does not matter
    pop = Population(model, x, y, **ENGINES[engine])
    recorder = pop.model[2]
    recorder.seen.clear()
    pop.train(pop.flat_params(), _clients([8, 5]), lr=0.1, epochs=1, batch_size=4, gen=_gen())
    assert pop.engine == engine
    assert recorder.seen and all(recorder.seen)
    recorder.seen.clear()
    pop.evaluate(pop.flat_params(), x, y)
    assert recorder.seen and not any(recorder.seen)
    recorder.seen.clear()
    pop.train(pop.flat_params(), _clients([8, 5]), lr=0.1, epochs=1, batch_size=4, gen=_gen())
    assert recorder.seen and all(recorder.seen)
    assert not model[2].seen or not any(model[2].seen)  # the caller's module is not used


# ------------------------------------------------------------------------ randomness
def _mask_net(features: int = 32) -> nn.Sequential:
    """Dropout(0.5) -> Linear without bias from zero: the update's zero columns are the mask."""
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(features, 2, bias=False))
    nn.init.zeros_(model[1].weight)
    return model


def _mask_updates(engine: str, seed: int, chunk: int | None = None, clients: int = 6):
    """Every client trains one step on the same two all-ones samples; ``[m, 2, 32]``."""
    x, y = torch.ones(2, 32), torch.tensor([0, 0])
    kw = dict(ENGINES[engine], max_batched_clients=chunk)
    model = _mask_net()
    state = torch.random.get_rng_state()
    pop = Population(model, x, y, **kw)  # its probes of the model draw nothing either
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the loop
        res = pop.train(pop.flat_params(), [torch.tensor([0, 1])] * clients, lr=1.0, epochs=1,
                        batch_size=2, gen=_gen(seed))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert pop.stochastic and pop.vmap_fallback is None
    assert pop.engine == ("loop" if engine == "loop" else "vmap")
    return res.updates.view(clients, 2, 32)


@pytest.mark.parametrize("engine,chunk", [("vmap", None), ("vmap", 4), ("loop", None)])
def test_dropout_masks_differ_across_clients_and_repeat_across_reruns(engine, chunk):
    state = torch.random.get_rng_state()
    a = _mask_updates(engine, seed=1, chunk=chunk)
    torch.manual_seed(12345)  # the global RNG's state does not matter
    b = _mask_updates(engine, seed=1, chunk=chunk)
    torch.random.set_rng_state(state)
    assert torch.equal(a, b)
    other = _mask_updates(engine, seed=2, chunk=chunk)
    assert not torch.equal(a, other)
    # a feature is dropped for a client when both samples dropped it: about 1/4 of them
    kept = a[:, 0, :] != 0
    for i, j in itertools.combinations(range(len(kept)), 2):
        assert not torch.equal(kept[i], kept[j]), (i, j)
    assert 0.1 < 1 - kept.float().mean().item() < 0.4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_dropout_on_cuda_is_seeded_and_leaves_the_global_rngs_alone():
    x, y = torch.ones(2, 32), torch.tensor([0, 0])
    runs = []
    for global_seed in (5, 6):
        torch.cuda.manual_seed(global_seed)
        model = _mask_net()
        cpu, gpu = torch.random.get_rng_state(), torch.cuda.get_rng_state()
        pop = Population(model, x, y, device="cuda")
        res = pop.train(pop.flat_params(), [torch.tensor([0, 1])] * 6, lr=1.0, epochs=1,
                        batch_size=2, gen=_gen(1))
        assert torch.equal(torch.random.get_rng_state(), cpu)
        assert torch.equal(torch.cuda.get_rng_state(), gpu)
        assert pop.stochastic and pop.engine == "vmap"
        runs.append(res.updates.view(6, 2, 32).cpu())
    assert torch.equal(runs[0], runs[1])
    kept = runs[0][:, 0, :] != 0
    for i, j in itertools.combinations(range(len(kept)), 2):
        assert not torch.equal(kept[i], kept[j]), (i, j)


def _mean_update(model: nn.Module, engine: str, clients: int = 300) -> torch.Tensor:
    x, y = _data(4, d_in=8, classes=3)
    pop = Population(model, x, y, **ENGINES[engine])
    res = pop.train(pop.flat_params(), [torch.arange(4)] * clients, lr=1.0, epochs=1,
                    batch_size=4, gen=_gen())
    return res.updates.mean(dim=0)


def test_dropout_training_agrees_in_expectation_across_paths():
    """One step from zero weights: E[dropout(x)] = x, so the mean update over many clients
    approaches the update without dropout, on the batched and on the loop path."""
    def model(p: float) -> nn.Sequential:
        m = nn.Sequential(nn.Dropout(p), nn.Linear(8, 3))
        nn.init.zeros_(m[1].weight)
        nn.init.zeros_(m[1].bias)
        return m

    exact = _mean_update(model(0.0), "vmap", clients=1)
    scale = exact.abs().max()
    for engine in ("vmap", "loop"):
        mean = _mean_update(model(0.3), engine)
        assert (mean - exact).abs().max() < 0.1 * scale, engine


class _MaskBlind(nn.Module):
    """Draws dropout masks that cannot change the loss or the gradient."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(x) + 0.0 * self.drop(x).sum(dim=1, keepdim=True)


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("chunk", [None, 2])
def test_batched_equals_loop_with_dropout(chunk):
    sizes = [7, 3, 4, 1, 9, 5]
    x, y = _data(sum(sizes))
    kw = dict(lr=0.3, epochs=2, batch_size=4, mu=0.1)
    # p = 0: no randomness, and exactly the model without the Dropout layer
    results = []
    for model in (_net(nn.Dropout(0.0)), _net(nn.Identity())):
        for engine in ("vmap", "loop"):
            pop = Population(model, x, y, max_batched_clients=chunk, **ENGINES[engine])
            assert not pop.stochastic
            results.append(pop.train(pop.flat_params(), _clients(sizes), **kw, gen=_gen()))
    for r in results[1:]:
        torch.testing.assert_close(r.updates, results[0].updates, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(r.losses, results[0].losses, atol=1e-5, rtol=1e-4)
    assert torch.equal(results[0].updates, results[2].updates)  # vmap, p = 0 vs no layer
    # masks drawn on the seeded, batched path, where they cannot change the result
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        blind = _MaskBlind()
    plain = _Plain()
    plain.load_state_dict(blind.state_dict())
    out = {}
    for name, model in (("blind", blind), ("plain", plain)):
        for engine in ("vmap", "loop"):
            pop = Population(model, x, y, max_batched_clients=chunk, **ENGINES[engine])
            assert pop.stochastic == (name == "blind")
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                w0 = pop.flat_params()
                # the plain model's gen must give the same shuffles: blind draws its seed last
                out[name, engine] = pop.train(w0, _clients(sizes), **kw, gen=_gen())
            assert pop.engine == engine
    ref = out["plain", "vmap"]
    for key, r in out.items():
        torch.testing.assert_close(r.updates, ref.updates, atol=1e-5, rtol=1e-4, msg=str(key))
        torch.testing.assert_close(r.losses, ref.losses, atol=1e-5, rtol=1e-4, msg=str(key))
    # after training, both paths evaluate the same parameters to the same numbers
    w = ref.updates[0] + Population(blind, x, y).flat_params()
    assert Population(blind, x, y).evaluate(w, x, y) == Population(
        blind, x, y, batched=False).evaluate(w, x, y)


def test_models_without_randomness_draw_nothing_more_from_the_stream():
    """No seed is drawn for a model without randomness: golden runs stay as they were."""
    x, y = _data(30)
    sizes = [10, 7, 13]
    for model in (build_model(ModelConfig("mlp", (8,)), (6,), 4, seed=1), _net(nn.Dropout(0.0))):
        pop = Population(model, x, y)
        gen = _gen()
        pop.train(pop.flat_params(), _clients(sizes), lr=0.1, epochs=2, batch_size=4, gen=gen)
        ref = _gen()
        pop.draw_orders(_clients(sizes), 2, ref)
        assert torch.equal(gen.get_state(), ref.get_state())


def test_plain_linear_relu_stacks_keep_the_fused_engine():
    x, y = _data(20)
    assert Population(build_model(ModelConfig("mlp", (8,)), (6,), 4), x, y).engine == "fused_mlp"
    assert Population(build_model(ModelConfig("logreg"), (6,), 4), x, y).engine == "fused_mlp"
    assert Population(_net(nn.ReLU()), x, y).engine == "vmap"  # two ReLUs in a row
    dropout = Population(_net(nn.Dropout(0.2)), x, y)
    assert dropout.engine == "vmap" and dropout.stochastic
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dropout.train(dropout.flat_params(), _clients([12, 8]), lr=0.1, epochs=1, batch_size=4,
                      gen=_gen())
    assert dropout.engine == "vmap"  # Dropout stays on the batched path


# ------------------------------------------------------- what each client trains on
SIZES = [9, 1, 4, 1, 6, 2, 9]  # batch 4: full and partial batches, single samples


def _one_hot_population(engine: str, classes: int = 3, chunk: int | None = None):
    """Sample j is the one-hot vector e_j; a Linear without bias, from zero.

    Column j of a client's weight update is nonzero exactly when the client trained
    on sample j, and in one epoch it is ``-lr (1/C - onehot(y_j)) / b``, with ``b`` the
    number of real samples in the minibatch that held sample j.
    """
    n = sum(SIZES)
    x = torch.eye(n)
    y = torch.arange(n) % classes
    model = nn.Sequential(nn.Linear(n, classes, bias=False))
    nn.init.zeros_(model[0].weight)
    pop = Population(model, x, y, max_batched_clients=chunk, **ENGINES[engine])
    assert pop.engine == engine
    return pop, y


def _own_clients() -> list[torch.Tensor]:
    """Disjoint clients of ``SIZES``; sample 0 (the padding index) is the first client's."""
    clients = [c.clone() for c in _clients(SIZES, seed=4)]
    holder = next(i for i, c in enumerate(clients) if 0 in c.tolist())
    pos = clients[holder].tolist().index(0)
    clients[holder][pos], clients[0][0] = clients[0][0].item(), 0
    return clients


@pytest.mark.parametrize("engine,chunk", [("fused_mlp", None), ("fused_mlp", 3), ("vmap", None),
                                          ("vmap", 2), ("loop", None)])
@pytest.mark.parametrize("epochs", [1, 3])
def test_each_client_trains_on_its_own_samples_once_per_epoch(engine, chunk, epochs):
    pop, y = _one_hot_population(engine, chunk=chunk)
    clients = _own_clients()
    assert 0 in clients[0].tolist() and SIZES[0] == max(SIZES)
    lr, bs, classes = 0.5, 4, 3
    for seed in range(5):
        res = pop.train(pop.flat_params(), clients, lr=lr, epochs=epochs, batch_size=bs,
                        gen=_gen(seed))
        for i, own in enumerate(clients):
            u = res.updates[i].view(classes, -1)
            seen = (u != 0).any(dim=0).nonzero().flatten().sort().values
            assert seen.tolist() == own.sort().values.tolist(), (seed, i)
            if epochs != 1:
                continue
            # one visit each, in minibatches of bs real samples and a partial last one
            cols = u[:, own]
            b = lr * (1 - 1 / classes) / cols[y[own], torch.arange(len(own))]
            n = len(own)
            expect = [bs] * (n // bs * bs) + [n % bs] * (n % bs)
            assert sorted(b.round().long().tolist()) == sorted(expect), (seed, i)
            torch.testing.assert_close(b, b.round())


def _reference_sgd(model: nn.Module, x, y, w0, order: torch.Tensor, lr: float, bs: int,
                   load_buffers: bool = True, mu: float = 0.0):
    """Plain PyTorch local SGD over the given ``[epochs, n]`` sample order.

    ``load_buffers=False`` trains ``model`` itself (its buffers are then the result).
    """
    net = copy.deepcopy(model) if load_buffers else model
    vector_to_parameters(w0.clone(), net.parameters())
    anchors = [p.detach().clone() for p in net.parameters()]
    losses = []
    for epoch in order:
        for start in range(0, len(epoch), bs):
            idx = epoch[start : start + bs]
            net.zero_grad()
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            with torch.no_grad():
                for p, anchor in zip(net.parameters(), anchors, strict=True):
                    p -= lr * (p.grad + mu * (p - anchor))
            losses.append(loss.item())
    mean = sum(losses) / len(losses) if losses else 0.0
    return parameters_to_vector(net.parameters()).detach() - w0, mean


@pytest.mark.parametrize("engine,chunk", [("fused_mlp", None), ("fused_mlp", 3), ("vmap", None),
                                          ("vmap", 2), ("loop", None)])
def test_drawn_shuffles_are_fresh_permutations_replayed_by_plain_sgd(engine, chunk):
    """The shuffles each epoch are a permutation of the client's own samples, drawn anew
    every epoch; training follows them exactly as a hand-written SGD loop does."""
    x, y = _data(sum(SIZES))
    model = build_model(ModelConfig("mlp", (8,)), (6,), 4, seed=2)
    pop = Population(model, x, y, max_batched_clients=chunk, **ENGINES[engine])
    assert pop.engine == engine
    drawn: list[torch.Tensor] = []
    draw = pop._draw_orders

    def record(*args, **kwargs):
        out = draw(*args, **kwargs)
        drawn.append(out.clone())
        return out

    pop._draw_orders = record
    clients = _clients(SIZES, seed=1)
    epochs, bs, lr = 3, 4, 0.5
    w0 = pop.flat_params()
    res = pop.train(w0, clients, lr=lr, epochs=epochs, batch_size=bs, gen=_gen())
    (orders,) = drawn
    assert orders.shape == (epochs, len(SIZES), max(SIZES))
    for i, own in enumerate(clients):
        n = len(own)
        per_epoch = orders[:, i, :n]
        for e in range(epochs):
            assert sorted(per_epoch[e].tolist()) == sorted(own.tolist()), (i, e)
        if n >= 6:  # 1/720 chance per pair of epochs to repeat by luck; fixed seed
            for e, f in itertools.combinations(range(epochs), 2):
                assert not torch.equal(per_epoch[e], per_epoch[f]), (i, e, f)
        ref_u, ref_loss = _reference_sgd(model, x, y, w0, per_epoch, lr, bs)
        torch.testing.assert_close(res.updates[i], ref_u, atol=2e-5, rtol=1e-4)
        assert res.losses[i].item() == pytest.approx(ref_loss, rel=1e-4, abs=1e-6)
    # clients of equal size do not share a shuffle pattern (their own draws)
    a, b = (i for i, n in enumerate(SIZES) if n == max(SIZES))
    patterns = [torch.searchsorted(clients[i].sort().values, orders[:, i].contiguous())
                for i in (a, b)]
    assert not torch.equal(patterns[0], patterns[1])


# ------------------------------------------------------------------------- buffers
def _bn_net() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def _flat_buffers(net: nn.Module) -> torch.Tensor:
    return torch.cat([b.detach().reshape(-1).float() for b in net.buffers()])


def _load_buffers(net: nn.Module, flat: torch.Tensor) -> None:
    for b, part in zip(net.buffers(), torch.split(flat, [b.numel() for b in net.buffers()]),
                       strict=True):
        b.copy_(part.view_as(b).to(b.dtype))


@pytest.mark.parametrize("engine,chunk", [("vmap", None), ("vmap", 2), ("loop", None)])
@pytest.mark.parametrize("per_client", [False, True])
def test_batchnorm_statistics_follow_a_hand_written_per_client_loop(engine, chunk, per_client):
    # batch 4: full and partial minibatches (never one sample: BatchNorm1d needs two), and
    # a client without samples
    sizes = [8, 6, 4, 10, 0, 7]
    x, y = _data(sum(sizes))
    model = _bn_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pop = Population(model, x, y, max_batched_clients=chunk, **ENGINES[engine])
    assert pop.d_buffers == 16 + 16 + 1
    b0 = pop.flat_buffers()
    assert torch.equal(b0, _flat_buffers(model))
    g = torch.Generator().manual_seed(3)
    b0[-1] = 5.0  # num_batches_tracked

    def moved() -> torch.Tensor:  # other running statistics (the count stays an integer)
        return b0 + F.pad(0.1 * torch.rand(32, generator=g), (0, 1))

    if per_client:  # e.g. FedBN: each client starts from its own statistics
        b0 = torch.stack([moved() for _ in sizes])
    else:
        b0 = moved()
    drawn: list[torch.Tensor] = []
    draw = pop._draw_orders
    pop._draw_orders = lambda *a, **k: drawn.append(draw(*a, **k)) or drawn[-1]
    clients = _clients(sizes, seed=2)
    w0 = pop.flat_params()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the loop
        res = pop.train(w0, clients, lr=0.3, epochs=2, batch_size=4, mu=0.1, gen=_gen(),
                        buffers=b0)
    assert pop.engine == engine
    assert res.buffers is not None and res.buffers.shape == (len(sizes), pop.d_buffers)
    for i, own in enumerate(clients):
        net = copy.deepcopy(model)
        _load_buffers(net, b0[i] if per_client else b0)
        net.train()
        u, loss = _reference_sgd(net, x, y, w0, drawn[0][:, i, : len(own)], 0.3, 4,
                                 load_buffers=False, mu=0.1)
        torch.testing.assert_close(res.updates[i], u, atol=2e-5, rtol=1e-4)
        assert res.losses[i].item() == pytest.approx(loss, rel=1e-4)
        torch.testing.assert_close(res.buffers[i], _flat_buffers(net), atol=1e-6, rtol=1e-5)
        assert res.buffers[i, -1].item() == (b0[i, -1] if per_client else b0[-1]).item() + 2 * (
            -(-len(own) // 4))  # num_batches_tracked counts the client's steps
    # the population's module and the caller's keep their statistics
    assert torch.equal(_flat_buffers(pop.model), _flat_buffers(model))
    assert torch.equal(pop.flat_buffers(), _flat_buffers(model))


def test_evaluate_uses_the_given_running_statistics_in_eval_mode():
    x, y = _data(40)
    pop = Population(_bn_net(), x, y)
    buffers = pop.flat_buffers()
    buffers[:16] = torch.linspace(-1, 1, 16)  # running mean
    buffers[16:32] = torch.linspace(0.5, 2, 16)  # running variance
    w = pop.flat_params()
    net = copy.deepcopy(pop.model).eval()
    _load_buffers(net, buffers)
    with torch.no_grad():
        logits = net(x)
    expect = (F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item())
    one_by_one = pop.evaluate(w, x, y, batch_size=1, buffers=buffers)
    assert one_by_one == pytest.approx(expect, rel=1e-5)
    assert pop.evaluate(w, x, y, buffers=buffers) == pytest.approx(one_by_one, rel=1e-6)
    assert pop.evaluate(w, x, y) != pytest.approx(one_by_one, rel=1e-3)  # initial statistics
    with pytest.raises(ValueError, match="buffers"):
        pop.evaluate(w, x, y, buffers=buffers[:-1])
    with pytest.raises(ValueError, match="buffers"):
        plain = Population(_net(nn.Identity()), x, y)
        plain.evaluate(plain.flat_params(), x, y, buffers=buffers)


class _SmallCNN(nn.Module):
    """Conv -> BatchNorm2d -> ReLU -> Dropout -> Linear: the README's kind of model."""

    def __init__(self, p: float):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(6)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.drop = nn.Dropout(p)
            self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.drop(F.relu(self.bn(self.conv(x)))).flatten(1))


def test_cnn_with_batchnorm_and_dropout_trains_batched_and_reproducibly():
    sizes = [9, 3, 1, 6]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(sum(sizes), 1, 6, 6, generator=g), torch.randint(0, 3, (sum(sizes),))
    kw = dict(lr=0.2, epochs=2, batch_size=4, mu=0.05)
    runs = {}
    for p in (0.0, 0.4):
        for engine in ("vmap", "loop"):
            for rerun in range(2 if p else 1):
                pop = Population(_SmallCNN(p), x, y, **ENGINES[engine])
                state = torch.random.get_rng_state()
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    runs[p, engine, rerun] = pop.train(pop.flat_params(), _clients(sizes),
                                                       **kw, gen=_gen())
                assert pop.engine == engine and pop.stochastic == (p > 0)
                assert torch.equal(torch.random.get_rng_state(), state)
    for key in (("updates", "losses", "buffers")):
        a, b = getattr(runs[0.0, "vmap", 0], key), getattr(runs[0.0, "loop", 0], key)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4, msg=key)
        for engine in ("vmap", "loop"):
            assert torch.equal(getattr(runs[0.4, engine, 0], key),
                               getattr(runs[0.4, engine, 1], key)), (engine, key)
    assert not torch.equal(runs[0.4, "vmap", 0].updates, runs[0.0, "vmap", 0].updates)


def test_given_orders_train_as_the_drawn_ones():
    """``train(orders=pop.draw_orders(...))`` equals drawing them, and one client trained
    alone on its row of the cohort's orders equals its row of the cohort's result: how a
    Flower node or a Ray shard reproduces the simulator."""
    import torch
    from torch import nn

    from fedsim.population import Population

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    idx = [torch.arange(0, 4), torch.arange(4, 15), torch.arange(15, 30)]
    pop = Population(model, x, y)
    w = pop.flat_params()
    drawn = pop.train(w, idx, lr=0.1, epochs=2, batch_size=4,
                      gen=torch.Generator().manual_seed(5))
    orders = pop.draw_orders(idx, 2, torch.Generator().manual_seed(5))
    given = pop.train(w, idx, lr=0.1, epochs=2, batch_size=4,
                      gen=torch.Generator().manual_seed(99), orders=orders)
    assert torch.equal(drawn.updates, given.updates)
    alone = pop.train(w, idx[1:2], lr=0.1, epochs=2, batch_size=4,
                      gen=torch.Generator().manual_seed(99), orders=orders[:, 1:2])
    torch.testing.assert_close(alone.updates[0], drawn.updates[1], rtol=1e-6, atol=1e-7)
