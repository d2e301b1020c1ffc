"""Update-level Byzantine attacks: stages that rewrite the Byzantine rows of ``U [m, d]``.

Every attack here is a ``Stage`` that

- replaces only the rows where ``ctx.byzantine`` is True and returns the honest
  rows bit-identical (the output is a copy; the input is never written);
- may read the whole matrix: attacks that need honest statistics (ALIE, IPM,
  mimic) compute them from the rows where ``ctx.byzantine`` is False;
- draws randomness only from ``ctx.gen`` (the run's ``attack`` stream), so a
  run is reproducible and the attack never shifts another stream;
- costs ``4 * d`` bytes per row on the wire, the size of a normal update
  (a Byzantine client must look like an honest one to the server).

When a round has no Byzantine row, the matrix is returned as is. When it has no
honest row, ALIE and IPM use the statistics of all rows (the attackers' own
true updates, the only ones they know) and mimic leaves the rows unchanged;
no attack raises or produces NaN in that case.

Adding an attack is one factory function here plus one line in
``UPDATE_ATTACKS`` (and in the conformance list of ``tests/test_attacks.py``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.stages.base import FLOAT_BYTES, Ctx, Stage, identity
from fedsim.stages.registry import call_with_params

FLOAT32_MAX = float(torch.finfo(torch.float32).max)

# (U [m, d], byzantine mask [m], ctx) -> replacement rows [f, d] for the f Byzantine rows
RowRule = Callable[[Tensor, Tensor, Ctx], Tensor]


def _attack_stage(rule: RowRule) -> Stage:
    """A stateless stage that writes ``rule``'s rows into the Byzantine rows of a copy of U."""

    def update(updates: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        byz = ctx.byzantine.to(device=updates.device, dtype=torch.bool)  # [m]
        if byz.shape != updates.shape[:1]:
            raise ValueError(
                f"ctx.byzantine has shape {tuple(byz.shape)}, expected ({updates.shape[0]},)"
            )
        if not bool(byz.any()):
            return updates, state
        out = updates.clone()  # honest rows keep their exact bits
        out[byz] = rule(updates, byz, ctx).to(dtype=updates.dtype)
        return out, state

    return Stage(
        init=lambda num_clients, d: None,
        update=update,
        nbytes=lambda d: FLOAT_BYTES * d,
    )


def _reference_rows(updates: Tensor, byz: Tensor) -> Tensor:
    """The honest rows ``[h, d]``, or all rows when there is no honest one."""
    honest = updates[~byz]
    return honest if honest.shape[0] > 0 else updates


def _gaussian(shape: tuple[int, ...], sigma: float, like: Tensor, gen: Any) -> Tensor:
    """``N(0, sigma^2)`` samples drawn from ``gen`` on its device, moved to ``like``'s device."""
    device = gen.device if gen is not None else like.device
    noise = torch.randn(shape, generator=gen, device=device, dtype=like.dtype)
    return sigma * noise.to(like.device)


# ---------------------------------------------------------------- attacks


def none() -> Stage:
    """No attack: rows are sent unchanged (``4 * d`` bytes per row)."""
    return identity()


def sign_flip(scale: float = 1.0) -> Stage:
    """Byzantine rows sent as ``-scale * g`` (sign flip; ``scale=100`` is a scaled flip).

    Args:
        scale: the factor; 1 flips the sign, 100 also blows the update up.

    Returns:
        A Stage.

    References: Allen-Zhu et al., "Byzantine-Resilient Non-Convex Stochastic
    Gradient Descent" (ICLR 2021), sign flipping; Karimireddy, He, Jaggi,
    "Learning from History for Byzantine Robust Optimization" (ICML 2021), bit flipping.
    """
    scale = _real(scale, "scale")
    return _attack_stage(lambda u, byz, ctx: -scale * u[byz])


def gaussian_noise(sigma: float) -> Stage:
    """Byzantine rows sent as ``g + N(0, sigma^2 I)`` (additive Gaussian noise).

    Args:
        sigma: the noise's standard deviation, >= 0.

    Returns:
        A Stage drawing its noise from ``ctx.gen``.

    References: a common noise baseline, the additive form of the Gaussian
    Byzantine workers of Blanchard et al., "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent" (NeurIPS 2017).
    """
    sigma = _real(sigma, "sigma", low=0.0)

    def rule(u: Tensor, byz: Tensor, ctx: Ctx) -> Tensor:
        rows = u[byz]
        return rows + _gaussian(tuple(rows.shape), sigma, u, ctx.gen)

    return _attack_stage(rule)


def gaussian_replace(sigma: float) -> Stage:
    """Byzantine rows replaced by ``N(0, sigma^2 I)`` (a random Gaussian update).

    Args:
        sigma: the standard deviation, >= 0.

    Returns:
        A Stage drawing its samples from ``ctx.gen``.

    References: Blanchard et al., "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent" (NeurIPS 2017), the Gaussian Byzantine workers.
    """
    sigma = _real(sigma, "sigma", low=0.0)

    def rule(u: Tensor, byz: Tensor, ctx: Ctx) -> Tensor:
        return _gaussian((int(byz.sum()), u.shape[1]), sigma, u, ctx.gen)

    return _attack_stage(rule)


def alie_z(n: int, f: int) -> float:
    """ALIE's default ``z``: ``s = floor(n/2 + 1) - f``, ``z = Phi^{-1}((n - s) / n)``.

    ``s`` is the number of honest rows the attackers need on their side; it is
    clamped to at least 1 so that ``z`` stays finite when the attackers already
    hold a majority (``s <= 0`` would give ``Phi^{-1}(>= 1) = inf``). With a
    single row (``n = 1``) ``z`` is 0.

    Args:
        n: number of rows in the round (honest + Byzantine).
        f: number of Byzantine rows.

    Returns:
        A finite float.

    References: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing
    Defenses For Distributed Learning" (NeurIPS 2019).
    """
    if n <= 1:
        return 0.0
    s = max(math.floor(n / 2 + 1) - f, 1)
    p = (n - s) / n  # in (0, 1) since 1 <= s <= n - 1 for f >= 1
    p = min(max(p, 1.0 / (2 * n)), 1.0 - 1.0 / (2 * n))  # also finite when f = 0
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def alie(z: float | None = None) -> Stage:
    """A Little Is Enough: every Byzantine row is ``mu - z * sigma`` coordinate-wise.

    ``mu`` and ``sigma`` are the honest rows' mean and standard deviation per
    coordinate (unbiased, ``correction=1``; 0 when there is one honest row; all
    rows' statistics when there is none).

    Args:
        z: how many standard deviations to move; ``None`` uses the paper's
            default for the round, ``alie_z(m, f)`` with ``m`` rows of which
            ``f`` are Byzantine.

    Returns:
        A Stage.

    References: Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing
    Defenses For Distributed Learning" (NeurIPS 2019).
    """
    z_fixed = None if z is None else _real(z, "z")

    def rule(u: Tensor, byz: Tensor, ctx: Ctx) -> Tensor:
        ref = _reference_rows(u, byz)  # [h, d]
        mu = ref.mean(dim=0)
        sigma = ref.std(dim=0, correction=1) if ref.shape[0] > 1 else torch.zeros_like(mu)
        f = int(byz.sum())
        zz = z_fixed if z_fixed is not None else alie_z(u.shape[0], f)
        return (mu - zz * sigma).expand(f, -1)

    return _attack_stage(rule)


def ipm(epsilon: float) -> Stage:
    """Inner Product Manipulation: every Byzantine row is ``-epsilon * mean(honest rows)``.

    Small ``epsilon`` (0.1) slips past robust aggregators while making the inner
    product of the aggregate with the true gradient negative for mean-like
    rules; large ``epsilon`` (100) overwhelms the plain mean.

    Args:
        epsilon: the factor, >= 0.

    Returns:
        A Stage (all rows' mean when there is no honest row).

    References: Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant
    SGD by Inner Product Manipulation" (UAI 2020).
    """
    epsilon = _real(epsilon, "epsilon", low=0.0)

    def rule(u: Tensor, byz: Tensor, ctx: Ctx) -> Tensor:
        mu = _reference_rows(u, byz).mean(dim=0)
        return (-epsilon * mu).expand(int(byz.sum()), -1)

    return _attack_stage(rule)


def mimic() -> Stage:
    """Mimic: every Byzantine row copies one honest row, the one most off-centre.

    Variant: each round, the honest rows are centred (``C = H - mean``) and the
    direction of maximum variance is their top principal direction ``v``. The
    copied row is the honest row with the largest ``|<C_i, v>|`` (ties: the
    lowest row index). The projections are read off the top eigenvector of the
    small Gram matrix ``C C^T`` (``[h, h]``, float64), so no ``d x d`` matrix is
    formed, and the absolute value makes the choice independent of the
    eigenvector's sign. Deterministic, no randomness; with no honest row the
    rows are left unchanged. The paper fixes the mimicked worker after a
    warm-up; re-choosing each round suits client sampling, where a fixed
    client is often not in the cohort.

    Returns:
        A Stage.

    References: Karimireddy, He, Jaggi, "Byzantine-Robust Learning on
    Heterogeneous Datasets via Bucketing" (ICLR 2022), the mimic attack.
    """

    def rule(u: Tensor, byz: Tensor, ctx: Ctx) -> Tensor:
        honest = u[~byz]  # [h, d]
        f = int(byz.sum())
        if honest.shape[0] == 0:
            return u[byz]
        return honest[_most_off_centre(honest)].expand(f, -1)

    return _attack_stage(rule)


def _most_off_centre(honest: Tensor) -> int:
    """Index of the row with the largest |projection| on the top principal direction."""
    if honest.shape[0] == 1:
        return 0
    c = (honest - honest.mean(dim=0)).to(torch.float64)  # [h, d]
    gram = c @ c.T  # [h, h]
    _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    return int(vecs[:, -1].abs().argmax())


# ---------------------------------------------------------------- registry

UPDATE_ATTACKS: dict[str, Callable[..., Stage]] = {
    "none": none,
    "sign_flip": sign_flip,
    "gaussian_noise": gaussian_noise,
    "gaussian_replace": gaussian_replace,
    "alie": alie,
    "ipm": ipm,
    "mimic": mimic,
}


def build_update_attack(name: str, params: dict[str, Any] | None = None) -> Stage:
    """Build the update attack ``name`` with keyword ``params`` (from a scenario).

    Args:
        name: a key of ``UPDATE_ATTACKS``.
        params: the factory's keyword arguments, e.g. ``{"scale": 100}``.

    Returns:
        A Stage.

    Raises:
        ScenarioError: ``attack.name`` for an unknown attack; ``attack.params.<p>``
            for an unknown, missing or invalid parameter.
    """
    if name not in UPDATE_ATTACKS:
        raise ScenarioError(
            "attack.name", f"unknown attack {name!r}; allowed: {', '.join(UPDATE_ATTACKS)}"
        )
    return call_with_params(UPDATE_ATTACKS[name], dict(params or {}), "attack.params",
                            f"attack {name!r}")


def _real(value: Any, key: str, low: float | None = None) -> float:
    """``value`` as a float, finite in float32 (>= ``low`` if given).

    Raises:
        ScenarioError: on ``attack.params.<key>`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ScenarioError(f"attack.params.{key}", f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ScenarioError(f"attack.params.{key}", f"must be finite, got {value}")
    if abs(value) > FLOAT32_MAX:  # rows are float32: the attack itself would overflow
        raise ScenarioError(f"attack.params.{key}", f"must be at most {FLOAT32_MAX:.6g} in "
                                                    f"magnitude (float32), got {value:g}")
    if low is not None and value < low:
        raise ScenarioError(f"attack.params.{key}", f"must be >= {low}, got {value}")
    return value
