"""The generic batched path: chunks of clients trained with ``vmap(grad_and_value(loss))``.

Each chunk stacks its clients' parameters along a new leading dimension and trains them
in place in its rows of the cohort's result. A model with buffers (BatchNorm) carries
each client's buffers as a row of the vmap too (``train_chunk_buffers``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from fedsim.population.chunking import vmap_chunk_size
from fedsim.population.cohort import Cohort
from fedsim.population.layout import num_steps, step_layout
from fedsim.population.optstate import OptViews, state_views
from fedsim.population.update import opt_step, sgd_step

if TYPE_CHECKING:
    from collections.abc import Callable

    from fedsim.population.core import Population


def vmapped_grad(pop: Population, buffers: bool) -> Callable:
    """``vmap(grad_and_value(client loss))`` over the clients of a chunk.

    ``buffers``: the loss takes the clients' buffers as a second argument. A
    ``stochastic`` model vmaps with ``randomness="different"`` (each client, a row of
    the vmap, draws its own dropout masks); a model without randomness keeps
    ``"error"``, so an undetected random op falls back to the loop instead of drawing
    unseeded numbers.
    """
    loss = _client_loss_buffers if buffers else _client_loss
    return vmap(grad_and_value(partial(loss, pop)),
                randomness="different" if pop.stochastic else "error")


def per_sample_grad(pop: Population) -> Callable:
    """Per-sample gradients and losses of a chunk, ``vmap`` over clients of ``vmap`` over
    samples: ``(params [m, ...], xb [m, B, ...], yb [m, B]) -> (grads [m, B, ...],
    losses [m, B])`` (DP-SGD; Abadi et al., CCS 2016)."""
    def sample_loss(params: tuple[Tensor, ...], x: Tensor, y: Tensor) -> Tensor:
        state = dict(zip(pop._spec.names, params, strict=True))
        return pop.loss(functional_call(pop.model, state, (x.unsqueeze(0),)), y.unsqueeze(0))[0]

    randomness = "different" if pop.stochastic else "error"
    samples = vmap(grad_and_value(sample_loss), in_dims=(None, 0, 0), randomness=randomness)
    return vmap(samples, randomness=randomness)


def _dp_step_grads(pop: Population, params: list[Tensor], xb: Tensor, yb: Tensor,
                   mask: Tensor, noise: torch.Generator) -> tuple[list[Tensor], Tensor]:
    """DP-SGD's noised gradients ``[m, ...]`` of one step and the clients' mean losses
    ``[m]`` over their real samples (``mask [m, B]``)."""
    from fedsim.privacy.dpsgd import private_grad

    grads, losses = pop._vgrad_samples(tuple(params), xb, yb)
    clip, z = pop.dp_sgd
    noised = private_grad(dict(zip(pop._spec.names, grads, strict=True)), clip, z, noise,
                          mask=mask)
    loss = (losses * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return [noised[name] for name in pop._spec.names], loss


def _client_loss(pop: Population, params: tuple[Tensor, ...], xb: Tensor, yb: Tensor,
                 mask: Tensor):
    """Masked mean loss of one client's minibatch (vmapped over clients)."""
    logits = functional_call(pop.model, dict(zip(pop._spec.names, params, strict=True)), (xb,))
    return (pop.loss(logits, yb) * mask).sum() / mask.sum().clamp_min(1.0)


def _client_loss_buffers(
    pop: Population, params: tuple[Tensor, ...], buffers: tuple[Tensor, ...], xb: Tensor,
    yb: Tensor, mask: Tensor,
):
    """``_client_loss`` with the client's own buffers (updated in place by BatchNorm)."""
    state = dict(zip(pop._spec.names, params, strict=True))
    state.update(zip(pop._spec.buf_names, buffers, strict=True))
    logits = functional_call(pop.model, state, (xb,))
    return (pop.loss(logits, yb) * mask).sum() / mask.sum().clamp_min(1.0)


