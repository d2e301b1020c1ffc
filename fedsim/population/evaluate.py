"""Loss and accuracy of given parameters, with the model in ``eval()`` mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call

if TYPE_CHECKING:
    from fedsim.population.core import Population


@torch.no_grad()
def evaluate(
    pop: Population, params: Tensor, x: Tensor, y: Tensor, batch_size: int,
    buffers: Tensor | None,
) -> tuple[float, float]:
    """``Population.evaluate``: mean ``pop.loss`` and accuracy on ``(x, y)``, in batches."""
    if len(x) == 0:
        raise ValueError("evaluate needs at least one sample")
    flat = params.to(pop.device, pop._init.dtype)
    p = dict(zip(pop._spec.names, pop._spec.unflatten(flat), strict=True))
    b0 = pop._check_buffers(buffers, None)
    if b0 is not None:
        p.update(pop._spec.buffer_dict(b0))
    loss_sum = torch.zeros((), dtype=torch.float64, device=pop.device)
    correct = torch.zeros((), dtype=torch.long, device=pop.device)
    pop.model.eval()
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size].to(pop.device, pop._init.dtype)
        yb = y[start : start + batch_size].to(pop.device, torch.long)
        logits = functional_call(pop.model, p, (xb,))
        loss_sum += pop.loss(logits, yb).sum()
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


@torch.no_grad()
def accuracy_rows(
    pop: Population, rows: Tensor, x: Tensor, y: Tensor, batch_size: int,
    buffers: Tensor | None, chunk: int,
) -> list[float]:
    """``Population.accuracy_rows``: the accuracy of every row's model on ``(x, y)``.

    ``chunk`` rows at a time through one vmapped forward pass (a 10k-node graph is 10k
    models); a model that cannot be vmapped is evaluated row by row.
    """
    if len(x) == 0:
        raise ValueError("evaluate needs at least one sample")
    n = rows.shape[0]
    rows = rows.to(pop.device, pop._init.dtype)
    bufs = None if buffers is None else buffers.to(pop.device, pop._init.dtype)
    if bufs is None and pop._spec.buf_names:
        bufs = pop._init_buffers.expand(n, -1)
    pop.model.eval()

    def logits_of(p: Tensor, b: Tensor | None, xb: Tensor) -> Tensor:
        named = dict(zip(pop._spec.names, pop._spec.unflatten(p), strict=True))
        if b is not None:
            named.update(pop._spec.buffer_dict(b))
        return functional_call(pop.model, named, (xb,))

    batched = torch.func.vmap(logits_of, in_dims=(0, None if bufs is None else 0, None))
    correct = torch.zeros(n, dtype=torch.long, device=pop.device)
    try:
        for lo in range(0, n, chunk):
            p = rows[lo : lo + chunk]
            b = None if bufs is None else bufs[lo : lo + chunk]
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size].to(pop.device, pop._init.dtype)
                yb = y[start : start + batch_size].to(pop.device, torch.long)
                correct[lo : lo + chunk] += (batched(p, b, xb).argmax(dim=2) == yb).sum(dim=1)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return [evaluate(pop, r, x, y, batch_size, None if bufs is None else bufs[i])[1]
                for i, r in enumerate(rows)]
    return (correct.double() / len(x)).tolist()
