"""Decentralized min-max methods: the DADAM^3 family and its baselines.

Every method moves the stacked node states ``X`` (``[n, d]``, row ``i`` is node ``i``'s
``x_i = (theta_i, phi_i)``) by one iteration, given the stacked operator ``F`` (one call
evaluates every node's ``F_i`` at its own row, see :mod:`fedsim.minmax.operator`) and
the mixing matrix ``W`` (Metropolis weights of the graph). A method is a frozen
dataclass with ``init(X) -> state`` and ``step(X, state, F, W) -> X`` (the state is a
dict updated in place), ``comm_rounds`` (exchange rounds per iteration, for the clock)
and ``server`` (True: a server averages, no gossip).

**The family** (:class:`AdaptiveMinMax`), per node ``i`` and iteration ``t``::

    direction(g):                         # Adam moments on F, DADAM's beta3 smoothing
        m <- b1 m + (1 - b1) g ;  v <- b2 v + (1 - b2) g*g
        m^ = m / (1 - b1^k) ;  v^ = v / (1 - b2^k)        # k: moment updates so far
        vbar <- v^ (first update) ; vbar <- b3 vbar + (1 - b3) max(vbar, v^)
        return m^ / (sqrt(vbar) + eps)      # preconditioner = "none": return m^
    lookahead = none:          u = direction(F_i(x_i))
    lookahead = extragradient: z_i = x_i - lr direction(F_i(x_i)); u = direction(F_i(z_i))
    lookahead = optimistic:    d = direction(F_i(x_i)); u = 2 d - d_prev; d_prev = d
    mix = before:  x_i <- sum_j (W^k)_ij x_j - lr u          # DADAM's combine-then-adapt
    mix = after:   x_i <- sum_j (W^k)_ij (x_j - lr u_j)      # adapt-then-combine (DPOSG)
    mix = server:  g is the average of all F_j (a server), x <- x - lr u   (no gossip)

with ``k = gossip_steps`` mixing rounds per iteration. ``beta3 = None`` drops the
max-smoothing (``vbar = v^``: plain Adam).

**DADAM^3** (:func:`dadam3`) is the setting ``preconditioner = "adam"``, ``beta3`` set,
``lookahead = "extragradient"``, ``mix = "before"``. This is *our reading* of the
paper's abstract (a decentralized Adam-type method for min-max problems under the Minty
VI condition) and of DADAM's update (Nazari, Tarzanagh, Michailidis): the paper's full
text and code could not be reached. Choices we made, each stated in docs/minmax.md:

* the lookahead is extragradient (the method's analysis under the Minty condition is
  the setting of extragradient-type methods) and both the lookahead and the update feed
  the same moments, as in Extra-Adam (Gidel et al., ICLR 2019);
* consensus is on ``x`` only, once per iteration, DADAM's ``x_i <- sum_j W_ij x_j - lr
  m^ / sqrt(vbar)``; moments are never exchanged; the lookahead is local;
* ``vbar`` starts at the first ``v^`` (so the first step is an Adam step, not one
  enlarged by ``1 / sqrt(1 - beta3)``).

**Baselines**, each its paper's update: :class:`DPOSG` (Liu et al., NeurIPS 2020),
:class:`DecentralizedGDA`, :class:`DecentralizedExtragradient` (Korpelevich 1976 with
gossip; Beznosikov et al. 2022 analyse the decentralized form), and the server-based
references :func:`adam_server` and :func:`optimistic_adam_server` (Daskalakis et al.,
ICLR 2018).

References:
    Barazandeh, Huang, Michailidis, "A Decentralized Adaptive Momentum Method for Solving
    a Class of Min-Max Optimization Problems" (Signal Processing 2022, arXiv 2106.06075);
    Nazari, Tarzanagh, Michailidis, "DADAM: A Consensus-based Distributed Adaptive
    Gradient Method for Online Optimization" (IEEE TSP 2022, arXiv 1901.09109);
    Liu, Zhang, Mroueh, Cui, Ross, Yang, Das, "A Decentralized Parallel Algorithm for
    Training Generative Adversarial Nets" (NeurIPS 2020); Gidel et al., "A Variational
    Inequality Perspective on GANs" (ICLR 2019); Daskalakis, Ilyas, Syrgkanis, Zeng,
    "Training GANs with Optimism" (ICLR 2018); Korpelevich, "The extragradient method for
    finding saddle points and other problems" (1976).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import networkx as nx
import torch
from torch import Tensor

from fedsim.errors import ScenarioError

Oracle = Callable[[Tensor], Tensor]  # X [n, d] -> F [n, d], row i = F_i(X[i])

LOOKAHEADS = ("none", "extragradient", "optimistic")
PRECONDITIONERS = ("adam", "none")
MIXES = ("before", "after", "server")
_KEY = "algorithm"


# ------------------------------------------------------------------ checks


def _check_lr(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
        raise ScenarioError(f"{_KEY}.lr", f"must be a finite number >= 0, got {lr!r}")
    if lr < 0:
        raise ScenarioError(f"{_KEY}.lr", f"must be >= 0 (a step size), got {lr}")
    return float(lr)


def _check_beta(name: str, beta: Any, optional: bool = False) -> None:
    if optional and beta is None:
        return
    ok = not isinstance(beta, bool) and isinstance(beta, numbers.Real)
    if not ok or not 0.0 <= beta < 1.0:
        extra = " (or none to drop the max-smoothing)" if optional else ""
        raise ScenarioError(f"{_KEY}.{name}", f"must be in [0, 1){extra}, got {beta!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ScenarioError(f"{_KEY}.{name}",
                            f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _check_steps(steps: Any) -> None:
    ok = isinstance(steps, numbers.Integral) and not isinstance(steps, bool)
    if not ok or steps < 1:
        raise ScenarioError(f"{_KEY}.gossip_steps", f"must be an integer >= 1, got {steps!r}")


def _check_eps(eps: Any) -> None:
    ok = not isinstance(eps, bool) and isinstance(eps, numbers.Real) and math.isfinite(eps)
    if not ok or eps < 0:
        raise ScenarioError(f"{_KEY}.eps", f"must be a finite number >= 0, got {eps!r}")


def mixing_matrix(graph: nx.Graph, dtype: torch.dtype = torch.float64) -> Tensor:
    """The Metropolis mixing matrix of a connected undirected graph, as a tensor.

    Args:
        graph: undirected graph; node ``i`` is row ``i`` of ``sorted(graph.nodes)``.
        dtype: the states' dtype.

    Returns:
        ``[n, n]`` symmetric doubly stochastic ``W``.

    Raises:
        ScenarioError: (``network.topology``) a directed, empty or disconnected graph.

    References:
        Xiao & Boyd, "Fast linear iterations for distributed averaging" (2004).
    """
    from fedsim.network.mixing import metropolis_weights

    if graph.is_directed():
        raise ScenarioError("network.topology", "decentralized min-max needs an undirected "
                            "graph")
    if graph.number_of_nodes() == 0:
        raise ScenarioError("network.topology", "the graph has no nodes")
    if not nx.is_connected(graph):
        k = nx.number_connected_components(graph)
        raise ScenarioError("network.topology", f"the graph is disconnected ({k} components); "
                            "decentralized min-max needs a connected graph")
    return torch.as_tensor(metropolis_weights(graph), dtype=dtype)


def gossip(X: Tensor, W: Tensor, steps: int) -> Tensor:
    """``W^steps X``: ``steps`` synchronous mixing rounds of the rows.

    Args:
        X: ``[n, d]`` states.
        W: ``[n, n]`` mixing matrix.
        steps: rounds (each one exchange with every neighbour).

    Returns:
        ``[n, d]``.

    References:
        Boyd, Ghosh, Prabhakar, Shah, "Randomized gossip algorithms" (IEEE TIT, 2006).
    """
    for _ in range(steps):
        X = W @ X
    return X


class Method(Protocol):
    """What the driver needs of a min-max method."""

    name: str
    lr: float

    @property
    def comm_rounds(self) -> int:
        """Exchange rounds per iteration (gossip rounds, or server round trips)."""
        ...

    @property
    def server(self) -> bool:
        """True when a server averages (no gossip graph)."""
        ...

    def init(self, X: Tensor) -> dict:
        """The method's state for starting states ``X`` ``[n, d]``."""
        ...

    def step(self, X: Tensor, state: dict, F: Oracle, W: Tensor) -> Tensor:
        """One iteration: the new ``[n, d]`` states (``state`` is updated in place)."""
        ...


