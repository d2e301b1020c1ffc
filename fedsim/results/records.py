"""Per-round metrics records and the run directory that stores them (no torch here).

A run directory holds:

- ``metrics.csv`` and ``metrics.jsonl``: one row per round, the fields of
  ``METRIC_FIELDS``. Floats are written with ``repr`` (the shortest text that
  parses back to the same float), so two runs of the same scenario and seed give
  byte-identical files.
- ``timing.csv``: wall-clock seconds per round. These differ from run to run, so
  they live apart from the metrics.
- ``summary.json``: ``status`` "running" from the start; at the end the run's
  headline numbers and how it ended (see ``RunWriter.write_summary``).
- ``scenario.toml``: written on request.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import numbers
import operator
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from fedsim.errors import DataError
from fedsim.results.output import (
    STATUS_KEY,
    OutputError,
    ensure_dir,
    output_error,
    write_text,
)
from fedsim.results.toml_writer import to_toml

METRIC_FIELDS = (
    "round",
    "sim_time_s",
    "round_time_s",
    "bytes_up",
    "bytes_down",
    "cum_bytes",
    "selected",
    "participants",
    "stragglers",
    "dropped",
    "train_loss",
    "test_loss",
    "test_accuracy",
    "rejected",
)
TIMING_FIELDS = ("round", "wall_time_s", "train_wall_s", "aggregate_wall_s", "eval_wall_s")

INT_FIELDS = frozenset(
    {"round", "bytes_up", "bytes_down", "cum_bytes", "selected", "participants", "stragglers",
     "dropped", "rejected"}
)
OPTIONAL_FIELDS = frozenset({"train_loss", "test_loss", "test_accuracy"})

METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
TIMING_CSV = "timing.csv"
SUMMARY_JSON = "summary.json"
SCENARIO_TOML = "scenario.toml"


@dataclass(frozen=True)
class RoundRecord:
    """What one round did, in simulated time and bytes; fields are ``METRIC_FIELDS``.

    Counts are coerced to ``int`` and measurements to ``float`` on construction
    (numpy and torch scalars are accepted), so what is written is plain Python.

    Args:
        round: the round's index as the runner numbers it.
        sim_time_s: simulated seconds since the run started, at the round's end.
        round_time_s: simulated seconds the round took.
        bytes_up: bytes clients sent this round.
        bytes_down: bytes the server sent this round.
        cum_bytes: bytes up + down of all rounds so far, this one included.
        selected: clients asked to train.
        participants: clients whose update was aggregated.
        stragglers: selected clients that were neither aggregated nor dropped.
        dropped: selected clients that went offline.
        train_loss: mean training loss, or None.
        test_loss: test loss, or None on rounds without evaluation.
        test_accuracy: test accuracy in [0, 1], or None on rounds without evaluation.
        rejected: received rows set aside before aggregation as non-finite (NaN, inf, or a
            norm beyond the dtype's range; ``fedsim.stages.numerics.reject_nonfinite``).
    """

    round: int
    sim_time_s: float
    round_time_s: float
    bytes_up: int
    bytes_down: int
    cum_bytes: int
    selected: int
    participants: int
    stragglers: int
    dropped: int
    train_loss: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    rejected: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f.name, value))

    def as_dict(self) -> dict[str, int | float | None]:
        """The record as a dict in ``METRIC_FIELDS`` order.

        Returns:
            ``{field: value}`` with plain ``int``/``float``/``None`` values.
        """
        return dict(zip(METRIC_FIELDS, astuple(self), strict=True))


def _coerce(name: str, value: Any) -> int | float | None:
    """Turn ``value`` into the plain Python type of field ``name``."""
    if value is None:
        if name in OPTIONAL_FIELDS:
            return None
        raise TypeError(f"RoundRecord.{name} may not be None")
    if name in INT_FIELDS:
        if isinstance(value, bool):
            raise TypeError(f"RoundRecord.{name} must be an int, got a bool")
        try:
            return operator.index(value)
        except TypeError:
            raise TypeError(
                f"RoundRecord.{name} must be an int, got {type(value).__name__} {value!r}"
            ) from None
    return float(value)


def _fmt(value: int | float | None) -> str:
    """Text for one CSV cell: ints as digits, floats exactly (repr), None as empty."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(float(value))


class RunWriter:
    """Writes one run's directory, a round at a time (see the module docstring).

    Every row is written straight to the files (no buffer), so a crashed run keeps
    the rounds done. A round is written to all three files or to none: if the disk
    fills up part way, the files are cut back to the last whole round and an
    ``OutputError`` names the file. ``summary.json`` says ``"status": "running"``
    from the start; ``write_summary`` records how the run ended.
    Use as a context manager, or call ``close``.

    Args:
        run_dir: the run's directory; created with its parents if missing.
            Existing metrics files in it are overwritten.
        extra_csv: more per-round CSV files, name -> header (e.g. the decentralized
            runner's ``consensus.csv``); ``append``'s ``extra`` gives their rows, which
            are written with the round's others, all or none.
        metric_columns: user metrics (``fedsim.run(..., metrics=)``), columns of
            ``metrics.csv`` and keys of ``metrics.jsonl`` after ``METRIC_FIELDS``;
            ``append``'s ``metrics`` gives their values (None: empty cell).
        resume_sizes: continue a run from a checkpoint: each file's size in bytes when
            the checkpoint was taken (``sizes``). The files are cut back to them (rows
            written after the checkpoint are dropped, to be played again) and appended to.

    Raises:
        OutputError (a FedsimError): the directory or its files cannot be written.
    """

    def __init__(self, run_dir: Path | str, extra_csv: Mapping[str, Sequence[str]] | None = None,
                 metric_columns: Sequence[str] = (),
                 resume_sizes: Mapping[str, int] | None = None):
        self.run_dir = Path(run_dir)
        self.metric_columns = tuple(metric_columns)
        self._outer_error = sys.exc_info()[1]  # a caller's handled error is not this run's
        self.closed = True
        self._files: dict[str, Any] = {}
        self._sizes: dict[str, int] = {}
        ensure_dir(self.run_dir)
        self.closed = False
        extra_csv = dict(extra_csv or {})
        names = (METRICS_CSV, METRICS_JSONL, TIMING_CSV, *extra_csv)
        try:
            for name in names:
                self._files[name] = self._open(name, resume_sizes)
                self._sizes[name] = 0 if resume_sizes is None else resume_sizes[name]
        except OSError as err:
            self.close()
            raise output_error(self.run_dir / name, err) from None
        except DataError:
            self.close()
            raise
        if resume_sizes is not None:
            self._cut_back(self._sizes)
            self._write_json(SUMMARY_JSON, {STATUS_KEY: "running"})
            return
        self._write_rows({METRICS_CSV: _csv_line((*METRIC_FIELDS, *self.metric_columns)),
                          TIMING_CSV: _csv_line(TIMING_FIELDS),
                          **{name: _csv_line(header) for name, header in extra_csv.items()}})
        self._write_json(SUMMARY_JSON, {STATUS_KEY: "running"})

    def _open(self, name: str, resume_sizes: Mapping[str, int] | None):
        """Open ``name`` in the run directory for unbuffered binary writing: truncated, or
        (resuming) positioned at its checkpointed size, which it must have reached."""
        path = self.run_dir / name
        if resume_sizes is None:
            return open(path, "wb", buffering=0)
        size = resume_sizes.get(name)
        have = path.stat().st_size if path.is_file() else None
        if size is None or have is None or have < size:
            self.close()
            found = "missing" if have is None else f"{have} bytes"
            raise DataError(f"{path}: {found}, but the checkpoint was taken at "
                            f"{size} bytes; this run directory cannot be resumed")
        handle = open(path, "r+b", buffering=0)
        handle.seek(size)
        return handle

    @property
    def sizes(self) -> dict[str, int]:
        """Each file's size in bytes after the last whole round (for checkpoints)."""
        return dict(self._sizes)

    def _write_rows(self, lines: Mapping[str, str]) -> None:
        """Append each text line to its file: all of them, or none (files cut back).

        Raises:
            OutputError: a write failed; the files hold what they held before.
        """
        done = dict(self._sizes)
        name = ""
        try:
            for name, text in lines.items():
                _write_bytes(self._files[name], text.encode("utf-8"))
                self._sizes[name] += len(text.encode("utf-8"))
        except OSError as err:
            self._cut_back(done)
            self.close()
            raise output_error(self.run_dir / name, err) from None
        except BaseException:  # Ctrl-C / SIGTERM between two files: no half round either
            self._cut_back(done)
            raise

    def _cut_back(self, sizes: Mapping[str, int]) -> None:
        """Truncate every file to ``sizes`` (the last whole row); errors ignored."""
        for name, size in sizes.items():
            try:
                os.ftruncate(self._files[name].fileno(), size)
            except (OSError, ValueError):
                pass
            self._sizes[name] = size

    def write_scenario(self, scenario: Mapping[str, Any]) -> None:
        """Write the resolved scenario as ``scenario.toml``.

        Args:
            scenario: nested dict of str/int/float/bool/list/dict (None values are
                left out: TOML has no null).
        """
        write_text(self.run_dir / SCENARIO_TOML, to_toml(scenario))

    def append(
        self,
        record: RoundRecord,
        wall_time_s: float,
        train_wall_s: float = 0.0,
        eval_wall_s: float = 0.0,
        aggregate_wall_s: float = 0.0,
        extra: Mapping[str, Iterable[Any]] | None = None,
        metrics: Mapping[str, float | None] | None = None,
    ) -> None:
        """Write one round to metrics.csv, metrics.jsonl, timing.csv and the ``extra_csv``
        files (all or none).

        Args:
            record: the round's simulated metrics.
            wall_time_s: wall-clock seconds the round took on this machine.
            train_wall_s: of which training.
            eval_wall_s: of which evaluation.
            aggregate_wall_s: of which the server's aggregation.
            extra: the round's row (cells) for each ``extra_csv`` file.
            metrics: the round's value of each of ``metric_columns`` (missing: None).

        Raises:
            OutputError: the disk is full (or another write error); the files keep
                every earlier round, whole.
        """
        if self.closed:
            raise ValueError(f"RunWriter for {self.run_dir} is closed")
        row: dict[str, Any] = record.as_dict()
        row.update({name: (metrics or {}).get(name) for name in self.metric_columns})
        timing = (record.round, float(wall_time_s), float(train_wall_s),
                  float(aggregate_wall_s), float(eval_wall_s))
        self._write_rows({
            METRICS_CSV: _csv_line([_fmt(v) for v in row.values()]),
            METRICS_JSONL: json.dumps(row) + "\n",
            TIMING_CSV: _csv_line([_fmt(v) for v in timing]),
            **{name: _csv_line(cells) for name, cells in (extra or {}).items()},
        })

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json`` (sorted keys, indented; numpy scalars and paths allowed).

        A ``status`` is added unless given: ``"complete"``, or, when called while an
        exception propagates (from a ``finally`` block), ``"interrupted"`` for
        Ctrl-C / SIGTERM and ``"failed"`` otherwise. If the summary cannot be
        written while another error propagates, that error is the one reported
        (the summary keeps ``"running"``).

        Args:
            summary: JSON-able dict, e.g. the result of ``summarize``.

        Raises:
            OutputError: it cannot be written (and no other error is propagating).
        """
        pending = sys.exc_info()[1]
        if pending is self._outer_error:  # written inside a caller's ``except``: not ours
            pending = None
        summary = {STATUS_KEY: _status(pending), **summary}
        try:
            self._write_json(SUMMARY_JSON, summary)
        except OutputError:
            self.close()
            if pending is None:
                raise

    def _write_json(self, name: str, value: Mapping[str, Any]) -> None:
        """Write ``value`` as indented JSON to ``name``, atomically."""
        text = json.dumps(value, indent=2, sort_keys=True, default=_json_default) + "\n"
        write_text(self.run_dir / name, text)

    def close(self) -> None:
        """Close the files (safe to call twice)."""
        for handle in self._files.values():
            try:
                handle.close()
            except OSError:
                pass
        self.closed = True

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _status(pending: BaseException | None) -> str:
    """How a run ended, from the exception propagating when its summary is written."""
    if pending is None:
        return "complete"
    return "interrupted" if isinstance(pending, KeyboardInterrupt) else "failed"


def _csv_line(cells: Iterable[Any]) -> str:
    """One CSV row as text, ending in "\\n"."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _write_bytes(handle, data: bytes) -> None:
    """Write all of ``data`` to the unbuffered ``handle`` (a raw write may be partial)."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError(errno.EIO, "write returned no progress")
        view = view[written:]


def _json_default(value: Any) -> Any:
    """Make numpy/torch scalars and paths JSON-able for ``json.dumps``."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"summary value of type {type(value).__name__} is not JSON-able: {value!r}")


# ---------------------------------------------------------------- readers

def metrics_path(run_dir: Path | str) -> Path:
    """The metrics.csv of ``run_dir``, checked to exist.

    Args:
        run_dir: a run directory written by ``RunWriter``.

    Returns:
        The path of its metrics.csv.

    Raises:
        DataError (a FedsimError): the directory or its metrics.csv is missing.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_CSV
    try:
        if not run_dir.is_dir():
            raise DataError(f"run directory not found: {run_dir}")
        if not path.is_file():
            raise DataError(f"no {METRICS_CSV} in run directory {run_dir}")
    except OSError as err:
        raise DataError(f"cannot read {run_dir}: {err.strerror or err}") from None
    return path


def _parse(name: str, text: str) -> int | float | str | None:
    """Parse one CSV cell by its column's type; empty -> None."""
    if text == "":
        return None
    if name in INT_FIELDS:
        return int(text)
    if name in METRIC_FIELDS:
        return float(text)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Read a run's metrics.csv back, numbers parsed exactly, empty cells as None.

    Args:
        run_dir: a run directory written by ``RunWriter``.

    Returns:
        One dict per round, keys in the file's column order.

    Raises:
        DataError (a FedsimError): the directory or file is missing or malformed.
    """
    return _read_csv(metrics_path(run_dir))


def read_timing(run_dir: Path | str) -> list[dict[str, Any]]:
    """Read a run's timing.csv (wall-clock seconds per round); [] if it has none."""
    path = Path(run_dir) / TIMING_CSV
    return _read_csv(path) if path.is_file() else []


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a run CSV with a 'round' column, numbers parsed, empty cells as None.

    Raises:
        DataError: the file cannot be read, is not UTF-8, is cut mid-line, or a
            row does not match the header.
    """
    lines = _csv_text(path).splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        raise DataError(f"{path}: truncated: line {len(lines)} ends without a line end "
                        f"(the run stopped while writing it?); delete that line to read the rest")
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None or "round" not in header:
        raise DataError(f"{path}: no header with a 'round' column")
    rows = []
    for cells in reader:
        if len(cells) != len(header):
            raise DataError(f"{path}, line {reader.line_num}: {len(cells)} cells, the header "
                            f"has {len(header)}")
        try:
            rows.append({k: _parse(k, v) for k, v in zip(header, cells, strict=True)})
        except ValueError as err:
            raise DataError(f"{path}, line {reader.line_num}: {err}") from None
    return rows


def _csv_text(path: Path) -> str:
    """The whole text of a run CSV, checked to be UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                        f"{err.start}); not a file fedsim wrote?") from None


