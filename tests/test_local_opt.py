"""Local optimizers (fedsim.local_opt): SGD with momentum and weight decay, Adam, with
per-client state reset or kept, against hand-written per-client torch.optim loops."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from fedsim.cli import main
from fedsim.local_opt import LocalOpt, build_local_opt
from fedsim.population import Population

SIZES = [7, 12, 3, 10, 6]  # unequal: padded and partial minibatches (batch 4)
BS, EPOCHS = 4, 2


def _data(n: int = sum(SIZES), features: int = 6, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _clients(sizes=SIZES) -> list[torch.Tensor]:
    out, start = [], 0
    for n in sizes:
        out.append(torch.arange(start, start + n))
        start += n
    return out


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _bn() -> nn.Module:
    torch.manual_seed(2)
    # no bias before BatchNorm: its gradient is rounding noise, which Adam would amplify
    return nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _torch_opt(opt: LocalOpt, params, lr: float) -> torch.optim.Optimizer:
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum,
                               weight_decay=opt.weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                            weight_decay=opt.weight_decay)


class Reference:
    """One module and one torch.optim optimizer per client, trained minibatch by minibatch.

    ``keep``: a client's optimizer (its state) lives across rounds; else a new one each round.
    """

    def __init__(self, model: nn.Module, opt: LocalOpt, lr: float, mu: float, keep: bool):
        self.model, self.opt, self.lr, self.mu, self.keep = model, opt, lr, mu, keep
        self.clients: dict[int, tuple[nn.Module, torch.optim.Optimizer]] = {}

    def round(self, w0: torch.Tensor, ids: list[int], orders: torch.Tensor, sizes: list[int],
              buffers: torch.Tensor | None = None) -> torch.Tensor:
        """Train clients ``ids`` (``orders``: ``[E, m, max_n]``); returns ``[m, d]`` updates."""
        updates = []
        for r, (cid, n) in enumerate(zip(ids, sizes, strict=True)):
            if self.keep and cid in self.clients:
                module, optim = self.clients[cid]
            else:
                module = copy.deepcopy(self.model)
                optim = _torch_opt(self.opt, list(module.parameters()), self.lr)
                self.clients[cid] = (module, optim)
            with torch.no_grad():
                vector_to_parameters(w0.clone(), module.parameters())
                for b, b_init in zip(module.buffers(), self.model.buffers(), strict=True):
                    b.copy_(b_init)
            module.train()
            for e in range(orders.shape[0]):
                order = orders[e, r, :n]
                for start in range(0, n, BS):
                    idx = order[start:start + BS]
                    loss = F.cross_entropy(module(X[idx]), Y[idx])
                    if self.mu > 0:
                        loss = loss + self.mu / 2 * (parameters_to_vector(
                            module.parameters()) - w0).pow(2).sum()
                    optim.zero_grad()
                    loss.backward()
                    optim.step()
            updates.append(parameters_to_vector(module.parameters()).detach() - w0)
        return torch.stack(updates)


X, Y = _data()

OPTS = {
    "sgd_momentum_wd": LocalOpt("sgd", momentum=0.9, weight_decay=5e-4),
    "sgd_wd": LocalOpt("sgd", weight_decay=0.01),
    "adam": LocalOpt("adam"),
    "adam_wd": LocalOpt("adam", beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.01),
}


def _round(pop: Population, w0, ids, seed: int, mu: float = 0.0):
    idx = [_clients()[i] for i in ids]
    counts = torch.tensor([len(i) for i in idx])
    orders = pop.draw_orders(idx, EPOCHS, torch.Generator().manual_seed(seed))
    res = pop.train(w0, idx, lr=0.05, epochs=EPOCHS, batch_size=BS, mu=mu,
                    gen=torch.Generator().manual_seed(seed), clients=ids)
    return res, orders, counts.tolist()


# the fused engine trains SGD on Linear/ReLU stacks only
PATHS = [(path, name, make) for path in ("fused", "vmap", "loop") for name in OPTS
         for make in (_mlp, _bn) if path != "fused" or (make is _mlp and OPTS[name].name == "sgd")]


@pytest.mark.parametrize(("path", "name", "make"), PATHS,
                         ids=[f"{p}-{n}-{m.__name__.strip('_')}" for p, n, m in PATHS])
@pytest.mark.parametrize("mu", [0.0, 0.1], ids=["fedavg", "fedprox"])
@pytest.mark.parametrize("state", ["reset", "keep"])
def test_two_rounds_equal_torch_optim(path, mu, name, make, state):
    """Two rounds (clients 0 and 2 in both) on each path, chunks of 3 clients: the fused
    Linear/ReLU engine (SGD on the MLP), vmap (BatchNorm: its own step for partial
    minibatches) and the loop."""
    opt = OPTS[name]
    opt = LocalOpt(**{**opt.__dict__, "state": state})
    model = make()
    pop = Population(model, X, Y, batched=path != "loop", fused=path == "fused",
                     max_batched_clients=3, local_opt=opt)
    assert pop.engine == {"fused": "fused_mlp", "vmap": "vmap", "loop": "loop"}[path]
    ref = Reference(model, opt, lr=0.05, mu=mu, keep=state == "keep")
    w0 = pop.flat_params()
    ids1, ids2 = [0, 1, 2, 3], [2, 4, 0]  # clients 0 and 2 train in both rounds
    res1, orders1, sizes1 = _round(pop, w0, ids1, seed=3, mu=mu)
    expect1 = ref.round(w0, ids1, orders1, sizes1)
    # Adam moves every coordinate by about lr per step whatever the gradient's size, so
    # coordinates whose gradients are near rounding noise differ more than with SGD
    tol = {"rtol": 1e-5, "atol": 1e-6} if opt.name == "sgd" else {"rtol": 1e-4, "atol": 2e-5}
    torch.testing.assert_close(res1.updates, expect1, **tol)
    w1 = w0 + res1.updates.mean(0)
    res2, orders2, sizes2 = _round(pop, w1, ids2, seed=4, mu=mu)
    expect2 = ref.round(w1, ids2, orders2, sizes2)
    torch.testing.assert_close(res2.updates, expect2, **tol)


def test_keep_continues_a_clients_state_and_reset_starts_over():
    """Client 0 trains in both rounds: with keep its second round differs from reset;
    client 4 trains once and gets the same update either way."""
    results = {}
    for state in ("reset", "keep"):
        pop = Population(_mlp(), X, Y, local_opt=LocalOpt("adam", state=state))
        w0 = pop.flat_params()
        res1, _, _ = _round(pop, w0, [0, 1], seed=3)
        res2, _, _ = _round(pop, w0 + res1.updates.mean(0), [0, 4], seed=4)
        results[state] = (res1.updates, res2.updates, pop.opt_state)
    torch.testing.assert_close(results["reset"][0], results["keep"][0], rtol=0, atol=0)
    assert not torch.allclose(results["reset"][1][0], results["keep"][1][0])
    torch.testing.assert_close(results["reset"][1][1], results["keep"][1][1], rtol=0, atol=0)
    assert results["reset"][2] == {}
    kept = results["keep"][2]
    assert sorted(kept) == [0, 1, 4]
    (m, v), steps = kept[0]
    d = len(w0)
    assert m.shape == v.shape == (d,)
    # 7 samples in batches of 4, 2 epochs, 2 rounds
    assert steps == 2 * EPOCHS * math.ceil(SIZES[0] / BS)
    assert kept[4][1] == EPOCHS * math.ceil(SIZES[4] / BS)


def test_keep_needs_client_ids():
    pop = Population(_mlp(), X, Y, local_opt=LocalOpt("sgd", momentum=0.9, state="keep"))
    with pytest.raises(ValueError, match="clients="):
        pop.train(pop.flat_params(), _clients()[:2], lr=0.1, epochs=1, batch_size=BS,
                  gen=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "loop"])
def test_plain_sgd_is_todays_path_bit_for_bit(batched):
    """Plain SGD, named or not, with or without state = keep: the same engine and the same
    bits as a population without local_opt (the fused engine for an MLP)."""
    outs = []
    for opt in (None, LocalOpt(), LocalOpt("sgd", momentum=0.0, weight_decay=0.0,
                                           state="keep")):
        pop = Population(_mlp(), X, Y, batched=batched, local_opt=opt)
        assert pop.engine == ("fused_mlp" if batched else "loop")
        res = pop.train(pop.flat_params(), _clients(), lr=0.1, epochs=EPOCHS, batch_size=BS,
                        mu=0.1, gen=torch.Generator().manual_seed(5), clients=range(5))
        assert pop.opt_state == {}
        outs.append((res.updates, res.losses))
    for updates, losses in outs[1:]:
        assert torch.equal(updates, outs[0][0]) and torch.equal(losses, outs[0][1])


def test_sgd_stays_on_the_fused_engine_adam_does_not():
    for opt in (LocalOpt("sgd", momentum=0.5), LocalOpt("sgd", weight_decay=1e-4)):
        assert Population(_mlp(), X, Y, local_opt=opt).engine == "fused_mlp"
    assert Population(_mlp(), X, Y, local_opt=LocalOpt("adam")).engine == "vmap"


@pytest.mark.parametrize("state", ["reset", "keep"])
def test_fused_momentum_equals_vmap(state):
    """The fused engine's momentum SGD and the vmap path: the same updates and kept state."""
    opt = LocalOpt("sgd", momentum=0.9, weight_decay=1e-3, state=state)
    pops = [Population(_mlp(), X, Y, fused=fused, max_batched_clients=2, local_opt=opt)
            for fused in (True, False)]
    results = []
    for pop in pops:
        w0 = pop.flat_params()
        res1, _, _ = _round(pop, w0, [0, 1, 2], seed=3, mu=0.05)
        res2, _, _ = _round(pop, w0 + res1.updates.mean(0), [2, 4, 0], seed=4, mu=0.05)
        results.append((res1.updates, res2.updates, res2.losses))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sorted(pops[0].opt_state) == sorted(pops[1].opt_state)
    for cid, ((buf,), _) in pops[0].opt_state.items():
        torch.testing.assert_close(buf, pops[1].opt_state[cid][0][0], rtol=1e-5, atol=1e-6)