# ------------------------------------------------------------------ the family


@dataclass(frozen=True)
class AdaptiveMinMax:
    """Adam moments on ``F`` with DADAM's beta3 max-smoothing, a lookahead, gossip.

    Attributes:
        name: the name rows and figures show.
        lr: step size ``lr >= 0``.
        beta1: first-moment decay in [0, 1).
        beta2: second-moment decay in [0, 1).
        beta3: DADAM's smoothing ``vbar <- b3 vbar + (1 - b3) max(vbar, v^)`` in [0, 1);
            None: ``vbar = v^`` (plain Adam). 0 is AMSGrad's running maximum.
        eps: added to ``sqrt(vbar)``.
        preconditioner: ``"adam"`` (``m^ / (sqrt(vbar) + eps)``) or ``"none"`` (``m^``).
        lookahead: ``"none"``, ``"extragradient"`` or ``"optimistic"`` (``2 u_t - u_{t-1}``).
        gossip_steps: mixing rounds with ``W`` per iteration (>= 1).
        mix: ``"before"`` (``W^k x - lr u``), ``"after"`` (``W^k (x - lr u)``) or
            ``"server"`` (a server averages ``F``; no gossip).
        bias_correction: divide the moments by ``1 - beta^k``.

    References:
        Nazari, Tarzanagh, Michailidis, DADAM (arXiv 1901.09109); Barazandeh, Huang,
        Michailidis (arXiv 2106.06075); Gidel et al. (ICLR 2019) for Extra-Adam;
        Daskalakis et al. (ICLR 2018) for Optimistic Adam.
    """

    name: str = "adaptive"
    lr: float = 1e-2
    beta1: float = 0.5
    beta2: float = 0.9
    beta3: float | None = 0.9
    eps: float = 1e-8
    preconditioner: str = "adam"
    lookahead: str = "extragradient"
    gossip_steps: int = 1
    mix: str = "before"
    bias_correction: bool = True

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_beta("beta1", self.beta1)
        _check_beta("beta2", self.beta2)
        _check_beta("beta3", self.beta3, optional=True)
        _check_eps(self.eps)
        _check_choice("preconditioner", self.preconditioner, PRECONDITIONERS)
        _check_choice("lookahead", self.lookahead, LOOKAHEADS)
        _check_choice("mix", self.mix, MIXES)
        _check_steps(self.gossip_steps)

    @property
    def server(self) -> bool:
        """True for ``mix = "server"``."""
        return self.mix == "server"

    @property
    def comm_rounds(self) -> int:
        """``gossip_steps``; server: one round trip per evaluation of ``F``."""
        if self.server:
            return 2 if self.lookahead == "extragradient" else 1
        return self.gossip_steps

    def init(self, X: Tensor) -> dict:
        """Zero moments (``[n, d]`` each), no ``vbar`` yet, no previous direction."""
        return {"k": 0, "m": torch.zeros_like(X), "v": torch.zeros_like(X),
                "vbar": None, "prev": None}

    def direction(self, g: Tensor, st: dict) -> Tensor:
        """Feed ``g`` ``[n, d]`` to the moments; the preconditioned direction ``[n, d]``."""
        b1, b2, b3 = self.beta1, self.beta2, self.beta3
        st["k"] += 1
        k = st["k"]
        st["m"] = b1 * st["m"] + (1 - b1) * g
        m_hat = st["m"] / (1 - b1**k) if self.bias_correction else st["m"]
        if self.preconditioner == "none":
            return m_hat
        st["v"] = b2 * st["v"] + (1 - b2) * g * g
        v_hat = st["v"] / (1 - b2**k) if self.bias_correction else st["v"]
        if st["vbar"] is None or b3 is None:
            st["vbar"] = v_hat
        else:  # DADAM: vbar <- b3 vbar + (1 - b3) max(vbar, v^)
            st["vbar"] = b3 * st["vbar"] + (1 - b3) * torch.maximum(st["vbar"], v_hat)
        return m_hat / (st["vbar"].sqrt() + self.eps)

    def step(self, X: Tensor, st: dict, F: Oracle, W: Tensor) -> Tensor:
        """One iteration of the family (see the module docstring)."""
        lr = self.lr
        if self.server:  # the server averages every node's F and sends it back
            F = _server_average(F)
        if self.lookahead == "extragradient":
            Z = X - lr * self.direction(F(X), st)  # local lookahead, no exchange
            U = self.direction(F(Z), st)
        elif self.lookahead == "optimistic":
            D = self.direction(F(X), st)
            U = D if st["prev"] is None else 2 * D - st["prev"]
            st["prev"] = D
        else:
            U = self.direction(F(X), st)
        if self.mix == "before":
            return gossip(X, W, self.gossip_steps) - lr * U
        if self.mix == "after":
            return gossip(X - lr * U, W, self.gossip_steps)
        return X - lr * U


