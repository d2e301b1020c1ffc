"""Per-piece gradients of a job, computed through fedsim's population engine (torch).

Every job of a coded run needs ``G [P, d]``: row ``p`` the gradient of
``(1/N) sum_{i in piece p} loss_i`` at the job's model, so the rows add up to the full
gradient of the mean loss. :class:`PieceGradients` gets them from
:class:`fedsim.population.Population`, with the pieces as the cohort's clients: one local
epoch of plain SGD with ``lr = 1`` and a batch as large as the largest piece is one
full-batch step per piece, so a piece's update is minus the gradient of its mean loss,
and ``G[p] = -update[p] * n_p / N``. The population picks its engine as for any cohort
(the fused Linear/ReLU engine for ``logreg`` and ``mlp``, ``vmap`` over the pieces for any
other model, the user's ``model.factory`` and ``loss`` included), batched over the pieces.
Everything runs in the dtype of the module given (float64 in coded runs: a decoded
gradient then equals the direct sum of the pieces to ~1e-12, and the ``update = (w - g) -
w`` round trip costs ~1e-16 relative to ``|w| / |g|``).

The population trains in ``train()`` mode. For a model that draws random numbers there
(Dropout) or keeps buffers (BatchNorm statistics), a piece's training step is not the
gradient of the deterministic loss the master descends, and the pieces' batch statistics
would differ from the full batch's; such a model gets its piece gradients from per-sample
gradients in ``eval()`` mode instead (``torch.func``: ``vmap(grad)`` over the samples,
summed per piece), the same loss in both cases (``engine`` says which).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from fedsim.population import Population
from fedsim.population.flat import FlatSpec

CHUNK_ELEMENTS = 2**22  # eval-mode path: per-sample gradients held at once (float64: 32 MiB)


class PieceGradients:
    """``theta [d] -> G [P, d]``, the gradients of a job's pieces at ``theta``.

    Args:
        model: the architecture (copied, cast to ``dtype``; the caller's is not modified).
        x: ``[N, ...]`` the training inputs.
        y: ``[N]`` integer labels.
        piece_of: ``[N]`` the piece of every sample, in ``[0, pieces)``.
        pieces: ``P``.
        loss: per-sample loss ``(logits [B, C], labels [B]) -> [B]``; None: cross-entropy.
        device: where the tensors live.
        dtype: the floating dtype of the computation.

    Attributes:
        engine: ``"fused_mlp"``, ``"vmap"`` or ``"loop"`` (the population's path) or
            ``"eval_per_sample"`` (a model with randomness or buffers).
        d: parameters.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, piece_of: Tensor,
                 pieces: int, *, loss: Callable[[Tensor, Tensor], Tensor] | None = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64):
        self.device = torch.device(device)
        module = copy.deepcopy(model).to(self.device, dtype)
        x = x.to(self.device, dtype)
        y = y.to(self.device, torch.long)
        piece_of = torch.as_tensor(piece_of, device=self.device, dtype=torch.long)
        self.pop = Population(module, x, y, device=self.device, loss=loss)
        self.d = self.pop.d
        self.n_samples = len(x)
        self.indices = [torch.nonzero(piece_of == p).flatten() for p in range(pieces)]
        counts = torch.tensor([len(ix) for ix in self.indices], dtype=dtype,
                              device=self.device)
        self.scale = (counts / len(x))[:, None]
        self.batch = max(1, int(counts.max().item()) if pieces else 1)
        self.dtype = dtype
        if self.pop.stochastic or self.pop.d_buffers:
            self.engine = "eval_per_sample"
            self._eval = _EvalPerSample(module, x, y, piece_of, pieces, self.pop.loss)
        else:
            self.engine = self.pop.engine
            self._eval = None

    def __call__(self, theta: Tensor) -> Tensor:
        if self._eval is not None:
            return self._eval(theta)
        gen = torch.Generator(device=self.device).manual_seed(0)  # one full batch: any order
        res = self.pop.train(theta.to(self.device, self.dtype), self.indices, lr=1.0,
                             epochs=1, batch_size=self.batch, gen=gen)
        return -res.updates.to(self.dtype) * self.scale


class _EvalPerSample:
    """Per-sample gradients in ``eval()`` mode (``vmap(grad)``), summed per piece."""

    def __init__(self, module: nn.Module, x: Tensor, y: Tensor, piece_of: Tensor,
                 pieces: int, loss: Callable[[Tensor, Tensor], Tensor]):
        self.module = module.eval()
        self.flat = FlatSpec(self.module)
        self.buffers = dict(self.module.named_buffers())
        self.x, self.y, self.piece_of, self.pieces, self.loss = x, y, piece_of, pieces, loss
        self._per_sample = vmap(grad(self._sample_loss), in_dims=(None, 0, 0))

    def _sample_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        params = {**dict(zip(self.flat.names, self.flat.unflatten(theta), strict=True)),
                  **self.buffers}
        logits = functional_call(self.module, params, (x.unsqueeze(0),))
        return self.loss(logits, y.unsqueeze(0))[0]

    def __call__(self, theta: Tensor) -> Tensor:
        out = theta.new_zeros(self.pieces, theta.numel())
        chunk = max(1, CHUNK_ELEMENTS // max(1, theta.numel()))
        for start in range(0, len(self.x), chunk):
            g = self._per_sample(theta, self.x[start:start + chunk],
                                 self.y[start:start + chunk])
            out.index_add_(0, self.piece_of[start:start + chunk], g)
        return out / len(self.x)
