"""FedAvg and FedProx.

References:
    McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
    Learning of Deep Networks from Decentralized Data" (AISTATS 2017), Algorithm 1.
    Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
    Heterogeneous Networks" (MLSys 2020) for the proximal term ``mu``.

Server loop, as in Algorithm 1 (the runner executes it; the clock decides who
of the selected clients reports in time):

    for each round t:
        S_t <- a random set of clients (size K, or more when over-selecting)
        for each client k in S_t that reports:           # batched in one vmap
            w_k <- ClientUpdate(k, w_t)                   # E epochs of SGD, batch B,
                                                          # + mu/2 ||w - w_t||^2 (FedProx)
        w_{t+1} <- w_t + eta_s * sum_k (n_k / n) (w_k - w_t)     # or a robust aggregate,
                                                          # or a server optimizer
"""

from __future__ import annotations

from fedsim.algorithms.base import Algorithm, LocalSGD
from fedsim.config import AlgorithmConfig
from fedsim.stages.base import chain
from fedsim.stages.registry import build_aggregator
from fedsim.stages.server import build_server_opt


def fedavg(cfg: AlgorithmConfig, d: int | None = None, seed: int = 0,
           privacy=None) -> Algorithm:
    """FedAvg (``mu = 0``) or FedProx (``mu > 0``) from the scenario's algorithm section.

    ``cfg.aggregator`` swaps the sample-weighted mean for a robust aggregator
    (coordinate median, Krum, geometric median, BGMD, ...; ``fedsim.stages.registry``);
    ``cfg.server_opt`` swaps the server step ``x + server_lr * u`` for FedAvgM, FedAdagrad,
    FedAdam or FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021;
    ``fedsim.stages.server``); ``cfg.compress`` sketches or sparsifies the uplink (Song et
    al. ICML 2023; FetchSGD, Rothchild et al. ICML 2020; ``fedsim.privacy.registry``), and
    ``privacy`` (DP-FedAvg, McMahan et al. ICLR 2018) clips and noises around it.
    """
    uplink, downlink = chain(), None
    if cfg.compress.get("name", "none") != "none":
        from fedsim.privacy.registry import build_compression

        uplink, downlink = build_compression(cfg.compress, d, seed)
    if privacy is not None:
        uplink, downlink = privacy.uplink(uplink), privacy.server(downlink)
    return Algorithm(
        name=cfg.name,
        client=LocalSGD(lr=cfg.lr, epochs=cfg.local_epochs, batch_size=cfg.batch_size, mu=cfg.mu),
        uplink=uplink,
        aggregate=build_aggregator(cfg.aggregator),
        server=build_server_opt(cfg.server_opt, cfg.server_lr),
        weighted=cfg.weighted and (privacy is None or privacy.cfg.mode != "central"),
        downlink=downlink,
    )
