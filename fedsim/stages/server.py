"""Server optimizers: apply the aggregated update to the global parameters.

The aggregate ``u`` is the (weighted or robust) mean of the clients' updates
``w_k - x_t``: Reddi et al.'s pseudo-gradient ``Delta_t``, pointing downhill. Every
optimizer here adds a step along it: ``x_{t+1} = x_t + step(Delta_t, state)``.

- ``server_sgd``: ``x + eta * Delta`` (``eta = 1`` is FedAvg).
- ``fedavgm`` (Hsu et al. 2019): ``m_t = mu * m_{t-1} + Delta_t``, ``x + eta * m_t``.
- ``fedadagrad``, ``fedadam``, ``fedyogi`` (Reddi et al. 2021, Algorithm 2):
  ``m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t``, a second moment ``v_t`` per
  optimizer, ``x + eta * m_t / (sqrt(v_t) + tau)``.

The moments are the optimizer's explicit state (``ServerState``), created at the first
update as zeros shaped like the parameters (``v0`` fills ``v``), and ``t`` counts the
updates applied (a round where no client reports applies none). The conventions and how
they relate to Flower's strategies of the same names are in ``docs/server_optimizers.md``.

References:
    Reddi, Charles, Zaheer, Garrett, Rush, Konečný, Kumar, McMahan, "Adaptive Federated
    Optimization" (ICLR 2021), Algorithm 2.
    Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification" (arXiv:1909.06335, 2019), FedAvgM.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.limits import FLOAT32_MAX, check_number, check_tensor_value
from fedsim.stages.base import ServerOpt

FLOAT32_TINY = 1.1754943508222875e-38  # smallest normal float32: tau must not round to 0
BIAS_CORRECTIONS = ("none", "adam", "flower")


class ServerState(NamedTuple):
    """A stateful server optimizer's state: updates applied, first and second moment."""

    t: int  # server updates applied so far
    m: Tensor | None  # first moment (momentum buffer for fedavgm); None before the first
    v: Tensor | None  # second moment (None for fedavgm)


def server_sgd(lr: float = 1.0) -> ServerOpt:
    """``params + lr * update``; ``lr = 1`` is plain FedAvg.

    References: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), server learning rate.
    """

    def apply(params: Tensor, update: Tensor, state: None) -> tuple[Tensor, None]:
        return params + lr * update, state

    return ServerOpt(init=lambda d: None, apply=apply)


def _start(state: ServerState | None, params: Tensor, v0: float | None) -> ServerState:
    """The state before this update: moments created on the parameters' device and dtype."""
    if state is None:
        state = ServerState(0, None, None)
    if state.m is None:
        m = torch.zeros_like(params)
        v = None if v0 is None else torch.full_like(params, v0)
        state = ServerState(state.t, m, v)
    return state


def fedavgm(lr: float = 1.0, momentum: float = 0.9) -> ServerOpt:
    """FedAvg with server momentum (heavy ball, as ``torch.optim.SGD`` without dampening).

    Pseudo-code, with ``Delta_t`` the aggregated update:
        m_t = momentum * m_{t-1} + Delta_t          (m_0 = 0, so m_1 = Delta_1)
        x_{t+1} = x_t + lr * m_t

    References:
        Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution for
        Federated Visual Classification" (2019); the FedAvgM baseline of Reddi et al.,
        "Adaptive Federated Optimization" (ICLR 2021).
    """

    def apply(params: Tensor, update: Tensor, state: ServerState | None):
        st = _start(state, params, None)
        m = momentum * st.m + update
        return params + lr * m, ServerState(st.t + 1, m, None)

    return ServerOpt(init=lambda d: ServerState(0, None, None), apply=apply)


def _adaptive(lr: float, beta1: float, tau: float, v0: float,
              second: Callable[[Tensor, Tensor], Tensor],
              scale: Callable[[int], float] = lambda t: 1.0) -> ServerOpt:
    """Reddi et al.'s Algorithm 2 with the second-moment rule ``second(v, Delta^2)``."""

    def apply(params: Tensor, update: Tensor, state: ServerState | None):
        st = _start(state, params, v0)
        t = st.t + 1
        m = beta1 * st.m + (1.0 - beta1) * update
        v = second(st.v, update * update)
        step = (lr * scale(t)) * m / (v.sqrt() + tau)
        return params + step, ServerState(t, m, v)

    return ServerOpt(init=lambda d: ServerState(0, None, None), apply=apply)


def fedadagrad(lr: float = 0.1, beta1: float = 0.0, tau: float = 1e-3,
               v0: float = 0.0) -> ServerOpt:
    """FedAdagrad: ``v_t = v_{t-1} + Delta_t^2``.

    Pseudo-code (Algorithm 2 of Reddi et al.):
        m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
        v_t = v_{t-1} + Delta_t^2
        x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

    ``beta1 = 0`` as in Flower's FedAdagrad (which fixes it); the paper allows momentum.

    References: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2.
    """
    return _adaptive(lr, beta1, tau, v0, lambda v, d2: v + d2)


