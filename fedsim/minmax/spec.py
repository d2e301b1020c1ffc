"""The scenario table of a min-max run: ``[algorithm.minmax]``, checked here.

``algorithm.name = "minmax"`` plays a decentralized min-max method on a game or a GAN
(:mod:`fedsim.runs.minmax`). Its parameters are one table, each error one
:class:`~fedsim.errors.ScenarioError` naming the dotted key:

.. code-block:: toml

    [algorithm]
    name = "minmax"

    [algorithm.minmax]
    method = "dadam3"     # dadam3 | dposg | gda | extragradient | gt_extragradient |
                          # gt_gda | adam_server | optimistic_adam_server |
                          # extra_adam_server | adaptive
    lr = 0.2              # and the method's own parameters (beta1, beta2, beta3, eps,
                          # gossip_steps, preconditioner, lookahead, mix, bias_correction)

    [algorithm.minmax.task]
    name = "bilinear"     # bilinear | quadratic | gaussians | digits
    dim = 5               # and the task builder's own parameters

The graph is the scenario's ``[network]`` topology (one node per graph node), timed by
its ``bandwidth_bps`` / ``latency_s`` / ``compute`` (:mod:`fedsim.minmax.timing`); the run
plays ``rounds`` iterations and evaluates every ``eval_every``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsim.errors import ScenarioError

MINMAX_KEY = "algorithm.minmax"
TASK_KEY = f"{MINMAX_KEY}.task"


@dataclass(frozen=True)
class MinMaxSpec:
    """``[algorithm.minmax]``, checked: the method and the task with their parameters."""

    method: str
    method_params: dict = field(default_factory=dict)
    task: str = "bilinear"
    task_params: dict = field(default_factory=dict)


def _rekey(err: ScenarioError, old: str, new: str) -> ScenarioError:
    """The same error with its key's ``old`` prefix replaced by ``new``."""
    key = err.key
    if key == old or key.startswith(old + "."):
        key = new + key[len(old):]
    return ScenarioError(key, err.message)


def minmax_spec(table: Any) -> MinMaxSpec:
    """``[algorithm.minmax]`` checked for its shape (names and parameter names).

    Raises:
        ScenarioError: ``algorithm.minmax`` (not a table), ``algorithm.minmax.method``
            (missing or unknown), ``algorithm.minmax.<param>`` (not a parameter of the
            method), ``algorithm.minmax.task`` / ``.task.name`` / ``.task.<param>``.
    """
    from fedsim.minmax.registry import METHODS, _allowed_params
    from fedsim.minmax.run import TASKS

    if not isinstance(table, dict):
        raise ScenarioError(MINMAX_KEY, f"must be a table, got {type(table).__name__}")
    t = dict(table)
    method = t.pop("method", None)
    if method is None:
        raise ScenarioError(f"{MINMAX_KEY}.method", f"required; allowed: {', '.join(METHODS)}")
    if not isinstance(method, str) or method not in METHODS:
        raise ScenarioError(f"{MINMAX_KEY}.method", f"unknown min-max method {method!r}; "
                                                    f"allowed: {', '.join(METHODS)}")
    task = t.pop("task", {"name": "bilinear"})
    allowed = _allowed_params(method)
    for key in t:
        if key not in allowed:
            raise ScenarioError(f"{MINMAX_KEY}.{key}", f"not a parameter of {method}; "
                                                       f"allowed: method, task, "
                                                       f"{', '.join(allowed)}")
    if not isinstance(task, dict):
        raise ScenarioError(TASK_KEY, f"must be a table {{name = ..., ...}}, got "
                                      f"{type(task).__name__}")
    task = dict(task)
    name = task.pop("name", "bilinear")
    if not isinstance(name, str) or name not in TASKS:
        raise ScenarioError(f"{TASK_KEY}.name", f"unknown min-max task {name!r}; allowed: "
                                                f"{', '.join(TASKS)}")
    return MinMaxSpec(method, t, name, task)


def build_method(spec: MinMaxSpec):
    """The method object (``make_method``), its errors keyed ``algorithm.minmax.*``."""
    from fedsim.minmax.registry import make_method

    try:
        return make_method(spec.method, **spec.method_params)
    except ScenarioError as err:
        raise _rekey(err, "algorithm", MINMAX_KEY) from None
    except TypeError as err:  # pragma: no cover - a value of a type the method cannot take
        raise ScenarioError(MINMAX_KEY, str(err)) from None


def _task_path(params: dict, base_dir) -> dict:
    """``params`` with a relative ``path`` (the MNIST folder) taken against ``base_dir``."""
    from pathlib import Path

    path = params.get("path")
    if isinstance(path, str) and path and base_dir is not None:
        p = Path(path).expanduser()
        params = {**params, "path": str(p if p.is_absolute() else Path(base_dir) / p)}
    return params


