"""Plots and tables of run directories (matplotlib, imported lazily; no torch here).

Figures are built with ``matplotlib.figure.Figure`` directly, never through
``pyplot``: nothing is shown, no GUI backend is touched (so this works on a
headless machine), and the caller's pyplot state and backend are left alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError
from fedsim.results.output import FIGURE_FORMATS, save_figure
from fedsim.results.records import read_metrics, summarize

FIGSIZE_IN = (6.0, 4.2)
DPI = 120
FORMATS = FIGURE_FORMATS  # png, pdf, svg
RUN_FIGURES = ("accuracy_vs_round", "accuracy_vs_time", "accuracy_vs_bytes", "loss_vs_round")
X_AXES = {
    "round": "round",
    "sim_time_s": "simulated time (s)",
    "cum_bytes": "communication, up + down",
}
_X_SHORT = {"round": "round", "sim_time_s": "simulated time", "cum_bytes": "communication"}
_SI_PREFIXES = ("", "k", "M", "G", "T", "P", "E")
_MARKER_MAX_POINTS = 60
_BAND_POINTS = 200
TRAIN_LOSS_LABEL = "train: clients' local minibatch loss (mean)"
TEST_LOSS_LABEL = "test: global model"
# decentralized runs: no server; the test columns are of the nodes' average model
NODE_LOSS_LABELS = ("train: nodes' local minibatch loss (mean)", "test: nodes' average model")


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


def byte_unit(largest: float) -> tuple[str, float]:
    """The unit of a bytes axis whose largest value is ``largest``: ``("MB", 1e6)`` etc.

    One unit for the whole axis, so the label names the unit the ticks are in.
    """
    value, scale = abs(float(largest)), 1.0
    for prefix in _SI_PREFIXES:
        if value < 1000 * scale or prefix == _SI_PREFIXES[-1]:
            return f"{prefix}B", scale
        scale *= 1000
    raise AssertionError("unreachable")


def check_format(fmt: str) -> str:
    """``fmt`` is one of ``FORMATS`` (png, pdf, svg).

    Raises:
        FedsimError: it is not.
    """
    if fmt not in FORMATS:
        raise FedsimError(f"--format: must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def setup_text(run_dir: Path | str) -> str | None:
    """The setup of a run in words, from its ``scenario.toml``: dataset, partition,
    clients, rounds (None when the file is missing or unreadable).

    Example: ``"digits, dirichlet(α=0.3), 50 clients (10 per round), 40 rounds"``.
    """
    parts = _setup_parts(run_dir)
    return None if parts is None else ", ".join(parts)


def _setup_parts(run_dir: Path | str) -> list[str] | None:
    """dataset, partition, clients (or nodes), rounds: the parts of ``setup_text``."""
    doc = _scenario_doc(run_dir)
    if doc is None:
        return None
    algorithm = doc.get("algorithm", {})
    if isinstance(algorithm, dict) and algorithm.get("name") == "minmax":  # a game or a GAN
        minmax = algorithm.get("minmax", {})
        task = minmax.get("task", {}) if isinstance(minmax, dict) else {}
        network = doc.get("network", {})
        return [f"{task.get('name', 'bilinear')} task", str(network.get("topology", "?")),
                f"{doc.get('rounds', '?')} iterations"]
    data = doc.get("data", {})
    partition = str(data.get("partition", "?"))
    if partition == "dirichlet" and "alpha" in data:
        partition += f"(α={data['alpha']:g})"
    elif partition == "shards" and "shards_per_client" in data:
        partition += f"({data['shards_per_client']}/client)"
    n = data.get("num_clients", "?")
    if _decentralized(doc):
        clients = f"{n} nodes"
    else:
        clients = f"{n} clients ({doc.get('clients_per_round', '?')} per round)"
    return [str(data.get("dataset", "?")), partition, clients, f"{doc.get('rounds', '?')} rounds"]


def _scenario_doc(run_dir: Path | str) -> dict | None:
    """The run's resolved ``scenario.toml`` as a dict (None when missing or unreadable)."""
    import tomllib

    try:
        return tomllib.loads((Path(run_dir) / "scenario.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _decentralized(doc: dict | None) -> bool:
    """The scenario is a decentralized one (nodes, no server)."""
    from fedsim.scenario import DECENTRALIZED_ALGORITHMS

    algorithm = (doc or {}).get("algorithm", {})
    return isinstance(algorithm, dict) and algorithm.get("name") in DECENTRALIZED_ALGORITHMS


def _accuracy_label(run_dirs: Sequence[Path]) -> str:
    """The y label of accuracy: of the global model, or of the nodes' average model
    (decentralized runs), or both in a comparison of the two kinds."""
    kinds = {_decentralized(_scenario_doc(d)) for d in run_dirs}
    if kinds == {True}:
        return "test accuracy (nodes' average model)"
    if kinds == {False}:
        return "test accuracy (global model)"
    return "test accuracy (global or nodes' average model)"


def _common_setup(run_dirs: Sequence[Path]) -> str | None:
    """The parts of the setup all ``run_dirs`` share (``setup_text``); None when none."""
    every = [_setup_parts(d) for d in run_dirs]
    if not every or any(parts is None for parts in every):
        return None
    shared = [part for i, part in enumerate(every[0]) if all(p[i] == part for p in every)]
    return ", ".join(shared) or None


def setup_lines(run_dirs: Sequence[Path]) -> str:
    """The setup the runs share on a new line (for a title), or ""."""
    setup = _common_setup(run_dirs)
    return f"\n{setup}" if setup else ""


# What a run is scored by, in order: test accuracy, else a min-max task's own measure
# (column, axis label, which of two values is better).
HEADLINES = (
    ("test_accuracy", "test accuracy", max),
    ("dist_to_nash", "distance to Nash ||x_bar - x*||", min),
    ("fid", "FID in classifier features (lower is better)", min),
    ("modes_covered", "modes covered", max),
)


def headline(runs: Sequence[list[dict[str, Any]]]) -> tuple[str, str, Any]:
    """``(column, label, better)``: the first of ``HEADLINES`` some row of ``runs`` has."""
    for column, label, better in HEADLINES:
        if any(rec.get(column) is not None for records in runs for rec in records):
            return column, label, better
    return HEADLINES[0]


def _style_y(ax, column: str, ys: Sequence[float]) -> None:
    """A log scale for the distance to Nash (it spans many decades)."""
    if column == "dist_to_nash" and ys and min(ys) > 0:
        ax.set_yscale("log")


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


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0.0 for one value), as ``fedsim sweep``."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def seed_band(series: Sequence[tuple[Sequence[float], Sequence[float]]], x: str
              ) -> tuple[list[float], list[float], list[float]]:
    """Mean and standard deviation across seeds of several (xs, ys) curves: (xs, mean, std).

    Curves on the same x points (rounds, or equal byte counts) are averaged point by
    point (on ``"round"``: the rounds every seed evaluated). Otherwise (simulated time
    differs between seeds) each curve is interpolated linearly onto a common grid
    from the latest first point to the earliest last point, so no curve is extrapolated.
    """
    import numpy as np

    series = [(list(xs), list(ys)) for xs, ys in series if xs]
    if not series:
        return [], [], []
    if all(xs == series[0][0] for xs, _ in series):
        grid = series[0][0]
        values = np.array([ys for _, ys in series], dtype=float)
    elif x == "round":
        common = set(series[0][0]).intersection(*(set(xs) for xs, _ in series[1:]))
        grid = sorted(common)
        values = np.array([[dict(zip(xs, ys, strict=True))[r] for r in grid]
                           for xs, ys in series], dtype=float)
    else:
        lo, hi = max(xs[0] for xs, _ in series), min(xs[-1] for xs, _ in series)
        if hi < lo:
            return [], [], []
        grid = list(np.linspace(lo, hi, _BAND_POINTS)) if hi > lo else [lo]
        values = np.array([np.interp(grid, xs, ys) for xs, ys in series], dtype=float)
    if not len(grid):
        return [], [], []
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros_like(mean)
    return [float(v) for v in grid], mean.tolist(), std.tolist()


