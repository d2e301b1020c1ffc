"""``fedsim run --seeds``, mean ± std over seeds, ``--format``, and figures fit for a paper."""

from __future__ import annotations

import json
import statistics
import tomllib
from pathlib import Path

import matplotlib
import pytest

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.network.topology import grid, torus
from fedsim.network.topology_report import _layout, draw_topology, edge_geometry
from fedsim.results.plots import (
    TRAIN_LOSS_LABEL,
    _new_axes,
    _style_x,
    byte_unit,
    compare_table,
    plot_compare,
    plot_run,
    seed_band,
    setup_text,
)
from fedsim.study import run_file
from fedsim.sweep import run_sweep

TINY = """
name = "tiny"
rounds = 3
clients_per_round = 4
[data]
dataset = "digits"
num_clients = 8
partition = "dirichlet"
alpha = 0.5
[model]
name = "logreg"
[algorithm]
lr = 0.2
batch_size = 16
"""
VARIANTS = """
[variants.fast]
algorithm.lr = 0.2
[variants.slow]
algorithm.lr = 0.05
"""
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


def scenario(tmp_path: Path, variants: bool = True) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY + (VARIANTS if variants else ""))
    return path


def assert_format(path: Path, fmt: str) -> None:
    head = path.read_bytes()[:400]
    if fmt == "svg":
        assert head.startswith(b"<?xml") and b"<svg" in head
    else:
        assert head.startswith(MAGIC[fmt])


def one_error_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedsim: error: "), err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture(scope="module")
def seeded_study(tmp_path_factory) -> Path:
    """Two variants x seeds 0, 1, 2 through the CLI, figures as SVG."""
    tmp = tmp_path_factory.mktemp("seeds")
    code = main(["run", str(scenario(tmp)), "--out", str(tmp / "out"), "--quiet",
                 "--seeds", "0,1,2", "--format", "svg"])
    assert code == 0
    return tmp / "out" / "tiny"


# ---------------------------------------------------------------- --seeds


def test_seeds_run_each_variant_once_per_seed_in_its_own_folder(seeded_study):
    for variant in ("fast", "slow"):
        assert sorted(p.name for p in (seeded_study / variant).iterdir()) == [
            "seed0", "seed1", "seed2"]
        for seed in (0, 1, 2):
            run = seeded_study / variant / f"seed{seed}"
            resolved = tomllib.loads((run / "scenario.toml").read_text())
            assert resolved["seed"] == seed
            assert json.loads((run / "summary.json").read_text())["status"] == "complete"
            assert_format(run / "accuracy_vs_time.svg", "svg")
            assert not (run / "accuracy_vs_time.png").exists()
    # the seeds differ: not three copies of one run
    finals = {json.loads((seeded_study / "fast" / f"seed{k}" / "summary.json").read_text())
              ["final_accuracy"] for k in (0, 1, 2)}
    assert len(finals) > 1


def test_compare_table_is_mean_and_std_of_the_per_seed_summaries(seeded_study):
    table = (seeded_study / "compare.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.strip("| \n").split(" | ")
            for line in table.splitlines()[2:]}
    assert table.splitlines()[0].startswith("| run | seeds | rounds | final acc | best acc")
    for variant in ("fast", "slow"):
        sums = [json.loads((seeded_study / variant / f"seed{k}" / "summary.json").read_text())
                for k in (0, 1, 2)]
        row = rows[variant]
        assert row[1] == "3" and row[2] == "3"
        for col, key in ((3, "final_accuracy"), (4, "best_accuracy")):
            values = [s[key] for s in sums]
            mean, std = statistics.fmean(values), statistics.stdev(values)  # sample std, n - 1
            assert row[col] == f"{mean:.4f} ± {std:.4f}"
        times = [s["sim_time_s"] for s in sums]
        assert row[5] == f"{statistics.fmean(times):.1f} ± {statistics.stdev(times):.1f}"


def test_compare_plots_of_a_seeded_study(seeded_study):
    for x in ("time", "round"):
        assert_format(seeded_study / f"compare_accuracy_vs_{x}.svg", "svg")
    # a seeds folder given to `fedsim compare` is one setting: same table as the study's
    assert compare_table([seeded_study / "fast", seeded_study / "slow"]) == (
        seeded_study / "compare.md").read_text().rstrip("\n")


