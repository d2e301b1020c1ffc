"""Join the clock's schedule with the algorithm's tensor work, round by round.

The clock (``fedsim.network``) says who was selected, who reported in time and
when the round ended; the algorithm (``fedsim.algorithms``) says what the
reporting clients compute and how it is combined. Only clients whose update is
aggregated are trained: stragglers' work is discarded by the protocol, so the
simulator does not spend real time on it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.config import Scenario
from fedsim.data.base import FederatedData
from fedsim.distributed.trainer import LocalTrainer, RayOptions, Trainer
from fedsim.errors import FedsimError, ScenarioError
from fedsim.results.records import RoundRecord
from fedsim.scenario import CODED_ALGORITHMS, DECENTRALIZED_ALGORITHMS, MINMAX_ALGORITHMS
from fedsim.seeding import numpy_rng, stream_seed, torch_generator

if TYPE_CHECKING:
    from torch import Tensor, nn

    from fedsim.population import Population


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its files, its summary, and the final global model (flat, on CPU).

    Attributes:
        run_dir: the run directory.
        summary: what ``summary.json`` holds.
        final_params: ``[d]`` the global model's parameters (``parameters_to_vector``
            order); for a decentralized run the nodes' average.
        final_buffers: ``[b]`` its buffers (BatchNorm running statistics, ``named_buffers``
            order, as floats) under ``model.buffers``: the averaged buffers, or with
            ``local`` the mean the global model is evaluated with; None without buffers.
    """

    run_dir: Path
    summary: dict
    final_params: Tensor | None = None
    final_buffers: Tensor | None = None

    def load_into(self, module: nn.Module) -> nn.Module:
        """Copy the final parameters (and buffers) into ``module``, a model of the run's
        architecture (e.g. a fresh one from the same factory); returns it."""
        from fedsim.runs.checkpoint import load_flat

        if self.final_params is None:
            raise ValueError("this run has no final parameters")
        return load_flat(module, self.final_params, self.final_buffers)


def resolve_device(name: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; checks that
    ``"cuda"`` and ``"cuda:N"`` name a GPU torch sees."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ScenarioError("device", f"{name!r} requested but torch sees no GPU; "
                                "allowed here: cpu, auto")
        count = torch.cuda.device_count()
        if name != "cuda" and int(name.removeprefix("cuda:")) >= count:
            raise ScenarioError("device", f"{name!r} requested but torch sees {count} "
                                f"GPU{'s' if count > 1 else ''}; allowed here: cpu, auto, "
                                f"cuda, cuda:0 to cuda:{count - 1}")
    return name


def configure_threads(device: str) -> None:
    """One torch thread on CPU unless ``FEDSIM_TORCH_THREADS`` says otherwise.

    Measured on 2-core machines: the small per-client tensors run fastest on one
    thread, and two threads under load were many times slower (docs/performance.md).
    """
    import torch

    if device == "cpu":
        torch.set_num_threads(int(os.environ.get("FEDSIM_TORCH_THREADS", "1")))


@contextlib.contextmanager
def restore_threads() -> Iterator[None]:
    """Give back the process's torch thread count when the block returns or raises.

    Both runners (``run_scenario``, ``run_decentralized``) run inside it: a run sets
    the count it needs (``configure_threads``) and leaves the caller's as it found it.
    """
    import torch

    saved = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


def build_clock(sc: Scenario, base_dir: Path):
    """The simulated network for the scenario (star, a built graph, or a file)."""
    from fedsim.network.clock import FederatedClock
    from fedsim.network.topology import resolve_topology, with_link_defaults
    from fedsim.scenario import topology_dirs

    net = sc.network
    graph = None
    if net.topology != "star":
        graph = resolve_topology(net.topology, net.topology_params, seed=sc.seed,
                                 search_dirs=topology_dirs(base_dir))
        graph = with_link_defaults(graph, net.bandwidth_bps, net.latency_s)
    return FederatedClock(net, sc.data.num_clients, graph, seed=sc.seed, base_dir=base_dir)


