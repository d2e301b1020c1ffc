"""A round's tensor work does not grow with the number of clients (issue 15).

Clients are arrays, not objects: sampling, the clock, the cohort's indices, training,
aggregation and the metrics are a fixed sequence of whole-cohort torch operations, so a
round of 384 clients dispatches the same torch operators as a round of 48 (the kernels
get bigger, not more numerous). This is what keeps a GPU round near the hand-written
program: a per-client ``.item()``, ``from_numpy`` or slice would add operators, and
host-device round trips, in proportion to the cohort. Every operator torch dispatches
is counted (``TorchDispatchMode``) over the rounds alone: a run of 3 rounds minus a
run of 2.

The cohort must fit one chunk of the training engine for this to hold (the GPU's
budget is an eighth of its memory; the CPU's 10 MiB is raised here). On a GPU the same
count covers the device: the round's host reads are the same few whatever the cohort.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fedsim.population.chunking as chunking
from fedsim.bench import workload
from fedsim.config import AvailabilityConfig, ComputeConfig, NetworkConfig
from fedsim.results.records import read_metrics
from fedsim.runners import run_scenario

# heavy-tailed compute, dropouts and a deadline that some of the cohort misses
STRAGGLERS = NetworkConfig(policy="deadline", deadline_s=0.06, bandwidth_bps=1e9,
                           compute=ComputeConfig(model="lognormal", seconds_per_sample=0.001),
                           availability=AvailabilityConfig(model="bernoulli", dropout=0.1))
SYNC = "aten._local_scalar_dense.default"  # .item(), int(t), bool(t): a host read
ALLOC = ("aten.empty.", "aten.empty_strided.")  # the kept update buffer may grow once


D2H = "device-to-host elements"  # what crossed from a GPU to the host
_aten = torch.ops.aten


class _Ops(TorchDispatchMode):
    """Counts every aten operator dispatched while active, and the elements they copy
    from a GPU to the host (``.cpu()``, ``.tolist()``, ``.item()``, ``copy_``)."""

    def __init__(self):
        super().__init__()
        self.count: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.count[str(func)] += 1
        if func is _aten.copy_.default:
            src, dst = args[1], args[0]
        elif func in (_aten._to_copy.default, _aten._local_scalar_dense.default):
            src, dst = args[0], out
        else:
            return out
        dst_on_host = not isinstance(dst, torch.Tensor) or dst.device.type == "cpu"
        if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_on_host:
            self.count[D2H] += src.numel()
        return out


def _ops(tmp_path, sc, data, rounds: int) -> collections.Counter:
    with _Ops() as ops:
        run_scenario(dataclasses.replace(sc, rounds=rounds, eval_every=1),
                     tmp_path / f"r{rounds}", progress=False, data=data)
    return ops.count


def _per_round(tmp_path, sc, data) -> collections.Counter:
    return _ops(tmp_path, sc, data, 3) - _ops(tmp_path, sc, data, 2)


def _bench(clients: int, network: NetworkConfig | None, device: str):
    w = workload.Workload(clients=clients, rounds=2, samples_per_client=10)
    sc = dataclasses.replace(workload.scenario(w, device), clients_per_round=clients // 2)
    if network is not None:
        sc = dataclasses.replace(sc, network=network)
    return sc, workload.make_data(w)


def _adam(clients: int, network: NetworkConfig | None, device: str):
    """The generic vmap engine: Adam is not one the fused engine takes."""
    sc, data = _bench(clients, network, device)
    alg = dataclasses.replace(sc.algorithm, lr=0.01, local_opt={"name": "adam"})
    return dataclasses.replace(sc, algorithm=alg), data


@pytest.fixture
def one_chunk(monkeypatch):
    monkeypatch.setattr(chunking, "FUSED_CHUNK_BYTES", 1 << 40)
    monkeypatch.setattr(chunking, "DEFAULT_CHUNK_BYTES", 1 << 40)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
@pytest.mark.parametrize("build", [_bench, _adam], ids=["fused_mlp", "vmap_adam"])
@pytest.mark.parametrize("network", [None, STRAGGLERS], ids=["all_train", "stragglers"])
def test_a_round_dispatches_the_same_operators_for_48_and_384_clients(tmp_path, one_chunk,
                                                                      build, network, device):
    small, large = (_per_round(tmp_path / str(n), *build(n, network, device))
                    for n in (48, 384))
    assert sum(small.values()) > 50  # the counter sees the round's work
    # every operator's count, and on a GPU the elements read back to the host (D2H)
    differ = {k for k in small.keys() | large.keys() if small[k] != large[k]}
    assert {k for k in differ if not k.startswith(ALLOC)} == set()
    assert 0 < small[SYNC] == large[SYNC]  # host reads (.item(), int(t)) a round
    if network is not None:  # the clock really cut the rounds short
        last = read_metrics(tmp_path / "384" / "r3")[-1]
        assert last["participants"] > 0 and last["stragglers"] > 0 and last["dropped"] > 0


def test_the_counter_sees_per_client_work(tmp_path, one_chunk, monkeypatch):
    """The check above can fail: one tensor made per client shows up in the count."""
    from fedsim.population import index

    gather = index.ClientIndex.cohort

    def per_client(self, ids):
        for i in ids:
            torch.as_tensor(self.sizes[i]).item()
        return gather(self, ids)

    monkeypatch.setattr(index.ClientIndex, "cohort", per_client)
    small, large = (_per_round(tmp_path / str(n), *_bench(n, None, "cpu")) for n in (48, 384))
    assert large[SYNC] - small[SYNC] == 384 // 2 - 48 // 2
