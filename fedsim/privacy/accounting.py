"""Privacy accounting for DP-FedAvg and DP-SGD with opacus' accountants (RDP and PRV).

Each round (DP-FedAvg) or step (DP-SGD) is one Poisson-subsampled Gaussian mechanism with
noise multiplier ``z`` (noise std / clipping norm) and sampling rate ``q`` (cohort /
population for client-level DP, batch / local data for sample-level DP). After ``T``
of them the run is ``(epsilon, delta)``-DP; this module asks opacus for ``epsilon``:

- ``"rdp"``: Rényi DP of the sampled Gaussian (Mironov, Talwar, Zhang 2019) composed over
  rounds and converted to ``(epsilon, delta)`` (opacus' ``RDPAccountant`` and its
  ``analysis.rdp``). A valid upper bound; a little loose.
- ``"prv"``: numerical composition of privacy loss random variables (Gopi, Lee, Wutschitz
  2021; opacus' ``PRVAccountant``), tighter; the upper end of its error interval
  (``eps_error``) is returned.

Nothing here re-derives an accountant. ``Accountant.epsilon`` is cheap enough to call
every round: for RDP the per-round RDP curve of each distinct ``(z, q)`` is computed once
by opacus (``compute_rdp`` with ``steps=1``, about 50 ms) and cached; composition over
``T`` rounds is ``T`` times that curve (RDP composes additively, which is what opacus'
``compute_rdp(steps=T)`` computes) and the conversion to ``epsilon`` costs under a
millisecond. PRV recomputes its FFT composition on each call (about 0.1-0.3 s for up to
1000 rounds at ``eps_error = 0.01``); the answer is cached until the next ``step``, so
call it every ``k`` rounds or at the end of a long run.

References:
    Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism"
    (arXiv:1908.10530, 2019).
    Gopi, Lee, Wutschitz, "Numerical Composition of Differential Privacy" (NeurIPS 2021).
    Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016), moments accountant.
    McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
    Models" (ICLR 2018): q = expected cohort / population, one mechanism per round.
    Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch"
    (arXiv:2109.12298, 2021).
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from fedsim.errors import ScenarioError

KINDS = ("rdp", "prv")
DEFAULT_EPS_ERROR = 0.01  # PRV's accepted error on epsilon (opacus' default)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ScenarioError("privacy.accountant", f"unknown accountant {kind!r}; "
                                                  f"allowed: {', '.join(KINDS)}")
    return kind


def _check_z(z: Any) -> float:
    if not (_is_real(z) and math.isfinite(z) and z >= 0):
        raise ScenarioError("privacy.noise_multiplier",
                            f"must be a finite number >= 0, got {z!r}")
    return float(z)


def _check_q(q: Any) -> float:
    if not (_is_real(q) and math.isfinite(q) and 0 < q <= 1):
        raise ScenarioError("privacy.sample_rate",
                            f"must be in (0, 1] (cohort / population), got {q!r}")
    return float(q)


def _check_delta(delta: Any) -> float:
    if not (_is_real(delta) and math.isfinite(delta) and 0 < delta < 1):
        raise ScenarioError("privacy.delta", f"must be in (0, 1), got {delta!r}")
    return float(delta)


def _check_rounds(t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, int | np.integer) or t < 1:
        raise ScenarioError("privacy.rounds", f"must be an integer >= 1, got {t!r}")
    return int(t)


def _check_eps_error(e: Any) -> float:
    if not (_is_real(e) and math.isfinite(e) and e > 0):
        raise ScenarioError("privacy.eps_error", f"must be a finite number > 0, got {e!r}")
    return float(e)


@lru_cache(maxsize=256)
def _unit_rdp(z: float, q: float) -> np.ndarray:
    """The RDP curve of one sampled Gaussian step at opacus' default orders (cached)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    curve = compute_rdp(q=q, noise_multiplier=z, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    curve = np.asarray(curve, dtype=np.float64)
    curve.setflags(write=False)
    return curve


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' RDP-to-(eps, delta) conversion of the composed history."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):
        return math.inf
    rdp = sum(steps * _unit_rdp(z, q) for z, q, steps in history)
    eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def _prv_epsilon(history: list[tuple[float, float, int]], delta: float,
                 eps_error: float) -> float:
    """Opacus' PRV accountant on the history (upper end of its error interval)."""
    from opacus.accountants import PRVAccountant

    if not history:
        return 0.0
    if any(z == 0 for z, _, _ in history):
        return math.inf
    acc = PRVAccountant()
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy/numpy notices from the discretisation
        return float(acc.get_epsilon(delta=delta, eps_error=eps_error))


