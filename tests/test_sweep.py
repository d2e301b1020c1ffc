"""``fedsim sweep``: the grid, resuming, the summary, and robustness end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.results.output import OutputError
from fedsim.scenario import load_scenario
from fedsim.sweep import plan, run_sweep

ROOT = Path(__file__).resolve().parents[1]

GRID = """
name = "grid"
rounds = 6
clients_per_round = 16
[data]
dataset = "digits"
num_clients = 16
[model]
name = "logreg"
[algorithm]
lr = 0.2
batch_size = 16
[sweep]
seeds = [0]
[sweep.axes.aggregator]
mean = { "algorithm.aggregator" = { name = "mean" } }
gm = { "algorithm.aggregator" = { name = "gm" } }
[sweep.axes.attack]
clean = { "attack.name" = "none" }
flip = { "attack.name" = "sign_flip", "attack.fraction" = 0.25, "attack.params" = { scale = 1e2 } }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def summary_rows(study: Path) -> dict[tuple[str, str], dict]:
    with open(study / "sweep_summary.csv", newline="") as fh:
        return {(r["aggregator"], r["attack"]): r for r in csv.DictReader(fh)}


def test_sweep_runs_the_grid_and_gm_resists_what_breaks_the_mean(tmp_path):
    study = run_sweep(write(tmp_path, GRID), output_dir=str(tmp_path / "out"), progress=False,
                      log=None)
    rows = summary_rows(study)
    assert set(rows) == {(a, b) for a in ("mean", "gm") for b in ("clean", "flip")}
    acc = {k: float(r["accuracy_mean"]) for k, r in rows.items()}
    assert acc[("mean", "clean")] > 0.5 and acc[("gm", "clean")] > 0.5
    assert acc[("mean", "flip")] < 0.2  # 4 of 16 rows at -100 x: the mean is lost
    assert acc[("gm", "flip")] > 0.5  # the geometric median is not
    assert (study / "sweep.png").stat().st_size > 0
    assert "| mean | flip |" in (study / "sweep_summary.md").read_text()


def test_a_finished_cell_is_not_run_again(tmp_path):
    path = write(tmp_path, GRID.replace("rounds = 6", "rounds = 2"))
    out = str(tmp_path / "out")
    study = run_sweep(path, output_dir=out, progress=False, log=None)
    cell = study / "sweep" / "gm__flip__seed0" / "metrics.csv"
    first = cell.stat().st_mtime_ns
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        run_sweep(path, output_dir=out, progress=False, log=fh)
    assert cell.stat().st_mtime_ns == first
    assert log.read_text().count("done before") == 4
    # other settings into the same folders: refused, nothing touched; --overwrite re-runs
    with pytest.raises(OutputError, match="--overwrite"):
        run_sweep(path, ["algorithm.lr=0.1"], output_dir=out, progress=False, log=None)
    assert cell.stat().st_mtime_ns == first
    with open(log, "w") as fh:
        run_sweep(path, ["algorithm.lr=0.1"], output_dir=out, progress=False, log=fh,
                  overwrite=True)
    assert "done before" not in log.read_text()


@pytest.mark.parametrize(("sweep", "key"), [
    ("[sweep]\nseeds = []\n", "sweep.seeds"),
    ("[sweep]\ncolour = 1\n", "sweep.colour"),
    ("[sweep.axes.a]\nx = { \"attack.name\" = \"nope\" }\n", "attack.name"),
    ("[sweep.axes.a]\nx = 3\n", "sweep.axes.a.x"),
])
def test_bad_grids_are_one_clear_error(tmp_path, sweep, key):
    path = write(tmp_path, 'name = "g"\n' + sweep)
    with pytest.raises(ScenarioError) as info:
        plan(load_scenario(path), tmp_path)
    assert key in str(info.value) and "\n" not in str(info.value)


def test_robust_bgmd_grid_plans():
    path = ROOT / "scenarios" / "robust_bgmd.toml"
    cells = plan(load_scenario(path), path.parent)
    assert len(cells) == 6 * 6 * 3
    assert {c.scenario.attack.fraction for c in cells} == {0.0, 0.2, 0.4}


# --------------------------------------------------------------------------- grid mistakes

