"""``Population``: a training set split among clients, and local training of a cohort.

The semantics of local training are in the package docstring (``fedsim.population``);
this module sets a population up, checks ``train``'s arguments, draws the cohort's
shuffles and picks the path that trains it (``fused``, ``batched`` or ``loop``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from fedsim.fastmlp import FusedMLP, match_mlp
from fedsim.local_opt import LocalOpt
from fedsim.losses import cross_entropy
from fedsim.population.batched import per_sample_grad, train_batched, vmapped_grad
from fedsim.population.chunking import fused_chunk_size, vmap_chunk_size
from fedsim.population.cohort import Cohort
from fedsim.population.evaluate import accuracy_rows, evaluate
from fedsim.population.flat import FlatSpec
from fedsim.population.fused import train_fused
from fedsim.population.index import CohortIndex
from fedsim.population.layout import draw_orders
from fedsim.population.loop import train_loop
from fedsim.population.optstate import KeptState, keep_state, start_state
from fedsim.population.probes import activation_numel, draws_random
from fedsim.population.reproducible import draw_seed, one_thread_for_one_client, seeded_rng


@dataclass
class CohortResult:
    """What a cohort sends back after local training; all tensors on the population's device.

    Attributes:
        updates: ``[m, d]`` float32, local parameters minus the global parameters.
        losses: ``[m]`` float32, mean over the client's local SGD steps (all epochs) of
            the minibatch loss, measured before each step and without the
            proximal term; 0 for a client with no samples or ``epochs == 0``.
        num_samples: ``[m]`` int64, the number of training samples of each client.
        buffers: ``[m, b]`` each client's buffers (BatchNorm running statistics) after its
            local training, in ``Population.flat_buffers`` layout; None for a model
            without buffers.
    """

    updates: Tensor
    losses: Tensor
    num_samples: Tensor
    buffers: Tensor | None = None


class Population:
    """A training set split among clients, and a model trained for a cohort at a time.

    Args:
        model: the architecture; the population keeps its own copy on ``device``
            (the caller's module is not modified) and trains functional copies of it.
        x: ``[N, ...]`` floating inputs of the whole training set, moved to ``device`` once.
        y: ``[N]`` integer class labels.
        device: ``"cpu"`` or ``"cuda"`` (``"auto"`` is resolved by the caller).
        batched: train a cohort with ``vmap``; False trains one client at a time.
        max_batched_clients: most clients per vmapped chunk; None picks the largest
            chunk whose estimated memory (4 copies of the parameters, 3 of the
            minibatch activations, the minibatch) stays below ``DEFAULT_CHUNK_BYTES``
            (64 MiB) on CPU, or below the larger of 256 MiB and 1/8 of the GPU's memory.
            For the fused engine the estimate is its workspace (parameters, activations
            and gradients of the chunk) against ``FUSED_CHUNK_BYTES`` on CPU, the same
            budget as above on a GPU.
        fused: train a plain Linear/ReLU stack (``logreg``, ``mlp``) with the fused
            engine of ``fedsim.fastmlp``; False keeps the generic ``vmap`` path for it.
        local_opt: the clients' optimizer (``fedsim.local_opt``); None is plain SGD.
            Any other optimizer trains on the generic ``vmap`` (or loop) path. With
            ``state = "keep"`` the population keeps each client's optimizer state
            (``opt_state``) between the ``train`` calls it is in (``clients=`` ids).
        loss: per-sample loss ``(logits [B, C], labels [B]) -> [B]`` (``fedsim.losses``);
            None is cross-entropy. A loss of the user's trains on the generic path.
        dp_sgd: ``(clip C, noise multiplier z)``: every local step is DP-SGD (Abadi et al.
            2016): per-sample gradients, each clipped to ``C``, summed, ``N(0, (zC)^2)``
            added, divided by the step's real samples (``fedsim.privacy.dpsgd``); the noise
            comes from one seed per ``train`` call drawn from ``gen``. Batched ``vmap``
            path only (no fused engine, no fallback to the loop, no buffers).

    Attributes:
        vmap_fallback: why the batched path was abandoned for this model (None while it works).
        stochastic: the model draws random numbers in ``train()`` mode (e.g. Dropout with
            ``p > 0``); its training then takes one seed per ``train`` call from ``gen``.
        engine: how a cohort is trained: ``"fused_mlp"`` (a Linear/ReLU stack, trained
            with hand-written batched products, ``fedsim.fastmlp``), ``"vmap"`` (any
            other model, ``torch.func``) or ``"loop"`` (one client at a time, when
            ``batched`` is False or the batched path failed).
        opt_state: client id -> ``(slots, step)``, the kept optimizer state of every client
            that trained (``local_opt.state == "keep"`` only): ``slots`` a tuple of
            ``[d]`` tensors (SGD's momentum buffer; Adam's first and second moments), and
            ``step`` Adam's step count. Grows by ``local_opt.state_bytes(d)`` per client
            that trained at least once.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        device: str | torch.device = "cpu",
        batched: bool = True,
        max_batched_clients: int | None = None,
        fused: bool = True,
        local_opt: LocalOpt | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        dp_sgd: tuple[float, float] | None = None,
    ):
        if not torch.is_floating_point(x):
            raise ValueError(f"x must be a floating tensor, got {x.dtype}")
        if y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"y must be [N] with N = len(x) = {len(x)}, got {tuple(y.shape)}")
        if max_batched_clients is not None and max_batched_clients < 1:
            raise ValueError(f"max_batched_clients must be >= 1 or None, got {max_batched_clients}")
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device)
        self._spec = FlatSpec(self.model)
        self._init = parameters_to_vector([p.detach() for p in self.model.parameters()]).clone()
        buffers = [t.detach() for t in self.model.buffers()]
        self._init_buffers = (torch.cat([t.reshape(-1).to(self._init.dtype) for t in buffers])
                              if buffers else self._init.new_zeros(0))
        self.x = x.to(self.device, self._init.dtype)
        self.y = y.to(self.device, torch.long)
        self.batched = batched
        self.local_opt = local_opt if local_opt is not None else LocalOpt()
        # per-sample losses (logits [B, C], labels [B]) -> [B]; cross-entropy by default
        self.loss = loss if loss is not None else cross_entropy
        self.opt_state: KeptState = {}
        self.max_batched_clients = max_batched_clients
        self.vmap_fallback: str | None = None
        self._act_numel = activation_numel(self.model, self.x, self.device)
        self.stochastic = draws_random(self.model, self.x, self.device)
        self._vgrad = vmapped_grad(self, buffers=False)
        self._vgrad_buffers = vmapped_grad(self, buffers=True)
        self.dp_sgd = dp_sgd
        if dp_sgd is not None:
            if not batched or buffers:
                raise ValueError("DP-SGD trains batched (vmap) models without buffers "
                                 "(BatchNorm: use GroupNorm)")
            self._vgrad_samples = per_sample_grad(self)
        # The fused engine for plain Linear/ReLU stacks; None keeps the generic path.
        self._fused: FusedMLP | None = (  # it computes cross-entropy's gradient itself
            match_mlp(self.model, tuple(self.x.shape[1:]))
            if fused and loss is None and dp_sgd is None else None)
        # [N, fan_in] rows for the fused engine (a view unless x is non-contiguous)
        self._x_rows = self.x.flatten(1) if self._fused is not None else self.x

    @property
    def engine(self) -> str:
        """``"fused_mlp"``, ``"vmap"`` or ``"loop"``: the path the next ``train`` takes."""
        if not self.batched or self.vmap_fallback is not None:
            return "loop"
        return "vmap" if self._fused is None or self.local_opt.name != "sgd" else "fused_mlp"

    @property
    def d(self) -> int:
        """Number of parameters of the model."""
        return self._init.numel()

    def flat_params(self) -> Tensor:
        """The model's initial parameters, ``[d]`` in ``parameters_to_vector`` order (a copy)."""
        return self._init.clone()

    @property
    def d_buffers(self) -> int:
        """Number of buffer elements of the model (0 without buffers)."""
        return self._init_buffers.numel()

    def flat_buffers(self) -> Tensor:
        """The model's initial buffers, ``[b]`` in ``named_buffers`` order (a copy).

        Stored in the parameters' floating dtype; integer buffers (BatchNorm's
        ``num_batches_tracked``) are exact while below 2**24 for float32.
        """
        return self._init_buffers.clone()

    def train(
        self,
        global_params: Tensor,
        client_indices: Sequence[Tensor] | CohortIndex,
        *,
        lr: float,
        epochs: int,
        batch_size: int,
        mu: float = 0.0,
        gen: torch.Generator,
        buffers: Tensor | None = None,
        clients: Sequence[int] | None = None,
        orders: Tensor | None = None,
        out: Tensor | None = None,
    ) -> CohortResult:
        """Run local SGD (FedAvg, or FedProx with ``mu > 0``) for a cohort of clients.

        Args:
            global_params: ``[d]`` parameters every client starts from, or ``[m, d]``:
                client ``r`` starts from row ``r`` (decentralized learning). Updates are
                then relative to each client's own row, and so is FedProx's anchor.
            client_indices: one 1-D integer tensor per client, indices into ``x``; or a
                ``CohortIndex`` (``ClientIndex.cohort``: the cohort's indices end to end
                and their counts, no object per client), with the same result.
            lr: SGD step size.
            epochs: local passes over each client's data.
            batch_size: minibatch size (the last minibatch of an epoch may be partial).
            mu: FedProx proximal coefficient; 0 is FedAvg.
            gen: the training stream; the shuffles of all clients are drawn from it, and
                (for a ``stochastic`` model only) one seed for the dropout masks after them.
            buffers: for a model with buffers, ``[b]`` buffers every client starts from, or
                ``[m, b]`` one row per client (``flat_buffers`` layout); None: the
                model's initial buffers. Returned after training in ``CohortResult.buffers``.
            clients: the clients' ids (one per entry of ``client_indices``), needed when
                ``local_opt`` keeps its state: each client starts from its kept state
                (zeros the first time) and its state after training is kept.
            orders: ``[epochs, m, >= max_n]`` the shuffles to train on (``draw_orders``'s
                layout: row ``r`` starts with a permutation of client ``r``'s indices)
                instead of drawing them from ``gen``; how a client trained elsewhere (a
                Flower node, a Ray shard) sees the minibatches the simulator would draw.
            out: ``[m, d]`` tensor (the parameters' dtype and device) the updates are
                written into and returned as ``CohortResult.updates``: a workspace the
                caller keeps across rounds, so a large cohort does not pay the first
                touch of fresh ``m x d`` memory every round; None: a new tensor.

        Returns:
            A ``CohortResult`` on the population's device.

        References:
            Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020).
        """
        if isinstance(client_indices, CohortIndex):  # checked when the ClientIndex was built
            flat, counts = client_indices.flat.to(self.device), client_indices.counts
            m = len(counts)
        else:
            indices = [ix if ix.dim() == 1 else ix.reshape(-1) for ix in client_indices]
            counts = torch.tensor([len(ix) for ix in indices], dtype=torch.long)
            m = len(indices)
        self._check_train_args(global_params, m, lr, epochs, batch_size, mu)
        b0 = self._check_buffers(buffers, m)
        w0 = global_params.detach().to(self.device, self._init.dtype)
        if out is not None and (out.shape != (m, self.d) or out.dtype != w0.dtype
                                or out.device != w0.device):
            raise ValueError(f"out must be a [{m}, {self.d}] {w0.dtype} tensor on {w0.device}, "
                             f"got {tuple(out.shape)} {out.dtype} on {out.device}")
        if not m:
            empty = torch.zeros(0, device=self.device)
            return CohortResult(empty.view(0, self.d), empty, counts.to(self.device),
                                empty.view(0, self.d_buffers) if b0 is not None else None)
        if not isinstance(client_indices, CohortIndex):
            flat = self._cat_indices(indices)  # one concatenation, one transfer
            self._check_indices(flat)
        if orders is None:
            orders = self._draw_orders(flat, counts, epochs, gen)  # [E, m, max_n]
        else:
            orders = self._given_orders(orders, counts, epochs)
        seed = draw_seed(gen) if self.stochastic else None
        noise = None
        if self.dp_sgd is not None:  # DP-SGD's noise: its own stream, seeded from gen
            noise = torch.Generator(device=self.device)
            noise.manual_seed(draw_seed(gen))
        st = start_state(self.local_opt, self.opt_state, m, self.d, w0, clients)
        cohort = Cohort(w0, orders, counts, lr, mu, batch_size, b0, st, noise, out)
        with one_thread_for_one_client(m, self.device):
            updates, losses, bufs = self._dispatch(cohort, seed)
        keep_state(self.local_opt, self.opt_state, st, clients)
        return CohortResult(updates, losses, counts.to(self.device), bufs)

    def evaluate(
        self, params: Tensor, x: Tensor, y: Tensor, batch_size: int = 4096,
        buffers: Tensor | None = None,
    ) -> tuple[float, float]:
        """Mean loss (``self.loss``) and accuracy of the model with flat ``params`` on ``(x, y)``.

        The model runs in ``eval()`` mode (Dropout off), so the result depends only on
        ``params`` and the data.

        Args:
            params: ``[d]`` flat parameters.
            x: ``[n, ...]`` inputs (any device; moved batch by batch).
            y: ``[n]`` labels.
            batch_size: samples per forward pass.
            buffers: ``[b]`` buffers (BatchNorm running statistics) to evaluate with, in
                ``flat_buffers`` layout; None: the model's initial buffers.

        Returns:
            ``(loss, accuracy)`` as Python floats.
        """
        return evaluate(self, params, x, y, batch_size, buffers)

    def accuracy_rows(self, rows: Tensor, x: Tensor, y: Tensor, batch_size: int = 4096,
                      buffers: Tensor | None = None) -> list[float]:
        """The accuracy of each model ``rows [n, d]`` on ``(x, y)`` (``eval()`` mode):
        ``[evaluate(row, ...)[1] for row in rows]``, with many rows per forward pass.

        Args:
            buffers: ``[n, b]`` each row's buffers; None: the model's initial buffers.
        """
        chunk = max(1, vmap_chunk_size(self, min(batch_size, len(x))))
        return accuracy_rows(self, rows, x, y, batch_size, buffers, chunk)

    # ----------------------------------------------------------------- checks
    def _check_train_args(
        self, global_params: Tensor, m: int, lr: float, epochs: int, batch_size: int, mu: float
    ) -> None:
        """Raise ValueError on arguments that cannot describe local training."""
        if global_params.shape not in ((self.d,), (m, self.d)):
            raise ValueError(f"global_params must be [{self.d}] or [{m}, {self.d}], "
                             f"got {tuple(global_params.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")

    def _check_buffers(self, buffers: Tensor | None, m: int | None) -> Tensor | None:
        """Buffers on the device (``[b]``, or ``[m, b]`` when ``m`` is given); None without."""
        if not self._spec.buf_names:
            if buffers is not None and buffers.numel():
                raise ValueError("buffers given for a model without buffers")
            return None
        if buffers is None:
            return self._init_buffers
        shapes = ((self.d_buffers,),) if m is None else ((self.d_buffers,), (m, self.d_buffers))
        if tuple(buffers.shape) not in shapes:
            raise ValueError(f"buffers must be one of {shapes}, got {tuple(buffers.shape)}")
        return buffers.detach().to(self.device, self._init.dtype)

    def _cat_indices(self, indices: Sequence[Tensor]) -> Tensor:
        """All clients' 1-D indices end to end, ``[sum n_i]`` int64 on the device.

        One ``torch.cat`` and one transfer for the cohort (not one per client);
        index tensors on different devices are moved one by one first.
        """
        try:
            flat = torch.cat(list(indices))
        except RuntimeError:  # e.g. index tensors on different devices
            flat = torch.cat([ix.to(self.device) for ix in indices])
        return flat.to(self.device, torch.long)

    def _check_indices(self, flat: Tensor) -> None:
        """Raise IndexError when a client index in ``flat`` is outside ``[0, N)``."""
        if flat.numel() and ((flat < 0) | (flat >= len(self.x))).any().item():
            raise IndexError(f"client indices must lie in [0, {len(self.x)})")

    # ------------------------------------------------------ shuffles, chunks
    def _draw_orders(self, flat: Tensor, counts: Tensor, epochs: int, gen: torch.Generator
                     ) -> Tensor:
        """Shuffled sample indices of every client and epoch, ``[epochs, m, max_n]``
        (``layout.draw_orders``: one ``torch.rand(m, max_n)`` per epoch from ``gen``; both
        paths and every chunking use these draws). ``flat``: the cohort's indices end to end."""
        return draw_orders(flat, counts, epochs, gen, self.device)

    def draw_orders(self, client_indices: Sequence[Tensor] | CohortIndex, epochs: int,
                    gen: torch.Generator) -> Tensor:
        """The shuffles ``train`` would draw from ``gen`` for this cohort,
        ``[epochs, m, max_n]`` (pass them, or rows of them, as ``train(orders=...)``)."""
        if isinstance(client_indices, CohortIndex):
            return self._draw_orders(client_indices.flat.to(self.device),
                                     client_indices.counts, epochs, gen)
        indices = [ix.reshape(-1) for ix in client_indices]
        counts = torch.tensor([len(ix) for ix in indices], dtype=torch.long)
        flat = self._cat_indices(indices) if indices else counts.new_zeros(0)
        return self._draw_orders(flat, counts, epochs, gen)

    def _given_orders(self, orders: Tensor, counts: Tensor, epochs: int) -> Tensor:
        """``train``'s ``orders`` checked against the cohort and cut to its widest client."""
        max_n = int(counts.max())
        if orders.dim() != 3 or orders.shape[:2] != (epochs, len(counts)) or \
                orders.shape[2] < max_n:
            raise ValueError(f"orders must be [epochs={epochs}, m={len(counts)}, >= {max_n}], "
                             f"got {tuple(orders.shape)}")
        return orders[:, :, :max_n].to(self.device, torch.long)

    def _chunk_size(self, batch_size: int) -> int:
        """Clients per vmapped chunk (``chunking.vmap_chunk_size``)."""
        return vmap_chunk_size(self, batch_size)

    def _fused_chunk_size(self, batch_size: int) -> int:
        """Clients per chunk of the fused engine (``chunking.fused_chunk_size``)."""
        return fused_chunk_size(self, batch_size)

    # -------------------------------------------------------------- dispatch
    def _dispatch(
        self, cohort: Cohort, seed: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Train batched when possible; fall back to the loop once, with a warning.

        The model is in ``train()`` mode; with a ``seed`` (a ``stochastic`` model) each
        path runs with the global RNG seeded from it, restored afterwards. Returns
        (updates, losses, buffers after training or None without ``cohort.b0``).
        """
        engine = self.engine
        if engine == "fused_mlp" and cohort.w0.dim() == 2:
            engine = "vmap"  # the fused engine assumes one starting point for the chunk
        self.model.train()
        if engine != "loop":
            st = cohort.st
            backup = None if st is None else st.clone()  # what the loop starts over from
            try:
                if engine == "fused_mlp":  # a Linear/ReLU stack has no buffers
                    return (*train_fused(self, cohort), None)
                with seeded_rng(seed, self.device):
                    return train_batched(self, cohort)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
                if self.dp_sgd is not None:  # the loop has no DP-SGD: never fall back to it
                    raise
                if backup is not None:  # the loop starts over
                    st.copy_(backup)
                self.vmap_fallback = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(
                    f"fedsim.population: {engine} failed for {type(self.model).__name__} "
                    f"({self.vmap_fallback}); training clients one by one from now on",
                    RuntimeWarning,
                    stacklevel=3,
                )
        with seeded_rng(seed, self.device):
            return train_loop(self, cohort)