def build_population(sc: Scenario, data: FederatedData, device: str, model=None,
                     base_dir: Path | None = None, loss: Callable | None = None):
    """The scenario's model (from its own seed stream) over the training data, on ``device``.

    Args:
        sc: the scenario (``model`` section: fedsim's model, or ``model.factory``).
        data: the federated data.
        device: where the population trains.
        model: the user's model instead of ``sc.model``: an ``nn.Module`` (copied; its
            own initialization is the start) or a function ``(input_shape, num_classes)
            -> nn.Module``, called with torch's RNG seeded from the ``model`` stream.
        base_dir: the scenario's folder, where a ``model.factory`` module is also looked for.
        loss: the user's per-sample loss instead of ``sc.algorithm.loss`` (``fedsim.losses``).

    Returns:
        ``(Population, x_test, y_test)`` with the test tensors on ``device``.
    """
    import torch

    from fedsim.local_opt import build_local_opt
    from fedsim.losses import check_loss, load_loss
    from fedsim.models import build_model, make_model
    from fedsim.population import Population
    from fedsim.scenario import model_dirs

    seed = stream_seed(sc.seed, "model")
    if model is not None:
        what = getattr(model, "__qualname__", "the model factory")
        model = make_model(model, data.input_shape, data.num_classes, seed=seed, what=what)
    else:
        model = build_model(sc.model, data.input_shape, data.num_classes, seed=seed,
                            search_dirs=model_dirs(base_dir))
    if loss is not None:
        check_loss(loss, model, data.input_shape, data.num_classes,
                   getattr(loss, "__qualname__", "the loss"))
    else:
        loss = load_loss(sc.algorithm.loss, model_dirs(base_dir))
    p = sc.privacy
    dp_sgd = (p.clip, p.noise_multiplier) if p.mode == "sample" else None
    try:
        pop = Population(model, torch.from_numpy(data.x_train), torch.from_numpy(data.y_train),
                         device=device, batched=sc.batched,
                         local_opt=build_local_opt(sc.algorithm.local_opt), loss=loss,
                         dp_sgd=dp_sgd)
    except ValueError as err:
        if dp_sgd is None:
            raise
        raise ScenarioError("privacy.mode", f"'sample' (DP-SGD): {err}") from None
    return pop, torch.from_numpy(data.x_test).to(device), torch.from_numpy(data.y_test).to(device)


def integer_buffers(pop: Population) -> Tensor | None:
    """``[b]`` bool, True at the flat buffer slots of integer buffers (BatchNorm's
    ``num_batches_tracked``); None when the model has none."""
    import torch

    masks = [torch.full((t.numel(),), not t.is_floating_point(), dtype=torch.bool)
             for t in pop.model.buffers()]
    if not masks:
        return None
    mask = torch.cat(masks).to(pop.device)
    return mask if bool(mask.any()) else None


def mean_buffers(rows: Tensor, weights: Tensor, integer: Tensor | None) -> Tensor:
    """The ``weights``-weighted mean of buffer rows ``[m, b]`` -> ``[b]``, integer slots
    rounded to the nearest integer (half to even): how ``model.buffers = "average"``
    combines the clients' buffers."""
    w = weights.to(rows.dtype).reshape(-1, 1)
    mean = (rows * w).sum(dim=0) / w.sum()
    if integer is not None:
        mean = mean.where(~integer, mean.round())
    return mean


METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def check_metrics(metrics: Mapping[str, Callable] | None) -> dict[str, Callable]:
    """User metrics ``{name: fn(logits, labels) -> float}``, checked: names are identifiers
    of at most 64 characters, none a column fedsim writes itself, every value callable.

    Raises:
        ScenarioError: (``metrics``) a bad name or a value that is not callable.
    """
    from fedsim.results.records import METRIC_FIELDS

    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ScenarioError("metrics", f"must be a dict of name -> function(logits, labels), "
                                       f"got {type(metrics).__name__}")
    for name, fn in metrics.items():
        if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
            raise ScenarioError("metrics", f"names must be identifiers (letters, digits, _; at "
                                           f"most 64), got {name!r}")
        if name in (*METRIC_FIELDS, "epsilon"):
            raise ScenarioError("metrics", f"{name!r} is one of fedsim's own columns; allowed: "
                                           "any other name")
        if not callable(fn):
            raise ScenarioError(f"metrics.{name}", f"must be a function (logits, labels) -> "
                                                   f"float, got {type(fn).__name__}")
    return dict(metrics)


