"""Run a scenario file: each of its variants in turn, then one comparison plot."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from fedsim.errors import ScenarioError
from fedsim.results.output import prepare_study, system_error, write_text
from fedsim.runners import RunResult, run_scenario
from fedsim.scenario import expand_variants, load_scenario


def run_file(path: str | Path, overrides=(), output_dir: str | None = None,
             only: list[str] | None = None, progress: bool | None = None,
             log=sys.stderr, overwrite: bool = False) -> list[RunResult]:
    """Run every variant of the scenario in ``path`` and compare them.

    Args:
        path: the scenario TOML file.
        overrides: ``"key.sub=value"`` strings applied before the variants.
        output_dir: replaces the scenario's ``output_dir``.
        only: run just these variants (names as in the file).
        progress: progress line (None: auto, off in CI and when not a terminal).
        log: where one line per finished run is printed.
        overwrite: replace earlier runs in the run folders (and the study's
            comparison); without it, a folder holding a run is an error.

    Returns:
        One ``RunResult`` per run, in the file's order. Runs already finished
        keep their files when a later one fails.

    Raises:
        OutputError: an output folder cannot be written, or holds an earlier run
            (checked for every run before the first starts).
    """
    path = Path(path)
    sc = load_scenario(path, overrides)
    if output_dir is not None:
        sc = replace(sc, output_dir=output_dir)
    runs = _selected(expand_variants(sc), only)
    study_dir = Path(sc.output_dir) / sc.name
    run_dirs = [study_dir / name if name else study_dir for name, _ in runs]
    prepare_study(study_dir, run_dirs, overwrite, compare=bool(sc.variants))
    results = []
    for (name, variant), run_dir in zip(runs, run_dirs, strict=True):
        label = f"{sc.name}/{name}" if name else sc.name
        results.append(_run_one(variant, run_dir, path.parent, progress, label, log))
    if len(results) > 1:
        _compare(results, [name for name, _ in runs], study_dir, sc.name, log)
    print(f"results in {study_dir}", file=log)
    return results


def _selected(runs: list, only: list[str] | None) -> list:
    """The variants named in ``only`` (all when None), checked to exist."""
    if not only:
        return runs
    unknown = [v for v in only if v not in dict(runs)]
    if unknown:
        allowed = ", ".join(name for name, _ in runs if name) or "(the file has no variants)"
        raise ScenarioError("--variant", f"unknown variant {unknown[0]!r}; allowed: {allowed}")
    return [(name, s) for name, s in runs if name in only]


def _run_one(variant, run_dir: Path, base_dir: Path, progress, label: str, log) -> RunResult:
    """One run and its plots; prints its one-line result."""
    from fedsim.results.plots import plot_run

    try:
        result = run_scenario(variant, run_dir, base_dir=base_dir, progress=progress,
                              label=label)
    except OSError as err:  # e.g. a full disk under a file the runner writes itself
        raise system_error(run_dir, err) from None
    plot_run(run_dir)
    print(_one_line(label, result), file=log)
    return result


def _compare(results: list[RunResult], names: list[str], study_dir: Path, title: str,
             log) -> None:
    """The study's comparison plots and ``compare.md`` (printed too)."""
    from fedsim.results.plots import compare_table, plot_compare

    dirs = [r.run_dir for r in results]
    plot_compare(dirs, study_dir / "compare_accuracy_vs_time.png", x="sim_time_s",
                 labels=names, title=f"{title}: accuracy vs simulated time")
    plot_compare(dirs, study_dir / "compare_accuracy_vs_round.png", x="round",
                 labels=names, title=f"{title}: accuracy vs round")
    table = compare_table(dirs, labels=names)
    write_text(study_dir / "compare.md", table + "\n")
    print(table, file=log)


def _one_line(label: str, result: RunResult) -> str:
    s = result.summary
    acc = s.get("final_accuracy")
    acc_text = "n/a" if acc is None else f"{acc:.3f}"
    return (f"{label}: {s.get('rounds_completed')} rounds, final accuracy {acc_text}, "
            f"simulated {s.get('sim_time_s', 0.0):.1f} s, wall {s.get('wall_time_s', 0.0):.1f} s")