def train_batched(pop: Population, cohort: Cohort) -> tuple[Tensor, Tensor, Tensor | None]:
    """Train the cohort in vmapped chunks of at most ``vmap_chunk_size`` clients.

    Returns (updates, losses, buffers after training or None).
    """
    chunk = vmap_chunk_size(pop, cohort.batch_size)
    if cohort.noise is not None:  # per-sample gradients: batch_size times the memory
        chunk = max(1, chunk // cohort.batch_size)
    w0, m = cohort.w0, len(cohort.counts)
    # Each chunk trains in place in its rows of the result: no per-chunk buffers to concatenate.
    updates = w0.new_empty(m, pop.d) if cohort.out is None else cohort.out
    losses = w0.new_empty(m)
    buffers = None if cohort.b0 is None else w0.new_empty(m, pop.d_buffers)
    for start in range(0, m, chunk):
        rows = slice(start, start + chunk)
        part = cohort.chunk(rows)
        if buffers is None:
            train_chunk(pop, part, out=(updates[rows], losses[rows]))
        else:
            train_chunk_buffers(pop, part, out=(updates[rows], losses[rows], buffers[rows]))
    return updates, losses, buffers


def _stacked_start(
    pop: Population, w0: Tensor, updates: Tensor
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The chunk's starting parameters written into ``updates`` (``[m, d]``).

    Returns ``updates`` itself, the ``[m, *shape]`` parameter views into its rows, and
    FedProx's anchors: ``w0`` broadcast to every client, or a ``[m, d]`` ``w0``'s own rows.
    """
    m = updates.shape[0]
    flat = updates.copy_(w0.expand(m, -1))  # [m, d]; params are views into its rows
    params = pop._spec.unflatten_rows(flat)
    if w0.dim() == 2:  # per-client starting points: each row is its own anchor
        anchors = pop._spec.unflatten_rows(w0)
    else:
        anchors = [p.unsqueeze(0).expand_as(q)
                   for p, q in zip(pop._spec.unflatten(w0), params, strict=True)]
    return flat, params, anchors


def train_chunk(
    pop: Population, chunk: Cohort, out: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Local SGD for one chunk of ``m`` clients with stacked ``[m, ...]`` parameters.

    ``out``: ``([m, d], [m])`` tensors to write the updates and losses into
    (allocated when None); returned either way. ``chunk.st``: the chunk's optimizer
    state (None: plain SGD), updated in place.
    """
    w0, counts, lr, mu = chunk.w0, chunk.counts, chunk.lr, chunk.mu
    epochs, m, max_n = chunk.orders.shape
    bs = chunk.batch_size
    n_dev = counts.to(pop.device)
    orders, mask = step_layout(chunk.orders, n_dev, bs, w0.dtype)
    steps = orders.shape[1]
    min_n = int(counts.min())
    if out is None:
        out = (w0.new_empty(m, pop.d), w0.new_empty(m))
    flat, params, anchors = _stacked_start(pop, w0, out[0])
    opt_views = state_views(chunk.st, pop._spec)
    feat = pop.x.shape[1:]
    xbuf = pop.x.new_empty((m * bs, *feat))
    loss_sum = torch.zeros(m, dtype=w0.dtype, device=pop.device)
    for e in range(epochs):
        for s in range(steps):
            idx = orders[e, s].view(-1)
            xb = torch.index_select(pop.x, 0, idx, out=xbuf).view(m, bs, *feat)
            yb = pop.y[idx].view(m, bs)
            if chunk.noise is None:
                grads, loss = pop._vgrad(tuple(params), xb, yb, mask[s])
            else:
                grads, loss = _dp_step_grads(pop, params, xb, yb, mask[s], chunk.noise)
            step_mask = None if s * bs < min_n else mask[s, :, 0]
            opt_step(pop.local_opt, params, list(grads), anchors, lr, mu, step_mask, opt_views)
            loss_sum += loss
    torch.div(loss_sum, num_steps(n_dev, bs, epochs), out=out[1])
    return flat.sub_(w0), out[1]


def train_chunk_buffers(
    pop: Population, chunk: Cohort, out: tuple[Tensor, Tensor, Tensor]
) -> None:
    """``train_chunk`` for a model with buffers (BatchNorm), writing into ``out``.

    Each client's buffers ride along in the vmap, so BatchNorm updates that client's
    own running statistics. A client with fewer than ``batch_size`` real samples in
    a step takes that step alone, on its real samples only (padding slots must not
    enter its batch statistics); its buffers are restored from before the vmapped
    step first. A step with no real sample leaves the client's buffers as they were.
    """
    w0, counts, lr, mu, b0 = chunk.w0, chunk.counts, chunk.lr, chunk.mu, chunk.b0
    assert b0 is not None
    epochs, m, _ = chunk.orders.shape
    bs = chunk.batch_size
    n_dev = counts.to(pop.device)
    n_list = counts.tolist()
    orders, mask = step_layout(chunk.orders, n_dev, bs, w0.dtype)
    steps = orders.shape[1]
    updates, losses, buffers_out = out
    flat, params, anchors = _stacked_start(pop, w0, updates)
    buffers = pop._spec.buffer_rows(b0.expand(m, -1) if b0.dim() == 1 else b0)
    feat = pop.x.shape[1:]
    opt_views = state_views(chunk.st, pop._spec)
    loss_sum = torch.zeros(m, dtype=w0.dtype, device=pop.device)
    for e in range(epochs):
        for s in range(steps):
            short = [r for r, n in enumerate(n_list) if n < (s + 1) * bs]
            idx = orders[e, s].reshape(-1)
            xb, yb = pop.x[idx].view(m, bs, *feat), pop.y[idx].view(m, bs)
            kept = [b[short].clone() for b in buffers] if short else []
            grads, loss = pop._vgrad_buffers(tuple(params), tuple(buffers), xb, yb, mask[s])
            step_mask = None
            if short:
                step_mask = torch.ones(m, dtype=w0.dtype, device=pop.device)
                step_mask[short] = 0.0
                loss = loss * step_mask
                for b, k in zip(buffers, kept, strict=True):
                    b[short] = k
            opt_step(pop.local_opt, params, list(grads), anchors, lr, mu, step_mask, opt_views)
            loss_sum += loss
            for r in short:
                c = n_list[r] - s * bs
                if c > 0:
                    loss_sum[r] += _client_step(pop, r, params, anchors, buffers,
                                                orders[e, s, r, :c], lr, mu, opt_views)
    torch.div(loss_sum, num_steps(n_dev, bs, epochs), out=losses)
    torch.cat([b.reshape(m, -1).to(w0.dtype) for b in buffers], dim=1, out=buffers_out)
    flat.sub_(w0)


def _client_step(
    pop: Population,
    r: int,
    params: list[Tensor],
    anchors: list[Tensor],
    buffers: list[Tensor],
    idx: Tensor,
    lr: float,
    mu: float,
    opt_views: OptViews | None = None,
) -> Tensor:
    """One SGD step of client ``r`` of a chunk on samples ``idx``, in place in its rows.

    Returns the step's mean loss.
    """
    base = [p[r] for p in params]
    leaves = [t.detach().clone().requires_grad_(True) for t in base]
    state = dict(zip(pop._spec.names, leaves, strict=True))
    state.update(zip(pop._spec.buf_names, (b[r] for b in buffers), strict=True))
    loss = pop.loss(functional_call(pop.model, state, (pop.x[idx],)), pop.y[idx]).mean()
    grads = list(torch.autograd.grad(loss, leaves))
    with torch.no_grad():
        if opt_views is None:
            sgd_step(base, grads, [a[r] for a in anchors], lr, mu, None)
        else:
            rows = slice(r, r + 1)
            opt_step(pop.local_opt, [p[rows] for p in params], [g.unsqueeze(0) for g in grads],
                     [a[rows] for a in anchors], lr, mu, None, opt_views.rows(rows))
    return loss.detach()
