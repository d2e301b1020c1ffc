"""The compared algorithms, one short file each, built from ``fedsim.stages``."""

from __future__ import annotations

from fedsim.algorithms.base import Algorithm, LocalSGD
from fedsim.config import AlgorithmConfig
from fedsim.errors import ScenarioError


def build_algorithm(cfg: AlgorithmConfig, d: int | None = None, seed: int = 0,
                    privacy=None) -> Algorithm:
    """The algorithm named by ``cfg.name``: "fedavg", "fedprox" (the same with ``mu > 0``), or
    a decentralized one ("dsgd", "gossip_sgd", "accelerated_gossip_sgd"), see
    :func:`decentralized`.

    Args:
        cfg: the scenario's algorithm section.
        d: the model's width (needed by ``cfg.compress`` widths given as a ratio).
        seed: the compression stream's seed (``stream_seed(root, "compress")``).
        privacy: a ``fedsim.privacy.federated.ClientPrivacy`` (DP-FedAvg), or None.
    """
    from fedsim.algorithms.fedavg import fedavg

    builders = {"fedavg": fedavg, "fedprox": fedavg,  # the names in scenario.ALGORITHMS
                "dsgd": decentralized, "gossip_sgd": decentralized,
                "accelerated_gossip_sgd": decentralized}
    if cfg.name not in builders:
        raise ScenarioError("algorithm.name",
                            f"unknown algorithm {cfg.name!r}; allowed: {', '.join(builders)}")
    if cfg.name in ("fedavg", "fedprox"):
        return fedavg(cfg, d, seed, privacy)
    return builders[cfg.name](cfg)


def decentralized(cfg: AlgorithmConfig) -> Algorithm:
    """A decentralized algorithm's slots as a federated runner would read them.

    Local SGD, then the exact mean of the nodes' models -- the consensus that mixing
    (D-SGD's ``W``, gossip exchanges) approximates. ``fedsim.decentralized.runner`` runs
    these names: it keeps the client slot and replaces aggregate and server by mixing.

    References:
        Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?"
        (NeurIPS 2017); Even et al., "A Continuized View on Nesterov Acceleration..."
        (NeurIPS 2021).
    """
    from fedsim.stages.base import chain
    from fedsim.stages.registry import build_aggregator
    from fedsim.stages.server import server_sgd

    return Algorithm(name=cfg.name,
                     client=LocalSGD(lr=cfg.lr, epochs=cfg.local_epochs,
                                     batch_size=cfg.batch_size),
                     uplink=chain(), aggregate=build_aggregator({"name": "mean"}),
                     server=server_sgd(1.0), weighted=False)


__all__ = ["Algorithm", "LocalSGD", "build_algorithm", "decentralized"]
