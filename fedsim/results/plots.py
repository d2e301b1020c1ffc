"""Plots and tables of run directories (matplotlib, imported lazily; no torch here).

Figures are built with ``matplotlib.figure.Figure`` directly, never through
``pyplot``: nothing is shown, no GUI backend is touched (so this works on a
headless machine), and the caller's pyplot state and backend are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError
from fedsim.results.output import save_figure
from fedsim.results.records import read_metrics, summarize

FIGSIZE_IN = (6.0, 4.0)
DPI = 120
X_AXES = {
    "round": "round",
    "sim_time_s": "simulated time (s)",
    "cum_bytes": "communication, up + down (bytes)",
}
_X_SHORT = {"round": "round", "sim_time_s": "simulated time", "cum_bytes": "communication"}
_SI_PREFIXES = ("", "k", "M", "G", "T", "P", "E")
_MARKER_MAX_POINTS = 60


def format_bytes(nbytes: float) -> str:
    """A byte count with an SI (decimal) prefix and 3 significant digits.

    Args:
        nbytes: the count (may be fractional or negative, as axis ticks can be).

    Returns:
        Text such as ``"0 B"``, ``"512 B"``, ``"1.5 kB"`` or ``"2.34 GB"``.
    """
    sign = "-" if nbytes < 0 else ""
    value = abs(float(nbytes))
    for prefix in _SI_PREFIXES:
        if float(f"{value:.3g}") < 1000 or prefix == _SI_PREFIXES[-1]:
            return f"{sign}{value:.3g} {prefix}B"
        value /= 1000
    raise AssertionError("unreachable")


def _series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of ``records`` where both are present and finite."""
    xs, ys = [], []
    for rec in records:
        xv, yv = rec.get(x), rec.get(y)
        if xv is None or yv is None or not (math.isfinite(xv) and math.isfinite(yv)):
            continue
        xs.append(xv)
        ys.append(yv)
    return xs, ys


def _new_axes():
    """A fresh (figure, axes) pair of the standard size, off pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    return fig, fig.add_subplot()


def _style_x(ax, x: str) -> None:
    """Label the x axis for the column ``x`` (SI byte ticks for ``cum_bytes``)."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xlabel(X_AXES.get(x, x))
    if x == "cum_bytes":
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v)))


def _save(fig, ax, path: Path, title: str, ylabel: str) -> Path:
    """Title, y label, grid and tight layout, then write ``path`` (atomically; see output)."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(path, lambda tmp: fig.savefig(tmp, dpi=DPI))


def _line(ax, xs: list[float], ys: list[float], **kwargs: Any):
    """Plot one line, with point markers when there are few points."""
    marker = "o" if len(xs) <= _MARKER_MAX_POINTS else None
    (line,) = ax.plot(xs, ys, marker=marker, markersize=3, linewidth=1.5, **kwargs)
    return line


def _note_if_empty(ax, empty: bool, text: str) -> None:
    """Write ``text`` in the middle of empty axes, so a blank plot explains itself."""
    if empty:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _accuracy_plot(records: list[dict[str, Any]], x: str, path: Path, name: str) -> Path:
    """One run's test accuracy against column ``x``, written to ``path``."""
    fig, ax = _new_axes()
    xs, ys = _series(records, x, "test_accuracy")
    _line(ax, xs, ys)
    _note_if_empty(ax, not xs, "no evaluated rounds")
    _style_x(ax, x)
    return _save(fig, ax, path, f"{name}: test accuracy vs {_X_SHORT[x]}",
                 "test accuracy")


def _loss_plot(records: list[dict[str, Any]], path: Path, name: str) -> Path:
    """One run's train and test loss against round, written to ``path``."""
    fig, ax = _new_axes()
    drawn = False
    for key, label in (("train_loss", "train loss"), ("test_loss", "test loss")):
        xs, ys = _series(records, "round", key)
        if xs:
            _line(ax, xs, ys, label=label)
            drawn = True
    if drawn:
        ax.legend()
    _note_if_empty(ax, not drawn, "no losses recorded")
    _style_x(ax, "round")
    return _save(fig, ax, path, f"{name}: loss vs round", "loss")


