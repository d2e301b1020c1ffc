"""Nothing computed is lost or silently overwritten; output-folder mistakes are one line.

Each case runs the CLI in-process (``fedsim.cli.main``) on a tiny scenario and checks
the exit code, that stderr is exactly one ``fedsim: error:`` line without a
traceback, that earlier results are byte for byte what they were, and that
nothing was written outside the output folder.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fedsim.decentralized.runner as decentralized_runner
import fedsim.results.output as output
import fedsim.results.records as records
from fedsim.cli import main
from fedsim.results.records import RoundRecord, RunWriter, read_metrics

TINY = """
name = "tiny"
seed = 3
rounds = 3
clients_per_round = 4
[data]
dataset = "synthetic"
num_clients = 6
partition = "natural"
synthetic_mean_samples = 10
[model]
name = "logreg"
[algorithm]
lr = 0.1
batch_size = 5
"""
DEC = (TINY.replace('name = "tiny"', 'name = "dec"')
       .replace("[algorithm]\n", '[algorithm]\nname = "dsgd"\n')
       + '[network]\ntopology = "ring"\ntopology_params = { n = 6 }\n')
VARIANTS = TINY + '[variants.a]\nalgorithm.lr = 0.1\n[variants.b]\nalgorithm.lr = 0.2\n'
METRIC_FILES = ("metrics.csv", "metrics.jsonl", "timing.csv")


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A scratch folder as the working directory, holding tiny.toml and variants.toml."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "variants.toml").write_text(VARIANTS)
    return tmp_path


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``fedsim ARGS`` in-process; (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    """Exit 2, exactly one stderr line ``fedsim: error: ...`` with ``words``, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedsim: error: "), err
    for word in words:
        assert word in lines[0], (word, err)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (folders as empty markers)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


def new_paths(before: dict[str, bytes], root: Path) -> set[str]:
    """Paths under ``root`` that were not in ``before``."""
    return set(snapshot(root)) - set(before)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_consistent(run_dir: Path) -> int:
    """The three metric files hold whole lines and the same number of rounds; returns it."""
    counts = set()
    for name in METRIC_FILES + (("consensus.csv",) if (run_dir / "consensus.csv").exists()
                                else ()):
        text = (run_dir / name).read_text(encoding="utf-8")
        assert text == "" or text.endswith("\n"), (name, text[-40:])
        lines = text.splitlines()
        counts.add(len(lines) - (0 if name.endswith(".jsonl") or not lines else 1))
    assert len(counts) == 1, counts
    assert not list(run_dir.parent.rglob("*.tmp")) and not list(run_dir.rglob(".fedsim-tmp*"))
    return max(counts)


# --------------------------------------------------------------------------- status


def test_a_finished_run_says_complete(work, capsys):
    code, _, _ = cli(capsys, "run", "tiny.toml", "--out", "out", "--quiet")
    assert code == 0
    s = summary(work / "out" / "tiny")
    assert s["status"] == "complete" and s["rounds_completed"] == 3
    assert assert_consistent(work / "out" / "tiny") == 3


def test_a_run_inside_a_callers_except_block_says_complete(work):
    """The caller's handled error is not the run's: its status is still "complete"."""
    from fedsim.study import run_file

    try:
        raise KeyboardInterrupt  # e.g. a retry loop around run_file
    except KeyboardInterrupt:
        run_file("tiny.toml", output_dir="out", progress=False, log=None)
    assert summary(work / "out" / "tiny")["status"] == "complete"


def test_a_started_run_says_running_until_it_ends(tmp_path):
    """What a SIGKILLed run leaves: its summary says "running", the rows written are whole."""
    writer = RunWriter(tmp_path / "run")
    writer.append(RoundRecord(1, 1.0, 1.0, 10, 10, 20, 2, 2, 0, 0), wall_time_s=0.1)
    assert summary(tmp_path / "run") == {"status": "running"}
    assert output.run_status(tmp_path / "run") == "running"
    assert assert_consistent(tmp_path / "run") == 1
    writer.close()


@pytest.mark.parametrize(("exc", "code", "status"), [
    (KeyboardInterrupt("stop"), 130, "interrupted"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "own.csv"), 2, "failed"),
    (RuntimeError("a bug"), None, "failed"),
])
def test_an_interrupted_run_keeps_its_rounds_and_says_how_it_ended(work, capsys, monkeypatch,
                                                                    exc, code, status):
    from fedsim.runners import FederatedRun

    real = FederatedRun.round

    def stop_at_3(self, rnd, **kw):
        if rnd == 3:
            raise exc
        return real(self, rnd, **kw)

    monkeypatch.setattr(FederatedRun, "round", stop_at_3)
    if code is None:
        with pytest.raises(type(exc)):
            main(["run", "tiny.toml", "--out", "out", "--quiet"])
    else:
        code_now, _, err = cli(capsys, "run", "tiny.toml", "--out", "out", "--quiet")
        assert code_now == code and len(err.splitlines()) == 1, err
    run_dir = work / "out" / "tiny"
    s = summary(run_dir)
    assert s["status"] == status and s["rounds_completed"] == 2
    assert assert_consistent(run_dir) == 2


