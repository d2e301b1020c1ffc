"""The loop path: one client at a time with plain autograd, on the batched path's minibatches.

Taken when ``Population.batched`` is False or the batched path failed for the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call

from fedsim.population.cohort import Cohort, row_of
from fedsim.population.optstate import OptViews, state_views
from fedsim.population.update import opt_step, sgd_step

if TYPE_CHECKING:
    from fedsim.population.core import Population


def train_loop(pop: Population, cohort: Cohort) -> tuple[Tensor, Tensor, Tensor | None]:
    """Train the cohort one client at a time on the same minibatches as the batched path.

    With ``cohort.b0`` (``[b]`` or ``[m, b]`` buffers) every client trains with its own
    copy of them, and the ``[m, b]`` buffers after training are returned third (else None).
    """
    w0, b0 = cohort.w0, cohort.b0
    updates, losses, buffers = [], [], []
    opt_views = state_views(cohort.st, pop._spec)
    for i, n in enumerate(cohort.counts.tolist()):
        start = row_of(w0, i)
        bufs = None if b0 is None else pop._spec.buffer_dict(row_of(b0, i))
        u, loss = _train_one(pop, pop._spec.unflatten(start), cohort.orders[:, i, :n],
                             cohort.lr, cohort.mu, cohort.batch_size, bufs,
                             None if opt_views is None else opt_views.rows(slice(i, i + 1)))
        updates.append(u - start)
        losses.append(loss)
        if bufs is not None:
            buffers.append(torch.cat([t.reshape(-1).to(pop._init.dtype)
                                      for t in bufs.values()]))
    stacked = (torch.stack(updates) if cohort.out is None
               else torch.stack(updates, out=cohort.out))
    return (stacked, torch.stack(losses),
            torch.stack(buffers) if b0 is not None else None)


def _train_one(
    pop: Population,
    base: list[Tensor],
    order: Tensor,
    lr: float,
    mu: float,
    batch_size: int,
    buffers: dict[str, Tensor] | None = None,
    opt_views: OptViews | None = None,
) -> tuple[Tensor, Tensor]:
    """Local SGD of one client with plain autograd; returns (flat params, mean loss).

    ``buffers``: the client's own buffer tensors, updated in place by the forward
    passes (BatchNorm running statistics).
    """
    params = [p.clone().requires_grad_(True) for p in base]
    epochs, n = order.shape
    loss_sum = torch.zeros((), dtype=base[0].dtype, device=pop.device)
    for e in range(epochs):
        for start in range(0, n, batch_size):
            idx = order[e, start : start + batch_size]
            state = dict(zip(pop._spec.names, params, strict=True))
            if buffers is not None:
                state.update(buffers)
            logits = functional_call(pop.model, state, (pop.x[idx],))
            loss = pop.loss(logits, pop.y[idx]).mean()
            grads = list(torch.autograd.grad(loss, params))
            with torch.no_grad():
                if opt_views is None:
                    sgd_step(params, grads, base, lr, mu, None)
                else:  # the client's state rows are [1, ...]: add that dimension
                    opt_step(pop.local_opt, [p.unsqueeze(0) for p in params],
                             [g.unsqueeze(0) for g in grads],
                             [b.unsqueeze(0) for b in base], lr, mu, None, opt_views)
            loss_sum += loss.detach()
    steps = max(epochs * -(-n // batch_size), 1)
    return torch.cat([p.detach().reshape(-1) for p in params]), loss_sum / steps
