"""What an algorithm is: the slots a runner fills in, in order.

client update -> uplink chain -> aggregate -> downlink (server stages) -> server optimizer
(see DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.stages.base import Aggregator, ServerOpt, ServerStage, Stage


@dataclass(frozen=True)
class LocalSGD:
    """A client's local work: ``epochs`` passes of minibatch SGD (FedProx term ``mu``)."""

    lr: float
    epochs: int
    batch_size: int
    mu: float = 0.0


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm as a chain of pieces."""

    name: str
    client: LocalSGD
    uplink: Stage
    aggregate: Aggregator
    server: ServerOpt
    weighted: bool = True  # weight rows by the clients' sample counts
    # between aggregate and server optimizer: de-sketch, central DP noise (None: nothing)
    downlink: ServerStage | None = None
