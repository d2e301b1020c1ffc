"""The contract every update-pipeline piece follows (optax-style, explicit state).

A ``Stage`` maps the stacked client updates ``U [m, d]`` to ``U' [m, d']`` and
carries its own state (error feedback, memory, ...), indexed by ``ctx.senders``
when it is per client. An ``Aggregator`` reduces ``[m, d]`` to ``[d]``. A
``ServerOpt`` applies the aggregate to the global parameters. Pieces never read
the simulated clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

FLOAT_BYTES = 4


class Ctx(NamedTuple):
    """What a piece may read besides the updates."""

    step: int  # round (or event) number
    senders: Tensor  # [m] client ids of the rows
    weights: Tensor  # [m] aggregation weights (sample counts or ones)
    byzantine: Tensor  # [m] bool
    gen: Any  # torch.Generator: this piece's own seeded stream


class Stage(NamedTuple):
    """A row-wise transformation of the stacked updates."""

    init: Callable[[int, int], Any]  # (num_clients, d) -> state
    update: Callable[[Tensor, Any, Ctx], tuple[Tensor, Any]]  # U [m, d] -> (U' [m, d'], state)
    nbytes: Callable[[int], int]  # wire size of one row of width d


class Aggregator(NamedTuple):
    """A reduction of the stacked updates to one update."""

    init: Callable[[int, int], Any]
    aggregate: Callable[[Tensor, Any, Ctx], tuple[Tensor, Any]]  # U [m, d] -> (u [d], state)


class ServerStage(NamedTuple):
    """A transformation of the aggregate before the server optimizer (de-sketch, central
    noise): ``u [d'] -> u [d]``, with state kept by the server."""

    init: Callable[[int], Any]  # d (the model's width) -> state
    update: Callable[[Tensor, Any, Ctx], tuple[Tensor, Any]]  # u [d'] -> (u [d], state)
    nbytes: Callable[[int], int]  # wire size of the broadcast for a model of width d


class ServerOpt(NamedTuple):
    """How the server applies the aggregated update to the global parameters."""

    init: Callable[[int], Any]  # d -> state
    # (params [d], u [d], state) -> (params [d], state)
    apply: Callable[[Tensor, Tensor, Any], tuple[Tensor, Any]]


def identity() -> Stage:
    """The stage that sends rows unchanged as float32."""
    return Stage(
        init=lambda num_clients, d: None,
        update=lambda updates, state, ctx: (updates, state),
        nbytes=lambda d: FLOAT_BYTES * d,
    )


def _in_turn(stages: tuple) -> Callable[[Tensor, tuple, Ctx], tuple[Tensor, tuple]]:
    """``update`` of a chain: each stage's ``update`` left to right, with its own state."""

    def update(u: Tensor, state: tuple, ctx: Ctx) -> tuple[Tensor, tuple]:
        new_state = []
        for stage, st in zip(stages, state, strict=True):
            u, st = stage.update(u, st, ctx)
            new_state.append(st)
        return u, tuple(new_state)

    return update


def chain(*stages: Stage) -> Stage:
    """Stages applied left to right; wire size is the last stage's for the chained width.

    The width after each stage is not known without running it, so ``nbytes``
    is that of the last stage (a chain ends with the stage that shapes the wire).
    """
    if not stages:
        return identity()

    def init(num_clients: int, d: int) -> tuple:
        return tuple(s.init(num_clients, d) for s in stages)

    return Stage(init=init, update=_in_turn(stages), nbytes=stages[-1].nbytes)


def server_chain(*stages: ServerStage) -> ServerStage | None:
    """Server stages applied left to right (None: there are none); the broadcast is the last
    stage's output, so ``nbytes`` is the last stage's."""
    if not stages:
        return None

    def init(d: int) -> tuple:
        return tuple(s.init(d) for s in stages)

    return ServerStage(init=init, update=_in_turn(stages), nbytes=stages[-1].nbytes)