def _server_average(F: Oracle) -> Oracle:
    def averaged(X: Tensor) -> Tensor:
        return F(X).mean(dim=0, keepdim=True).expand_as(X)

    return averaged


def dadam3(lr: float = 1e-2, beta1: float = 0.5, beta2: float = 0.9, beta3: float = 0.9,
           eps: float = 1e-8, gossip_steps: int = 1) -> AdaptiveMinMax:
    """DADAM^3 as we read it: Adam moments + beta3 smoothing, extragradient, gossip on x.

    Per node: ``z_i = x_i - lr d(F_i(x_i))``; ``x_i <- sum_j (W^k)_ij x_j - lr d(F_i(z_i))``
    with ``d`` the Adam direction with DADAM's ``vbar`` (module docstring).

    Args:
        lr: step size.
        beta1: first-moment decay.
        beta2: second-moment decay.
        beta3: DADAM's max-smoothing decay.
        eps: added to ``sqrt(vbar)``.
        gossip_steps: mixing rounds per iteration.

    Returns:
        The family's DADAM^3 setting.

    References:
        Barazandeh, Huang, Michailidis (arXiv 2106.06075); Nazari et al., DADAM
        (arXiv 1901.09109).
    """
    return AdaptiveMinMax(name="dadam3", lr=lr, beta1=beta1, beta2=beta2, beta3=beta3,
                          eps=eps, preconditioner="adam", lookahead="extragradient",
                          gossip_steps=gossip_steps, mix="before")


