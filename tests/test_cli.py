"""The ``fedsim`` command as a user meets it: one-line errors, exit codes, outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fedsim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "FEDSIM_QUIET": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fedsim", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands():
    out = fedsim("--help")
    assert out.returncode == 0
    for command in ("run", "validate", "list", "topology", "plot", "compare"):
        assert command in out.stdout


def test_help_does_not_import_torch():
    code = "import sys; from fedsim.cli import _parser; _parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_validate_ok():
    out = fedsim("validate", "scenarios/quickstart.toml")
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout and "deadline" in out.stdout


MALFORMED = {
    "unknown key": ("[data]\nnum_clients = 10\nflavour = 1\n", "data.flavour"),
    "wrong type": ('rounds = "many"\n', "rounds"),
    "negative bandwidth": ("[network]\nbandwidth_bps = -1e6\n", "network.bandwidth_bps"),
    "unknown topology": ('[network]\ntopology = "klein_bottle"\n', "network.topology"),
    "missing trace file": ('[network.compute]\nmodel = "trace"\ntrace = "missing.csv"\n',
                           "network.compute.trace"),
    "cohort too large": ("clients_per_round = 20\n[data]\nnum_clients = 5\n",
                         "clients_per_round"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("command", ["validate", "run"])
def test_malformed_scenarios_give_one_line_and_exit_2(tmp_path, case, command):
    text, key = MALFORMED[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = fedsim(command, str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("fedsim: error: ") and key in lines[0]
    assert "Traceback" not in out.stderr


def test_bad_set_flag_is_one_line(tmp_path):
    out = fedsim("validate", "scenarios/quickstart.toml", "--set", "network.bandwidth_bps=fast")
    assert out.returncode == 2
    assert "network.bandwidth_bps" in out.stderr and "Traceback" not in out.stderr


def test_unknown_variant_is_one_line():
    out = fedsim("run", "scenarios/quickstart.toml", "--variant", "sometimes")
    assert out.returncode == 2 and "wait_for_all" in out.stderr


def test_list_and_topology(tmp_path):
    out = fedsim("list")
    assert out.returncode == 0 and "abilene" in out.stdout and "digits" in out.stdout
    for kind in ("scenarios", "topologies", "datasets", "models", "algorithms"):
        assert f"\n{kind}: " in f"\n{out.stdout}"
    assert "algorithms: fedavg, fedprox, dsgd, gossip_sgd, accelerated_gossip_sgd" in out.stdout
    assert "server_opts: sgd, fedavgm, fedadagrad, fedadam, fedyogi" in out.stdout
    assert "local_opts: sgd, adam" in out.stdout
    assert "compressions: none, sketch, fetchsgd, topk" in out.stdout
    assert "privacy_modes: none, central, local, sample" in out.stdout
    assert "aggregators: mean, coordinate_median, trimmed_mean, krum, centered_clipping, gm, " \
           "bgmd" in out.stdout
    png = tmp_path / "ring.png"
    out = fedsim("topology", "ring", "--param", "n=8", "--save", str(png))
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 0
    # the report's lines, by hand for the ring of 8 (unit-rate edges): lambda_2 = 2 - 2 cos(pi/4)
    # = 0.5858; Metropolis weights 1/3 on every edge and node, so W = I - L/3 and its gap is
    # lambda_2 / 3 = 0.1953; Boyd's guarantee lambda_2 / 2 = 0.2929; the accelerated one
    # 1 / (2 sqrt(chi_1 chi_2)) with chi_1 = 1 / lambda_2, chi_2 = 7/16: 0.5786. The exact
    # mean-square rates come from fedsim.network.gossip_moments (tests/test_gossip_moments.py).
    lines = [line.strip() for line in out.stdout.splitlines()]
    assert lines[:6] == [
        "ring: 8 nodes, 8 edges, connected",
        "diameter 4 hops; degree min 2 / mean 2.00 / max 2",
        "Metropolis spectral gap 0.1953; algebraic connectivity 0.5858",
        "latency  total n/a, min n/a, max n/a, longest shortest path n/a",
        "bandwidth total n/a, min n/a, max n/a",
        "gossip, one exchange per edge per s: E||x - mean||^2 decays per s at",
    ]
    assert lines[6] == ("randomized >= 0.2929, exact 0.5361; accelerated >= 0.5786, exact "
                        "0.7197; speed-up 1.34x (exact)")
    assert "edges without latency_s: 8, without bandwidth_bps: 8" in lines[7]
    out = fedsim("topology", "ring", "--param", "n=1")
    assert out.returncode == 2 and "network.topology_params.n" in out.stderr


def test_missing_run_dir_for_plot_is_one_line(tmp_path):
    out = fedsim("compare", str(tmp_path / "nothing"))
    assert out.returncode == 2 and "nothing" in out.stderr and "Traceback" not in out.stderr


def test_sweep_without_a_grid_is_one_line():
    out = fedsim("sweep", "scenarios/quickstart.toml")
    assert out.returncode == 2 and "sweep" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args", [["flower", "--clients", "0"], ["limit", "--clients", "-5"],
                                  ["clock", "--clients", "0"], ["scale", "--cohort", "0"],
                                  ["limit", "--device", "gpu"], ["scale", "--device", "cuda:x"],
                                  ["flower", "--device", "tpu"], ["scale", "--hidden", "-1"],
                                  ["scale", "--hidden", "1000000000"]])
def test_bad_bench_flags_are_one_line(args):
    out = fedsim("bench", *args)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("fedsim: error:") and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    if "--device" in args:
        assert "--device: must be cpu, cuda, cuda:N or auto" in out.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")
def test_bench_device_cuda_without_a_gpu_is_one_line():
    out = fedsim("bench", "scale", "--device", "cuda")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "--device: 'cuda' requested but torch sees no GPU" in out.stderr
