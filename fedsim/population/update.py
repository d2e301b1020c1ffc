"""One local optimizer step, in place, on stacked ``[m, ...]`` parameters.

Plain SGD (``sgd_step``) or ``fedsim.local_opt``'s update (``opt_step``: the equations
of ``torch.optim.SGD`` / ``torch.optim.Adam``), both with FedProx's proximal term; a
client without a real sample in the step keeps its parameters and state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedsim.local_opt import LocalOpt
from fedsim.population.optstate import OptViews


def sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    anchors: list[Tensor],
    lr: float,
    mu: float,
    step_mask: Tensor | None,
) -> None:
    """In place: ``w -= lr * mask * (g + mu * (w - anchor))`` for every parameter tensor.

    Args:
        params: parameter tensors (stacked ``[m, ...]`` in the batched path).
        grads: their cross-entropy gradients (overwritten).
        anchors: the global parameters, broadcastable to ``params``.
        lr: step size.
        mu: FedProx coefficient.
        step_mask: ``[m]`` 1.0 for clients with real samples in this step, 0.0 for a
            padded-only step; None when every client takes the step.
    """
    if mu > 0:
        torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=mu)
    if step_mask is not None:
        views = [step_mask.view(-1, *([1] * (g.dim() - 1))) for g in grads]
        torch._foreach_mul_(grads, views)
    torch._foreach_add_(params, grads, alpha=-lr)


def opt_step(
    opt: LocalOpt,
    params: list[Tensor],
    grads: list[Tensor],
    anchors: list[Tensor],
    lr: float,
    mu: float,
    step_mask: Tensor | None,
    views: OptViews | None,
) -> None:
    """One local optimizer step, in place, for stacked ``[m, ...]`` parameters.

    ``views`` None: plain SGD (``sgd_step``). Otherwise ``opt``'s update
    (``fedsim.local_opt``, the equations of ``torch.optim.SGD`` / ``torch.optim.Adam``)
    on the gradient ``grad + mu (w - anchor) + weight_decay * w``; a client whose
    ``step_mask`` is 0 (no real sample in the step) keeps its parameters and state.
    """
    if views is None:
        sgd_step(params, grads, anchors, lr, mu, step_mask)
        return
    if mu > 0:
        torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=mu)
    if opt.weight_decay > 0:
        torch._foreach_add_(grads, params, alpha=opt.weight_decay)
    active = None if step_mask is None else step_mask.bool()

    def keep_inactive(new: list[Tensor], old: list[Tensor]) -> None:
        """``old <- new`` for the active clients (all of them without a mask)."""
        for n, o in zip(new, old, strict=True):
            if active is None:
                o.copy_(n)
            else:
                o.copy_(torch.where(active.view(-1, *([1] * (o.dim() - 1))), n, o))

    def per_client(values: list[float], t: Tensor) -> Tensor:
        return torch.tensor(values, dtype=t.dtype, device=t.device).view(
            -1, *([1] * (t.dim() - 1)))

    if opt.name == "sgd":
        upd = grads
        if opt.momentum > 0:  # b <- momentum * b + g (b = g on the first step: b is 0)
            bufs = views.slots[0]
            new = torch._foreach_mul(bufs, opt.momentum)
            torch._foreach_add_(new, grads)
            keep_inactive(new, bufs)
            upd = bufs
        if step_mask is not None:
            upd = [u * step_mask.view(-1, *([1] * (u.dim() - 1))) for u in upd]
        torch._foreach_add_(params, upd, alpha=-lr)
        return
    # adam
    ms, vs = views.slots
    steps = views.steps
    acts = [True] * len(steps) if active is None else active.tolist()
    steps += torch.tensor(acts, dtype=steps.dtype)
    t_list = steps.tolist()
    step_size = [lr / (1.0 - opt.beta1 ** t) if a else 0.0
                 for t, a in zip(t_list, acts, strict=True)]
    c2 = [math.sqrt(1.0 - opt.beta2 ** t) if a else 1.0
          for t, a in zip(t_list, acts, strict=True)]
    new_m = [m.lerp(g, 1.0 - opt.beta1) for m, g in zip(ms, grads, strict=True)]
    new_v = [v.mul(opt.beta2).addcmul_(g, g, value=1.0 - opt.beta2)
             for v, g in zip(vs, grads, strict=True)]
    keep_inactive(new_m, ms)
    keep_inactive(new_v, vs)
    for p, m, v in zip(params, ms, vs, strict=True):
        denom = (v.sqrt() / per_client(c2, v)).add_(opt.eps)
        p.sub_((m / denom).mul_(per_client(step_size, p)))