class UserMetrics:
    """The user's metrics of a model on a test set: ``fn(logits [M, C], labels [M])`` each.

    The logits come from a copy of the population's module in ``eval()`` mode with the given
    flat parameters and buffers, under ``torch.no_grad``, 4096 samples at a time.
    """

    def __init__(self, pop: Population, metrics: Mapping[str, Callable]):
        import copy

        self.metrics = dict(metrics)
        self.module = copy.deepcopy(pop.model).eval() if self.metrics else None

    def __call__(self, params: Tensor, buffers: Tensor | None, x: Tensor, y: Tensor
                 ) -> dict[str, float]:
        import torch

        from fedsim.runs.checkpoint import load_flat

        if self.module is None:
            return {}
        module = load_flat(self.module, params, buffers)
        with torch.no_grad():
            logits = torch.cat([module(x[i:i + 4096]) for i in range(0, len(x), 4096)])
        out = {}
        for name, fn in self.metrics.items():
            try:
                value = fn(logits, y)
                out[name] = float(value)
            except Exception as err:
                raise FedsimError(f"metrics.{name}: {getattr(fn, '__qualname__', 'it')}"
                                  f"(logits, labels) raised {type(err).__name__}: {err} "
                                  "(it must return a number)") from None
        return out


@restore_threads()
def run_scenario(sc: Scenario, run_dir: Path, base_dir: Path | None = None,
                 progress: bool | None = None, label: str = "",
                 data: FederatedData | None = None, model=None,
                 metrics: Mapping[str, Callable] | None = None,
                 callback: Callable[[dict], Any] | None = None,
                 resume: bool = False, loss: Callable | None = None,
                 ray: RayOptions | None = None) -> RunResult:
    """Run one scenario (no variants) and write its run directory.

    Args:
        sc: a validated scenario.
        run_dir: where metrics, summary, scenario and plots go.
        base_dir: the scenario file's folder (relative data and trace paths).
        progress: show a progress line (None: only on an interactive terminal, not in CI).
        label: shown in the progress line.
        data: use this federated dataset instead of loading ``sc.data`` (its
            client count must equal ``sc.data.num_clients``); for benchmarks and
            data built in Python.
        model: use this model instead of ``sc.model``: an ``nn.Module`` or a function
            ``(input_shape, num_classes) -> nn.Module`` (see ``build_population``).
        metrics: ``{name: fn(logits, labels) -> float}``, evaluated on the global model
            and the test set on evaluated rounds; a column ``name`` of metrics.csv each
            (empty on rounds not evaluated), and ``final_metrics`` in the summary.
        callback: called after each round's rows are written, with the round's row as
            ``metrics.jsonl`` has it (``fedsim.results.records.METRIC_FIELDS``, then the
            user metrics; decentralized runs add the node columns of consensus.csv).
        resume: continue the run in ``run_dir`` from its ``checkpoint.pt`` (written every
            ``sc.checkpoint_every`` rounds); ``sc``, ``model``, ``data`` and ``metrics``
            must be those it was started with.
        loss: a per-sample loss ``(logits, labels) -> [B]`` instead of
            ``sc.algorithm.loss`` (``fedsim.losses``).
        ray: train each round's cohort on Ray actors (``fedsim.distributed``); None
            trains it in this process.

    Returns:
        The run directory, the summary dict (also written as summary.json) and
        the final global parameters (and buffers). The process's torch thread count is
        as before.
    """
    if sc.algorithm.name in DECENTRALIZED_ALGORITHMS:  # no server: fedsim.decentralized
        if ray is not None:
            raise ScenarioError("algorithm.name", f"{sc.algorithm.name!r} is decentralized; "
                                "--ray shards a server's cohort: run it without --ray")
        from fedsim.decentralized.runner import run_decentralized

        return run_decentralized(sc, run_dir, base_dir, progress, label, data, model, metrics,
                                 callback, resume, loss)
    if sc.algorithm.name in CODED_ALGORITHMS:  # distributed GD with stragglers: fedsim.coding
        if ray is not None:
            raise ScenarioError("algorithm.name", "'coded' simulates its workers in this "
                                "process; run it without --ray")
        from fedsim.runs.coded import run_coded_scenario

        return run_coded_scenario(sc, run_dir, base_dir, progress, label, data, model,
                                  metrics, callback, resume, loss)
    if sc.algorithm.name in MINMAX_ALGORITHMS:  # games and GANs on a graph: fedsim.minmax
        if ray is not None:
            raise ScenarioError("algorithm.name", "'minmax' simulates its nodes in this "
                                "process; run it without --ray")
        from fedsim.runs.minmax import run_minmax_scenario

        return run_minmax_scenario(sc, run_dir, base_dir, progress, label, data, model,
                                   metrics, callback, resume, loss)
    from fedsim.runs.loop import RunLoop

    metrics = check_metrics(metrics)
    started = time.perf_counter()
    run = FederatedRun(sc, Path(base_dir) if base_dir is not None else Path.cwd(), data, model,
                       metrics, loss)
    run.label = label or sc.name  # names the run in its warnings
    if ray is not None:  # the cohorts train on Ray actors (fedsim.distributed)
        from fedsim.distributed.ray_shards import RayTrainer

        run.trainer = RayTrainer(run, ray)
    loop = RunLoop(sc, run_dir, label=run.label, progress=progress, device=run.device,
                   metric_columns=(*run.own_columns, *metrics), callback=callback,
                   resume=resume, started=started)
    if loop.restored is not None:
        run.load_state_dict(loop.restored)
    completed = False
    try:
        for rnd in range(loop.next_round, sc.rounds + 1):
            if not run.may_play(rnd):
                break
            record, walls = run.round(rnd, cum_bytes=loop.cum_bytes)
            loop.emit(record, walls, {**run.own_values(rnd), **run.last_metrics},
                      state=run.state_dict)
        completed = True
    finally:
        run.trainer.close()
        facts = run.summary(rounds_done=len(loop.records))
        if metrics:
            facts["final_metrics"] = run.final_metrics
        summary = loop.finish(facts, model=(run.pop.model, run.params, run.eval_buffers())
                              if completed else None)
    final_buffers = run.eval_buffers()
    return RunResult(run_dir=Path(run_dir), summary=summary,
                     final_params=run.params.detach().cpu(),
                     final_buffers=None if final_buffers is None else final_buffers.cpu())