def adam_server(lr: float = 1e-2, beta1: float = 0.5, beta2: float = 0.9,
                eps: float = 1e-8) -> AdaptiveMinMax:
    """Centralized Adam on ``F`` (simultaneous descent-ascent): the server reference.

    The server averages the nodes' ``F_i`` every iteration; every node holds the same ``x``.

    References:
        Kingma & Ba, "Adam" (ICLR 2015).
    """
    return AdaptiveMinMax(name="adam_server", lr=lr, beta1=beta1, beta2=beta2, beta3=None,
                          eps=eps, lookahead="none", mix="server")


def optimistic_adam_server(lr: float = 1e-2, beta1: float = 0.5, beta2: float = 0.9,
                           eps: float = 1e-8) -> AdaptiveMinMax:
    """Centralized Optimistic Adam: ``x <- x - lr (2 u_t - u_{t-1})``, ``u`` Adam's step.

    References:
        Daskalakis, Ilyas, Syrgkanis, Zeng, "Training GANs with Optimism" (ICLR 2018).
    """
    return AdaptiveMinMax(name="optimistic_adam_server", lr=lr, beta1=beta1, beta2=beta2,
                          beta3=None, eps=eps, lookahead="optimistic", mix="server")


def extra_adam_server(lr: float = 1e-2, beta1: float = 0.5, beta2: float = 0.9,
                      beta3: float | None = 0.9, eps: float = 1e-8) -> AdaptiveMinMax:
    """Centralized Extra-Adam with the beta3 smoothing: DADAM^3's server counterpart.

    References:
        Gidel et al., "A Variational Inequality Perspective on GANs" (ICLR 2019).
    """
    return AdaptiveMinMax(name="extra_adam_server", lr=lr, beta1=beta1, beta2=beta2,
                          beta3=beta3, eps=eps, lookahead="extragradient", mix="server")


# ------------------------------------------------------------------ baselines


