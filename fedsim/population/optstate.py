"""The cohort's local optimizer state (``fedsim.local_opt``) as explicit ``[m, d]`` rows.

Fresh at every ``train`` (``state = "reset"``), or kept per client id in
``Population.opt_state`` between calls (``state = "keep"``). Plain SGD has no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.local_opt import LocalOpt
from fedsim.population.flat import FlatSpec

# client id -> (slots, step): ``slots`` one ``[d]`` tensor per state vector, ``step``
# Adam's step count (``Population.opt_state``)
KeptState = dict[int, tuple[tuple[Tensor, ...], int]]


@dataclass
class OptState:
    """The cohort's local optimizer state: ``[m, d]`` slots and ``[m]`` step counts (CPU)."""

    slots: list[Tensor]
    steps: Tensor

    def rows(self, rows: slice) -> OptState:
        """Views of the rows of a chunk of clients."""
        return OptState([t[rows] for t in self.slots], self.steps[rows])

    def clone(self) -> OptState:
        return OptState([t.clone() for t in self.slots], self.steps.clone())

    def copy_(self, other: OptState) -> None:
        for t, o in zip(self.slots, other.slots, strict=True):
            t.copy_(o)
        self.steps.copy_(other.steps)


@dataclass
class OptViews:
    """``OptState`` with each slot split into parameter-shaped ``[m, *shape]`` views."""

    slots: list[list[Tensor]]
    steps: Tensor

    def rows(self, rows: slice) -> OptViews:
        return OptViews([[t[rows] for t in slot] for slot in self.slots], self.steps[rows])


def start_state(
    opt: LocalOpt, kept: KeptState, m: int, d: int, w0: Tensor, clients: Sequence[int] | None
) -> OptState | None:
    """The cohort's optimizer state at the start of training (None for plain SGD).

    ``m`` clients of ``d`` parameters, named by ``clients`` (ids, needed when ``opt``
    keeps its state: each client starts from its ``kept`` state, zeros the first time).
    """
    if clients is not None and len(clients) != m:
        raise ValueError(f"clients must name the {m} clients, got {len(clients)} ids")
    if opt.plain:
        return None
    if opt.keeps and clients is None:
        raise ValueError("local_opt keeps each client's state: train needs clients=")
    st = OptState([w0.new_zeros(m, d) for _ in range(opt.slots)],
                  torch.zeros(m, dtype=torch.long))
    if opt.keeps:
        assert clients is not None
        for r, cid in enumerate(clients):
            row = kept.get(int(cid))
            if row is not None:
                for t, saved in zip(st.slots, row[0], strict=True):
                    t[r] = saved
                st.steps[r] = row[1]
    return st


def keep_state(
    opt: LocalOpt, kept: KeptState, st: OptState | None, clients: Sequence[int] | None
) -> None:
    """Store each client's state after training in ``kept`` (when ``opt`` keeps it)."""
    if st is not None and opt.keeps:
        assert clients is not None
        for r, cid in enumerate(clients):
            kept[int(cid)] = (tuple(t[r].clone() for t in st.slots), int(st.steps[r]))


def state_views(st: OptState | None, spec: FlatSpec) -> OptViews | None:
    """Parameter-shaped ``[m, *shape]`` views of the optimizer state's rows."""
    if st is None:
        return None
    return OptViews([spec.unflatten_rows(t) for t in st.slots], st.steps)