def test_sigterm_stops_like_ctrl_c(work):
    """A real process: SIGTERM keeps the finished rounds, writes the summary, exits 130."""
    cmd = [sys.executable, "-m", "fedsim", "run", "tiny.toml", "--out", "out", "--quiet",
           "--set", "rounds=1000000"]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = work / "out" / "tiny" / "metrics.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
    s = summary(metrics.parent)
    assert s["status"] == "interrupted"
    assert s["rounds_completed"] == assert_consistent(metrics.parent) >= 2


# --------------------------------------------------------------------------- reruns


def _kill_mid_run(run_dir: Path) -> None:
    """Make ``run_dir`` look like a run killed with SIGKILL after round 1."""
    (run_dir / "summary.json").write_text('{"status": "running"}\n')


def _remove_variant_runs(study: Path) -> None:
    """Leave only the study's compare.md (its runs are gone)."""
    for name in ("a", "b"):
        for path in (study / name).iterdir():
            path.unlink()
        (study / name).rmdir()


RERUNS = {
    # name: (first command, how the folder is changed, second command, words in the error)
    "finished run": (["run", "tiny.toml"], None, ["run", "tiny.toml"], ["finished run"]),
    "partial run": (["run", "tiny.toml"], "kill", ["run", "tiny.toml"], ["unfinished run"]),
    "other settings": (["run", "tiny.toml"], None, ["run", "tiny.toml", "--set", "seed=9"],
                       ["finished run"]),
    "one variant": (["run", "variants.toml"], None, ["run", "variants.toml", "--variant", "b"],
                    ["finished run"]),
    "stale compare.md": (["run", "variants.toml"], "gone", ["run", "variants.toml"],
                         ["compare.md"]),
    "sweep, other settings": (["sweep", "sweep.toml"], None,
                              ["sweep", "sweep.toml", "--set", "algorithm.lr=0.3"],
                              ["other settings"]),
}


@pytest.mark.parametrize("case", list(RERUNS))
def test_a_rerun_into_a_used_folder_refuses_and_loses_nothing(work, capsys, case):
    first, change, second, words = RERUNS[case]
    (work / "sweep.toml").write_text(TINY.replace("rounds = 3", "rounds = 2")
                                     + "[sweep]\nseeds = [0, 1]\n")
    assert cli(capsys, *first, "--out", "out", "--quiet")[0] == 0
    study = work / "out" / "tiny"
    if change == "kill":
        _kill_mid_run(study)
    elif change == "gone":
        _remove_variant_runs(study)
    before = snapshot(work)
    code, _, err = cli(capsys, *second, "--out", "out", "--quiet")
    assert_one_line_error(code, err, "--overwrite", "--out", *words)
    assert snapshot(work) == before


def test_overwrite_replaces_the_run_and_its_stale_comparison(work, capsys):
    assert cli(capsys, "run", "variants.toml", "--out", "out", "--quiet")[0] == 0
    study = work / "out" / "tiny"
    b_metrics = (study / "b" / "metrics.csv").read_bytes()
    code, _, _ = cli(capsys, "run", "variants.toml", "--out", "out", "--quiet", "--variant", "a",
                     "--overwrite", "--set", "seed=5")
    assert code == 0
    assert not (study / "compare.md").exists()  # it described the replaced run a
    assert (study / "b" / "metrics.csv").read_bytes() == b_metrics
    assert summary(study / "a")["status"] == "complete"
    assert cli(capsys, "run", "variants.toml", "--out", "out", "--quiet", "--overwrite")[0] == 0
    assert "| b |" in (study / "compare.md").read_text()


def test_sweep_resumes_a_killed_cell_of_the_same_settings(work, capsys):
    (work / "sweep.toml").write_text(TINY + "[sweep]\nseeds = [0, 1]\n")
    assert cli(capsys, "sweep", "sweep.toml", "--out", "out", "--quiet")[0] == 0
    cell = work / "out" / "tiny" / "sweep" / "seed1"
    _kill_mid_run(cell)
    code, _, err = cli(capsys, "sweep", "sweep.toml", "--out", "out", "--quiet")
    assert code == 0
    assert "seed0: done before" in err and "seed1: ran" in err
    assert summary(cell)["status"] == "complete"