@dataclass(frozen=True)
class DPOSG:
    """Decentralized Parallel Optimistic Stochastic Gradient (Liu et al., Algorithm 1).

    Per node ``i``, iteration ``k``, with ``t = gossip_steps``::

        z_i^k = x_i^{k-1} - lr g(z_i^{k-1})                 # the stored gradient
        x_i^k = sum_j (W^t)_ij (x_j^{k-1} - lr g(z_j^k))    # fresh gradient, then t mixes

    ``g(z^0)`` is ``F(x^0)`` (one extra evaluation before the first iteration).

    Attributes:
        name: the name rows show.
        lr: step size.
        gossip_steps: ``t``, mixing rounds per iteration.

    References:
        Liu, Zhang, Mroueh, Cui, Ross, Yang, Das, "A Decentralized Parallel Algorithm for
        Training Generative Adversarial Nets" (NeurIPS 2020).
    """

    name: str = "dposg"
    lr: float = 1e-2
    gossip_steps: int = 1

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_steps(self.gossip_steps)

    server = False

    @property
    def comm_rounds(self) -> int:
        """``gossip_steps``."""
        return self.gossip_steps

    def init(self, X: Tensor) -> dict:
        """No stored gradient yet."""
        return {"g_prev": None}

    def step(self, X: Tensor, st: dict, F: Oracle, W: Tensor) -> Tensor:
        """One DPOSG iteration."""
        if st["g_prev"] is None:
            st["g_prev"] = F(X)  # z^0 = x^0
        Z = X - self.lr * st["g_prev"]
        G = F(Z)
        st["g_prev"] = G
        return gossip(X - self.lr * G, W, self.gossip_steps)


class _StatelessGossip:
    """What the stateless gossip baselines share: checks, ``comm_rounds``, the mixed step."""

    server = False

    def __post_init__(self) -> None:
        _check_lr(self.lr)
        _check_steps(self.gossip_steps)
        _check_choice("mix", self.mix, ("before", "after"))

    @property
    def comm_rounds(self) -> int:
        """``gossip_steps``."""
        return self.gossip_steps

    def init(self, X: Tensor) -> dict:
        """Stateless."""
        return {}

    def _mixed_step(self, X: Tensor, G: Tensor, W: Tensor) -> Tensor:
        """``X - lr G`` with gossip before (``mix = "before"``) or after the step."""
        if self.mix == "before":
            return gossip(X, W, self.gossip_steps) - self.lr * G
        return gossip(X - self.lr * G, W, self.gossip_steps)


@dataclass(frozen=True)
class DecentralizedGDA(_StatelessGossip):
    """Decentralized simultaneous gradient descent-ascent.

    ``x_i <- sum_j (W^k)_ij (x_j - lr F_j(x_j))`` (``mix = "after"``), or
    ``x_i <- sum_j (W^k)_ij x_j - lr F_i(x_i)`` (``mix = "before"``, D-SGD's form).

    References:
        Nedic & Ozdaglar, "Distributed subgradient methods for multi-agent optimization"
        (IEEE TAC, 2009); Lian et al., D-PSGD (NeurIPS 2017), applied to ``F``.
    """

    name: str = "gda"
    lr: float = 1e-2
    gossip_steps: int = 1
    mix: str = "after"

    def step(self, X: Tensor, st: dict, F: Oracle, W: Tensor) -> Tensor:
        """One GDA iteration."""
        return self._mixed_step(X, F(X), W)


@dataclass(frozen=True)
class DecentralizedExtragradient(_StatelessGossip):
    """Decentralized extragradient: a local lookahead, then the step from it, then gossip.

    ``z_i = x_i - lr F_i(x_i)``; ``x_i <- sum_j (W^k)_ij (x_j - lr F_j(z_j))``
    (``mix = "after"``) or ``sum_j (W^k)_ij x_j - lr F_i(z_i)`` (``mix = "before"``).

    References:
        Korpelevich, "The extragradient method for finding saddle points and other
        problems" (1976); Beznosikov, Dvurechensky, Koloskova, Samokhin, Stich, Gasnikov,
        "Decentralized Local Stochastic Extra-Gradient for Variational Inequalities"
        (NeurIPS 2022).
    """

    name: str = "extragradient"
    lr: float = 1e-2
    gossip_steps: int = 1
    mix: str = "after"

    def step(self, X: Tensor, st: dict, F: Oracle, W: Tensor) -> Tensor:
        """One extragradient iteration."""
        Z = X - self.lr * F(X)
        return self._mixed_step(X, F(Z), W)
