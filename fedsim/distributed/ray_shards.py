"""Train each round's cohort on Ray actors, each holding a fixed share of the clients.

Client ``c`` belongs to actor ``c % K`` for the whole run. An actor holds the training
samples of its clients only (sent once, when it starts) and a ``Population`` over them;
each round it trains the cohort's clients it owns, batched, with the population engine.

What makes the result independent of ``K``: the driver draws the whole cohort's shuffles
from the training stream (``Population.draw_orders``, exactly what the single-process
path draws) and sends each actor its rows; a client's local training depends only on its
start, its shuffles and its data, never on the other clients trained beside it. The
driver gathers the rows (updates, losses, sample counts, buffers) back in cohort order
and runs the uplink, attack, aggregation and server optimizer itself, with the same
stage code on the same ``[m, d]`` rows: no float is summed across actors, so the
rounding does not depend on how the cohort was split.

Per round, to each actor with clients in the cohort: the global parameters (one object,
``4 d`` bytes), its rows of the shuffles (int32, ``4 E max_n`` bytes a client), the
clients' start buffers (``model.buffers = "local"``: ``4 b`` bytes a client) and, with
``local_opt.state = "keep"``, their kept optimizer state (``4 slots d`` bytes a client).
Back: ``4 d`` bytes a client (the update) plus its loss, sample count, buffers and kept
state. ``RayTrainer.traffic`` counts these bytes.

Not supported with Ray (a one-line ``ScenarioError``): models that draw random numbers
in training (Dropout: the masks of a batch depend on its clients) and decentralized
algorithms (no server cohort).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.distributed.session import IDLE_ACTORS, ray_session
from fedsim.distributed.trainer import RayOptions
from fedsim.errors import FedsimError, ScenarioError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from fedsim.population.core import CohortResult
    from fedsim.runners import FederatedRun


class Shard:
    """A Ray actor's share of the clients: their samples, and a ``Population`` over them.

    A started actor is kept for the next run of the same Ray session (``unload``, then
    ``load`` again), so a study's variants and seeds start their actors once.

    ``load``'s arguments:
        clients: the client ids it owns.
        client_idx: each owned client's sample indices into the full training set.
        x: ``[u, ...]`` the samples of the sorted unique indices ``uniq`` (numpy).
        y: ``[u]`` their labels.
        uniq: ``[u]`` sorted global sample indices of ``x``'s rows.
        model: the architecture (the population's module).
        population: ``Population`` keyword arguments (``batched``, ``fused``, ``local_opt``,
            ``loss``).
        device: ``"cpu"`` or ``"cuda"`` (the GPU Ray gives the actor).
        threads: torch threads on CPU.
    """

    def __init__(self) -> None:
        self.pop: Any = None

    def load(self, clients: Sequence[int], client_idx: Sequence[np.ndarray],
             x: np.ndarray, y: np.ndarray, uniq: np.ndarray, model: Any,
             population: dict[str, Any], device: str, threads: int) -> int:
        """Hold these clients' data and a population over them; returns the process id."""
        import torch

        from fedsim.population import Population

        if device == "cpu":
            torch.set_num_threads(threads)
        self.uniq = np.asarray(uniq)
        self.local_idx = {int(c): torch.from_numpy(np.searchsorted(self.uniq, ix))
                          for c, ix in zip(clients, client_idx, strict=True)}
        self.pop = Population(model, torch.from_numpy(np.array(x)), torch.from_numpy(np.array(y)),
                              device=device, **population)
        self.gen = torch.Generator()  # unused: the driver sends the shuffles
        return os.getpid()

    def unload(self) -> None:
        """Drop the run's data and population (the actor waits for the next run)."""
        self.pop = self.uniq = self.local_idx = None

    def train(self, params: np.ndarray, clients: Sequence[int], orders: np.ndarray,
              lr: float, epochs: int, batch_size: int, mu: float,
              buffers: np.ndarray | None, opt_state: dict | None) -> dict[str, Any]:
        """Train ``clients`` (owned ids) from ``params [d]`` on the shuffles ``orders
        [E, m_k, >= max_n]`` (global sample indices, int32).

        Returns:
            ``updates [m_k, d]``, ``losses [m_k]``, ``num_samples [m_k]``, ``buffers
            [m_k, b]`` or None, and ``opt_state`` (client id -> (slots, step)) or None;
            numpy, rows in the order of ``clients``.
        """
        import torch

        local = np.searchsorted(self.uniq, orders)  # global sample index -> this actor's row
        np.minimum(local, len(self.uniq) - 1, out=local)  # padding slots (masked) stay valid
        if opt_state is not None:
            self.pop.opt_state = {int(c): (tuple(torch.from_numpy(np.array(t)) for t in slots),
                                           step) for c, (slots, step) in opt_state.items()}
        res = self.pop.train(
            torch.from_numpy(np.array(params)), [self.local_idx[int(c)] for c in clients],
            lr=lr, epochs=epochs, batch_size=batch_size, mu=mu, gen=self.gen,
            buffers=None if buffers is None else torch.from_numpy(np.array(buffers)),
            clients=list(clients), orders=torch.from_numpy(local))
        kept = None
        if opt_state is not None:
            kept = {int(c): (tuple(t.cpu().numpy() for t in self.pop.opt_state[int(c)][0]),
                             self.pop.opt_state[int(c)][1]) for c in clients}
            self.pop.opt_state = {}
        return {"updates": res.updates.cpu().numpy(), "losses": res.losses.cpu().numpy(),
                "num_samples": res.num_samples.cpu().numpy(),
                "buffers": None if res.buffers is None else res.buffers.cpu().numpy(),
                "opt_state": kept}


def _nbytes(value: Any) -> int:
    """Bytes of the arrays in ``value`` (nested dicts, tuples, lists)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class RayTrainer:
    """The cohort trained on ``K`` Ray shard actors; the rest of the round stays here.

    Args:
        run: the federated run (its population, data, scenario and device).
        options: where Ray runs and how many actors.

    Attributes:
        actors: how many shard actors.
        traffic: bytes sent to the actors (``to_actors``) and back (``from_actors``) by
            ``train`` so far, the data sent once at start (``setup``), and ``rounds``.

    Raises:
        ScenarioError: the model draws random numbers in training, or the cluster has
            fewer CPUs or GPUs than the actors need.
        FedsimError: Ray cannot start, or the actors do not start within the timeout.
    """

    def __init__(self, run: FederatedRun, options: RayOptions):
        self.options = options
        self.pop = run.pop
        self._client_idx = run.client_idx
        self.actors = 0
        self._handles: list = []
        self._pool_key: tuple | None = None
        self._session = None
        self._closed = False
        self.traffic = {"setup": 0, "to_actors": 0, "from_actors": 0, "rounds": 0}
        if run.pop.stochastic:
            raise ScenarioError("model", "draws random numbers in training (dropout): with "
                                "--ray its masks would depend on the sharding; use p = 0, "
                                "or run without --ray")
        if getattr(run.pop, "dp_sgd", None) is not None:
            raise ScenarioError("privacy.mode", "'sample' (DP-SGD) draws its noise for the "
                                "whole cohort: with --ray it would depend on the sharding; "
                                "run it without --ray")
        gpu = run.sc.device != "cpu"
        threads = options.threads()
        self._session = ray_session(options.address, num_cpus=options.local_cpus())
        self._session_info = self._session.__enter__()
        try:
            self._start(run, gpu, threads)
        except BaseException:
            self.close()
            raise

    def _start(self, run: FederatedRun, gpu: bool, threads: int) -> None:
        """Size the actors to the cluster, send each its clients' data, wait until built."""
        import ray

        total = ray.cluster_resources()
        gpus = int(total.get("GPU", 0)) if gpu else 0
        per = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": threads}
        have = gpus if gpus else int(total.get("CPU", 0)) // threads
        n = len(run.client_idx)
        k = min(self.options.actors or max(1, have), n)
        if k > max(have, 0):
            what = f"{gpus} GPUs" if gpus else f"{int(total.get('CPU', 0))} CPUs"
            raise ScenarioError("--ray-actors", f"{k} actors need {k} "
                                f"{'GPUs' if gpus else f'x {threads} CPUs'} but the Ray "
                                f"cluster has {what}; allowed: 1 to {max(have, 1)}")
        device = "cuda" if gpus else "cpu"
        pop = run.pop
        fused = pop._fused is not None
        population = {"batched": pop.batched, "fused": fused, "local_opt": pop.local_opt,
                      "loss": None if fused else pop.loss,
                      "max_batched_clients": pop.max_batched_clients}
        self.owner = np.arange(n) % k
        self._pool_key, self._handles = _acquire(per, k)
        x, y = pop.x.detach().cpu().numpy(), pop.y.detach().cpu().numpy()
        model_ref = ray.put(copy.deepcopy(pop.model).cpu())
        loads = []
        for a in range(k):
            clients = np.flatnonzero(self.owner == a).tolist()
            idx = [np.asarray(run.client_idx[c], dtype=np.int64).reshape(-1) for c in clients]
            uniq = np.unique(np.concatenate(idx)) if idx else np.zeros(0, dtype=np.int64)
            xs, ys = x[uniq], y[uniq]
            self.traffic["setup"] += xs.nbytes + ys.nbytes + uniq.nbytes + _nbytes(idx)
            loads.append(self._handles[a].load.remote(clients, idx, xs, ys, uniq, model_ref,
                                                      population, device, threads))
        self.actors = k
        self._get(loads, "start")

    def _get(self, refs: list, what: str) -> list:
        """``ray.get`` bounded by the timeout; Ray's failures as one-line FedsimErrors."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        try:
            return ray.get(refs, timeout=self.options.timeout_s)
        except GetTimeoutError:
            raise FedsimError(f"--ray: the shard actors did not {what} within "
                              f"{self.options.timeout_s:g} s") from None
        except RayActorError as err:
            raise FedsimError(f"--ray: a shard actor died ({str(err).splitlines()[0]})"
                              ) from None
        except RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else None
            if cause is not None:
                raise cause from None
            raise

    def train(self, params: Tensor, clients: Sequence[int], *, lr: float, epochs: int,
              batch_size: int, mu: float, gen: torch.Generator,
              buffers: Tensor | None, out: Tensor | None = None) -> CohortResult:
        """Draw the cohort's shuffles here, train the shards on their actors, gather the
        rows in cohort order (``Trainer.train``; ``out`` is not used: the rows arrive)."""
        import ray
        import torch

        from fedsim.population.core import CohortResult

        pop, device = self.pop, self.pop.device
        ids = np.asarray(clients, dtype=np.int64)
        m = len(ids)
        if m == 0:
            return pop.train(params, [], lr=lr, epochs=epochs, batch_size=batch_size, mu=mu,
                             gen=gen, buffers=buffers, clients=[])
        orders = pop.draw_orders([torch.from_numpy(self._indices(c)) for c in ids], epochs, gen)
        orders = orders.cpu().numpy()
        orders = orders.astype(np.int32) if len(pop.x) < 2**31 else orders
        rows_buf = None
        if buffers is not None:
            b = buffers.detach().cpu().numpy()
            rows_buf = b if b.ndim == 2 else None
            shared_buf = b if b.ndim == 1 else None
        w = ray.put(params.detach().cpu().numpy())
        sent = params.numel() * 4
        calls, rows_of = [], []
        for a in range(self.actors):
            rows = np.flatnonzero(self.owner[ids] == a)
            if not len(rows):
                continue
            mine = ids[rows].tolist()
            args: dict[str, Any] = {
                "orders": np.ascontiguousarray(orders[:, rows, :]),
                "buffers": (None if buffers is None else
                            rows_buf[rows] if rows_buf is not None else shared_buf),
                "opt_state": self._kept(mine)}
            sent += _nbytes(args) + (params.numel() * 4 if a else 0)
            calls.append(self._handles[a].train.remote(
                w, mine, args["orders"], lr, epochs, batch_size, mu, args["buffers"],
                args["opt_state"]))
            rows_of.append(rows)
        outs = self._get(calls, "train a round")
        self.traffic["to_actors"] += sent
        self.traffic["from_actors"] += sum(_nbytes(o) for o in outs)
        self.traffic["rounds"] += 1
        d = params.numel()
        updates = np.empty((m, d), dtype=outs[0]["updates"].dtype)
        losses = np.empty(m, dtype=outs[0]["losses"].dtype)
        counts = np.empty(m, dtype=np.int64)
        bufs = (None if outs[0]["buffers"] is None else
                np.empty((m, outs[0]["buffers"].shape[1]), dtype=outs[0]["buffers"].dtype))
        for rows, out in zip(rows_of, outs, strict=True):
            updates[rows], losses[rows], counts[rows] = (out["updates"], out["losses"],
                                                         out["num_samples"])
            if bufs is not None:
                bufs[rows] = out["buffers"]
            if out["opt_state"] is not None:
                for c, (slots, step) in out["opt_state"].items():
                    pop.opt_state[int(c)] = (tuple(torch.tensor(t, device=device)
                                                   for t in slots), int(step))
        return CohortResult(torch.from_numpy(updates).to(device),
                            torch.from_numpy(losses).to(device),
                            torch.from_numpy(counts).to(device),
                            None if bufs is None else torch.from_numpy(bufs).to(device))

    def _indices(self, client: int) -> np.ndarray:
        return np.asarray(self._client_idx[int(client)], dtype=np.int64).reshape(-1)

    def _kept(self, clients: list[int]) -> dict | None:
        """The kept optimizer state of ``clients`` to send (``local_opt.state = "keep"``)."""
        if not self.pop.local_opt.keeps:
            return None
        out = {}
        for c in clients:
            row = self.pop.opt_state.get(c)
            if row is not None:
                out[c] = (tuple(t.detach().cpu().numpy() for t in row[0]), row[1])
        return out

    def close(self) -> None:
        """Stop the actors and, when this trainer started Ray, Ray itself."""
        if self._closed:
            return
        self._closed = True
        try:
            # idle actors wait for the session's next run, unless the run is failing (an
            # actor may be busy or broken) or this trainer's own Ray stops now anyway
            shared = (self._session is not None and not self._session_info.started
                      and sys.exc_info()[0] is None)
            _release(self._handles, self._pool_key if shared else None)
            self._handles = []
        finally:
            if self._session is not None:
                self._session.__exit__(None, None, None)
                self._session = None


def _acquire(per: dict[str, int], k: int) -> tuple[tuple, list]:
    """``k`` shard actors with resources ``per`` (idle ones of this Ray job first), and
    their pool key."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    key = (job, tuple(sorted(per.items())))
    for other in [o for o in IDLE_ACTORS if o != key]:  # an earlier session's, or another kind
        _release(IDLE_ACTORS.pop(other), None)  # (which would hold resources this one needs)
    idle = IDLE_ACTORS.setdefault(key, [])
    taken = [idle.pop() for _ in range(min(k, len(idle)))]
    actor_cls = ray.remote(**per)(Shard)
    return key, taken + [actor_cls.remote() for _ in range(k - len(taken))]


def _release(handles: list, key: tuple | None) -> None:
    """Unload the actors into the pool under ``key``, or (None, or a failure) stop them."""
    import ray

    if key is not None and handles:
        try:
            ray.get([h.unload.remote() for h in handles], timeout=60)
            IDLE_ACTORS.setdefault(key, []).extend(handles)
            return
        except Exception:  # noqa: BLE001 - a dead or stuck actor: stop them all
            pass
    for h in handles:
        try:
            ray.kill(h)
        except Exception:  # noqa: BLE001 - best effort: Ray stops them with the job
            pass
