"""The server side of a deployment: fedsim's algorithm as a Flower (1.42, Message API)
strategy.

``FedsimStrategy`` holds a ``fedsim.runners.FederatedRun`` built from the scenario (the
global model, every stage's state, the seeded streams, the clock) and plays each round
the way the simulator does, with the local training done by the SuperNodes:

- ``configure_train``: the cohort from the *sampling* stream and the scenario's clock
  (``FederatedRun.select`` and ``clock.run_round``: with policy "all" and every client
  reachable, exactly the clients, in the order, that the simulator trains); the sample
  orders of that cohort from the *training* stream (``Population.draw_orders``); one
  ``train`` message per SuperNode holding cohort clients, with the global model, the
  rows of the orders of its clients, and the local hyper-parameters.
- ``aggregate_train``: the replies are checked row by row (a row of the wrong length, an
  unknown or unasked partition, or an implausible ``num-examples`` -- not an integer in
  ``[0, the partition's size]`` -- is rejected and counted, never aggregated); the rows
  are stacked ``[m, d]`` in the cohort's order and go through the simulator's own update
  pipeline (``FederatedRun._update``): uplink stages (clipping, local noise, sketch),
  the scenario's update attack, ``reject_nonfinite`` (NaN/Inf rows counted and dropped),
  the aggregator with sample-count weights from the replies, the server stages
  (central noise, de-sketch) and the server optimizer; then evaluation and one metrics
  row (``RunLoop``). Clients whose node did not reply within the round's timeout, or
  replied with an error, count as ``dropped`` in that row.

``start`` is ``Strategy.start``'s loop with replies polled every quarter second (the
grid's own ``send_and_receive`` sleeps 3 s between polls) and no client-side evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

if TYPE_CHECKING:
    from fedsim.runners import FederatedRun
    from fedsim.runs.loop import RunLoop

POLL_S = 0.25  # seconds between pulls of replies


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float,
                     poll_s: float = POLL_S) -> list[Message]:
    """Push ``messages`` and pull their replies until all came or ``timeout`` seconds
    passed (what arrived by then is returned); nothing to send returns at once."""
    ids = set(grid.push_messages(list(messages)))
    replies: list[Message] = []
    end = time.monotonic() + timeout
    while ids:
        got = list(grid.pull_messages(ids))
        replies.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        if not ids or time.monotonic() >= end:
            break
        time.sleep(poll_s)
    return replies


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll_s: float = POLL_S) -> list[int]:
    """The connected SuperNodes' ids once at least ``count`` are connected, or all that
    are after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    while len(nodes) < count and time.monotonic() < end:
        time.sleep(poll_s)
        nodes = list(grid.get_node_ids())
    return nodes


def query_partitions(grid: Grid, nodes: Iterable[int], timeout: float) -> dict[int, int]:
    """Ask every node which partitions (fedsim client ids) it holds (a ``query`` message
    answered by ``fedsim.flower.client_app``); returns client id -> node id.

    A partition claimed by two nodes goes to the first that answered.
    """
    msgs = [Message(content=RecordDict({"config": ConfigRecord({"ask": "partitions"})}),
                    dst_node_id=node, message_type="query") for node in nodes]
    holders: dict[int, int] = {}
    for reply in send_and_receive(grid, msgs, timeout):
        if reply.has_error() or "config" not in reply.content:
            continue
        for cid in reply.content["config"].get("partitions", []):
            holders.setdefault(int(cid), reply.metadata.src_node_id)
    return holders


@dataclass
class _Round:
    """What ``configure_train`` planned for ``aggregate_train``."""

    rnd: int
    sched: Any  # fedsim.network.schedule.RoundSchedule
    done: list[int]  # the clock's reporting clients, in the simulator's order
    asked: dict[int, list[int]]  # node id -> its clients asked this round
    unreachable: list[int]  # cohort clients with no connected node
    started: float = field(default_factory=time.perf_counter)


