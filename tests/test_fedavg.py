"""FedAvg against what its theory predicts, and its pieces."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from fedsim.algorithms import build_algorithm
from fedsim.config import AlgorithmConfig, ModelConfig
from fedsim.models import build_model
from fedsim.population import Population
from fedsim.stages.aggregate import weighted_mean
from fedsim.stages.base import Ctx, chain, identity


def one_round(model, x, y, clients, params, lr, batch_size, epochs=1):
    alg = build_algorithm(AlgorithmConfig(lr=lr, local_epochs=epochs, batch_size=batch_size))
    pop = Population(model, x, y)
    gen = torch.Generator().manual_seed(0)
    res = pop.train(params, clients, lr=lr, epochs=epochs, batch_size=batch_size, gen=gen)
    ctx = Ctx(step=1, senders=torch.arange(len(clients)), weights=res.num_samples.double(),
              byzantine=torch.zeros(len(clients), dtype=torch.bool), gen=gen)
    rows, _ = alg.uplink.update(res.updates, alg.uplink.init(len(clients), pop.d), ctx)
    agg, _ = alg.aggregate.aggregate(rows, None, ctx)
    new_params, _ = alg.server.apply(params, agg, None)
    return pop, new_params


def test_one_full_batch_epoch_of_fedavg_is_one_step_of_gradient_descent():
    """E = 1 and B >= n_k: the sample-weighted average of client steps is a GD step on all data."""
    torch.manual_seed(0)
    x, y = torch.randn(23, 5), torch.randint(0, 3, (23,))
    model = build_model(ModelConfig(name="mlp", hidden=(4,)), (5,), 3, seed=1)
    clients = [torch.arange(0, 4), torch.arange(4, 15), torch.arange(15, 23)]
    pop = Population(model, x, y)
    params = pop.flat_params()
    _, fedavg = one_round(model, x, y, clients, params, lr=0.3, batch_size=100)

    w = params.clone().requires_grad_(True)
    names = [n for n, _ in pop.model.named_parameters()]
    shapes = [p.shape for _, p in pop.model.named_parameters()]
    chunks = torch.split(w, [s.numel() for s in shapes])
    tensors = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
    loss = torch.nn.functional.cross_entropy(functional_call(pop.model, tensors, (x,)), y)
    (grad,) = torch.autograd.grad(loss, w)
    assert torch.allclose(fedavg, params - 0.3 * grad, atol=1e-6)


def test_a_client_alone_with_many_steps_is_local_sgd():
    """One client: the new global model is that client's local model."""
    torch.manual_seed(1)
    x, y = torch.randn(12, 4), torch.randint(0, 2, (12,))
    model = build_model(ModelConfig(name="logreg"), (4,), 2, seed=0)
    pop = Population(model, x, y)
    params = pop.flat_params()
    _, new = one_round(model, x, y, [torch.arange(12)], params, lr=0.5, batch_size=3, epochs=2)
    gen = torch.Generator().manual_seed(0)
    local = pop.train(params, [torch.arange(12)], lr=0.5, epochs=2, batch_size=3, gen=gen)
    assert torch.allclose(new, params + local.updates[0])


def _ctx(weights):
    m = len(weights)
    return Ctx(step=0, senders=torch.arange(m), weights=torch.tensor(weights, dtype=torch.float64),
               byzantine=torch.zeros(m, dtype=torch.bool), gen=None)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 100), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_weighted_mean_is_permutation_invariant_and_exact(weights, rnd):
    rows = torch.randn(len(weights), 6, dtype=torch.float64)
    agg = weighted_mean()
    out, _ = agg.aggregate(rows, None, _ctx(weights))
    expected = sum(w * r for w, r in zip(weights, rows, strict=True)) / sum(weights)
    assert torch.allclose(out, expected)
    order = list(range(len(weights)))
    rnd.shuffle(order)
    out2, _ = agg.aggregate(rows[order], None, _ctx([weights[i] for i in order]))
    assert torch.allclose(out, out2)


def test_identity_chain_sends_float32_rows():
    rows = torch.randn(3, 10)
    stage = chain(identity(), identity())
    out, _ = stage.update(rows, stage.init(3, 10), _ctx([1.0, 1.0, 1.0]))
    assert torch.equal(out, rows) and stage.nbytes(10) == 40


def test_every_algorithm_the_scenario_accepts_can_be_built():
    from fedsim.scenario import ALGORITHMS, DECENTRALIZED_ALGORITHMS

    # the federated and decentralized pipelines; other families (gradient coding, min-max)
    # have runners of their own (fedsim/runs/) and no pipeline slots
    pipeline = [n for n in ALGORITHMS if n in ("fedavg", "fedprox", *DECENTRALIZED_ALGORITHMS)]
    assert pipeline[:2] == ["fedavg", "fedprox"]
    for name in pipeline:
        assert build_algorithm(AlgorithmConfig(name=name, mu=0.1)).name == name