def _new_axes():
    """A fresh (figure, axes) pair of the standard size, off pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI)
    return fig, fig.add_subplot()


def _style_x(ax, x: str, largest: float = 0.0) -> None:
    """Label the x axis for the column ``x``, its unit matching the ticks.

    ``cum_bytes`` gets one SI unit for the axis (``largest`` picks it: kB, MB, ...) and
    ticks in that unit; seconds and rounds are plain numbers (no offset or 1e4 factor).
    """
    from matplotlib.ticker import FuncFormatter, MaxNLocator, ScalarFormatter

    if x == "cum_bytes":
        unit, scale = byte_unit(largest)
        ax.set_xlabel(f"{X_AXES[x]} ({unit})")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v / scale:g}"))
        return
    ax.set_xlabel(X_AXES.get(x, x))
    if x == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    ax.xaxis.set_major_formatter(formatter)


def _title(what: str, setup: str | None) -> str:
    return f"{what}\n{setup}" if setup else what


def _save(fig, ax, path: Path, title: str, ylabel: str) -> Path:
    """Title, y label, grid and tight layout, then write ``path`` (atomically; see output)."""
    ax.set_title(title, fontsize="medium")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return save_figure(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format=path.suffix[1:]))


def _line(ax, xs: list[float], ys: list[float], **kwargs: Any):
    """Plot one line, with point markers when there are few points."""
    marker = "o" if len(xs) <= _MARKER_MAX_POINTS else None
    (line,) = ax.plot(xs, ys, marker=marker, markersize=3, linewidth=1.5, **kwargs)
    return line


def _note_if_empty(ax, empty: bool, text: str) -> None:
    """Write ``text`` in the middle of empty axes, so a blank plot explains itself."""
    if empty:
        ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def _accuracy_plot(records: list[dict[str, Any]], x: str, path: Path, name: str,
                   setup: str | None, ylabel: str) -> Path:
    """One run's test accuracy (or its ``headline``) against column ``x``, to ``path``."""
    column, label, _ = headline([records])
    fig, ax = _new_axes()
    xs, ys = _series(records, x, column)
    _line(ax, xs, ys)
    _note_if_empty(ax, not xs, "no evaluated rounds")
    _style_x(ax, x, max(xs, default=0.0))
    _style_y(ax, column, ys)
    return _save(fig, ax, path, _title(f"{name}: {label} vs {_X_SHORT[x]}", setup),
                 ylabel if column == "test_accuracy" else label)