# --------------------------------------------------------------------------- full disk


class Disk:
    """A disk with ``left`` bytes free: writes past it are cut and raise ENOSPC."""

    def __init__(self, left: float):
        self.left = left
        self.used = 0

    def take(self, n: int) -> int:
        k = int(min(n, self.left))
        self.left -= k
        self.used += k
        return k

    def full(self) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def install_disk(monkeypatch, disk: Disk) -> None:
    """Route the run folder's writes (rows, summary, scenario) through ``disk``."""
    real_write, real_open = records._write_bytes, builtins.open

    def write_bytes(handle, data):
        k = disk.take(len(data))
        real_write(handle, data[:k])
        if k < len(data):
            raise disk.full()

    class Limited:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            k = disk.take(len(text.encode()))
            self.handle.write(text.encode()[:k].decode(errors="ignore"))
            if k < len(text.encode()):
                self.handle.flush()
                raise disk.full()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    def limited_open(path, mode="r", *args, **kw):
        return Limited(real_open(path, mode, *args, **kw)) if "w" in mode else real_open(
            path, mode, *args, **kw)

    monkeypatch.setattr(records, "_write_bytes", write_bytes)
    monkeypatch.setattr(output, "open", limited_open, raising=False)
    monkeypatch.setattr(decentralized_runner, "open", limited_open, raising=False)


_FULL_SIZE: dict[str, int] = {}


def full_run_bytes(work: Path, monkeypatch, capsys, name: str) -> int:
    """Bytes a whole run of ``name``.toml writes through the disk (measured once)."""
    if name not in _FULL_SIZE:
        disk = Disk(float("inf"))
        install_disk(monkeypatch, disk)
        assert cli(capsys, "run", f"{name}.toml", "--out", "measure", "--quiet")[0] == 0
        _FULL_SIZE[name] = disk.used
        monkeypatch.undo()
        monkeypatch.chdir(work)
    return _FULL_SIZE[name]


@pytest.mark.parametrize("name", ["tiny", "dec"])  # federated, and D-SGD with consensus.csv
@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.1, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99])
def test_a_full_disk_stops_with_one_line_and_whole_rows(work, capsys, monkeypatch, fraction,
                                                         name):
    (work / "dec.toml").write_text(DEC)
    total = full_run_bytes(work, monkeypatch, capsys, name)
    install_disk(monkeypatch, Disk(int(fraction * total)))
    code, _, err = cli(capsys, "run", f"{name}.toml", "--out", "out", "--quiet")
    assert_one_line_error(code, err, "No space left on device")
    run_dir = work / "out" / name
    rows = assert_consistent(run_dir)
    assert 0 <= rows <= 3
    if rows > 0:
        assert [r["round"] for r in read_metrics(run_dir)] == list(range(1, rows + 1))
    if (run_dir / "summary.json").exists():
        assert summary(run_dir)["status"] == "running"  # it never finished: marked so


# --------------------------------------------------------------------------- output folders


