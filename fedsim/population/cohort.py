"""One ``train`` call's clients and step settings, as every training path takes them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.population.optstate import OptState


def row_of(t: Tensor, rows: int | slice) -> Tensor:
    """Row(s) ``rows`` of a per-client ``[m, k]`` tensor; a shared ``[k]`` tensor as it is."""
    return t[rows] if t.dim() == 2 else t


@dataclass(frozen=True)
class Cohort:
    """The clients of one ``train`` call (or a chunk of them) and how they step.

    Attributes:
        w0: ``[d]`` parameters every client starts from, or ``[m, d]`` one row per client.
        orders: ``[E, m, max_n]`` shuffled sample indices (``layout.draw_orders``).
        counts: ``[m]`` int64 samples of each client, on the CPU.
        lr: step size.
        mu: FedProx coefficient (0: FedAvg).
        batch_size: minibatch size.
        b0: for a model with buffers, ``[b]`` buffers every client starts from or
            ``[m, b]`` one row per client; None without buffers.
        st: the local optimizer's ``[m, d]`` state, updated in place (None: plain SGD).
        noise: DP-SGD's noise stream (``Population.dp_sgd``); None without DP-SGD.
        out: ``[m, d]`` where the updates go (``Population.train``'s ``out``); None: a
            new tensor. A chunk has none (its caller writes into the whole cohort's).
    """

    w0: Tensor
    orders: Tensor
    counts: Tensor
    lr: float
    mu: float
    batch_size: int
    b0: Tensor | None = None
    st: OptState | None = None
    noise: torch.Generator | None = None
    out: Tensor | None = None

    def chunk(self, rows: slice) -> Cohort:
        """The clients ``rows``, their orders cut to the chunk's largest client (views)."""
        counts = self.counts[rows]
        return Cohort(
            w0=row_of(self.w0, rows),
            orders=self.orders[:, rows, : int(counts.max())],
            counts=counts,
            lr=self.lr,
            mu=self.mu,
            batch_size=self.batch_size,
            b0=None if self.b0 is None else row_of(self.b0, rows),
            st=None if self.st is None else self.st.rows(rows),
            noise=self.noise,
        )
