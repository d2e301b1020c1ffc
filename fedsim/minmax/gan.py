"""A 2-D mixture-of-Gaussians GAN split over ``n`` nodes (tiny MLPs, CPU-fast).

The data: ``modes`` Gaussians of std ``std`` evenly on a circle of radius ``radius`` (the
classic 8-Gaussians benchmark of Metz et al., 2017). Node ``i`` holds its own shard of
``samples_per_node`` points: drawn from every mode (``split = "iid"``) or only from mode
``i mod modes`` (``split = "modes"``: no node sees the whole distribution, consensus
has to put it together).

The players: a generator ``G: R^z_dim -> R^2`` and a discriminator ``D: R^2 -> R`` (MLPs
with ``hidden`` units and two hidden ReLU layers), flattened into one state
``x = (theta_G, phi_D)``. The losses (each player minimizes its own, the VI view of
Gidel et al. 2019): ``l_phi = softplus(-D(x_real)) + softplus(D(G(z)))`` (the
discriminator's cross-entropy) and ``l_theta = softplus(-D(G(z)))`` (the non-saturating
generator loss of Goodfellow et al. 2014); ``loss = "zero_sum"`` uses
``l_theta = -softplus(D(G(z)))`` instead, i.e. ``f = -l_phi``: the original min-max game.

The metrics (Srivastava et al., VEEGAN, 2017): ``eval_samples`` generator samples at the
average state; a sample is *high quality* when it is within ``3 std`` of its nearest mode;
a mode is *covered* when at least ``cover_fraction`` of the samples are high-quality
samples of it. Rows get ``modes_covered`` and ``high_quality``.

References:
    Goodfellow et al., "Generative Adversarial Nets" (NeurIPS 2014); Metz, Poole, Pfau,
    Sohl-Dickstein, "Unrolled Generative Adversarial Networks" (ICLR 2017); Srivastava,
    Valkov, Russell, Gutmann, Sutton, "VEEGAN" (NeurIPS 2017); Liu et al. (NeurIPS 2020).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as nnf
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.minmax.operator import MinMaxTask
from fedsim.seeding import torch_generator

SPLITS = ("iid", "modes")
GAN_LOSSES = ("non_saturating", "zero_sum")


def _layers(sizes: list[int]) -> list[tuple[int, int]]:
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def _num_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in _layers(sizes))


def mlp(params: Tensor, sizes: list[int], h: Tensor) -> Tensor:
    """An MLP whose weights are slices of one flat vector; ReLU between layers.

    Args:
        params: flat ``[P]`` weights, layer by layer (``W`` as ``[in, out]``, then ``b``).
        sizes: widths, input first.
        h: ``[B, sizes[0]]`` inputs.

    Returns:
        ``[B, sizes[-1]]``.

    References:
        Rumelhart, Hinton, Williams (1986).
    """
    at = 0
    layers = _layers(sizes)
    for k, (a, b) in enumerate(layers):
        W = params[at:at + a * b].reshape(a, b)
        at += a * b
        h = h @ W + params[at:at + b]
        at += b
        if k < len(layers) - 1:
            h = torch.relu(h)
    return h


def _init(sizes: list[int], gen: torch.Generator) -> Tensor:
    """PyTorch's default Linear initialization, ``U(-1/sqrt(in), 1/sqrt(in))``, flattened."""
    parts = []
    for a, b in _layers(sizes):
        bound = 1.0 / math.sqrt(a)
        parts.append((torch.rand(a * b + b, generator=gen) * 2 - 1) * bound)
    return torch.cat(parts)


def mode_centers(modes: int = 8, radius: float = 2.0) -> Tensor:
    """``[modes, 2]`` the mixture's means, evenly on a circle."""
    angle = 2 * math.pi * torch.arange(modes, dtype=torch.float32) / modes
    return radius * torch.stack((angle.cos(), angle.sin()), dim=1)


def mode_metrics(samples: Tensor, centers: Tensor, std: float,
                 cover_fraction: float = 0.01) -> dict[str, float]:
    """Modes covered and the fraction of high-quality samples (within ``3 std``).

    Args:
        samples: ``[m, 2]`` generated points.
        centers: ``[K, 2]`` the modes.
        std: the modes' standard deviation.
        cover_fraction: a mode is covered with at least this share of high-quality samples.

    Returns:
        ``{"modes_covered": int as float, "high_quality": fraction}``.

    References:
        Srivastava et al., "VEEGAN" (NeurIPS 2017).
    """
    dist = torch.cdist(samples.float(), centers.float())  # [m, K]
    near, which = dist.min(dim=1)
    good = near <= 3 * std
    counts = torch.bincount(which[good], minlength=centers.shape[0])
    m = max(samples.shape[0], 1)
    covered = int((counts >= max(1, math.ceil(cover_fraction * m))).sum())
    return {"modes_covered": float(covered), "high_quality": float(good.float().mean())}


