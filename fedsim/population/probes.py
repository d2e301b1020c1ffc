"""One-off forward passes that learn about the model at setup, leaving no trace.

``activation_numel`` sizes the batched chunks (``chunking``); ``draws_random`` decides
whether a model is ``stochastic`` (its training then takes a seed, ``reproducible``).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.dropout import _DropoutNd

from fedsim.population.reproducible import cuda_index, rng_states


def activation_numel(model: nn.Module, x: Tensor, device: torch.device) -> int:
    """Elements of all leaf-module outputs for one sample (for the chunk-size estimate)."""
    sizes: list[int] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            sizes.append(output.numel())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with probe(model, device, training=False) as buffers:
            functional_call(model, buffers, (x[:1],))
    except Exception:  # noqa: BLE001 - only an estimate; fall back to the input size
        sizes = [x[:1].numel()]
    finally:
        for h in handles:
            h.remove()
    return max(sum(sizes), 1)


def draws_random(model: nn.Module, x: Tensor, device: torch.device) -> bool:
    """Whether the model draws random numbers in ``train()`` mode (``stochastic``).

    One forward pass of two training samples in train mode, inside ``fork_rng`` and on
    copies of the buffers (the model, its buffers and the caller's RNG are left as they
    were): random if the global RNG of the population's device moved. Also True for
    any Dropout module with ``p > 0`` (when the probe cannot run, e.g. no samples).
    """
    dropout = any(isinstance(m, _DropoutNd) and m.p > 0 for m in model.modules())
    if len(x) == 0:
        return dropout
    try:
        with probe(model, device, training=True) as buffers:
            before = rng_states(device)
            functional_call(model, buffers, (x[:2],))
            moved = any(not torch.equal(a, b)
                        for a, b in zip(before, rng_states(device), strict=True))
    except Exception:  # noqa: BLE001 - the probe is a hint; training reports real errors
        moved = False
    return moved or dropout


@contextmanager
def probe(model: nn.Module, device: torch.device, training: bool):
    """A forward pass that leaves no trace: the given mode, no grad, forked RNG.

    Yields copies of the model's buffers (pass them to ``functional_call``, so
    BatchNorm statistics are not updated); the modules' modes and the caller's global
    RNG are restored on exit.
    """
    modes = [m.training for m in model.modules()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=cuda_index(device)), torch.no_grad():
            model.train(training)
            yield buffers
    finally:
        for m, mode in zip(model.modules(), modes, strict=True):
            m.training = mode
