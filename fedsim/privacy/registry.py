"""Communication compression by name, as ``algorithm.compress`` names it.

``build_compression({"name": "sketch", "kind": "srht", "ratio": 0.02}, d, seed)`` gives the
uplink ``Stage`` and the ``ServerStage`` of one method, built with the same seed so the
server knows the clients' operator (``fedsim.privacy.compress``). Widths are given either
as counts (``b``, ``cols``, ``k``) or as a share of the model's width ``d`` (``ratio``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from fedsim.errors import ScenarioError
from fedsim.privacy.compress import (
    KEY,
    desketch_server,
    fetchsgd_server,
    fetchsgd_uplink,
    sketch_uplink,
    topk_uplink,
)
from fedsim.privacy.sketch import DEFAULT_ROWS
from fedsim.stages.base import ServerStage, Stage, chain

Pieces = tuple[Stage, ServerStage | None]


def _count(d: int, value: int | None, ratio: float | None, name: str, per: int = 1) -> int:
    """``value``, or ``ceil(ratio * d / per)``: exactly one of them must be given."""
    if (value is None) == (ratio is None):
        raise ScenarioError(f"{KEY}.{name}", f"give {name} (a count) or ratio (a share of the "
                                             f"model's {d} parameters), not both or neither")
    if ratio is not None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ScenarioError(f"{KEY}.ratio", f"must be in (0, 1], got {ratio!r}")
        return max(1, math.ceil(ratio * d / per))
    return value


def none(d: int, seed: int) -> Pieces:
    """No compression: rows sent as float32 (``4 d`` bytes)."""
    return chain(), None


def sketch(d: int, seed: int, kind: str = "gaussian", b: int | None = None,
           ratio: float | None = None, rows: int = DEFAULT_ROWS) -> Pieces:
    """Song et al.'s sketched update: ``y = S_t u`` up, ``S_t^T ybar`` applied (ICML 2023)."""
    b = _count(d, b, ratio, "b")
    return sketch_uplink(kind, b, seed, rows), desketch_server(kind, b, seed, rows)


def fetchsgd(d: int, seed: int, rows: int = DEFAULT_ROWS, cols: int | None = None,
             ratio: float | None = None, k: int | None = None, k_ratio: float | None = None,
             rho: float = 0.9, error_update: str = "subtract") -> Pieces:
    """FetchSGD (Rothchild et al., ICML 2020): ``rows x cols`` count sketch up (``ratio``:
    ``rows * cols ~ ratio * d``), top-k down; momentum and error in sketch space."""
    cols = _count(d, cols, ratio, "cols", per=rows if isinstance(rows, int) and rows > 0 else 1)
    k = _count(d, k, k_ratio, "k")
    return (fetchsgd_uplink(rows, cols, seed),
            fetchsgd_server(rows, cols, k, seed, rho=rho, error_update=error_update))


def topk(d: int, seed: int, k: int | None = None, ratio: float | None = None) -> Pieces:
    """Local top-k with error feedback (``8 k`` bytes up; Stich et al., NeurIPS 2018)."""
    return topk_uplink(_count(d, k, ratio, "k")), None


COMPRESSIONS: dict[str, Callable[..., Pieces]] = {
    "none": none, "sketch": sketch, "fetchsgd": fetchsgd, "topk": topk}


def build_compression(spec: Mapping[str, Any], d: int, seed: int) -> Pieces:
    """The uplink stage and server stage (None: nothing to undo) that ``spec`` names.

    Args:
        spec: ``algorithm.compress``: ``{"name": ..., **parameters}``.
        d: the model's width.
        seed: the compression stream's seed (both sides draw the same operators from it).

    Raises:
        ScenarioError: ``algorithm.compress.<param>``: an unknown name or parameter, or a
            value out of range.
    """
    params = dict(spec)
    name = params.pop("name", "none")
    if not isinstance(name, str) or name not in COMPRESSIONS:
        raise ScenarioError(f"{KEY}.name", f"unknown compression {name!r}; allowed: "
                                           f"{', '.join(COMPRESSIONS)}")
    factory = COMPRESSIONS[name]
    allowed = [p for p in inspect.signature(factory).parameters if p not in ("d", "seed")]
    for key in params:
        if key not in allowed:
            raise ScenarioError(f"{KEY}.{key}", f"unknown parameter for {name!r}; allowed: "
                                                f"{', '.join(allowed) or 'none'}")
    return factory(d, seed, **params)
