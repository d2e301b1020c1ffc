"""Gradient coding and sequential gradient coding for straggler mitigation.

- :mod:`fedsim.coding.codes`: FRC and CRC encoding matrices, the per-round decode
  ``B_F^T a = 1`` and its conditioning (Tandon et al., ICML 2017).
- :mod:`fedsim.network.stragglers`: the ``mu`` straggler rule, round durations, the
  ``(B, W, lambda)``-bursty model and worker delay profiles (Krishnan et al., ICLR 2023).
- :mod:`fedsim.coding.sequential`: round-by-round schedules as state machines: GC,
  SR-SGC, M-SGC.
- :mod:`fedsim.coding.playback`: :func:`play_schedule` plays a scheme on a delay profile
  without tensors; :func:`srsgc_timing` is SR-SGC's clock alone, fast enough for
  parameter grids.
- :mod:`fedsim.coding.baselines`: wait for all; ignore stragglers.
- :mod:`fedsim.coding.gradients`: a job's per-piece gradients through fedsim's population
  engine (:class:`~fedsim.coding.gradients.PieceGradients`).
- :mod:`fedsim.coding.training`: synchronous distributed SGD with real torch gradients
  (:func:`run_coded`); with ``gradients`` the only modules here that import torch, loaded
  on first use.

Everything but ``training`` and ``gradients`` is numpy only, like :mod:`fedsim.network`.
"""

from __future__ import annotations

from typing import Any

from fedsim.coding.baselines import IgnoreStragglers, wait_for_all
from fedsim.coding.codes import (
    CODES,
    DecodeError,
    Decoding,
    GradientCode,
    check_code_params,
    crc_matrix,
    decode_vector,
    frc_matrix,
    make_code,
)
from fedsim.coding.playback import ScheduleResult, play_schedule, srsgc_timing
from fedsim.coding.sequential import (
    MSGC,
    SRSGC,
    DecodeFailure,
    GradientCodingScheme,
    JobDecode,
    RoundEncoding,
    Scheme,
    Task,
    msgc_load,
    round_encoding,
    srsgc_s,
)
from fedsim.network.stragglers import (
    AtMostS,
    BurstyModel,
    StragglerModel,
    compute_model_delays,
    gilbert_elliott_delays,
    load_linear,
    play_clock,
    read_delay_trace,
    round_duration,
    straggler_mask,
    total_time,
)

__all__ = [
    "CODES", "MSGC", "SRSGC", "AtMostS", "BurstyModel", "DecodeError", "DecodeFailure",
    "Decoding", "GradientCode", "GradientCodingScheme", "IgnoreStragglers", "JobDecode",
    "RoundEncoding", "SCHEMES", "Scheme", "ScheduleResult", "StragglerModel", "Task",
    "check_code_params", "compute_model_delays", "crc_matrix", "decode_vector", "frc_matrix",
    "gilbert_elliott_delays", "load_linear", "make_code", "make_scheme", "msgc_load",
    "play_clock", "play_schedule", "read_delay_trace", "round_duration", "round_encoding",
    "run_coded", "srsgc_s", "srsgc_timing", "straggler_mask", "total_time", "wait_for_all",
]

SCHEMES = ("wait-for-all", "ignore-stragglers", "gc", "sr-sgc", "m-sgc")


def make_scheme(name: str, n: int, jobs: int, *, s: int | None = None,
                B: int | None = None, W: int | None = None, lam: int | None = None,
                code: str = "crc", seed: int = 0) -> Scheme:
    """A scheme by name, with the parameters it needs.

    Args:
        name: one of :data:`SCHEMES`.
        n: workers.
        jobs: gradients to compute (rounds of the run: ``jobs + T``).
        s: stragglers per round (``gc``, ``ignore-stragglers``).
        B, W, lam: the bursty model (``sr-sgc``: ``B | W - 1``; ``m-sgc``).
        code: ``"crc"`` or ``"frc"`` (the gradient code of ``gc``, ``sr-sgc``, ``m-sgc``).
        seed: CRC's random matrix.

    Raises:
        ScenarioError: an unknown name (``algorithm.coding.scheme``), a missing or bad
            parameter (``algorithm.coding.<param>``).
    """
    from fedsim.errors import ScenarioError

    def need(value, key):
        if value is None:
            raise ScenarioError(f"algorithm.coding.{key}", f"scheme {name!r} needs {key}")
        return value

    if name == "wait-for-all":
        return wait_for_all(n, jobs)
    if name == "ignore-stragglers":
        return IgnoreStragglers(n, need(s, "s"), jobs)
    if name == "gc":
        return GradientCodingScheme(make_code(code, n, need(s, "s"), seed), jobs)
    if name == "sr-sgc":
        return SRSGC(n, need(B, "B"), need(W, "W"), need(lam, "lam"), jobs, code, seed)
    if name == "m-sgc":
        return MSGC(n, need(B, "B"), need(W, "W"), need(lam, "lam"), jobs, code, seed)
    raise ScenarioError("algorithm.coding.scheme",
                        f"must be one of {', '.join(SCHEMES)}; got {name!r}")


def __getattr__(name: str) -> Any:
    if name == "run_coded":  # torch: loaded only when asked for
        from fedsim.coding.training import run_coded

        return run_coded
    raise AttributeError(f"module 'fedsim.coding' has no attribute {name!r}")
