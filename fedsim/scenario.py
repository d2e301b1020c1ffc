"""Scenario files: TOML -> frozen dataclasses, ``--set`` overrides, validation.

Every error a user can cause here is a ``ScenarioError`` naming the dotted key
and what is allowed; the CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import Scenario
from fedsim.errors import ScenarioError
from fedsim.limits import (
    FLOAT32_MAX,
    MAX_SIGMA,
    MIN_SIM_S,
    check_bandwidth,
    check_int64,
    check_number,
    check_rate,
    check_seconds,
    check_tensor_table,
    check_tensor_value,
)
from fedsim.network.async_gossip_clock import STEP_TIMES
from fedsim.network.availability import AVAILABILITY_MODELS, make_availability_model
from fedsim.network.clock import POLICIES
from fedsim.network.compute import COMPUTE_MODELS, make_compute_model

DEVICES = ("cpu", "cuda", "auto")
DECENTRALIZED_ALGORITHMS = ("dsgd", "gossip_sgd", "accelerated_gossip_sgd")
ASYNC_ALGORITHMS = ("gossip_sgd", "accelerated_gossip_sgd")  # steps at each node's own times
CODED_ALGORITHMS = ("coded",)  # synchronous distributed GD with gradient coding
MINMAX_ALGORITHMS = ("minmax",)  # decentralized min-max games and GANs (fedsim.minmax)
ALGORITHMS = ("fedavg", "fedprox", *DECENTRALIZED_ALGORITHMS, *CODED_ALGORITHMS,
              *MINMAX_ALGORITHMS)
# fields whose value is a whole table (kept as one value when variants are flattened)
TABLE_FIELDS = ("network.topology_params", "algorithm.aggregator", "algorithm.server_opt",
                "algorithm.local_opt", "algorithm.compress", "attack.params")
MAX_DEPTH = 32  # lists and tables nested deeper are refused (a scenario needs about 6)


# ---------------------------------------------------------------- loading


def load_scenario(
    path: str | Path, overrides: Iterable[str] = (), validate: bool = True
) -> Scenario:
    """Read a scenario file, apply ``key.sub=value`` overrides, build and check it.

    Args:
        path: the TOML file.
        overrides: strings ``"dotted.key=value"``; the value is read as a TOML value
            (``0.1``, ``true``, ``[32, 32]``, ``"text"``), bare words as strings.
        validate: also run ``validate_scenario`` (ranges, names, files).

    Returns:
        The frozen ``Scenario``.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise ScenarioError("", f"scenario file not found: {path}")
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ScenarioError("", f"cannot read scenario file {path}: "
                                f"{err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ScenarioError("", f"{path}: not a UTF-8 text file") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError("", f"{path}: not valid TOML: {err}") from None
    except ValueError:  # an integer of more than 4300 digits
        raise ScenarioError("", f"{path}: not valid TOML: a number too long to read "
                                "(TOML integers are 64-bit)") from None
    except RecursionError:
        raise ScenarioError("", f"{path}: lists or tables nested too deeply "
                                f"(at most {MAX_DEPTH} levels)") from None
    try:
        _check_depth(raw, "")
    except ScenarioError as err:
        raise ScenarioError("", f"{path}: {err.message}") from None
    raw = apply_overrides(raw, overrides)
    scenario = from_dict(raw)
    if validate:
        validate_scenario(scenario, base_dir=path.parent)
    return scenario


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into the dotted key and the parsed value."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ScenarioError("", f"--set expects key.sub=value, got {text!r}")
    if len(key.split(".")) > MAX_DEPTH:
        raise ScenarioError(key[:60] + "...", f"nested too deeply (at most {MAX_DEPTH} levels)")
    return key, parse_value(value.strip(), key)


def parse_value(text: str, key: str = "") -> Any:
    """A TOML value (number, bool, list, quoted string, inline table) or a bare string.

    Raises:
        ScenarioError: (naming ``key``) a number too long to read (over 4300 digits).
    """
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except ValueError:  # Python's limit on int() of long digit strings
        raise ScenarioError(key, "a number too long to read (TOML integers are 64-bit: "
                                 "-2^63 .. 2^63-1)") from None
    except RecursionError:
        raise ScenarioError(key, f"lists or tables nested too deeply (at most {MAX_DEPTH} "
                                 "levels)") from None
    _check_depth(value, key, len(key.split(".")) if key else 0)
    return value


def _check_depth(value: Any, key: str, start: int = 0) -> None:
    """Refuse lists and tables nested more than ``MAX_DEPTH`` levels (no recursion here:
    the checks and copies that follow recurse)."""
    stack = [(value, start)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise ScenarioError(key, f"lists or tables nested too deeply (at most "
                                         f"{MAX_DEPTH} levels)")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def apply_overrides(raw: dict, overrides: Iterable[str | tuple[str, Any]]) -> dict:
    """A copy of ``raw`` with each dotted override set (tables made as needed)."""
    result = _deep_copy(raw)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_dotted(result, key, value)
    return result


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """Set ``raw[a][b][c] = value`` for ``key = "a.b.c"``, creating tables on the way."""
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ScenarioError(".".join(parts[: i + 1]), "is a value, not a table")
        node = child
    node[parts[-1]] = value


def flatten(raw: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (keys already dotted are kept)."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted not in TABLE_FIELDS:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _deep_copy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


# ---------------------------------------------------------------- dict <-> dataclass


def from_dict(raw: Mapping, cls: type = Scenario, prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a nested dict, checking keys and types."""
    if not isinstance(raw, Mapping):
        raise ScenarioError(prefix.rstrip("."), f"must be a table, got {_type_name(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ScenarioError(
                f"{prefix}{key}", f"unknown key; allowed here: {', '.join(names)}"
            )
    values = {}
    for name in names:
        if name in raw:
            values[name] = _convert(raw[name], hints[name], f"{prefix}{name}")
    return cls(**values)


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain dicts, lists and scalars (TOML-ready)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _convert(value: Any, hint: Any, key: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, key + ".")
    check_int64(value, key)
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ScenarioError(key, f"must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScenarioError(key, f"must be an integer, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ScenarioError(key, f"must be a number, got {_show(value)}")
        if math.isnan(value):
            raise ScenarioError(key, "must be a number, got nan")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ScenarioError(key, f"must be a string, got {_show(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ScenarioError(key, f"must be a list of integers, got {_show(value)}")
        item = typing.get_args(hint)[0]
        return tuple(_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ScenarioError(key, f"must be a table, got {_show(value)}")
        return dict(value)
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such fields yet
        return value
    raise TypeError(f"unsupported field type {hint!r} for {key}")  # a fedsim bug


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_type_name(value)} ({text})"


# ---------------------------------------------------------------- validation


def validate_scenario(sc: Scenario, base_dir: Path | None = None,
                      load_data: bool = True) -> None:
    """Check names, ranges and referenced files; raise the first ``ScenarioError``.

    Args:
        sc: the scenario.
        base_dir: where relative paths (traces, data) are resolved; the scenario
            file's folder.
        load_data: also load and split ``sc.data`` and build a ``model.factory`` model on
            it, as the run will; False where the run is given its data (``fedsim.run``).
    """
    from fedsim.data import DATASETS, PARTITIONS
    from fedsim.losses import check_loss_spec
    from fedsim.models import BUFFER_POLICIES, MODELS, check_factory_spec
    from fedsim.privacy.validate import validate_privacy

    base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
    _name(sc.name, "name")
    _at_least(sc.seed, 0, "seed")
    _at_least(sc.rounds, 1, "rounds")
    _at_least(sc.clients_per_round, 1, "clients_per_round")
    _at_least(sc.eval_every, 1, "eval_every")
    _at_least(sc.checkpoint_every, 0, "checkpoint_every")
    if sc.device not in DEVICES and not re.fullmatch(r"cuda:(0|[1-9][0-9]*)", sc.device):
        raise ScenarioError("device", f"unknown value {sc.device!r}; allowed: "
                            f"{', '.join(DEVICES)}, cuda:N (GPU number N)")
    if sc.device.startswith("cuda"):  # the run's own check: is that GPU here?
        from fedsim.runners import resolve_device

        resolve_device(sc.device)
    d = sc.data
    _one_of(d.dataset, DATASETS, "data.dataset")
    _one_of(d.partition, PARTITIONS, "data.partition")
    _at_least(d.num_clients, 1, "data.num_clients")
    if sc.clients_per_round > d.num_clients and sc.algorithm.name not in CODED_ALGORITHMS:
        raise ScenarioError(
            "clients_per_round",
            f"cohort of {sc.clients_per_round} is larger than the population "
            f"(data.num_clients = {d.num_clients}); allowed: 1..{d.num_clients}",
        )
    check_number(d.alpha, "data.alpha", 0.0, FLOAT32_MAX, low_open=True)
    _at_least(d.shards_per_client, 1, "data.shards_per_client")
    _open_interval(d.test_fraction, 0.0, 1.0, "data.test_fraction")
    _at_least(d.synthetic_dim, 1, "data.synthetic_dim")
    _at_least(d.synthetic_classes, 2, "data.synthetic_classes")
    _at_least(d.synthetic_mean_samples, 10, "data.synthetic_mean_samples")
    check_tensor_value(d.synthetic_alpha, "data.synthetic_alpha", 0.0)
    check_tensor_value(d.synthetic_beta, "data.synthetic_beta", 0.0)
    if d.dataset in ("mnist", "cifar10"):
        if not d.path:
            raise ScenarioError("data.path", f"required for dataset '{d.dataset}' "
                                "(a folder with its standard files; fedsim never downloads)")
        _existing(d.path, base_dir, "data.path", want_dir=True)
    m = sc.model
    if m.factory:  # imported and called once the data's shapes are known (_validate_data)
        check_factory_spec(m.factory)
    else:
        _one_of(m.name, MODELS, "model.name")
    for i, width in enumerate(m.hidden):
        _at_least(width, 1, f"model.hidden[{i}]")
    _one_of(m.buffers, BUFFER_POLICIES, "model.buffers")
    a = sc.algorithm
    _one_of(a.name, ALGORITHMS, "algorithm.name")
    check_loss_spec(a.loss)  # a function of the user's is loaded with the data (_validate_data)
    check_tensor_value(a.lr, "algorithm.lr", 0.0, low_open=True)
    _at_least(a.local_epochs, 1, "algorithm.local_epochs")
    _at_least(a.batch_size, 1, "algorithm.batch_size")
    check_tensor_value(a.mu, "algorithm.mu", 0.0)
    if a.name == "fedprox" and a.mu <= 0:
        raise ScenarioError("algorithm.mu", "fedprox needs mu > 0 (mu = 0 is fedavg)")
    check_tensor_value(a.server_lr, "algorithm.server_lr", 0.0, low_open=True)
    check_rate(a.gossip_rate, "algorithm.gossip_rate")
    check_seconds(a.eval_interval_s, "algorithm.eval_interval_s", positive=True)
    _one_of(a.step_times, STEP_TIMES, "algorithm.step_times")
    _validate_network(sc, base_dir)
    if a.name in DECENTRALIZED_ALGORITHMS:
        _validate_decentralized(sc, base_dir)
    _validate_coded(sc, base_dir)
    _validate_minmax(sc, base_dir)
    _validate_aggregator(a.aggregator)
    _validate_server_opt(a)
    _validate_local_opt(a)
    validate_privacy(sc, a.name in DECENTRALIZED_ALGORITHMS)
    _validate_attack(sc)
    _validate_variants(sc, base_dir, load_data)
    if not sc.variants:  # a file with variants runs only them; each is checked above
        from fedsim.resources import check_resources

        check_resources(sc, base_dir)
        if load_data:
            _validate_data(sc, base_dir)


def _validate_data(sc: Scenario, base_dir: Path) -> None:
    """The run's first step, done here: load and split the data (poisoned for a data
    attack), so that what depends on the data (a split that leaves a client or the test
    set empty, a malformed file, a backdoor target that is no class) fails here as it
    would in the run. Runs after the resource check, so nothing too large is loaded."""
    from fedsim.data import load_federated
    from fedsim.data.poison import DATA_ATTACKS

    data = load_federated(sc.data, sc.seed, base_dir)
    if len(data.y_test) == 0:
        raise ScenarioError("data.test_fraction", f"holds out no test sample of "
                            f"{sc.data.dataset} ({sc.data.test_fraction}); the run evaluates "
                            "on the test set: allowed: a larger share")
    if sc.attack.name in DATA_ATTACKS:
        from fedsim.byzantine import choose_byzantine
        from fedsim.data.poison import apply_data_attack
        from fedsim.seeding import numpy_rng

        mask = choose_byzantine(sc.data.num_clients, sc.attack.fraction, sc.seed)
        apply_data_attack(sc.attack.name, data, mask, sc.attack.params,
                          numpy_rng(sc.seed, "attack/data"))
    from fedsim.losses import LOSSES, check_loss, load_loss

    if sc.model.factory or sc.algorithm.loss not in LOSSES:  # import and probe them
        from fedsim.models import build_model

        model = build_model(sc.model, data.input_shape, data.num_classes,
                            search_dirs=model_dirs(base_dir))
        if sc.model.factory:  # its size is known now: the memory check again, with it
            from fedsim.resources import check_resources

            check_resources(sc, base_dir, params=sum(p.numel() for p in model.parameters()))
        loss = load_loss(sc.algorithm.loss, model_dirs(base_dir))
        if loss is not None:
            check_loss(loss, model, data.input_shape, data.num_classes, sc.algorithm.loss)


def model_dirs(base_dir: Path | None) -> tuple[Path, ...]:
    """Where a ``model.factory`` module is looked for after ``sys.path``: the scenario's
    folder, then the working folder."""
    return (*((Path(base_dir),) if base_dir is not None else ()), Path.cwd())


def _validate_network(sc: Scenario, base_dir: Path) -> None:
    n = sc.network
    if n.topology != "star":
        from fedsim.network.topology import resolve_topology

        graph = resolve_topology(n.topology, n.topology_params, seed=sc.seed,
                                 search_dirs=topology_dirs(base_dir))
        _validate_links(graph)
        if sc.algorithm.name not in DECENTRALIZED_ALGORITHMS and not (
                n.server_node == -1 or n.server_node in graph):
            raise ScenarioError("network.server_node", f"must be -1 or a node of the graph "
                                f"(0..{graph.number_of_nodes() - 1}), got {n.server_node}")
    check_bandwidth(n.bandwidth_bps, "network.bandwidth_bps")
    check_seconds(n.latency_s, "network.latency_s")
    check_bandwidth(n.server_bandwidth_bps, "network.server_bandwidth_bps", zero_ok=True)
    _one_of(n.policy, POLICIES, "network.policy")
    check_number(n.over_selection, "network.over_selection", 1.0, max(1, sc.data.num_clients),
                 what="at most data.num_clients: the cohort comes from the population")
    check_seconds(n.deadline_s, "network.deadline_s", positive=True)
    c = n.compute
    _one_of(c.model, COMPUTE_MODELS, "network.compute.model")
    check_seconds(c.seconds_per_sample, "network.compute.seconds_per_sample")
    check_number(c.sigma, "network.compute.sigma", 0.0, MAX_SIGMA,
                 what="the mean compute factor exp(sigma^2/2) stays <= 1e15 s")
    check_rate(c.rate, "network.compute.rate")
    v = n.availability
    _one_of(v.model, AVAILABILITY_MODELS, "network.availability.model")
    check_number(v.dropout, "network.availability.dropout", 0.0, 1.0)
    # the models the clock builds, traces read and checked row by row
    make_compute_model(c, sc.data.num_clients, base_dir)
    make_availability_model(v, sc.data.num_clients, base_dir)


def _validate_links(graph: Any) -> None:
    """A topology file's own link attributes obey the same bounds as the defaults."""
    for u, v, data in graph.edges(data=True):
        for name in ("latency_s", "bandwidth_bps"):
            if data.get(name) is None:
                continue
            raw = data[name]
            try:
                value = float(raw) if isinstance(raw, str) else raw
            except ValueError:
                value = raw
            key = f"network.topology (edge ({u}, {v}) {name})"
            if name == "latency_s":
                check_seconds(value, key)
            else:
                check_bandwidth(value, key)


def _validate_decentralized(sc: Scenario, base_dir: Path) -> None:
    """A decentralized algorithm: one client per node of a graph, no server, no attack."""
    from fedsim.network.topology import resolve_topology

    n = sc.network
    if n.topology == "star":
        raise ScenarioError("network.topology", f"{sc.algorithm.name} needs a graph (a builder "
                            "such as ring or torus, or a topology file), not 'star'")
    nodes = resolve_topology(n.topology, n.topology_params, seed=sc.seed,
                             search_dirs=topology_dirs(base_dir)).number_of_nodes()
    if sc.data.num_clients != nodes:
        raise ScenarioError("data.num_clients", f"is {sc.data.num_clients} but {sc.algorithm.name} "
                            f"puts one client on each of the graph's {nodes} nodes; "
                            f"allowed: {nodes}")
    if sc.attack.name != "none":
        raise ScenarioError("attack.name", f"attacks are not supported with {sc.algorithm.name}; "
                            "allowed: none")
    if sc.algorithm.name in ASYNC_ALGORITHMS:  # each node's steps follow one another in time
        c = n.compute
        sps = make_compute_model(c, nodes, base_dir).seconds_per_sample
        if float(np.min(sps)) < MIN_SIM_S:
            key = "network.compute." + ("trace" if c.model == "trace" else "seconds_per_sample")
            raise ScenarioError(key, f"{sc.algorithm.name} times each node's local steps: "
                                     f"seconds per sample must be >= {MIN_SIM_S:g} (a step that "
                                     f"takes no time never reaches the next evaluation), got "
                                     f"{float(np.min(sps)):g}")


def reject_attack_and_privacy(sc: Scenario, runs: str) -> None:
    """Raise unless ``sc`` has no attack and no privacy (``runs`` supports neither)."""
    if sc.attack.name != "none":
        raise ScenarioError("attack.name", f"attacks are not supported with {runs}; "
                                           "allowed: none")
    if sc.privacy.mode != "none":
        raise ScenarioError("privacy.mode", f"privacy is not supported with {runs}; "
                                            "allowed: none")


def _validate_coded(sc: Scenario, base_dir: Path) -> None:
    """``algorithm.name = "coded"`` (fedsim.coding.spec): the coding and delay tables, no
    attack, no privacy, a star network; both tables empty for any other algorithm."""
    from fedsim.coding.spec import check_coded

    check_coded(sc.algorithm.name, sc.algorithm.coding, sc.network.delays,
                sc.data.num_clients, sc.rounds, base_dir)
    if sc.algorithm.name not in CODED_ALGORITHMS:
        return
    reject_attack_and_privacy(sc, "coded")
    if sc.network.topology != "star":
        raise ScenarioError("network.topology", "coded runs time their workers with "
                                                "network.delays; allowed: star")


def _validate_minmax(sc: Scenario, base_dir: Path) -> None:
    """``algorithm.name = "minmax"`` (fedsim.minmax.spec): ``[algorithm.minmax]``, a graph,
    no attack, no privacy, no checkpoints; the table empty for any other algorithm."""
    from fedsim.minmax.spec import check_minmax

    check_minmax(sc, base_dir)


def _validate_aggregator(spec: dict) -> None:
    from fedsim.stages.registry import AGGREGATORS, build_aggregator

    name = spec.get("name", "mean")
    if not isinstance(name, str):
        raise ScenarioError("algorithm.aggregator.name", f"must be a string, got {_show(name)}; "
                            f"allowed: {', '.join(AGGREGATORS)}")
    check_tensor_table({k: v for k, v in spec.items() if k != "name"}, "algorithm.aggregator")
    build_aggregator(spec)


def _validate_server_opt(a: Any) -> None:
    """``algorithm.server_opt``: a known optimizer, known parameters in range (each error
    names ``algorithm.server_opt.<param>``); decentralized algorithms have no server."""
    from fedsim.stages.server import SERVER_OPTS, build_server_opt

    spec = a.server_opt
    name = spec.get("name", "sgd")
    if not isinstance(name, str):
        raise ScenarioError("algorithm.server_opt.name", f"must be a string, got "
                            f"{_show(name)}; allowed: {', '.join(SERVER_OPTS)}")
    if a.name in DECENTRALIZED_ALGORITHMS and name != "sgd":
        raise ScenarioError("algorithm.server_opt.name", f"{a.name} has no server; "
                            "allowed: sgd")
    build_server_opt(spec, a.server_lr)


def _validate_local_opt(a: Any) -> None:
    """``algorithm.local_opt``: sgd or adam with parameters in range (each error names
    ``algorithm.local_opt.<param>``); decentralized algorithms take plain SGD steps."""
    from fedsim.local_opt import build_local_opt

    build_local_opt(a.local_opt, a.name, a.name in DECENTRALIZED_ALGORITHMS)


def _validate_attack(sc: Scenario) -> None:
    from fedsim.data.poison import DATA_ATTACKS
    from fedsim.stages.attacks import UPDATE_ATTACKS, build_update_attack

    attack = sc.attack
    _one_of(attack.name, (*UPDATE_ATTACKS, *DATA_ATTACKS), "attack.name")
    _half_open(attack.fraction, 0.0, 0.5, "attack.fraction")
    if attack.name != "none" and attack.fraction == 0.0:
        raise ScenarioError("attack.fraction", f"must be > 0 for attack {attack.name!r} "
                            "(the share of Byzantine clients); allowed: (0, 0.5)")
    check_tensor_table(attack.params, "attack.params")
    if attack.name in UPDATE_ATTACKS:
        build_update_attack(attack.name, attack.params)
    elif attack.params:  # data attacks check their values against the data at run time
        from fedsim.data.poison import DATA_ATTACK_PARAMS

        for key in attack.params:
            if key not in DATA_ATTACK_PARAMS[attack.name]:
                allowed = ", ".join(DATA_ATTACK_PARAMS[attack.name]) or "none"
                raise ScenarioError(f"attack.params.{key}", f"unknown parameter for attack "
                                    f"{attack.name!r}; allowed: {allowed}")


def _validate_variants(sc: Scenario, base_dir: Path, load_data: bool = True) -> None:
    base = to_dict(dataclasses.replace(sc, variants={}))
    for name, overrides in sc.variants.items():
        key = f"variants.{name}"
        _name(name, key)
        if not isinstance(overrides, Mapping):
            raise ScenarioError(key, "must be a table of dotted keys and values")
        flat = flatten(overrides)
        if "variants" in {k.split(".")[0] for k in flat}:
            raise ScenarioError(key, "a variant cannot declare variants")
        try:
            variant = from_dict(apply_overrides(base, flat.items()))
            validate_scenario(variant, base_dir, load_data)
        except ScenarioError as err:
            raise ScenarioError(f"{key}.{err.key}" if err.key else key, err.message) from None


def expand_variants(sc: Scenario) -> list[tuple[str, Scenario]]:
    """``[(variant name, scenario)]``: the variants, or ``[("", sc)]`` when there are none."""
    if not sc.variants:
        return [("", sc)]
    base = to_dict(dataclasses.replace(sc, variants={}))
    return [(name, from_dict(apply_overrides(base, flatten(ov).items())))
            for name, ov in sc.variants.items()]


def topology_dirs(base_dir: Path) -> list[Path]:
    from fedsim.network.topology import default_search_dirs

    return [base_dir, base_dir / "topologies", *default_search_dirs()]


def resolve_path(value: str, base_dir: Path) -> Path:
    """``value`` as a path: absolute as is, else relative to the scenario's folder."""
    path = Path(value)
    try:
        path = path.expanduser()
    except RuntimeError:  # "~user" of no such user: kept as written, then not found
        pass
    return path if path.is_absolute() else base_dir / path


def _existing(value: str, base_dir: Path, key: str, want_dir: bool = False) -> None:
    if not value:
        raise ScenarioError(key, "required (a path to an existing file)")
    path = resolve_path(value, base_dir)
    try:
        ok = path.is_dir() if want_dir else path.is_file()
    except (OSError, ValueError) as err:  # a name too long, a NUL byte
        raise ScenarioError(key, f"not a usable path ({err}): {path}") from None
    if not ok:
        kind = "folder" if want_dir else "file"
        raise ScenarioError(key, f"{kind} not found: {path}")


def _name(value: str, key: str) -> None:
    if not value or any(ch in value for ch in "/\\:*?\"<>| ") or value.startswith("."):
        raise ScenarioError(key, f"must be a non-empty name without spaces or / \\ : * ? \" < > |,"
                                 f" got {value!r}")


def _one_of(value: str, allowed: Iterable[str], key: str) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ScenarioError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


def _at_least(value: int, low: int, key: str) -> None:
    if value < low:
        raise ScenarioError(key, f"must be >= {low}, got {value}")


def _open_interval(value: float, low: float, high: float, key: str) -> None:
    if not low < value < high:
        raise ScenarioError(key, f"must be in ({low}, {high}), got {value}")


def _half_open(value: float, low: float, high: float, key: str) -> None:
    if not low <= value < high:
        raise ScenarioError(key, f"must be in [{low}, {high}), got {value}")
