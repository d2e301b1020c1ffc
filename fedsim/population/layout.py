"""Which samples each local step sees: shuffles, minibatch layout, step counts.

Both paths and every chunking train on the minibatches laid out here, from shuffles
drawn up front for the whole cohort (``draw_orders``), so they see the same data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def draw_orders(
    flat: Tensor, counts: Tensor, epochs: int, gen: torch.Generator, device: torch.device
) -> Tensor:
    """Shuffled sample indices of every client and epoch, ``[epochs, m, max_n]``.

    ``flat``: all clients' indices end to end on ``device`` (``Population._cat_indices``);
    ``counts``: ``[m]`` samples of each client. One ``torch.rand(m, max_n)`` per epoch
    from ``gen``; padding keys are pushed to the end, so row i starts with a permutation
    of client i's indices (padding holds index 0 and is masked).
    """
    m, max_n = len(counts), int(counts.max())
    pad = torch.arange(max_n, device=device) >= counts.to(device)[:, None]
    if int(counts.min()) == max_n:  # equal sizes: the concatenation is the matrix
        padded = flat.view(m, max_n)
    else:
        padded = flat.new_zeros(m, max_n)
        padded[~pad] = flat  # row-major: client i's indices fill row i's first n_i slots
    orders = []
    for _ in range(epochs):
        keys = torch.rand(m, max_n, generator=gen, device=gen.device).to(device)
        perm = keys.masked_fill_(pad, 2.0).argsort(dim=1, stable=True)
        orders.append(padded.gather(1, perm))
    if not orders:
        return padded.new_zeros(0, m, max_n)
    return torch.stack(orders)


def step_layout(
    orders: Tensor, counts: Tensor, batch_size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Minibatches of a chunk in step-major order, and which of their slots are real samples.

    Args:
        orders: ``[E, m, max_n]`` shuffled sample indices (``draw_orders``).
        counts: ``[m]`` samples of each client, on the device of ``orders``.
        batch_size: minibatch size ``bs``.
        dtype: floating dtype of the mask.

    Returns:
        ``[E, steps, m, bs]`` indices (each step's indices one contiguous block; slots
        past a client's samples hold padding) and the ``[steps, m, bs]`` mask, 1.0 on
        real samples, with ``steps = ceil(max_n / bs)``.
    """
    epochs, m, max_n = orders.shape
    bs, steps = batch_size, -(-max_n // batch_size)
    orders = F.pad(orders, (0, steps * bs - max_n))
    orders = orders.view(epochs, m, steps, bs).transpose(1, 2).contiguous()
    pos = torch.arange(steps * bs, device=orders.device)
    mask = (pos < counts[:, None]).to(dtype).view(m, steps, bs).transpose(0, 1).contiguous()
    return orders, mask


def num_steps(counts: Tensor, batch_size: int, epochs: int) -> Tensor:
    """Local SGD steps of each client (at least 1, so a mean over them is defined)."""
    return ((counts + batch_size - 1) // batch_size * epochs).clamp_min(1)
