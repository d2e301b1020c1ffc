"""Packaging and side effects: shipped scenarios and topologies found from an installed
wheel, ``fedsim --version``, the caller's torch thread count kept, ``device = "cuda:N"``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from fedsim.cli import main
from fedsim.errors import ScenarioError
from fedsim.runners import resolve_device, run_scenario
from fedsim.scenario import load_scenario
from fedsim.shipped import SCENARIOS_DIR, TOPOLOGIES_DIR, scenario_path, shipped_scenarios

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ shipped files


def test_shipped_files_live_in_the_package_and_the_checkout_links_to_them():
    assert SCENARIOS_DIR.parent.name == TOPOLOGIES_DIR.parent.name == "fedsim"
    assert "quickstart" in shipped_scenarios()
    assert (TOPOLOGIES_DIR / "abilene.graphml").is_file()
    # the README's `fedsim run scenarios/quickstart.toml` in a checkout
    assert (ROOT / "scenarios").resolve() == SCENARIOS_DIR
    assert (ROOT / "topologies").resolve() == TOPOLOGIES_DIR


def test_a_scenario_by_name_or_by_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert scenario_path("quickstart") == SCENARIOS_DIR / "quickstart.toml"
    assert scenario_path("quickstart.toml") == SCENARIOS_DIR / "quickstart.toml"
    own = tmp_path / "quickstart.toml"  # a file here wins over the shipped one
    own.write_text('name = "mine"\n')
    assert scenario_path("quickstart.toml") == Path("quickstart.toml")
    for missing in ("nope", "sub/quickstart.toml", "quickstart.json"):
        assert scenario_path(missing) == Path(missing)


def test_cli_finds_shipped_scenarios_and_topologies_from_any_folder(tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["list", "scenarios"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in shipped_scenarios())
    assert main(["list", "topologies"]) == 0
    assert "abilene" in capsys.readouterr().out
    assert main(["validate", "abilene_synthetic"]) == 0  # its topology = "abilene"
    assert "abilene_synthetic.toml: ok (abilene_synthetic:" in capsys.readouterr().out
    assert main(["topology", "abilene"]) == 0
    assert "11 nodes, 14 edges" in capsys.readouterr().out
    assert main(["validate", "no_such_scenario"]) == 2
    assert "scenario file not found: no_such_scenario" in capsys.readouterr().err


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedsim {version('fedsim')}"
    import fedsim

    assert fedsim.__version__ == version("fedsim")


# ------------------------------------------------------------------ torch threads


def _tiny(name: str = "quickstart", **overrides):
    sets = [f"{k}={v}" for k, v in {"rounds": 1, "variants": "{}", **overrides}.items()]
    return load_scenario(SCENARIOS_DIR / f"{name}.toml", sets)


@pytest.mark.parametrize("name", ["quickstart", "gossip_ring"])
def test_a_run_gives_back_the_callers_thread_count(tmp_path, monkeypatch, name):
    from fedsim.decentralized.runner import DecentralizedRun
    from fedsim.runners import FederatedRun

    seen = []

    def spy(real):  # records the thread count the run works with
        def method(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return real(self, *args, **kwargs)
        return method

    monkeypatch.setattr(FederatedRun, "round", spy(FederatedRun.round))
    monkeypatch.setattr(DecentralizedRun, "play", spy(DecentralizedRun.play))
    monkeypatch.delenv("FEDSIM_TORCH_THREADS", raising=False)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_scenario(_tiny(name), tmp_path / "run", base_dir=SCENARIOS_DIR, progress=False)
        assert seen and set(seen) == {1}  # the run's own setting (one thread on CPU)
        assert torch.get_num_threads() == 2  # and the caller's afterwards
    finally:
        torch.set_num_threads(saved)


def test_a_run_that_raises_gives_back_the_thread_count(tmp_path, monkeypatch):
    from fedsim.runners import FederatedRun

    def fail(self, rnd, cum_bytes=0):
        assert torch.get_num_threads() == 1
        raise RuntimeError("stop")

    monkeypatch.delenv("FEDSIM_TORCH_THREADS", raising=False)
    monkeypatch.setattr(FederatedRun, "round", fail)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="stop"):
            run_scenario(_tiny(), tmp_path / "run", base_dir=SCENARIOS_DIR, progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


# ------------------------------------------------------------------ devices


def _device_error(device: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as err:
        _tiny(device=device)
    return err.value


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:01", "cuda:-1", "cuda:x", "gpu:0"])
def test_unknown_devices_are_refused(device):
    err = _device_error(device)
    assert err.key == "device"
    assert "allowed: cpu, cuda, auto, cuda:N" in str(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_a_gpu_is_one_error_naming_device(device):
    err = _device_error(device)
    assert err.key == "device"
    assert f"'{device}' requested but torch sees no GPU" in str(err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_numbers_are_checked_against_the_gpus_torch_sees():
    count = torch.cuda.device_count()
    assert _tiny(device="cuda:0").device == "cuda:0"
    err = _device_error(f"cuda:{count}")
    assert err.key == "device" and f"torch sees {count} GPU" in str(err)


def test_resolve_device_counts_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("auto") == "cuda"
    with pytest.raises(ScenarioError, match=r"'cuda:2' requested but torch sees 2 GPUs; "
                                            r"allowed here: cpu, auto, cuda, cuda:0 to cuda:1"):
        resolve_device("cuda:2")


# ------------------------------------------------------------------ a built wheel


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_a_wheel_installed_elsewhere_runs_the_shipped_scenarios(tmp_path):
    """Build the wheel (offline: setuptools from this venv), install it into a fresh venv
    (no dependencies: they come from this venv via PYTHONPATH), and use it from a folder
    outside the repository."""
    src = tmp_path / "src"  # a copy, so the build leaves no build/ or egg-info here
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "fedsim", src / "fedsim",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    py = sys.executable
    _run([py, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
          "--no-index", "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist")],
         cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("fedsim-*.whl"))
    with zipfile.ZipFile(wheel) as zf:  # every shipped file, not only the ones used below
        packed = set(zf.namelist())
    for folder in (SCENARIOS_DIR, TOPOLOGIES_DIR):
        for path in folder.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert path.relative_to(ROOT).as_posix() in packed
    venv = tmp_path / "venv"
    _run([py, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    vpy = venv / "bin" / "python"
    _run([py, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)], cwd=tmp_path)

    work = tmp_path / "elsewhere"
    work.mkdir()
    deps = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    env = {**os.environ, "PYTHONPATH": deps, "FEDSIM_QUIET": "1"}
    where = _run([str(vpy), "-c", "import fedsim.shipped as s; print(s.SCENARIOS_DIR)"],
                 cwd=work, env=env).strip()
    shipped = Path(where)
    assert shipped.is_relative_to(venv) and (shipped / "quickstart.toml").is_file()

    fedsim = str(venv / "bin" / "fedsim")
    assert _run([fedsim, "--version"], cwd=work, env=env).strip() == f"fedsim {version('fedsim')}"
    assert "quickstart" in _run([fedsim, "list", "scenarios"], cwd=work, env=env)
    assert "11 nodes, 14 edges" in _run([fedsim, "topology", "abilene"], cwd=work, env=env)
    _run([fedsim, "run", "quickstart", "--set", "rounds=1", "--out", "out", "--quiet"],
         cwd=work, env=env)
    assert (work / "out" / "quickstart" / "deadline" / "metrics.csv").is_file()
    # by path, with a topology file that the scenario names ("abilene")
    _run([fedsim, "run", str(shipped / "abilene_synthetic.toml"), "--set", "rounds=1",
          "--out", "out", "--quiet"], cwd=work, env=env)
    metrics = sorted((work / "out" / "abilene_synthetic").glob("*/metrics.csv"))
    assert metrics and all(len(p.read_text().splitlines()) == 2 for p in metrics)  # 1 round
