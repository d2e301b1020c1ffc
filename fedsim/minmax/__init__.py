"""Decentralized min-max: the operator, the DADAM^3 family and baselines, games and GANs.

Typical use::

    from fedsim.minmax import bilinear_game, dadam3, run_minmax
    from fedsim.network.topology import ring

    rows = run_minmax(bilinear_game(num_nodes=8), dadam3(lr=0.05), ring(8), 2000)

See docs/minmax.md for the methods, the reading of DADAM^3 and the measured comparison.

References:
    Barazandeh, Huang, Michailidis, "A Decentralized Adaptive Momentum Method for Solving
    a Class of Min-Max Optimization Problems" (Signal Processing 2022, arXiv 2106.06075);
    Liu et al., "A Decentralized Parallel Algorithm for Training Generative Adversarial
    Nets" (NeurIPS 2020).
"""

from fedsim.minmax.games import affine_operator, bilinear_game, quadratic_game
from fedsim.minmax.gan import gaussian_mixture_gan, mode_metrics
from fedsim.minmax.methods import (
    DPOSG,
    LOOKAHEADS,
    MIXES,
    AdaptiveMinMax,
    DecentralizedExtragradient,
    DecentralizedGDA,
    adam_server,
    dadam3,
    extra_adam_server,
    gossip,
    mixing_matrix,
    optimistic_adam_server,
)
from fedsim.minmax.operator import MinMaxTask, Operator
from fedsim.minmax.registry import METHODS, make_method
from fedsim.minmax.run import TASKS, make_task, run_minmax
from fedsim.minmax.timing import GossipClock, IterationCost, ServerClock
from fedsim.minmax.tracking import GradientTracking, gt_extragradient, gt_gda

__all__ = [
    "DPOSG", "LOOKAHEADS", "METHODS", "MIXES", "TASKS", "AdaptiveMinMax",
    "DecentralizedExtragradient", "DecentralizedGDA", "GossipClock", "GradientTracking",
    "IterationCost",
    "MinMaxTask", "Operator", "ServerClock", "adam_server", "affine_operator",
    "bilinear_game", "dadam3", "extra_adam_server", "gaussian_mixture_gan", "gossip",
    "gt_extragradient", "gt_gda",
    "make_method", "make_task", "mixing_matrix", "mode_metrics", "optimistic_adam_server",
    "quadratic_game", "run_minmax",
]
