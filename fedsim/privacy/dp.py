"""Client-level differential privacy for federated averaging (DP-FedAvg).

Three pieces of the update pipeline (``fedsim.stages.base``):

- ``clip_rows(C)`` (uplink ``Stage``): every client's update row scaled to norm at most
  ``C``, so one client moves the sum of rows by at most ``C`` (its L2 sensitivity).
- ``local_noise(z, C)`` (uplink ``Stage``): every row gets ``N(0, (zC)^2 I)`` before it
  leaves the client (local DP: the server is not trusted; each row alone is a Gaussian
  mechanism of sensitivity ``2C``, the client's data replaced by any other, i.e. noise
  multiplier ``z / 2`` for the accountant).
- ``central_noise(z, C, expected_cohort)`` (``ServerStage``): the trusted server adds
  ``N(0, (zC)^2 I)`` to the *sum* of the clipped rows, then divides. This is DP-FedAvg.

Which estimator ``central_noise`` implements. The aggregate it receives must be the
**unweighted** mean of the ``m`` clipped rows of the round (``ctx.weights`` all equal;
the stage refuses unequal weights, because a sample-count-weighted mean lets one client
with a large count move the aggregate by far more than ``C / m`` and makes the denominator
data-dependent). From that mean it rebuilds the sum ``S = m * u`` and releases

- with ``expected_cohort = q N`` given: ``(S + N(0, (zC)^2 I)) / (qN)``, McMahan et al.'s
  fixed-denominator estimator ``f~_f`` with every weight ``w_k = 1`` (sensitivity of
  ``S / (qN)`` is ``C / (qN)``; unbiased for the population mean under Poisson sampling
  with rate ``q``, and the accountant's ``q`` is exactly the sampling rate). Use this
  with Poisson (independent, rate ``q``) client sampling.
- with ``expected_cohort = None``: ``(S + N(0, (zC)^2 I)) / m``, the noise ``zC / m`` on the
  mean of the realised cohort. This is DP when ``m`` is public and data-independent, i.e.
  a cohort of fixed size ``m`` drawn uniformly without replacement (fedsim's default
  selection); the Poisson-based accountant with ``q = m / N`` is then the usual
  approximation (sampling without replacement is analysed under replacement adjacency).

Sensitivity bounds hold only for the plain (unweighted) mean; a robust aggregator
(median, Krum, geometric median) has a different sensitivity and this noise does not
make it DP. Stragglers and dropouts change ``m``; with ``expected_cohort`` the
denominator stays fixed and the estimate is just smaller in that round.

References:
    McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
    Models" (ICLR 2018), Algorithm 1 and Section 2 (estimators ``f~_f``, ``f~_c``).
    Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016), Gaussian mechanism
    with clipping.
    Dwork, Roth, "The Algorithmic Foundations of Differential Privacy" (2014), Appendix A.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.limits import FLOAT32_MAX
from fedsim.stages.base import FLOAT_BYTES, Ctx, ServerStage, Stage
from fedsim.stages.numerics import row_norms

CLIP_KEY = "privacy.clip"
NOISE_KEY = "privacy.noise_multiplier"
COHORT_KEY = "privacy.expected_cohort"
WEIGHTS_KEY = "privacy.weighting"


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_clip(clip: Any) -> float:
    """The clipping norm ``C`` as a float: finite and ``> 0`` (and representable in float32).

    Raises:
        ScenarioError: ``privacy.clip`` otherwise.
    """
    if not (_is_real(clip) and math.isfinite(clip) and 0 < clip <= FLOAT32_MAX):
        raise ScenarioError(CLIP_KEY, f"must be a finite number > 0 (the L2 clipping norm), "
                                      f"got {clip!r}")
    return float(clip)


def check_noise_multiplier(z: Any, clip: float | None = None) -> float:
    """The noise multiplier ``z`` as a float: finite and ``>= 0``; ``z * C`` finite in float32.

    Raises:
        ScenarioError: ``privacy.noise_multiplier`` otherwise.
    """
    if not (_is_real(z) and math.isfinite(z) and z >= 0):
        raise ScenarioError(NOISE_KEY, f"must be a finite number >= 0 (noise std / clip norm), "
                                       f"got {z!r}")
    if clip is not None and z * clip > FLOAT32_MAX:
        raise ScenarioError(NOISE_KEY, f"noise std z * clip = {z * clip:.6g} overflows float32 "
                                       f"(max {FLOAT32_MAX:.6g})")
    return float(z)


def clip_to_norm(rows: Tensor, clip: float) -> Tensor:
    """Every row of ``rows [m, d]`` scaled to L2 norm at most ``clip``; same dtype.

    A row of norm ``<= clip`` is returned unchanged; a longer row ``x`` becomes
    ``x * (clip / ||x||)``, the factor and product in float64 so that rows whose float32
    norm overflows (entries near 1e38) or underflows are clipped correctly. A row holding
    ``+-inf`` entries becomes the limit of clipping: ``clip * sign / sqrt(k)`` on its ``k``
    infinite entries, zero elsewhere. A row holding ``nan`` becomes zero, so that the
    output norm is at most ``clip`` whatever the input (a DP clipper must bound every row).

    Args:
        rows: ``[m, d]`` floating point.
        clip: the norm bound ``C > 0``.

    Returns:
        ``[m, d]`` rows of norm ``<= clip`` (up to one rounding of the output dtype).

    References: Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016), Eq. for
    ``g / max(1, ||g|| / C)``; Blue, ACM TOMS 4 (1978), scaled norms.
    """
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        return rows
    norms = row_norms(rows)  # [m] float64, overflow-safe
    over = ~(norms <= clip)  # longer rows, and inf / nan norms
    if not bool(over.any()):
        return rows
    out = rows.clone()
    idx = over.nonzero()[:, 0]
    r = rows.index_select(0, idx).double()  # [k, d]
    n = norms[idx]
    has_nan = torch.isnan(r).any(dim=1)
    infs = torch.isinf(r)
    has_inf = infs.any(dim=1) & ~has_nan
    finite = ~has_nan & ~has_inf
    fixed = torch.zeros_like(r)
    fixed[finite] = r[finite] * (clip / n[finite])[:, None]
    if bool(has_inf.any()):
        inf_rows = infs[has_inf]
        k = inf_rows.sum(dim=1, keepdim=True).double()
        fixed[has_inf] = torch.where(inf_rows, torch.sign(r[has_inf]) * (clip / k.sqrt()),
                                     torch.zeros_like(k))
    out[idx] = fixed.to(rows.dtype)
    return out


def clip_rows(clip: float) -> Stage:
    """Uplink stage: each client's update row clipped to L2 norm at most ``clip``.

    Pseudo-code (McMahan et al. 2018, Algorithm 1, ``ClipFn``): ``Delta_k <- Delta_k *
    min(1, C / ||Delta_k||)``. Overflow-safe (``clip_to_norm``): rows of huge, infinite or
    nan entries come out with norm ``<= C``.

    Args:
        clip: ``C > 0``, the per-client L2 bound (the sensitivity of the sum of rows).

    Returns:
        A ``Stage`` without state; a row costs ``4 d`` bytes (float32).

    Raises:
        ScenarioError: ``privacy.clip`` not a finite number ``> 0``.

    References: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
    Language Models" (ICLR 2018), Algorithm 1 (flat clipping).
    """
    c = check_clip(clip)

    def update(rows: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        return clip_to_norm(rows, c), state

    return Stage(init=lambda num_clients, d: None, update=update,
                 nbytes=lambda d: FLOAT_BYTES * d)


def gaussian(shape: tuple[int, ...], std: float, like: Tensor, gen: torch.Generator) -> Tensor:
    """``N(0, std^2)`` of ``shape`` drawn from ``gen`` (on its device), in ``like``'s dtype and
    on ``like``'s device."""
    noise = torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype)
    return noise.mul_(std).to(like.device)


