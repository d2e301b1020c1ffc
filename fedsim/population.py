"""Train a whole cohort of clients at once (``torch.func`` + ``vmap``), or one by one.

Local training, identical in both paths: every client starts at the global
parameters; in each epoch it visits its own samples in a fresh random order and
takes ``ceil(n_i / batch_size)`` plain SGD steps (no momentum) on consecutive
minibatches, the last one partial. The step loss is the mean loss (cross-entropy, or
the user's per-sample ``loss``; ``fedsim.losses``) over the real samples of the
minibatch, plus ``(mu / 2) * ||w - w_global||^2`` when ``mu > 0`` (FedProx).

The batched path stacks the parameters of ``m`` clients along a new leading
dimension and computes all their gradients with
``vmap(grad_and_value(loss))``. Clients smaller than the largest one get padded
minibatches with a sample mask; a step with no real sample is masked out
entirely, so it leaves the client unchanged even with ``mu > 0``. The shuffles
of all clients and epochs are drawn up front from the caller's generator, in an
order that does not depend on the path or on chunking, so both paths see
exactly the same minibatches.

For a plain stack of Linear and ReLU layers (the ``logreg`` and ``mlp`` models)
the batched path is the fused engine of ``fedsim.fastmlp`` instead: the same SGD
steps on the same minibatches, written as batched matrix products with the update
fused into the gradient product (about 2.3x faster than ``vmap`` on the benchmark
MLP). ``Population.engine`` says which path a population takes.

Other local optimizers (``local_opt``, ``fedsim.local_opt``: SGD with momentum or
weight decay, Adam) replace the plain SGD step by ``torch.optim``'s update on the same
gradient (FedProx's term included), on the generic ``vmap`` path (SGD with momentum or
weight decay also on the fused engine, through a buffer per layer) and on the loop
path, with the optimizer's state (momentum buffer; Adam's moments and
step count) as explicit ``[m, d]`` rows: fresh at every ``train`` (``state = "reset"``)
or kept per client id in ``opt_state`` between calls (``state = "keep"``, ``clients=``).
A step in which a client has no real sample changes neither its parameters nor its state.

Modes and randomness, as in a PyTorch training loop: clients train with the
model in ``train()`` mode and ``evaluate`` runs it in ``eval()`` mode (Dropout
off). A model that draws random numbers in train mode (``Population.stochastic``:
Dropout and the like, found by probing one forward pass) gets its randomness from
the caller's training stream: ``train`` draws one seed from ``gen`` after the
shuffles and runs local training with torch's global RNG seeded from it inside
``torch.random.fork_rng``, so the caller's global RNG is left as it was and a rerun
draws the same masks. The batched path vmaps with ``randomness="different"``
(each client its own masks, Dropout stays batched); the loop path draws client
after client from the same seeded RNG. The two paths draw different masks (both
reproducible). A model without randomness draws no seed, so its runs are exactly
those of a model that never had a Dropout layer.

Buffers (BatchNorm running statistics) are part of a client's state: ``train``
takes the buffers every client starts from (``[b]``, or ``[m, b]`` one row per
client) and returns each client's buffers after training (``CohortResult.buffers``),
and ``evaluate`` runs with given buffers. Averaging them (FedAvg) or keeping them
per client (FedBN) is the caller's policy. A model with buffers trains batched too,
each client's buffers a row of the vmap; a step in which a client has fewer than
``batch_size`` real samples (its last, partial minibatch) is taken for that client
alone, so padding slots never enter its batch statistics.

References:
    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (AISTATS 2017) -- local SGD of FedAvg.
    Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020) --
    the FedProx proximal term.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils import parameters_to_vector

from fedsim.fastmlp import FusedMLP, match_mlp
from fedsim.local_opt import LocalOpt
from fedsim.losses import cross_entropy

# Memory budget (bytes) for one vmapped chunk of clients on CPU when
# ``max_batched_clients`` is None: stacked parameters, gradients and temporaries plus
# minibatch activations. Small on purpose: a chunk's temporaries (fresh every SGD
# step) then stay below glibc's mmap threshold (at most 32 MiB) and are recycled by
# the allocator; larger ones are mmapped anew and page-faulted on every step. For the
# benchmark MLP at 1000 clients, 234-client chunks trained 1.4x faster than one
# 1000-client chunk (docs/performance.md).
DEFAULT_CHUNK_BYTES = 64 * 2**20
# On a GPU (caching allocator, no page faults) the budget is the larger of this and
# 1/8 of the device's memory.
GPU_MIN_CHUNK_BYTES = 256 * 2**20
# Workspace budget (bytes) of one chunk of the fused Linear/ReLU engine on CPU
# (``fedsim.fastmlp``: the chunk's parameters, activations and gradients, allocated
# once per ``train`` and reused by every chunk and step). Measured on the benchmark MLP
# at 1000 clients (2-core Xeon, 2 MiB L2 per core): chunks of 96 to 192 clients were
# fastest at 1 and 2 threads, 26 (a 2 MiB budget) 10-25% slower; 10 MiB gives 132.
FUSED_CHUNK_BYTES = 10 * 2**20


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
    ):
        if not torch.is_floating_point(x):
            raise ValueError(f"x must be a floating tensor, got {x.dtype}")
        if y.dim() != 1 or len(y) != len(x):
            raise ValueError(f"y must be [N] with N = len(x) = {len(x)}, got {tuple(y.shape)}")
        if max_batched_clients is not None and max_batched_clients < 1:
            raise ValueError(f"max_batched_clients must be >= 1 or None, got {max_batched_clients}")
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device)
        named = [(n, p) for n, p in self.model.named_parameters()]
        self._names = tuple(n for n, _ in named)
        self._shapes = tuple(p.shape for _, p in named)
        self._numels = tuple(p.numel() for _, p in named)
        self._init = parameters_to_vector([p.detach() for _, p in named]).clone()
        buffers = list(self.model.named_buffers())
        self._buf_names = tuple(n for n, _ in buffers)
        self._buf_shapes = tuple(t.shape for _, t in buffers)
        self._buf_numels = tuple(t.numel() for _, t in buffers)
        self._buf_dtypes = tuple(t.dtype for _, t in buffers)
        self._init_buffers = (torch.cat([t.detach().reshape(-1).to(self._init.dtype)
                                         for _, t in buffers])
                              if buffers else self._init.new_zeros(0))
        self.x = x.to(self.device, self._init.dtype)
        self.y = y.to(self.device, torch.long)
        self.batched = batched
        self.local_opt = local_opt if local_opt is not None else LocalOpt()
        # per-sample losses (logits [B, C], labels [B]) -> [B]; cross-entropy by default
        self.loss = loss if loss is not None else cross_entropy
        self.opt_state: dict[int, tuple[tuple[Tensor, ...], int]] = {}
        self.max_batched_clients = max_batched_clients
        self.vmap_fallback: str | None = None
        self._act_numel = self._activation_numel()
        self.stochastic = self._draws_random()
        # "different": each client (row of the vmap) draws its own dropout masks; a model
        # without randomness keeps "error", so an undetected random op falls back to the
        # loop instead of drawing unseeded numbers.
        self._vgrad = vmap(grad_and_value(self._client_loss),
                           randomness="different" if self.stochastic else "error")
        # The fused engine for plain Linear/ReLU stacks; None keeps the generic path.
        self._fused: FusedMLP | None = (  # it computes cross-entropy's gradient itself
            match_mlp(self.model, tuple(self.x.shape[1:])) if fused and loss is None else None)
        # [N, fan_in] rows for the fused engine (a view unless x is non-contiguous)
        self._x_rows = self.x.flatten(1) if self._fused is not None else self.x
        self._vgrad_buffers = vmap(grad_and_value(self._client_loss_buffers),
                                   randomness="different" if self.stochastic else "error")

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
        client_indices: Sequence[Tensor],
        *,
        lr: float,
        epochs: int,
        batch_size: int,
        mu: float = 0.0,
        gen: torch.Generator,
        buffers: Tensor | None = None,
        clients: Sequence[int] | None = None,
    ) -> CohortResult:
        """Run local SGD (FedAvg, or FedProx with ``mu > 0``) for a cohort of clients.

        Args:
            global_params: ``[d]`` parameters every client starts from, or ``[m, d]``:
                client ``r`` starts from row ``r`` (decentralized learning). Updates are
                then relative to each client's own row, and so is FedProx's anchor.
            client_indices: one 1-D integer tensor per client, indices into ``x``.
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

        Returns:
            A ``CohortResult`` on the population's device.

        References:
            Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020).
        """
        indices = [ix if ix.dim() == 1 else ix.reshape(-1) for ix in client_indices]
        self._check_train_args(global_params, len(indices), lr, epochs, batch_size, mu)
        b0 = self._check_buffers(buffers, len(indices))
        w0 = global_params.detach().to(self.device, self._init.dtype)
        counts = torch.tensor([len(ix) for ix in indices], dtype=torch.long)
        if not indices:
            empty = torch.zeros(0, device=self.device)
            return CohortResult(empty.view(0, self.d), empty, counts.to(self.device),
                                empty.view(0, self.d_buffers) if b0 is not None else None)
        flat = self._cat_indices(indices)  # one concatenation, one transfer
        self._check_indices(flat)
        orders = self._draw_orders(indices, counts, epochs, gen, flat=flat)  # [E, m, max_n]
        seed = _draw_seed(gen) if self.stochastic else None
        st = self._opt_start(len(indices), w0, clients)
        with _one_thread_for_one_client(len(indices), self.device):
            updates, losses, bufs = self._dispatch(w0, orders, counts, lr, mu, batch_size,
                                                   seed=seed, b0=b0, st=st)
        if st is not None and self.local_opt.keeps:
            assert clients is not None
            for r, cid in enumerate(clients):
                self.opt_state[int(cid)] = (tuple(t[r].clone() for t in st.slots),
                                            int(st.steps[r]))
        return CohortResult(updates, losses, counts.to(self.device), bufs)

    def _opt_start(self, m: int, w0: Tensor, clients: Sequence[int] | None) -> _OptState | None:
        """The cohort's optimizer state at the start of training (None for plain SGD)."""
        opt = self.local_opt
        if clients is not None and len(clients) != m:
            raise ValueError(f"clients must name the {m} clients, got {len(clients)} ids")
        if opt.plain:
            return None
        if opt.keeps and clients is None:
            raise ValueError("local_opt keeps each client's state: train needs clients=")
        st = _OptState([w0.new_zeros(m, self.d) for _ in range(opt.slots)],
                       torch.zeros(m, dtype=torch.long))
        if opt.keeps:
            assert clients is not None
            for r, cid in enumerate(clients):
                kept = self.opt_state.get(int(cid))
                if kept is not None:
                    for t, row in zip(st.slots, kept[0], strict=True):
                        t[r] = row
                    st.steps[r] = kept[1]
        return st

    @torch.no_grad()
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
        if len(x) == 0:
            raise ValueError("evaluate needs at least one sample")
        flat = params.to(self.device, self._init.dtype)
        p = dict(zip(self._names, self._unflatten(flat), strict=True))
        b0 = self._check_buffers(buffers, None)
        if b0 is not None:
            p.update(self._buffer_dict(b0))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.model.eval()
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(self.device, self._init.dtype)
            yb = y[start : start + batch_size].to(self.device, torch.long)
            logits = functional_call(self.model, p, (xb,))
            loss_sum += self.loss(logits, yb).sum()
            correct += (logits.argmax(dim=1) == yb).sum()
        return loss_sum.item() / len(x), correct.item() / len(x)

    # ----------------------------------------------------------------- setup
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
        if not self._buf_names:
            if buffers is not None and buffers.numel():
                raise ValueError("buffers given for a model without buffers")
            return None
        if buffers is None:
            return self._init_buffers
        shapes = ((self.d_buffers,),) if m is None else ((self.d_buffers,), (m, self.d_buffers))
        if tuple(buffers.shape) not in shapes:
            raise ValueError(f"buffers must be one of {shapes}, got {tuple(buffers.shape)}")
        return buffers.detach().to(self.device, self._init.dtype)

    def _buffer_dict(self, flat: Tensor) -> dict[str, Tensor]:
        """Fresh buffer tensors of the model's shapes and dtypes from a ``[b]`` vector."""
        parts = torch.split(flat, self._buf_numels)
        return {n: t.reshape(s).to(dtype, copy=True) for n, t, s, dtype in
                zip(self._buf_names, parts, self._buf_shapes, self._buf_dtypes, strict=True)}

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

    def _activation_numel(self) -> int:
        """Elements of all leaf-module outputs for one sample (for the chunk-size estimate)."""
        sizes: list[int] = []

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                sizes.append(output.numel())

        leaves = [m for m in self.model.modules() if not any(True for _ in m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        try:
            with self._probe(training=False) as buffers:
                functional_call(self.model, buffers, (self.x[:1],))
        except Exception:  # noqa: BLE001 - only an estimate; fall back to the input size
            sizes = [self.x[:1].numel()]
        finally:
            for h in handles:
                h.remove()
        return max(sum(sizes), 1)

    def _draws_random(self) -> bool:
        """Whether the model draws random numbers in ``train()`` mode (``stochastic``).

        One forward pass of two training samples in train mode, inside ``fork_rng`` and on
        copies of the buffers (the model, its buffers and the caller's RNG are left as they
        were): random if the global RNG of the population's device moved. Also True for
        any Dropout module with ``p > 0`` (when the probe cannot run, e.g. no samples).
        """
        dropout = any(isinstance(m, _DropoutNd) and m.p > 0 for m in self.model.modules())
        if len(self.x) == 0:
            return dropout
        try:
            with self._probe(training=True) as buffers:
                before = _rng_states(self.device)
                functional_call(self.model, buffers, (self.x[:2],))
                moved = any(not torch.equal(a, b)
                            for a, b in zip(before, _rng_states(self.device), strict=True))
        except Exception:  # noqa: BLE001 - the probe is a hint; training reports real errors
            moved = False
        return moved or dropout

    @contextmanager
    def _probe(self, training: bool):
        """A forward pass that leaves no trace: the given mode, no grad, forked RNG.

        Yields copies of the model's buffers (pass them to ``functional_call``, so
        BatchNorm statistics are not updated); the modules' modes and the caller's global
        RNG are restored on exit.
        """
        modes = [m.training for m in self.model.modules()]
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        try:
            with torch.random.fork_rng(devices=_cuda_index(self.device)), torch.no_grad():
                self.model.train(training)
                yield buffers
        finally:
            for m, mode in zip(self.model.modules(), modes, strict=True):
                m.training = mode

    def _fused_chunk_size(self, batch_size: int) -> int:
        """Clients per chunk of the fused engine: the user's cap, or its workspace budget."""
        if self.max_batched_clients is not None:
            return self.max_batched_clients
        assert self._fused is not None
        budget = FUSED_CHUNK_BYTES if self.device.type != "cuda" else self._memory_budget()
        per_client = self._fused.bytes_per_client(batch_size, self._init.element_size())
        return max(1, budget // per_client)

    def _chunk_size(self, batch_size: int) -> int:
        """Clients per vmapped chunk: the user's cap, or the memory-budget estimate."""
        if self.max_batched_clients is not None:
            return self.max_batched_clients
        per_sample = 3 * self._act_numel + self.x[:1].numel()
        per_client_bytes = 4 * (4 * self.d + 2 * self.d_buffers + batch_size * per_sample)
        return max(1, self._memory_budget() // per_client_bytes)

    def _memory_budget(self) -> int:
        """Bytes one vmapped chunk may use: ``DEFAULT_CHUNK_BYTES`` on CPU, more on a GPU."""
        if self.device.type != "cuda":
            return DEFAULT_CHUNK_BYTES
        total = torch.cuda.get_device_properties(self.device).total_memory
        return max(GPU_MIN_CHUNK_BYTES, total // 8)

    def _draw_orders(
        self,
        indices: Sequence[Tensor],
        counts: Tensor,
        epochs: int,
        gen: torch.Generator,
        flat: Tensor | None = None,
    ) -> Tensor:
        """Shuffled sample indices of every client and epoch, ``[epochs, m, max_n]``.

        One ``torch.rand(m, max_n)`` per epoch from ``gen``; padding keys are pushed to
        the end, so row i starts with a permutation of client i's indices (padding
        holds index 0 and is masked). Both paths and every chunking use these draws.
        ``flat`` is ``_cat_indices(indices)`` when the caller already has it.
        """
        m, max_n = len(indices), int(counts.max())
        if flat is None:
            flat = self._cat_indices(indices) if m else counts.new_zeros(0)
        pad = torch.arange(max_n, device=self.device) >= counts.to(self.device)[:, None]
        if int(counts.min()) == max_n:  # equal sizes: the concatenation is the matrix
            padded = flat.view(m, max_n)
        else:
            padded = flat.new_zeros(m, max_n)
            padded[~pad] = flat  # row-major: client i's indices fill row i's first n_i slots
        orders = []
        for _ in range(epochs):
            keys = torch.rand(m, max_n, generator=gen, device=gen.device).to(self.device)
            perm = keys.masked_fill_(pad, 2.0).argsort(dim=1, stable=True)
            orders.append(padded.gather(1, perm))
        if not orders:
            return padded.new_zeros(0, m, max_n)
        return torch.stack(orders)

    def _opt_views(self, st: _OptState | None) -> _OptViews | None:
        """Parameter-shaped ``[m, *shape]`` views of the optimizer state's rows."""
        if st is None:
            return None
        return _OptViews([self._unflatten_rows(t) for t in st.slots], st.steps)

    def _opt_step(
        self,
        params: list[Tensor],
        grads: list[Tensor],
        anchors: list[Tensor],
        lr: float,
        mu: float,
        step_mask: Tensor | None,
        views: _OptViews | None,
    ) -> None:
        """One local optimizer step, in place, for stacked ``[m, ...]`` parameters.

        ``views`` None: plain SGD (``_sgd_step``). Otherwise ``self.local_opt``'s update
        (``fedsim.local_opt``, the equations of ``torch.optim.SGD`` / ``torch.optim.Adam``)
        on the gradient ``grad + mu (w - anchor) + weight_decay * w``; a client whose
        ``step_mask`` is 0 (no real sample in the step) keeps its parameters and state.
        """
        if views is None:
            _sgd_step(params, grads, anchors, lr, mu, step_mask)
            return
        opt = self.local_opt
        if mu > 0:
            torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=mu)
        if opt.weight_decay > 0:
            torch._foreach_add_(grads, params, alpha=opt.weight_decay)
        active = None if step_mask is None else step_mask.bool()

        def keep_inactive(new: list[Tensor], old: list[Tensor]) -> None:
            """``old <- new`` for the active clients (all of them without a mask)."""
            for n, o in zip(new, old, strict=True):
                if active is None:
                    o.copy_(n)
                else:
                    o.copy_(torch.where(active.view(-1, *([1] * (o.dim() - 1))), n, o))

        def per_client(values: list[float], t: Tensor) -> Tensor:
            return torch.tensor(values, dtype=t.dtype, device=t.device).view(
                -1, *([1] * (t.dim() - 1)))

        if opt.name == "sgd":
            upd = grads
            if opt.momentum > 0:  # b <- momentum * b + g (b = g on the first step: b is 0)
                bufs = views.slots[0]
                new = torch._foreach_mul(bufs, opt.momentum)
                torch._foreach_add_(new, grads)
                keep_inactive(new, bufs)
                upd = bufs
            if step_mask is not None:
                upd = [u * step_mask.view(-1, *([1] * (u.dim() - 1))) for u in upd]
            torch._foreach_add_(params, upd, alpha=-lr)
            return
        # adam
        ms, vs = views.slots
        steps = views.steps
        acts = [True] * len(steps) if active is None else active.tolist()
        steps += torch.tensor(acts, dtype=steps.dtype)
        t_list = steps.tolist()
        step_size = [lr / (1.0 - opt.beta1 ** t) if a else 0.0
                     for t, a in zip(t_list, acts, strict=True)]
        c2 = [math.sqrt(1.0 - opt.beta2 ** t) if a else 1.0
              for t, a in zip(t_list, acts, strict=True)]
        new_m = [m.lerp(g, 1.0 - opt.beta1) for m, g in zip(ms, grads, strict=True)]
        new_v = [v.mul(opt.beta2).addcmul_(g, g, value=1.0 - opt.beta2)
                 for v, g in zip(vs, grads, strict=True)]
        keep_inactive(new_m, ms)
        keep_inactive(new_v, vs)
        for p, m, v in zip(params, ms, vs, strict=True):
            denom = (v.sqrt() / per_client(c2, v)).add_(opt.eps)
            p.sub_((m / denom).mul_(per_client(step_size, p)))

    def _unflatten(self, flat: Tensor) -> list[Tensor]:
        """Split a ``[d]`` vector into views shaped like the model's parameters."""
        return [
            t.view(s) for t, s in zip(torch.split(flat, self._numels), self._shapes, strict=True)
        ]

    def _unflatten_rows(self, flat: Tensor) -> list[Tensor]:
        """Views of a ``[m, d]`` matrix shaped ``[m, *shape]`` for each parameter tensor."""
        m = flat.shape[0]
        cols = torch.split(flat, self._numels, dim=1)
        return [c.view(m, *s) for c, s in zip(cols, self._shapes, strict=True)]

    # -------------------------------------------------------------- dispatch
    def _dispatch(
        self,
        w0: Tensor,
        orders: Tensor,
        counts: Tensor,
        lr: float,
        mu: float,
        batch_size: int,
        seed: int | None = None,
        b0: Tensor | None = None,
        st: _OptState | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Train batched when possible; fall back to the loop once, with a warning.

        The model is in ``train()`` mode; with a ``seed`` (a ``stochastic`` model) each
        path runs with the global RNG seeded from it, restored afterwards. ``b0``: the
        clients' starting buffers (a model with buffers); returns (updates, losses,
        buffers after training or None).
        """
        engine = self.engine
        if engine == "fused_mlp" and w0.dim() == 2:
            engine = "vmap"  # the fused engine assumes one starting point for the chunk
        self.model.train()
        if engine != "loop":
            try:
                if engine == "fused_mlp":  # a Linear/ReLU stack has no buffers
                    return (*self._train_fused(w0, orders, counts, lr, mu, batch_size, st),
                            None)
                backup = None if st is None else st.clone()
                with _seeded_rng(seed, self.device):
                    return self._train_batched(w0, orders, counts, lr, mu, batch_size, b0, st)
            except (RuntimeError, NotImplementedError, TypeError, ValueError) as exc:
                if st is not None and backup is not None:  # the loop starts over
                    st.copy_(backup)
                self.vmap_fallback = f"{type(exc).__name__}: {exc}".splitlines()[0]
                warnings.warn(
                    f"fedsim.population: {engine} failed for {type(self.model).__name__} "
                    f"({self.vmap_fallback}); training clients one by one from now on",
                    RuntimeWarning,
                    stacklevel=3,
                )
        with _seeded_rng(seed, self.device):
            return self._train_loop(w0, orders, counts, lr, mu, batch_size, b0, st)

    # ----------------------------------------------------------------- fused
    def _train_fused(
        self, w0: Tensor, orders: Tensor, counts: Tensor, lr: float, mu: float, batch_size: int,
        st: _OptState | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Train the cohort with the fused Linear/ReLU engine, ``_fused_chunk_size`` at a time.

        The same minibatches (``_step_layout`` of the same orders) and the same SGD
        steps as ``_train_batched``; one workspace serves every chunk. ``st``: SGD with
        momentum or weight decay (None: plain SGD); the momentum buffers go to the
        engine's stored layout and back, chunk by chunk.
        """
        fused = self._fused
        assert fused is not None
        m, epochs = len(counts), orders.shape[0]
        chunk = min(m, self._fused_chunk_size(batch_size))
        updates = w0.new_empty(m, self.d)
        losses = w0.new_empty(m)
        n_dev = counts.to(self.device)
        templates = fused.templates(w0)
        ws = fused.workspace(chunk, batch_size, w0)
        opt_ws = (None if st is None else
                  [w0.new_empty(chunk, *spec.shape) for spec in fused.specs])
        for start in range(0, m, chunk):
            rows = slice(start, start + chunk)
            c, n = counts[rows], n_dev[rows]
            batches, mask = _step_layout(orders[:, rows, : int(c.max())], n, batch_size,
                                         w0.dtype)
            weights = mask / mask.sum(dim=2, keepdim=True).clamp_min(1.0)  # r / max(c, 1)
            kw: dict = {}
            if st is not None and opt_ws is not None:
                if st.slots:  # the momentum buffers
                    bufs = fused.stored(st.slots[0][rows], opt_ws)
                else:  # weight decay only: a scratch buffer (momentum 0)
                    bufs = [b[: len(c)].zero_() for b in opt_ws]
                kw = {"momentum": self.local_opt.momentum,
                      "weight_decay": self.local_opt.weight_decay, "bufs": bufs}
            fused.train_chunk(ws, templates, self._x_rows, self.y, w0, batches, weights,
                              mask[:, :, 0], lr, mu, out=(updates[rows], losses[rows]),
                              num_steps=_num_steps(n, batch_size, epochs), **kw)
            if st is not None and st.slots:
                fused.write_rows(kw["bufs"], st.slots[0][rows])
        return updates, losses

    # --------------------------------------------------------------- batched
    def _client_loss(self, params: tuple[Tensor, ...], xb: Tensor, yb: Tensor, mask: Tensor):
        """Masked mean loss of one client's minibatch (vmapped over clients)."""
        logits = functional_call(self.model, dict(zip(self._names, params, strict=True)), (xb,))
        return (self.loss(logits, yb) * mask).sum() / mask.sum().clamp_min(1.0)

    def _train_batched(
        self,
        w0: Tensor,
        orders: Tensor,
        counts: Tensor,
        lr: float,
        mu: float,
        batch_size: int,
        b0: Tensor | None = None,
        st: _OptState | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Train the cohort in vmapped chunks of at most ``_chunk_size`` clients."""
        chunk = self._chunk_size(batch_size)
        m = len(counts)
        # Each chunk trains in place in its rows of the result: no per-chunk buffers to concatenate.
        updates = w0.new_empty(m, self.d)
        losses = w0.new_empty(m)
        buffers = None if b0 is None else w0.new_empty(m, self.d_buffers)
        for start in range(0, m, chunk):
            rows = slice(start, start + chunk)
            c = counts[rows]
            o = orders[:, rows, : int(c.max())]
            start_rows = w0[rows] if w0.dim() == 2 else w0
            st_rows = None if st is None else st.rows(rows)
            if b0 is None or buffers is None:
                self._train_chunk(start_rows, o, c, lr, mu, batch_size,
                                  out=(updates[rows], losses[rows]), st=st_rows)
            else:
                self._train_chunk_buffers(start_rows, o, c, lr, mu, batch_size,
                                          b0[rows] if b0.dim() == 2 else b0,
                                          out=(updates[rows], losses[rows], buffers[rows]),
                                          st=st_rows)
        return updates, losses, buffers

    def _train_chunk(
        self,
        w0: Tensor,
        orders: Tensor,
        counts: Tensor,
        lr: float,
        mu: float,
        batch_size: int,
        out: tuple[Tensor, Tensor] | None = None,
        st: _OptState | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Local SGD for one chunk of ``m`` clients with stacked ``[m, ...]`` parameters.

        ``out``: ``([m, d], [m])`` tensors to write the updates and losses into
        (allocated when None); returned either way. ``st``: the chunk's optimizer state
        (None: plain SGD), updated in place.
        """
        epochs, m, max_n = orders.shape
        bs = batch_size
        n_dev = counts.to(self.device)
        orders, mask = _step_layout(orders, n_dev, bs, w0.dtype)
        steps = orders.shape[1]
        min_n = int(counts.min())
        if out is None:
            out = (w0.new_empty(m, self.d), w0.new_empty(m))
        flat = out[0].copy_(w0.expand(m, -1))  # [m, d]; params are views into its rows
        params = self._unflatten_rows(flat)
        if w0.dim() == 2:  # per-client starting points: each row is its own anchor
            anchors = self._unflatten_rows(w0)
        else:
            anchors = [p.unsqueeze(0).expand_as(q)
                       for p, q in zip(self._unflatten(w0), params, strict=True)]
        opt_views = self._opt_views(st)
        feat = self.x.shape[1:]
        xbuf = self.x.new_empty((m * bs, *feat))
        loss_sum = torch.zeros(m, dtype=w0.dtype, device=self.device)
        for e in range(epochs):
            for s in range(steps):
                idx = orders[e, s].view(-1)
                xb = torch.index_select(self.x, 0, idx, out=xbuf).view(m, bs, *feat)
                yb = self.y[idx].view(m, bs)
                grads, loss = self._vgrad(tuple(params), xb, yb, mask[s])
                step_mask = None if s * bs < min_n else mask[s, :, 0]
                self._opt_step(params, list(grads), anchors, lr, mu, step_mask, opt_views)
                loss_sum += loss
        torch.div(loss_sum, _num_steps(n_dev, bs, epochs), out=out[1])
        return flat.sub_(w0), out[1]

    def _client_loss_buffers(
        self, params: tuple[Tensor, ...], buffers: tuple[Tensor, ...], xb: Tensor, yb: Tensor,
        mask: Tensor,
    ):
        """``_client_loss`` with the client's own buffers (updated in place by BatchNorm)."""
        state = dict(zip(self._names, params, strict=True))
        state.update(zip(self._buf_names, buffers, strict=True))
        logits = functional_call(self.model, state, (xb,))
        return (self.loss(logits, yb) * mask).sum() / mask.sum().clamp_min(1.0)

    def _train_chunk_buffers(
        self,
        w0: Tensor,
        orders: Tensor,
        counts: Tensor,
        lr: float,
        mu: float,
        batch_size: int,
        b0: Tensor,
        out: tuple[Tensor, Tensor, Tensor],
        st: _OptState | None = None,
    ) -> None:
        """``_train_chunk`` for a model with buffers (BatchNorm), writing into ``out``.

        Each client's buffers ride along in the vmap, so BatchNorm updates that client's
        own running statistics. A client with fewer than ``batch_size`` real samples in
        a step takes that step alone, on its real samples only (padding slots must not
        enter its batch statistics); its buffers are restored from before the vmapped
        step first. A step with no real sample leaves the client's buffers as they were.
        """
        epochs, m, _ = orders.shape
        bs = batch_size
        n_dev = counts.to(self.device)
        n_list = counts.tolist()
        orders, mask = _step_layout(orders, n_dev, bs, w0.dtype)
        steps = orders.shape[1]
        updates, losses, buffers_out = out
        flat = updates.copy_(w0.expand(m, -1))  # [m, d]; params are views into its rows
        params = self._unflatten_rows(flat)
        if w0.dim() == 2:
            anchors = self._unflatten_rows(w0)
        else:
            anchors = [p.unsqueeze(0).expand_as(q)
                       for p, q in zip(self._unflatten(w0), params, strict=True)]
        rows = b0.expand(m, -1) if b0.dim() == 1 else b0
        buffers = [t.reshape(m, *shape).to(dtype, copy=True) for t, shape, dtype in
                   zip(torch.split(rows, self._buf_numels, dim=1), self._buf_shapes,
                       self._buf_dtypes, strict=True)]
        feat = self.x.shape[1:]
        opt_views = self._opt_views(st)
        loss_sum = torch.zeros(m, dtype=w0.dtype, device=self.device)
        for e in range(epochs):
            for s in range(steps):
                short = [r for r, n in enumerate(n_list) if n < (s + 1) * bs]
                idx = orders[e, s].reshape(-1)
                xb, yb = self.x[idx].view(m, bs, *feat), self.y[idx].view(m, bs)
                kept = [b[short].clone() for b in buffers] if short else []
                grads, loss = self._vgrad_buffers(tuple(params), tuple(buffers), xb, yb, mask[s])
                step_mask = None
                if short:
                    step_mask = torch.ones(m, dtype=w0.dtype, device=self.device)
                    step_mask[short] = 0.0
                    loss = loss * step_mask
                    for b, k in zip(buffers, kept, strict=True):
                        b[short] = k
                self._opt_step(params, list(grads), anchors, lr, mu, step_mask, opt_views)
                loss_sum += loss
                for r in short:
                    c = n_list[r] - s * bs
                    if c > 0:
                        loss_sum[r] += self._client_step(r, params, anchors, buffers,
                                                         orders[e, s, r, :c], lr, mu,
                                                         opt_views)
        torch.div(loss_sum, _num_steps(n_dev, bs, epochs), out=losses)
        torch.cat([b.reshape(m, -1).to(w0.dtype) for b in buffers], dim=1, out=buffers_out)
        flat.sub_(w0)

    def _client_step(
        self,
        r: int,
        params: list[Tensor],
        anchors: list[Tensor],
        buffers: list[Tensor],
        idx: Tensor,
        lr: float,
        mu: float,
        opt_views: _OptViews | None = None,
    ) -> Tensor:
        """One SGD step of client ``r`` of a chunk on samples ``idx``, in place in its rows.

        Returns the step's mean loss.
        """
        base = [p[r] for p in params]
        leaves = [t.detach().clone().requires_grad_(True) for t in base]
        state = dict(zip(self._names, leaves, strict=True))
        state.update(zip(self._buf_names, (b[r] for b in buffers), strict=True))
        loss = self.loss(functional_call(self.model, state, (self.x[idx],)), self.y[idx]).mean()
        grads = list(torch.autograd.grad(loss, leaves))
        with torch.no_grad():
            if opt_views is None:
                _sgd_step(base, grads, [a[r] for a in anchors], lr, mu, None)
            else:
                rows = slice(r, r + 1)
                self._opt_step([p[rows] for p in params], [g.unsqueeze(0) for g in grads],
                               [a[rows] for a in anchors], lr, mu, None,
                               opt_views.rows(rows))
        return loss.detach()

    # ------------------------------------------------------------------ loop
    def _train_loop(
        self,
        w0: Tensor,
        orders: Tensor,
        counts: Tensor,
        lr: float,
        mu: float,
        batch_size: int,
        b0: Tensor | None = None,
        st: _OptState | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Train the cohort one client at a time on the same minibatches as the batched path.

        With ``b0`` (``[b]`` or ``[m, b]`` buffers) every client trains with its own copy
        of them, and the ``[m, b]`` buffers after training are returned third (else None).
        """
        updates, losses, buffers = [], [], []
        opt_views = self._opt_views(st)
        for i, n in enumerate(counts.tolist()):
            start = w0[i] if w0.dim() == 2 else w0
            bufs = None
            if b0 is not None:
                bufs = self._buffer_dict(b0[i] if b0.dim() == 2 else b0)
            u, loss = self._train_one(self._unflatten(start), orders[:, i, :n], lr, mu,
                                      batch_size, bufs,
                                      None if opt_views is None else opt_views.rows(
                                          slice(i, i + 1)))
            updates.append(u - start)
            losses.append(loss)
            if bufs is not None:
                buffers.append(torch.cat([t.reshape(-1).to(self._init.dtype)
                                          for t in bufs.values()]))
        return (torch.stack(updates), torch.stack(losses),
                torch.stack(buffers) if b0 is not None else None)

    def _train_one(
        self,
        base: list[Tensor],
        order: Tensor,
        lr: float,
        mu: float,
        batch_size: int,
        buffers: dict[str, Tensor] | None = None,
        opt_views: _OptViews | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Local SGD of one client with plain autograd; returns (flat params, mean loss).

        ``buffers``: the client's own buffer tensors, updated in place by the forward
        passes (BatchNorm running statistics).
        """
        params = [p.clone().requires_grad_(True) for p in base]
        epochs, n = order.shape
        loss_sum = torch.zeros((), dtype=base[0].dtype, device=self.device)
        for e in range(epochs):
            for start in range(0, n, batch_size):
                idx = order[e, start : start + batch_size]
                state = dict(zip(self._names, params, strict=True))
                if buffers is not None:
                    state.update(buffers)
                logits = functional_call(self.model, state, (self.x[idx],))
                loss = self.loss(logits, self.y[idx]).mean()
                grads = list(torch.autograd.grad(loss, params))
                with torch.no_grad():
                    if opt_views is None:
                        _sgd_step(params, grads, base, lr, mu, None)
                    else:  # the client's state rows are [1, ...]: add that dimension
                        self._opt_step([p.unsqueeze(0) for p in params],
                                       [g.unsqueeze(0) for g in grads],
                                       [b.unsqueeze(0) for b in base], lr, mu, None,
                                       opt_views)
                loss_sum += loss.detach()
        steps = max(epochs * -(-n // batch_size), 1)
        return torch.cat([p.detach().reshape(-1) for p in params]), loss_sum / steps


@dataclass
class _OptState:
    """The cohort's local optimizer state: ``[m, d]`` slots and ``[m]`` step counts (CPU)."""

    slots: list[Tensor]
    steps: Tensor

    def rows(self, rows: slice) -> _OptState:
        """Views of the rows of a chunk of clients."""
        return _OptState([t[rows] for t in self.slots], self.steps[rows])

    def clone(self) -> _OptState:
        return _OptState([t.clone() for t in self.slots], self.steps.clone())

    def copy_(self, other: _OptState) -> None:
        for t, o in zip(self.slots, other.slots, strict=True):
            t.copy_(o)
        self.steps.copy_(other.steps)


@dataclass
class _OptViews:
    """``_OptState`` with each slot split into parameter-shaped ``[m, *shape]`` views."""

    slots: list[list[Tensor]]
    steps: Tensor

    def rows(self, rows: slice) -> _OptViews:
        return _OptViews([[t[rows] for t in slot] for slot in self.slots], self.steps[rows])


def _sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    anchors: list[Tensor],
    lr: float,
    mu: float,
    step_mask: Tensor | None,
) -> None:
    """In place: ``w -= lr * mask * (g + mu * (w - anchor))`` for every parameter tensor.

    Args:
        params: parameter tensors (stacked ``[m, ...]`` in the batched path).
        grads: their cross-entropy gradients (overwritten).
        anchors: the global parameters, broadcastable to ``params``.
        lr: step size.
        mu: FedProx coefficient.
        step_mask: ``[m]`` 1.0 for clients with real samples in this step, 0.0 for a
            padded-only step; None when every client takes the step.
    """
    if mu > 0:
        torch._foreach_add_(grads, torch._foreach_sub(params, anchors), alpha=mu)
    if step_mask is not None:
        views = [step_mask.view(-1, *([1] * (g.dim() - 1))) for g in grads]
        torch._foreach_mul_(grads, views)
    torch._foreach_add_(params, grads, alpha=-lr)


def _step_layout(
    orders: Tensor, counts: Tensor, batch_size: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Minibatches of a chunk in step-major order, and which of their slots are real samples.

    Args:
        orders: ``[E, m, max_n]`` shuffled sample indices (``Population._draw_orders``).
        counts: ``[m]`` samples of each client, on the device of ``orders``.
        batch_size: minibatch size ``bs``.
        dtype: floating dtype of the mask.

    Returns:
        ``[E, steps, m, bs]`` indices (each step's indices one contiguous block; slots
        past a client's samples hold padding) and the ``[steps, m, bs]`` mask, 1.0 on
        real samples, with ``steps = ceil(max_n / bs)``.
    """
    epochs, m, max_n = orders.shape
    bs, steps = batch_size, -(-max_n // batch_size)
    orders = F.pad(orders, (0, steps * bs - max_n))
    orders = orders.view(epochs, m, steps, bs).transpose(1, 2).contiguous()
    pos = torch.arange(steps * bs, device=orders.device)
    mask = (pos < counts[:, None]).to(dtype).view(m, steps, bs).transpose(0, 1).contiguous()
    return orders, mask


def _draw_seed(gen: torch.Generator) -> int:
    """One seed for torch's global RNG, drawn from the training stream ``gen``."""
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())


def _cuda_index(device: torch.device) -> list[int]:
    """``[index]`` of a CUDA device (for ``fork_rng``), ``[]`` for the CPU."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _rng_states(device: torch.device) -> list[Tensor]:
    """The global RNG states a model on ``device`` draws from: the CPU's, and its GPU's."""
    states = [torch.random.get_rng_state()]
    for index in _cuda_index(device):
        states.append(torch.cuda.get_rng_state(index))
    return states


@contextmanager
def _seeded_rng(seed: int | None, device: torch.device):
    """Run the block with torch's global RNG seeded from ``seed``, and restore it after.

    The CPU generator and (on a GPU) the population's device generator are forked and
    seeded; other devices' generators are not touched. None: the block runs as is.
    """
    if seed is None:
        yield
        return
    indices = _cuda_index(device)
    with torch.random.fork_rng(devices=indices):
        torch.random.default_generator.manual_seed(seed)
        for index in indices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _num_steps(counts: Tensor, batch_size: int, epochs: int) -> Tensor:
    """Local SGD steps of each client (at least 1, so a mean over them is defined)."""
    return ((counts + batch_size - 1) // batch_size * epochs).clamp_min(1)


__all__ = ["DEFAULT_CHUNK_BYTES", "FUSED_CHUNK_BYTES", "GPU_MIN_CHUNK_BYTES", "CohortResult",
           "Population"]


@contextmanager
def _one_thread_for_one_client(m: int, device: str | torch.device):
    """A lone client trains on one CPU thread, so results do not depend on the thread count.

    A batch of one client's products is a single matrix product, which MKL splits across
    threads (changing its summation order) when ``FEDSIM_TORCH_THREADS > 1``; batches of
    two or more are split by client, each product on one thread. Federated rounds with
    one reporting client and asynchronous gossip steps taken alone both train one client.
    """
    threads = torch.get_num_threads()
    if m != 1 or threads == 1 or torch.device(device).type != "cpu":
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
