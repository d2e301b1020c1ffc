"""Where each parameter and buffer of a model sits in the population's flat vectors.

Parameters are a ``[d]`` vector in ``parameters_to_vector`` order (``[m, d]`` for a
cohort, one row per client), buffers a ``[b]`` vector in ``named_buffers`` order, stored
in the parameters' floating dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FlatSpec:
    """Names, shapes and sizes of a model's parameters and buffers, to split flat vectors."""

    def __init__(self, model: nn.Module):
        named = list(model.named_parameters())
        self.names = tuple(n for n, _ in named)
        self.shapes = tuple(p.shape for _, p in named)
        self.numels = tuple(p.numel() for _, p in named)
        buffers = list(model.named_buffers())
        self.buf_names = tuple(n for n, _ in buffers)
        self.buf_shapes = tuple(t.shape for _, t in buffers)
        self.buf_numels = tuple(t.numel() for _, t in buffers)
        self.buf_dtypes = tuple(t.dtype for _, t in buffers)

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a ``[d]`` vector into views shaped like the model's parameters."""
        return [
            t.view(s) for t, s in zip(torch.split(flat, self.numels), self.shapes, strict=True)
        ]

    def unflatten_rows(self, flat: Tensor) -> list[Tensor]:
        """Views of a ``[m, d]`` matrix shaped ``[m, *shape]`` for each parameter tensor."""
        m = flat.shape[0]
        cols = torch.split(flat, self.numels, dim=1)
        return [c.view(m, *s) for c, s in zip(cols, self.shapes, strict=True)]

    def buffer_dict(self, flat: Tensor) -> dict[str, Tensor]:
        """Fresh buffer tensors of the model's shapes and dtypes from a ``[b]`` vector."""
        parts = torch.split(flat, self.buf_numels)
        return {n: t.reshape(s).to(dtype, copy=True) for n, t, s, dtype in
                zip(self.buf_names, parts, self.buf_shapes, self.buf_dtypes, strict=True)}

    def buffer_rows(self, rows: Tensor) -> list[Tensor]:
        """Fresh ``[m, *shape]`` buffer tensors of the model's dtypes from ``[m, b]`` rows."""
        m = rows.shape[0]
        return [t.reshape(m, *shape).to(dtype, copy=True) for t, shape, dtype in
                zip(torch.split(rows, self.buf_numels, dim=1), self.buf_shapes,
                    self.buf_dtypes, strict=True)]
