"""Decentralized extragradient and GDA with gradient tracking: exact linear convergence
when every node's game has its own saddle point (see :class:`GradientTracking`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.minmax.methods import _KEY, Oracle, _check_lr, _check_steps, gossip


@dataclass(frozen=True)
class GradientTracking:
    """Decentralized extragradient (or GDA) with gradient tracking: exact, linear.

    Every node keeps two trackers of the network operator, ``Y`` (of ``F`` at the
    iterates) and ``S`` (of ``F`` at the lookahead points), updated DIGing's way
    (``tracker <- W^k tracker + F_new - F_old``), so that the trackers' average always
    equals the average of the latest local evaluations and, at consensus, the network
    operator ``(1/n) sum_j F_j``. Per iteration, with ``V = W^k`` (``k = gossip_steps``)::

        Z = V X - lr Y                 # lookahead along the tracked operator
        S <- V S + F(Z) - F(Z_prev)    # S_0 = F(Z_0)
        X <- V X - lr S
        Y <- V Y + F(X_new) - F(X)     # Y_0 = F(X_0)

    ``extragradient = False`` drops the lookahead (``X <- V X - lr Y``, one tracker):
    GT-GDA. Unlike plain decentralized extragradient, whose fixed point with
    node-specific saddle points (a game's ``bias > 0``, non-iid data) is off ``x*`` by
    ``O(lr * heterogeneity / spectral gap)``, the fixed point here is ``x*`` exactly,
    reached linearly on a strongly monotone game; the trackers' disagreement decays
    through mixing only, so the rate depends on the graph (docs/minmax.md).

    Cost: one exchange round per gossip step, carrying ``x`` and the trackers
    (:attr:`message_states` = 3, or 2 for GT-GDA); two evaluations per iteration (one
    for GT-GDA), plus ``F(X_0)`` once before the first.

    ``lazy = True`` mixes with the lazy matrix ``(I + W) / 2`` instead of ``W`` (its
    eigenvalues lie in ``[0, 1]``; tracking methods' admissible steps otherwise shrink
    with ``W``'s most negative eigenvalue: -0.6 on the 4x4 torus's Metropolis matrix,
    where ``lr 0.03`` already diverges on the quadratic game of docs/minmax.md).

    Attributes:
        name: the name rows show.
        lr: step size.
        gossip_steps: mixing rounds per iteration (each mixes ``x`` and the trackers).
        extragradient: the lookahead (True) or plain descent-ascent (False).
        lazy: mix with ``(I + W) / 2`` (True) or ``W`` (False).

    References:
        Nedic, Olshevsky, Shi, "Achieving Geometric Convergence for Distributed
        Optimization over Time-Varying Graphs" (DIGing; SIAM J. Optim. 2017); Qu & Li,
        "Harnessing Smoothness to Accelerate Distributed Optimization" (IEEE TCNS 2018);
        Qureshi & Khan, "Distributed saddle point problems for strongly concave-convex
        functions" (GT-GDA; arXiv 2202.05812); Mukherjee & Chakraborty, "A Decentralized
        Algorithm for Large Scale Min-Max Problems" (IEEE CDC 2020; extragradient with
        tracking, its text not checked here); Korpelevich (1976). The extragradient form
        above (DIGing's rule for both evaluations, one exchange) is our construction.
    """

    name: str = "gt_extragradient"
    lr: float = 1e-2
    gossip_steps: int = 1
    extragradient: bool = True
    lazy: bool = False

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_steps(self.gossip_steps)
        for key in ("extragradient", "lazy"):
            if not isinstance(getattr(self, key), bool):
                raise ScenarioError(f"{_KEY}.{key}",
                                    f"must be true or false, got {getattr(self, key)!r}")

    server = False

    @property
    def comm_rounds(self) -> int:
        """``gossip_steps``."""
        return self.gossip_steps

    @property
    def message_states(self) -> int:
        """Vectors of width ``d`` per message: ``x``, ``Y`` (and ``S``)."""
        return 3 if self.extragradient else 2

    def init(self, X: Tensor) -> dict:
        """No trackers yet (``Y_0 = F(X_0)`` on the first step)."""
        return {"Y": None, "FX": None, "S": None, "FZ": None}

    def step(self, X: Tensor, st: dict, F: Oracle, W: Tensor) -> Tensor:
        """One iteration (see the class docstring)."""
        k, lr = self.gossip_steps, self.lr
        if self.lazy:
            W = (W + torch.eye(W.shape[0], dtype=W.dtype)) / 2
        if st["Y"] is None:
            st["FX"] = F(X)
            st["Y"] = st["FX"]
        VX, VY = gossip(X, W, k), gossip(st["Y"], W, k)
        if self.extragradient:
            Z = VX - lr * st["Y"]
            FZ = F(Z)
            st["S"] = FZ if st["S"] is None else gossip(st["S"], W, k) + FZ - st["FZ"]
            st["FZ"] = FZ
            X_new = VX - lr * st["S"]
        else:
            X_new = VX - lr * st["Y"]
        FX = F(X_new)
        st["Y"] = VY + FX - st["FX"]
        st["FX"] = FX
        return X_new


def gt_extragradient(lr: float = 1e-2, gossip_steps: int = 1,
                     lazy: bool = False) -> GradientTracking:
    """Decentralized extragradient with gradient tracking (:class:`GradientTracking`)."""
    return GradientTracking(name="gt_extragradient", lr=lr, gossip_steps=gossip_steps,
                            extragradient=True, lazy=lazy)


def gt_gda(lr: float = 1e-2, gossip_steps: int = 1, lazy: bool = False) -> GradientTracking:
    """Decentralized GDA with gradient tracking (GT-GDA, Qureshi & Khan)."""
    return GradientTracking(name="gt_gda", lr=lr, gossip_steps=gossip_steps,
                            extragradient=False, lazy=lazy)