def _loss_plot(records: list[dict[str, Any]], path: Path, name: str, setup: str | None,
               decentralized: bool = False) -> Path:
    """One run's train and test loss against round, written to ``path``.

    ``train_loss`` is labelled as what it is: the clients' (nodes') mean local
    minibatch loss during the round, not the global model's loss on the training set.
    """
    fig, ax = _new_axes()
    drawn = False
    labels = NODE_LOSS_LABELS if decentralized else (TRAIN_LOSS_LABEL, TEST_LOSS_LABEL)
    for key, label in zip(("train_loss", "test_loss"), labels, strict=True):
        xs, ys = _series(records, "round", key)
        if xs:
            _line(ax, xs, ys, label=label)
            drawn = True
    if drawn:
        ax.legend(fontsize="small")
    _note_if_empty(ax, not drawn, "no losses recorded")
    _style_x(ax, "round")
    return _save(fig, ax, path, _title(f"{name}: loss vs round", setup), "loss")


def plot_run(run_dir: Path | str, fmt: str = "png") -> list[Path]:
    """Write the standard plots of one run into its directory.

    Rounds without a test accuracy (no evaluation) are skipped in the accuracy
    plots; rounds without a loss are skipped in the loss plot. Titles name the
    setup (dataset, partition, clients, rounds) when the run has its scenario.toml.

    Args:
        run_dir: a run directory written by ``RunWriter``.
        fmt: the picture format, one of ``FORMATS`` (png, pdf, svg).

    Returns:
        The paths of accuracy_vs_round, accuracy_vs_time, accuracy_vs_bytes and
        loss_vs_round, each with the extension ``fmt``.

    Raises:
        FedsimError: the directory or its metrics.csv is missing or malformed, or
            an unknown format.
    """
    check_format(fmt)
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    name = _run_name(run_dir)
    setup = setup_text(run_dir)
    paths = {stem: run_dir / f"{stem}.{fmt}" for stem in RUN_FIGURES}
    acc = _accuracy_label([run_dir])
    return [
        _accuracy_plot(records, "round", paths["accuracy_vs_round"], name, setup, acc),
        _accuracy_plot(records, "sim_time_s", paths["accuracy_vs_time"], name, setup, acc),
        _accuracy_plot(records, "cum_bytes", paths["accuracy_vs_bytes"], name, setup, acc),
        _loss_plot(records, paths["loss_vs_round"], name, setup,
                   decentralized=_decentralized(_scenario_doc(run_dir))),
    ]


def _run_name(run_dir: Path) -> str:
    """A run's name for titles: its folder, with the variant for a ``seed<k>`` folder."""
    resolved = run_dir.resolve()
    if resolved.name.startswith("seed") and resolved.name[4:].isdigit():
        return f"{resolved.parent.name}/{resolved.name}"
    return resolved.name


def seed_dirs(folder: Path | str) -> list[Path]:
    """The run folders of a seeds folder (``seed<k>/`` holding metrics.csv), by seed."""
    folder = Path(folder)
    found = []
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    for child in children:
        if (child.name.startswith("seed") and child.name[4:].isdigit()
                and (child / "metrics.csv").is_file()):
            found.append((int(child.name[4:]), child))
    return [path for _, path in sorted(found)]


