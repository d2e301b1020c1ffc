"""How long a client's local work takes, in simulated seconds (numpy only).

Every model maps ``work`` (samples processed this round, i.e. samples x local
epochs) to seconds. Draws are made per selected client per round, in selection
order, from the generator the clock passes in (its ``network/compute`` stream).

- ``constant``: ``work * seconds_per_sample``.
- ``lognormal``: ``work * seconds_per_sample * exp(sigma * Z)``, ``Z ~ N(0, 1)``.
  The median factor is 1, the mean factor ``exp(sigma**2 / 2)`` (1.65 for
  sigma = 1): a heavy right tail of slow clients.
- ``shifted_exponential``: ``base * (1 + E)``, ``E ~ Exp(rate)`` (mean ``1/rate``),
  with ``base = work * seconds_per_sample``: the straggler model of the
  gradient-coding papers (Tandon et al. 2017; Krishnan et al. 2023).
- ``trace``: ``work * s_c`` with client ``c``'s own ``seconds_per_sample`` read
  from a CSV file ``client,seconds_per_sample`` (header line first). Every
  client of the scenario needs a row; rows for client ids beyond the scenario's
  clients are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsim.config import ComputeConfig
from fedsim.errors import ScenarioError
from fedsim.limits import MAX_SIGMA, MAX_SIM_S, check_number, check_rate, check_seconds

COMPUTE_MODELS = ("constant", "lognormal", "shifted_exponential", "trace")
_KEY = "network.compute"


def resolve_trace_path(key: str, path: str, base_dir: Path | None) -> Path:
    """The trace file a scenario names, resolved against the scenario's folder.

    Args:
        key: the dotted scenario key, for the error message.
        path: the path as written in the scenario ('' is an error).
        base_dir: the scenario file's folder (None: the working directory).

    Returns:
        The existing file's path.

    Raises:
        ScenarioError: the path is empty or the file does not exist.
    """
    if not path:
        raise ScenarioError(key, "the 'trace' model needs a CSV file path, got ''")
    resolved = Path(path)
    try:
        resolved = resolved.expanduser()
    except RuntimeError:  # "~user" of no such user: kept as written, then not found
        pass
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    try:
        found = resolved.is_file()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        raise ScenarioError(key, f"not a usable path ({err}): {resolved}") from None
    if not found:
        raise ScenarioError(key, f"trace file not found: {resolved}")
    return resolved


def read_trace(key: str, path: Path, columns: Sequence[str]) -> list[tuple[int, tuple]]:
    """Rows of a CSV trace: a header with ``columns``, then ``client,number,...`` lines.

    Blank lines and lines starting with ``#`` are skipped.

    Args:
        key: the dotted scenario key, for error messages.
        path: the file.
        columns: expected column names; the first is the integer client id, the rest floats.

    Returns:
        ``(line_number, (client, value, ...))`` per data row, in file order.

    Raises:
        ScenarioError: unreadable file, wrong header, or a malformed line (with its number).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(key, f"cannot read trace file {path}: {exc}") from exc
    expected = ",".join(columns)
    rows: list[tuple[int, tuple]] = []
    header_seen = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        if not header_seen:
            if [f.lower() for f in fields] != list(columns):
                raise ScenarioError(key, f"{path} line {lineno}: expected the header "
                                         f"'{expected}', got {stripped!r}")
            header_seen = True
            continue
        rows.append((lineno, _parse_row(key, path, lineno, fields, expected, stripped)))
    if not header_seen:
        raise ScenarioError(key, f"{path} is empty; expected the header '{expected}' and rows")
    return rows


def _parse_row(key: str, path: Path, lineno: int, fields: list[str], expected: str,
               line: str) -> tuple:
    """One data row: an integer client id >= 0 and floats (no NaN)."""
    bad = ScenarioError(key, f"{path} line {lineno}: expected '{expected}' with an integer "
                             f"client id >= 0 and numbers, got {line!r}")
    if len(fields) != expected.count(",") + 1:
        raise bad
    try:
        client = int(fields[0])
        values = tuple(float(f) for f in fields[1:])
    except ValueError:
        raise bad from None
    if client < 0 or any(math.isnan(v) for v in values):
        raise bad
    return (client, *values)