def test_seeds_without_variants_and_the_overwrite_rule(tmp_path, capsys):
    path, out = scenario(tmp_path, variants=False), str(tmp_path / "out")
    results = run_file(path, output_dir=out, seeds=[4, 2], progress=False, log=None)
    study = tmp_path / "out" / "tiny"
    assert [r.run_dir for r in results] == [study / "seed4", study / "seed2"]
    assert (study / "compare.md").read_text().count("± ") >= 4
    assert (study / "compare_accuracy_vs_round.png").exists()
    assert not (study / "metrics.csv").exists()  # no run in the study folder itself
    # a seed folder holding a run is refused before anything runs ...
    assert main(["run", str(path), "--out", out, "--quiet", "--seeds", "2,7"]) == 2
    one_error_line(capsys, str(study / "seed2"), "--overwrite")
    assert not (study / "seed7").exists()
    # ... and replaced with --overwrite, in another format: the old pictures go
    assert main(["run", str(path), "--out", out, "--quiet", "--seeds", "4,2", "--overwrite",
                 "--format", "pdf"]) == 0
    assert_format(study / "seed2" / "loss_vs_round.pdf", "pdf")
    assert not (study / "seed2" / "loss_vs_round.png").exists()
    assert_format(study / "compare_accuracy_vs_time.pdf", "pdf")
    assert not (study / "compare_accuracy_vs_time.png").exists()


@pytest.mark.parametrize("text", ["0,1,1", "-1", "0,-2", "1.5", "a,b", "", "0,,1"])
def test_bad_seeds_are_one_line_exit_2(tmp_path, capsys, text):
    code = main(["run", str(scenario(tmp_path)), "--out", str(tmp_path / "o"),
                 "--seeds", text])
    assert code == 2
    one_error_line(capsys, "--seeds")
    assert not (tmp_path / "o").exists()


def test_run_file_checks_seeds_too(tmp_path):
    for seeds in ([0, 0], [-1], [1.5], [True], []):
        with pytest.raises(ScenarioError, match="--seeds"):
            run_file(scenario(tmp_path), output_dir=str(tmp_path / "o"), seeds=seeds, log=None)


# ---------------------------------------------------------------- mean ± std bands


def test_seed_band_on_rounds_keeps_the_rounds_every_seed_has():
    xs, mean, std = seed_band([([1, 2, 3], [0.1, 0.2, 0.3]), ([1, 3], [0.3, 0.5])], "round")
    assert xs == [1, 3]
    assert mean == pytest.approx([0.2, 0.4])
    assert std == pytest.approx([statistics.stdev([0.1, 0.3]), statistics.stdev([0.3, 0.5])])


def test_seed_band_on_time_interpolates_within_the_common_span():
    xs, mean, std = seed_band([([0.0, 2.0, 4.0], [0.0, 0.2, 0.4]),
                               ([1.0, 3.0], [0.3, 0.5])], "sim_time_s")
    assert xs[0] == 1.0 and xs[-1] == 3.0  # no seed is extrapolated
    assert mean[0] == pytest.approx((0.1 + 0.3) / 2)
    assert mean[-1] == pytest.approx((0.3 + 0.5) / 2)
    assert std[0] == pytest.approx(statistics.stdev([0.1, 0.3]))


def test_seed_band_of_one_seed_has_no_spread():
    assert seed_band([([1, 2], [0.5, 0.6])], "round") == ([1, 2], [0.5, 0.6], [0.0, 0.0])


# ---------------------------------------------------------------- --format and labels


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    path = scenario(tmp, variants=False)
    return run_file(path, output_dir=str(tmp / "out"), progress=False, log=None)[0].run_dir


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_plots_in_each_format(one_run, tmp_path, fmt):
    for path in plot_run(one_run, fmt):
        assert path.suffix == f".{fmt}"
        assert_format(path, fmt)
    out = plot_compare([one_run], tmp_path / f"c.{fmt}")
    assert_format(out, fmt)


@pytest.mark.parametrize("fmt", ["pdf", "svg"])
def test_cli_plot_and_compare_format(one_run, tmp_path, monkeypatch, capsys, fmt):
    assert main(["plot", str(one_run), "--format", fmt]) == 0
    assert_format(one_run / f"accuracy_vs_bytes.{fmt}", fmt)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(one_run), "--format", fmt]) == 0
    assert_format(tmp_path / f"compare.{fmt}", fmt)


def test_sweep_format(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TINY.replace("rounds = 3", "rounds = 2") + "[sweep]\nseeds = [0, 1]\n")
    study = run_sweep(path, output_dir=str(tmp_path / "out"), progress=False, log=None,
                      fmt="pdf")
    assert_format(study / "sweep.pdf", "pdf")
    assert not (study / "sweep.png").exists()


