"""The batched path for a plain Linear/ReLU stack: ``fedsim.fastmlp``'s fused engine.

The same SGD steps on the same minibatches as the ``vmap`` path, written as batched
matrix products with the update fused into the gradient product.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from fedsim.population.chunking import fused_chunk_size
from fedsim.population.cohort import Cohort
from fedsim.population.layout import num_steps, step_layout

if TYPE_CHECKING:
    from fedsim.population.core import Population


def train_fused(pop: Population, cohort: Cohort) -> tuple[Tensor, Tensor]:
    """Train the cohort with the fused Linear/ReLU engine, ``fused_chunk_size`` at a time.

    The same minibatches (``step_layout`` of the same orders) and the same SGD steps
    as ``batched.train_batched``; one workspace serves every chunk. ``cohort.st``: SGD
    with momentum or weight decay (None: plain SGD); the momentum buffers go to the
    engine's stored layout and back, chunk by chunk. Returns (updates, losses).
    """
    fused = pop._fused
    assert fused is not None
    w0, counts, batch_size, st = cohort.w0, cohort.counts, cohort.batch_size, cohort.st
    m, epochs = len(counts), cohort.orders.shape[0]
    chunk = min(m, fused_chunk_size(pop, batch_size))
    updates = w0.new_empty(m, pop.d) if cohort.out is None else cohort.out
    losses = w0.new_empty(m)
    n_dev = counts.to(pop.device)
    templates = fused.templates(w0)
    ws = fused.workspace(chunk, batch_size, w0)
    opt_ws = (None if st is None else
              [w0.new_empty(chunk, *spec.shape) for spec in fused.specs])
    for start in range(0, m, chunk):
        rows = slice(start, start + chunk)
        part, n = cohort.chunk(rows), n_dev[rows]
        batches, mask = step_layout(part.orders, n, batch_size, w0.dtype)
        weights = mask / mask.sum(dim=2, keepdim=True).clamp_min(1.0)  # r / max(c, 1)
        kw: dict = {}
        if part.st is not None and opt_ws is not None:
            if part.st.slots:  # the momentum buffers
                bufs = fused.stored(part.st.slots[0], opt_ws)
            else:  # weight decay only: a scratch buffer (momentum 0)
                bufs = [b[: len(part.counts)].zero_() for b in opt_ws]
            kw = {"momentum": pop.local_opt.momentum,
                  "weight_decay": pop.local_opt.weight_decay, "bufs": bufs}
        fused.train_chunk(ws, templates, pop._x_rows, pop.y, w0, batches, weights,
                          mask[:, :, 0], cohort.lr, cohort.mu, out=(updates[rows], losses[rows]),
                          num_steps=num_steps(n, batch_size, epochs), **kw)
        if part.st is not None and part.st.slots:
            fused.write_rows(kw["bufs"], part.st.slots[0])
    return updates, losses