def read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` behave like a read-only mount (even for root): EROFS on writes."""
    real_open, real_mkdir = builtins.open, os.mkdir
    inside = str(folder.resolve())

    def guarded(path) -> None:
        if os.path.abspath(os.fspath(path)).startswith(inside):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def ro_open(path, mode="r", *args, **kw):
        if any(m in mode for m in "wax+"):
            guarded(path)
        return real_open(path, mode, *args, **kw)

    def ro_mkdir(path, *args, **kw):
        guarded(path)
        return real_mkdir(path, *args, **kw)

    monkeypatch.setattr(builtins, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


LONG = "n" * 256
OUT_FOLDERS = {
    # name: (--out, extra arguments, words in the error)
    "/dev/null": ("/dev/null", [], ["/dev/null"]),
    "under /dev/null": ("/dev/null/x", [], ["/dev/null/x"]),
    "/proc/x": ("/proc/x", [], ["/proc/x"]),
    "an existing file": ("afile.txt", [], ["afile.txt"]),
    "a name over 255 bytes": ("out", ["--set", f"name={LONG}"], ["255"]),
    "an --out part over 255 bytes": (f"out/{LONG}", [], ["255"]),
    "a variant name over 255 bytes": ("out", ["--variant", LONG], ["255"]),
    "read-only": ("ro", [], ["ro", "Read-only file system"]),
}


@pytest.mark.parametrize(("command", "case"), [
    (command, case) for command in ("run", "sweep") for case in OUT_FOLDERS
    if not (command == "sweep" and "variant" in case)  # a sweep has no variants
])
def test_an_unusable_output_folder_is_one_line(work, capsys, monkeypatch, command, case):
    out, extra, words = OUT_FOLDERS[case]
    (work / "afile.txt").write_text("mine\n")
    scenario = "tiny.toml"
    if command == "sweep":
        scenario = "sweep.toml"
        (work / scenario).write_text(TINY + "[sweep]\nseeds = [0]\n")
    if "variant" in case:
        scenario = "long.toml"
        (work / scenario).write_text(TINY + f"[variants.{LONG}]\nalgorithm.lr = 0.2\n")
    (work / "ro").mkdir()
    before = snapshot(work)
    if case == "read-only":
        read_only(monkeypatch, work / "ro")
    code, _, err = cli(capsys, command, scenario, "--out", out, "--quiet", *extra)
    assert_one_line_error(code, err, *words)
    assert new_paths(before, work) <= {"out"}  # at most the empty output folder
    assert (work / "afile.txt").read_text() == "mine\n"


def write_runs(root: Path) -> list[Path]:
    """Two small run folders written directly (no training)."""
    dirs = []
    for name in ("r1", "r2"):
        with RunWriter(root / name) as writer:
            for rnd in (1, 2):
                writer.append(RoundRecord(rnd, rnd * 1.0, 1.0, 10, 10, 20 * rnd, 2, 2, 0, 0,
                                          0.5, 0.6, 0.7), wall_time_s=0.1)
            writer.write_summary({"rounds_completed": 2})
        dirs.append(root / name)
    return dirs


FIGURES = {
    # name: (path, how the folder is changed, words in the error)
    "unsupported extension": ("pic.txt", None, ["unsupported picture format", ".png"]),
    "no extension": ("pic", None, ["unsupported picture format"]),
    "under /dev/null": ("/dev/null/x.png", None, ["/dev/null/x.png"]),
    "read-only": ("ro/pic.png", "ro", ["Read-only file system"]),
    "full": ("pic.png", "full", ["No space left on device"]),
    "a folder": ("adir.png", None, ["adir.png"]),
}


@pytest.mark.parametrize("command", ["compare", "topology"])
@pytest.mark.parametrize("case", list(FIGURES))
def test_an_unusable_figure_path_is_one_line_and_keeps_the_old_picture(work, capsys, monkeypatch,
                                                                       command, case):
    path, change, words = FIGURES[case]
    dirs = write_runs(work / "runs")
    (work / "ro").mkdir()
    (work / "adir.png").mkdir()
    (work / "pic.png").write_bytes(b"an earlier picture")
    before = snapshot(work)
    if change == "ro":
        read_only(monkeypatch, work / "ro")
    elif change == "full":
        def no_space(*args, **kw):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        from matplotlib.figure import Figure
        monkeypatch.setattr(Figure, "savefig", no_space)
    if command == "compare":
        args = ["compare", *map(str, dirs), "--out", path]
    else:
        args = ["topology", "ring", "--param", "n=6", "--save", path]
    code, _, err = cli(capsys, *args)
    assert_one_line_error(code, err, *words)
    assert snapshot(work) == before


def test_compare_and_topology_write_their_picture(work, capsys):
    dirs = write_runs(work / "runs")
    assert cli(capsys, "compare", *map(str, dirs), "--out", "c.svg")[0] == 0
    assert cli(capsys, "topology", "ring", "--param", "n=6", "--save", "t.png")[0] == 0
    assert (work / "c.svg").read_text().lstrip().startswith("<?xml")
    assert (work / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(work.glob(".fedsim-tmp*"))


# --------------------------------------------------------------------------- reading runs


def _not_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b"round", b"r\xffund", 1))


def _cut_mid_line(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _short_row(path: Path) -> None:
    path.write_text(path.read_text() + "3,1.0\n")


DAMAGE = {
    "not UTF-8": (_not_utf8, ["not UTF-8", "0xff"]),
    "cut mid-line": (_cut_mid_line, ["truncated", "line 3"]),
    "a short row": (_short_row, ["line 4", "2 cells"]),
}


@pytest.mark.parametrize("command", ["plot", "compare"])
@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_metrics_csv_is_one_line(work, capsys, command, case):
    damage, words = DAMAGE[case]
    dirs = write_runs(work / "runs")
    damage(dirs[0] / "metrics.csv")
    before = snapshot(work)
    code, _, err = cli(capsys, command, *map(str, dirs))
    assert_one_line_error(code, err, "metrics.csv", *words)
    assert snapshot(work) == before
