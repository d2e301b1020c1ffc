"""Round-by-round schedules of gradient coding and sequential gradient coding (numpy only).

Setting (Krishnan et al. 2023): jobs ``g(1), ..., g(J)``; job ``t`` starts in round ``t``
and must be decoded by the end of round ``t + T``. A scheme is a small state machine the
master runs once per round:

1. ``tasks = scheme.assign(r)``: what each worker computes in round ``r`` (a
   :class:`Task` is a linear combination of one job's *pieces*: data shards whose
   gradients sum to the job's full gradient; ``scheme.fractions[p]`` is piece ``p``'s
   share of the data set); all of a round's tasks together form one encoding matrix
   (:meth:`Scheme.encoding`, :class:`RoundEncoding`), so their messages are one product;
2. the clock decides who straggles (:meth:`Scheme.clock`: the ``mu`` rule and the scheme's
   straggler model, :mod:`fedsim.network.stragglers`);
3. ``decodes = scheme.receive(r, stragglers)``: the results of the non-stragglers arrive;
   every job that became decodable is returned as a :class:`JobDecode` (which task results
   to add with which weights). A job not decodable by its deadline raises
   :class:`DecodeFailure` (it cannot happen on a pattern inside the scheme's model:
   that is the papers' theorem, which the tests check exhaustively on small cases).

Schemes:

- :class:`GradientCodingScheme` (``T = 0``): in round ``t`` every worker computes its
  ``(n, s)``-GC task of job ``t``; the master decodes from any ``n - s``.
- :class:`SRSGC`, selective-reattempt SGC (``T = B``, ``B | W - 1``): an ``(n, s)``-GC with
  ``s = ceil(B lambda / (W - 1 + B))``; in round ``t`` workers compute job ``t``'s GC task,
  except that when more than ``s`` tasks of job ``t - B`` are missing, ``v - s`` of the
  ``v`` workers that missed (the lowest ids) redo their job ``t - B`` task instead.
- :class:`MSGC`, multiplexed SGC (``T = W - 2 + B``): job ``t``'s data is split into a part
  ``D1`` (``W - 1`` chunks per worker, plain repetition) and a part ``D2`` (``B`` groups,
  each spread over the ``n`` workers with an ``(n, lambda)``-GC); every worker runs
  ``W - 1 + B`` equal minitasks per round, slot ``m`` of round ``r`` belonging to job
  ``r - m`` (a diagonal across rounds). Slot ``m < W - 1`` computes the worker's D1 chunk
  ``m``; in slot ``m >= W - 1`` a worker that still misses D1 chunks of that job recomputes
  the first missing one, and otherwise computes its coded task of D2 group ``m - (W - 1)``.
  Normalized load ``(lambda + 1)(W - 1 + B) / (n (B + (W - 1)(lambda + 1)))``.

References:
    Tandon, Lei, Dimakis, Karampatziakis, "Gradient Coding" (ICML 2017);
    Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation"
    (ICLR 2023), Section 3 (SR-SGC) and Section 4 (M-SGC).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedsim.coding.codes import DecodeError, GradientCode, check_code_params, make_code
from fedsim.errors import ScenarioError
from fedsim.network.stragglers import (
    AtMostS,
    BurstyModel,
    StragglerModel,
    round_duration,
    straggler_mask,
)

_KEY = "algorithm.coding"


class DecodeFailure(RuntimeError):
    """A job was not decodable by its deadline ``t + T``."""


@dataclass(frozen=True, eq=False)
class Task:
    """One result a worker computes in a round: ``sum_k coeffs[k] * grad(piece pieces[k])``
    of job ``job``'s pieces.

    Attributes:
        round: the round it is computed in (1-based).
        worker: the worker.
        slot: its position among the worker's tasks of the round (M-SGC: the minitask).
        job: the job (1-based).
        pieces: ``[k]`` piece ids of the job.
        coeffs: ``[k]`` their coefficients.
        kind: ``"gc"`` (a gradient-code task), ``"d1"`` (an M-SGC repetition chunk) or
            ``"d2"`` (an M-SGC coded group task).
    """

    round: int
    worker: int
    slot: int
    job: int
    pieces: np.ndarray
    coeffs: np.ndarray
    kind: str = "gc"

    @property
    def key(self) -> tuple[int, int, int]:
        """``(round, worker, slot)``: unique per task."""
        return (self.round, self.worker, self.slot)


@dataclass(frozen=True, eq=False)
class JobDecode:
    """How the master obtains ``g(job)``: ``sum_k weights[k] * result(tasks[k])``.

    Attributes:
        job: the job.
        round: the round at whose end it was decoded.
        tasks: the task results combined.
        weights: ``[len(tasks)]`` their weights.
        cond: the largest condition number of the linear decodes it needed (1.0 when
            none was needed).
    """

    job: int
    round: int
    tasks: tuple[Task, ...]
    weights: np.ndarray
    cond: float = 1.0


@dataclass(frozen=True, eq=False)
class RoundEncoding:
    """A round's encoding matrix ``E``: every task's coefficients over the pieces of the
    jobs the round's tasks touch, so that all the round's messages are one product
    ``E @ G_r``, ``G_r`` the piece gradients of those jobs stacked job by job.

    Row ``k`` is task ``k`` (in :meth:`Scheme.assign`'s order); column block ``b`` holds
    the ``P`` pieces of job ``jobs[b]`` (column ``b P + p``: piece ``p``). For gradient
    coding (one job per round, one task per worker in worker order) ``E`` is the code's
    ``B [n x n]`` itself; SR-SGC with re-attempts spans two jobs (``[n x 2n]``: a worker
    redoing job ``r - B`` has its row of ``B`` in that job's block); M-SGC has one row per
    (worker, minitask) and a block per job in flight. Stored sparse (the coefficients as
    ``rows, cols, values`` triplets); :meth:`dense` gives the matrix.

    Attributes:
        jobs: ``[J_r]`` the jobs whose pieces are the columns, ascending.
        pieces: ``P``, the pieces of a job.
        rows: ``[nnz]`` row (task) of each coefficient.
        cols: ``[nnz]`` column (``b P + piece``) of each coefficient.
        values: ``[nnz]`` the coefficients.
        shape: ``(tasks, J_r P)``.
    """

    jobs: np.ndarray
    pieces: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    def dense(self) -> np.ndarray:
        """``E`` as a ``[tasks, J_r P]`` float64 array."""
        out = np.zeros(self.shape)
        out[self.rows, self.cols] = self.values
        return out


def round_encoding(tasks: list[Task], pieces: int) -> RoundEncoding:
    """The :class:`RoundEncoding` of a round's tasks (``pieces``: ``P``, pieces per job)."""
    jobs = np.unique(np.array([t.job for t in tasks], dtype=int))
    block = {int(j): b for b, j in enumerate(jobs)}
    rows = [np.full(len(t.pieces), k) for k, t in enumerate(tasks)]
    cols = [block[t.job] * pieces + np.asarray(t.pieces, dtype=int) for t in tasks]
    vals = [np.asarray(t.coeffs, dtype=float) for t in tasks]

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    return RoundEncoding(jobs, int(pieces), cat(rows, int), cat(cols, int), cat(vals, float),
                         (len(tasks), len(jobs) * int(pieces)))


@dataclass(frozen=True)
class RoundClock:
    """The master's view of one round's timing."""

    duration_s: float
    stragglers: np.ndarray
    waited: bool


class Scheme:
    """Base of the round-by-round schedules (see the module docstring).

    Attributes:
        name: the scheme's name.
        n: workers.
        jobs: ``J``, the number of jobs.
        T: the delay: job ``t`` is decoded by the end of round ``t + T``.
        load: the normalized load (share of the data set a worker computes on per round).
        fractions: ``[P]`` each piece's share of the data set (sums to 1).
        model: the straggler model the scheme is designed for.
        rounds: ``J + T``, the rounds it takes to finish every job.
    """

    name = "scheme"
    n: int
    jobs: int
    T: int
    load: float
    fractions: np.ndarray
    model: StragglerModel
    exact = True

    @property
    def rounds(self) -> int:
        return self.jobs + self.T

    def __init__(self, n: int, jobs: int):
        if not isinstance(jobs, (int, np.integer)) or isinstance(jobs, bool) or jobs < 1:
            raise ScenarioError(f"{_KEY}.jobs", f"must be an integer >= 1, got {jobs!r}")
        self.n = int(n)
        self.jobs = int(jobs)
        self._accepted: list[np.ndarray] = []
        self._round = 0
        self._tasks: list[Task] = []

    # -- the clock --------------------------------------------------------------------
    def clock(self, delays: np.ndarray, mu: float = 1.0) -> RoundClock:
        """Who straggles this round and how long it lasts (the ``mu`` rule + the model).

        Call once per round, after :meth:`assign` and before :meth:`receive`. A round in
        which no worker has a task (SR-SGC's last ``B`` rounds once every job decoded)
        is skipped: it lasts 0 s. A round whose stragglers cannot affect any job but the
        one it decodes on the spot (:meth:`_harmless`, SR-SGC) is accepted without the
        model check and left out of the pattern the model checks later rounds against.

        Args:
            delays: ``[n]`` the round's worker delays.
            mu: straggler tolerance.
        """
        none = np.zeros(self.n, dtype=bool)
        if not self._tasks:
            self._accepted.append(none)
            return RoundClock(0.0, none, False)
        slow = straggler_mask(delays, mu)
        if slow.any() and self._harmless(slow):
            self._accepted.append(none)
            return RoundClock(round_duration(delays, True, mu), slow, False)
        memory = self.model.memory
        past = (np.stack(self._accepted[-memory:], axis=1) if memory and self._accepted
                else np.zeros((self.n, 0), dtype=bool))
        fits = not slow.any() or self.model.fits(past, slow)
        accepted = slow if fits else none
        self._accepted.append(accepted)
        return RoundClock(round_duration(delays, fits, mu), accepted, not fits)

    def _harmless(self, slow: np.ndarray) -> bool:
        """Whether this round's stragglers ``slow`` cannot matter to any other job."""
        return False

    # -- the schedule -----------------------------------------------------------------
    def assign(self, r: int) -> list[Task]:
        """Every task of round ``r`` (rounds are played in order 1, 2, ...)."""
        raise NotImplementedError

    def receive(self, r: int, stragglers: np.ndarray) -> list[JobDecode]:
        """Record the non-stragglers' results of round ``r``; return the newly decodable jobs.

        Raises:
            DecodeFailure: a job reached its deadline undecoded.
        """
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------
    def _next_round(self, r: int) -> None:
        if r != self._round + 1:
            raise ValueError(f"rounds must be played in order: expected {self._round + 1}, "
                             f"got {r}")
        self._round = r

    def encoding(self, tasks: list[Task]) -> RoundEncoding:
        """The round's encoding matrix of ``tasks`` (:func:`round_encoding`): all their
        messages are ``E @ G_r``."""
        return round_encoding(tasks, len(self.fractions))

    def work(self, tasks: list[Task]) -> np.ndarray:
        """``[n]`` each worker's share of the data set computed on in ``tasks``."""
        out = np.zeros(self.n)
        for task in tasks:
            out[task.worker] += self.fractions[task.pieces].sum()
        return out

    def coefficient_sum(self, dec: JobDecode) -> np.ndarray:
        """``[P]`` ``sum_k weights[k] * coeffs(tasks[k])``: all ones when the decode is exact."""
        total = np.zeros(len(self.fractions))
        for w, task in zip(dec.weights, dec.tasks, strict=True):
            np.add.at(total, task.pieces, w * task.coeffs)
        return total


class GradientCodingScheme(Scheme):
    """Gradient coding, one job per round (``T = 0``): decode from any ``n - s`` workers.

    Args:
        code: the ``(n, s)`` gradient code.
        jobs: the number of jobs (= rounds).
        name: the scheme's name in reports.

    References:
        Tandon et al., "Gradient Coding" (ICML 2017).
    """

    T = 0

    def __init__(self, code: GradientCode, jobs: int, name: str = "gc"):
        super().__init__(code.n, jobs)
        self.code = code
        self.name = name
        self.s = code.s
        self.load = code.load
        self.fractions = np.full(code.n, 1.0 / code.n)
        self.model = AtMostS(code.s)
        self._tasks: list[Task] = []

    def _gc_task(self, r: int, worker: int, job: int) -> Task:
        support = self.code.support(worker)
        return Task(r, worker, 0, job, support, self.code.matrix[worker, support])

    def assign(self, r: int) -> list[Task]:
        self._next_round(r)
        self._tasks = ([self._gc_task(r, i, r) for i in range(self.n)]
                       if r <= self.jobs else [])
        return list(self._tasks)

    def receive(self, r: int, stragglers: np.ndarray) -> list[JobDecode]:
        if r > self.jobs:
            return []
        arrived = [t for t in self._tasks if not stragglers[t.worker]]
        try:
            dec = self.code.decoding([t.worker for t in arrived])
        except DecodeError as err:
            raise DecodeFailure(f"{self.name}: job {r} not decodable in round {r}: "
                                f"{err}") from None
        by_worker = {t.worker: t for t in arrived}
        return [JobDecode(r, r, tuple(by_worker[w] for w in dec.rows), dec.a, dec.cond)]


def srsgc_s(B: int, W: int, lam: int) -> int:
    """SR-SGC's stragglers per round for its gradient code: ``ceil(B lambda / (W - 1 + B))``.

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation"
        (ICLR 2023), Section 3.
    """
    return math.ceil(B * lam / (W - 1 + B))


def check_bursty_params(n: int, B: int, W: int, lam: int, *, srsgc: bool) -> None:
    """Validate ``(B, W, lambda)``; one-line :class:`ScenarioError` when wrong.

    Raises:
        ScenarioError: keys ``algorithm.coding.B``, ``.W`` or ``.lam``.
    """
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not is_int(B) or B < 1:
        raise ScenarioError(f"{_KEY}.B", f"must be an integer >= 1, got {B!r}")
    if not is_int(W) or W < B + 1:
        raise ScenarioError(f"{_KEY}.W", f"must be an integer >= B + 1 = {B + 1}, got {W!r}")
    if not is_int(lam) or not 0 <= lam <= n:
        raise ScenarioError(f"{_KEY}.lam", f"must be an integer in [0, n] = [0, {n}] "
                                           f"(distinct stragglers per window), got {lam!r}")
    if srsgc and (W - 1) % B:
        raise ScenarioError(f"{_KEY}.B", f"SR-SGC needs B to divide W - 1; got B = {B}, "
                                         f"W = {W}")


class SRSGC(Scheme):
    """Selective-reattempt sequential gradient coding (SR-SGC), ``T = B``.

    The paper's description, round ``r``:

    - every worker computes its ``(n, s)``-GC task of job ``r``, ``s = ceil(B lambda /
      (W - 1 + B))``;
    - except: if ``v > s`` workers have not delivered job ``r - B``'s task (they straggled
      in round ``r - B``, or were reattempting then), ``v - s`` of them (lowest ids) redo
      that task in round ``r`` instead;
    - the master decodes job ``t`` as soon as ``n - s`` of its tasks arrived (round ``t`` or
      ``t + B``), by ``B_F^T a = 1``.

    The clock (:meth:`Scheme.clock`): a round of the last ``B`` with no re-attempt has
    nothing to compute and is skipped (0 s); a round where every worker computes its own
    job and at most ``s`` straggle is harmless (:meth:`_harmless`) and left out of the
    pattern the ``(B, W, lambda)`` model is checked on; otherwise the master waits for all
    when the stragglers leave the model. Both rules are how the authors' simulation times
    SR-SGC; neither can make a job miss its deadline.

    Args:
        n: workers.
        B, W, lam: the bursty model the scheme is designed for (``B | W - 1``).
        jobs: the number of jobs.
        code: ``"crc"`` or ``"frc"`` for the ``(n, s)`` gradient code.
        seed: CRC's random matrix.

    References:
        Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation"
        (ICLR 2023), Section 3.
    """

    name = "sr-sgc"

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int, code: str = "crc",
                 seed: int = 0):
        super().__init__(n, jobs)
        check_bursty_params(n, B, W, lam, srsgc=True)
        self.B, self.W, self.lam = int(B), int(W), int(lam)
        self.s = srsgc_s(B, W, lam)
        check_code_params(code, n, self.s, _KEY)
        self.code = make_code(code, n, self.s, seed)
        self.T = self.B
        self.load = self.code.load
        self.fractions = np.full(n, 1.0 / n)
        self.model = BurstyModel(self.B, self.W, self.lam)
        self._delivered: dict[int, dict[int, Task]] = {}  # job -> worker -> task
        self._decoded: set[int] = set()
        self._redo: set[int] = set()

    def _harmless(self, slow: np.ndarray) -> bool:
        """Every worker computes job ``r`` and at most ``s`` straggle: job ``r`` decodes in
        this round, and no other job depends on this round's results (job ``r`` is decoded,
        so round ``r + B`` has no re-attempts of it). Such a round is accepted and left out
        of the bursty pattern (the authors' simulation code does the same); the
        state machine behaves exactly as if nobody had straggled in it."""
        return self._round <= self.jobs and not self._redo and int(slow.sum()) <= self.s

    def reattempting(self, r: int) -> np.ndarray:
        """The workers that redo their job ``r - B`` task in round ``r`` (sorted)."""
        old = r - self.B
        if not 1 <= old <= self.jobs or old in self._decoded:
            return np.zeros(0, dtype=int)
        missing = np.setdiff1d(np.arange(self.n), list(self._delivered.get(old, {})))
        excess = missing.size - self.s
        return missing[:excess] if excess > 0 else np.zeros(0, dtype=int)

    def assign(self, r: int) -> list[Task]:
        self._next_round(r)
        redo = set(self.reattempting(r).tolist())
        self._redo = redo
        tasks = []
        for i in range(self.n):
            job = r - self.B if i in redo else r
            if 1 <= job <= self.jobs:
                support = self.code.support(i)
                tasks.append(Task(r, i, 0, job, support, self.code.matrix[i, support]))
        self._tasks = tasks
        return list(tasks)

    def receive(self, r: int, stragglers: np.ndarray) -> list[JobDecode]:
        for t in self._tasks:
            if not stragglers[t.worker]:
                self._delivered.setdefault(t.job, {})[t.worker] = t
        out = []
        for job in (r - self.B, r):
            if not 1 <= job <= self.jobs or job in self._decoded:
                continue
            got = self._delivered.get(job, {})
            if len(got) >= self.n - self.s:
                dec = self.code.decoding(sorted(got))
                out.append(JobDecode(job, r, tuple(got[w] for w in dec.rows), dec.a,
                                     dec.cond))
                self._decoded.add(job)
                self._delivered.pop(job, None)
            elif job == r - self.B:
                raise DecodeFailure(f"sr-sgc: job {job} not decodable by round {r} "
                                    f"({len(got)} of the needed {self.n - self.s} tasks)")
        return out


def msgc_load(n: int, B: int, W: int, lam: int) -> float:
    """M-SGC's normalized load ``(lambda+1)(W-1+B) / (n (B + (W-1)(lambda+1)))``
    (``lambda = n``: no coded part, ``(W - 1 + B) / (n (W - 1))``).

    References:
        Krishnan et al., "Sequential Gradient Coding for Straggler Mitigation"
        (ICLR 2023), Section 4.
    """
    if lam >= n:
        return (W - 1 + B) / (n * (W - 1))
    return (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1)))