def gaussian_mixture_gan(num_nodes: int = 9, modes: int = 8, radius: float = 2.0,
                         std: float = 0.1, samples_per_node: int = 512, split: str = "iid",
                         hidden: int = 64, z_dim: int = 4, batch_size: int = 64,
                         loss: str = "non_saturating", eval_samples: int = 2000,
                         cover_fraction: float = 0.01, seed: int = 0) -> MinMaxTask:
    """The mixture-of-Gaussians GAN task, each node with its own data shard.

    Args:
        num_nodes: ``n``.
        modes: Gaussians on the circle.
        radius: the circle's radius.
        std: each Gaussian's standard deviation.
        samples_per_node: a node's shard size.
        split: ``"iid"`` (every node sees every mode) or ``"modes"`` (node ``i`` holds only
            mode ``i mod modes``).
        hidden: hidden width of both MLPs (two hidden layers each).
        z_dim: the generator's noise width.
        batch_size: real and fake samples per node per evaluation of ``F_i``.
        loss: ``"non_saturating"`` or ``"zero_sum"``.
        eval_samples: generator samples for the metrics.
        cover_fraction: a mode is covered with at least this share of the samples.
        seed: the root seed (data ``minmax/gan_data``, init ``minmax/gan_init``, metrics
            ``minmax/gan_eval``).

    Returns:
        The task (float32; ``d_theta`` generator weights, then ``d_phi`` discriminator
        weights; ``evaluate`` gives ``modes_covered`` and ``high_quality``).

    References:
        Metz et al., "Unrolled GANs" (ICLR 2017); Goodfellow et al. (NeurIPS 2014).
    """
    for key, value, low in (("num_nodes", num_nodes, 1), ("modes", modes, 1),
                            ("samples_per_node", samples_per_node, 1), ("hidden", hidden, 1),
                            ("z_dim", z_dim, 1), ("batch_size", batch_size, 1),
                            ("eval_samples", eval_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ScenarioError(f"task.{key}", f"must be an integer >= {low}, got {value!r}")
    if split not in SPLITS:
        raise ScenarioError("task.split", f"unknown split {split!r}; allowed: "
                            f"{', '.join(SPLITS)}")
    if loss not in GAN_LOSSES:
        raise ScenarioError("task.loss", f"unknown loss {loss!r}; allowed: "
                            f"{', '.join(GAN_LOSSES)}")
    if not std > 0:
        raise ScenarioError("task.std", f"must be > 0, got {std!r}")
    n, B = num_nodes, batch_size
    centers = mode_centers(modes, radius)
    g_data = torch_generator(seed, "minmax/gan_data")
    if split == "iid":
        which = torch.randint(0, modes, (n, samples_per_node), generator=g_data)
    else:
        which = (torch.arange(n) % modes)[:, None].expand(n, samples_per_node)
    shards = centers[which] + std * torch.randn(n, samples_per_node, 2, generator=g_data)
    g_sizes, d_sizes = [z_dim, hidden, hidden, 2], [2, hidden, hidden, 1]
    d_theta, d_phi = _num_params(g_sizes), _num_params(d_sizes)
    g_init = torch_generator(seed, "minmax/gan_init")
    x0 = torch.cat((_init(g_sizes, g_init), _init(d_sizes, g_init)))

    def players(x: Tensor, shard: Tensor, idx: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        fake = mlp(x[:d_theta], g_sizes, z)
        d_real = mlp(x[d_theta:], d_sizes, shard[idx])
        d_fake = mlp(x[d_theta:], d_sizes, fake)
        return d_real, d_fake

    def loss_phi(x: Tensor, shard: Tensor, idx: Tensor, z: Tensor) -> Tensor:
        d_real, d_fake = players(x, shard, idx, z)
        return nnf.softplus(-d_real).mean() + nnf.softplus(d_fake).mean()

    def loss_theta(x: Tensor, shard: Tensor, idx: Tensor, z: Tensor) -> Tensor:
        _, d_fake = players(x, shard, idx, z)
        if loss == "zero_sum":
            return -nnf.softplus(d_fake).mean()
        return nnf.softplus(-d_fake).mean()

    def sample(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, samples_per_node, (n, B), generator=gen)
        return idx, torch.randn(n, B, z_dim, generator=gen)

    g_eval = torch_generator(seed, "minmax/gan_eval")
    eval_batch = sample(g_eval)
    z_eval = torch.randn(eval_samples, z_dim, generator=g_eval)

    def evaluate(xbar: Tensor) -> dict[str, float]:
        fake = mlp(xbar[:d_theta].float(), g_sizes, z_eval)
        return mode_metrics(fake, centers, std, cover_fraction)

    return MinMaxTask(name="gaussians", num_nodes=n, d_theta=d_theta, d_phi=d_phi,
                      loss=loss_theta, loss_phi=loss_phi, node_data=(shards,), x0=x0,
                      sample=sample, eval_batch=eval_batch, evaluate=evaluate,
                      samples_per_call=B, dtype=torch.float32)
