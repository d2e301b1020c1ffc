"""How many clients one batched chunk holds: the user's cap, or a memory budget.

The batched paths train a cohort a chunk of clients at a time; every chunk sees the
same minibatches whatever its size, so chunking changes speed and memory, not results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedsim.population.core import Population

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


def fused_chunk_size(pop: Population, batch_size: int) -> int:
    """Clients per chunk of the fused engine: the user's cap, or its workspace budget."""
    if pop.max_batched_clients is not None:
        return pop.max_batched_clients
    assert pop._fused is not None
    budget = FUSED_CHUNK_BYTES if pop.device.type != "cuda" else memory_budget(pop.device)
    per_client = pop._fused.bytes_per_client(batch_size, pop._init.element_size())
    return max(1, budget // per_client)


def vmap_chunk_size(pop: Population, batch_size: int) -> int:
    """Clients per vmapped chunk: the user's cap, or the memory-budget estimate."""
    if pop.max_batched_clients is not None:
        return pop.max_batched_clients
    per_sample = 3 * pop._act_numel + pop.x[:1].numel()
    per_client_bytes = 4 * (4 * pop.d + 2 * pop.d_buffers + batch_size * per_sample)
    return max(1, memory_budget(pop.device) // per_client_bytes)


def memory_budget(device: torch.device) -> int:
    """Bytes one vmapped chunk may use: ``DEFAULT_CHUNK_BYTES`` on CPU, more on a GPU."""
    if device.type != "cuda":
        return DEFAULT_CHUNK_BYTES
    total = torch.cuda.get_device_properties(device).total_memory
    return max(GPU_MIN_CHUNK_BYTES, total // 8)