class FedsimStrategy(Strategy):
    """fedsim's algorithm for a scenario as a Flower strategy (see the module docstring).

    Args:
        run: the run's state, built from the scenario (``FederatedRun``).
        holders: client id -> the node holding that partition (``query_partitions``).
        loop: writes the run directory (metrics, progress); None writes nothing.
        log: called with one progress line per round.
    """

    def __init__(self, run: FederatedRun, holders: dict[int, int], loop: RunLoop | None = None,
                 log: Callable[[str], Any] = print):
        self.run = run
        self.holders = dict(holders)
        self.loop = loop
        self.log = log
        self.pending: _Round | None = None
        self.failed_total = 0  # clients whose reply never came (or came as an error)
        self.malformed_total = 0  # rows rejected before stacking (length, num-examples)
        self.stopped = False

    # ------------------------------------------------------------------ train
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> list[Message]:
        """Pick the round's cohort as the simulator does and build one message per node."""
        import torch

        run, sc = self.run, self.run.sc
        self.pending = None
        if self.stopped or not run.may_play(server_round):
            self.stopped = True
            return []
        c = run.alg.client
        selected = run.select()
        k = (min(sc.clients_per_round, len(selected)) if sc.network.policy == "first_k"
             else None)
        sched = run.clock.run_round(server_round, selected.tolist(),
                                    (run.sizes[selected] * c.epochs).tolist(),
                                    run.bytes_down, run.bytes_up, k=k)
        done = [int(i) for i in sched.completed]
        alive = set(grid.get_node_ids())
        asked: dict[int, list[int]] = {}
        for cid in done:
            node = self.holders.get(cid)
            if node in alive:
                asked.setdefault(node, []).append(cid)
        unreachable = [cid for cid in done if self.holders.get(cid) not in alive]
        self.pending = _Round(server_round, sched, done, asked, unreachable)
        if not done:
            return []
        # The simulator draws the whole cohort's shuffles (then a dropout seed) from the
        # training stream; so does the server, whoever is reachable.
        gen = run.gens["training"]
        orders = run.pop.draw_orders([torch.from_numpy(run.client_idx[i]) for i in done],
                                     c.epochs, gen)
        seed = -1
        if run.pop.stochastic:
            from fedsim.population.reproducible import draw_seed

            seed = int(draw_seed(gen)) % (2**62)
        row = {cid: r for r, cid in enumerate(done)}
        params = Array(run.params.detach().cpu().numpy().astype(np.float32, copy=False))
        msgs = []
        for node, cids in asked.items():
            rows = [row[cid] for cid in cids]
            width = max(1, max(int(run.sizes[cid]) for cid in cids))
            node_orders = orders[:, rows, :width].cpu().numpy().astype(np.int64)
            arrays_out = {"params": params}
            start = self._start_buffers(cids)
            if start is not None:
                arrays_out["buffers"] = Array(start.detach().cpu().numpy())
            content = RecordDict({
                "arrays": ArrayRecord(arrays_out),
                "orders": ArrayRecord({"orders": Array(node_orders)}),
                "config": ConfigRecord({"server-round": server_round, "partitions": cids,
                                        "lr": float(c.lr), "epochs": int(c.epochs),
                                        "batch-size": int(c.batch_size), "mu": float(c.mu),
                                        "seed": seed}),
            })
            msgs.append(Message(content=content, dst_node_id=node, message_type="train"))
        return msgs

    def _start_buffers(self, cids: list[int]):
        """The buffers the clients start from (``[k, b]`` local, ``[b]`` global), or None."""
        import torch

        run = self.run
        if run.client_buffers is not None:
            return run.client_buffers[torch.tensor(cids, device=run.device)]
        return run.buffers

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, run the simulator's pipeline on the kept rows, evaluate and
        write the round's row."""
        p, run = self.pending, self.run
        if p is None or p.rnd != server_round:
            return None, None
        t_replies = time.perf_counter() - p.started
        rows, malformed = self._parse(p, replies)
        kept = [cid for cid in p.done if cid in rows]
        failed = len(p.done) - len(kept) - malformed
        self.failed_total += failed
        self.malformed_total += malformed
        run.rejected = run.honest_rejected = 0
        train_loss, agg_wall = None, 0.0
        if kept:
            train_loss, agg_wall = self._update(server_round, kept, rows)
        run._check_finite(server_round)
        record, eval_wall = self._record(p, kept, failed, malformed, train_loss)
        if self.loop is not None:
            self.loop.emit(record, {"train_wall_s": t_replies, "aggregate_wall_s": agg_wall,
                                    "eval_wall_s": eval_wall},
                           {**run.own_values(server_round), **run.last_metrics},
                           row_extra={"failed": failed})
        acc = "" if record.test_accuracy is None else f", test accuracy {record.test_accuracy:.4f}"
        loss = "" if train_loss is None else f", train loss {train_loss:.4f}"
        self.log(f"fedsim round {server_round}/{run.sc.rounds}: {len(kept)} of {len(p.done)} "
                 f"clients aggregated, {failed} failed, {record.rejected} rejected{loss}{acc}")
        metrics = {"participants": len(kept), "failed": failed, "rejected": record.rejected}
        if train_loss is not None:
            metrics["train_loss"] = float(train_loss)
        params = Array(run.params.detach().cpu().numpy().astype(np.float32, copy=False))
        return ArrayRecord({"params": params}), MetricRecord(metrics)

    def _parse(self, p: _Round, replies: Iterable[Message]) -> tuple[dict[int, tuple], int]:
        """client id -> (update [d], num-examples, loss, buffers row or None) of the
        well-formed rows of the replies; and the number of malformed rows."""
        run = self.run
        d, b = run.pop.d, run.pop.d_buffers
        rows: dict[int, tuple] = {}
        malformed = 0
        for msg in replies:
            if msg.has_error():
                continue  # counted as failed: its clients are not in rows
            node = msg.metadata.src_node_id
            expected = p.asked.get(node, [])
            try:
                arrays = msg.content["arrays"]
                cids = arrays["partitions"].numpy().reshape(-1).tolist()
                updates = arrays["updates"].numpy()
                nums = arrays["num-examples"].numpy().reshape(-1)
                losses = arrays["losses"].numpy().reshape(-1)
                bufs = arrays["buffers"].numpy() if b and "buffers" in arrays else None
            except (KeyError, AttributeError, TypeError, ValueError):
                malformed += len(expected)
                continue
            good = 0
            for r, cid in enumerate(cids):
                ok = (cid in expected and cid not in rows and updates.ndim == 2
                      and updates.shape[1] == d and r < len(updates) and r < len(nums)
                      and r < len(losses) and _plausible_count(nums[r], int(run.sizes[cid]))
                      and (not b or (bufs is not None and bufs.ndim == 2
                                     and bufs.shape[1] == b and r < len(bufs))))
                if ok:
                    rows[cid] = (updates[r], int(nums[r]), float(losses[r]),
                                 None if not b else bufs[r])
                    good += 1
            malformed += len(expected) - good
        return rows, malformed

    def _update(self, rnd: int, kept: list[int], rows: dict[int, tuple]) -> tuple[float, float]:
        """The simulator's pipeline (``FederatedRun._update``) on the replies' rows."""
        import torch

        from fedsim.population.core import CohortResult

        run = self.run
        dev, dtype = run.device, run.params.dtype
        updates = torch.from_numpy(np.stack([rows[c][0] for c in kept])).to(dev, dtype)
        result = CohortResult(
            updates=updates,
            losses=torch.tensor([rows[c][2] for c in kept], dtype=torch.float32, device=dev),
            num_samples=torch.tensor([rows[c][1] for c in kept], dtype=torch.long, device=dev),
            buffers=(None if not run.pop.d_buffers else torch.from_numpy(
                np.stack([rows[c][3] for c in kept])).to(dev, dtype)))
        real = run.trainer
        run.trainer = _Replies(result, kept)
        try:
            return run._update(rnd, kept)
        finally:
            run.trainer = real

    def _record(self, p: _Round, kept: list[int], failed: int, malformed: int,
                train_loss: float | None):
        """The round's row (the clock's times; real counts) and the evaluation's wall time."""
        from fedsim.results.records import RoundRecord

        run, rnd = self.run, p.rnd
        t0 = time.perf_counter()
        test_loss, test_acc = run.evaluate_round(rnd)
        missing = len(p.done) - len(kept)
        bytes_up = max(0, int(p.sched.bytes_up) - missing * int(run.bytes_up))
        cum = self.loop.cum_bytes if self.loop is not None else 0
        record = RoundRecord(
            round=rnd, sim_time_s=p.sched.end_s, round_time_s=p.sched.duration_s,
            bytes_up=bytes_up, bytes_down=p.sched.bytes_down,
            cum_bytes=cum + bytes_up + p.sched.bytes_down,
            selected=len(p.sched.selected), participants=len(kept),
            stragglers=len(p.sched.stragglers), dropped=len(p.sched.dropped) + failed,
            train_loss=train_loss, test_loss=test_loss, test_accuracy=test_acc,
            rejected=run.rejected + malformed)
        return record, time.perf_counter() - t0

    # --------------------------------------------------------------- evaluate
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> list[Message]:
        """No client-side evaluation: the server evaluates on the scenario's test set."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Nothing to aggregate (see ``configure_evaluate``)."""
        return None

    def summary(self) -> None:
        """One line naming the algorithm's pieces."""
        a = self.run.sc.algorithm
        self.log(f"fedsim strategy: {a.name}, aggregator {a.aggregator.get('name', 'mean')}, "
                 f"server optimizer {a.server_opt.get('name', 'sgd')}, "
                 f"compression {a.compress.get('name', 'none')}, "
                 f"privacy {self.run.sc.privacy.mode}")

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable | None = None) -> Result:
        """``num_rounds`` rounds: configure, send and receive (``timeout`` seconds per
        round at most), aggregate. The model is the run's (``run.params``)."""
        self.summary()
        result = Result()
        arrays, config = initial_arrays, train_config or ConfigRecord()
        for rnd in range(1, num_rounds + 1):
            msgs = self.configure_train(rnd, arrays, config, grid)
            if self.stopped:
                break
            replies = send_and_receive(grid, msgs, timeout)
            new, metrics = self.aggregate_train(rnd, replies)
            if new is not None:
                arrays = result.arrays = new
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
        return result


def _plausible_count(value: Any, size: int) -> bool:
    """A reported ``num-examples``: an integer in ``[0, size]``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return False
    return np.isfinite(f) and f == int(f) and 0 <= f <= size


class _Replies:
    """A ``fedsim.distributed.trainer.Trainer`` whose ``train`` answers the rows the nodes
    sent (what ``FederatedRun._update`` calls instead of training in this process)."""

    def __init__(self, result: Any, clients: list[int]):
        self._result, self._clients = result, list(clients)

    def train(self, params: Any, clients: Any, **kwargs: Any) -> Any:
        """The nodes' result, for exactly the clients it was gathered for."""
        if list(clients) != self._clients:
            raise RuntimeError("fedsim.flower: the pipeline asked for other clients than "
                               "those that replied")
        return self._result

    def close(self) -> None:
        """Nothing to release."""
