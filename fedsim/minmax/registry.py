"""Min-max methods by name (``algorithm.minmax.method``): :func:`make_method` and the
parameters each takes, checked with one-line errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.minmax.methods import (
    _KEY,
    DPOSG,
    AdaptiveMinMax,
    DecentralizedExtragradient,
    DecentralizedGDA,
    Method,
    adam_server,
    dadam3,
    extra_adam_server,
    optimistic_adam_server,
)
from fedsim.minmax.tracking import gt_extragradient, gt_gda

_FACTORIES: dict[str, Callable[..., Any]] = {
    "dadam3": dadam3,
    "dposg": DPOSG,
    "gda": DecentralizedGDA,
    "extragradient": DecentralizedExtragradient,
    "gt_extragradient": gt_extragradient,
    "gt_gda": gt_gda,
    "adam_server": adam_server,
    "optimistic_adam_server": optimistic_adam_server,
    "extra_adam_server": extra_adam_server,
    "adaptive": AdaptiveMinMax,
}
METHODS = tuple(_FACTORIES)


def _allowed_params(name: str) -> tuple[str, ...]:
    factory = _FACTORIES[name]
    if isinstance(factory, type):
        return tuple(f.name for f in fields(factory) if f.name != "name")
    import inspect

    return tuple(inspect.signature(factory).parameters)


def make_method(name: str, **params: Any) -> Method:
    """A method by name with its parameters, checked; one-line errors for bad settings.

    Args:
        name: one of :data:`METHODS` (``"adaptive"`` is the configurable family).
        **params: the method's fields (``lr``, ``beta1``, ``lookahead``, ...).

    Returns:
        The method.

    Raises:
        ScenarioError: ``algorithm.name`` (unknown method), ``algorithm.<param>`` (a
            parameter the method does not take, or a bad value).

    References:
        See each method's own docstring.
    """
    if name not in _FACTORIES:
        raise ScenarioError(f"{_KEY}.name", f"unknown min-max method {name!r}; allowed: "
                            f"{', '.join(METHODS)}")
    allowed = _allowed_params(name)
    for key in params:
        if key not in allowed:
            raise ScenarioError(f"{_KEY}.{key}", f"not a parameter of {name}; allowed: "
                                f"{', '.join(allowed)}")
    return _FACTORIES[name](**params)
