"""Synchronous distributed SGD with gradient coding: real torch gradients, simulated clock.

The master trains a small model on the digits data set with full-batch gradient descent:
every *job* is one full gradient, cut into the scheme's pieces (shards of the training
set whose gradients sum to the full gradient). Per round (:func:`run_coded`):

1. the scheme assigns tasks (:mod:`fedsim.coding.sequential`); a job starting this round
   has its per-piece gradients ``G [P, d]`` computed at its model's current parameters,
   batched over the pieces through fedsim's population engine
   (:class:`fedsim.coding.gradients.PieceGradients`: the pieces are the cohort's
   clients, one full-batch SGD step of ``lr = 1`` each);
2. the clock (delay profile, ``mu`` rule, the scheme's straggler model) says who straggled
   and how long the round lasted;
3. the messages of all the round's tasks are one matrix product ``E @ G_r``
   (:meth:`CodedLoop.encode`): ``E`` the round's encoding matrix built from the scheme's
   task list (:class:`~fedsim.coding.sequential.RoundEncoding`; for gradient coding the
   code's ``B [n x n]``, for SR-SGC / M-SGC the coefficients of whatever tasks are
   scheduled over the pieces of the jobs in flight), ``G_r`` those jobs' piece gradients
   stacked; the master keeps the rows that arrived, and every job that became decodable
   is decoded as ``a^T (B_F G)`` (``a`` solved from the rows ``F`` it uses, which for a
   sequential scheme may come from several rounds) and applied as one gradient step of
   its model.

Sequential schemes (``T > 0``) need job ``t``'s gradient before its model's next job
starts, so ``models >= T + 1`` models are trained concurrently, round robin (job ``t``
belongs to model ``(t - 1) mod models``), as in the experiments of Krishnan et al.
(2023); each model still follows full-batch gradient descent exactly, step for step,
whenever the decode is exact (every coded scheme; the ignore-stragglers baseline is not).

Loss is the mean cross entropy over the training set (the full gradient is its gradient).
Everything runs in float64 by default so decoded and direct gradients agree to ~1e-12.

References:
    Tandon et al., "Gradient Coding" (ICML 2017); Krishnan, Ebrahimi, Khisti, "Sequential
    Gradient Coding for Straggler Mitigation" (ICLR 2023).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import grad

from fedsim.coding import make_scheme
from fedsim.coding.gradients import PieceGradients
from fedsim.coding.sequential import RoundEncoding, Scheme, Task
from fedsim.errors import ScenarioError
from fedsim.network.stragglers import gilbert_elliott_delays, load_linear
from fedsim.seeding import numpy_rng, torch_generator

MODELS = ("logreg", "mlp")
DENSE_ENTRIES = 2**20  # a round's encoding matrix up to this size is multiplied dense


def _shapes(model: str, dim: int, classes: int, hidden: int) -> list[tuple[int, ...]]:
    if model == "logreg":
        return [(classes, dim), (classes,)]
    if model == "mlp":
        return [(hidden, dim), (hidden,), (classes, hidden), (classes,)]
    raise ScenarioError("model.name", f"must be one of {', '.join(MODELS)}; got {model!r}")


def make_forward(model: str, dim: int, classes: int, hidden: int = 32
                 ) -> tuple[Callable, int]:
    """``forward(theta [d], x [b, dim]) -> logits [b, classes]`` on a flat parameter vector.

    Args:
        model: ``"logreg"`` (multinomial logistic regression) or ``"mlp"`` (one tanh
            hidden layer of ``hidden`` units).
        dim: input features.
        classes: labels.
        hidden: the MLP's width.

    Returns:
        ``(forward, d)``.
    """
    shapes = _shapes(model, dim, classes, hidden)
    sizes = [math.prod(s) for s in shapes]
    bounds = np.cumsum([0, *sizes])

    def unflat(theta):
        return [theta[bounds[k]:bounds[k + 1]].reshape(shapes[k]) for k in range(len(shapes))]

    def forward(theta, x):
        p = unflat(theta)
        if model == "logreg":
            return x @ p[0].T + p[1]
        h = torch.tanh(x @ p[0].T + p[1])
        return h @ p[2].T + p[3]

    return forward, int(bounds[-1])


def make_module(model: str, dim: int, classes: int, hidden: int = 32) -> nn.Module:
    """The ``torch.nn`` module of :func:`make_forward`'s model, with the same flat layout
    (``parameters_to_vector`` order: weight then bias, layer by layer): ``logreg`` is a
    ``Linear``, ``mlp`` ``Linear -> Tanh -> Linear``."""
    _shapes(model, dim, classes, hidden)  # validates the name
    if model == "logreg":
        return nn.Linear(dim, classes)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def cut_pieces(fractions: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``[N]`` the piece of every sample: a random permutation cut by the fractions.

    Piece ``p`` gets ``round(N * cumsum(fractions)[p]) - round(N * cumsum(fractions)[p-1])``
    samples (possibly 0 when pieces outnumber samples: its gradient is then 0).
    """
    bounds = np.rint(np.concatenate([[0.0], np.cumsum(fractions)]) * samples).astype(int)
    bounds[-1] = samples
    piece_of = np.empty(samples, dtype=np.int64)
    perm = rng.permutation(samples)
    for p in range(len(fractions)):
        piece_of[perm[bounds[p]:bounds[p + 1]]] = p
    return piece_of


