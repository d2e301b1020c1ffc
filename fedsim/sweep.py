"""``fedsim sweep FILE``: a grid of runs (e.g. aggregator x attack x seed), resumable.

The grid is the scenario's ``[sweep]`` table::

    [sweep]
    seeds = [0, 1, 2]
    [sweep.axes.aggregator]
    mean = { "algorithm.aggregator" = { name = "mean" } }
    gm = { "algorithm.aggregator" = { name = "gm" } }
    [sweep.axes.attack]
    clean = { "attack.name" = "none" }
    bitflip_20 = { "attack.name" = "sign_flip", "attack.fraction" = 0.2 }

Each cell (one label per axis, one seed) is a run in
``output_dir/name/sweep/<label>__<label>__seed<k>/``. A cell whose run folder
already holds a finished run of the same resolved scenario is not run again
(a killed sweep resumes where it stopped); a cell folder holding a run of other
settings is refused in one line before anything runs, unless ``overwrite`` (the
CLI's ``--overwrite``), which runs the whole grid again. Labels and axis names are
folder names (the rule for variant names, at most 255 bytes); two cells whose
labels join to the same folder, a repeated seed, or a grid of more than
``MAX_CELLS`` (10,000) cells are errors before anything runs.
The summary (CSV and Markdown: accuracy mean and spread over seeds, simulated
time, aggregation time) and a plot go to ``output_dir/name/``.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fedsim.config import Scenario
from fedsim.errors import ScenarioError
from fedsim.results.output import (
    NAME_MAX_BYTES,
    RUN_FILES,
    SWEEP_FILES,
    ensure_dir,
    refusal,
    remove_files,
    run_status,
    save_figure,
    system_error,
    write_text,
)
from fedsim.results.records import read_timing
from fedsim.results.toml_writer import to_toml
from fedsim.scenario import (
    apply_overrides,
    flatten,
    from_dict,
    load_scenario,
    to_dict,
    validate_scenario,
)

MAX_CELLS = 10_000
SUMMARY_COLUMNS = ("seed", "seeds", "accuracy_mean", "accuracy_std", "diverged", "sim_time_s",
                   "aggregate_ms_per_round", "aggregate_s_per_round", "final_accuracy",
                   "backdoor_success")
_BAD_CHARS = "/\\:*?\"<>| "


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    labels: tuple[tuple[str, str], ...]  # (axis, label) in axis order
    seed: int
    scenario: Scenario

    @property
    def key(self) -> str:
        """The cell's folder name: its labels and seed joined with ``__``."""
        return "__".join([label for _, label in self.labels] + [f"seed{self.seed}"])


def plan(sc: Scenario, base_dir: Path) -> list[Cell]:
    """Every cell of the scenario's grid, each validated before anything runs.

    Raises:
        ScenarioError: a malformed ``[sweep]`` table, a label that is not a safe
            folder name, two cells sharing a folder, more than ``MAX_CELLS`` cells,
            or a cell whose scenario is invalid.
    """
    seeds, axes = _spec(sc)
    base = to_dict(replace(sc, sweep={}, variants={}))
    choices = [[(axis, label, ov) for label, ov in labels.items()] for axis, labels in axes.items()]
    cells = [_cell(base, combo, seed, base_dir)
             for combo in itertools.product(*choices) for seed in seeds]
    _check_folders(cells)
    return cells


def _spec(sc: Scenario) -> tuple[list[int], Mapping]:
    """The checked seeds and axes of the scenario's ``[sweep]`` table."""
    spec = sc.sweep
    if not spec:
        raise ScenarioError("sweep", "the scenario has no [sweep] table; add seeds and axes "
                                     "(see docs/scenarios.md)")
    unknown = set(spec) - {"seeds", "axes"}
    if unknown:
        raise ScenarioError(f"sweep.{sorted(unknown)[0]}", "unknown key; allowed: seeds, axes")
    seeds = check_seeds(spec.get("seeds", [sc.seed]))
    axes = spec.get("axes", {})
    if not isinstance(axes, Mapping):
        raise ScenarioError("sweep.axes", "must be a table of axes")
    for axis, labels in axes.items():
        _check_name(axis, f"sweep.axes.{axis}")
        if axis in SUMMARY_COLUMNS:
            raise ScenarioError(f"sweep.axes.{axis}", f"{axis!r} is a column of the sweep "
                                                      f"summary; choose another axis name")
        if not isinstance(labels, Mapping) or not labels:
            raise ScenarioError(f"sweep.axes.{axis}", "must be a non-empty table of "
                                                      "label = { dotted.key = value }")
        for label in labels:
            _check_name(label, f"sweep.axes.{axis}.{label}")
    _check_count(len(seeds), axes)
    return seeds, axes


