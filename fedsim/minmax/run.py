"""The min-max driver: a task, a method, a graph -> metric rows against time and bytes.

``run_minmax`` plays ``iterations`` iterations of a method (:mod:`fedsim.minmax.methods`)
on a task (:mod:`fedsim.minmax.games`, :mod:`fedsim.minmax.gan`), timing every iteration
with the decentralized clock (:mod:`fedsim.minmax.timing`), and returns one row per
evaluation with:

* ``iteration``, ``time_s`` (simulated), ``bytes`` (cumulative, all links),
  ``grad_evals`` (evaluations of ``F_i`` per node so far), ``method``, ``task``;
* ``dist_to_nash`` ``||x_bar - x*||`` and ``dist_to_nash_max`` ``max_i ||x_i - x*||``
  (tasks with a known equilibrium);
* ``grad_norm`` ``||F(x_bar)||`` of the network operator at the average;
* ``consensus`` ``sqrt((1/n) sum_i ||x_i - x_bar||^2)``;
* the task's own metrics at ``x_bar`` (a GAN: modes covered, high-quality fraction);
* ``diverged``: True on the last row when the states left ``divergence`` (then it stops).

References:
    Barazandeh, Huang, Michailidis (arXiv 2106.06075); Liu et al. (NeurIPS 2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import networkx as nx
import torch
from torch import Tensor

from fedsim.config import NetworkConfig
from fedsim.errors import ScenarioError
from fedsim.minmax.methods import Method, mixing_matrix
from fedsim.minmax.operator import MinMaxTask, Operator
from fedsim.minmax.registry import make_method
from fedsim.minmax.timing import GossipClock, ServerClock
from fedsim.seeding import torch_generator

TASKS = ("bilinear", "quadratic", "gaussians", "digits")


def make_task(name: str, num_nodes: int, seed: int = 0, **params: Any) -> MinMaxTask:
    """A task by name: ``"bilinear"``, ``"quadratic"``, ``"gaussians"`` or ``"digits"``.

    Args:
        name: the task.
        num_nodes: one node per graph node.
        seed: the root seed.
        **params: the task builder's own arguments (``dim``, ``heterogeneity``, ...).

    Returns:
        The task.

    Raises:
        ScenarioError: ``task.name`` unknown, or ``task.<param>`` not taken / bad.

    References:
        See :mod:`fedsim.minmax.games` and :mod:`fedsim.minmax.gan`.
    """
    import inspect

    from fedsim.minmax.games import bilinear_game, quadratic_game
    from fedsim.minmax.gan import digits_gan, gaussian_mixture_gan

    builders = {"bilinear": bilinear_game, "quadratic": quadratic_game,
                "gaussians": gaussian_mixture_gan, "digits": digits_gan}
    if name not in builders:
        raise ScenarioError("task.name", f"unknown min-max task {name!r}; allowed: "
                            f"{', '.join(TASKS)}")
    allowed = [p for p in inspect.signature(builders[name]).parameters
               if p not in ("num_nodes", "seed")]
    for key in params:
        if key not in allowed:
            raise ScenarioError(f"task.{key}", f"not a parameter of {name}; allowed: "
                                f"{', '.join(allowed)}")
    return builders[name](num_nodes=num_nodes, seed=seed, **params)


def _row(task: MinMaxTask, op: Operator, X: Tensor, extra: dict) -> dict:
    xbar = X.mean(dim=0)
    row = dict(extra)
    if task.nash is not None:
        nash = task.nash.to(X.dtype)
        row["dist_to_nash"] = float((xbar - nash).norm())
        row["dist_to_nash_max"] = float((X - nash).norm(dim=1).max())
    row["grad_norm"] = float(op.mean(xbar).norm())
    row["consensus"] = float(((X - xbar) ** 2).sum(dim=1).mean().sqrt())
    if task.evaluate is not None:
        row.update(task.evaluate(xbar))
    return row



def run_minmax(task: MinMaxTask, method: Method | str, graph: nx.Graph, iterations: int,
               seed: int = 0, *, network: NetworkConfig | None = None, eval_every: int = 1,
               nbytes: int | None = None, divergence: float = 1e8,
               method_params: dict | None = None,
               on_end: Callable[[Tensor], None] | None = None) -> list[dict]:
    """Play a min-max method on a task over a graph; metric rows vs time and bytes.

    Args:
        task: the problem (``task.num_nodes`` must equal the graph's node count).
        method: a method object, or a name for :func:`~fedsim.minmax.registry.make_method`.
        graph: connected undirected graph, nodes ``0..n-1`` (server methods use only ``n``,
            and need no edges).
        iterations: iterations to play (>= 0).
        seed: root seed (minibatches and oracle noise: stream ``minmax/oracle``; compute
            times: ``network/compute``).
        network: link defaults and compute model (None: ``NetworkConfig()``).
        eval_every: a row every this many iterations (and after the last).
        nbytes: one state on the wire (None: ``4 d``, float32); a message carries
            ``method.message_states`` of them (gradient tracking: x and its trackers).
        divergence: stop (``diverged = True``) when a state's norm exceeds this.
        method_params: parameters when ``method`` is a name.
        on_end: called with the final ``[n, d]`` states (e.g. to draw a GAN's samples).

    Returns:
        One dict per evaluation (see the module docstring), the first at iteration 0.

    Raises:
        ScenarioError: a disconnected graph, a node-count mismatch, bad method settings,
            ``iterations`` / ``eval_every`` out of range.

    References:
        Barazandeh, Huang, Michailidis (arXiv 2106.06075); Liu et al. (NeurIPS 2020).
    """
    if isinstance(method, str):
        method = make_method(method, **(method_params or {}))
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ScenarioError("rounds", f"must be an integer >= 0, got {iterations!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ScenarioError("eval_every", f"must be an integer >= 1, got {eval_every!r}")
    n = task.num_nodes
    if graph.number_of_nodes() != n:
        raise ScenarioError("network.topology", f"the graph has {graph.number_of_nodes()} "
                            f"nodes but the task has {n} (one node per graph node)")
    # a server averages: the graph only names the nodes (it may be any graph)
    W = torch.eye(n, dtype=task.dtype) if method.server else mixing_matrix(graph, task.dtype)
    op = Operator(task, torch_generator(seed, "minmax/oracle"))
    clock = (ServerClock(n, network, seed) if method.server
             else GossipClock(graph, network, seed))
    nbytes = 4 * task.dim if nbytes is None else int(nbytes)
    nbytes *= getattr(method, "message_states", 1)  # gradient tracking sends its trackers
    X = task.initial_states()
    state = method.init(X)
    base = {"method": method.name, "task": task.name}
    sent = 0
    rows = [_row(task, op, X, {**base, "iteration": 0, "time_s": 0.0, "bytes": 0,
                               "grad_evals": 0})]
    with torch.no_grad():
        for it in range(1, iterations + 1):
            before = op.calls
            X = method.step(X, state, op, W)
            work = (op.calls - before) * task.samples_per_call
            cost = clock.iteration(it, float(work), method.comm_rounds, nbytes)
            sent += cost.bytes_sent
            norm = float(X.abs().max())
            bad = not math.isfinite(norm) or norm > divergence
            if bad or it % eval_every == 0 or it == iterations:
                extra = {**base, "iteration": it, "time_s": cost.end_s, "bytes": sent,
                         "grad_evals": op.calls}
                if bad:
                    rows.append({**extra, "diverged": True})
                    break
                rows.append(_row(task, op, X, extra))
    if on_end is not None:
        on_end(X)
    return rows
