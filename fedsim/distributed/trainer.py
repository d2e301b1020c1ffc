"""Who trains a federated round's cohort: this process (``LocalTrainer``), or Ray actors.

``FederatedRun`` calls ``trainer.train(params, clients, ...)`` where it used to call
``Population.train`` itself; everything else of a round (the clock, the uplink, the
attack, the aggregation, the server optimizer, evaluation) stays in the driver.
``RayOptions`` says where the Ray variant runs (``fedsim.distributed.ray_shards``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from fedsim.population import Population
    from fedsim.population.core import CohortResult


class Trainer(Protocol):
    """Trains a cohort of clients from the global model; what ``FederatedRun`` calls."""

    def train(self, params: Tensor, clients: Sequence[int], *, lr: float, epochs: int,
              batch_size: int, mu: float, gen: torch.Generator,
              buffers: Tensor | None, out: Tensor | None = None) -> CohortResult:
        """Local training of ``clients`` (ids, in cohort order) from ``params [d]``; the
        result's rows follow ``clients``. Same meaning as ``Population.train`` (``out``:
        where the updates may be written; a trainer may ignore it)."""
        ...

    def close(self) -> None:
        """Release what the trainer holds (actors, a Ray session); safe to call twice."""
        ...


class LocalTrainer:
    """The single-process path: the run's own ``Population`` trains the whole cohort.

    Args:
        pop: the run's population (every client's data).
        client_idx: each client's sample indices (numpy), by client id; held as one CSR
            ``ClientIndex`` on the population's device, so a cohort is gathered with a
            few vector operations (no tensor per client).
    """

    def __init__(self, pop: Population, client_idx: Sequence[np.ndarray]):
        from fedsim.population.index import ClientIndex

        self.pop = pop
        self.index = ClientIndex(client_idx, len(pop.x), pop.device)

    def train(self, params: Tensor, clients: Sequence[int], *, lr: float, epochs: int,
              batch_size: int, mu: float, gen: torch.Generator,
              buffers: Tensor | None, out: Tensor | None = None) -> CohortResult:
        """``Population.train`` of the cohort's indices, gathered from the CSR index."""
        ids = np.asarray(clients, dtype=np.int64)
        return self.pop.train(params, self.index.cohort(ids), lr=lr, epochs=epochs,
                              batch_size=batch_size, mu=mu, gen=gen, buffers=buffers,
                              clients=ids, out=out)

    def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how ``fedsim run --ray`` trains the cohorts.

    Attributes:
        address: a running Ray cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``), or
            None for a Ray started for the run on this machine (127.0.0.1 only), stopped
            when the run ends.
        actors: how many shard actors; None: one per GPU of the cluster when the run's
            device is a GPU, else one per CPU group (``FEDSIM_TORCH_THREADS`` CPUs, 1 by
            default).
        timeout_s: the longest wait for the actors to start, and for one round's shards.
    """

    address: str | None = None
    actors: int | None = None
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        from fedsim.errors import ScenarioError

        if self.actors is not None and self.actors < 1:
            raise ScenarioError("--ray-actors", f"must be an integer >= 1, got {self.actors}")
        if not self.timeout_s > 0:
            raise ScenarioError("ray timeout", f"must be > 0 seconds, got {self.timeout_s}")

    @staticmethod
    def threads() -> int:
        """Torch threads (and CPUs) of a CPU shard actor: ``FEDSIM_TORCH_THREADS``, 1 by
        default, as fedsim's own CPU runs."""
        import os

        try:
            return max(1, int(os.environ.get("FEDSIM_TORCH_THREADS", "1")))
        except ValueError:
            return 1

    def local_cpus(self) -> int:
        """CPUs a local Ray offers: this machine's, or enough for ``actors`` CPU actors."""
        import os

        return max(os.cpu_count() or 1, (self.actors or 1) * self.threads())