def expand_runs(folder: Path | str) -> list[Path]:
    """A run folder as itself; a folder without metrics.csv holding ``seed<k>/`` runs
    (what ``fedsim run --seeds`` writes) as those runs."""
    folder = Path(folder)
    if not (folder / "metrics.csv").exists():
        seeds = seed_dirs(folder)
        if seeds:
            return seeds
    return [folder]


Group = Path | str | Sequence[Path | str]


def _groups(run_dirs: Sequence[Group]) -> list[list[Path]]:
    """Each item as a list of run folders: a path is one run (or its seeds, see
    ``expand_runs``); a list or tuple of paths is the seeds of one setting."""
    groups = []
    for item in run_dirs:
        if isinstance(item, str | Path):
            groups.append(expand_runs(item))
        else:
            groups.append([Path(d) for d in item])
        if not groups[-1]:
            raise FedsimError("an empty group of run directories; give at least one per setting")
    return groups


def _labels(groups: Sequence[Sequence[Path]], labels: Sequence[str] | None) -> list[str]:
    """The legend labels: given ones (checked), else each directory's name.

    A group of seeds is named by the folder above its runs. Names that repeat
    (``a/seed0``, ``b/seed0``) fall back to the paths.
    """
    if labels is not None:
        if len(labels) != len(groups):
            raise FedsimError(
                f"got {len(labels)} labels for {len(groups)} run directories; give one per run"
            )
        return [str(label) for label in labels]
    dirs = [g[0] if len(g) == 1 else g[0].parent for g in groups]
    names = [_run_name(g[0]) if len(g) == 1 else g[0].parent.resolve().name for g in groups]
    if len(set(names)) < len(names):
        return [str(d) for d in dirs]
    return names


def _seeds_note(groups: Sequence[Sequence[Path]]) -> str | None:
    """"mean ± std over 3 seeds" when some setting has several seeds."""
    counts = sorted({len(g) for g in groups})
    if counts[-1] < 2:
        return None
    n = str(counts[0]) if len(counts) == 1 else "-".join(map(str, (counts[0], counts[-1])))
    return f"mean ± std over {n} seeds"