class FederatedRun:
    """The state of one federated run; ``round(r)`` plays round r.

    Built from a scenario: data (poisoned for a data attack), model, population,
    clock, algorithm pieces, the Byzantine set and every seeded stream.

    A model with buffers (BatchNorm) follows ``model.buffers``: ``"average"`` keeps one
    global ``buffers [b]``, sent to the clients and replaced each round by the weighted
    mean of the buffers of the clients whose update was kept (``mean_buffers``);
    ``"local"`` keeps ``client_buffers [n, b]``, a row per client carried from round to
    round, and evaluates with the mean of the rows of the clients that trained so far.
    """

    def __init__(self, sc: Scenario, base_dir: Path, data: FederatedData | None = None,
                 model=None, metrics: Mapping[str, Callable] | None = None,
                 loss: Callable | None = None):

        from fedsim.algorithms import build_algorithm
        from fedsim.data import load_federated
        from fedsim.resources import check_cohort_memory
        from fedsim.runs.workspace import UpdateWorkspace

        self.sc = sc
        self.label = sc.name  # names the run in its warnings (run_scenario sets it)
        self.device = resolve_device(sc.device)
        configure_threads(self.device)
        if data is None:
            data = load_federated(sc.data, sc.seed, base_dir)
        elif len(data.client_indices) != sc.data.num_clients:
            raise ScenarioError("data.num_clients", f"is {sc.data.num_clients} but the given "
                                f"data has {len(data.client_indices)} clients")
        self.is_byzantine, data = _byzantine_setup(sc, data)
        self.backdoor_test = _backdoor_test(sc, data, self.device)
        self.pop, self.x_test, self.y_test = build_population(sc, data, self.device, model,
                                                              base_dir, loss)
        self.client_idx = data.client_indices  # numpy, by client id (Ray, Flower)
        self.sizes = data.client_sizes()
        self.clock = build_clock(sc, base_dir)
        self.privacy = None  # DP-FedAvg (fedsim.privacy.federated), with [privacy] mode set
        if sc.privacy.mode != "none":
            from fedsim.privacy.federated import ClientPrivacy

            a = sc.algorithm
            self.privacy = ClientPrivacy(sc.privacy, sc.data.num_clients,
                                         sc.clients_per_round, sc.rounds, self.sizes,
                                         a.batch_size, a.local_epochs)
        self.alg = build_algorithm(sc.algorithm, self.pop.d, stream_seed(sc.seed, "compress"),
                                   self.privacy)
        self.attack = _update_attack(sc)

        n, d = sc.data.num_clients, self.pop.d
        self.params = self.pop.flat_params().to(self.device)
        self.workspace = UpdateWorkspace(d, self.params.dtype, self.device)
        # model.buffers: global buffers ("average") or one row per client ("local")
        self.local_buffers = sc.model.buffers == "local"
        self.buffers = self.client_buffers = self.trained = None
        self.integer_buffers = integer_buffers(self.pop)
        self.user_metrics = UserMetrics(self.pop, check_metrics(metrics))
        # run_scenario's ray= replaces it; the local one holds the indices as CSR on the device
        self.trainer: Trainer = LocalTrainer(self.pop, self.client_idx)
        self.last_metrics: dict[str, float] = {}  # this round's (empty when not evaluated)
        self.final_metrics: dict[str, float] = {}  # the last evaluated round's
        if self.pop.d_buffers:
            self.buffers = self.pop.flat_buffers().to(self.device)
            if self.local_buffers:
                self.client_buffers = self.buffers.expand(n, -1).clone()
                self.trained = np.zeros(n, dtype=bool)
        downlink = self.alg.downlink
        self.states = {"uplink": self.alg.uplink.init(n, d), "attack": self.attack.init(n, d),
                       "aggregate": self.alg.aggregate.init(n, d),
                       "downlink": downlink.init(d) if downlink is not None else None,
                       "server": self.alg.server.init(d)}
        self.sampling = numpy_rng(sc.seed, "sampling")
        self.gens = {name: torch_generator(sc.seed, name, self.device)
                     for name in ("training", "noise", "attack", "aggregate")}
        self.bytes_up = self.alg.uplink.nbytes(d)
        self.bytes_down = 4 * d if downlink is None else downlink.nbytes(d)
        over = sc.network.over_selection if sc.network.policy == "first_k" else 1.0
        self.m_target = min(n, math.ceil(sc.clients_per_round * over))
        check_cohort_memory(sc, self.m_target, d, self.params.element_size(), self.device)
        self.diverged_round: int | None = None
        self.stopped: str | None = None  # why the run ended before its last round
        self.not_converged_rounds = 0
        self.rejected = self.rejected_rows = 0  # non-finite rows: this round, all rounds
        self.honest_rejected = 0  # of this round's, rows from honest clients (diverged SGD)

    def select(self) -> np.ndarray:
        """The round's cohort, drawn from the clients online now (sampling stream)."""
        available = self.clock.available_ids()
        m = min(self.m_target, len(available))
        return self.sampling.choice(available, size=m, replace=False) if m else available[:0]

    def round(self, rnd: int, cum_bytes: int) -> tuple[RoundRecord, dict]:
        """Play round ``rnd``: schedule, train, attack, aggregate, evaluate."""
        sc, alg = self.sc, self.alg
        selected = self.select()
        k = min(sc.clients_per_round, len(selected)) if sc.network.policy == "first_k" else None
        sched = self.clock.run_round(rnd, selected, self.sizes[selected] * alg.client.epochs,
                                     self.bytes_down, self.bytes_up, k=k)
        done = sched.completed_ids
        self.rejected = self.honest_rejected = 0
        t0 = time.perf_counter()
        train_loss, agg_wall = (self._update(rnd, done) if len(done) else (None, 0.0))
        train_wall = time.perf_counter() - t0 - agg_wall
        self._check_finite(rnd)
        t0 = time.perf_counter()
        test_loss, test_acc = self.evaluate_round(rnd)
        eval_wall = time.perf_counter() - t0
        record = RoundRecord(
            round=rnd, sim_time_s=sched.end_s, round_time_s=sched.duration_s,
            bytes_up=sched.bytes_up, bytes_down=sched.bytes_down,
            cum_bytes=cum_bytes + sched.bytes_up + sched.bytes_down,
            selected=len(sched.selected_ids), participants=len(done),
            stragglers=sched.num_stragglers, dropped=sched.num_dropped,
            train_loss=train_loss, test_loss=test_loss, test_accuracy=test_acc,
            rejected=self.rejected,
        )
        return record, {"train_wall_s": train_wall, "aggregate_wall_s": agg_wall,
                        "eval_wall_s": eval_wall}

    def evaluate_round(self, rnd: int) -> tuple[float | None, float | None]:
        """Test loss and accuracy on evaluation rounds (None, None otherwise); sets the metrics."""
        sc = self.sc
        if rnd % sc.eval_every == 0 or rnd == sc.rounds:
            test_loss, test_acc = self.pop.evaluate(self.params, self.x_test, self.y_test,
                                                    buffers=self.eval_buffers())
            self.last_metrics = self.user_metrics(self.params, self.eval_buffers(),
                                                  self.x_test, self.y_test)
            self.final_metrics = self.last_metrics or self.final_metrics
            return test_loss, test_acc
        self.last_metrics = {}
        return None, None

    def _update(self, rnd: int, done: Sequence[int]) -> tuple[float, float]:
        """Train the reporting clients ``done`` (ids, in arrival order), run the uplink,
        attack, aggregate; (loss, agg wall s)."""
        import torch

        from fedsim.byzantine import byzantine_mask
        from fedsim.stages.base import Ctx
        from fedsim.stages.numerics import reject_nonfinite

        alg, st, device = self.alg, self.states, self.device
        c = alg.client
        done = np.asarray(done, dtype=np.int64)
        senders = torch.from_numpy(done).to(device)
        start_buffers = self.buffers
        if self.client_buffers is not None:
            start_buffers = self.client_buffers[senders]
        res = self.trainer.train(self.params, done, lr=c.lr, epochs=c.epochs,
                                 batch_size=c.batch_size, mu=c.mu, gen=self.gens["training"],
                                 buffers=start_buffers, out=self.workspace.rows(len(done)))
        weights = (res.num_samples.to(self.params.dtype) if alg.weighted
                   else torch.ones(len(done), dtype=self.params.dtype, device=device))
        ctx = Ctx(step=rnd, senders=senders, weights=weights.to(device),
                  byzantine=byzantine_mask(senders, self.is_byzantine), gen=self.gens["noise"])
        rows, st["uplink"] = alg.uplink.update(res.updates, st["uplink"], ctx)
        rows, st["attack"] = self.attack.update(rows, st["attack"],
                                                ctx._replace(gen=self.gens["attack"]))
        t0 = time.perf_counter()
        rows, actx, self.rejected = reject_nonfinite(rows, ctx._replace(gen=self.gens["aggregate"]))
        self.rejected_rows += self.rejected
        self.honest_rejected = int((~ctx.byzantine).sum() - (~actx.byzantine).sum())
        if self.privacy is not None:  # every row sent was released, kept or not
            self.privacy.record(done)
        if rows.shape[0]:  # every row rejected: the round applies no update
            agg, st["aggregate"] = alg.aggregate.aggregate(rows, st["aggregate"], actx)
            self.not_converged_rounds += _not_converged(st["aggregate"])
            if alg.downlink is not None:  # de-sketch, central noise: [d'] -> [d]
                agg, st["downlink"] = alg.downlink.update(agg, st["downlink"], actx)
            self.params, st["server"] = alg.server.apply(self.params, agg, st["server"])
        if res.buffers is not None:
            self._update_buffers(done, res.buffers, weights, senders, actx.senders)
        agg_wall = time.perf_counter() - t0
        self.workspace.check(st)  # a stage that kept a view of the rows keeps the buffer
        w = weights.to(res.losses.device)
        return float((res.losses * w).sum() / w.sum()), agg_wall

    def _update_buffers(self, done: np.ndarray, rows: Tensor, weights: Tensor, senders: Tensor,
                        kept: Tensor) -> None:
        """``model.buffers``: store each client's buffers (local), or average the buffers of
        the clients whose update was kept and is finite, with the parameters' weights."""
        import torch

        if self.client_buffers is not None:
            self.client_buffers[senders] = rows
            self.trained[done] = True
            return
        use = torch.isin(senders, kept) & rows.isfinite().all(dim=1)
        if bool(use.any()):
            self.buffers = mean_buffers(rows[use], weights.to(rows.device)[use],
                                        self.integer_buffers)

    def eval_buffers(self) -> Tensor | None:
        """The buffers the global model is evaluated with: the global ones (average), or
        the mean of the finite local rows of the clients that trained so far, weighted as
        the parameters (local; the initial buffers before any trained)."""
        import torch

        if self.client_buffers is None:
            return self.buffers
        rows = self.client_buffers[torch.from_numpy(np.flatnonzero(self.trained)).to(
            self.device)]
        weights = (torch.from_numpy(self.sizes[self.trained]).to(self.device, rows.dtype)
                   if self.alg.weighted else rows.new_ones(len(rows)))
        finite = rows.isfinite().all(dim=1)
        if not bool(finite.any()):
            return self.buffers
        return mean_buffers(rows[finite], weights[finite], self.integer_buffers)

    def _check_finite(self, rnd: int) -> None:
        from fedsim.divergence import check_finite, warn

        if self.diverged_round is None and self.honest_rejected:
            self.diverged_round = rnd
            warn(f"{self.label}: {self.honest_rejected} honest clients' updates were non-finite "
                 f"at round {rnd} and were rejected (local training diverged; try a smaller "
                 "algorithm.lr)")
        self.diverged_round = check_finite(
            self.params, rnd, self.diverged_round,
            f"{self.label}: the global model has non-finite values at round {rnd} "
            "(diverged; try a smaller algorithm.lr or a robust aggregator)")

    def state_dict(self) -> dict:
        """Everything that changes from round to round (``checkpoint.pt``'s ``run``): the
        global model and buffers, every stage's state, the random streams, the clock, the
        clients' kept optimizer state, and the counters of the summary."""
        return {"params": self.params, "buffers": self.buffers,
                "client_buffers": self.client_buffers, "trained": self.trained,
                "states": self.states, "sampling": self.sampling.bit_generator.state,
                "gens": {name: gen.get_state() for name, gen in self.gens.items()},
                "clock": self.clock, "opt_state": self.pop.opt_state,
                "participation": (None if self.privacy is None
                                  else self.privacy.participation),
                "counters": {"diverged_round": self.diverged_round,
                             "not_converged_rounds": self.not_converged_rounds,
                             "rejected_rows": self.rejected_rows,
                             "final_metrics": self.final_metrics}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``'s output (tensors already on this run's device)."""
        self.params, self.buffers = state["params"], state["buffers"]
        self.client_buffers, self.trained = state["client_buffers"], state["trained"]
        self.states, self.clock = state["states"], state["clock"]
        self.sampling.bit_generator.state = state["sampling"]
        for name, gen in self.gens.items():
            gen.set_state(state["gens"][name].cpu())
        self.pop.opt_state = state["opt_state"]
        if self.privacy is not None:
            self.privacy.participation = state["participation"]
        for name, value in state["counters"].items():
            setattr(self, name, value)

    @property
    def own_columns(self) -> tuple[str, ...]:
        """Columns of metrics.csv after fedsim's own that this run adds: ``epsilon`` (the
        privacy spent so far) with ``[privacy]``."""
        return ("epsilon",) if self.privacy is not None else ()

    def own_values(self, rnd: int) -> dict[str, float]:
        """This run's ``own_columns`` after round ``rnd``."""
        return {"epsilon": self.privacy.epsilon(rnd)} if self.privacy is not None else {}

    def may_play(self, rnd: int) -> bool:
        """False when round ``rnd`` would spend more than ``privacy.max_epsilon``: the run
        stops there (a warning says so; what was done is kept)."""
        if self.privacy is None or self.privacy.allows(rnd):
            return True
        from fedsim.divergence import warn

        self.stopped = (f"privacy budget: round {rnd} would spend epsilon "
                        f"{self.privacy.epsilon(rnd - 1, extra=1):.4g} > privacy.max_epsilon "
                        f"{self.sc.privacy.max_epsilon:g}")
        warn(f"{self.label}: stopped before round {rnd}: {self.stopped.split(': ', 1)[1]}")
        return False

    def summary(self, rounds_done: int = 0) -> dict:
        """Run facts for summary.json beyond the metrics."""
        out = {"name": self.sc.name, "device": self.device, "num_params": self.pop.d,
               "num_clients": self.sc.data.num_clients, "diverged_round": self.diverged_round,
               "byzantine_clients": int(self.is_byzantine.sum()),
               "aggregator_not_converged_rounds": self.not_converged_rounds,
               "rejected_rows": self.rejected_rows, "bytes_up_per_client": self.bytes_up,
               "bytes_down_per_client": self.bytes_down}
        if self.stopped is not None:
            out["stopped"] = self.stopped
        if self.privacy is not None:
            sketched = self.sc.algorithm.compress.get("name", "none") in ("sketch", "fetchsgd")
            out["privacy"] = self.privacy.summary(rounds_done, sketched)
        if self.backdoor_test is not None:
            _, out["backdoor_success"] = self.pop.evaluate(self.params, *self.backdoor_test,
                                                           buffers=self.eval_buffers())
        return out


