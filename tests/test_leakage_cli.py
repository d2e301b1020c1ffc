"""``fedsim attack leakage``: the gradient-leakage grid on a scenario's client, end to end.

Tiny settings (1-2 digits, 1-2 widths, few iterations) so the whole file runs in a few
seconds on two cores.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedsim.cli import main
from fedsim.privacy.leakage_study import client_images, parse_options, sketch_factory
from fedsim.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
TINY = ["--images", "1", "--ratios", "1", "--noise", "0", "--attacks", "idlg",
        "--iterations", "5", "--quiet"]


def _rows(folder: Path) -> list[dict]:
    with open(folder / "leakage.csv") as f:
        return list(csv.DictReader(f))


def _one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedsim: error: ")
    for word in words:
        assert word in lines[0], lines[0]


def test_end_to_end_writes_files_and_plain_update_leaks(tmp_path, capsys):
    out = tmp_path / "leak"
    code = main(["attack", "leakage", QUICK, "--out", str(out), "--images", "2",
                 "--ratios", "1,0.1", "--noise", "0", "--attacks", "idlg",
                 "--iterations", "100"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in ("leakage.csv", "leakage_grid.png", "leakage.md"):
        assert (out / name).stat().st_size > 100, name
    rows = _rows(out)
    assert len(rows) == 2 * 2  # 2 widths x 2 images
    truth = client_images(load_scenario(QUICK), 0, 2)
    assert [int(r["label"]) for r in rows[:2]] == [int(v) for v in truth.y]
    plain = [r for r in rows if float(r["b/d"]) == 1.0]
    assert {r["sketch"] for r in plain} == {"none"} and {r["b"] for r in plain} == {"4666"}
    assert all(float(r["psnr_db"]) > 60 and float(r["label_acc"]) == 1.0 for r in plain)
    sketched = [r for r in rows if float(r["b/d"]) == 0.1]
    assert {r["sketch"] for r in sketched} == {"gaussian"} and {r["b"] for r in sketched} == {
        "467"}
    assert all(float(r["label_acc"]) == 1.0 for r in sketched)
    # the table is printed and saved; one progress line per setting on stderr
    assert "| idlg | 1 | 1 |" in captured.out and "| idlg | 0.1 | 1 |" in captured.out
    assert "| idlg | 1 | 1 |" in (out / "leakage.md").read_text()
    progress = [ln for ln in captured.err.splitlines() if ln.startswith("leakage [")]
    assert len(progress) == 2 and "PSNR" in progress[0]


def test_refuses_to_overwrite_without_flag(tmp_path, capsys):
    out = tmp_path / "leak"
    assert main(["attack", "leakage", QUICK, "--out", str(out), *TINY]) == 0
    before = (out / "leakage.csv").read_text()
    capsys.readouterr()
    assert main(["attack", "leakage", QUICK, "--out", str(out), *TINY]) == 2
    _one_line_error(capsys.readouterr().err, "leakage.csv", "--overwrite")
    assert (out / "leakage.csv").read_text() == before
    assert main(["attack", "leakage", QUICK, "--out", str(out), *TINY, "--overwrite"]) == 0


def test_default_folder_is_under_the_scenario_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["attack", "leakage", QUICK, "--set", "output_dir=res", *TINY]) == 0
    assert (tmp_path / "res" / "quickstart" / "leakage" / "leakage.csv").is_file()


BAD = {
    "ratio 0": (["--ratios", "1,0"], "--ratios"),
    "ratio above 1": (["--ratios", "1.5"], "--ratios"),
    "ratio not a number": (["--ratios", "half"], "--ratios"),
    "negative noise": (["--noise", "0,-0.1"], "--noise"),
    "unknown attack": (["--attacks", "idlg,gan"], "--attacks"),
    "unknown sketch": (["--sketch", "fourier"], "--sketch"),
    "client too large": (["--client", "50"], "--client"),
    "negative client": (["--client", "-1"], "--client"),
    "no images": (["--images", "0"], "--images"),
    "images not an integer": (["--images", "two"], "--images"),
    "more images than the client has": (["--images", "1000"], "--images"),
    "zero steps": (["--steps", "0"], "--steps"),
    "zero iterations": (["--iterations", "0"], "--iterations"),
    "unknown model": (["--model", "resnet"], "--model"),
    "not images": (["--set", "data.dataset=synthetic"], "data.dataset"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_flags_give_one_line_and_exit_2(tmp_path, capsys, case):
    flags, word = BAD[case]
    code = main(["attack", "leakage", QUICK, "--out", str(tmp_path / "o"), "--quiet", *flags])
    assert code == 2
    _one_line_error(capsys.readouterr().err, word)
    assert not (tmp_path / "o" / "leakage.csv").exists()


def test_module_entry_point_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "fedsim", "attack", "leakage", QUICK, "--ratios", "2",
         "--out", str(tmp_path / "o")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    _one_line_error(out.stderr, "--ratios")


def test_options_defaults_and_iterations():
    opts = parse_options()
    assert opts.ratios == (1.0, 0.1, 0.02) and opts.noise_stds == (0.0, 0.01, 0.1)
    assert opts.attacks == ("idlg", "ig") and opts.sketch == "gaussian" and opts.images == 4
    assert parse_options(iterations="50", attacks="dlg,ig").iterations == {"dlg": 50, "ig": 50}
    assert parse_options(iterations="ig=7").iterations == {"ig": 7}


@pytest.mark.parametrize("kind", ["gaussian", "srht", "countsketch"])
def test_sketch_factory_matches_the_operator(kind):
    from fedsim.privacy.sketch import make_sketch
    from fedsim.seeding import stream_seed

    make = sketch_factory(kind, seed=3)
    assert make(50, 50) is None  # b = d: the plain update
    sketch = make(50, 10)
    op = make_sketch(kind, 50, 10, stream_seed(3, f"leakage/sketch/{kind}/10"))
    v = torch.randn(50, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sketch(v), op.sketch(v[None])[0], rtol=1e-5, atol=1e-5)


def test_scenario_model_as_victim(tmp_path, capsys):
    out = tmp_path / "leak"
    assert main(["attack", "leakage", QUICK, "--out", str(out), *TINY, "--model",
                 "scenario"]) == 0
    rows = _rows(out)
    # quickstart's MLP 64-64-10: 64*64 + 64 + 64*10 + 10 parameters
    assert rows[0]["d"] == str(64 * 64 + 64 + 64 * 10 + 10)
    assert "scenario's model (mlp)" in (out / "leakage.md").read_text()
