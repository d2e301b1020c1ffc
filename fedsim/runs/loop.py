"""The bookkeeping every run shares, whatever its family.

A family's run object plays its rounds (or evaluation intervals) and hands each
metrics row to ``RunLoop.emit``, which writes it (``RunWriter``: all files or none),
moves the progress line, calls the user's callback, and every ``checkpoint_every``
rounds (and at the last) writes ``checkpoint.pt`` from the run's ``state_dict``.
``finish`` writes ``summary.json`` however the run ended and, when it completed,
``model.pt``. With ``resume`` the loop starts from the run directory's checkpoint:
the metrics files are cut back to the checkpointed round and appended to, so the
files of a resumed run are byte-identical to those of a run never interrupted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedsim.config import Scenario
from fedsim.results.output import OutputError
from fedsim.results.progress import Progress
from fedsim.results.records import RoundRecord, RunWriter, summarize
from fedsim.runs.checkpoint import load_checkpoint, save_checkpoint, save_model
from fedsim.scenario import to_dict


class RunLoop:
    """Rows, progress, callback, checkpoints and summary of one run.

    Args:
        sc: the run's scenario (``checkpoint_every``, ``rounds``).
        run_dir: the run directory.
        label: names the run on the progress line.
        progress: show the progress line (None: only on a terminal, not in CI).
        device: where a resumed checkpoint's tensors are loaded.
        metric_columns: the user metrics' names (columns after fedsim's own).
        callback: ``fn(row)`` after each row is written (row: ``metrics.jsonl``'s record,
            the user metrics, then ``row_extra`` of ``emit``).
        extra_csv: more per-round CSV files, name -> header (``RunWriter``).
        resume: continue from ``run_dir/checkpoint.pt`` (same scenario and metrics).
        started: ``time.perf_counter()`` when the run started (its set-up included).

    Attributes:
        next_round: the first round to play (1, or the checkpoint's round + 1).
        restored: the run's own part of the checkpoint (``state_dict`` output) to load
            before playing, or None for a fresh run.
    """

    def __init__(self, sc: Scenario, run_dir: Path, *, label: str, progress: bool | None,
                 device: str, metric_columns: Sequence[str] = (),
                 callback: Callable[[dict], Any] | None = None,
                 extra_csv: Mapping[str, Sequence[str]] | None = None, resume: bool = False,
                 started: float | None = None):
        self.sc = sc
        self.run_dir = Path(run_dir)
        self.metric_columns = tuple(metric_columns)
        self.callback = callback
        self.wall_start = time.perf_counter() if started is None else started
        self.scenario = to_dict(sc)
        ckpt = (load_checkpoint(self.run_dir, self.scenario, self.metric_columns, device)
                if resume else None)
        loop = ckpt["loop"] if ckpt else {}
        self.records: list[dict] = loop.get("records", [])
        self.last_extra: dict = loop.get("last_extra", {})
        self.wall_before = loop.get("wall_time_s", 0.0)
        self.restored = ckpt["run"] if ckpt else None
        self.next_round = ckpt["round"] + 1 if ckpt else 1
        self.writer = RunWriter(self.run_dir, extra_csv=extra_csv,
                                metric_columns=self.metric_columns,
                                resume_sizes=loop.get("sizes"))
        if ckpt is None:
            self.writer.write_scenario(self.scenario)
        self.bar = Progress(sc.rounds, label=label, enabled=progress)
        self._last_t = time.perf_counter()

    @property
    def cum_bytes(self) -> int:
        """Bytes sent so far (the last row's ``cum_bytes``)."""
        return self.records[-1]["cum_bytes"] if self.records else 0

    def emit(self, record: RoundRecord, walls: Mapping[str, float],
             metrics: Mapping[str, float], *, extra: Mapping[str, Sequence] | None = None,
             row_extra: Mapping[str, Any] | None = None,
             state: Callable[[], dict] | None = None) -> None:
        """Write one row, then progress, callback and (when due) the checkpoint.

        Args:
            record: the row.
            walls: wall seconds of its parts (``train_wall_s``, ...); the row's total is
                the time since the previous row.
            metrics: the user metrics of the row (empty when not evaluated).
            extra: the row of each ``extra_csv`` file.
            row_extra: more values for the callback (and ``last_extra``, for the summary).
            state: the run's ``state_dict``, called when a checkpoint is due.
        """
        now = time.perf_counter()
        self.writer.append(record, wall_time_s=now - self._last_t, extra=extra,
                           metrics=metrics, **walls)
        self._last_t = now
        row = record.as_dict()
        self.records.append(row)  # after its rows are written: the summary counts it
        self.last_extra = dict(row_extra or {})
        self.bar.update(record.round, record.sim_time_s, record.test_accuracy)
        if self.callback is not None:
            self.callback({**row, **metrics, **self.last_extra})
        every = self.sc.checkpoint_every
        if state is not None and every and (record.round % every == 0
                                            or record.round == self.sc.rounds):
            self.checkpoint(record.round, state())

    def checkpoint(self, rnd: int, run_state: dict) -> None:
        """Write ``checkpoint.pt`` for the state after round ``rnd`` (its rows written)."""
        save_checkpoint(self.run_dir, {
            "round": rnd, "scenario": self.scenario, "metric_columns": self.metric_columns,
            "run": run_state,
            "loop": {"sizes": self.writer.sizes, "records": self.records,
                     "last_extra": self.last_extra, "wall_time_s": self.elapsed()}})

    def elapsed(self) -> float:
        """Wall seconds of the run, over every session that played it."""
        return self.wall_before + time.perf_counter() - self.wall_start

    def finish(self, facts: Mapping[str, Any], model: tuple | None = None) -> dict:
        """Write ``summary.json`` (call from ``finally``) and, when the run completed,
        ``model.pt``; returns the summary.

        Args:
            facts: the run's own summary entries (``run.summary()``, ...).
            model: ``(module, params [d], buffers [b] or None)``, the final global model.
        """
        self.bar.close()
        summary = summarize(self.records)
        summary.update(facts, rounds_completed=len(self.records), wall_time_s=self.elapsed())
        failed = None
        if model is not None and sys.exc_info()[1] is None:
            try:
                summary["model_file"] = save_model(self.run_dir, *model).name
            except OutputError as err:  # the summary is still written, then it is reported
                failed = err
        try:
            self.writer.write_summary(summary)
        finally:
            self.writer.close()
        if failed is not None:
            raise failed
        return summary
