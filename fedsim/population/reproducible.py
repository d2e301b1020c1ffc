"""Reproducible training: torch's global RNG seeded from the training stream, one thread
for a lone client.

A ``stochastic`` model (Dropout and the like) draws its random numbers from torch's
global RNG; ``train`` draws one seed for it from the caller's generator and runs local
training inside ``seeded_rng``, which forks the RNG so the caller's state is left as it
was.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor


def draw_seed(gen: torch.Generator) -> int:
    """One seed for torch's global RNG, drawn from the training stream ``gen``."""
    return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())


def cuda_index(device: torch.device) -> list[int]:
    """``[index]`` of a CUDA device (for ``fork_rng``), ``[]`` for the CPU."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def rng_states(device: torch.device) -> list[Tensor]:
    """The global RNG states a model on ``device`` draws from: the CPU's, and its GPU's."""
    states = [torch.random.get_rng_state()]
    for index in cuda_index(device):
        states.append(torch.cuda.get_rng_state(index))
    return states


@contextmanager
def seeded_rng(seed: int | None, device: torch.device):
    """Run the block with torch's global RNG seeded from ``seed``, and restore it after.

    The CPU generator and (on a GPU) the population's device generator are forked and
    seeded; other devices' generators are not touched. None: the block runs as is.
    """
    if seed is None:
        yield
        return
    indices = cuda_index(device)
    with torch.random.fork_rng(devices=indices):
        torch.random.default_generator.manual_seed(seed)
        for index in indices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


@contextmanager
def one_thread_for_one_client(m: int, device: str | torch.device):
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
