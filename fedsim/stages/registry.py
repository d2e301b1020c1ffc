"""Pieces by name, as scenario files and sweeps name them.

``build_aggregator({"name": "krum", "f": 3})`` and
``build_update_attack("sign_flip", {"scale": 100})`` check the parameters
against the piece's signature and report mistakes on the dotted scenario key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.stages.aggregate import weighted_mean
from fedsim.stages.base import Aggregator
from fedsim.stages.bgmd import bgmd
from fedsim.stages.geomed import geometric_median
from fedsim.stages.robust import centered_clipping, coordinate_median, krum, trimmed_mean

AGGREGATORS: dict[str, Callable[..., Aggregator]] = {
    "mean": weighted_mean,
    "coordinate_median": coordinate_median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,  # Multi-Krum with m > 1
    "centered_clipping": centered_clipping,
    "gm": geometric_median,
    "bgmd": bgmd,
}


def call_with_params(factory: Callable[..., Any], params: Mapping[str, Any], key: str,
                     what: str) -> Any:
    """``factory(**params)`` after checking the names against its signature.

    Args:
        factory: a piece's constructor.
        params: keyword arguments from a scenario.
        key: the dotted scenario key holding the parameters, e.g. ``"attack.params"``.
        what: the piece, for messages, e.g. ``"attack 'ipm'"``.

    Raises:
        ScenarioError: ``<key>.<param>`` for an unknown or missing parameter.
    """
    sig = inspect.signature(factory).parameters
    for name in params:
        if name not in sig:
            allowed = ", ".join(sig) or "none"
            raise ScenarioError(f"{key}.{name}", f"unknown parameter for {what}; "
                                                 f"allowed: {allowed}")
    for name, p in sig.items():
        if p.default is inspect.Parameter.empty and name not in params:
            raise ScenarioError(f"{key}.{name}", f"required by {what}")
    return factory(**params)


def build_aggregator(spec: Mapping[str, Any]) -> Aggregator:
    """The aggregator a scenario's ``algorithm.aggregator`` table names.

    Args:
        spec: ``{"name": ..., **params}``; ``name`` defaults to ``"mean"``.
    """
    params = dict(spec)
    name = params.pop("name", "mean")
    if not isinstance(name, str) or name not in AGGREGATORS:  # a list is unhashable
        raise ScenarioError("algorithm.aggregator.name",
                            f"unknown aggregator {name!r}; allowed: {', '.join(AGGREGATORS)}")
    return call_with_params(AGGREGATORS[name], params, "algorithm.aggregator",
                            f"aggregator {name!r}")