TINY = """
name = "tiny"
seed = 3
rounds = 3
clients_per_round = 4
[data]
dataset = "synthetic"
num_clients = 8
partition = "natural"
synthetic_mean_samples = 20
[model]
name = "mlp"
hidden = [16]
[algorithm]
lr = 0.1
batch_size = 5
"""


def _run(tmp_path, out: str, *overrides: str):
    from fedsim.study import run_file

    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    (result,) = run_file(path, overrides, output_dir=str(tmp_path / out), progress=False,
                         log=None)
    return result


def test_scenario_default_and_named_plain_sgd_give_identical_metrics(tmp_path):
    runs = [_run(tmp_path, "a"),
            _run(tmp_path, "b", "algorithm.local_opt={name='sgd'}"),
            _run(tmp_path, "c", "algorithm.local_opt={name='sgd', momentum=0.0, "
                                "weight_decay=0.0, state='keep'}")]
    files = [(r.run_dir / "metrics.csv").read_bytes() for r in runs]
    assert files[0] == files[1] == files[2]
    momentum = _run(tmp_path, "d", "algorithm.local_opt={name='sgd', momentum=0.9}")
    assert (momentum.run_dir / "metrics.csv").read_bytes() != files[0]


def test_adam_on_digits_learns(tmp_path):
    from fedsim.study import run_file

    path = tmp_path / "digits.toml"
    path.write_text(TINY.replace('dataset = "synthetic"', 'dataset = "digits"')
                    .replace('partition = "natural"', 'partition = "iid"')
                    .replace("num_clients = 8", "num_clients = 20")
                    .replace("rounds = 3", "rounds = 8")
                    .replace("lr = 0.1", "lr = 0.003"))
    (result,) = run_file(path, ["algorithm.local_opt={name='adam', state='keep'}"],
                         output_dir=str(tmp_path / "out"), progress=False, log=None)
    assert result.summary["final_accuracy"] > 0.6  # 10 classes: chance is 0.1


