"""The min-max operator ``F(x) = (grad_theta f, -grad_phi f)`` of every node at once.

A decentralized min-max problem ``min_theta max_phi f(theta, phi)`` with
``f = (1/n) sum_i f_i`` is held by ``n`` nodes; node ``i`` knows only its local ``f_i``
(its own game matrix, its own data shard). A node's state is one flat vector
``x_i = (theta_i, phi_i)`` of width ``d = d_theta + d_phi``; the nodes' states are the
rows of one ``[n, d]`` tensor, as in the gossip code. :class:`Operator` evaluates every
node's ``F_i(x_i)`` in one batched call (``torch.func.vmap`` over the node axis of the
states and of the node data).

Zero-sum tasks give one function ``f_i`` (``F_i = (grad_theta f_i, -grad_phi f_i)``, one
gradient); general two-player tasks (a GAN with the non-saturating generator loss) give
each player its own loss to *minimize*, ``F_i = (grad_theta l_theta, grad_phi l_phi)``
(the variational-inequality view of Gidel et al., 2019).

References:
    Gidel, Berard, Vignoud, Vincent, Lacoste-Julien, "A Variational Inequality
    Perspective on Generative Adversarial Networks" (ICLR 2019); Barazandeh, Huang,
    Michailidis, "A Decentralized Adaptive Momentum Method for Solving a Class of Min-Max
    Optimization Problems" (Signal Processing 2022, arXiv 2106.06075).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import grad, vmap

Metrics = Callable[[Tensor], dict[str, float]]


@dataclass
class MinMaxTask:
    """A decentralized min-max problem: ``n`` nodes, each with its own local objective.

    Attributes:
        name: the task's name (``"bilinear"``, ``"quadratic"``, ``"gaussians"``, ...).
        num_nodes: ``n``.
        d_theta: width of the minimizing player's block (the first ``d_theta`` entries).
        d_phi: width of the maximizing player's block (the last ``d_phi`` entries).
        loss: ``loss(x, *node_data_i, *batch_i) -> scalar``: ``f_i`` for a zero-sum task
            (theta minimizes, phi maximizes it), or theta's own loss when ``loss_phi``
            is given. ``x`` is one node's flat ``[d]`` state.
        node_data: tensors ``[n, ...]``; row ``i`` is node ``i``'s own data.
        x0: ``[d]`` the common starting point, or ``[n, d]`` one per node.
        loss_phi: phi's own loss to minimize (general two-player game); None: zero-sum.
        sample: ``sample(gen) -> tuple of [n, ...]``: a fresh minibatch per node for one
            stochastic evaluation (None: deterministic ``F``).
        eval_batch: the fixed per-node batch that the deterministic
            :meth:`Operator.mean` uses (None: ``()``).
        noise_std: std of Gaussian noise added to every ``F_i`` evaluation (a stochastic
            oracle for games); 0 for none.
        nash: ``[d]`` the exact Nash equilibrium of ``f`` when known.
        evaluate: ``evaluate(x_bar) -> {name: value}``: task metrics at the network average.
        samples_per_call: samples one evaluation of ``F_i`` processes (the clock's work).
        dtype: the dtype of the states.
        generate: ``generate(x_bar, count) -> samples`` for generative tasks (a GAN's
            generator at the average state), None for games.
    """

    name: str
    num_nodes: int
    d_theta: int
    d_phi: int
    loss: Callable[..., Tensor]
    node_data: tuple[Tensor, ...]
    x0: Tensor
    loss_phi: Callable[..., Tensor] | None = None
    sample: Callable[[torch.Generator], tuple[Tensor, ...]] | None = None
    eval_batch: tuple[Tensor, ...] = field(default_factory=tuple)
    noise_std: float = 0.0
    nash: Tensor | None = None
    evaluate: Metrics | None = None
    samples_per_call: int = 1
    dtype: torch.dtype = torch.float64
    generate: Callable[[Tensor, int], Tensor] | None = None

    @property
    def dim(self) -> int:
        """``d = d_theta + d_phi``."""
        return self.d_theta + self.d_phi

    def initial_states(self) -> Tensor:
        """``[n, d]`` the nodes' starting states (a copy)."""
        x0 = self.x0.to(self.dtype)
        if x0.ndim == 1:
            return x0.expand(self.num_nodes, -1).clone()
        return x0.clone()


class Operator:
    """Every node's ``F_i`` at its own state, in one vmapped call; counts evaluations.

    Args:
        task: the problem.
        gen: the stream for minibatches and oracle noise (``seeding.torch_generator``).

    References:
        Gidel et al., "A Variational Inequality Perspective on GANs" (ICLR 2019).
    """

    def __init__(self, task: MinMaxTask, gen: torch.Generator):
        self.task = task
        self.gen = gen
        self.calls = 0  # evaluations of the stacked F (each is one F_i per node)
        dt = task.d_theta
        if task.loss_phi is None:
            g = grad(task.loss)

            def one(x: Tensor, *data: Tensor) -> Tensor:
                gx = g(x, *data)
                return torch.cat((gx[:dt], -gx[dt:]))
        else:
            g_theta, g_phi = grad(task.loss), grad(task.loss_phi)

            def one(x: Tensor, *data: Tensor) -> Tensor:
                return torch.cat((g_theta(x, *data)[:dt], g_phi(x, *data)[dt:]))

        self._batched = vmap(one)

    def __call__(self, X: Tensor) -> Tensor:
        """``[n, d]``: row ``i`` is ``F_i(X[i])`` on a fresh minibatch (plus oracle noise).

        Args:
            X: ``[n, d]`` the nodes' states.
        """
        t = self.task
        batch = t.sample(self.gen) if t.sample is not None else ()
        out = self._batched(X, *t.node_data, *batch)
        if t.noise_std > 0:
            noise = torch.randn(out.shape, generator=self.gen, dtype=out.dtype)
            out = out + t.noise_std * noise
        self.calls += 1
        return out

    def exact(self, X: Tensor) -> Tensor:
        """``[n, d]`` every ``F_i(X[i])`` without noise, on the fixed evaluation batch."""
        t = self.task
        return self._batched(X, *t.node_data, *t.eval_batch)

    def mean(self, x: Tensor) -> Tensor:
        """``[d]``: ``F(x) = (1/n) sum_i F_i(x)`` of the network objective at one point.

        Args:
            x: ``[d]`` a state (e.g. the network average).
        """
        X = x.to(self.task.dtype).expand(self.task.num_nodes, -1)
        return self.exact(X).mean(dim=0)
