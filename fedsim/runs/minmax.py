"""Run a min-max scenario (``algorithm.name = "minmax"``) into a run directory.

A decentralized min-max method (:mod:`fedsim.minmax.methods`) plays a game or a GAN
(:mod:`fedsim.minmax.games`, :mod:`fedsim.minmax.gan`) on the scenario's graph, one node
per graph node, timed by the network's links and compute model (the same iteration as
:func:`fedsim.minmax.run.run_minmax`: ``GossipClock`` over ``SyncGossipClock`` rounds, or
``ServerClock`` for the server references). Both take ``[algorithm.minmax]``
(:mod:`fedsim.minmax.spec`).

The same files as the other runners (``RunLoop``), one row per iteration (``round`` =
iteration): ``metrics.csv`` / ``.jsonl`` with the standard columns, then
:data:`MINMAX_COLUMNS` and the task's own metrics (a GAN's modes covered, inception
score, ...), on evaluated iterations (every ``eval_every`` and the last; empty on the
others); ``timing.csv``; ``summary.json`` (the final values under ``final_minmax``);
``scenario.toml``; ``checkpoint.pt`` every ``checkpoint_every`` iterations (the nodes'
states, the method's state — moments, trackers, stored gradients —, the oracle's random
stream and call count, the clock), so ``--resume`` writes byte-identical metrics files.
No ``model.pt`` (the final average state is ``RunResult.final_params``); a digits GAN
writes ``samples.png``, a grid of its generator's samples.

Standard columns: ``selected`` = ``participants`` = nodes; ``bytes_up`` = the bytes the
iteration moved (gossip: every node's state to each neighbour per mixing round; server:
the uploads), ``bytes_down`` = 0 for gossip, the server's replies for server methods;
``train_loss``, ``test_loss`` and ``test_accuracy`` are empty (a game has no accuracy:
see ``dist_to_nash`` and ``grad_norm``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from fedsim.config import Scenario
from fedsim.errors import ScenarioError
from fedsim.results.records import RoundRecord
from fedsim.runners import RunResult

# the run's own columns of metrics.csv, after fedsim's; the task's metrics follow
MINMAX_COLUMNS = ("dist_to_nash", "dist_to_nash_max", "grad_norm", "consensus", "grad_evals")
DIVERGENCE = 1e8  # a state entry larger than this ends the run (diverged)


def run_minmax_scenario(sc: Scenario, run_dir: Path, base_dir: Path | None = None,
                        progress: bool | None = None, label: str = "", data=None, model=None,
                        metrics: Mapping[str, Callable] | None = None,
                        callback: Callable[[dict], Any] | None = None,
                        resume: bool = False, loss: Callable | None = None) -> RunResult:
    """Run one min-max scenario and write its run directory (as ``runners.run_scenario``).

    Args:
        sc: a validated scenario with ``algorithm.name = "minmax"``.
        run_dir: where metrics, summary and scenario go.
        base_dir: the scenario file's folder (topology files).
        progress: show a progress line (None: only on an interactive terminal).
        label: shown in the progress line.
        data, model, metrics, loss: not taken (the task brings its own); must be None.
        callback: called after each iteration's row is written, with the row.
        resume: continue from ``run_dir/checkpoint.pt``.

    Returns:
        The run directory, the summary and the final network-average state ``x_bar``.
    """
    from fedsim.runs.loop import RunLoop

    for name, value in (("data", data), ("model", model), ("metrics", metrics),
                        ("loss", loss)):
        if value:
            raise ScenarioError("algorithm.name", f"minmax runs take no {name} (the task in "
                                "algorithm.minmax.task brings its own)")
    started = time.perf_counter()
    run = MinMaxRun(sc, Path(base_dir) if base_dir is not None else None)
    run.label = label or sc.name
    loop = RunLoop(sc, run_dir, label=run.label, progress=progress, device="cpu",
                   metric_columns=run.columns, callback=callback, resume=resume,
                   started=started)
    if loop.restored is not None:
        run.load_state_dict(loop.restored)
    try:
        for _ in range(loop.next_round, sc.rounds + 1):
            if run.diverged_round is not None:  # resumed after the diverged iteration
                break
            record, walls, values = run.iteration(loop.cum_bytes)
            loop.emit(record, walls, values, state=run.state_dict)
            if run.diverged_round is not None:
                break
        if run.task.generate is not None and run.task.name == "digits":
            from fedsim.minmax.gan import save_sample_grid

            save_sample_grid(run.task, run.xbar(), Path(run_dir) / "samples.png")
    finally:
        summary = loop.finish(run.summary())
    return RunResult(run_dir=Path(run_dir), summary=summary, final_params=run.xbar().cpu(),
                     final_buffers=None)


class MinMaxRun:
    """The state of one min-max run; ``iteration()`` plays the next iteration.

    Built from a scenario: ``[algorithm.minmax]`` (the method and the task), the graph
    (``network.topology``), the clock (``network`` links and compute, stream
    ``network/compute``) and the oracle (stream ``minmax/oracle``), as ``run_minmax``.
    """

    def __init__(self, sc: Scenario, base_dir: Path | None = None):
        from fedsim.minmax.methods import mixing_matrix
        from fedsim.minmax.operator import Operator
        from fedsim.minmax.run import _row
        from fedsim.minmax.spec import build_method, build_task, minmax_graph, minmax_spec
        from fedsim.minmax.timing import GossipClock, ServerClock
        from fedsim.runners import configure_threads
        from fedsim.seeding import torch_generator

        configure_threads("cpu")
        self.sc = sc
        self.label = sc.name
        self.spec = minmax_spec(sc.algorithm.minmax)
        self.method = build_method(self.spec)
        graph = minmax_graph(sc, base_dir)
        self.n = graph.number_of_nodes()
        self.task = build_task(self.spec, self.n, sc.seed, base_dir)
        self.edges = graph.number_of_edges()
        task = self.task
        self.W = (torch.eye(self.n, dtype=task.dtype) if self.method.server
                  else mixing_matrix(graph, task.dtype))
        self.op = Operator(task, torch_generator(sc.seed, "minmax/oracle"))
        self.clock = (ServerClock(self.n, sc.network, sc.seed) if self.method.server
                      else GossipClock(graph, sc.network, sc.seed))
        self.nbytes = 4 * task.dim * getattr(self.method, "message_states", 1)
        self.X = task.initial_states()
        self.state = self.method.init(self.X)
        self._row = _row
        self.it = 0
        self.diverged_round: int | None = None
        first = _row(task, self.op, self.X, {})
        self.initial = first
        task_cols = [k for k in first if k not in MINMAX_COLUMNS]
        own = [c for c in MINMAX_COLUMNS if c in first or c == "grad_evals"]
        self.columns = (*own, *task_cols)
        self.final: dict[str, float] = dict(first)

    def xbar(self) -> torch.Tensor:
        """The network average ``[d]``."""
        return self.X.mean(dim=0)

    def iteration(self, cum_bytes: int) -> tuple[RoundRecord, dict, dict]:
        """Play the next iteration: ``(record, wall times, the run's metrics)``."""
        sc = self.sc
        self.it += 1
        it = self.it
        t0 = time.perf_counter()
        with torch.no_grad():
            before = self.op.calls
            self.X = self.method.step(self.X, self.state, self.op, self.W)
            work = (self.op.calls - before) * self.task.samples_per_call
            cost = self.clock.iteration(it, float(work), self.method.comm_rounds, self.nbytes)
        train_wall = time.perf_counter() - t0
        norm = float(self.X.abs().max())
        values: dict[str, Any] = {c: None for c in self.columns}
        values["grad_evals"] = self.op.calls
        t0 = time.perf_counter()
        if not math.isfinite(norm) or norm > DIVERGENCE:
            self.diverged_round = it
        elif it % sc.eval_every == 0 or it == sc.rounds:
            with torch.no_grad():
                row = self._row(self.task, self.op, self.X, {})
            values.update({k: v for k, v in row.items() if k in values})
            self.final = {k: v for k, v in values.items() if v is not None}
        eval_wall = time.perf_counter() - t0
        sent = int(cost.bytes_sent)
        up, down = (sent // 2, sent - sent // 2) if self.method.server else (sent, 0)
        record = RoundRecord(
            round=it, sim_time_s=cost.end_s, round_time_s=cost.duration_s, bytes_up=up,
            bytes_down=down, cum_bytes=cum_bytes + sent, selected=self.n,
            participants=self.n, stragglers=0, dropped=0, train_loss=None, test_loss=None,
            test_accuracy=None)
        return record, {"train_wall_s": train_wall, "eval_wall_s": eval_wall}, values

    def state_dict(self) -> dict:
        """Everything that changes from iteration to iteration (``checkpoint.pt``'s ``run``).

        The clock is kept whole (its simulated time and its compute stream).
        """
        import copy

        return {"it": self.it, "X": self.X.clone(), "method": copy.deepcopy(self.state),
                "oracle_gen": self.op.gen.get_state(), "oracle_calls": self.op.calls,
                "clock": copy.deepcopy(self.clock), "diverged_round": self.diverged_round,
                "final": dict(self.final)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.it = int(state["it"])
        self.X = state["X"].to(self.task.dtype)
        self.state = state["method"]
        self.op.gen.set_state(state["oracle_gen"])
        self.op.calls = int(state["oracle_calls"])
        self.clock = state["clock"]
        self.diverged_round = state["diverged_round"]
        self.final = dict(state["final"])

    def summary(self) -> dict:
        """Run facts for summary.json beyond the standard metrics."""
        sp = self.spec
        return {"name": self.sc.name, "device": "cpu", "method": sp.method,
                "method_params": dict(sp.method_params), "task": sp.task,
                "task_params": dict(sp.task_params), "nodes": self.n, "edges": self.edges,
                "num_params": self.task.dim, "iterations": self.it,
                "diverged_round": self.diverged_round, "initial_minmax": self.initial,
                "final_minmax": self.final}