class MSGC(Scheme):
    """Multiplexed sequential gradient coding (M-SGC), ``T = W - 2 + B``.

    Job ``t``'s pieces: ``D1`` = ``n (W - 1)`` chunks (chunk ``(i, k)`` is worker ``i``'s
    ``k``-th, piece ``i (W - 1) + k``) and ``D2`` = ``B`` groups of ``n`` partitions (group
    ``g``'s partition ``j`` is piece ``n (W - 1) + g n + j``), sized so every minitask
    costs the same: a chunk is ``f = (lambda+1) / (n (B + (W-1)(lambda+1)))`` of the data,
    a D2 partition ``f / (lambda + 1)`` (a coded task covers ``lambda + 1`` of them).

    The paper's description, round ``r``, worker ``i``, minitask slot ``m = 0 .. W-2+B``
    (job ``t = r - m``):

    - ``m < W - 1``: compute D1 chunk ``(i, m)``;
    - ``m >= W - 1``: if a D1 chunk of job ``t`` from worker ``i`` is still missing (it
      straggled), recompute the first missing one; else compute the ``(n, lambda)``-GC task
      of D2 group ``g = m - (W - 1)``.

    The master decodes job ``t`` at the end of round ``t + T``: the D1 chunks add up, and
    each D2 group is decoded from the ``>= n - lambda`` coded tasks that arrived.
    ``lambda = n``: no D2 (every slot is D1 or idle).

    Args:
        n: workers.
        B, W, lam: the bursty model (``1 <= B < W``, ``0 <= lam <= n``).
        jobs: the number of jobs.
        code: ``"crc"`` or ``"frc"`` for the ``(n, lambda)`` group code.
        seed: CRC's random matrix.

    References:
        Krishnan, Ebrahimi, Khisti, "Sequential Gradient Coding for Straggler Mitigation"
        (ICLR 2023), Section 4.
    """

    name = "m-sgc"

    def __init__(self, n: int, B: int, W: int, lam: int, jobs: int, code: str = "crc",
                 seed: int = 0):
        super().__init__(n, jobs)
        check_bursty_params(n, B, W, lam, srsgc=False)
        self.B, self.W, self.lam = int(B), int(W), int(lam)
        self.T = self.W - 2 + self.B
        self.slots = self.W - 1 + self.B
        self.load = msgc_load(n, self.B, self.W, self.lam)
        self.model = BurstyModel(self.B, self.W, self.lam)
        self.d1 = self.W - 1
        self.coded = self.lam < n
        if self.coded:
            check_code_params(code, n, self.lam, _KEY)
            self.code: GradientCode | None = make_code(code, n, self.lam, seed)
            f = (self.lam + 1) / (n * (self.B + (self.W - 1) * (self.lam + 1)))
            self.fractions = np.concatenate([np.full(n * self.d1, f),
                                             np.full(n * self.B, f / (self.lam + 1))])
        else:
            self.code = None
            self.fractions = np.full(n * self.d1, 1.0 / (n * self.d1))
        self._d1_done: dict[int, np.ndarray] = {}    # job -> [n, W-1] bool
        self._d1_tasks: dict[int, list[Task]] = {}
        self._d2: dict[int, list[dict[int, Task]]] = {}  # job -> group -> worker -> task
        self._decoded: set[int] = set()
        self._tasks: list[Task] = []

    def _job_state(self, job: int) -> np.ndarray:
        if job not in self._d1_done:
            self._d1_done[job] = np.zeros((self.n, self.d1), dtype=bool)
            self._d1_tasks[job] = []
            self._d2[job] = [{} for _ in range(self.B)]
        return self._d1_done[job]

    def assign(self, r: int) -> list[Task]:
        self._next_round(r)
        tasks = []
        for m in range(self.slots):
            job = r - m
            if not 1 <= job <= self.jobs or job in self._decoded:
                continue
            done = self._job_state(job)
            for i in range(self.n):
                if m < self.d1:
                    chunk = m
                else:
                    missing = np.flatnonzero(~done[i])
                    chunk = int(missing[0]) if missing.size else None
                if chunk is not None:
                    tasks.append(Task(r, i, m, job, np.array([i * self.d1 + chunk]),
                                      np.ones(1), "d1"))
                elif self.coded:
                    g = m - self.d1
                    support = self.code.support(i)
                    tasks.append(Task(r, i, m, job, self.n * (self.d1 + g) + support,
                                      self.code.matrix[i, support], "d2"))
        self._tasks = tasks
        return list(tasks)

    def receive(self, r: int, stragglers: np.ndarray) -> list[JobDecode]:
        for t in self._tasks:
            if stragglers[t.worker]:
                continue
            if t.kind == "d1":
                done = self._d1_done[t.job]
                i, k = divmod(int(t.pieces[0]), self.d1)
                if not done[i, k]:
                    done[i, k] = True
                    self._d1_tasks[t.job].append(t)
            else:
                g = int(t.pieces[0]) // self.n - self.d1
                self._d2[t.job][g][t.worker] = t
        out = []
        for job in sorted(self._d1_done):
            dec = self._try_decode(job, r)
            if dec is not None:
                out.append(dec)
        return out

    def _try_decode(self, job: int, r: int) -> JobDecode | None:
        deadline = job + self.T
        d1_ok = bool(self._d1_done[job].all())
        groups = self._d2[job]
        if self.coded and r < deadline:
            return None  # the last D2 group is computed in round t + T
        tasks = list(self._d1_tasks[job]) if d1_ok else []
        weights, cond = [1.0] * len(tasks), 1.0
        problem = "" if d1_ok else (f"{int((~self._d1_done[job]).sum())} D1 chunks "
                                    f"missing")
        for g, got in enumerate(groups if self.coded and not problem else []):
            try:
                dec = self.code.decoding(sorted(got))
            except DecodeError:
                problem = f"D2 group {g} has {len(got)} of the needed {self.n - self.lam}"
                break
            tasks += [got[w] for w in dec.rows]
            weights += dec.a.tolist()
            cond = max(cond, dec.cond)
        if problem:
            if r >= deadline:
                raise DecodeFailure(f"m-sgc: job {job} not decodable by round {r}: {problem}")
            return None
        for d in (self._d1_done, self._d1_tasks, self._d2):
            d.pop(job)
        self._decoded.add(job)
        return JobDecode(job, r, tuple(tasks), np.array(weights), cond)