class ComputeModel:
    """Base: ``times(clients, work, rng)`` gives each selected client's compute seconds."""

    def times(self, clients: np.ndarray, work: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
        """Compute seconds per selected client.

        Args:
            clients: ``[m]`` client ids, in selection order.
            work: ``[m]`` samples processed this round (samples x epochs), >= 0.
            rng: the clock's compute stream.

        Returns:
            ``[m]`` float64 seconds.
        """
        raise NotImplementedError

    def mean_times(self, clients: np.ndarray, work: np.ndarray) -> np.ndarray:
        """Expected compute seconds per client: the mean of :meth:`times`, no draw.

        Args:
            clients: ``[m]`` client ids.
            work: ``[m]`` samples processed, >= 0.

        Returns:
            ``[m]`` float64 seconds.
        """
        raise NotImplementedError


class ConstantCompute(ComputeModel):
    """``work * seconds_per_sample``: every client equally fast, no randomness."""

    def __init__(self, seconds_per_sample: float):
        self.seconds_per_sample = seconds_per_sample

    def times(self, clients, work, rng):
        return work * self.seconds_per_sample

    def mean_times(self, clients, work):
        return work * self.seconds_per_sample


class LognormalCompute(ComputeModel):
    """``work * seconds_per_sample * exp(sigma * Z)``; mean factor ``exp(sigma**2 / 2)``."""

    def __init__(self, seconds_per_sample: float, sigma: float):
        self.seconds_per_sample = seconds_per_sample
        self.sigma = sigma

    def times(self, clients, work, rng):
        factor = np.exp(self.sigma * rng.standard_normal(len(work)))
        return work * self.seconds_per_sample * factor

    def mean_times(self, clients, work):
        return work * self.seconds_per_sample * math.exp(self.sigma**2 / 2)


class ShiftedExponentialCompute(ComputeModel):
    """``base * (1 + Exp(rate))`` with ``base = work * seconds_per_sample``.

    References:
        Tandon et al., "Gradient Coding" (ICML 2017); Krishnan et al., "Sequential
        Gradient Coding for Straggler Mitigation" (ICLR 2023).
    """

    def __init__(self, seconds_per_sample: float, rate: float):
        self.seconds_per_sample = seconds_per_sample
        self.rate = rate

    def times(self, clients, work, rng):
        extra = rng.exponential(1.0 / self.rate, len(work))
        return work * self.seconds_per_sample * (1.0 + extra)

    def mean_times(self, clients, work):
        return work * self.seconds_per_sample * (1.0 + 1.0 / self.rate)


class TraceCompute(ComputeModel):
    """``work * s_c`` with each client's own seconds per sample from a trace."""

    def __init__(self, seconds_per_sample: np.ndarray):
        self.seconds_per_sample = np.asarray(seconds_per_sample, dtype=np.float64)

    def times(self, clients, work, rng):
        return work * self.seconds_per_sample[clients]

    def mean_times(self, clients, work):
        return work * self.seconds_per_sample[clients]


def load_compute_trace(path: Path, num_clients: int) -> np.ndarray:
    """Per-client seconds per sample from a ``client,seconds_per_sample`` CSV.

    Args:
        path: the existing trace file.
        num_clients: clients 0..num_clients-1 must each have exactly one row.

    Returns:
        ``[num_clients]`` seconds per sample.

    Raises:
        ScenarioError: (key ``network.compute.trace``) malformed, negative, duplicate or
            missing rows.
    """
    key = f"{_KEY}.trace"
    speeds = np.full(num_clients, np.nan)
    seen: dict[int, int] = {}
    for lineno, (client, sps) in read_trace(key, path, ("client", "seconds_per_sample")):
        if not (math.isfinite(sps) and 0 <= sps <= MAX_SIM_S):
            raise ScenarioError(key, f"{path} line {lineno}: seconds_per_sample must be "
                                     f"a finite number in [0, {MAX_SIM_S:g}], got {sps}")
        if client in seen:
            raise ScenarioError(key, f"{path} line {lineno}: client {client} already has a "
                                     f"row (line {seen[client]})")
        seen[client] = lineno
        if client < num_clients:
            speeds[client] = sps
    missing = np.flatnonzero(np.isnan(speeds))
    if len(missing):
        shown = ", ".join(str(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ScenarioError(key, f"{path} has no row for client {shown} "
                                 f"({len(missing)} of {num_clients} clients missing)")
    return speeds


def make_compute_model(cfg: ComputeConfig, num_clients: int, base_dir: Path | None = None
                       ) -> ComputeModel:
    """The compute model a scenario's ``[network.compute]`` table names.

    Args:
        cfg: the compute section.
        num_clients: number of clients (the trace must cover them all).
        base_dir: folder that relative trace paths are resolved against.

    Returns:
        A :class:`ComputeModel`.

    Raises:
        ScenarioError: an unknown model, a parameter out of range, or a bad trace file.
    """
    sps = float(cfg.seconds_per_sample)
    if cfg.model != "trace":
        check_seconds(sps, f"{_KEY}.seconds_per_sample")
    if cfg.model == "constant":
        return ConstantCompute(sps)
    if cfg.model == "lognormal":
        sigma = check_number(cfg.sigma, f"{_KEY}.sigma", 0.0, MAX_SIGMA,
                             what="the mean compute factor exp(sigma^2/2) stays <= 1e15 s")
        return LognormalCompute(sps, sigma)
    if cfg.model == "shifted_exponential":
        return ShiftedExponentialCompute(sps, check_rate(cfg.rate, f"{_KEY}.rate"))
    if cfg.model == "trace":
        path = resolve_trace_path(f"{_KEY}.trace", cfg.trace, base_dir)
        return TraceCompute(load_compute_trace(path, num_clients))
    raise ScenarioError(f"{_KEY}.model", f"must be one of {', '.join(COMPUTE_MODELS)}; "
                                         f"got {cfg.model!r}")