def local_noise(noise_multiplier: float, clip: float) -> Stage:
    """Uplink stage: every row plus ``N(0, (z C)^2 I)`` drawn from ``ctx.gen`` (local DP).

    Put it after ``clip_rows(C)``: each released row is then a Gaussian mechanism on the
    client's own update with sensitivity ``2C`` (local DP compares any two data of the
    client), i.e. noise multiplier ``z / 2`` for the accountant (with ``q = 1``). The
    server's mean of ``m`` such rows carries noise of std ``zC / sqrt(m)`` per coordinate,
    ``sqrt(m)`` times more than ``central_noise`` at the same ``z``: the price of not
    trusting the server.

    Args:
        noise_multiplier: ``z >= 0``.
        clip: ``C > 0``, the clipping norm of the stage before.

    Returns:
        A ``Stage`` without state; a row costs ``4 d`` bytes.

    Raises:
        ScenarioError: ``privacy.noise_multiplier`` (``z < 0``) or ``privacy.clip``.

    References: Dwork, Roth, "The Algorithmic Foundations of Differential Privacy" (2014),
    Gaussian mechanism (Appendix A); Kasiviswanathan, Lee, Nissim, Raskhodnikova, Smith,
    "What Can We Learn Privately?" (FOCS 2008), the local model.
    """
    c = check_clip(clip)
    z = check_noise_multiplier(noise_multiplier, c)
    std = z * c

    def update(rows: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        if std == 0:
            return rows, state
        return rows + gaussian(tuple(rows.shape), std, rows, ctx.gen), state

    return Stage(init=lambda num_clients, d: None, update=update,
                 nbytes=lambda d: FLOAT_BYTES * d)


def central_noise(noise_multiplier: float, clip: float,
                  expected_cohort: float | None = None) -> ServerStage:
    """Server stage: DP-FedAvg's Gaussian noise ``N(0, (zC)^2 I)`` on the sum of clipped rows.

    Input: ``u [d]``, the unweighted mean of the ``m = len(ctx.weights)`` rows of the round,
    each clipped to norm ``C`` by ``clip_rows(C)``. Output, with ``S = m u``:

    - ``expected_cohort = qN`` (fixed denominator, McMahan et al.'s ``f~_f`` with unit
      weights): ``(S + N(0, (zC)^2 I)) / (qN)``; the noise std on the output is ``zC / (qN)``.
    - ``expected_cohort = None`` (fixed-size cohort, ``m`` public): ``(S + N(0, (zC)^2 I)) / m``,
      noise std ``zC / m``.

    The noise is drawn from ``ctx.gen`` even when ``m = 0`` (with ``expected_cohort``, an
    empty round releases pure noise, as the mechanism requires).

    Args:
        noise_multiplier: ``z >= 0``; the accountant's noise multiplier.
        clip: ``C > 0``, the clipping norm of the uplink.
        expected_cohort: ``qN > 0``, the expected number of clients per round (population
            size times sampling rate); None divides by the realised ``m``.

    Returns:
        A ``ServerStage`` without state; the broadcast costs ``4 d`` bytes.

    Raises:
        ScenarioError: ``privacy.noise_multiplier``, ``privacy.clip``,
            ``privacy.expected_cohort`` out of range at construction; ``privacy.weighting``
            at a round whose ``ctx.weights`` are unequal (a weighted mean has no
            sensitivity bound ``C / m``: aggregate with uniform weights).

    References: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
    Language Models" (ICLR 2018), Algorithm 1 (``M.sigma = z S / (q W)``) and Section 2.
    """
    c = check_clip(clip)
    z = check_noise_multiplier(noise_multiplier, c)
    if expected_cohort is not None and not (
            _is_real(expected_cohort) and math.isfinite(expected_cohort) and expected_cohort > 0):
        raise ScenarioError(COHORT_KEY, f"must be a finite number > 0 (sampling rate times "
                                        f"population) or absent, got {expected_cohort!r}")
    std = z * c

    def update(u: Tensor, state: None, ctx: Ctx) -> tuple[Tensor, None]:
        w = ctx.weights
        m = int(w.shape[0])
        if m > 1 and not bool((w == w[0]).all()):
            raise ScenarioError(WEIGHTS_KEY, "central DP noise is calibrated for the unweighted "
                                             "mean of clipped rows; got unequal aggregation "
                                             "weights (sample counts): aggregate with uniform "
                                             "weights")
        if expected_cohort is None and m == 0:
            raise ValueError("central_noise without expected_cohort needs at least one row "
                             "(the denominator is the number of rows aggregated)")
        noise = gaussian(tuple(u.shape), std, u, ctx.gen) if std else torch.zeros_like(u)
        if expected_cohort is None:
            return u + noise / m, state  # (S + noise) / m with S = m u
        mean = u * (m / float(expected_cohort)) if m else torch.zeros_like(u)  # S / (qN)
        return mean + noise / float(expected_cohort), state

    return ServerStage(init=lambda d: None, update=update, nbytes=lambda d: FLOAT_BYTES * d)


__all__ = ["central_noise", "check_clip", "check_noise_multiplier", "clip_rows",
           "clip_to_norm", "gaussian", "local_noise"]
