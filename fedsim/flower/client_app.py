"""The client side of a deployment: a Flower ``ClientApp`` whose train step is fedsim's
local training.

A SuperNode's ``node_config`` says which partitions (fedsim client ids) it holds:
``partition-id=K`` for one, or ``partition-ids="K L M"`` for several. The ClientApp loads
the scenario the app carries (``fedsim_app/scenario.toml``): its data (poisoned for the
scenario's Byzantine clients under a data attack, as in the simulator), partitioned from
the data seed, and its model and local optimizer; the partition's samples are the node's
training set.

- ``query``: answers the partitions the node holds (after loading them once, so that the
  first round's ClientApp process finds them in the cache).
- ``train``: ``Population.train`` for the asked partitions from the global parameters the
  server sent, on the sample orders the server drew from the simulator's training stream
  (``orders=``), so each client sees exactly the minibatches the simulator would give it.
  The reply holds ``updates [k, d]`` (local minus global parameters), ``num-examples
  [k]``, ``losses [k]``, ``partitions [k]`` (and ``buffers [k, b]`` for a model with
  buffers), plus the usual ``metrics`` record (``num-examples``, ``train_loss``).

Each process loads the scenario's data and model once (cached per app folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.errors import FedsimError

_CACHE: dict[str, dict[str, Any]] = {}


def node_partitions(node_config: Any) -> list[int]:
    """The partitions a node holds, from its ``node_config`` (``partition-id`` or
    ``partition-ids``: integers separated by spaces or commas)."""
    if "partition-ids" in node_config:
        text = str(node_config["partition-ids"]).replace(",", " ")
        return [int(t) for t in text.split()]
    if "partition-id" in node_config:
        return [int(node_config["partition-id"])]
    raise FedsimError("fedsim ClientApp: the SuperNode's --node-config names no partition "
                      "(give partition-id=K or partition-ids=\"K L\")")


def _setup(pkg_dir: Path, base_dir: str | None, held: list[int]) -> dict[str, Any]:
    """Scenario, the held partitions' data and the population of this app, built once per
    process; the partitions' samples are cached on disk (``_partition_data``), so a
    ClientApp process started for a later message loads them without rebuilding the
    dataset."""
    key = f"{pkg_dir}|{held}"
    if key not in _CACHE:
        import torch

        from fedsim.data.base import FederatedData
        from fedsim.flower.app_files import read_scenario
        from fedsim.runners import build_population, configure_threads, resolve_device

        sc = read_scenario(pkg_dir)
        base = Path(base_dir) if base_dir else pkg_dir
        device = resolve_device(sc.device)
        configure_threads(device)
        part = _partition_data(sc, base, held, pkg_dir)
        offsets = np.concatenate([[0], np.cumsum(part["sizes"])]).astype(np.int64)
        local = tuple(np.arange(offsets[i], offsets[i + 1], dtype=np.int64)
                      for i in range(len(held)))
        data = FederatedData(name=sc.data.dataset, x_train=part["x"], y_train=part["y"],
                             x_test=part["x"][:1], y_test=part["y"][:1], client_indices=local,
                             num_classes=int(part["num_classes"]),
                             input_shape=tuple(int(v) for v in part["input_shape"]))
        pop, _, _ = build_population(sc, data, device, base_dir=base)
        remap = np.full(int(part["n_train"]), -1, dtype=np.int64)
        remap[part["global"]] = np.arange(len(part["global"]), dtype=np.int64)
        _CACHE[key] = {"sc": sc, "pop": pop, "device": device,
                       "idx": {cid: torch.from_numpy(ix) for cid, ix in zip(held, local,
                                                                             strict=True)},
                       "remap": torch.from_numpy(remap)}
    return _CACHE[key]


def _partition_data(sc: Any, base: Path, held: list[int], pkg_dir: Path) -> dict[str, Any]:
    """The held partitions' training samples (poisoned for Byzantine clients under a data
    attack, as in the simulator), in ``held`` order, with their global indices; read from
    a cache file next to the installed app when an earlier process wrote it."""
    import hashlib
    import os
    import tempfile

    from fedsim.flower.app_files import SCENARIO_FILE

    text = (Path(pkg_dir) / SCENARIO_FILE).read_bytes()
    digest = hashlib.sha256(text + str(base).encode() + str(held).encode()).hexdigest()[:24]
    cache = Path(os.environ.get("FLWR_HOME") or tempfile.gettempdir()) / "fedsim-cache"
    path = cache / f"partitions-{digest}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):
            pass  # unreadable: rebuilt below
    from fedsim.data import load_federated
    from fedsim.runners import _byzantine_setup

    data = load_federated(sc.data, sc.seed, base)
    _, data = _byzantine_setup(sc, data)
    glob = np.concatenate([data.client_indices[c] for c in held]).astype(np.int64)
    part = {"x": data.x_train[glob], "y": data.y_train[glob], "global": glob,
            "sizes": np.asarray([len(data.client_indices[c]) for c in held], dtype=np.int64),
            "n_train": np.int64(len(data.y_train)), "num_classes": np.int64(data.num_classes),
            "input_shape": np.asarray(data.input_shape, dtype=np.int64)}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **part)
        os.replace(tmp, path)
    except OSError:
        pass  # no cache: the next process rebuilds
    return part


def train_partitions(setup: dict[str, Any], msg: Message, held: list[int]) -> RecordDict:
    """Local training of the partitions the message asks for; the reply's content."""
    import torch

    pop = setup["pop"]
    cfg = msg.content["config"]
    cids = [int(c) for c in cfg["partitions"]]
    if not set(cids) <= set(held):
        raise FedsimError(f"fedsim ClientApp: asked to train partitions {cids}, this node "
                          f"holds {held}")
    arrays = msg.content["arrays"]
    params = torch.from_numpy(arrays["params"].numpy().copy())
    buffers = (torch.from_numpy(arrays["buffers"].numpy().copy())
               if "buffers" in arrays else None)
    orders = torch.from_numpy(msg.content["orders"]["orders"].numpy().astype(np.int64))
    remap = setup["remap"]  # global sample index -> this node's (padding slots: 0)
    orders = remap[orders.clamp(0, len(remap) - 1)].clamp_min(0)
    gen = torch.Generator(device=pop.device)
    seed = int(cfg.get("seed", -1))
    gen.manual_seed(seed if seed >= 0 else 0)
    res = pop.train(params, [setup["idx"][c] for c in cids], lr=float(cfg["lr"]),
                    epochs=int(cfg["epochs"]), batch_size=int(cfg["batch-size"]),
                    mu=float(cfg["mu"]), gen=gen, buffers=buffers, clients=cids,
                    orders=orders)
    out = {"updates": Array(res.updates.detach().cpu().numpy().astype(np.float32)),
           "num-examples": Array(res.num_samples.cpu().numpy().astype(np.int64)),
           "losses": Array(res.losses.detach().cpu().numpy().astype(np.float32)),
           "partitions": Array(np.asarray(cids, dtype=np.int64))}
    if res.buffers is not None:
        out["buffers"] = Array(res.buffers.detach().cpu().numpy())
    n = int(res.num_samples.sum())

    w = res.num_samples.to(res.losses.dtype)
    loss = float((res.losses * w).sum() / w.sum()) if n else 0.0
    return RecordDict({"arrays": ArrayRecord(out),
                       "metrics": MetricRecord({"num-examples": n, "train_loss": loss})})


def make_client_app(pkg_dir: Path) -> ClientApp:
    """The ``ClientApp`` of the app whose package folder (holding ``scenario.toml``) is
    ``pkg_dir``."""
    app = ClientApp()
    pkg_dir = Path(pkg_dir)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        held = node_partitions(context.node_config)
        _setup(pkg_dir, str(context.run_config.get("base-dir", "")), held)  # warm the cache
        return Message(content=RecordDict({"config": ConfigRecord({"partitions": held})}),
                       reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        held = node_partitions(context.node_config)
        setup = _setup(pkg_dir, str(context.run_config.get("base-dir", "")), held)
        content = train_partitions(setup, msg, held)
        return Message(content=content, reply_to=msg)

    return app
