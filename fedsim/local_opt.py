"""Clients' local optimizers: SGD (momentum, weight decay) and Adam, with explicit state.

A scenario's ``algorithm.local_opt`` table names the optimizer every client runs in its
local training (``fedsim.population.Population``); the update rules are those of
``torch.optim.SGD`` and ``torch.optim.Adam`` (defaults ``dampening = 0``,
``nesterov = False``, ``amsgrad = False``, ``maximize = False``), step by step:

* ``sgd``: ``g <- grad + weight_decay * w``; with ``momentum > 0``,
  ``b <- momentum * b + g`` (``b = g`` on a client's first step) and ``g <- b``;
  ``w <- w - lr * g``.
* ``adam``: ``g <- grad + weight_decay * w`` (L2, as ``torch.optim.Adam``, not AdamW);
  ``t <- t + 1``; ``m <- beta1 * m + (1 - beta1) g``;
  ``v <- beta2 * v + (1 - beta2) g^2``;
  ``w <- w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.

``grad`` is the gradient of the step's loss, which includes FedProx's
``(mu / 2) ||w - w_global||^2`` when ``mu > 0``.

The state (SGD's momentum buffer ``b``; Adam's ``m``, ``v`` and step count ``t``) is
``state = "reset"``: fresh (zeros) at the start of every local training, as a new
``torch.optim`` optimizer per round; or ``state = "keep"``: the population keeps each
client's state, indexed by client id, from one round it trains in to the next (a client
that never trained starts from zeros). Plain SGD (``momentum = 0``) has no state.

References:
    Sutskever et al., "On the importance of initialization and momentum in deep
    learning" (ICML 2013) -- SGD with momentum as in torch.optim.SGD.
    Kingma and Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.limits import check_tensor_value

KEY = "algorithm.local_opt"
LOCAL_OPTS = ("sgd", "adam")
STATES = ("reset", "keep")
# the parameters each optimizer takes, with their defaults (torch.optim's)
PARAMS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.0, "weight_decay": 0.0, "state": "reset"},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
             "state": "reset"},
}


@dataclass(frozen=True)
class LocalOpt:
    """A client optimizer (``build_local_opt`` checks the values).

    Attributes:
        name: ``"sgd"`` or ``"adam"``.
        momentum: SGD momentum in ``[0, 1)``.
        weight_decay: L2 coefficient added to the gradient, ``>= 0``.
        beta1, beta2: Adam's decay rates in ``[0, 1)``.
        eps: Adam's denominator term, ``> 0``.
        state: ``"reset"`` (fresh every local training) or ``"keep"`` (per client).
    """

    name: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    state: str = "reset"

    @property
    def plain(self) -> bool:
        """Plain SGD: no momentum, no weight decay (the fused engine's update)."""
        return self.name == "sgd" and self.momentum == 0.0 and self.weight_decay == 0.0

    @property
    def slots(self) -> int:
        """``[d]`` state vectors per client: 0 (plain SGD), 1 (momentum), 2 (Adam)."""
        if self.name == "adam":
            return 2
        return 1 if self.momentum > 0 else 0

    @property
    def keeps(self) -> bool:
        """The population keeps this optimizer's state per client across trainings."""
        return self.state == "keep" and self.slots > 0

    def state_bytes(self, d: int, element_size: int = 4) -> int:
        """Bytes of one client's kept state for a model of ``d`` parameters."""
        return self.slots * d * element_size + (8 if self.name == "adam" else 0)


def build_local_opt(spec: Mapping[str, Any] | None, algorithm: str = "fedavg",
                    decentralized: bool = False) -> LocalOpt:
    """The ``LocalOpt`` a scenario's ``algorithm.local_opt`` table names.

    Args:
        spec: ``{"name": ..., **params}``; None or ``{}`` is plain SGD.
        algorithm: ``algorithm.name``, for messages.
        decentralized: the algorithm is decentralized (D-SGD, gossip SGD): only SGD
            without momentum is accepted (its local steps are one ``train`` call each,
            or rounds whose starting point is the mixed model; no state to carry).

    Raises:
        ScenarioError: naming ``algorithm.local_opt.<param>`` (one line).
    """
    params = dict(spec or {})
    name = params.pop("name", "sgd")
    if not isinstance(name, str) or name not in LOCAL_OPTS:
        raise ScenarioError(f"{KEY}.name", f"unknown local optimizer {name!r}; "
                                           f"allowed: {', '.join(LOCAL_OPTS)}")
    allowed = PARAMS[name]
    for pname in params:
        if pname not in allowed:
            raise ScenarioError(f"{KEY}.{pname}", f"unknown parameter of local optimizer "
                                                  f"{name!r}; allowed: {', '.join(allowed)}")
    values = {**allowed, **params}
    state = values.pop("state")
    if not isinstance(state, str) or state not in STATES:
        raise ScenarioError(f"{KEY}.state", f"must be one of {', '.join(STATES)}, "
                                            f"got {state!r}")
    checked: dict[str, float] = {}
    for pname, value in values.items():
        key = f"{KEY}.{pname}"
        if pname in ("momentum", "beta1", "beta2"):
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and math.isfinite(value) and 0.0 <= value < 1.0)
            if not ok:
                raise ScenarioError(key, f"must be a finite number in [0, 1), got {value!r}")
            checked[pname] = float(value)
        elif pname == "eps":
            checked[pname] = check_tensor_value(value, key, 0.0, low_open=True)
        else:  # weight_decay
            checked[pname] = check_tensor_value(value, key, 0.0)
    opt = LocalOpt(name=name, state=state, **checked)
    if decentralized and not (name == "sgd" and opt.momentum == 0.0):
        raise ScenarioError(f"{KEY}.name", f"{algorithm} takes plain local SGD steps "
                                           "(weight_decay allowed); allowed: sgd with "
                                           "momentum = 0")
    return opt


def bias_corrections(beta1: float, beta2: float, steps: list[int]) -> tuple[list[float],
                                                                             list[float]]:
    """Adam's ``lr``-free step factors per client: ``(1 / (1 - beta1^t), sqrt(1 - beta2^t))``.

    Computed in double precision, as ``torch.optim.Adam`` does with Python floats.
    """
    c1 = [1.0 / (1.0 - beta1 ** t) for t in steps]
    c2 = [math.sqrt(1.0 - beta2 ** t) for t in steps]
    return c1, c2


__all__ = ["KEY", "LOCAL_OPTS", "PARAMS", "STATES", "LocalOpt", "bias_corrections",
           "build_local_opt"]
