"""Run a scenario file: each of its variants in turn (once per seed), then the comparison."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fedsim.config import Scenario
from fedsim.distributed.trainer import RayOptions
from fedsim.errors import ScenarioError
from fedsim.results.output import prepare_study, system_error, write_text
from fedsim.runners import RunResult, run_scenario
from fedsim.scenario import expand_variants, load_scenario
from fedsim.sweep import check_seeds


def run_file(path: str | Path, overrides=(), output_dir: str | None = None,
             only: list[str] | None = None, progress: bool | None = None,
             log=sys.stderr, overwrite: bool = False, seeds: Sequence[int] | None = None,
             fmt: str = "png", resume: str | Path | None = None,
             ray: RayOptions | None = None) -> list[RunResult]:
    """Run every variant of the scenario in ``path`` (once per seed) and compare them.

    Without ``seeds`` each variant runs with the scenario's ``seed`` into
    ``<output_dir>/<name>/<variant>/`` (or ``<output_dir>/<name>/`` without variants).
    With ``seeds`` each variant runs once per seed into ``.../<variant>/seed<k>/``
    (``<output_dir>/<name>/seed<k>/`` without variants), and the comparison shows
    the mean ± std over the seeds of each variant.

    Args:
        path: the scenario TOML file.
        overrides: ``"key.sub=value"`` strings applied before the variants.
        output_dir: replaces the scenario's ``output_dir``.
        only: run just these variants (names as in the file).
        progress: progress line (None: auto, off in CI and when not a terminal).
        log: where one line per finished run is printed.
        overwrite: replace earlier runs in the run folders (and the study's
            comparison); without it, a folder holding a run is an error.
        seeds: run each variant once per seed (distinct integers >= 0), replacing
            the scenario's ``seed``.
        fmt: the format of the figures: ``png``, ``pdf`` or ``svg``.
        resume: a run folder to continue from its ``checkpoint.pt`` instead of starting
            afresh; the scenario (one variant: pick it with ``only``) must be the one it
            was started with.
        ray: train the cohorts on Ray actors (``fedsim.distributed``), one Ray session
            for all the runs; None trains in this process.

    Returns:
        One ``RunResult`` per run, in the file's order (variant by variant, each
        seed in turn). Runs already finished keep their files when a later one fails.

    Raises:
        ScenarioError: ``seeds`` repeats a seed or holds one that is not an integer >= 0.
        OutputError: an output folder cannot be written, or holds an earlier run
            (checked for every run before the first starts).
    """
    from fedsim.results.plots import check_format

    check_format(fmt)
    if seeds is not None:
        seeds = check_seeds(list(seeds), "--seeds")
    path = Path(path)
    sc = load_scenario(path, overrides)
    if output_dir is not None:
        sc = replace(sc, output_dir=output_dir)
    variants = _selected(expand_variants(sc), only)
    study_dir = Path(sc.output_dir) / sc.name
    runs = _plan(variants, study_dir, sc.name, seeds)
    if resume is None:
        prepare_study(study_dir, [run.run_dir for run in runs], overwrite,
                      compare=bool(sc.variants) or seeds is not None)
    with _ray_session(ray):  # one Ray for every run (none without ray)
        if resume is not None:
            return [_resume(runs, Path(resume), path.parent, progress, log, fmt, ray)]
        results = [_run_one(run.scenario, run.run_dir, path.parent, progress, run.label, log,
                            fmt, ray=ray) for run in runs]
    if len(results) > 1:
        groups: dict[str, list[Path]] = {}
        for run, result in zip(runs, results, strict=True):
            groups.setdefault(run.variant, []).append(result.run_dir)
        names = [name or sc.name for name in groups]
        _compare(list(groups.values()), names, study_dir, sc.name, log, fmt)
    print(f"results in {study_dir}", file=log)
    return results


@dataclass(frozen=True)
class _Run:
    variant: str  # "" without variants
    scenario: Scenario
    run_dir: Path
    label: str  # for the progress and result lines


def _plan(variants: list, study_dir: Path, name: str, seeds: list[int] | None) -> list[_Run]:
    """The runs: one per variant, or one per variant and seed (``seed<k>/`` folders)."""
    runs = []
    for variant, sc in variants:
        folder = study_dir / variant if variant else study_dir
        label = f"{name}/{variant}" if variant else name
        if seeds is None:
            runs.append(_Run(variant, sc, folder, label))
            continue
        runs += [_Run(variant, replace(sc, seed=seed), folder / f"seed{seed}",
                      f"{label}/seed{seed}") for seed in seeds]
    return runs


def _selected(runs: list, only: list[str] | None) -> list:
    """The variants named in ``only`` (all when None), checked to exist."""
    if not only:
        return runs
    unknown = [v for v in only if v not in dict(runs)]
    if unknown:
        allowed = ", ".join(name for name, _ in runs if name) or "(the file has no variants)"
        raise ScenarioError("--variant", f"unknown variant {unknown[0]!r}; allowed: {allowed}")
    return [(name, s) for name, s in runs if name in only]


def _resume(runs: list[_Run], run_dir: Path, base_dir: Path, progress, log,
            fmt: str, ray: RayOptions | None = None) -> RunResult:
    """Continue the one planned run in ``run_dir`` from its checkpoint."""
    from fedsim.results.output import check_resumable

    if len(runs) != 1:
        names = sorted({run.variant for run in runs if run.variant})
        what = (f"variants ({', '.join(names)}): pick one with --variant" if len(names) > 1
                else "seeds: resume one seed<k>/ folder without --seeds")
        raise ScenarioError("--resume", f"continues one run, but this plans {len(runs)}; "
                                        f"the scenario has {what}")
    check_resumable(run_dir)
    return _run_one(runs[0].scenario, run_dir, base_dir, progress, runs[0].label, log, fmt,
                    resume=True, ray=ray)


def _run_one(variant, run_dir: Path, base_dir: Path, progress, label: str, log,
             fmt: str, resume: bool = False, ray: RayOptions | None = None) -> RunResult:
    """One run (or the rest of one, ``resume``) and its plots; prints its one-line result."""
    from fedsim.results.plots import plot_run

    try:
        result = run_scenario(variant, run_dir, base_dir=base_dir, progress=progress,
                              label=label, resume=resume, ray=ray)
    except OSError as err:  # e.g. a full disk under a file the runner writes itself
        raise system_error(run_dir, err) from None
    plot_run(run_dir, fmt)
    print(_one_line(label, result), file=log)
    return result


@contextlib.contextmanager
def _ray_session(ray: RayOptions | None) -> Iterator[None]:
    """One Ray session (``fedsim.distributed.session``) for every run of the study."""
    if ray is None:
        yield
        return
    from fedsim.distributed.session import ray_session

    with ray_session(ray.address, num_cpus=ray.local_cpus()):
        yield


def _compare(groups: list[list[Path]], names: list[str], study_dir: Path, title: str,
             log, fmt: str) -> None:
    """The study's comparison plots and ``compare.md`` (printed too); a group of
    several run folders is one variant's seeds (mean ± std)."""
    from fedsim.results.plots import compare_table, plot_compare

    plot_compare(groups, study_dir / f"compare_accuracy_vs_time.{fmt}", x="sim_time_s",
                 labels=names, name=title)
    plot_compare(groups, study_dir / f"compare_accuracy_vs_round.{fmt}", x="round",
                 labels=names, name=title)
    table = compare_table(groups, labels=names)
    write_text(study_dir / "compare.md", table + "\n")
    print(table, file=log)


def _one_line(label: str, result: RunResult) -> str:
    s = result.summary
    acc = s.get("final_accuracy")
    acc_text = "n/a" if acc is None else f"{acc:.3f}"
    return (f"{label}: {s.get('rounds_completed')} rounds, final accuracy {acc_text}, "
            f"simulated {s.get('sim_time_s', 0.0):.1f} s, wall {s.get('wall_time_s', 0.0):.1f} s")
