"""What the arithmetic can carry: the bounds validation puts on every number of a scenario.

One rule per kind of number, so that a run that validates cannot overflow later:

- **Integers** fit int64 (TOML integers are 64-bit; numpy and torch count in int64).
- **Tensor values** (learning rates, the proximal ``mu``, synthetic-data scales, attack and
  aggregator parameters) are finite in float32, the dtype of the model: ``|x| <= FLOAT32_MAX``.
- **Simulated seconds** (latencies, compute seconds per sample, deadlines, evaluation
  intervals) are at most ``MAX_SIM_S`` (1e15 s, about 30 million years), and a factor that
  multiplies them on average (the lognormal's ``exp(sigma**2 / 2)``, the shifted
  exponential's ``1 + 1/rate``) at most ``MAX_SIM_S`` too. A run's clock is a product of
  such bounded terms and counts below 2**63 (rounds, samples, epochs, hops): at most about
  1e100 s, far inside float64 (1.8e308), so times, plots and ``summary.json`` stay finite.
  Where a time must be > 0 (a node's local step in asynchronous gossip) it is at least
  ``MIN_SIM_S`` = 1/``MAX_SIM_S``; rates per second lie in ``[MIN_SIM_S, MAX_SIM_S]``.
- **Bandwidths** are at least ``MIN_BANDWIDTH_BPS`` (1 bit/s), so a message's seconds on a
  link are at most its bits.
- **Multipliers of counts** (``network.over_selection``) are at most the population they
  select from.

No torch here: the network layer imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedsim.errors import ScenarioError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
MAX_SIM_S = 1e15
MIN_SIM_S = 1.0 / MAX_SIM_S  # where a time must be > 0 (a node's local step): at least this
MIN_BANDWIDTH_BPS = 1.0
# lognormal compute: the mean factor exp(sigma**2 / 2) <= MAX_SIM_S
MAX_SIGMA = math.sqrt(2.0 * math.log(MAX_SIM_S))
# rates (per simulated second) are reciprocal times: in [1/MAX_SIM_S, MAX_SIM_S]; the
# shifted exponential's mean factor 1 + 1/rate is then at most about MAX_SIM_S
MIN_RATE = 1.0 / MAX_SIM_S
MAX_RATE = MAX_SIM_S


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def check_number(value: Any, key: str, low: float, high: float, *,
                 low_open: bool = False, what: str = "") -> float:
    """``value`` as a float in ``[low, high]`` (``(low, high]`` if ``low_open``), finite.

    Args:
        value: the number from the scenario.
        key: the dotted key, for the message.
        low, high: the allowed range (``high`` is one of this module's bounds).
        low_open: exclude ``low``.
        what: a few words on why the upper bound is there, appended to the message.

    Returns:
        The value as a float.

    Raises:
        ScenarioError: not a number, not finite, or outside the range.
    """
    ok = _is_real(value) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        why = f" ({what})" if what else ""
        raise ScenarioError(key, f"must be a finite number in {bracket}{_fmt(low)}, "
                                 f"{_fmt(high)}]{why}, got {value!r}")
    return float(value)


def check_tensor_value(value: Any, key: str, low: float = -FLOAT32_MAX, *,
                       low_open: bool = False) -> float:
    """A number that becomes a tensor entry: finite in float32 (and ``>= low`` / ``> low``)."""
    return check_number(value, key, low, FLOAT32_MAX, low_open=low_open,
                        what="it must be finite in float32")


def check_seconds(value: Any, key: str, *, positive: bool = False) -> float:
    """Simulated seconds: ``[0, MAX_SIM_S]`` (``(0, MAX_SIM_S]`` if ``positive``)."""
    return check_number(value, key, 0.0, MAX_SIM_S, low_open=positive,
                        what="simulated seconds must stay finite")


def check_rate(value: Any, key: str) -> float:
    """A rate per simulated second: in ``[MIN_RATE, MAX_RATE]`` (its reciprocal is a time)."""
    return check_number(value, key, MIN_RATE, MAX_RATE,
                        what="its reciprocal is simulated seconds, which must stay finite")


def check_bandwidth(value: Any, key: str, *, zero_ok: bool = False) -> float:
    """A bandwidth in bit/s: finite and ``>= MIN_BANDWIDTH_BPS`` (or exactly 0 if allowed)."""
    if zero_ok and _is_real(value) and value == 0:
        return 0.0
    zero = "0 (unlimited) or " if zero_ok else ""
    if not (_is_real(value) and math.isfinite(value) and value >= MIN_BANDWIDTH_BPS):
        raise ScenarioError(key, f"must be {zero}a finite number >= {_fmt(MIN_BANDWIDTH_BPS)} "
                                 f"(bit/s), got {value!r}")
    return float(value)


def _leaves(value: Any, key: str):
    """``(dotted key, value)`` for every leaf inside nested tables and lists."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{key}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{key}[{i}]")
    else:
        yield key, value


def check_int64(value: Any, key: str) -> None:
    """Every integer inside ``value`` (nested tables and lists too) fits int64."""
    for k, v in _leaves(value, key):
        if isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            raise ScenarioError(k, f"integer out of range (TOML integers are 64-bit: "
                                   f"-2^63 .. 2^63-1), got {_short_int(v)}")


def check_tensor_table(value: Any, key: str) -> None:
    """Every number inside a free-form table (attack or aggregator parameters) is finite in
    float32; NaN is refused too."""
    for k, v in _leaves(value, key):
        if _is_real(v):
            check_tensor_value(v, k)


def _short_int(value: int) -> str:
    """The integer, or its size when it is long (str() refuses more than 4300 digits)."""
    if value.bit_length() > 100:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return str(value)
