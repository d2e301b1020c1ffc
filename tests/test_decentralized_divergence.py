"""Decentralized runs: divergence is reported (one line, diverged_round); threads change nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_dsgd import run, write

from fedsim.divergence import FedsimWarning, _one_line_hook, check_finite, warn

ROOT = Path(__file__).resolve().parents[1]
DECENTRALIZED = ["dsgd", "gossip_sgd", "accelerated_gossip_sgd"]


@pytest.mark.parametrize("variant", DECENTRALIZED)
def test_divergence_is_reported_and_recorded(tmp_path, variant):
    path = write(tmp_path, n=4, rounds=3, lr=1e30, model="mlp")
    with pytest.warns(FedsimWarning, match=r"node models have non-finite values at round 1 "):
        (res,) = run(path, tmp_path / "out", variant)
    assert res.summary["diverged_round"] == 1
    assert res.summary["rounds_completed"] == 3  # like the federated runner: keeps going


@pytest.mark.parametrize("variant", ["dsgd", "gossip_sgd"])
def test_a_stable_run_has_no_diverged_round(tmp_path, variant):
    path = write(tmp_path, n=4, rounds=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FedsimWarning)
        (res,) = run(path, tmp_path / "out", variant)
    assert res.summary["diverged_round"] is None


def test_federated_divergence_is_reported_although_the_bad_rows_are_rejected(tmp_path):
    # lr = 1e30: every client's local SGD overflows; the rows are rejected before they reach
    # the global model (which stays finite), and the run still says it diverged
    path = write(tmp_path, n=4, rounds=2, lr=1e30, model="mlp")
    with pytest.warns(FedsimWarning, match=r"^dec/fedavg: 4 honest clients' updates were "
                                           r"non-finite at round 1 and were rejected \(local"):
        (res,) = run(path, tmp_path / "out", "fedavg")
    assert res.summary["diverged_round"] == 1
    assert res.summary["rejected_rows"] == 8  # 4 clients x 2 rounds
    assert bool(torch.isfinite(res.final_params).all())


def test_federated_runner_checks_the_global_model():
    from types import SimpleNamespace

    from fedsim.runners import FederatedRun

    run_ = SimpleNamespace(label="fed", diverged_round=None,
                           honest_rejected=0, params=torch.tensor([0.0, float("inf")]))
    with pytest.warns(FedsimWarning, match=r"^fed: the global model has non-finite values "
                                           r"at round 7 \(diverged"):
        FederatedRun._check_finite(run_, 7)
    assert run_.diverged_round == 7


def test_check_finite_reports_the_first_round_only():
    bad, good = torch.tensor([1.0, float("nan")]), torch.zeros(2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert check_finite(good, 1, None, "m") is None
        assert check_finite(bad, 2, None, "m2") == 2
        assert check_finite(bad, 3, 2, "m3") == 2
        assert check_finite(torch.tensor([float("inf")]), 4, None, "m4") == 4
    assert [str(w.message) for w in seen] == ["m2", "m4"]


def test_warning_prints_on_one_line():
    lines = []

    class Stream:
        def write(self, text):
            lines.append(text)

    def previous(message, category, filename, lineno, file=None, line=None):
        lines.append(f"previous: {category.__name__}: {message}")

    show = _one_line_hook(previous)
    show("a run: diverged", FedsimWarning, "x.py", 3, file=Stream())
    show("plain", UserWarning, "x.py", 4, file=Stream())
    assert lines == ["fedsim: warning: a run: diverged\n", "previous: UserWarning: plain"]
    assert getattr(warnings.showwarning, "_fedsim_one_line", False) or warnings.showwarning \
        is warnings._showwarning_orig  # installed (or swapped out by pytest's recorder)


def test_warn_makes_one_line():
    with pytest.warns(FedsimWarning) as seen:
        warn("a run: the node models\n  have non-finite values")
    assert str(seen[0].message) == "a run: the node models have non-finite values"


def test_cli_divergence_warning_is_one_line(tmp_path):
    path = write(tmp_path, n=4, rounds=2, lr=1e30, model="mlp")
    out = subprocess.run([sys.executable, "-m", "fedsim", "run", str(path), "--quiet",
                          "--variant", "gossip_sgd", "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0
    warned = [line for line in out.stderr.splitlines() if "non-finite" in line]
    assert warned == ["fedsim: warning: dec/gossip_sgd: the node models have non-finite values at "
                      "round 1 (diverged; try a smaller algorithm.lr)"]
    assert "warnings.warn" not in out.stderr and "UserWarning" not in out.stderr


def _metrics_with_threads(tmp_path: Path, threads: int, variant: str, *overrides) -> bytes:
    path = write(tmp_path, n=6, rounds=5, model="mlp")
    out = tmp_path / f"t{threads}"
    env = {**os.environ, "FEDSIM_TORCH_THREADS": str(threads)}
    sets = [arg for o in overrides for arg in ("--set", o)]
    subprocess.run([sys.executable, "-m", "fedsim", "run", str(path), "--quiet", "--variant",
                    variant, "--out", str(out), *sets], check=True, capture_output=True,
                   env=env, cwd=tmp_path)
    (run_dir,) = [p.parent for p in out.rglob("metrics.csv")]
    files = [run_dir / "metrics.csv", run_dir / "consensus.csv"]
    return b"".join(f.read_bytes() for f in files if f.exists())


@pytest.mark.parametrize("variant, overrides", [
    ("gossip_sgd", ()), ("accelerated_gossip_sgd", ()),
    ("fedavg", ("clients_per_round=1",)),  # one client: one matrix product MKL would split
])
def test_results_do_not_depend_on_the_thread_count(tmp_path, variant, overrides):
    one = _metrics_with_threads(tmp_path, 1, variant, *overrides)
    two = _metrics_with_threads(tmp_path, 2, variant, *overrides)
    assert one == two