def check_seeds(seeds, key: str = "sweep.seeds") -> list[int]:
    """Seeds checked: a non-empty list of distinct integers >= 0 (``key`` names them
    in the error: ``sweep.seeds``, or ``--seeds`` of ``fedsim run``)."""
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ScenarioError(key, f"must be a non-empty list of integers >= 0, got {seeds!r}")
    repeated = [s for s in dict.fromkeys(seeds) if seeds.count(s) > 1]
    if repeated:
        raise ScenarioError(key, f"seed {repeated[0]} is listed more than once; "
                                 f"each seed is one run")
    return seeds


def _check_name(name: str, key: str) -> None:
    """An axis name or label is usable as one folder name (the rule for variant names)."""
    if (not name or any(ch in name for ch in _BAD_CHARS) or name.startswith(".")
            or not name.isprintable()):
        raise ScenarioError(key, "must be a non-empty name without spaces, control characters "
                                 "or / \\ : * ? \" < > |, not starting with '.'")
    if len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise ScenarioError(key, f"name too long ({len(name.encode('utf-8'))} bytes; at most "
                                 f"{NAME_MAX_BYTES} bytes: it names a folder)")


def _check_count(n_seeds: int, axes: Mapping) -> None:
    """Refuse a grid of more than ``MAX_CELLS`` cells before building any."""
    count = n_seeds * math.prod(len(labels) for labels in axes.values())
    if count > MAX_CELLS:
        sizes = " x ".join([str(len(labels)) for labels in axes.values()] + [f"{n_seeds} seeds"])
        raise ScenarioError("sweep", f"the grid has {count:,} cells ({sizes}), more than the "
                                     f"limit of {MAX_CELLS:,}; split it into several sweeps")


def _check_folders(cells: list[Cell]) -> None:
    """Each cell gets its own folder (labels joined with '__' may collide), of a legal length."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        if len(cell.key.encode("utf-8")) > NAME_MAX_BYTES:
            raise ScenarioError("sweep.axes", f"the cell folder {cell.key[:40]}... is longer than "
                                              f"{NAME_MAX_BYTES} bytes; use shorter labels")
        other = seen.setdefault(cell.key.casefold(), cell)
        if other is not cell:
            raise ScenarioError("sweep.axes", f"cells {_where(other)} and {_where(cell)} would "
                                              f"share the folder {cell.key!r} (labels are joined "
                                              f"with '__'); rename a label")


def _where(cell: Cell) -> str:
    """A cell as ``axis=label/axis=label/seed=k``."""
    return "/".join([f"{axis}={label}" for axis, label in cell.labels] + [f"seed={cell.seed}"])


def _cell(base: dict, combo: tuple, seed: int, base_dir: Path) -> Cell:
    raw = base
    for axis, label, overrides in combo:
        key = f"sweep.axes.{axis}.{label}"
        if not isinstance(overrides, Mapping):
            raise ScenarioError(key, "must be a table of dotted keys and values")
        try:
            raw = apply_overrides(raw, flatten(overrides).items())
        except ScenarioError as err:
            raise ScenarioError(f"{key}.{err.key}", err.message) from None
    raw = apply_overrides(raw, [("seed", seed)])
    try:
        scenario = from_dict(raw)
        validate_scenario(scenario, base_dir)
    except ScenarioError as err:
        where = ".".join(f"{axis}={label}" for axis, label, _ in combo)
        raise ScenarioError(f"sweep cell {where}: {err.key}", err.message) from None
    return Cell(labels=tuple((axis, label) for axis, label, _ in combo), seed=seed,
                scenario=scenario)


def is_done(run_dir: Path, scenario: Scenario) -> bool:
    """A finished run of exactly this scenario is already in ``run_dir``."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        same = _same_settings(run_dir, scenario)
    except (OSError, ValueError):
        return False
    return (same and isinstance(summary, dict) and summary.get("status", "complete") == "complete"
            and summary.get("rounds_completed") == scenario.rounds)