def plot_compare(
    run_dirs: Sequence[Group],
    out_path: Path | str,
    x: str = "sim_time_s",
    labels: Sequence[str] | None = None,
    title: str | None = None,
    name: str | None = None,
) -> Path:
    """Overlay the test accuracy of several runs, one line per run, each end marked by a dot.

    A setting run with several seeds (a list of its run folders, or a folder of
    ``seed<k>/`` runs) is drawn as the mean across seeds with a ± one standard
    deviation band (``seed_band``); its legend entry and the title say how many seeds.

    Args:
        run_dirs: run directories written by ``RunWriter``, or groups of them (seeds).
        out_path: the picture to write, its extension the format (parents are created).
        x: the x axis: ``"round"``, ``"sim_time_s"`` or ``"cum_bytes"``.
        labels: legend entries, one per run or group; default each directory's name.
        title: the plot's title; default "[name: ]<measure> vs <x>", the measure the runs'
            ``headline`` (test accuracy, or a min-max task's). The setup the runs share
            (dataset, partition, clients, rounds) is added below it.
        name: the study's name, at the start of the default title.

    Returns:
        ``out_path`` as a Path.

    Raises:
        FedsimError: no runs, an unknown ``x``, wrong number of labels, or a
            missing run directory / metrics.csv.
    """
    if x not in X_AXES:
        raise FedsimError(f"x: must be one of {', '.join(X_AXES)}, got {x!r}")
    if not run_dirs:
        raise FedsimError("plot_compare: no run directories given")
    groups = _groups(run_dirs)
    names = _labels(groups, labels)
    records = {d: read_metrics(d) for g in groups for d in g}
    column, measure, _ = headline(list(records.values()))
    fig, ax = _new_axes()
    largest, every_y = 0.0, []
    for group, label in zip(groups, names, strict=True):
        series = [_series(records[d], x, column) for d in group]
        every_y += [y for _, ys in series for y in ys]
        largest = max([largest] + [max(xs, default=0.0) for xs, _ in series])
        if len(group) == 1:
            xs, ys = series[0]
            line = _line(ax, xs, ys, label=label)
        else:
            xs, ys, std = seed_band(series, x)
            line = _line(ax, xs, ys, label=f"{label} (n={len(group)} seeds)")
            ax.fill_between(xs, [m - s for m, s in zip(ys, std, strict=True)],
                            [m + s for m, s in zip(ys, std, strict=True)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        if xs:
            ax.plot(xs[-1:], ys[-1:], "o", markersize=6, color=line.get_color())
    ax.legend(fontsize="small")
    _style_x(ax, x, largest)
    _style_y(ax, column, every_y)
    what = title or f"{name + ': ' if name else ''}{measure} vs {_X_SHORT[x]}"
    note = _seeds_note(groups)
    if note:
        what += f" ({note})"
    every = [d for g in groups for d in g]
    return _save(fig, ax, Path(out_path), _title(what, _common_setup(every)),
                 _accuracy_label(every) if column == "test_accuracy" else measure)


def _cell(value: Any, fmt: str) -> str:
    """A table cell: ``value`` formatted, or "n/a" for None."""
    return "n/a" if value is None else format(value, fmt)


def _pm(values: Sequence[Any], fmt: str, text=None) -> str:
    """``mean ± std`` of the values that are not None ("n/a" when none are)."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return "n/a"
    mean, std = mean_std(present)
    show = text or (lambda v: format(v, fmt))
    return f"{show(mean)} ± {show(std)}"


def _scored(summary: dict[str, Any], records: list[dict[str, Any]], column: str,
            better) -> dict[str, Any]:
    """``summary`` with ``final_accuracy``/``best_accuracy`` replaced by the final and best
    value of ``column`` when the run is scored by another headline than accuracy."""
    if column == "test_accuracy":
        return summary
    values = _values_of(records, column)
    return {**summary, "final_accuracy": values[-1] if values else None,
            "best_accuracy": better(values) if values else None}


def _values_of(records: list[dict[str, Any]], column: str) -> list[float]:
    """The finite values of ``column``, in row order."""
    return [r[column] for r in records
            if r.get(column) is not None and math.isfinite(r[column])]


def compare_table(run_dirs: Sequence[Group], labels: Sequence[str] | None = None) -> str:
    """A Markdown table of several runs' headline numbers (see ``summarize``).

    With several seeds of a setting (a list of its run folders, or a folder of
    ``seed<k>/`` runs), its row gives ``mean ± std`` over the seeds (sample standard
    deviation, as ``fedsim sweep``) and a ``seeds`` column says how many.

    Args:
        run_dirs: run directories written by ``RunWriter``, or groups of them (seeds).
        labels: row names, one per run or group; default each directory's name.

    Returns:
        The table: run, (seeds,) rounds, final acc, best acc, simulated time (s),
        total bytes (SI units), stragglers, dropped; no trailing newline. Runs scored by
        another ``headline`` (a min-max task's) give its final and best value instead of
        the accuracy's, under the column's name.

    Raises:
        FedsimError: wrong number of labels, or a missing run directory / metrics.csv.
    """
    groups = _groups(run_dirs)
    seeds = any(len(g) > 1 for g in groups)
    head = "| run | seeds " if seeds else "| run "
    records = {d: read_metrics(d) for g in groups for d in g}
    column, _, better = headline(list(records.values()))
    short = "acc" if column == "test_accuracy" else column
    score = ".4f" if column == "test_accuracy" else ".3g"  # distances span many decades
    lines = [
        head + f"| rounds | final {short} | best {short} | simulated time (s) | total bytes "
        "| stragglers | dropped |",
        "|---|" + ("---:|" * (8 if seeds else 7)),
    ]
    for group, label in zip(groups, _labels(groups, labels), strict=True):
        sums = [_scored(summarize(records[d]), records[d], column, better) for d in group]
        cells = [label.replace("|", "\\|")] + ([str(len(group))] if seeds else [])
        if len(group) == 1:
            s = sums[0]
            cells += [
                str(s["rounds"]),
                _cell(s["final_accuracy"], score),
                _cell(s["best_accuracy"], score),
                _cell(s["sim_time_s"], ".1f"),
                format_bytes(s["total_bytes"]),
                str(s["total_stragglers"]),
                str(s["total_dropped"]),
            ]
        else:
            rounds = {s["rounds"] for s in sums}
            cells += [
                str(rounds.pop()) if len(rounds) == 1 else _pm([s["rounds"] for s in sums], ".1f"),
                _pm([s["final_accuracy"] for s in sums], score),
                _pm([s["best_accuracy"] for s in sums], score),
                _pm([s["sim_time_s"] for s in sums], ".1f"),
                _pm([s["total_bytes"] for s in sums], "", text=format_bytes),
                _pm([s["total_stragglers"] for s in sums], ".1f"),
                _pm([s["total_dropped"] for s in sums], ".1f"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