@pytest.mark.parametrize("argv", [
    ["run", "X", "--format", "jpg"], ["plot", "X", "--format", "PNG"],
    ["compare", "X", "--format", "eps"], ["sweep", "X", "--format", ""],
    ["compare", "X", "--out", "c.png", "--format", "pdf"],
])
def test_bad_format_is_one_line_exit_2(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    one_error_line(capsys, "--format")


def test_titles_name_the_setup_and_train_loss_is_the_clients_minibatch_loss(one_run):
    assert setup_text(one_run) == "digits, dirichlet(α=0.5), 8 clients (4 per round), 3 rounds"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text as text, to search it
        paths = plot_run(one_run, "svg")
    for path in paths:
        assert "8 clients (4 per round), 3 rounds" in path.read_text()
    loss = path.read_text()
    assert "local minibatch loss" in TRAIN_LOSS_LABEL and "clients" in TRAIN_LOSS_LABEL
    assert "local minibatch loss" in loss


def test_byte_axis_label_names_the_unit_of_its_ticks():
    assert byte_unit(999) == ("B", 1.0)
    assert byte_unit(83_200) == ("kB", 1e3)
    assert byte_unit(2.5e9) == ("GB", 1e9)
    fig, ax = _new_axes()
    _style_x(ax, "cum_bytes", 83_200)
    assert ax.get_xlabel() == "communication, up + down (kB)"
    assert ax.xaxis.get_major_formatter()(40_000, 0) == "40"
    _style_x(ax, "sim_time_s", 12_345.0)
    assert ax.get_xlabel() == "simulated time (s)"
    ax.set_xlim(10_000, 10_010)  # would be "+1e4" offset ticks by default
    ax.figure.canvas.draw()
    assert ax.xaxis.get_major_formatter().get_offset() == ""


# ---------------------------------------------------------------- torus drawing


def test_torus_wrap_around_edges_are_drawn_as_outward_arcs():
    G = torus(rows=8, cols=8)
    pos, source = _layout(G)
    assert source == "pos"
    geometry = edge_geometry(G, pos)
    wraps = [g for g in geometry if g[5]]
    assert len(wraps) == 16  # one per row and one per column
    for u, v, start, control, end, _ in geometry:
        mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        if (u, v) in {(w[0], w[1]) for w in wraps}:
            assert {abs(start[0] - end[0]), abs(start[1] - end[1])} == {0.0, 7.0}
            off = (control[0] - mid[0], control[1] - mid[1])
            assert sorted(map(abs, off)) == [0.0, 1.0]  # bent one grid step off its line
            # outward: away from the centre (3.5, -3.5) of the drawing
            assert off[0] * (mid[0] - 3.5) >= 0 and off[1] * (mid[1] + 3.5) >= 0
        else:
            assert control == mid  # neighbours on the grid: straight
            assert abs(start[0] - end[0]) + abs(start[1] - end[1]) == 1.0


def test_grid_and_spring_layouts_have_no_wrap_edges():
    G = grid(rows=4, cols=5)
    assert not any(g[5] for g in edge_geometry(G, _layout(G)[0]))
    G = torus(rows=3, cols=3)
    assert not any(g[5] for g in edge_geometry(G, {v: (0.0, float(v)) for v in G},
                                               lattice=False))


def test_draw_torus_in_each_format(tmp_path):
    for fmt in ("png", "pdf", "svg"):
        assert_format(draw_topology(torus(rows=8, cols=8), tmp_path / f"t.{fmt}"), fmt)


def test_setup_of_a_comparison_is_what_the_runs_share(tmp_path):
    from fedsim.results.plots import _accuracy_label, _common_setup

    runs = []
    for algorithm, extra in (("fedavg", "clients_per_round = 4\n"), ("dsgd", "")):
        run = tmp_path / algorithm
        run.mkdir()
        (run / "scenario.toml").write_text(
            f'rounds = 5\n{extra}[data]\ndataset = "digits"\npartition = "iid"\n'
            f'num_clients = 16\n[algorithm]\nname = "{algorithm}"\n')
        runs.append(run)
    assert setup_text(runs[0]) == "digits, iid, 16 clients (4 per round), 5 rounds"
    assert setup_text(runs[1]) == "digits, iid, 16 nodes, 5 rounds"
    assert _common_setup(runs) == "digits, iid, 5 rounds"
    assert _accuracy_label(runs[:1]) == "test accuracy (global model)"
    assert _accuracy_label(runs[1:]) == "test accuracy (nodes' average model)"
    assert setup_text(tmp_path) is None  # no scenario.toml: no setup line