def _same_settings(run_dir: Path, scenario: Scenario) -> bool:
    """``run_dir``'s scenario.toml is this scenario's."""
    try:
        text = (run_dir / "scenario.toml").read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    return text == to_toml(to_dict(scenario))


def prepare_sweep(study: Path, cells: list[Cell], output_dir: str, overwrite: bool) -> None:
    """Check the sweep's folders before any cell runs.

    A cell folder holding a run of other settings is refused (one line) unless
    ``overwrite``; with it, every cell's files and the sweep summary are removed,
    so the whole grid runs again. A run of the same settings, finished or not,
    is what resuming continues from.

    Raises:
        OutputError: a folder cannot be written, or holds a run of other settings.
    """
    ensure_dir(study)
    dirs = [study / "sweep" / cell.key for cell in cells]
    if overwrite:
        for run_dir in dirs:
            remove_files(run_dir, RUN_FILES)
        remove_files(study, SWEEP_FILES)
        return
    for cell, run_dir in zip(cells, dirs, strict=True):
        if run_status(run_dir) is not None and not _same_settings(
                run_dir, replace(cell.scenario, output_dir=output_dir)):
            raise refusal(run_dir, "a run of other settings (its scenario.toml differs)")


def run_sweep(path: str | Path, overrides=(), output_dir: str | None = None,
              progress: bool | None = None, log=sys.stderr, overwrite: bool = False,
              fmt: str = "png") -> Path:
    """Run (or resume) the grid of the scenario file; returns the study folder.

    Args:
        path: the scenario file with a ``[sweep]`` table.
        overrides: ``key=value`` strings applied to the base scenario.
        output_dir: replaces the scenario's ``output_dir``.
        progress: the per-run progress line (None: auto).
        log: one line per cell.
        overwrite: run every cell again, replacing earlier runs (see ``prepare_sweep``).
        fmt: the format of the plot: ``png``, ``pdf`` or ``svg``.
    """
    from fedsim.results.plots import check_format, setup_lines

    check_format(fmt)
    path = Path(path)
    sc = load_scenario(path, overrides)
    if output_dir is not None:
        sc = replace(sc, output_dir=output_dir)
    cells = plan(sc, path.parent)
    study = Path(sc.output_dir) / sc.name
    prepare_sweep(study, cells, sc.output_dir, overwrite)
    rows = [_run_cell(cell, n, len(cells), study, sc.output_dir, path.parent, progress, log)
            for n, cell in enumerate(cells, 1)]
    table = aggregate_rows(rows, [axis for axis, _ in cells[0].labels])
    write_tables(table, study)
    setup = setup_lines([study / "sweep" / cell.key for cell in cells])
    plot_sweep(table, study / f"sweep.{fmt}", title=f"{sc.name}: final accuracy{setup}")
    print((study / "sweep_summary.md").read_text(encoding="utf-8"), file=log)
    print(f"results in {study}", file=log)
    return study


def _run_cell(cell: Cell, n: int, total: int, study: Path, output_dir: str, base_dir: Path,
              progress: bool | None, log) -> dict:
    """Run one cell unless it is done already; its summary row."""
    from fedsim.runners import run_scenario

    run_dir = study / "sweep" / cell.key
    cell_sc = replace(cell.scenario, output_dir=output_dir)
    if is_done(run_dir, cell_sc):
        status = "done before"
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    else:
        try:
            summary = run_scenario(cell_sc, run_dir, base_dir=base_dir, progress=progress,
                                   label=f"{n}/{total} {cell.key}").summary
        except OSError as err:  # e.g. a full disk under a file the runner writes itself
            raise system_error(run_dir, err) from None
        status = "ran"
    acc = summary.get("final_accuracy")
    print(f"[{n}/{total}] {cell.key}: {status}, final accuracy "
          f"{'n/a' if acc is None else f'{acc:.3f}'}", file=log)
    return _row(cell, run_dir, summary)


