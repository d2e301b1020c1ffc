"""Output folders: checked before a run, earlier results never silently replaced (no torch).

- ``prepare_study`` makes (or checks) the study folder and refuses, in one line,
  when a run folder about to be written already holds a run, unless told to
  overwrite; then only fedsim's own files are removed (never a user's folder).
- ``run_status`` reads a run folder's state from its ``summary.json``:
  ``"running"`` is written when a run starts (a run killed with SIGKILL, or that
  stopped on a full disk, keeps it), ``"interrupted"`` (Ctrl-C, SIGTERM),
  ``"failed"`` (an error) and ``"complete"`` when it ends.
- ``save_figure`` writes a figure through a temporary file, so a full disk
  never leaves a torn picture in place of an earlier one.
- Every ``OSError`` on the way becomes an ``OutputError``: one line naming the path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from fedsim.errors import FedsimError

NAME_MAX_BYTES = 255
STATUS_KEY = "status"

FIGURE_FORMATS = ("png", "pdf", "svg")  # the formats of --format; the figures in each


def _figures(*stems: str) -> tuple[str, ...]:
    return tuple(f"{stem}.{ext}" for stem in stems for ext in FIGURE_FORMATS)


RUN_FILES = (
    "metrics.csv", "metrics.jsonl", "timing.csv", "summary.json", "scenario.toml",
    "consensus.csv", "checkpoint.pt", "model.pt",
    *_figures("accuracy_vs_round", "accuracy_vs_time", "accuracy_vs_bytes", "loss_vs_round"),
)
COMPARE_FILES = ("compare.md",
                 *_figures("compare_accuracy_vs_time", "compare_accuracy_vs_round"))
SWEEP_FILES = ("sweep_summary.csv", "sweep_summary.md", *_figures("sweep"))


class OutputError(FedsimError):
    """An output file or folder cannot be written (read-only, full, not a folder, ...)."""


def output_error(path: Path | str, err: OSError, doing: str = "cannot write") -> OutputError:
    """One line naming ``path`` and the system's reason (``err.strerror``)."""
    reason = err.strerror or str(err) or type(err).__name__
    if isinstance(err, FileExistsError | NotADirectoryError):
        reason = "a part of the path is a file, not a folder"
    return OutputError(f"{doing} {path}: {reason}")


def system_error(where: Path, err: OSError) -> OutputError:
    """A system error escaping a run (a file the runner wrote itself, say) as one line."""
    return OutputError(f"{err.filename or where}: {err.strerror or err}")


def check_name_length(path: Path) -> None:
    """Each component of ``path`` fits a file name (at most 255 bytes).

    Raises:
        OutputError: names the component that is too long.
    """
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX_BYTES:
            raise OutputError(f"output folder name too long ({size} bytes, at most "
                              f"{NAME_MAX_BYTES}): {part[:40]}...")


def ensure_dir(path: Path) -> None:
    """Create ``path`` (and parents) and check that files can be written in it.

    Raises:
        OutputError: it cannot be created, is not a folder, or is not writable.
    """
    check_name_length(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise output_error(path, err, "cannot create the output folder") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in the output folder {path}: not writable")


def _exists(path: Path) -> bool:
    """``path`` exists; False when it cannot be looked at."""
    try:
        return path.exists()
    except OSError:
        return False


def run_status(run_dir: Path) -> str | None:
    """The state of the run in ``run_dir``: None when it holds no run files.

    Returns:
        ``"complete"``, ``"interrupted"``, ``"failed"``, ``"running"`` (or killed),
        or ``"unknown"`` (files without a readable summary).
    """
    if not any(_exists(run_dir / name) for name in RUN_FILES):
        return None
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown"
    if not isinstance(summary, dict):
        return "unknown"
    return str(summary.get(STATUS_KEY, "complete" if "rounds_completed" in summary else "unknown"))


def check_resumable(run_dir: Path) -> None:
    """Refuse, in one line, to resume a folder that holds no run or a finished one."""
    status = run_status(run_dir)
    if status is None:
        raise OutputError(f"{run_dir}: no run to resume here (no metrics or summary files)")
    if status == "complete":
        raise OutputError(f"{run_dir}: the run there is complete; nothing to resume")


def describe_run(status: str) -> str:
    """Words for a run's status, for the refusal message."""
    if status == "complete":
        return "a finished run"
    if status == "running":
        return "an unfinished run (status 'running': still running, or killed)"
    return f"an unfinished run (status {status!r})"


def refusal(path: Path, what: str) -> OutputError:
    """The one-line refusal to replace ``what`` in ``path``."""
    return OutputError(f"{path} already holds {what}; pass --overwrite to replace it, "
                       f"or choose another folder with --out")


def remove_files(folder: Path, names: Iterable[str]) -> None:
    """Delete fedsim's own files ``names`` from ``folder`` (other files are left alone).

    Raises:
        OutputError: a file cannot be removed.
    """
    for name in names:
        path = folder / name
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise output_error(path, err, "cannot remove") from None


def prepare_study(study_dir: Path, run_dirs: Sequence[Path], overwrite: bool,
                  compare: bool) -> None:
    """Check the output folders of a ``fedsim run`` before anything runs.

    Args:
        study_dir: the study folder (created here).
        run_dirs: the run folders about to be written.
        overwrite: replace earlier runs (and their comparison) instead of refusing.
        compare: the study writes ``compare.md`` (it has variants).

    Raises:
        OutputError: a folder cannot be written, or already holds results and
            ``overwrite`` is False.
    """
    for run_dir in run_dirs:
        check_name_length(run_dir)
    ensure_dir(study_dir)
    compare_files = [n for n in COMPARE_FILES if compare and _exists(study_dir / n)]
    if not overwrite:
        for run_dir in run_dirs:
            status = run_status(run_dir)
            if status is not None:
                raise refusal(run_dir, describe_run(status))
        if compare_files:
            raise refusal(study_dir, f"a comparison of earlier runs ({compare_files[0]})")
        return
    for run_dir in run_dirs:
        remove_files(run_dir, RUN_FILES)
    remove_files(study_dir, compare_files)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file, then rename); no temp left on error.

    Raises:
        OutputError: it cannot be written (the earlier file, if any, is kept).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise output_error(path, err) from None


def _discard(path: Path) -> None:
    """Remove a temporary file if it is there; errors ignored."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def figure_formats() -> list[str]:
    """File extensions matplotlib can save (png, pdf, svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def check_figure_path(path: Path) -> None:
    """``path`` names a picture format matplotlib writes, in a folder that can exist.

    Raises:
        OutputError: no or an unsupported extension, or a name too long.
    """
    formats = figure_formats()
    ext = path.suffix.lower().lstrip(".")
    if ext not in formats:
        got = f"'.{ext}'" if ext else "no extension"
        raise OutputError(f"{path}: unsupported picture format ({got}); use one of "
                          f".{', .'.join(formats)}")
    check_name_length(path)


def save_figure(path: Path, save: Callable[[Path], object]) -> Path:
    """Call ``save(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    Args:
        path: the picture to write; its extension picks the format.
        save: writes a figure to the path it is given (e.g. ``fig.savefig``).

    Returns:
        ``path``.

    Raises:
        OutputError: the folder cannot be created or written (nothing is left behind,
            an earlier picture at ``path`` is kept).
    """
    check_figure_path(path)
    tmp = path.with_name(f".fedsim-tmp-{os.getpid()}{path.suffix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(tmp)
        os.replace(tmp, path)
    except OSError as err:
        _discard(tmp)
        raise output_error(path, err) from None
    except BaseException:
        _discard(tmp)
        raise
    return path