BAD = [
    ("{name='adagrad'}", "algorithm.local_opt.name"),
    ("{name=3}", "algorithm.local_opt.name"),
    ("{name='sgd', momentum=1.0}", "algorithm.local_opt.momentum"),
    ("{name='sgd', momentum=-0.1}", "algorithm.local_opt.momentum"),
    ("{name='sgd', momentum=nan}", "algorithm.local_opt.momentum"),
    ("{name='sgd', weight_decay=-1e-4}", "algorithm.local_opt.weight_decay"),
    ("{name='sgd', weight_decay=1e39}", "algorithm.local_opt.weight_decay"),
    ("{name='sgd', beta1=0.9}", "algorithm.local_opt.beta1"),
    ("{name='sgd', state='forever'}", "algorithm.local_opt.state"),
    ("{name='adam', beta1=1.0}", "algorithm.local_opt.beta1"),
    ("{name='adam', beta2=inf}", "algorithm.local_opt.beta2"),
    ("{name='adam', eps=0.0}", "algorithm.local_opt.eps"),
    ("{name='adam', eps='small'}", "algorithm.local_opt.eps"),
    ("{name='adam', momentum=0.9}", "algorithm.local_opt.momentum"),
]


@pytest.mark.parametrize(("value", "key"), BAD, ids=[b[0] for b in BAD])
def test_bad_local_opt_is_one_line_exit_2(value, key, tmp_path, capsys):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    code = main(["validate", str(path), "--set", f"algorithm.local_opt={value}"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: ") and key in lines[0], err


def test_decentralized_takes_plain_sgd_steps(tmp_path, capsys):
    ring = TINY.replace('[algorithm]', '[algorithm]\nname = "dsgd"') + (
        '[network]\ntopology = "ring"\ntopology_params = {n = 8}\n')
    path = tmp_path / "ring.toml"
    path.write_text(ring)
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--set",
                 "algorithm.local_opt={name='sgd', weight_decay=1e-4}"]) == 0
    capsys.readouterr()
    assert main(["validate", str(path), "--set", "algorithm.local_opt={name='adam'}"]) == 2
    err = capsys.readouterr().err
    assert "algorithm.local_opt.name" in err and "dsgd" in err


