"""The hand-written programs ``fedsim bench limit`` compares fedsim against.

What an expert would write with no simulator at all: R rounds of FedAvg over all N
clients of the shared workload, on the same minibatches as fedsim (the same sampling
permutation and the same shuffles, drawn from the same seeded streams), a weighted
average, no metrics, no clock. Two programs, on any device:

* ``vmapped``: the parameters of the clients stacked, ``vmap(grad(loss))`` over them
  (all N at once, or ``chunk`` at a time, summing the weighted models chunk by chunk);
* ``fused``: the same SGD written by hand as batched matrix products (``bmm``) for the
  workload's Linear/ReLU MLP: the program to compare fedsim's fused engine with, like
  for like.

Both return the final global parameters as one flat ``[d]`` vector (on the device).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.bench import workload


def sync(device: str) -> None:
    """Wait for the device's queued work (a GPU's kernels run asynchronously)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _streams(w: workload.Workload, data: Any, device: str):
    """The data on ``device``, the clients' rows ``[N, n]`` (equal sizes), and the runner's
    sampling (numpy) and training (torch, on ``device``) streams."""
    import torch

    from fedsim.seeding import numpy_rng, torch_generator

    x = torch.from_numpy(data.x_train).to(device)
    y = torch.from_numpy(data.y_train).to(device)
    rows = torch.from_numpy(np.stack(data.client_indices)).to(device)
    return (x, y, rows, numpy_rng(w.seed, "sampling"),
            torch_generator(w.seed, "training", device))


def _round_orders(w: workload.Workload, rows, sampling, gen) -> list:
    """This round's shuffled sample indices ``[N, n]`` per epoch, in cohort order (the
    runner's draws: the cohort permutation, then one ``torch.rand`` per epoch)."""
    import torch

    n_clients, n = rows.shape
    cohort = torch.from_numpy(sampling.choice(n_clients, size=n_clients, replace=False))
    mine = rows[cohort.to(rows.device)]
    return [mine.gather(1, torch.rand(n_clients, n, generator=gen, device=gen.device)
                        .to(rows.device).argsort(dim=1, stable=True))
            for _ in range(w.epochs)]


def vmapped(w: workload.Workload, data: Any, chunk: int | None = None, device: str = "cpu"):
    """R rounds of vmapped FedAvg; ``chunk`` clients at a time (None: all N at once)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    model = workload.make_model(w).to(device)
    x, y, rows, sampling, gen = _streams(w, data, device)
    n_clients, n = rows.shape
    weight = 1.0 / n_clients  # sample-count weights, all equal
    step = chunk or n_clients
    global_params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def loss_fn(params: dict, xb, yb):
        return F.cross_entropy(functional_call(model, params, (xb,)), yb)

    vgrad = vmap(grad(loss_fn))
    for _ in range(w.rounds):
        orders = _round_orders(w, rows, sampling, gen)
        new_params = {k: torch.zeros_like(v) for k, v in global_params.items()}
        for lo in range(0, n_clients, step):
            m = min(step, n_clients - lo)
            stacked = {k: v.expand(m, *v.shape).clone() for k, v in global_params.items()}
            for order in orders:
                for s in range(0, n, w.batch_size):
                    batch = order[lo : lo + m, s : s + w.batch_size]
                    grads = vgrad(stacked, x[batch], y[batch])
                    for k, p in stacked.items():
                        p.sub_(grads[k], alpha=w.lr)
            for k, p in stacked.items():
                new_params[k].add_(p.sum(dim=0), alpha=weight)
        global_params = new_params
    out = torch.cat([p.reshape(-1) for p in global_params.values()])
    sync(device)
    return out


def fused(w: workload.Workload, data: Any, chunk: int | None = None, device: str = "cpu"):
    """R rounds of FedAvg with the MLP's SGD written as batched matrix products.

    For each client ``c`` and minibatch ``(x, y)`` of ``B`` samples, layer by layer:
    ``z = a W^T + b``, ReLU between layers, ``g_L = (softmax(z_L) - onehot(y)) / B``,
    ``g_{l-1} = (g_l W_l) * 1[z_{l-1} > 0]``, then ``W_l -= lr g_l^T a_{l-1}`` and
    ``b_l -= lr sum_j g_l`` -- as ``bmm``/``baddbmm`` over ``chunk`` clients at once.
    """
    import torch

    model = workload.make_model(w).to(device)
    x, y, rows, sampling, gen = _streams(w, data, device)
    n_clients, n = rows.shape
    step = chunk or n_clients
    layers = [(m.weight.detach(), m.bias.detach()) for m in model.modules()
              if isinstance(m, torch.nn.Linear)]
    for _ in range(w.rounds):
        orders = _round_orders(w, rows, sampling, gen)
        sums = [(torch.zeros_like(W), torch.zeros_like(b)) for W, b in layers]
        for lo in range(0, n_clients, step):
            m = min(step, n_clients - lo)
            ps = [(W.expand(m, *W.shape).clone(), b.expand(m, *b.shape).clone())
                  for W, b in layers]
            for order in orders:
                for s in range(0, n, w.batch_size):
                    batch = order[lo : lo + m, s : s + w.batch_size]
                    _fused_step(ps, x[batch], y[batch], w.lr)
            for (sw, sb), (W, b) in zip(sums, ps, strict=True):
                sw.add_(W.sum(dim=0), alpha=1.0 / n_clients)
                sb.add_(b.sum(dim=0), alpha=1.0 / n_clients)
        layers = sums
    out = torch.cat([t.reshape(-1) for W, b in layers for t in (W, b)])
    sync(device)
    return out


def _fused_step(ps: list, xb, yb, lr: float) -> None:
    """One SGD step of every client of the chunk, in place (``ps``: ``[(W [m, o, i],
    b [m, o])]`` per layer; ``xb [m, B, in]``, ``yb [m, B]``)."""
    import torch

    acts = [xb]
    for i, (W, b) in enumerate(ps):
        z = torch.baddbmm(b.unsqueeze(1), acts[-1], W.transpose(1, 2))
        acts.append(z.relu_() if i < len(ps) - 1 else z)
    g = torch.softmax(acts[-1], dim=2)
    g.scatter_add_(2, yb.unsqueeze(2), torch.full_like(g[:, :, :1], -1.0))
    g.div_(xb.shape[1])
    for i in range(len(ps) - 1, -1, -1):
        W, b = ps[i]
        a_in = acts[i]
        g_prev = torch.bmm(g, W).mul_(a_in > 0) if i > 0 else None
        W.baddbmm_(g.transpose(1, 2), a_in, alpha=-lr)
        b.sub_(g.sum(dim=1), alpha=lr)
        g = g_prev
