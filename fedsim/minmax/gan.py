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
from collections.abc import Callable

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


def _sampling(seed: int, n: int, per_node: int, batch: int, z_dim: int, eval_samples: int
              ) -> tuple[Callable[[torch.Generator], tuple[Tensor, Tensor]],
                         tuple[Tensor, Tensor], Tensor]:
    """A GAN task's ``sample`` (per node: ``batch`` shard indices and latents), its fixed
    evaluation batch, and ``eval_samples`` evaluation latents (both from the eval stream)."""

    def sample(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(0, per_node, (n, batch), generator=gen)
        return idx, torch.randn(n, batch, z_dim, generator=gen)

    g_eval = torch_generator(seed, "minmax/gan_eval")
    eval_batch = sample(g_eval)
    return sample, eval_batch, torch.randn(eval_samples, z_dim, generator=g_eval)


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

    sample, eval_batch, z_eval = _sampling(seed, n, samples_per_node, B, z_dim, eval_samples)

    def evaluate(xbar: Tensor) -> dict[str, float]:
        fake = mlp(xbar[:d_theta].float(), g_sizes, z_eval)
        return mode_metrics(fake, centers, std, cover_fraction)

    return MinMaxTask(name="gaussians", num_nodes=n, d_theta=d_theta, d_phi=d_phi,
                      loss=loss_theta, loss_phi=loss_phi, node_data=(shards,), x0=x0,
                      sample=sample, eval_batch=eval_batch, evaluate=evaluate,
                      samples_per_call=B, dtype=torch.float32)


# ------------------------------------------------------------------ digits


def _train_classifier(x: Tensor, y: Tensor, hidden: int, gen: torch.Generator
                      ) -> Tensor:
    """A ``p -> hidden -> 10`` digits classifier (``p`` pixels), fitted once in closed form.

    The hidden layer is random ReLU features (``W1 ~ N(0, 4 / p)``, ``b1 ~ U(-1, 1)``);
    the output layer is a ridge regression onto one-hot labels (``lambda = 1e-2``): one
    linear solve, milliseconds on a CPU, and deterministic for a seed.

    References:
        Rahimi & Recht, "Random Features for Large-Scale Kernel Machines" (NeurIPS 2007).
    """
    d = x.shape[1]
    W1 = torch.randn(d, hidden, generator=gen) * (2.0 / math.sqrt(d))
    b1 = torch.rand(hidden, generator=gen) * 2 - 1
    h = torch.cat((torch.relu(x @ W1 + b1), torch.ones(len(x), 1)), dim=1).double()
    target = nnf.one_hot(y, 10).double()
    A = h.T @ h + 1e-2 * torch.eye(hidden + 1, dtype=torch.float64)
    out = torch.linalg.solve(A, h.T @ target).float()  # [hidden + 1, 10]
    return torch.cat((W1.reshape(-1), b1, out[:hidden].reshape(-1), out[hidden]))


def _features(params: Tensor, x: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """The classifier's hidden features ``[m, hidden]`` and class probabilities ``[m, 10]``.

    The ridge scores are turned into probabilities by a softmax at temperature 0.1.
    """
    d = x.shape[1]
    W1, b1 = params[:d * hidden].reshape(d, hidden), params[d * hidden:d * hidden + hidden]
    h = torch.relu(x @ W1 + b1)
    rest = params[d * hidden + hidden:]
    scores = h @ rest[:hidden * 10].reshape(hidden, 10) + rest[hidden * 10:]
    return h, (scores / 0.1).softmax(dim=1)


def inception_score(probs: Tensor) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities ``[m, K]``.

    References:
        Salimans et al., "Improved Techniques for Training GANs" (NeurIPS 2016).
    """
    p = probs.double().clamp_min(1e-12)
    marginal = p.mean(dim=0, keepdim=True)
    return float(torch.exp((p * (p.log() - marginal.log())).sum(dim=1).mean()))


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance of Gaussians fitted to feature sets ``[m1, k]`` and ``[m2, k]``.

    References:
        Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
        Nash Equilibrium" (NeurIPS 2017).
    """
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    lam, vec = torch.linalg.eigh(ca)
    root_a = vec @ torch.diag(lam.clamp_min(0).sqrt()) @ vec.T
    cross = torch.linalg.eigvalsh(root_a @ cb @ root_a).clamp_min(0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + ca.trace() + cb.trace() - 2 * cross)


IMAGE_DATASETS = ("digits", "mnist")


def _image_data(dataset: str, path: str | None, seed: int
                ) -> tuple[Tensor, Tensor, Tensor, int]:
    """``(x_train [N, p], y_train [N], x_test [M, p], side)``, pixels in ``[0, 1]``.

    ``"digits"``: scikit-learn's 8x8 digits, 20% held out per class (stream ``data``);
    ``"mnist"``: the user's standard IDX files in ``path`` (:mod:`fedsim.data.mnist`; its
    fixed train / t10k split). Errors are one-line ``task.dataset`` / ``task.path``.
    """
    from fedsim.errors import DataError

    if dataset not in IMAGE_DATASETS:
        raise ScenarioError("task.dataset", f"unknown dataset {dataset!r}; allowed: "
                            f"{', '.join(IMAGE_DATASETS)}")
    if dataset == "digits":
        if path is not None:
            raise ScenarioError("task.path", "only used with dataset = 'mnist' (the digits "
                                "ship with scikit-learn); allowed: leave it out")
        from fedsim.data.digits import load_digits
        from fedsim.seeding import numpy_rng

        raw = load_digits(0.2, numpy_rng(seed, "data"))
    else:
        if not isinstance(path, str) or not path:
            raise ScenarioError("task.path", "required for dataset 'mnist': the folder of "
                                "the standard MNIST IDX files (fedsim never downloads)")
        from fedsim.data.mnist import load_mnist

        try:
            raw = load_mnist(path)
        except DataError as err:
            raise ScenarioError("task.path", str(err).replace("\n", " ")) from None
    side = raw.x_train.shape[-1]
    x_tr = torch.from_numpy(raw.x_train.reshape(len(raw.x_train), -1))
    x_te = torch.from_numpy(raw.x_test.reshape(len(raw.x_test), -1))
    return x_tr, torch.from_numpy(raw.y_train), x_te, side


def digits_gan(num_nodes: int = 8, split: str = "iid", hidden: int = 128, z_dim: int = 16,
               batch_size: int = 64, eval_samples: int = 1000, classifier_hidden: int = 256,
               dataset: str = "digits", path: str | None = None,
               seed: int = 0) -> MinMaxTask:
    """An image GAN on scikit-learn's built-in 8x8 digits (no download), or on the user's
    MNIST files, scored by a small digits classifier trained once.

    Images are flattened to ``p`` values in ``[-1, 1]`` (``p = 64`` for the 8x8 digits,
    784 for MNIST's 28x28); the generator is ``z -> hidden -> hidden -> p`` with a
    ``tanh`` output, the discriminator ``p -> hidden -> hidden -> 1``; the
    non-saturating losses of :func:`gaussian_mixture_gan`. Node ``i`` holds an equal
    shard of the training images: a random one (``"iid"``), or a contiguous run of the
    images sorted by label (``"labels"``: one or two classes per node). Rows get
    ``inception_score`` (classifier-based, 1 to 10) and ``fid`` (Fréchet distance in the
    classifier's hidden features, to the held-out images), of ``eval_samples`` samples;
    the classifier is fitted the same way for both datasets, on their own pixels.

    Args:
        num_nodes: ``n``.
        split: ``"iid"`` or ``"labels"``.
        hidden: hidden width of both MLPs.
        z_dim: the generator's noise width.
        batch_size: real and fake images per node per evaluation of ``F_i``.
        eval_samples: generated images for the scores.
        classifier_hidden: the scoring classifier's hidden width.
        dataset: ``"digits"`` (built in) or ``"mnist"`` (the files in ``path``; the
            held-out images are MNIST's t10k set).
        path: the MNIST folder (standard IDX files, optionally gzipped; an absolute path,
            or relative to the working directory — a scenario's is taken against its
            file's folder); only with ``dataset = "mnist"``.
        seed: the root seed (split ``data``; init ``minmax/gan_init``; classifier
            ``minmax/classifier``; scores ``minmax/gan_eval``).

    Returns:
        The task (float32); ``task.generate(x_bar, m)`` gives ``[m, side, side]`` images
        in ``[0, 1]`` (``side`` 8 or 28).

    Raises:
        ScenarioError: ``task.dataset`` (unknown), ``task.path`` (missing for MNIST, given
            for digits, or the files not there / malformed), ``task.<param>``.

    References:
        Salimans et al. (NeurIPS 2016); Heusel et al. (NeurIPS 2017); Liu et al.
        (NeurIPS 2020) and Barazandeh et al. (arXiv 2106.06075) evaluate by such scores.
    """
    for key, value in (("num_nodes", num_nodes), ("hidden", hidden), ("z_dim", z_dim),
                       ("batch_size", batch_size), ("eval_samples", eval_samples),
                       ("classifier_hidden", classifier_hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScenarioError(f"task.{key}", f"must be an integer >= 1, got {value!r}")
    if split not in ("iid", "labels"):
        raise ScenarioError("task.split", f"unknown split {split!r}; allowed: iid, labels")
    x_tr, y_tr, x_te, side = _image_data(dataset, path, seed)
    pixels = side * side
    n = num_nodes
    per = len(x_tr) // n
    if per < 1:
        raise ScenarioError("task.num_nodes", f"at most {len(x_tr)} nodes for the "
                            f"{dataset} training images, got {n}")
    g_data = torch_generator(seed, "minmax/gan_data")
    order = (torch.randperm(len(x_tr), generator=g_data) if split == "iid"
             else torch.argsort(y_tr, stable=True))
    shards = (x_tr[order[:n * per]] * 2 - 1).reshape(n, per, pixels)
    g_sizes, d_sizes = [z_dim, hidden, hidden, pixels], [pixels, hidden, hidden, 1]
    d_theta, d_phi = _num_params(g_sizes), _num_params(d_sizes)
    g_init = torch_generator(seed, "minmax/gan_init")
    x0 = torch.cat((_init(g_sizes, g_init), _init(d_sizes, g_init)))
    clf = _train_classifier(x_tr, y_tr, classifier_hidden,
                            torch_generator(seed, "minmax/classifier"))
    real_features, _ = _features(clf, x_te, classifier_hidden)

    def fake_images(theta: Tensor, z: Tensor) -> Tensor:
        return torch.tanh(mlp(theta, g_sizes, z))

    def loss_phi(x: Tensor, shard: Tensor, idx: Tensor, z: Tensor) -> Tensor:
        fake = fake_images(x[:d_theta], z)
        d_real = mlp(x[d_theta:], d_sizes, shard[idx])
        d_fake = mlp(x[d_theta:], d_sizes, fake)
        return nnf.softplus(-d_real).mean() + nnf.softplus(d_fake).mean()

    def loss_theta(x: Tensor, shard: Tensor, idx: Tensor, z: Tensor) -> Tensor:
        d_fake = mlp(x[d_theta:], d_sizes, fake_images(x[:d_theta], z))
        return nnf.softplus(-d_fake).mean()

    sample, eval_batch, z_eval = _sampling(seed, n, per, batch_size, z_dim, eval_samples)

    def generate(xbar: Tensor, count: int) -> Tensor:
        z = z_eval[:count] if count <= eval_samples else torch.randn(count, z_dim)
        return ((fake_images(xbar[:d_theta].float(), z) + 1) / 2).reshape(-1, side, side)

    def evaluate(xbar: Tensor) -> dict[str, float]:
        images = generate(xbar, eval_samples).reshape(-1, pixels)
        feats, probs = _features(clf, images, classifier_hidden)
        return {"inception_score": inception_score(probs),
                "fid": frechet_distance(feats, real_features)}

    return MinMaxTask(name="digits", num_nodes=n, d_theta=d_theta, d_phi=d_phi,
                      loss=loss_theta, loss_phi=loss_phi, node_data=(shards,), x0=x0,
                      sample=sample, eval_batch=eval_batch, evaluate=evaluate,
                      samples_per_call=batch_size, dtype=torch.float32, generate=generate)


def save_sample_grid(task: MinMaxTask, xbar: Tensor, path, rows: int = 8) -> None:
    """A ``rows x rows`` grid of the generator's images at ``x_bar`` as a PNG.

    Args:
        task: a task with ``generate`` (:func:`digits_gan`).
        xbar: ``[d]`` the state (the network average).
        path: the PNG file.
        rows: images per side.

    References:
        Goodfellow et al. (NeurIPS 2014).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if task.generate is None:
        raise ValueError(f"task {task.name!r} generates no images")
    images = task.generate(xbar, rows * rows).detach().cpu()
    side = images.shape[-1]
    grid = images.reshape(rows, rows, side, side).permute(0, 2, 1, 3)
    grid = grid.reshape(rows * side, rows * side)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid.numpy(), cmap="gray_r", vmin=0, vmax=1)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
