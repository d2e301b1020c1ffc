"""Run a decentralized scenario (dsgd, gossip_sgd, accelerated_gossip_sgd) into a run directory.

The same files as the federated runner (``RunWriter``: metrics.csv / .jsonl, timing.csv,
summary.json, scenario.toml), plus ``consensus.csv``. Node ``v`` of the graph (its rank in
``sorted(G.nodes)``) is client ``v``: it holds that client's data partition and its own
model, row ``v`` of ``x [n, d]``. What is evaluated is the average model ``x.mean(0)``.

* ``dsgd``: one metrics row per synchronous round. The clock
  (:class:`~fedsim.network.sync_gossip_clock.SyncGossipClock`) times every node's local
  work (``local_epochs`` passes over its samples) and the exchange of models with its
  neighbours (``4 d`` bytes per message); the round ends at the barrier.
* ``gossip_sgd`` / ``accelerated_gossip_sgd``: one metrics row per evaluation interval of
  ``algorithm.eval_interval_s`` simulated seconds, ``rounds`` of them. The clock
  (:class:`~fedsim.network.async_gossip_clock.AsyncGossipClock`) draws each node's local
  steps (``batch_size`` samples each, at Poisson times or back to back:
  ``algorithm.step_times``) and every edge's Poisson exchanges
  (``algorithm.gossip_rate`` per second), each costing the link's latency plus ``4 d``
  bytes over its bandwidth.

Metrics columns: ``participants`` and ``selected`` are the nodes; ``bytes_up`` counts every
model sent between nodes once (each direction of an exchange, each message of a D-SGD
round), ``bytes_down`` is 0 (there is no server), so ``cum_bytes`` is the total on the
wire, comparable with the federated runner's. ``train_loss`` is the mean minibatch loss
of the row's local steps (sample-weighted over nodes for D-SGD). ``consensus.csv`` holds,
per row, how far the nodes are from agreeing: ``consensus_distance``, the mean distance
of the nodes' models to their average, ``mean_v ||x_v - xbar||_2``, and on evaluated rows
the test accuracy of the nodes' own models (``node_accuracy_mean``, ``node_accuracy_min``)
-- what a node would deploy without a final averaging.

Buffers (BatchNorm running statistics, ``model.buffers``): every node keeps its own,
``bufs [n, b]``. With ``"average"`` they are mixed exactly as the parameters (D-SGD:
``bufs <- W bufs`` after the local work; gossip SGD: they ride along as extra columns of
the rows, so every exchange averages them too), integer slots rounded to the nearest
integer where they are used; with ``"local"`` (FedBN) they are never mixed. A node is
evaluated with its own buffers, the average model with the nodes' mean buffers.

References:
    Lian et al., NeurIPS 2017 (D-SGD); Even et al., NeurIPS 2021 (continuized gossip
    and SGD); Boyd et al., IEEE Trans. Inf. Theory, 2006 (randomized gossip).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fedsim.config import Scenario
from fedsim.data.base import FederatedData
from fedsim.decentralized.dsgd import (
    async_gossip_sgd,
    dsgd_round,
    mean_consensus_distance,
    plan_async,
)
from fedsim.divergence import check_finite, warn
from fedsim.errors import ScenarioError
from fedsim.population.index import ClientIndex, CohortIndex
from fedsim.results.records import RoundRecord
from fedsim.runners import (
    RunResult,
    UserMetrics,
    build_population,
    check_metrics,
    configure_threads,
    integer_buffers,
    mean_buffers,
    resolve_device,
    restore_threads,
)
from fedsim.scenario import DECENTRALIZED_ALGORITHMS
from fedsim.seeding import torch_generator

CONSENSUS_CSV = "consensus.csv"
NODE_FIELDS = ("consensus_distance", "node_accuracy_mean", "node_accuracy_min")


@restore_threads()
def run_decentralized(sc: Scenario, run_dir: Path, base_dir: Path | None = None,
                      progress: bool | None = None, label: str = "",
                      data: FederatedData | None = None, model=None,
                      metrics=None, callback=None, resume: bool = False,
                      loss=None) -> RunResult:
    """Run one decentralized scenario and write its run directory.

    Args:
        sc: a validated scenario whose ``algorithm.name`` is in ``DECENTRALIZED_ALGORITHMS``.
        run_dir: where metrics, summary, scenario and consensus files go.
        base_dir: the scenario file's folder (relative data, trace and topology paths).
        progress: show a progress line (None: only on an interactive terminal).
        label: shown in the progress line.
        data: use this federated dataset instead of loading ``sc.data`` (one client per node).
        model: use this model instead of ``sc.model`` (``runners.build_population``).
        metrics: ``{name: fn(logits, labels) -> float}`` of the average model (with the
            nodes' mean buffers) on evaluated rows, as ``runners.run_scenario``.
        callback: called after each row is written, with the row (metrics, user metrics
            and the consensus.csv node columns), as ``runners.run_scenario``.
        resume: continue from ``run_dir/checkpoint.pt``, as ``runners.run_scenario``.
        loss: the user's per-sample loss, as ``runners.run_scenario``.

    Returns:
        The run directory, the summary and the final average model ``x.mean(0)`` (CPU),
        with the nodes' mean buffers.
    """
    from fedsim.runs.loop import RunLoop

    metrics = check_metrics(metrics)
    started = time.perf_counter()
    run = DecentralizedRun(sc, Path(base_dir) if base_dir is not None else Path.cwd(), data,
                           model, metrics, loss)
    run.label = label or sc.name  # names the run in its warnings
    loop = RunLoop(sc, run_dir, label=run.label, progress=progress, device=run.device,
                   metric_columns=tuple(metrics), callback=callback, resume=resume, started=started,
                   extra_csv={CONSENSUS_CSV: ("round", "sim_time_s", *NODE_FIELDS)})

    def emit(record: RoundRecord, nodes: dict, walls: dict) -> None:
        consensus = (record.round, repr(record.sim_time_s),
                     *("" if nodes[k] is None else repr(nodes[k]) for k in NODE_FIELDS))
        loop.emit(record, walls, run.last_metrics, extra={CONSENSUS_CSV: consensus},
                  row_extra=nodes, state=run.state_dict)

    completed = False
    try:
        run.play(emit, loop.next_round, loop.restored)
        completed = True
    finally:
        facts = {**run.summary(), **{f"final_{k}": loop.last_extra.get(k) for k in NODE_FIELDS}}
        if metrics:
            facts["final_metrics"] = run.final_metrics
        summary = loop.finish(facts, model=(run.pop.model, run.x.mean(dim=0), run.mean_buffers())
                              if completed else None)
    mean_bufs = run.mean_buffers()
    return RunResult(run_dir=Path(run_dir), summary=summary,
                     final_params=run.x.mean(dim=0).detach().cpu(),
                     final_buffers=None if mean_bufs is None else mean_bufs.cpu())


class DecentralizedRun:
    """The state of one decentralized run: data, population, graph, clock, node models.

    ``play(emit)`` runs it, calling ``emit(record, node facts, wall times)`` once
    per metrics row as soon as the row is known.
    """

    def __init__(self, sc: Scenario, base_dir: Path, data: FederatedData | None = None,
                 model=None, metrics=None, loss=None):
        from fedsim.data import load_federated
        from fedsim.network.topology import resolve_topology, with_link_defaults
        from fedsim.scenario import topology_dirs

        if sc.algorithm.name not in DECENTRALIZED_ALGORITHMS:
            raise ScenarioError("algorithm.name", f"{sc.algorithm.name!r} is not decentralized; "
                                f"allowed: {', '.join(DECENTRALIZED_ALGORITHMS)}")
        self.sc = sc
        self.label = sc.name  # names the run in its warnings (run_decentralized sets it)
        self.base_dir = base_dir
        self.device = resolve_device(sc.device)
        configure_threads(self.device)
        net = sc.network
        graph = resolve_topology(net.topology, net.topology_params, seed=sc.seed,
                                 search_dirs=topology_dirs(base_dir))
        self.graph = with_link_defaults(graph, net.bandwidth_bps, net.latency_s)
        n = self.graph.number_of_nodes()
        if data is None:
            data = load_federated(sc.data, sc.seed, base_dir)
        if len(data.client_indices) != n:
            raise ScenarioError("data.num_clients", f"the data has {len(data.client_indices)} "
                                f"clients but the graph has {n} nodes (one client per node)")
        self.pop, self.x_test, self.y_test = build_population(sc, data, self.device, model,
                                                              base_dir, loss)
        self.client_idx = [torch.from_numpy(ix).to(self.device) for ix in data.client_indices]
        self.index = ClientIndex(data.client_indices, len(self.pop.x), self.device)
        self.sizes = np.asarray([len(ix) for ix in data.client_indices], dtype=np.float64)
        self.n, self.d = n, self.pop.d
        self.nbytes = 4 * self.d  # one float32 model per message
        self.x = self.pop.flat_params().to(self.device).expand(n, -1).clone()  # [n, d]
        # the nodes' buffers [n, b] (None without); "average" mixes them like x
        self.bufs = (self.pop.flat_buffers().to(self.device).expand(n, -1).clone()
                     if self.pop.d_buffers else None)
        self.mix_buffers = self.bufs is not None and sc.model.buffers == "average"
        self.integer_buffers = integer_buffers(self.pop)
        self.user_metrics = UserMetrics(self.pop, check_metrics(metrics))
        self.last_metrics: dict[str, float] = {}
        self.final_metrics: dict[str, float] = {}
        self.gen = torch_generator(sc.seed, "training", self.device)
        self.facts: dict = {}
        self.diverged_round: int | None = None
        self._cum = 0  # bytes sent so far
        self._state: tuple = (self.x, None)  # (x, x~) as a checkpoint keeps them
        self._clock = None  # D-SGD's clock, kept by a checkpoint

    def play(self, emit, start: int = 1, restored: dict | None = None) -> None:
        """Run; ``emit(record, node facts, wall times)`` for every metrics row.

        Args:
            emit: the run loop's row writer.
            start: the first row to play (1, or the checkpoint's row + 1).
            restored: ``state_dict()``'s output to continue from (None: a fresh run).
        """
        if self.sc.algorithm.name == "dsgd":
            self._play_sync(emit, start, restored)
        else:
            self._play_async(emit, start, restored)

    def state_dict(self) -> dict:
        """Everything that changes from row to row (``checkpoint.pt``'s ``run``): the node
        models and buffers, the training stream, the clock (D-SGD) or the accelerated
        ``x~`` (gossip; its clock is replayed from the seed), and the summary's counters."""
        return {"x": self._state[0], "x_tilde": self._state[1], "bufs": self.bufs,
                "gen": self.gen.get_state(), "clock": self._clock, "cum": self._cum,
                "counters": {"diverged_round": self.diverged_round,
                             "final_metrics": self.final_metrics}}

    def _restore(self, state: dict) -> None:
        """Load the parts of ``state_dict()`` every family shares."""
        self.x, self.bufs, self._cum = state["x"], state["bufs"], state["cum"]
        self.gen.set_state(state["gen"].cpu())
        for name, value in state["counters"].items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ D-SGD
    def _play_sync(self, emit, start: int, restored: dict | None) -> None:
        from fedsim.network.sync_gossip_clock import SyncGossipClock

        sc, a = self.sc, self.sc.algorithm
        clock = SyncGossipClock(sc.network, self.graph, seed=sc.seed, base_dir=self.base_dir)
        if restored is not None:
            self._restore(restored)
            clock = restored["clock"]
        self._clock = clock
        W = mixing_matrix(self.graph, self.x.dtype, self.device)
        work = (self.sizes * a.local_epochs).tolist()
        losses: list[Tensor] = []

        def local_sgd(nodes: Tensor, rows: Tensor) -> Tensor:
            bufs = None if self.bufs is None else self._usable(self.bufs[nodes])
            new, loss, bufs = train_nodes(self.pop, rows, self.index.cohort(nodes.cpu().numpy()),
                                          lr=a.lr, epochs=a.local_epochs,
                                          batch_size=a.batch_size, gen=self.gen, buffers=bufs)
            if bufs is not None:
                self.bufs[nodes] = bufs
            losses.append(loss)
            return new

        for rnd in range(start, sc.rounds + 1):
            sched = clock.run_round(rnd, work, self.nbytes)
            losses.clear()
            t0 = time.perf_counter()
            self.x = dsgd_round(self.x, W, local_sgd)
            if self.mix_buffers:
                self.bufs = W.to(self.bufs.dtype) @ self.bufs
            train_wall = time.perf_counter() - t0
            train_loss = float((losses[0].double().cpu() * torch.from_numpy(self.sizes)).sum()
                               / self.sizes.sum())
            self._cum += sched.bytes_sent
            self._state = (self.x, None)
            self.facts = {"messages_per_round": int(sched.src.size)}
            record, nodes, eval_wall = self._record(
                rnd, sched.end_s, sched.duration_s, sched.bytes_sent, self._cum, train_loss)
            emit(record, nodes, {"train_wall_s": train_wall, "eval_wall_s": eval_wall})

    # ------------------------------------------------------------------ asynchronous
    def _play_async(self, emit, start: int, restored: dict | None) -> None:
        from fedsim.network.async_gossip_clock import STEP, AsyncGossipClock
        from fedsim.network.spectral import accelerated_parameters

        sc, a = self.sc, self.sc.algorithm
        interval = a.eval_interval_s
        t_end = sc.rounds * interval
        instants = interval * np.arange(1, sc.rounds + 1)
        clock = AsyncGossipClock(sc.network, self.graph, seed=sc.seed, base_dir=self.base_dir)
        t0 = time.perf_counter()
        try:
            sched = clock.events(t_end, a.batch_size, self.nbytes, a.gossip_rate, a.step_times)
        except ValueError as err:  # past the clock's guard (resources.py checks the mean)
            if "max_events" not in str(err):
                raise
            raise ScenarioError("algorithm.eval_interval_s", f"{err} (rounds x "
                                "algorithm.eval_interval_s is the horizon)") from None
        eta = alpha = None
        if a.name == "accelerated_gossip_sgd":
            eta, alpha = accelerated_parameters(self.graph, a.gossip_rate)  # edges at the rate
        plan = plan_async(sched, instants, eta=eta or 0.0, device=self.device,
                          dtype=self.x.dtype)
        batches = self._minibatches(sched.steps_per_node(), a.batch_size)
        plan_wall = time.perf_counter() - t0
        wait = (sched.start_s - sched.fired_s)[sched.kind != STEP]  # queued behind a busy end
        self.facts = {"steps": int(sched.steps_per_node().sum()),
                      "exchanges": int(plan.exchanges.sum()),
                      "exchanges_unfinished": sched.unfinished,
                      "exchange_wait_mean_s": float(wait.mean()) if wait.size else 0.0,
                      "schedule_wall_s": plan_wall,
                      "batches": sum(len(s) for s in plan.segments)}
        edges = self.graph.number_of_edges()  # about one exchange per edge may be in flight
        if sched.unfinished > max(edges, 0.05 * (self.facts["exchanges"] + sched.unfinished)):
            warn(f"{self.label}: {sched.unfinished} exchanges were still queued at the end (mean "
                 f"wait {self.facts['exchange_wait_mean_s']:.3g} s): the links cannot keep up; "
                 "lower algorithm.gossip_rate or raise network.bandwidth_bps")
        if eta is not None:
            self.facts.update(eta=eta, alpha_tilde=alpha)
        loss_sum, loss_count = [0.0], [0]

        d = self.d

        def local_step(nodes: Tensor, ordinals: np.ndarray, rows: Tensor) -> Tensor:
            mbs = [batches[v][k] for v, k in zip(nodes.tolist(), ordinals.tolist(), strict=True)]
            bufs = None
            if self.mix_buffers:  # the buffers ride along as columns d: of the rows
                rows, bufs = rows[:, :d], self._usable(rows[:, d:])
            elif self.bufs is not None:
                bufs = self.bufs[nodes]
            new, loss, bufs = train_nodes(self.pop, rows, mbs, lr=a.lr, epochs=1,  # one step
                                          batch_size=max(int(mb.numel()) for mb in mbs),
                                          gen=self.gen, buffers=bufs)
            loss_sum[0] += float(loss.sum())
            loss_count[0] += len(mbs)
            if self.mix_buffers:
                return torch.cat((new, bufs), dim=1)
            if bufs is not None:
                self.bufs[nodes] = bufs
            return new

        walls = {"t": time.perf_counter()}

        def on_state(k: int, x: Tensor, xt: Tensor | None) -> None:
            self._state = (x, xt)  # read by state_dict() while instant k's row is emitted

        def on_instant(k: int, xk: Tensor) -> None:
            train_wall = time.perf_counter() - walls["t"]
            sent = 2 * self.nbytes * int(plan.exchanges[k])
            self._cum += sent
            loss = loss_sum[0] / loss_count[0] if loss_count[0] else None
            loss_sum[0], loss_count[0] = 0.0, 0
            self.x = xk
            if self.mix_buffers:
                self.x, self.bufs = xk[:, :d], xk[:, d:]
            record, nodes, eval_wall = self._record(k + 1, float(instants[k]), interval, sent,
                                                   self._cum, loss)
            emit(record, nodes, {"train_wall_s": train_wall, "eval_wall_s": eval_wall})
            walls["t"] = time.perf_counter()

        # the schedule and the minibatches are drawn again from the seed; the states and the
        # training stream continue from the checkpoint (the states hold the buffers' columns)
        x0 = torch.cat((self.x, self.bufs), dim=1) if self.mix_buffers else self.x
        xt0 = None
        if restored is not None:
            self._restore(restored)
            x0, xt0 = self.x, restored["x_tilde"]
            if self.mix_buffers:
                self.x, self.bufs = x0[:, :d], x0[:, d:]
        self.x, _ = async_gossip_sgd(x0, plan, local_step, alpha, on_instant, start=start - 1,
                                     x_tilde=xt0, on_state=on_state)
        if self.mix_buffers:
            self.x, self.bufs = self.x[:, :d], self.x[:, d:]

    # ------------------------------------------------------------------ shared
    def _record(self, rnd: int, sim_time_s: float, round_time_s: float, sent: int, cum: int,
                train_loss: float | None) -> tuple[RoundRecord, dict, float]:
        """The metrics row and the node facts; evaluates the models on eval rounds."""
        sc = self.sc
        t0 = time.perf_counter()
        self.diverged_round = check_finite(
            self.x, rnd, self.diverged_round,
            f"{self.label}: the node models have non-finite values at round {rnd} (diverged; "
            "try a smaller algorithm.lr)")
        test_loss = test_acc = None
        self.last_metrics = {}
        nodes = {"consensus_distance": mean_consensus_distance(self.x),
                 "node_accuracy_mean": None, "node_accuracy_min": None}
        if rnd % sc.eval_every == 0 or rnd == sc.rounds:
            test_loss, test_acc = self.pop.evaluate(self.x.mean(dim=0), self.x_test,
                                                    self.y_test, buffers=self.mean_buffers())
            self.last_metrics = self.user_metrics(self.x.mean(dim=0), self.mean_buffers(),
                                                  self.x_test, self.y_test)
            self.final_metrics = self.last_metrics or self.final_metrics
            accs = self.pop.accuracy_rows(self.x, self.x_test, self.y_test, buffers=None
                                          if self.bufs is None else self._usable(self.bufs))
            nodes.update(node_accuracy_mean=sum(accs) / len(accs), node_accuracy_min=min(accs))
        record = RoundRecord(
            round=rnd, sim_time_s=sim_time_s, round_time_s=round_time_s, bytes_up=sent,
            bytes_down=0, cum_bytes=cum, selected=self.n, participants=self.n, stragglers=0,
            dropped=0, train_loss=train_loss, test_loss=test_loss, test_accuracy=test_acc)
        return record, nodes, time.perf_counter() - t0

    def mean_buffers(self) -> Tensor | None:
        """The nodes' mean buffers (those of the average model), integer slots rounded."""
        if self.bufs is None:
            return None
        return mean_buffers(self.bufs, self.bufs.new_ones(self.n), self.integer_buffers)

    def _usable(self, bufs: Tensor) -> Tensor:
        """Buffer rows as a model uses them: mixed integer slots rounded to integers."""
        if self.integer_buffers is None or not self.mix_buffers:
            return bufs
        return bufs.where(~self.integer_buffers, bufs.round())

    def _minibatches(self, steps: np.ndarray, batch_size: int) -> list[Tensor]:
        """Node ``v``'s minibatches ``[steps_v, B_v]`` (``B_v = min(B, n_v)``), training stream.

        Each node reads its samples in a fresh random order per pass, ``B_v`` at a time
        (a minibatch may straddle two passes); drawn up front, node by node.
        """
        out = []
        for v, ix in enumerate(self.client_idx):
            n_v, s = ix.numel(), int(steps[v])
            b = min(batch_size, n_v)
            passes = -(-s * b // n_v) if s else 0
            keys = torch.rand(passes, n_v, generator=self.gen, device=self.gen.device)
            order = ix[keys.argsort(dim=1).to(ix.device)].reshape(-1)[: s * b]
            out.append(order.view(s, b))
        return out

    def summary(self) -> dict:
        """Run facts for summary.json beyond the metrics."""
        return {"name": self.sc.name, "algorithm": self.sc.algorithm.name,
                "device": self.device, "num_params": self.d, "num_nodes": self.n,
                "num_edges": self.graph.number_of_edges(), "diverged_round": self.diverged_round,
                **self.facts}


# --------------------------------------------------------------------------- population


def mixing_matrix(graph, dtype: torch.dtype, device: str | torch.device) -> Tensor:
    """D-SGD's Metropolis matrix as a torch tensor: dense up to ``DENSE_MAX_NODES`` nodes,
    sparse CSR beyond (``W @ x`` then costs the edges, not ``n^2``)."""
    from fedsim.network.mixing import DENSE_MAX_NODES, metropolis_csr, metropolis_weights

    n = graph.number_of_nodes()
    if n <= DENSE_MAX_NODES:
        return torch.as_tensor(metropolis_weights(graph), dtype=dtype, device=device)
    indptr, indices, values = metropolis_csr(graph)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(indices),
                                       torch.from_numpy(values).to(dtype), size=(n, n),
                                       device=device, check_invariants=True)


def train_rows(pop, starts: Tensor, indices: list[Tensor], *, lr: float, epochs: int,
               batch_size: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``train_nodes`` for a model without buffers: ``(rows [m, d], losses [m])``."""
    rows, losses, _ = train_nodes(pop, starts, indices, lr=lr, epochs=epochs,
                                  batch_size=batch_size, gen=gen)
    return rows, losses


def train_nodes(pop, starts: Tensor, indices: list[Tensor] | CohortIndex, *, lr: float,
                epochs: int, batch_size: int, gen: torch.Generator,
                buffers: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Local SGD of ``m`` clients, client ``r`` starting from its own row ``starts[r]``.

    Rows that are all equal (every node at the start, or after exact averaging) train as
    one cohort from one starting point, which lets the population use its fused engine.

    Args:
        pop: the ``Population``.
        starts: ``[m, d]`` starting parameters.
        indices: one index tensor per client (its samples, or one minibatch), or the
            cohort's ``CohortIndex``.
        lr: SGD step size.
        epochs: local passes.
        batch_size: minibatch size.
        gen: the training stream.
        buffers: ``[m, b]`` each client's buffers (a model with buffers), else None.

    Returns:
        ``(rows [m, d] after local SGD, losses [m], buffers [m, b] after it or None)``.
    """
    shared = bool((starts == starts[:1]).all())
    res = pop.train(starts[0] if shared else starts, indices, lr=lr, epochs=epochs,
                    batch_size=batch_size, gen=gen, buffers=buffers)
    return starts + res.updates, res.losses, res.buffers