def build_task(spec: MinMaxSpec, num_nodes: int, seed: int, base_dir=None):
    """The task (``make_task``), its errors keyed ``algorithm.minmax.task.*``.

    ``base_dir`` (the scenario file's folder) anchors a relative ``task.path``.
    """
    from fedsim.minmax.run import make_task

    params = _task_path(dict(spec.task_params), base_dir)
    if isinstance(params.get("sv_range"), list):  # TOML has arrays, the builder a tuple
        params["sv_range"] = tuple(params["sv_range"])
    try:
        return make_task(spec.task, num_nodes, seed, **params)
    except ScenarioError as err:
        raise _rekey(err, "task", TASK_KEY) from None
    except (TypeError, ValueError) as err:
        raise ScenarioError(TASK_KEY, f"{spec.task}: {err}") from None


def minmax_graph(sc, base_dir=None):
    """The scenario's graph (``network.topology``; 'star' is refused: min-max needs one)."""
    from fedsim.network.topology import resolve_topology
    from fedsim.scenario import topology_dirs

    n = sc.network
    if n.topology == "star":
        raise ScenarioError("network.topology", "minmax needs a graph (a builder such as "
                                                "ring or torus, or a topology file), not "
                                                "'star'")
    return resolve_topology(n.topology, n.topology_params, seed=sc.seed,
                            search_dirs=topology_dirs(base_dir))


def _check_image_files(params: dict) -> None:
    """``task.dataset`` / ``task.path`` of the digits GAN: MNIST's four files are there."""
    from fedsim.errors import DataError
    from fedsim.minmax.gan import IMAGE_DATASETS

    dataset, path = params.get("dataset", "digits"), params.get("path")
    if dataset not in IMAGE_DATASETS:
        raise ScenarioError(f"{TASK_KEY}.dataset", f"unknown dataset {dataset!r}; allowed: "
                                                   f"{', '.join(IMAGE_DATASETS)}")
    if dataset == "digits":
        if path is not None:
            raise ScenarioError(f"{TASK_KEY}.path", "only used with dataset = 'mnist'; "
                                                    "allowed: leave it out")
        return
    if not isinstance(path, str) or not path:
        raise ScenarioError(f"{TASK_KEY}.path", "required for dataset 'mnist': the folder "
                                                "of the standard MNIST IDX files")
    from fedsim.data.base import resolve_dir
    from fedsim.data.mnist import EXPECTED, FILES, find_file

    try:
        directory = resolve_dir(path, None, "MNIST", EXPECTED)
        for name in FILES.values():
            find_file(directory, name)
    except DataError as err:
        raise ScenarioError(f"{TASK_KEY}.path", str(err)) from None


def check_minmax(sc, base_dir=None) -> None:
    """The scenario validation of ``[algorithm.minmax]`` (``fedsim validate``).

    For ``algorithm.name = "minmax"``: the method is built (its values checked), the graph
    resolved and checked connected (server methods need only its node count), the task's
    parameters checked (the digits and gaussians tasks are not built: they train a
    classifier / draw data; their parameter names are checked; a digits GAN's MNIST files
    are looked for); no attack, no privacy. For any other algorithm the table must be empty.

    Raises:
        ScenarioError: naming the dotted key.
    """
    import inspect

    from fedsim.scenario import reject_attack_and_privacy

    a = sc.algorithm
    table = getattr(a, "minmax", {})
    if a.name != "minmax":
        if table:
            raise ScenarioError(MINMAX_KEY, f"only used with algorithm.name = 'minmax' (this "
                                            f"scenario's is {a.name!r}); allowed: leave it out")
        return
    spec = minmax_spec(table)
    method = build_method(spec)
    graph = minmax_graph(sc, base_dir)
    if not method.server:
        from fedsim.minmax.methods import mixing_matrix

        mixing_matrix(graph)  # connected and undirected
    if spec.task in ("bilinear", "quadratic"):
        build_task(spec, graph.number_of_nodes(), sc.seed)
    else:
        from fedsim.minmax.gan import digits_gan, gaussian_mixture_gan

        builder = {"gaussians": gaussian_mixture_gan, "digits": digits_gan}[spec.task]
        allowed = [p for p in inspect.signature(builder).parameters
                   if p not in ("num_nodes", "seed")]
        for key in spec.task_params:
            if key not in allowed:
                raise ScenarioError(f"{TASK_KEY}.{key}", f"not a parameter of {spec.task}; "
                                                         f"allowed: name, {', '.join(allowed)}")
        if spec.task == "digits":
            _check_image_files(_task_path(dict(spec.task_params), base_dir))
    reject_attack_and_privacy(sc, "minmax")
