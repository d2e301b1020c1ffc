"""Who straggles, how long a round lasts, and the worker delay profiles (numpy only).

The clock side of gradient coding. Worker delays are a ``[workers, rounds]`` array of
seconds (``delays[i, r]``: worker ``i``'s time to return its round-``r`` result). Per
round the master applies the straggler rule of Krishnan et al. (2023):

- worker ``i`` straggles in round ``r`` when ``delays[i, r] > (1 + mu) * min_j delays[j, r]``
  (``mu = 1``: more than twice the fastest);
- when the round's stragglers fit the scheme's straggler model (given the stragglers the
  master already accepted in earlier rounds), the round lasts
  ``min((1 + mu) * min delays, max delays)`` and the stragglers' results are lost;
  otherwise the master waits for every worker (``max delays``), nobody straggles, and the
  round counts as a *wait*.

Straggler models (:class:`StragglerModel`): :class:`AtMostS` (at most ``s`` per round:
gradient coding; ``s = 0``: wait for all) and :class:`BurstyModel`, the
``(B, W, lambda)``-bursty model: in every window of ``W`` consecutive rounds at most
``lambda`` distinct workers straggle, and each of them only inside one burst of at most
``B`` consecutive rounds (two straggling rounds of one worker are less than ``B`` apart,
or at least ``W`` apart).

Delay profiles (``[n, rounds]`` arrays): :func:`compute_model_delays` (fedsim's compute
models, :mod:`fedsim.network.compute`, e.g. the shifted exponential of the papers),
:func:`gilbert_elliott_delays` (a bursty two-state Markov chain per worker),
:func:`burst_delays` (bursts of a fixed length: the same workers slow for several
consecutive rounds, as the ``(B, W, lambda)`` model assumes),
:func:`load_linear` (``base + load * seconds_per_gradient``: a scheme pays for the data
it computes on) and :func:`read_delay_trace` (a CSV of ``workers x rounds``).

This module never imports torch (like :mod:`fedsim.network`).

References:
    Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation"
    (ICLR 2023), Section 2 (the bursty straggler model) and Section 5 (the ``mu`` rule);
    Tandon et al., "Gradient Coding" (ICML 2017).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.errors import ScenarioError


def straggler_mask(delays: np.ndarray, mu: float = 1.0) -> np.ndarray:
    """Who straggles in one round: ``delay > (1 + mu) * min delay``.

    Args:
        delays: ``[n]`` the round's worker delays (seconds, > 0).
        mu: the tolerance (``mu = 1``: twice the fastest).

    Returns:
        ``[n]`` bool.

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation" (ICLR 2023).
    """
    delays = np.asarray(delays, dtype=float)
    return delays > (1.0 + mu) * delays.min()


def round_duration(delays: np.ndarray, fits: bool, mu: float = 1.0) -> float:
    """A round's length: ``min((1 + mu) * min, max)`` when the pattern fits, else ``max``.

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation" (ICLR 2023).
    """
    delays = np.asarray(delays, dtype=float)
    if fits:
        return float(min((1.0 + mu) * delays.min(), delays.max()))
    return float(delays.max())


class StragglerModel:
    """Base: which straggler patterns a scheme is designed for.

    Attributes:
        memory: how many past rounds :meth:`fits` looks at (0: only the current one).
    """

    memory: int = 0

    def fits(self, past: np.ndarray, now: np.ndarray) -> bool:
        """Whether adding ``now`` to the accepted pattern keeps it inside the model.

        Args:
            past: ``[n, k]`` bool, the stragglers the master accepted in the last
                ``k <= memory`` rounds (oldest first; a wait round is all False).
            now: ``[n]`` bool, this round's stragglers.
        """
        raise NotImplementedError

    def conforms(self, pattern: np.ndarray) -> bool:
        """Whether a whole ``[n, rounds]`` straggler pattern lies in the model."""
        pattern = np.asarray(pattern, dtype=bool)
        for r in range(pattern.shape[1]):
            past = pattern[:, max(0, r - self.memory):r]
            if not self.fits(past, pattern[:, r]):
                return False
        return True


@dataclass(frozen=True)
class AtMostS(StragglerModel):
    """At most ``s`` stragglers in a round (gradient coding; ``s = 0``: wait for all).

    References:
        Tandon et al., "Gradient Coding" (ICML 2017).
    """

    s: int

    def fits(self, past: np.ndarray, now: np.ndarray) -> bool:
        return int(np.count_nonzero(now)) <= self.s


@dataclass(frozen=True)
class BurstyModel(StragglerModel):
    """The ``(B, W, lambda)``-bursty straggler model.

    In every window of ``W`` consecutive rounds: at most ``lam`` distinct workers straggle,
    and a worker's straggling rounds lie inside one burst of at most ``B`` consecutive
    rounds. Checked incrementally on the window that ends at the current round (every
    window is checked when its last round is added): at most ``lam`` distinct stragglers
    in rounds ``r - W + 1 .. r``, and no worker straggling now straggled in rounds
    ``r - W + 1 .. r - B``.

    Attributes:
        B: burst length, ``1 <= B < W``.
        W: window length.
        lam: distinct stragglers per window, ``>= 0``.

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation"
        (ICLR 2023), Section 2.
    """

    B: int
    W: int
    lam: int

    @property
    def memory(self) -> int:  # type: ignore[override]
        return self.W - 1

    def fits(self, past: np.ndarray, now: np.ndarray) -> bool:
        past = np.asarray(past, dtype=bool)[:, -(self.W - 1):] if self.W > 1 else None
        now = np.asarray(now, dtype=bool)
        if past is None or past.shape[1] == 0:
            return int(np.count_nonzero(now)) <= self.lam
        if int(np.count_nonzero(past.any(axis=1) | now)) > self.lam:
            return False
        # rounds r-W+1 .. r-B of the window are past[:, :k-(B-1)]
        early = past[:, :max(0, past.shape[1] - (self.B - 1))]
        return not bool((early.any(axis=1) & now).any())


@dataclass(frozen=True)
class ClockRound:
    """One round as the master's clock saw it.

    Attributes:
        round: 1-based round number.
        duration_s: the round's length.
        stragglers: ``[n]`` bool, the accepted stragglers (all False in a wait round).
        slow: ``[n]`` bool, who was slower than ``(1 + mu) * min`` (before the model check).
        waited: the pattern did not fit: the master waited for all (and someone was slow).
    """

    round: int
    duration_s: float
    stragglers: np.ndarray
    slow: np.ndarray
    waited: bool


def play_clock(delays: np.ndarray, model: StragglerModel, mu: float = 1.0
               ) -> list[ClockRound]:
    """The rounds of a scheme on a delay profile: durations, stragglers, waits.

    The schedule does not depend on what the workers compute, only on the delays and the
    straggler model, so a whole grid of schemes can be timed cheaply from this.

    Args:
        delays: ``[n, rounds]`` seconds.
        model: the scheme's straggler model.
        mu: the straggler tolerance.

    Returns:
        One :class:`ClockRound` per column of ``delays``.

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation" (ICLR 2023).
    """
    delays = np.asarray(delays, dtype=float)
    n, rounds = delays.shape
    accepted = np.zeros((n, rounds), dtype=bool)
    out = []
    for r in range(rounds):
        slow = straggler_mask(delays[:, r], mu)
        past = accepted[:, max(0, r - model.memory):r]
        fits = not slow.any() or model.fits(past, slow)
        if fits:
            accepted[:, r] = slow
        out.append(ClockRound(round=r + 1, duration_s=round_duration(delays[:, r], fits, mu),
                              stragglers=accepted[:, r].copy(), slow=slow, waited=not fits))
    return out


def total_time(delays: np.ndarray, model: StragglerModel, mu: float = 1.0) -> float:
    """Sum of the round durations of :func:`play_clock`."""
    return float(sum(c.duration_s for c in play_clock(delays, model, mu)))


# --- delay profiles -------------------------------------------------------------------

def compute_model_delays(model, n: int, rounds: int, work: float | np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """Delays drawn from one of fedsim's compute models, round by round.

    Args:
        model: a :class:`fedsim.network.compute.ComputeModel` (``times(clients, work,
            rng)``), e.g. ``ShiftedExponentialCompute(seconds_per_sample, rate)``.
        n: workers.
        rounds: rounds.
        work: samples each worker processes per round (scalar or ``[n]``).
        rng: the draws.

    Returns:
        ``[n, rounds]`` seconds.
    """
    clients = np.arange(n)
    w = np.broadcast_to(np.asarray(work, dtype=float), (n,))
    return np.stack([np.asarray(model.times(clients, w, rng), dtype=float)
                     for _ in range(rounds)], axis=1)


def gilbert_elliott_delays(n: int, rounds: int, rng: np.random.Generator, *,
                           p_slow: float = 0.02, p_recover: float = 0.4,
                           fast_s: float = 0.6, slow_factor: float = 4.0,
                           jitter: float = 0.08) -> np.ndarray:
    """Bursty delays: a two-state (Gilbert-Elliott) Markov chain per worker.

    Each worker starts in its stationary state; per round a fast worker turns slow with
    probability ``p_slow`` and a slow one recovers with ``p_recover`` (bursts last
    ``1 / p_recover`` rounds on average; stationary slow share
    ``p_slow / (p_slow + p_recover)``). A fast worker's delay is
    ``fast_s * U(1 - jitter, 1 + jitter)``, a slow one's ``slow_factor`` times that.

    Args:
        n: workers.
        rounds: rounds.
        rng: the draws.
        p_slow, p_recover: transition probabilities, in ``[0, 1]``.
        fast_s: the typical fast delay (seconds, > 0).
        slow_factor: slow delay / fast delay (> 2 makes slow workers stragglers at mu = 1).
        jitter: relative uniform spread of the delays, in ``[0, 1)``.

    Returns:
        ``[n, rounds]`` seconds.

    References:
        Gilbert (1960), Elliott (1963) burst-noise channel; used as a bursty straggler
        profile as in Krishnan et al. (ICLR 2023), Section 5.
    """
    for name, p in (("p_slow", p_slow), ("p_recover", p_recover)):
        if not 0.0 <= p <= 1.0:
            raise ScenarioError(f"network.delays.{name}", f"must be in [0, 1], got {p}")
    stationary = p_slow / (p_slow + p_recover) if p_slow + p_recover > 0 else 0.0
    state = rng.random(n) < stationary
    slow = np.empty((n, rounds), dtype=bool)
    for r in range(rounds):
        slow[:, r] = state
        u = rng.random(n)
        state = np.where(state, u >= p_recover, u < p_slow)
    return _slow_delays(slow, rng, fast_s, slow_factor, jitter)


def burst_delays(n: int, rounds: int, rng: np.random.Generator, *, p_slow: float = 0.02,
                 burst: int = 2, gap: int = 0, fast_s: float = 0.6, slow_factor: float = 4.0,
                 jitter: float = 0.08) -> np.ndarray:
    """Persistent bursts: a slow worker stays slow for ``burst`` consecutive rounds.

    Per round, a fast worker whose cool-down is over starts a burst with probability
    ``p_slow``; the burst lasts exactly ``burst`` rounds, then the worker is fast for at
    least ``gap`` rounds. With ``burst <= B`` and ``gap >= W - 1`` every worker's
    straggling lies inside one burst of at most ``B`` rounds per window of ``W`` (the
    per-worker half of the ``(B, W, lambda)``-bursty model; ``lambda``, the distinct
    stragglers per window, is then about ``p_slow * n * (W + B - 1)`` on average).
    Unlike :func:`gilbert_elliott_delays`, whose bursts are geometric and mostly one
    round long at a high recovery rate, the same workers stay slow across consecutive
    rounds, the shape sequential gradient coding is designed for. Delays as
    :func:`gilbert_elliott_delays`: fast ``fast_s * U(1 - jitter, 1 + jitter)``, slow
    ``slow_factor`` times that.

    Args:
        n: workers.
        rounds: rounds.
        rng: the draws.
        p_slow: per round, the chance that a fast worker (past its cool-down) turns slow,
            in ``[0, 1]``.
        burst: rounds a burst lasts, ``>= 1``.
        gap: fast rounds after a burst before the next can start, ``>= 0``.
        fast_s: the typical fast delay (seconds, > 0).
        slow_factor: slow delay / fast delay (> 2 makes slow workers stragglers at mu = 1).
        jitter: relative uniform spread of the delays, in ``[0, 1)``.

    Returns:
        ``[n, rounds]`` seconds.

    References:
        Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation"
        (ICLR 2023), Section 2 (the ``(B, W, lambda)``-bursty model this profile follows).
    """
    if not 0.0 <= p_slow <= 1.0:
        raise ScenarioError("network.delays.p_slow", f"must be in [0, 1], got {p_slow}")
    left = np.zeros(n, dtype=int)   # slow rounds left in the current burst
    cool = np.zeros(n, dtype=int)   # fast rounds left before a burst may start
    slow = np.empty((n, rounds), dtype=bool)
    for r in range(rounds):
        start = (left == 0) & (cool == 0) & (rng.random(n) < p_slow)
        left = np.where(start, burst, left)
        slow[:, r] = left > 0
        ending = left == 1
        left = np.maximum(left - 1, 0)
        cool = np.where(ending, gap, np.maximum(cool - (~slow[:, r]), 0))
    return _slow_delays(slow, rng, fast_s, slow_factor, jitter)


def _slow_delays(slow: np.ndarray, rng: np.random.Generator, fast_s: float,
                 slow_factor: float, jitter: float) -> np.ndarray:
    """Delays ``[n, rounds]`` of a slow-worker mask: ``fast_s * U(1 - jitter, 1 + jitter)``,
    ``slow_factor`` times that where ``slow``."""
    base = fast_s * rng.uniform(1.0 - jitter, 1.0 + jitter, size=slow.shape)
    return np.where(slow, base * slow_factor, base)


def load_linear(base: np.ndarray, load: float, seconds_per_gradient: float) -> np.ndarray:
    """``delay = base + load * seconds_per_gradient``: compute grows with a worker's load.

    Args:
        base: ``[n, rounds]`` seconds that do not depend on the load (communication,
            start-up, a slow machine's extra time).
        load: the fraction of the whole data set a worker computes on per round (the
            scheme's normalized load, e.g. ``(s + 1) / n`` for gradient coding).
        seconds_per_gradient: a worker's time for a gradient over the whole data set.

    Returns:
        ``[n, rounds]`` seconds.

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation" (ICLR 2023),
        Section 5 (run time modelled as linear in the load).
    """
    return np.asarray(base, dtype=float) + float(load) * float(seconds_per_gradient)


def read_delay_trace(path: str | Path, n: int, rounds: int,
                     key: str = "network.delays.trace") -> np.ndarray:
    """A delay trace: a CSV of ``n`` lines (workers) of at least ``rounds`` seconds each.

    Lines starting with ``#`` and blank lines are skipped; no header.

    Args:
        path: the file.
        n: workers (the file must have exactly ``n`` rows).
        rounds: rounds needed (each row needs at least this many values; extra are cut).
        key: the scenario key named in errors.

    Returns:
        ``[n, rounds]`` seconds.

    Raises:
        ScenarioError: unreadable file, a non-number, a delay that is not finite and > 0,
            or the wrong shape.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(key, f"cannot read delay trace {path}: {err}") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            values = [float(v) for v in stripped.split(",")]
        except ValueError:
            raise ScenarioError(key, f"{path} line {lineno}: expected comma-separated "
                                     f"seconds, got {stripped[:60]!r}") from None
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ScenarioError(key, f"{path} line {lineno}: delays must be finite and > 0")
        rows.append(values)
    if len(rows) != n or any(len(r) < rounds for r in rows):
        shortest = min((len(r) for r in rows), default=0)
        raise ScenarioError(key, f"{path} has {len(rows)} rows of >= {shortest} values; "
                                 f"expected {n} rows (workers) of >= {rounds} values (rounds)")
    return np.array([r[:rounds] for r in rows], dtype=float)
