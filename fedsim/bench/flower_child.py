"""Inside the Flower child process of ``fedsim bench flower``: Flower's own simulation.

The parent (:mod:`fedsim.bench.flower_bench`) writes the workload, the data and the
sample orders into a temporary directory and runs :func:`main` on it in a fresh
process. :func:`main` runs ``flwr.simulation.run_simulation`` (Ray backend) with a
``ServerApp`` running the Message-API ``FedAvg`` and a ``ClientApp`` that trains a torch
``nn.Module`` with ``torch.optim.SGD`` as a Flower user would write it, and writes back
its wall-clock marks (``result.json``) and the final global model (``final.npy``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.bench.workload import Workload

# Files the parent and the child exchange inside the temporary directory.
SPEC = "spec.json"
DATA = "data.npz"
ORDERS = "orders.npy"
RESULT = "result.json"
FINAL = "final.npy"
LOG = "flower.log"
# Ray's temp dir inside ours; short, since Ray's unix socket paths below it must stay < 108 bytes.
RAY_DIR = "r"
# Per-process cache of the client inputs inside a Ray worker (see ``_client_inputs``).
_CLIENT_CACHE: dict[str, dict[str, Any]] = {}


def main(work_dir: str) -> None:
    """Entry point of the child: run Flower's simulation and write marks and final model."""
    t0 = time.time()
    import signal

    from fedsim.bench.processes import die_with_parent

    die_with_parent(signal.SIGINT)  # SIGINT: Flower shuts Ray down; SIGKILL follows if not
    work = Path(work_dir)
    spec = json.loads((work / SPEC).read_text())
    w = Workload(**spec["workload"])
    import torch  # noqa: F401 - counted as import time, like a Flower user's script
    from flwr.simulation import run_simulation

    marks: dict[str, Any] = {"child_start": t0, "imported": time.time(), "round_end": []}
    server_app = _make_server_app(w, marks, work, float(spec["timeout_s"]))
    client_app = _make_client_app(str(work))
    backend_config = {
        "client_resources": {"num_cpus": float(spec["client_cpus"]), "num_gpus": 0.0},
        "init_args": {
            "_temp_dir": str(work / RAY_DIR),
            "num_cpus": int(spec["num_cpus"]),
            "num_gpus": 0,
            "include_dashboard": False,
            "object_store_memory": 256 * 2**20,
            "_node_ip_address": "127.0.0.1",
        },
    }
    try:
        marks["run_simulation"] = time.time()
        run_simulation(server_app=server_app, client_app=client_app,
                       num_supernodes=w.clients, backend_name="ray",
                       backend_config=backend_config)
        marks["returned"] = time.time()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then re-raised
        marks["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        marks["ray_down"] = time.time()
        (work / RESULT).write_text(json.dumps(marks))


def _make_server_app(w: Workload, marks: dict, work: Path, timeout_s: float) -> Any:
    """A ServerApp running FedAvg (all nodes every round) that records round timestamps."""
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from torch.nn.utils import parameters_to_vector

    from fedsim.bench.workload import make_model

    class TimedFedAvg(FedAvg):
        """FedAvg that notes when round 1's first client began and when each round ended."""

        def aggregate_train(self, server_round, replies):  # noqa: ANN001, ANN201
            replies = list(replies)
            if server_round == 1:  # when the first ClientApp began its local training
                starts = [float(r.content["metrics"]["t-start"]) for r in replies
                          if not r.has_error()]
                marks["first_client_start"] = min(starts, default=None)
            result = super().aggregate_train(server_round, replies)
            marks["round_end"].append(time.time())
            return result

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:  # noqa: ANN001
        model = make_model(w)
        strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0,
                               min_train_nodes=w.clients, min_available_nodes=w.clients)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                                train_config=ConfigRecord({"lr": w.lr}),
                                num_rounds=w.rounds, timeout=timeout_s)
        model.load_state_dict(result.arrays.to_torch_state_dict())
        np.save(work / FINAL, parameters_to_vector(model.parameters()).detach().numpy())

    return app


def _make_client_app(work_dir: str) -> Any:
    """A ClientApp whose train handler runs ``_client_train`` (pickled to the Ray actors)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):  # noqa: ANN001, ANN202
        return _client_train(msg, context, work_dir)

    return app


def _client_inputs(work_dir: str) -> dict[str, Any]:
    """The workload, training data and sample orders, loaded once per Ray worker process."""
    cached = _CLIENT_CACHE.get(work_dir)
    if cached is None:
        import torch

        work = Path(work_dir)
        spec = json.loads((work / SPEC).read_text())
        arrays = np.load(work / DATA)
        cached = {
            "workload": Workload(**spec["workload"]),
            "x": torch.from_numpy(arrays["x"]), "y": torch.from_numpy(arrays["y"]),
            "idx": torch.from_numpy(arrays["idx"]), "counts": arrays["counts"],
            "orders": torch.from_numpy(np.load(work / ORDERS).astype(np.int64)),
        }
        _CLIENT_CACHE[work_dir] = cached
    return cached


def _client_train(msg: Any, context: Any, work_dir: str) -> Any:
    """One Flower client's local training, written as a Flower + PyTorch user would.

    Loads the global model into an ``nn.Module``, runs ``epochs`` passes of
    ``torch.optim.SGD`` (no momentum) over minibatches of its own samples in the
    order fedsim drew for this client and round, and replies with the new weights
    and ``num-examples`` (FedAvg's weight).
    """
    t_start = time.time()  # for the bench only: when Flower got this client running
    import torch
    import torch.nn.functional as F
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    from fedsim.bench.workload import make_model

    torch.set_num_threads(1)
    inp = _client_inputs(work_dir)
    w: Workload = inp["workload"]
    cid = int(context.node_config["partition-id"])
    config = msg.content["config"]
    rnd, lr = int(config["server-round"]), float(config["lr"])
    n = int(inp["counts"][cid])
    own = inp["idx"][cid, :n]
    x, y = inp["x"][own], inp["y"][own]

    model = make_model(w)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss_sum, steps = 0.0, 0
    for epoch in range(w.epochs):
        order = inp["orders"][rnd - 1, cid, epoch, :n]
        for start in range(0, n, w.batch_size):
            batch = order[start : start + w.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            steps += 1
    content = RecordDict({
        "arrays": ArrayRecord(model.state_dict()),
        "metrics": MetricRecord({"train_loss": loss_sum / max(steps, 1), "num-examples": n,
                                 "t-start": t_start}),
    })
    return Message(content=content, reply_to=msg)
