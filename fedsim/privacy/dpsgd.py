"""Sample-level DP-SGD inside local training, batched over clients with ``torch.func``.

One DP-SGD step of Abadi et al. for a whole cohort at once:

1. per-sample gradients ``g_ij`` of each sample ``j`` of each client ``i``'s minibatch:
   ``vmap(grad(loss of one sample))`` over the samples, vmapped again over clients
   (parameters stacked ``[m, ...]``, inputs ``[m, B, ...]``);
2. each ``g_ij`` clipped to L2 norm ``C``, the norm taken over all parameters together
   (opacus' flat clipping): ``g_ij * min(1, C / ||g_ij||)``;
3. per client, the sum of the clipped gradients of its real samples plus
   ``N(0, (zC)^2 I)`` from the caller's ``torch.Generator``;
4. divided by the batch size -- opacus' ``expected_batch_size`` convention for
   ``loss_reduction="mean"``: a fixed, data-independent number (the batch size, or
   ``q n_i`` under Poisson sampling), not the realised count;
5. an SGD step ``w <- w - lr * g~``.

Padded minibatches (clients with fewer samples than the widest one) carry a mask
``[m, B]``: a padded slot contributes zero gradient and is not counted by the default
divisor (the number of real samples of the client's minibatch). Clients for which the
step does not exist (``active`` False) are returned unchanged; their noise is drawn and
discarded, so the noise stream does not depend on which clients are active.

The per-sample gradients equal opacus' ``GradSampleModule`` ``grad_sample`` and the step
equals ``DPOptimizer`` + ``torch.optim.SGD`` on the same batch (``tests/test_dpsgd.py``),
up to opacus' ``1e-6`` added to the norm in the clipping factor.

Memory: the per-sample gradients of a chunk are ``m * B * d`` floats at once; a caller
training large cohorts chunks the clients (as ``fedsim.population`` does).

Models with BatchNorm are refused (a per-sample gradient through batch statistics is not
per sample; opacus refuses them too: use GroupNorm). A model that draws random numbers
(Dropout) needs ``randomness="different"`` and draws from torch's global RNG; seed it (as
``fedsim.population`` does with ``torch.random.fork_rng``) for reproducible runs.

References:
    Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning with
    Differential Privacy" (CCS 2016), Algorithm 1.
    Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch"
    (arXiv:2109.12298, 2021): flat clipping, expected batch size, per-sample gradients.
    PyTorch, "Per-sample-gradients" tutorial for ``torch.func`` (vmap of grad).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedsim.privacy.dp import check_clip, check_noise_multiplier

LossFn = Callable[[Tensor, Tensor], Tensor]  # (output [1, ...], target [1, ...]) -> scalar


def _check_model(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"DP-SGD needs per-sample gradients; {type(mod).__name__} mixes "
                             f"the samples of a batch (use GroupNorm or LayerNorm)")


def per_sample_grads(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    randomness: str = "error",
) -> dict[str, Tensor]:
    """The gradient of each sample's own loss, for every client: ``{name: [m, B, ...]}``.

    Args:
        model: the module whose ``forward`` maps a batch ``[b, ...]`` to outputs; its own
            parameter values are not used (``torch.func.functional_call``).
        params: ``{name: [m, ...]}``, client ``i``'s parameters in row ``i`` (the names of
            ``model.named_parameters()``; a subset keeps the others at the model's values).
        x: ``[m, B, ...]`` inputs, client ``i``'s minibatch in row ``i``.
        y: ``[m, B, ...]`` targets.
        loss_fn: ``loss_fn(output [1, ...], target [1, ...])`` the loss of one sample (a
            mean-reduced loss of a batch of one); cross-entropy by default.
        randomness: ``vmap``'s randomness for models drawing random numbers ("error",
            "different", "same").

    Returns:
        ``{name: [m, B, ...]}`` float tensors: ``grad_w loss_fn(model(w_i, x_ij), y_ij)``.

    References: Abadi et al. (CCS 2016), Algorithm 1 (per-example gradient ``g_t(x_i)``).
    """
    _check_model(model)
    names = tuple(params)

    def sample_loss(p: dict[str, Tensor], xs: Tensor, ys: Tensor) -> Tensor:
        out = functional_call(model, p, (xs.unsqueeze(0),))
        return loss_fn(out, ys.unsqueeze(0))

    over_samples = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness=randomness)
    over_clients = vmap(over_samples, in_dims=(0, 0, 0), randomness=randomness)
    g = over_clients({k: params[k] for k in names}, x, y)
    return {k: g[k] for k in names}


def clip_per_sample(grads: Mapping[str, Tensor], clip: float,
                    mask: Tensor | None = None) -> tuple[dict[str, Tensor], Tensor]:
    """Per-sample gradients ``{name: [m, B, ...]}`` clipped to flat L2 norm ``clip`` and summed
    over the real samples of each client.

    Args:
        grads: ``per_sample_grads``' output.
        clip: ``C > 0``.
        mask: ``[m, B]`` 1 for a real sample, 0 for padding (None: all real).

    Returns:
        ``({name: [m, ...]} sums of clipped gradients, [m, B] per-sample norms before
        clipping)``. A per-sample norm that is not finite yields a zero contribution.

    References: Abadi et al. (CCS 2016), Algorithm 1 (clip gradient); opacus
    ``DPOptimizer.clip_and_accumulate`` (flat clipping over all parameters).
    """
    gs = list(grads.values())
    m, b = gs[0].shape[:2]
    # [m, B] in float64: squares of float32 norms cannot overflow there
    per_param = [torch.linalg.vector_norm(g.reshape(m, b, -1), dim=-1, dtype=torch.float64)
                 for g in gs]
    norms = torch.linalg.vector_norm(torch.stack(per_param, -1), dim=-1)
    factor = torch.where(norms > clip, clip / norms, torch.ones_like(norms))
    factor = torch.where(torch.isfinite(norms), factor, torch.zeros_like(norms))
    if mask is not None:
        factor = factor * mask.to(factor)
    out = {}
    for k, g in grads.items():
        f = factor.to(g.dtype)
        out[k] = torch.einsum("mb,mb...->m...", f, torch.nan_to_num(g, 0.0, 0.0, 0.0))
    return out, norms


def private_grad(
    grads: Mapping[str, Tensor],
    clip: float,
    noise_multiplier: float,
    gen: torch.Generator,
    mask: Tensor | None = None,
    expected_batch_size: float | Tensor | None = None,
) -> dict[str, Tensor]:
    """DP-SGD's noised mean gradient per client from per-sample gradients ``[m, B, ...]``.

    ``g~_i = (sum_j clip_C(g_ij) + N(0, (zC)^2 I)) / n_i`` for every client ``i``; the noise
    is drawn from ``gen`` parameter by parameter (in ``grads``' order) as one ``[m, ...]``
    tensor each, on ``gen``'s device.

    Args:
        grads: ``{name: [m, B, ...]}`` per-sample gradients.
        clip: ``C > 0``.
        noise_multiplier: ``z >= 0``.
        gen: the noise stream.
        mask: ``[m, B]`` real samples (None: all).
        expected_batch_size: the divisor ``n_i``: a number, or ``[m]`` one per client; None
            takes the real samples of each minibatch (``mask.sum(1)``, at least 1; ``B``
            without a mask), which is opacus' ``expected_batch_size`` for a fixed batch size.
            Under Poisson sampling pass ``q * n_i`` so the divisor is data-independent.

    Returns:
        ``{name: [m, ...]}`` the noised gradients.

    References: Abadi et al. (CCS 2016), Algorithm 1 (add noise); opacus ``DPOptimizer``
    (``add_noise``, ``scale_grad`` with ``loss_reduction="mean"``).
    """
    c = check_clip(clip)
    z = check_noise_multiplier(noise_multiplier, c)
    sums, _ = clip_per_sample(grads, c, mask)
    first = next(iter(grads.values()))
    m, b = first.shape[:2]
    if expected_batch_size is None:
        denom = (mask.to(first.dtype).sum(1).clamp_min(1.0) if mask is not None
                 else torch.full((m,), float(b), dtype=first.dtype, device=first.device))
    elif isinstance(expected_batch_size, Tensor):
        denom = expected_batch_size.to(device=first.device, dtype=first.dtype).expand(m)
    else:
        if not (isinstance(expected_batch_size, int | float) and expected_batch_size > 0
                and math.isfinite(expected_batch_size)):
            raise ValueError(f"expected_batch_size must be a finite number > 0, "
                             f"got {expected_batch_size!r}")
        denom = torch.full((m,), float(expected_batch_size), dtype=first.dtype,
                           device=first.device)
    std = z * c
    out = {}
    for k, s in sums.items():
        if std:
            noise = torch.randn(tuple(s.shape), generator=gen, device=gen.device,
                                dtype=s.dtype).mul_(std).to(s.device)
            s = s + noise
        out[k] = s / denom.view(m, *([1] * (s.dim() - 1)))
    return out


def dp_sgd_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    clip: float,
    noise_multiplier: float,
    gen: torch.Generator,
    loss_fn: LossFn = F.cross_entropy,
    mask: Tensor | None = None,
    expected_batch_size: float | Tensor | None = None,
    active: Tensor | None = None,
    randomness: str = "error",
) -> dict[str, Tensor]:
    """One DP-SGD step for ``m`` clients at once; returns the new parameters ``{name: [m, ...]}``.

    ``w_i <- w_i - lr * (sum_j clip_C(grad loss(w_i; x_ij, y_ij)) + N(0, (zC)^2 I)) / n_i``.

    Args:
        model: the module (its parameter values are not used; BatchNorm is refused).
        params: ``{name: [m, ...]}`` each client's parameters (not modified).
        x: ``[m, B, ...]`` each client's minibatch (padded to a common ``B``).
        y: ``[m, B, ...]`` targets.
        lr: the step size.
        clip: ``C > 0``, the per-sample L2 bound over all parameters.
        noise_multiplier: ``z >= 0``; the accountant's ``z`` for sample rate
            ``batch / n_i`` and ``T`` = the number of steps.
        gen: the noise stream (``torch.Generator``).
        loss_fn: the loss of one sample, ``(output [1, ...], target [1, ...]) -> scalar``.
        mask: ``[m, B]`` 1 for real samples, 0 for padding (None: all real).
        expected_batch_size: the divisor (number or ``[m]``), see ``private_grad``.
        active: ``[m]`` bool, the clients that take this step (None: all); the others are
            returned unchanged (their noise is drawn all the same).
        randomness: ``vmap``'s randomness ("different" for Dropout).

    Returns:
        ``{name: [m, ...]}`` new tensors.

    Raises:
        ScenarioError: ``privacy.clip`` / ``privacy.noise_multiplier`` out of range.
        ValueError: a model with BatchNorm.

    References: Abadi, Chu, Goodfellow, McMahan, Mironov, Talwar, Zhang, "Deep Learning
    with Differential Privacy" (CCS 2016), Algorithm 1; opacus ``GradSampleModule`` and
    ``DPOptimizer`` (Yousefpour et al. 2021).
    """
    g = per_sample_grads(model, params, x, y, loss_fn, randomness)
    noisy = private_grad(g, clip, noise_multiplier, gen, mask, expected_batch_size)
    new = {}
    for k, p in params.items():
        step = p - lr * noisy[k].to(p.dtype)
        if active is not None:
            keep = active.to(device=p.device, dtype=torch.bool).view(-1, *([1] * (p.dim() - 1)))
            step = torch.where(keep, step, p)
        new[k] = step
    return new


def stack_params(model: nn.Module, m: int) -> dict[str, Tensor]:
    """``{name: [m, ...]}``: ``m`` copies of ``model``'s parameters (detached), a start for
    ``dp_sgd_step``."""
    return {k: p.detach().unsqueeze(0).repeat(m, *([1] * p.dim()))
            for k, p in model.named_parameters()}


__all__ = ["clip_per_sample", "dp_sgd_step", "per_sample_grads", "private_grad",
           "stack_params"]