def test_build_local_opt_defaults_match_torch():
    assert build_local_opt(None) == LocalOpt()
    adam = build_local_opt({"name": "adam"})
    defaults = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults
    assert (adam.beta1, adam.beta2) == defaults["betas"] and adam.eps == defaults["eps"]
    assert adam.weight_decay == defaults["weight_decay"] and adam.state == "reset"


def test_resources_count_kept_optimizer_state(tmp_path, monkeypatch, capsys):
    from fedsim.resources import BYTES_PER_KEPT_CLIENT, estimate, num_params
    from fedsim.scenario import load_scenario

    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    plain = estimate(load_scenario(path, validate=False))
    assert "optimizer state" not in [p.name for p in plain.host]
    sc = load_scenario(path, ["algorithm.local_opt={name='adam', state='keep'}"],
                       validate=False)
    (part,) = [p for p in estimate(sc).host if p.name == "optimizer state"]
    d, m, n = num_params(sc), 4, 8  # 3 rounds x 4 clients: all 8 clients can train
    assert part.bytes == 2 * 4 * m * d + n * (8 * d + 8 + BYTES_PER_KEPT_CLIENT)
    assert part.key == "algorithm.local_opt.state"
    # a population too large to keep Adam's state for every client is refused up front
    monkeypatch.setenv("FEDSIM_MEMORY_LIMIT_BYTES", "1e9")
    code = main(["validate", str(path), "--set", "algorithm.local_opt={name='adam', "
                 "state='keep'}", "--set", "model.hidden=[20000]", "--set", "rounds=1000",
                 "--set", "data.num_clients=2000", "--set", "data.partition='iid'"])
    err = capsys.readouterr().err
    assert code == 2 and "algorithm.local_opt.state" in err, err