def fedadam(lr: float = 0.1, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
            v0: float = 0.0, bias_correction: str = "none") -> ServerOpt:
    """FedAdam: ``v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2``.

    Pseudo-code (Algorithm 2 of Reddi et al., which has no bias correction):
        m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2
        x_{t+1} = x_t + lr * c_t * m_t / (sqrt(v_t) + tau)

    with ``c_t = 1`` (``bias_correction = "none"``, the paper), Kingma & Ba's
    ``c_t = sqrt(1 - beta2^t) / (1 - beta1^t)`` (``"adam"``), or Flower's FedAdam
    ``c_t = sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1))`` (``"flower"``), ``t = 1`` at the
    first update.

    References: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2;
    Kingma, Ba, "Adam: A Method for Stochastic Optimization" (ICLR 2015), Section 2.
    """
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"bias_correction must be one of {BIAS_CORRECTIONS}, "
                         f"got {bias_correction!r}")
    shift = {"none": None, "adam": 0, "flower": 1}[bias_correction]

    def scale(t: int) -> float:
        if shift is None:
            return 1.0
        k = t + shift
        return math.sqrt(1.0 - beta2 ** k) / (1.0 - beta1 ** k)

    return _adaptive(lr, beta1, tau, v0, lambda v, d2: beta2 * v + (1.0 - beta2) * d2, scale)


def fedyogi(lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3,
            v0: float = 0.0) -> ServerOpt:
    """FedYogi: ``v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)``.

    Pseudo-code (Algorithm 2 of Reddi et al.):
        m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
        v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2)
        x_{t+1} = x_t + lr * m_t / (sqrt(v_t) + tau)

    References: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2;
    Zaheer, Reddi, Sachan, Kale, Kumar, "Adaptive Methods for Nonconvex Optimization"
    (NeurIPS 2018), Yogi.
    """
    return _adaptive(lr, beta1, tau, v0,
                     lambda v, d2: v - (1.0 - beta2) * d2 * torch.sign(v - d2))


SERVER_OPTS: dict[str, Callable[..., ServerOpt]] = {
    "sgd": server_sgd,
    "fedavgm": fedavgm,
    "fedadagrad": fedadagrad,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
}


def _unit(value: Any, key: str) -> float:
    """A decay or momentum factor in ``[0, 1)``."""
    check_number(value, key, 0.0, 1.0)
    if value == 1:
        raise ScenarioError(key, f"must be a finite number in [0, 1), got {value!r}")
    return float(value)


def _choice(value: Any, key: str) -> str:
    if not isinstance(value, str) or value not in BIAS_CORRECTIONS:
        raise ScenarioError(key, f"unknown value {value!r}; allowed: "
                                 f"{', '.join(BIAS_CORRECTIONS)}")
    return value


# how each parameter of the optimizers above is checked: (value, dotted key) -> value
PARAM_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "lr": lambda x, k: check_tensor_value(x, k, 0.0, low_open=True),
    "momentum": _unit,
    "beta1": _unit,
    "beta2": _unit,
    "tau": lambda x, k: check_number(x, k, FLOAT32_TINY, FLOAT32_MAX,
                                     what="it must be finite and nonzero in float32"),
    "v0": lambda x, k: check_tensor_value(x, k, 0.0),
    "bias_correction": _choice,
}
KEY = "algorithm.server_opt"


def build_server_opt(spec: Mapping[str, Any], server_lr: float = 1.0) -> ServerOpt:
    """The server optimizer a scenario's ``algorithm.server_opt`` table names.

    Args:
        spec: ``{"name": ..., **params}``; ``name`` defaults to ``"sgd"``, whose ``lr``
            defaults to ``server_lr``.
        server_lr: ``algorithm.server_lr``, the step of ``sgd``.

    Raises:
        ScenarioError: ``algorithm.server_opt.<param>`` for an unknown name or parameter,
            or a value out of range (one line).
    """
    from fedsim.stages.registry import call_with_params

    params = dict(spec)
    name = params.pop("name", "sgd")
    if not isinstance(name, str) or name not in SERVER_OPTS:  # a list is unhashable
        raise ScenarioError(f"{KEY}.name", f"unknown server optimizer {name!r}; "
                                           f"allowed: {', '.join(SERVER_OPTS)}")
    if name == "sgd":
        if "lr" in params and server_lr != 1.0:
            raise ScenarioError(f"{KEY}.lr", "set either algorithm.server_lr or "
                                             "algorithm.server_opt.lr, not both")
        params.setdefault("lr", server_lr)
    elif server_lr != 1.0:
        raise ScenarioError("algorithm.server_lr", f"is the step of server_opt 'sgd'; "
                                                   f"for {name!r} set algorithm.server_opt.lr")
    for pname, value in params.items():
        if pname in PARAM_CHECKS and pname in _signature(SERVER_OPTS[name]):
            params[pname] = PARAM_CHECKS[pname](value, f"{KEY}.{pname}")
    return call_with_params(SERVER_OPTS[name], params, KEY, f"server optimizer {name!r}")


def _signature(factory: Callable[..., Any]) -> tuple[str, ...]:
    import inspect

    return tuple(inspect.signature(factory).parameters)
