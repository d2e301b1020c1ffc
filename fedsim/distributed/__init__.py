"""Training a federated run's cohorts somewhere else than in this process.

``trainer``: the interface ``FederatedRun`` trains through (``LocalTrainer``: this
process, as always) and ``RayOptions``; ``ray_shards``: ``RayTrainer``, the cohort
sharded over Ray actors that each hold a share of the clients (``fedsim run --ray``);
``session``: a local Ray on 127.0.0.1 (or a connection to a cluster) for a run or a study.
See docs/scale-out.md.
"""

from __future__ import annotations

from fedsim.distributed.trainer import LocalTrainer, RayOptions, Trainer

__all__ = ["LocalTrainer", "RayOptions", "Trainer"]