def _digits(seed: int, samples: int | None):
    from fedsim.data import load_digits

    raw = load_digits(0.2, numpy_rng(seed, "data"))
    x, y = raw.x_train.reshape(len(raw.x_train), -1), raw.y_train
    if samples is not None:
        x, y = x[:samples], y[:samples]
    return x, y, raw.x_test.reshape(len(raw.x_test), -1), raw.y_test, raw.num_classes


def run_coded(scheme: str | Scheme, n: int = 8, *, s: int | None = None,
              B: int | None = None, W: int | None = None, lam: int | None = None,
              code: str = "crc", jobs: int = 30, delays: np.ndarray | None = None,
              mu: float = 1.0, seconds_per_gradient: float = 2.2, model: str = "logreg",
              hidden: int = 32, lr: float = 0.5, models: int | None = None, seed: int = 0,
              samples: int | None = None, eval_every: int = 1, record_params: bool = False,
              dtype: torch.dtype = torch.float64) -> list[dict]:
    """Train with a straggler-mitigation scheme on the simulated clock; one row per round.

    Args:
        scheme: a name of :data:`fedsim.coding.SCHEMES` (built with ``n, s, B, W, lam,
            code, jobs, seed``) or a built :class:`~fedsim.coding.sequential.Scheme`.
        n: workers.
        s, B, W, lam, code: the scheme's parameters (see :func:`fedsim.coding.make_scheme`).
        jobs: full gradients to compute (the run has ``jobs + T`` rounds).
        delays: ``[n, >= jobs + T]`` worker delays in seconds; default: a bursty
            Gilbert-Elliott profile (stream ``network``) made load-linear,
            ``base + load * seconds_per_gradient``.
        mu: straggler tolerance (a worker straggles when slower than ``(1 + mu) * min``).
        seconds_per_gradient: a worker's time for a gradient over the whole data set
            (used by the default delays only).
        model: ``"logreg"`` or ``"mlp"``.
        hidden: the MLP's width.
        lr: the gradient step.
        models: models trained concurrently, round robin over the jobs (default and
            minimum: ``T + 1``).
        seed: root seed (streams ``data``, ``partition``, ``network``, ``model/<m>``; CRC's
            matrix uses ``seed`` itself).
        samples: use only the first ``samples`` training samples (None: all 1437).
        eval_every: evaluate loss and accuracy every this many rounds (and at the last).
        record_params: add ``params`` (a list of ``[d]`` numpy arrays, one per model) to
            every row (for tests).
        dtype: the tensors' dtype.

    Returns:
        One dict per round: ``round``, ``sim_time_s``, ``duration_s``, ``waited``,
        ``waits`` (cumulative), ``stragglers``, ``decoded`` (jobs decoded this round),
        ``jobs_done``, ``steps`` (gradient steps taken, all models), ``cond`` (the largest
        decode condition number this round, NaN if no decode), ``grad_error`` (the largest
        relative error of a decoded gradient vs the direct sum of the piece gradients,
        NaN if none), ``load`` (the scheme's normalized load), ``loss`` (mean training
        loss over the models) and ``accuracy`` (mean test accuracy), NaN between
        evaluations.

    Raises:
        ScenarioError: bad parameters, ``models < T + 1`` or a delay array of the wrong
            shape.
    """
    sch = scheme if isinstance(scheme, Scheme) else make_scheme(
        scheme, n, jobs, s=s, B=B, W=W, lam=lam, code=code, seed=seed)
    n, rounds = sch.n, sch.rounds
    m_count = sch.T + 1 if models is None else models
    if not isinstance(m_count, int) or m_count < sch.T + 1:
        raise ScenarioError("algorithm.coding.models", f"must be an integer >= T + 1 = "
                                                       f"{sch.T + 1}, got {models!r}")
    if delays is None:
        base = gilbert_elliott_delays(n, rounds, numpy_rng(seed, "network"))
        delays = load_linear(base, sch.load, seconds_per_gradient)
    delays = np.asarray(delays, dtype=float)
    if delays.ndim != 2 or delays.shape[0] != n or delays.shape[1] < rounds:
        raise ScenarioError("network.delays", f"need a [{n}, >= {rounds}] delay array "
                                              f"(workers x rounds), got {delays.shape}")
    x_np, y_np, xt_np, yt_np, classes = _digits(seed, samples)
    x, y = torch.as_tensor(x_np, dtype=dtype), torch.as_tensor(y_np)
    xt, yt = torch.as_tensor(xt_np, dtype=dtype), torch.as_tensor(yt_np)
    piece_of = torch.as_tensor(cut_pieces(sch.fractions, len(x), numpy_rng(seed, "partition")))
    forward, d = make_forward(model, x.shape[1], classes, hidden)
    thetas = [0.1 * torch.randn(d, generator=torch_generator(seed, f"model/{m}"),
                                dtype=torch.float64).to(dtype) for m in range(m_count)]
    grads = PieceGradients(make_module(model, x.shape[1], classes, hidden), x, y, piece_of,
                           len(sch.fractions), dtype=dtype)
    loop = CodedLoop(sch, delays, thetas, grads, lr, mu)
    rows = []
    for r in range(1, rounds + 1):
        row = loop.play()
        row = {k: row[k] for k in ("round", "sim_time_s", "duration_s", "waited", "waits",
                                   "stragglers", "decoded", "jobs_done", "steps", "cond",
                                   "grad_error", "load")}
        row["loss"], row["accuracy"] = float("nan"), float("nan")
        if r % eval_every == 0 or r == rounds:
            with torch.no_grad():
                losses = [float(torch.nn.functional.cross_entropy(forward(th, x), y))
                          for th in loop.thetas]
                accs = [float((forward(th, xt).argmax(1) == yt).double().mean())
                        for th in loop.thetas]
            row["loss"], row["accuracy"] = float(np.mean(losses)), float(np.mean(accs))
        if record_params:
            row["params"] = [th.detach().cpu().numpy().copy() for th in loop.thetas]
        rows.append(row)
    return rows


