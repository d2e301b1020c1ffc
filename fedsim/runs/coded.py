"""Run a coded scenario (``algorithm.name = "coded"``) into a run directory.

Synchronous distributed gradient descent with a straggler-mitigation scheme
(:mod:`fedsim.coding`): ``n = data.num_clients`` workers, the training set cut into the
scheme's pieces, and a master that needs the full gradient of every job. Each round is
the scheme's state machine (``assign`` -> ``clock`` -> ``receive``,
:class:`fedsim.coding.training.CodedLoop`) with real tensors: a job starting in round
``r`` has the gradients of its pieces computed at its model's parameters, batched over
the pieces through the population engine
(:class:`fedsim.coding.gradients.PieceGradients`: the scenario's model and loss,
``model.factory`` included; summary.json's ``gradient_engine`` says which path), the
round's coded messages are one product ``E @ G`` (``E`` the round's encoding matrix: the
code's ``B`` for gradient coding), the master keeps the rows that arrived, and every
decodable job is decoded (``a^T (B_F G)``) and applied as one full-batch gradient step
(``algorithm.lr``) of its model. Jobs go to ``models`` models round robin (job ``t`` to
model ``(t - 1) mod models``), all started from the scenario's initial model.
Everything runs in float64, so an exact scheme's decoded gradient equals the full
gradient to ~1e-12 (column ``grad_error``).

The same files as the other runners (``RunLoop``): ``metrics.csv`` / ``.jsonl`` with the
standard columns, then the scheme's own (:data:`CODED_COLUMNS`), then the user metrics;
``timing.csv``; ``summary.json``; ``scenario.toml``; ``checkpoint.pt`` every
``checkpoint_every`` rounds (the scheme's state machine, the models, the gradients and
messages in flight, the clock), so ``--resume`` writes byte-identical files; ``model.pt``
(model 0, the one with the most gradient steps).

Standard columns: ``selected`` = ``n`` workers; ``participants`` = workers whose results
the master used (``n - stragglers``); ``stragglers`` = the round's accepted stragglers
(0 in a round where the master waited for all); ``bytes_up`` = ``4 d`` per arrived task
result, ``bytes_down`` = ``4 d n`` in a round that starts a job (its model broadcast);
``train_loss`` (the models' mean loss over the whole training set), ``test_loss`` and
``test_accuracy`` are the means over the models, on evaluated rounds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from fedsim.config import Scenario
from fedsim.data.base import FederatedData
from fedsim.errors import ScenarioError
from fedsim.results.records import RoundRecord
from fedsim.runners import (
    RunResult,
    UserMetrics,
    build_population,
    check_metrics,
    configure_threads,
    resolve_device,
    restore_threads,
)
from fedsim.seeding import numpy_rng

# the scheme's columns of metrics.csv, after fedsim's own
CODED_COLUMNS = ("waited", "waits", "slow", "decoded", "jobs_done", "steps", "cond",
                 "grad_error", "load")


@restore_threads()
def run_coded_scenario(sc: Scenario, run_dir: Path, base_dir: Path | None = None,
                       progress: bool | None = None, label: str = "",
                       data: FederatedData | None = None, model=None,
                       metrics: Mapping[str, Callable] | None = None,
                       callback: Callable[[dict], Any] | None = None,
                       resume: bool = False, loss: Callable | None = None) -> RunResult:
    """Run one coded scenario and write its run directory (as ``runners.run_scenario``).

    Args:
        sc: a validated scenario with ``algorithm.name = "coded"``.
        run_dir: where metrics, summary, scenario and model go.
        base_dir: the scenario file's folder (a relative delay trace, data folders).
        progress: show a progress line (None: only on an interactive terminal).
        label: shown in the progress line.
        data: use this dataset instead of loading ``sc.data`` (its client count, the
            workers, must equal ``sc.data.num_clients``; only its train and test sets are
            used: the scheme cuts the training set into its own pieces).
        model: the user's model instead of ``sc.model`` (``runners.build_population``).
        metrics: ``{name: fn(logits, labels) -> float}``, the mean over the models on
            evaluated rounds; columns after :data:`CODED_COLUMNS`.
        callback: called after each round's rows are written, with the row.
        resume: continue from ``run_dir/checkpoint.pt``.
        loss: the user's per-sample loss instead of ``sc.algorithm.loss``.

    Returns:
        The run directory, the summary and model 0's final parameters.
    """
    from fedsim.runs.loop import RunLoop

    metrics = check_metrics(metrics)
    clash = sorted(set(metrics) & set(CODED_COLUMNS))
    if clash:
        raise ScenarioError("metrics", f"{clash[0]!r} is one of the coded run's own columns; "
                                       "allowed: any other name")
    started = time.perf_counter()
    run = CodedRun(sc, Path(base_dir) if base_dir is not None else Path.cwd(), data, model,
                   metrics, loss)
    run.label = label or sc.name
    loop = RunLoop(sc, run_dir, label=run.label, progress=progress, device=run.device,
                   metric_columns=(*CODED_COLUMNS, *metrics), callback=callback,
                   resume=resume, started=started)
    if loop.restored is not None:
        run.load_state_dict(loop.restored)
    completed = False
    try:
        for _ in range(loop.next_round, sc.rounds + 1):
            record, walls, values = run.round(loop.cum_bytes)
            loop.emit(record, walls, values, state=run.state_dict)
        completed = True
    finally:
        summary = loop.finish(run.summary(), model=(
            run.pop.model, run.final_params(), run.buffers) if completed else None)
    return RunResult(run_dir=Path(run_dir), summary=summary, final_params=run.final_params(),
                     final_buffers=None if run.buffers is None else run.buffers.cpu())


class CodedRun:
    """The state of one coded run; ``round()`` plays the next round.

    Built from a scenario: data, the model and loss (``build_population``), the scheme
    (``algorithm.coding``), the delay profile (``network.delays``, stream ``network``), the
    pieces of the training set (stream ``partition``) and the models.
    """

    def __init__(self, sc: Scenario, base_dir: Path, data: FederatedData | None = None,
                 model=None, metrics: Mapping[str, Callable] | None = None,
                 loss: Callable | None = None):
        from fedsim.coding.gradients import PieceGradients
        from fedsim.coding.spec import build_delays, coding_spec, delay_spec
        from fedsim.coding.training import CodedLoop, cut_pieces
        from fedsim.data import load_federated
        from fedsim.population.flat import FlatSpec

        self.sc = sc
        self.label = sc.name
        self.device = resolve_device(sc.device)
        configure_threads(self.device)
        n = sc.data.num_clients
        if data is None:
            data = load_federated(sc.data, sc.seed, base_dir)
        elif len(data.client_indices) != n:
            raise ScenarioError("data.num_clients", f"is {n} but the given data has "
                                f"{len(data.client_indices)} clients (the workers)")
        self.spec = coding_spec(sc.algorithm.coding, n, sc.rounds)
        self.pop, _, _ = build_population(sc, data, self.device, model, base_dir, loss)
        self.user_metrics = UserMetrics(self.pop, check_metrics(metrics))
        self.buffers = self.pop.flat_buffers() if self.pop.d_buffers else None
        dt = torch.float64
        self.module = copy.deepcopy(self.pop.model).to(dt).eval()  # gradients: eval mode
        self.flat = FlatSpec(self.module)
        self.named_buffers = {k: v for k, v in self.module.named_buffers()}
        self.loss = self.pop.loss
        dev = self.device
        self.x = torch.as_tensor(data.x_train, device=dev, dtype=dt)
        self.y = torch.as_tensor(data.y_train, device=dev, dtype=torch.long)
        self.x_test = torch.as_tensor(data.x_test, device=dev, dtype=dt)
        self.y_test = torch.as_tensor(data.y_test, device=dev, dtype=torch.long)
        self.n, self.d = n, self.pop.d
        scheme = self.spec.build(sc.seed)
        delays = build_delays(delay_spec(sc.network.delays), n, scheme.rounds, scheme.load,
                              numpy_rng(sc.seed, "network"), base_dir)
        self.pieces = len(scheme.fractions)
        self.piece_of = torch.as_tensor(cut_pieces(scheme.fractions, len(self.x),
                                                   numpy_rng(sc.seed, "partition")),
                                        device=dev)
        theta0 = self.pop.flat_params().to(dev, dt)
        from fedsim.losses import cross_entropy

        # fedsim's own cross-entropy as None: the population keeps its fused engine for it
        self.piece_grads = PieceGradients(
            self.module, self.x, self.y, self.piece_of, self.pieces,
            loss=None if self.loss is cross_entropy else self.loss, device=dev, dtype=dt)
        self.loop = CodedLoop(scheme, delays, [theta0.clone() for _ in range(self.spec.models)],
                              self.piece_grads, sc.algorithm.lr, self.spec.mu)
        self.diverged_round: int | None = None
        self.final_metrics: dict[str, float] = {}
        self.max_grad_error = 0.0

    # ------------------------------------------------------------------ tensors
    def _params(self, theta: Tensor) -> dict[str, Tensor]:
        return {**dict(zip(self.flat.names, self.flat.unflatten(theta), strict=True)),
                **self.named_buffers}

    @torch.no_grad()
    def _evaluate(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[float, float]:
        params = self._params(theta)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), 4096):
            logits = functional_call(self.module, params, (x[start:start + 4096],))
            loss_sum += float(self.loss(logits, y[start:start + 4096]).sum())
            correct += int((logits.argmax(dim=1) == y[start:start + 4096]).sum())
        return loss_sum / len(x), correct / len(x)

    # ------------------------------------------------------------------ rounds
    def round(self, cum_bytes: int) -> tuple[RoundRecord, dict, dict]:
        """Play the next round: ``(record, wall times, the scheme's and user metrics)``."""
        from fedsim.divergence import check_finite

        sc = self.sc
        t0 = time.perf_counter()
        row = self.loop.play()
        train_wall = time.perf_counter() - t0
        rnd = row["round"]
        thetas = self.loop.thetas
        self.diverged_round = check_finite(
            torch.stack(thetas), rnd, self.diverged_round,
            f"{self.label}: a model has non-finite values at round {rnd} (diverged; try a "
            "smaller algorithm.lr)")
        if not math.isnan(row["grad_error"]):
            self.max_grad_error = max(self.max_grad_error, row["grad_error"])
        t0 = time.perf_counter()
        train_loss = test_loss = test_acc = None
        user: dict[str, float] = {}
        if rnd % sc.eval_every == 0 or rnd == sc.rounds:
            train_loss = float(np.mean([self._evaluate(th, self.x, self.y)[0] for th in thetas]))
            tests = [self._evaluate(th, self.x_test, self.y_test) for th in thetas]
            test_loss = float(np.mean([t[0] for t in tests]))
            test_acc = float(np.mean([t[1] for t in tests]))
            if self.user_metrics.metrics:
                each = [self.user_metrics(th, self.buffers, self.x_test, self.y_test)
                        for th in thetas]
                user = {k: float(np.mean([e[k] for e in each])) for k in each[0]}
                self.final_metrics = user
        eval_wall = time.perf_counter() - t0
        up = 4 * self.d * row["arrived"]
        down = 4 * self.d * self.n if row["new_job"] else 0
        record = RoundRecord(
            round=rnd, sim_time_s=row["sim_time_s"], round_time_s=row["duration_s"],
            bytes_up=up, bytes_down=down, cum_bytes=cum_bytes + up + down, selected=self.n,
            participants=self.n - row["stragglers"], stragglers=row["stragglers"], dropped=0,
            train_loss=train_loss, test_loss=test_loss, test_accuracy=test_acc)
        values = {"waited": int(row["waited"]), "waits": row["waits"], "slow": row["slow"],
                  "decoded": row["decoded"], "jobs_done": row["jobs_done"],
                  "steps": row["steps"],
                  "cond": None if math.isnan(row["cond"]) else row["cond"],
                  "grad_error": None if math.isnan(row["grad_error"]) else row["grad_error"],
                  "load": row["load"], **user}
        return record, {"train_wall_s": train_wall, "eval_wall_s": eval_wall}, values

    def final_params(self) -> Tensor:
        """Model 0's parameters (the most gradient steps), on CPU, in the model's dtype."""
        return self.loop.thetas[0].detach().to("cpu", self.pop.flat_params().dtype)

    def state_dict(self) -> dict:
        """Everything that changes from round to round (``checkpoint.pt``'s ``run``)."""
        return {"loop": self.loop.state_dict(),
                "counters": {"diverged_round": self.diverged_round,
                             "final_metrics": self.final_metrics,
                             "max_grad_error": self.max_grad_error}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``'s output."""
        self.loop.load_state_dict(state["loop"])
        for name, value in state["counters"].items():
            setattr(self, name, value)

    def summary(self) -> dict:
        """Run facts for summary.json beyond the metrics."""
        sp, loop = self.spec, self.loop
        out = {"name": self.sc.name, "device": self.device, "num_params": self.d,
               "workers": self.n, "gradient_engine": self.piece_grads.engine,
               "scheme": sp.scheme, "delay_T": sp.T, "jobs": sp.jobs,
               "models": sp.models, "load": loop.scheme.load, "waits": loop.waits,
               "jobs_done": loop.done, "gradient_steps": loop.steps,
               "max_grad_error": self.max_grad_error, "diverged_round": self.diverged_round}
        if sp.scheme in ("gc", "ignore-stragglers"):
            out["s"] = sp.s
        if sp.scheme in ("gc", "sr-sgc", "m-sgc"):
            out["code"] = sp.code
        if sp.scheme in ("sr-sgc", "m-sgc"):
            out.update(B=sp.B, W=sp.W, lam=sp.lam)
        if sp.scheme == "sr-sgc":
            out["s"] = int(loop.scheme.s)
        if self.user_metrics.metrics:
            out["final_metrics"] = self.final_metrics
        return out
