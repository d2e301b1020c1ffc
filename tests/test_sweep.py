"""``fedsim sweep``: the grid, resuming, the summary, and robustness end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

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