# ---------------------------------------------------------------- summary


def _values(records: list[dict[str, Any]], key: str) -> list[Any]:
    """The non-None, non-NaN values of ``key`` in ``records``, in order."""
    out = []
    for rec in records:
        value = rec.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out.append(value)
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of a run from its per-round records.

    Args:
        records: rows as returned by ``read_metrics`` (or ``RoundRecord.as_dict``).

    Returns:
        A dict with ``rounds`` (rows), ``final_round``, ``final_accuracy``
        (last evaluated), ``best_accuracy`` and ``best_round``,
        ``final_test_loss``, ``final_train_loss``, ``sim_time_s`` (total: the last
        round's ``sim_time_s``), ``total_bytes_up``, ``total_bytes_down``,
        ``total_bytes`` (the last ``cum_bytes``, else up + down),
        ``mean_participants``, ``total_stragglers`` and ``total_dropped``.
        Values with nothing to report are None.
    """
    accs = [(rec["test_accuracy"], rec.get("round")) for rec in records
            if rec.get("test_accuracy") is not None and not math.isnan(rec["test_accuracy"])]
    best = max(accs, key=lambda pair: pair[0], default=(None, None))
    participants = _values(records, "participants")
    up, down = sum(_values(records, "bytes_up")), sum(_values(records, "bytes_down"))
    return {
        "rounds": len(records),
        "final_round": records[-1].get("round") if records else None,
        "final_accuracy": accs[-1][0] if accs else None,
        "best_accuracy": best[0],
        "best_round": best[1],
        "final_test_loss": _last(_values(records, "test_loss")),
        "final_train_loss": _last(_values(records, "train_loss")),
        "sim_time_s": _last(_values(records, "sim_time_s")) or 0.0,
        "total_bytes_up": up,
        "total_bytes_down": down,
        "total_bytes": _last(_values(records, "cum_bytes")) or up + down,
        "mean_participants": sum(participants) / len(participants) if participants else None,
        "total_stragglers": sum(_values(records, "stragglers")),
        "total_dropped": sum(_values(records, "dropped")),
    }


def _last(values: list[Any]) -> Any:
    """The last item, or None for an empty list."""
    return values[-1] if values else None
