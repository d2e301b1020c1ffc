"""Scenario tables of a coded run: ``[algorithm.coding]`` and ``[network.delays]`` (numpy only).

``algorithm.name = "coded"`` runs synchronous distributed gradient descent with a
straggler-mitigation scheme (:mod:`fedsim.runs.coded`). Its parameters are two tables,
checked here, each error one :class:`~fedsim.errors.ScenarioError` naming the dotted key:

- ``[algorithm.coding]`` (:data:`CODING_DEFAULTS`): ``scheme``, ``code``, ``s``, ``B``,
  ``W``, ``lam``, ``jobs``, ``models``, ``mu``;
- ``[network.delays]`` (:data:`DELAY_DEFAULTS`): the worker delay profile, ``model`` and
  its parameters, and whether it is load-linear.

The run's workers are the scenario's ``data.num_clients``; it plays ``rounds = jobs + T``
rounds (``jobs`` defaults to ``rounds - T``).

References:
    Tandon et al., "Gradient Coding" (ICML 2017); Krishnan, Ebrahimi, Khisti, "Sequential
    Gradient Coding for Straggler Mitigation" (ICLR 2023).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError
from fedsim.limits import check_number, check_rate, check_seconds

CODING_KEY = "algorithm.coding"
DELAYS_KEY = "network.delays"
CODING_DEFAULTS: dict[str, Any] = {"scheme": "gc", "code": "crc", "s": 1, "B": 1, "W": 3,
                                   "lam": 2, "jobs": 0, "models": 0, "mu": 1.0}
DELAY_MODELS = ("bursty", "bursts", "constant", "lognormal", "shifted_exponential", "trace")
DELAY_DEFAULTS: dict[str, Any] = {
    "model": "bursty", "fast_s": 0.6, "slow_factor": 4.0, "jitter": 0.08, "p_slow": 0.02,
    "p_recover": 0.4, "burst": 2, "gap": 0, "sigma": 1.0, "rate": 1.0, "load_linear": True,
    "seconds_per_gradient": 2.2, "trace": ""}
MAX_WORKERS_ROUNDS = 10**8  # delay array cells ([workers, rounds] float64: 800 MB)


@dataclass(frozen=True)
class CodingSpec:
    """``[algorithm.coding]``, checked; ``jobs`` and ``models`` resolved."""

    scheme: str
    code: str
    s: int
    B: int
    W: int
    lam: int
    jobs: int
    models: int
    mu: float
    T: int
    n: int

    def build(self, seed: int):
        """A fresh :class:`~fedsim.coding.sequential.Scheme` (CRC's matrix from ``seed``)."""
        from fedsim.coding import make_scheme

        return make_scheme(self.scheme, self.n, self.jobs, s=self.s, B=self.B, W=self.W,
                           lam=self.lam, code=self.code, seed=seed)


def _table(table: Any, defaults: dict[str, Any], key: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ScenarioError(key, f"must be a table, got {type(table).__name__}")
    for name in table:
        if name not in defaults:
            raise ScenarioError(f"{key}.{name}", f"unknown parameter; allowed: "
                                                 f"{', '.join(defaults)}")
    return {**defaults, **table}


def _int(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ScenarioError(key, f"must be an integer >= {low}, got {value!r}")
    return int(value)


def _str(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ScenarioError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")
    return value


def coding_spec(table: Any, n: int, rounds: int) -> CodingSpec:
    """``[algorithm.coding]`` checked against ``n`` workers and the run's ``rounds``.

    Raises:
        ScenarioError: ``algorithm.coding.<param>`` (unknown, wrong type, out of range,
            ``s >= n``, FRC with ``(s + 1)`` not dividing ``n``, SR-SGC with ``B`` not
            dividing ``W - 1``, ``lam > n``, ``models < T + 1``, ``jobs + T != rounds``),
            or ``rounds`` (fewer than ``T + 1``).
    """
    from fedsim.coding import SCHEMES, make_scheme
    from fedsim.coding.codes import CODES

    t = _table(table, CODING_DEFAULTS, CODING_KEY)
    scheme = _str(t["scheme"], f"{CODING_KEY}.scheme", SCHEMES)
    code = _str(t["code"], f"{CODING_KEY}.code", tuple(CODES))
    s = _int(t["s"], f"{CODING_KEY}.s", 0)
    B = _int(t["B"], f"{CODING_KEY}.B", 1)
    W = _int(t["W"], f"{CODING_KEY}.W", 2)
    lam = _int(t["lam"], f"{CODING_KEY}.lam", 0)
    jobs = _int(t["jobs"], f"{CODING_KEY}.jobs", 0)
    models = _int(t["models"], f"{CODING_KEY}.models", 0)
    mu = check_number(t["mu"], f"{CODING_KEY}.mu", 0.0, 1e15)
    if scheme in ("gc", "ignore-stragglers") and s >= n:
        raise ScenarioError(f"{CODING_KEY}.s", f"must be < n = data.num_clients = {n} "
                                               f"(stragglers per round), got {s}")
    probe = make_scheme(scheme, n, 1, s=s, B=B, W=W, lam=lam, code=code, seed=0)
    T = probe.T
    if jobs == 0:
        if rounds < T + 1:
            raise ScenarioError("rounds", f"scheme {scheme!r} has delay T = {T}: the run plays "
                                          f"jobs + T rounds, so rounds must be >= {T + 1}, "
                                          f"got {rounds}")
        jobs = rounds - T
    elif jobs + T != rounds:
        raise ScenarioError(f"{CODING_KEY}.jobs", f"scheme {scheme!r} (T = {T}) plays jobs + "
                                                  f"T = {jobs + T} rounds, but rounds = "
                                                  f"{rounds}; set rounds = {jobs + T} (or "
                                                  "leave jobs out: rounds - T)")
    if models == 0:
        models = T + 1
    elif models < T + 1:
        raise ScenarioError(f"{CODING_KEY}.models", f"scheme {scheme!r} has delay T = {T}: "
                                                    f"needs >= T + 1 = {T + 1} models "
                                                    f"trained round robin, got {models}")
    return CodingSpec(scheme, code, s, B, W, lam, jobs, models, mu, T, n)


@dataclass(frozen=True)
class DelaySpec:
    """``[network.delays]``, checked."""

    model: str
    fast_s: float
    slow_factor: float
    jitter: float
    p_slow: float
    p_recover: float
    burst: int
    gap: int
    sigma: float
    rate: float
    load_linear: bool
    seconds_per_gradient: float
    trace: str


def delay_spec(table: Any) -> DelaySpec:
    """``[network.delays]`` checked (the trace file is read by :func:`build_delays`).

    Raises:
        ScenarioError: ``network.delays.<param>``.
    """
    k = DELAYS_KEY
    t = _table(table, DELAY_DEFAULTS, k)
    model = _str(t["model"], f"{k}.model", DELAY_MODELS)
    fast_s = check_seconds(t["fast_s"], f"{k}.fast_s", positive=True)
    slow_factor = check_number(t["slow_factor"], f"{k}.slow_factor", 1.0, 1e6)
    jitter = check_number(t["jitter"], f"{k}.jitter", 0.0, 0.99)
    p_slow = check_number(t["p_slow"], f"{k}.p_slow", 0.0, 1.0)
    p_recover = check_number(t["p_recover"], f"{k}.p_recover", 0.0, 1.0)
    burst = _int(t["burst"], f"{k}.burst", 1)
    gap = _int(t["gap"], f"{k}.gap", 0)
    sigma = check_number(t["sigma"], f"{k}.sigma", 0.0, 8.0)
    rate = check_rate(t["rate"], f"{k}.rate")
    if not isinstance(t["load_linear"], bool):
        raise ScenarioError(f"{k}.load_linear", f"must be true or false, got "
                                                f"{t['load_linear']!r}")
    spg = check_seconds(t["seconds_per_gradient"], f"{k}.seconds_per_gradient")
    trace = t["trace"]
    if not isinstance(trace, str):
        raise ScenarioError(f"{k}.trace", f"must be a path (a string), got {trace!r}")
    if model == "trace" and not trace:
        raise ScenarioError(f"{k}.trace", "required for model 'trace' (a CSV of workers x "
                                          "rounds seconds)")
    return DelaySpec(model, fast_s, slow_factor, jitter, p_slow, p_recover, burst, gap,
                     sigma, rate, t["load_linear"], spg, trace)


def build_delays(spec: DelaySpec, n: int, rounds: int, load: float,
                 rng: np.random.Generator, base_dir: Path | None = None) -> np.ndarray:
    """The ``[n, rounds]`` worker delays of the profile (``+ load * seconds_per_gradient``
    when ``load_linear``).

    Raises:
        ScenarioError: ``network.delays.trace`` unreadable or of the wrong shape;
            ``rounds`` when ``n x rounds`` is too large to hold.
    """
    from fedsim.network.compute import (
        ConstantCompute,
        LognormalCompute,
        ShiftedExponentialCompute,
    )
    from fedsim.network.stragglers import (
        burst_delays,
        compute_model_delays,
        gilbert_elliott_delays,
        load_linear,
        read_delay_trace,
    )

    if n * rounds > MAX_WORKERS_ROUNDS:
        raise ScenarioError("rounds", f"{n} workers x {rounds} rounds of delays is more than "
                                      f"{MAX_WORKERS_ROUNDS:.0e}; make it smaller")
    common = {"fast_s": spec.fast_s, "slow_factor": spec.slow_factor, "jitter": spec.jitter}
    if spec.model == "bursty":
        base = gilbert_elliott_delays(n, rounds, rng, p_slow=spec.p_slow,
                                      p_recover=spec.p_recover, **common)
    elif spec.model == "bursts":
        base = burst_delays(n, rounds, rng, p_slow=spec.p_slow, burst=spec.burst,
                            gap=spec.gap, **common)
    elif spec.model == "trace":
        path = Path(spec.trace).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        base = read_delay_trace(path, n, rounds, f"{DELAYS_KEY}.trace")
    else:
        compute = {"constant": lambda: ConstantCompute(spec.fast_s),
                   "lognormal": lambda: LognormalCompute(spec.fast_s, spec.sigma),
                   "shifted_exponential": lambda: ShiftedExponentialCompute(spec.fast_s,
                                                                           spec.rate)}
        base = compute_model_delays(compute[spec.model](), n, rounds, 1.0, rng)
    if spec.load_linear:
        base = load_linear(base, load, spec.seconds_per_gradient)
    if not np.isfinite(base).all() or not (base > 0).all():  # pragma: no cover - bounded
        raise ScenarioError(DELAYS_KEY, "the profile gave delays that are not finite and > 0")
    return base


def check_coded(algorithm: str, coding: Any, delays: Any, n: int, rounds: int,
                base_dir: Path | None = None) -> None:
    """The scenario validation of both tables (``fedsim validate``).

    For ``algorithm = "coded"``: builds the scheme and reads a delay trace (its shape);
    for any other algorithm both tables must be empty.

    Raises:
        ScenarioError: naming the dotted key.
    """
    if algorithm != "coded":
        for key, table in ((CODING_KEY, coding), (DELAYS_KEY, delays)):
            if table:
                raise ScenarioError(key, f"only used with algorithm.name = 'coded' (this "
                                         f"scenario's is {algorithm!r}); allowed: leave it out")
        return
    coding_spec(coding, n, rounds)
    dspec = delay_spec(delays)
    if dspec.model == "trace" or n * rounds > MAX_WORKERS_ROUNDS:  # read it; or refuse
        build_delays(dspec, n, rounds, 0.0, np.random.default_rng(0), base_dir)
