"""The baselines gradient coding is compared against (numpy only).

- **Wait for all** (:func:`wait_for_all`): one partition per worker, the master waits for
  every worker each round: exact, but every round lasts as long as its slowest worker.
  It is gradient coding with ``s = 0`` (``B = I``): the ``mu`` rule finds a straggler,
  the pattern does not fit "no stragglers", and the master waits (counted as a wait).
- **Ignore stragglers** (:class:`IgnoreStragglers`): one partition per worker; the master
  waits for the fastest ``n - s`` workers and uses ``n / (n - s)`` times the sum of their
  gradients: fast, but a biased estimate of the full gradient (the partitions of slow
  workers are left out, and slow workers are often the same ones).

References:
    Tandon et al., "Gradient Coding" (ICML 2017), Section 6 (the "naive" and "ignoring
    stragglers" schemes); Krishnan et al., "Sequential Gradient Coding for Straggler
    Mitigation" (ICLR 2023), Section 5.
"""

from __future__ import annotations

import numpy as np

from fedsim.coding.codes import make_code
from fedsim.coding.sequential import (
    GradientCodingScheme,
    JobDecode,
    RoundClock,
    Scheme,
    Task,
)
from fedsim.errors import ScenarioError
from fedsim.network.stragglers import AtMostS


def wait_for_all(n: int, jobs: int) -> GradientCodingScheme:
    """Plain synchronous distributed SGD: worker ``i`` holds partition ``i``; wait for all.

    References:
        Tandon et al., "Gradient Coding" (ICML 2017), Section 6 ("naive" scheme).
    """
    return GradientCodingScheme(make_code("frc", n, 0), jobs, name="wait-for-all")


class IgnoreStragglers(Scheme):
    """Use the fastest ``n - s`` workers' gradients, rescaled by ``n / (n - s)`` (biased).

    The round lasts until the ``(n - s)``-th fastest worker returns (no ``mu`` rule);
    the ``s`` slowest (ties: the higher ids) are dropped.

    Args:
        n: workers (one partition each).
        s: workers ignored per round, ``0 <= s < n``.
        jobs: rounds.

    References:
        Tandon et al., "Gradient Coding" (ICML 2017), Section 6 ("ignoring stragglers").
    """

    name = "ignore-stragglers"
    T = 0
    exact = False

    def __init__(self, n: int, s: int, jobs: int):
        super().__init__(n, jobs)
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or not 0 <= s < n:
            raise ScenarioError("algorithm.coding.s", f"must be an integer in [0, n - 1] = "
                                                      f"[0, {n - 1}], got {s!r}")
        self.s = int(s)
        self.load = 1.0 / n
        self.fractions = np.full(n, 1.0 / n)
        self.model = AtMostS(self.s)
        self._tasks: list[Task] = []

    def clock(self, delays: np.ndarray, mu: float = 1.0) -> RoundClock:
        delays = np.asarray(delays, dtype=float)
        order = np.argsort(delays, kind="stable")
        dropped = np.zeros(self.n, dtype=bool)
        dropped[order[self.n - self.s:]] = True
        self._accepted.append(dropped)
        return RoundClock(float(delays[order[self.n - self.s - 1]]), dropped, False)

    def assign(self, r: int) -> list[Task]:
        self._next_round(r)
        self._tasks = ([Task(r, i, 0, r, np.array([i]), np.ones(1)) for i in range(self.n)]
                       if r <= self.jobs else [])
        return list(self._tasks)

    def receive(self, r: int, stragglers: np.ndarray) -> list[JobDecode]:
        if r > self.jobs:
            return []
        kept = tuple(t for t in self._tasks if not stragglers[t.worker])
        return [JobDecode(r, r, kept, np.full(len(kept), self.n / len(kept)), 1.0)]