def _byzantine_setup(sc: Scenario, data: FederatedData) -> tuple[np.ndarray, FederatedData]:
    """The Byzantine mask over clients, and the data (poisoned for a data attack)."""
    from fedsim.byzantine import choose_byzantine
    from fedsim.data.poison import DATA_ATTACKS, apply_data_attack

    attack = sc.attack
    if attack.name == "none" and attack.fraction == 0.0:
        return np.zeros(sc.data.num_clients, dtype=bool), data
    mask = choose_byzantine(sc.data.num_clients, attack.fraction, sc.seed)
    if attack.name in DATA_ATTACKS:
        data = apply_data_attack(attack.name, data, mask, attack.params,
                                 numpy_rng(sc.seed, "attack/data"))
    return mask, data


def _update_attack(sc: Scenario):
    """The update attack as a stage (identity for none and for data attacks)."""
    from fedsim.stages.attacks import UPDATE_ATTACKS, build_update_attack

    name = sc.attack.name if sc.attack.name in UPDATE_ATTACKS else "none"
    return build_update_attack(name, sc.attack.params if name != "none" else {})


def _backdoor_test(sc: Scenario, data: FederatedData, device: str):
    """Triggered test inputs labelled with the backdoor target, for the success rate."""
    if sc.attack.name != "backdoor":
        return None
    import torch

    from fedsim.data.poison import backdoor_test_set

    params = sc.attack.params
    x, y = backdoor_test_set(data.x_test, data.y_test, int(params.get("target", 0)),
                             bool(params.get("trigger", True)))
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


def _not_converged(state) -> int:
    """1 when the aggregator's state reports an iterative solve that did not converge."""
    info = getattr(state, "info", state)
    return int(getattr(info, "converged", True) is False)