class Accountant:
    """The privacy spent by a run of Poisson-subsampled Gaussian mechanisms, round by round.

    ``step()`` records one round (or one DP-SGD step) at the current noise multiplier and
    sampling rate; ``epsilon()`` is the ``epsilon`` of ``(epsilon, delta)``-DP after the
    steps so far (0 before the first, ``inf`` with ``z = 0``). Changing ``noise_multiplier``
    or ``sample_rate`` between steps is allowed (the history is heterogeneous, as in
    opacus' accountants).

    Args:
        kind: ``"rdp"`` or ``"prv"``.
        noise_multiplier: ``z >= 0``.
        sample_rate: ``q`` in ``(0, 1]``.
        delta: ``delta`` in ``(0, 1)``.
        eps_error: PRV's accepted error on ``epsilon`` (ignored by RDP).

    Raises:
        ScenarioError: ``privacy.accountant``, ``privacy.noise_multiplier``,
            ``privacy.sample_rate``, ``privacy.delta``, ``privacy.eps_error``.

    References: opacus' ``RDPAccountant`` / ``PRVAccountant`` (Yousefpour et al. 2021);
    Mironov, Talwar, Zhang (2019); Gopi, Lee, Wutschitz (NeurIPS 2021).
    """

    def __init__(self, kind: str, noise_multiplier: float, sample_rate: float, delta: float,
                 eps_error: float = DEFAULT_EPS_ERROR):
        self.kind = _check_kind(kind)
        self.noise_multiplier = _check_z(noise_multiplier)
        self.sample_rate = _check_q(sample_rate)
        self.delta = _check_delta(delta)
        self.eps_error = _check_eps_error(eps_error)
        # [(z, q, steps)], opacus' history format: runs of equal (z, q) merged
        self.history: list[tuple[float, float, int]] = []
        self._cache: tuple[tuple, float] | None = None

    @property
    def steps(self) -> int:
        """The number of steps recorded."""
        return sum(n for _, _, n in self.history)

    def step(self, noise_multiplier: float | None = None, sample_rate: float | None = None,
             n: int = 1) -> None:
        """Record ``n`` rounds at ``noise_multiplier`` / ``sample_rate`` (default: the current
        ones, which a given value replaces for later steps too)."""
        if noise_multiplier is not None:
            self.noise_multiplier = _check_z(noise_multiplier)
        if sample_rate is not None:
            self.sample_rate = _check_q(sample_rate)
        n = _check_rounds(n)
        z, q = self.noise_multiplier, self.sample_rate
        if self.history and self.history[-1][:2] == (z, q):
            self.history[-1] = (z, q, self.history[-1][2] + n)
        else:
            self.history.append((z, q, n))

    def epsilon(self, delta: float | None = None) -> float:
        """``epsilon`` after the recorded steps at ``delta`` (default: the accountant's)."""
        d = self.delta if delta is None else _check_delta(delta)
        key = (tuple(self.history), d)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if self.kind == "rdp":
            eps = _rdp_epsilon(self.history, d)
        else:
            eps = _prv_epsilon(self.history, d, self.eps_error)
        self._cache = (key, eps)
        return eps


def epsilon(kind: str, noise_multiplier: float, sample_rate: float, rounds: int,
            delta: float, eps_error: float = DEFAULT_EPS_ERROR) -> float:
    """``epsilon`` of ``rounds`` Poisson-subsampled Gaussian mechanisms at ``delta``.

    Args:
        kind: ``"rdp"`` or ``"prv"``.
        noise_multiplier: ``z >= 0`` (``inf`` is returned for 0).
        sample_rate: ``q`` in ``(0, 1]``.
        rounds: ``T >= 1``.
        delta: in ``(0, 1)``.
        eps_error: PRV's accepted error (ignored by RDP).

    Example: ``epsilon("rdp", 1.0, 0.1, 100, 1e-3)`` is 5.6405 (to 4 decimals).

    Raises:
        ScenarioError: a parameter out of range (``privacy.<name>``).

    References: opacus' accountants (Yousefpour et al. 2021).
    """
    acc = Accountant(kind, noise_multiplier, sample_rate, delta, eps_error)
    acc.step(n=_check_rounds(rounds))
    return acc.epsilon()


def noise_for_target(target_epsilon: float, sample_rate: float, rounds: int, delta: float,
                     kind: str = "rdp", epsilon_tolerance: float = 0.01,
                     eps_error: float = DEFAULT_EPS_ERROR) -> float:
    """The smallest noise multiplier (to ``epsilon_tolerance``) that keeps ``T`` rounds within
    ``(target_epsilon, delta)``, from opacus' ``get_noise_multiplier``.

    Args:
        target_epsilon: ``> 0``.
        sample_rate: ``q`` in ``(0, 1]``.
        rounds: ``T >= 1``.
        delta: in ``(0, 1)``.
        kind: ``"rdp"`` or ``"prv"``.
        epsilon_tolerance: the bisection's tolerance on ``epsilon`` (opacus' default 0.01);
            the returned ``z`` reaches an ``epsilon`` in ``[target - tol, target]``.
        eps_error: PRV's accepted error (ignored by RDP).

    Returns:
        ``z`` with ``epsilon(kind, z, q, T, delta) <= target_epsilon``.

    Raises:
        ScenarioError: ``privacy.target_epsilon`` when no ``z`` up to opacus' bound (1e6)
            reaches the target, or a parameter out of range.

    References: opacus ``accountants.utils.get_noise_multiplier`` (Yousefpour et al. 2021).
    """
    from opacus.accountants.utils import get_noise_multiplier

    if not (_is_real(target_epsilon) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ScenarioError("privacy.target_epsilon",
                            f"must be a finite number > 0, got {target_epsilon!r}")
    kind = _check_kind(kind)
    q, t, d = _check_q(sample_rate), _check_rounds(rounds), _check_delta(delta)
    if not (_is_real(epsilon_tolerance) and math.isfinite(epsilon_tolerance)
            and epsilon_tolerance > 0):
        raise ScenarioError("privacy.epsilon_tolerance",
                            f"must be a finite number > 0, got {epsilon_tolerance!r}")
    kwargs = {"eps_error": _check_eps_error(eps_error)} if kind == "prv" else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(get_noise_multiplier(
                target_epsilon=float(target_epsilon), target_delta=d, sample_rate=q, steps=t,
                accountant=kind, epsilon_tolerance=float(epsilon_tolerance), **kwargs))
    except (ValueError, ArithmeticError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ScenarioError("privacy.target_epsilon",
                            f"no noise multiplier up to 1e6 reaches epsilon = "
                            f"{target_epsilon:g} at delta = {d:g} over {t} rounds at sample "
                            f"rate {q:g} with the {kind} accountant ({detail}); raise the "
                            f"target or delta, or lower the rounds or sample rate") from None


__all__ = ["KINDS", "Accountant", "epsilon", "noise_for_target"]