def _row(cell: Cell, run_dir: Path, summary: dict) -> dict:
    timing = read_timing(run_dir)
    agg = [r["aggregate_wall_s"] for r in timing if r.get("aggregate_wall_s") is not None]
    return {**dict(cell.labels), "seed": cell.seed,
            "final_accuracy": summary.get("final_accuracy"),
            "sim_time_s": summary.get("sim_time_s"),
            "aggregate_s_per_round": statistics.fmean(agg) if agg else None,
            "diverged": summary.get("diverged_round") is not None,
            "backdoor_success": summary.get("backdoor_success")}


def aggregate_rows(rows: list[dict], axes: list[str]) -> list[dict]:
    """One row per combination of labels: mean and spread over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[a] for a in axes), []).append(row)
    table = []
    for labels, members in groups.items():
        accs = [m["final_accuracy"] for m in members if m["final_accuracy"] is not None]
        aggs = [m["aggregate_s_per_round"] for m in members
                if m["aggregate_s_per_round"] is not None]
        backdoor = [m["backdoor_success"] for m in members if m["backdoor_success"] is not None]
        table.append({
            **dict(zip(axes, labels, strict=True)),
            "seeds": len(members),
            "accuracy_mean": statistics.fmean(accs) if accs else None,
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "diverged": sum(m["diverged"] for m in members),
            "sim_time_s": statistics.fmean(m["sim_time_s"] for m in members),
            "aggregate_ms_per_round": 1e3 * statistics.fmean(aggs) if aggs else None,
            "backdoor_success": statistics.fmean(backdoor) if backdoor else None,
        })
    return table


def write_tables(table: list[dict], study: Path) -> None:
    """``sweep_summary.csv`` and ``sweep_summary.md`` in ``study`` (each written atomically)."""
    study.mkdir(parents=True, exist_ok=True)
    fields = list(table[0])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    write_text(study / "sweep_summary.csv", buffer.getvalue())
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    for row in table:
        lines.append("| " + " | ".join(_cell_text(row[f]) for f in fields) + " |")
    write_text(study / "sweep_summary.md", "\n".join(lines) + "\n")


def _cell_text(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_sweep(table: list[dict], out: Path, title: str) -> Path:
    """Grouped bars: the last axis along x, one bar per label of the other axes."""
    from matplotlib.figure import Figure

    axes = [k for k in table[0] if k not in SUMMARY_COLUMNS]
    if not axes:  # a seeds-only sweep: one bar
        table, axes = [{"run": "all seeds", **row} for row in table], ["run"]
    x_axis = axes[-1]
    xs = list(dict.fromkeys(r[x_axis] for r in table))
    series = list(dict.fromkeys(tuple(r[a] for a in axes[:-1]) for r in table))
    width_in = min(11.0, max(6.0, 0.3 * len(xs) * max(1, len(series)) + 3.0))
    fig = Figure(figsize=(width_in, 4.5), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for s, key in enumerate(series):
        by_x = {r[x_axis]: r for r in table if tuple(r[a] for a in axes[:-1]) == key}
        means = [(by_x[x]["accuracy_mean"] or 0.0) if x in by_x else 0.0 for x in xs]
        stds = [by_x[x]["accuracy_std"] if x in by_x else 0.0 for x in xs]
        pos = [i + (s - (len(series) - 1) / 2) * width for i in range(len(xs))]
        ax.bar(pos, means, width, yerr=stds, capsize=2, label=" / ".join(key) or "run")
    ax.set_xticks(range(len(xs)), xs, rotation=20, ha="right")
    ax.set_xlabel(x_axis)
    counts = sorted({r["seeds"] for r in table})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    ax.set_ylabel(f"final test accuracy\n(mean ± std over {n} seed{'s' * (n != '1')})")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    if series and series[0]:
        ax.legend(title=" / ".join(axes[:-1]), fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_figure(out, fig.savefig)