class CodedLoop:
    """The master's round loop of a scheme with real tensors: assign, clock, receive.

    One :meth:`play` per round ``r = 1, 2, ..., J + T``:

    1. ``scheme.assign(r)``; a job starting this round (``r <= J``) has its piece
       gradients ``G [P, d]`` computed (``piece_grads(theta)``) at the parameters of its
       model (``(r - 1) mod models``);
    2. ``scheme.clock(delays[:, r - 1], mu)``: who straggled, how long the round lasted;
    3. ``scheme.receive(r, stragglers)``; the round's messages are one product ``E @ G_r``
       (:meth:`encode`), the rows of the workers that arrived are kept, and every
       decodable job is decoded, ``a^T (B_F G)`` (``sum_k a_k message_k`` over the rows
       ``F`` its decode uses), and applied as one step ``theta -= lr * g`` of its model.

    Everything that changes from round to round is in :meth:`state_dict` (the scheme's
    state machine itself, the models, the gradients and messages in flight, the clock's
    time and counters), so a run continued from it plays exactly as one never stopped.

    Args:
        scheme: a fresh :class:`~fedsim.coding.sequential.Scheme`.
        delays: ``[n, >= J + T]`` worker delays in seconds.
        thetas: ``[d]`` parameters of each model (``>= T + 1`` of them).
        piece_grads: ``theta [d] -> [P, d]``, row ``p`` the gradient of piece ``p``'s share
            of the loss (the rows sum to the full gradient).
        lr: the gradient step.
        mu: the straggler tolerance.
    """

    def __init__(self, scheme: Scheme, delays: np.ndarray, thetas: list[torch.Tensor],
                 piece_grads: Callable[[torch.Tensor], torch.Tensor], lr: float,
                 mu: float = 1.0):
        self.scheme = scheme
        self.delays = np.asarray(delays, dtype=float)
        self.thetas = list(thetas)
        self.piece_grads = piece_grads
        self.lr, self.mu = float(lr), float(mu)
        self.grads: dict[int, torch.Tensor] = {}      # job -> [P, d]
        self.messages: dict[tuple, torch.Tensor] = {}  # task key -> message
        self.job_keys: dict[int, list[tuple]] = {}
        self.round, self.now, self.waits, self.done, self.steps = 0, 0.0, 0, 0, 0

    def encode(self, tasks: list[Task]) -> tuple[RoundEncoding, torch.Tensor | None]:
        """All of a round's messages as one product: ``(E, E @ G_r)``.

        ``E`` (:meth:`Scheme.encoding <fedsim.coding.sequential.Scheme.encoding>`) is the
        ``[tasks, J_r P]`` encoding matrix of the round's tasks over the pieces of the jobs
        ``E.jobs`` they touch, ``G_r = [G(jobs[0]); G(jobs[1]); ...]`` ``[J_r P, d]`` those
        jobs' piece gradients; row ``k`` of the product is task ``k``'s message ``sum_p
        coeffs_p G(job)[p]``. Gradient coding: ``E = B``, ``G_r = G``, the messages ``B @ G``.
        Up to :data:`DENSE_ENTRIES` entries ``E`` is multiplied as a dense matrix, above as
        a sparse COO tensor (the same product; its cost grows with the non-zeros, at most
        ``s + 1`` per row, not with ``tasks x J_r P``).

        Args:
            tasks: the round's tasks (``scheme.assign(r)``); their jobs' ``G`` must be
                in ``self.grads``.

        Returns:
            ``(RoundEncoding, [tasks, d] messages)``; messages None when there is no task.
        """
        enc = self.scheme.encoding(tasks)
        if not tasks:
            return enc, None
        parts = [self.grads[int(j)] for j in enc.jobs]
        g = parts[0] if len(parts) == 1 else torch.cat(parts)
        if enc.shape[0] * enc.shape[1] <= DENSE_ENTRIES:
            return enc, g.new_tensor(enc.dense()) @ g
        index = torch.as_tensor(np.stack([enc.rows, enc.cols]), device=g.device)
        e = torch.sparse_coo_tensor(index, g.new_tensor(enc.values), enc.shape,
                                    check_invariants=False)  # built valid here
        return enc, torch.sparse.mm(e, g)

    def play(self) -> dict:
        """Play the next round; its row: ``round``, ``sim_time_s``, ``duration_s``,
        ``waited``, ``waits`` (so far), ``stragglers`` (accepted), ``slow`` (slower than
        ``(1 + mu) min``), ``decoded`` (jobs decoded this round), ``jobs_done``, ``steps``,
        ``cond`` and ``grad_error`` (largest over this round's decodes, NaN if none),
        ``load``, ``tasks`` (tasks assigned), ``arrived`` (tasks whose result arrived),
        ``new_job`` (a job started this round)."""
        sch, r = self.scheme, self.round + 1
        m_count = len(self.thetas)
        tasks = sch.assign(r)
        new_job = r <= sch.jobs
        if new_job:
            self.grads[r] = self.piece_grads(self.thetas[(r - 1) % m_count])
        clk = sch.clock(self.delays[:, r - 1], self.mu)
        decodes = sch.receive(r, clk.stragglers)
        _, messages = self.encode(tasks)  # [tasks, d]: E @ G_r, every worker's message
        got = [k for k, t in enumerate(tasks) if not clk.stragglers[t.worker]]
        if got:  # the rows that reached the master
            for k, row in zip(got, messages[got].unbind(0), strict=True):
                self.messages[tasks[k].key] = row
                self.job_keys.setdefault(tasks[k].job, []).append(tasks[k].key)
        arrived = len(got)
        cond, err = float("nan"), float("nan")
        for dec in decodes:
            rows_f = torch.stack([self.messages[t.key] for t in dec.tasks])  # B_F G
            g_dec = rows_f.new_tensor(dec.weights) @ rows_f                   # a^T (B_F G)
            full = self.grads[dec.job].sum(dim=0)
            rel = float((g_dec - full).norm() / full.norm().clamp_min(1e-300))
            err = rel if math.isnan(err) else max(err, rel)
            cond = dec.cond if math.isnan(cond) else max(cond, dec.cond)
            m = (dec.job - 1) % m_count
            self.thetas[m] = self.thetas[m] - self.lr * g_dec
            self.steps += 1
            for key in self.job_keys.pop(dec.job, []):
                self.messages.pop(key, None)
            del self.grads[dec.job]
        self.round = r
        self.now += clk.duration_s
        self.waits += int(clk.waited)
        self.done += len(decodes)
        slow = int((self.delays[:, r - 1] > (1.0 + self.mu) * self.delays[:, r - 1].min()).sum())
        return {"round": r, "sim_time_s": self.now, "duration_s": clk.duration_s,
                "waited": clk.waited, "waits": self.waits,
                "stragglers": int(clk.stragglers.sum()), "slow": slow,
                "decoded": len(decodes), "jobs_done": self.done, "steps": self.steps,
                "cond": cond, "grad_error": err, "load": sch.load, "tasks": len(tasks),
                "arrived": arrived, "new_job": new_job}

    def state_dict(self) -> dict:
        """Everything :meth:`play` changes (the scheme's state machine included)."""
        return {"scheme": self.scheme, "thetas": self.thetas, "grads": self.grads,
                "messages": self.messages, "job_keys": self.job_keys,
                "counters": (self.round, self.now, self.waits, self.done, self.steps)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s output."""
        self.scheme, self.thetas = state["scheme"], list(state["thetas"])
        self.grads, self.messages = dict(state["grads"]), dict(state["messages"])
        self.job_keys = {k: list(v) for k, v in state["job_keys"].items()}
        self.round, self.now, self.waits, self.done, self.steps = state["counters"]


def full_batch_gd(steps: int, *, model: str = "logreg", hidden: int = 32, lr: float = 0.5,
                  seed: int = 0, model_index: int = 0, samples: int | None = None,
                  dtype: torch.dtype = torch.float64) -> list[np.ndarray]:
    """Plain full-batch gradient descent from the same initialization as :func:`run_coded`'s
    model ``model_index``: the parameters after 0, 1, ..., ``steps`` steps (the reference
    the coded runs must reproduce)."""
    x_np, y_np, _, _, classes = _digits(seed, samples)
    x, y = torch.as_tensor(x_np, dtype=dtype), torch.as_tensor(y_np)
    forward, d = make_forward(model, x.shape[1], classes, hidden)
    theta = 0.1 * torch.randn(d, generator=torch_generator(seed, f"model/{model_index}"),
                              dtype=torch.float64).to(dtype)
    out = [theta.numpy().copy()]
    for _ in range(steps):
        g = grad(lambda th: torch.nn.functional.cross_entropy(forward(th, x), y))(theta)
        theta = theta - lr * g
        out.append(theta.numpy().copy())
    return out