def plot_run(run_dir: Path | str) -> list[Path]:
    """Write the standard plots of one run into its directory.

    Rounds without a test accuracy (no evaluation) are skipped in the accuracy
    plots; rounds without a loss are skipped in the loss plot.

    Args:
        run_dir: a run directory written by ``RunWriter``.

    Returns:
        The paths of accuracy_vs_round.png, accuracy_vs_time.png,
        accuracy_vs_bytes.png and loss_vs_round.png.

    Raises:
        FedsimError: the directory or its metrics.csv is missing or malformed.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    name = run_dir.resolve().name
    return [
        _accuracy_plot(records, "round", run_dir / "accuracy_vs_round.png", name),
        _accuracy_plot(records, "sim_time_s", run_dir / "accuracy_vs_time.png", name),
        _accuracy_plot(records, "cum_bytes", run_dir / "accuracy_vs_bytes.png", name),
        _loss_plot(records, run_dir / "loss_vs_round.png", name),
    ]


def _labels(run_dirs: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    """The legend labels: given ones (checked), else each directory's name.

    Directory names that repeat (``a/seed0``, ``b/seed0``) fall back to the paths.
    """
    if labels is not None:
        if len(labels) != len(run_dirs):
            raise FedsimError(
                f"got {len(labels)} labels for {len(run_dirs)} run directories; give one per run"
            )
        return [str(label) for label in labels]
    names = [d.resolve().name for d in run_dirs]
    if len(set(names)) < len(names):
        return [str(d) for d in run_dirs]
    return names


def plot_compare(
    run_dirs: Sequence[Path | str],
    out_path: Path | str,
    x: str = "sim_time_s",
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Overlay the test accuracy of several runs, one line per run, each end marked by a dot.

    Args:
        run_dirs: run directories written by ``RunWriter``.
        out_path: the PNG to write (parent directories are created).
        x: the x axis: ``"round"``, ``"sim_time_s"`` or ``"cum_bytes"``.
        labels: legend entries, one per run; default each directory's name.
        title: the plot's title; default "test accuracy vs <x>".

    Returns:
        ``out_path`` as a Path.

    Raises:
        FedsimError: no runs, an unknown ``x``, wrong number of labels, or a
            missing run directory / metrics.csv.
    """
    if x not in X_AXES:
        raise FedsimError(f"x: must be one of {', '.join(X_AXES)}, got {x!r}")
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise FedsimError("plot_compare: no run directories given")
    names = _labels(dirs, labels)
    runs = [read_metrics(d) for d in dirs]
    fig, ax = _new_axes()
    for records, label in zip(runs, names, strict=True):
        xs, ys = _series(records, x, "test_accuracy")
        line = _line(ax, xs, ys, label=label)
        if xs:
            ax.plot(xs[-1:], ys[-1:], "o", markersize=6, color=line.get_color())
    ax.legend(fontsize="small")
    _style_x(ax, x)
    default_title = f"test accuracy vs {_X_SHORT[x]}"
    return _save(fig, ax, Path(out_path), title or default_title, "test accuracy")


def _cell(value: Any, fmt: str) -> str:
    """A table cell: ``value`` formatted, or "n/a" for None."""
    return "n/a" if value is None else format(value, fmt)


def compare_table(run_dirs: Sequence[Path | str], labels: Sequence[str] | None = None) -> str:
    """A Markdown table of several runs' headline numbers (see ``summarize``).

    Args:
        run_dirs: run directories written by ``RunWriter``.
        labels: row names, one per run; default each directory's name.

    Returns:
        The table: run, rounds, final acc, best acc, simulated time (s), total
        bytes (SI units), stragglers, dropped; no trailing newline.

    Raises:
        FedsimError: wrong number of labels, or a missing run directory / metrics.csv.
    """
    dirs = [Path(d) for d in run_dirs]
    lines = [
        "| run | rounds | final acc | best acc | simulated time (s) | total bytes "
        "| stragglers | dropped |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run_dir, label in zip(dirs, _labels(dirs, labels), strict=True):
        s = summarize(read_metrics(run_dir))
        cells = [
            label.replace("|", "\\|"),
            str(s["rounds"]),
            _cell(s["final_accuracy"], ".4f"),
            _cell(s["best_accuracy"], ".4f"),
            _cell(s["sim_time_s"], ".1f"),
            format_bytes(s["total_bytes"]),
            str(s["total_stragglers"]),
            str(s["total_dropped"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
