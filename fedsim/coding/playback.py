"""Playing a scheme's schedule without tensors: every round's clock and decodes
(:func:`play_schedule`), and SR-SGC's timing alone for parameter grids
(:func:`srsgc_timing`). Numpy only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedsim.coding.sequential import DecodeFailure, JobDecode, RoundClock, Scheme, srsgc_s
from fedsim.network.stragglers import BurstyModel, round_duration, straggler_mask


@dataclass
class ScheduleResult:
    """A scheme played on a delay profile, without tensors (see :func:`play_schedule`).

    Attributes:
        rows: one dict per round: ``round``, ``duration_s``, ``sim_time_s``, ``waited``,
            ``stragglers``, ``decoded`` (the jobs decoded at its end), ``cond`` (the largest
            decode condition number in the round, NaN if none), ``work_max`` (the largest
            per-worker share of the data computed on).
        decodes: every :class:`JobDecode`, by job.
        work: ``[n, rounds]`` each worker's share of the data computed on per round.
    """

    rows: list[dict] = field(default_factory=list)
    decodes: dict[int, JobDecode] = field(default_factory=dict)
    work: np.ndarray | None = None


def play_schedule(scheme: Scheme, delays: np.ndarray | None = None, mu: float = 1.0, *,
                  stragglers: np.ndarray | None = None) -> ScheduleResult:
    """Play every round of ``scheme`` (``J + T``): assign, clock, receive.

    Give either ``delays`` (``[n, >= rounds]`` seconds; the clock applies the ``mu`` rule
    and the scheme's model) or a straggler pattern ``stragglers`` (``[n, >= rounds]`` bool,
    taken as is, every round lasting 1 s; for tests of the decoding theorem).

    Returns:
        The :class:`ScheduleResult`.

    Raises:
        DecodeFailure: a job missed its deadline (only possible with ``stragglers`` outside
            the scheme's model).
    """
    rounds = scheme.rounds
    source = delays if delays is not None else stragglers
    if source is None or np.shape(source)[0] != scheme.n or np.shape(source)[1] < rounds:
        raise ValueError(f"need a [{scheme.n}, >= {rounds}] delay or straggler array, got "
                         f"{None if source is None else np.shape(source)}")
    res = ScheduleResult(work=np.zeros((scheme.n, rounds)))
    now = 0.0
    for r in range(1, rounds + 1):
        tasks = scheme.assign(r)
        if delays is not None:
            clk = scheme.clock(np.asarray(delays, dtype=float)[:, r - 1], mu)
        else:
            clk = RoundClock(1.0, np.asarray(stragglers[:, r - 1], dtype=bool), False)
        decodes = scheme.receive(r, clk.stragglers)
        now += clk.duration_s
        res.work[:, r - 1] = scheme.work(tasks)
        for d in decodes:
            res.decodes[d.job] = d
        res.rows.append({
            "round": r, "duration_s": clk.duration_s, "sim_time_s": now,
            "waited": clk.waited, "stragglers": int(clk.stragglers.sum()),
            "decoded": [d.job for d in decodes],
            "cond": max((d.cond for d in decodes), default=float("nan")),
            "work_max": float(res.work[:, r - 1].max())})
    return res


def srsgc_timing(delays: np.ndarray, B: int, W: int, lam: int, jobs: int,
                 mu: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """SR-SGC's round durations and waits without tasks or tensors (for parameter grids).

    The same clock as :class:`SRSGC` played through :func:`play_schedule` (the tests
    check they agree round for round), keeping only who delivered which job: the
    re-attempts (lowest ids first), the harmless-round rule (:meth:`SRSGC._harmless`),
    the ``(B, W, lambda)`` model check against the accepted pattern, and skipped
    (0 s) rounds with no task.

    Args:
        delays: ``[n, >= jobs + B]`` seconds.
        B, W, lam: the bursty model (``B | W - 1``).
        jobs: ``J``.
        mu: the straggler tolerance.

    Returns:
        ``(durations [J + B], waited [J + B] bool)``.

    Raises:
        DecodeFailure: a job missed its deadline (cannot happen: the master waits for all
            whenever the pattern would leave the model).
    """
    delays = np.asarray(delays, dtype=float)
    n = delays.shape[0]
    s = srsgc_s(B, W, lam)
    model = BurstyModel(B, W, lam)
    rounds = jobs + B
    delivered = np.zeros((jobs + 1, n), dtype=bool)
    decoded = np.zeros(jobs + 1, dtype=bool)
    accepted = np.zeros((n, rounds), dtype=bool)
    durations = np.zeros(rounds)
    waited = np.zeros(rounds, dtype=bool)
    for r in range(1, rounds + 1):
        old = r - B
        redo = np.zeros(0, dtype=int)
        if 1 <= old <= jobs and not decoded[old]:
            missing = np.flatnonzero(~delivered[old])
            if missing.size > s:
                redo = missing[:missing.size - s]
        if r > jobs and redo.size == 0:
            continue  # nothing to compute: the round is skipped
        d = delays[:, r - 1]
        slow = straggler_mask(d, mu)
        if slow.any() and r <= jobs and redo.size == 0 and int(slow.sum()) <= s:
            fits = True  # harmless: left out of the pattern
        else:
            past = accepted[:, max(0, r - 1 - model.memory):r - 1]
            fits = not slow.any() or model.fits(past, slow)
            if fits:
                accepted[:, r - 1] = slow
        durations[r - 1] = round_duration(d, fits, mu)
        waited[r - 1] = not fits
        arrived = ~slow if fits else np.ones(n, dtype=bool)
        on_old = np.zeros(n, dtype=bool)
        on_old[redo] = True
        if redo.size:
            delivered[old] |= arrived & on_old
        if r <= jobs:
            delivered[r] |= arrived & ~on_old
        for job in (old, r):
            if 1 <= job <= jobs and not decoded[job]:
                if delivered[job].sum() >= n - s:
                    decoded[job] = True
                elif job == old:
                    raise DecodeFailure(f"sr-sgc: job {job} not decodable by round {r}")
    return durations, waited
