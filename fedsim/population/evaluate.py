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