TINY = """
name = "tiny"
rounds = 2
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


def one_line_error(capsys, *args: str) -> str:
    """Run ``fedsim ARGS`` in-process, expecting exit 2 and one error line; returns it."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and err.startswith("fedsim: error: "), err
    return err


@pytest.mark.parametrize("sweep", ["{seeds=[0,1]}", "{seeds=[0,1], axes={}}"])
def test_a_seeds_only_sweep_runs_to_its_summary(tmp_path, monkeypatch, capsys, sweep):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    code = main(["sweep", "tiny.toml", "--set", f"sweep={sweep}", "--out", "out", "--quiet"])
    assert code == 0, capsys.readouterr().err
    study = tmp_path / "out" / "tiny"
    with open(study / "sweep_summary.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["seeds"] == "2" and float(row["accuracy_mean"]) > 0
    assert (study / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (study / "sweep").iterdir()) == ["seed0", "seed1"]


LONG = "x" * 256
BAD_GRIDS = {
    # name: ([sweep] table, words in the error)
    "parent label": ('[sweep.axes.a]\n"../../escaped" = { seed = 1 }\n',
                     ["sweep.axes.a.../../escaped"]),
    "absolute label": ('[sweep.axes.a]\n"/tmp/abs" = { seed = 1 }\n', ["sweep.axes.a./tmp/abs"]),
    "separator": ('[sweep.axes.a]\n"p/q" = { seed = 1 }\n', ["sweep.axes.a.p/q"]),
    "backslash": ('[sweep.axes.a]\n"p\\\\q" = { seed = 1 }\n', ["sweep.axes.a"]),
    "hidden": ('[sweep.axes.a]\n".x" = { seed = 1 }\n', ["sweep.axes.a..x"]),
    "newline": ('[sweep.axes.a]\n"p\\nq" = { seed = 1 }\n', ["sweep.axes.a"]),
    "long label": (f'[sweep.axes.a]\n{LONG} = {{ seed = 1 }}\n', ["255 bytes"]),
    "long axis": (f'[sweep.axes.{LONG}]\nx = {{ seed = 1 }}\n', ["255 bytes"]),
    "long folder": ('[sweep.axes.a]\n' + "a" * 200 + ' = { seed = 1 }\n[sweep.axes.b]\n'
                    + "b" * 200 + ' = { seed = 2 }\n', ["longer than 255 bytes"]),
    "axis named like a column": ('[sweep.axes.seed]\nx = { seed = 1 }\n', ["sweep.axes.seed"]),
    "collision": ('[sweep.axes.a]\nx__y = { seed = 1 }\nx = { seed = 2 }\n'
                  '[sweep.axes.b]\nz = { seed = 3 }\ny__z = { seed = 4 }\n',
                  ["share the folder 'x__y__z__seed0'", "a=x__y/b=z", "a=x/b=y__z"]),
    "collision by case": ('[sweep.axes.a]\nX = { seed = 1 }\nx = { seed = 2 }\n', ["share"]),
    "repeated seed": ("[sweep]\nseeds = [0, 0]\n", ["sweep.seeds", "seed 0", "more than once"]),
    "huge grid": ("".join(f"[sweep.axes.a{i}]\n" + "".join(f"l{j} = {{ seed = {j} }}\n"
                                                         for j in range(10)) for i in range(8)),
                  ["100,000,000 cells", "limit of 10,000"]),
}


@pytest.mark.parametrize("command", ["sweep", "validate"])
@pytest.mark.parametrize("case", list(BAD_GRIDS))
def test_a_bad_grid_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, command,
                                                     case):
    table, words = BAD_GRIDS[case]
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "tiny.toml").write_text(TINY + table)
    err = one_line_error(capsys, command, "tiny.toml", "--out", "out") if command == "sweep" \
        else one_line_error(capsys, command, "tiny.toml")
    for word in words:
        assert word in err, (word, err)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "er", "tiny.toml"]


def test_validate_counts_the_cells_of_a_good_grid(capsys):
    assert main(["validate", str(ROOT / "scenarios" / "robust_bgmd.toml")]) == 0
    assert "sweep: 108 cells" in capsys.readouterr().out
