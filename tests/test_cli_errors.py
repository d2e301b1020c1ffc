"""Every user mistake is one line on stderr and exit 2 (issue 9, section 3).

Each case below once ended in a traceback, a hang or a non-finite result. The CLI is
called in-process (``fedsim.cli.main``); only the bench child's death with its parent
needs real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from fedsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = str(ROOT / "scenarios" / "quickstart.toml")
RING = str(ROOT / "scenarios" / "gossip_ring.toml")
# a small run: one round, five clients, no variants (none of the cases gets to run it)
SMALL = ["--set", "rounds=1", "--set", "data.num_clients=5", "--set", "clients_per_round=3",
         "--set", "variants={}"]
LONG_NAME = "x" * 300  # over the 255 bytes a file name may have


def _cases() -> list:
    big_int = "9" * 5000  # int("9" * 5000) exceeds Python's 4300-digit limit
    sweep_agg = 'sweep={axes={agg={bad={"algorithm.aggregator"={name=[]}}}}}'
    return [
        # paths
        ("path over 255 chars", ["validate", f"/tmp/{LONG_NAME}.toml"], "cannot read"),
        ("run path over 255", ["run", f"/tmp/{LONG_NAME}.toml"], "cannot read"),
        ("long topology name", ["validate", QUICK, "--set", f"network.topology={LONG_NAME}"],
         "network.topology"),
        ("~user of nobody", ["validate", QUICK, "--set", "network.topology=~nosuchuser9/g.edges"],
         "network.topology"),
        ("long data path", ["validate", QUICK, "--set", "data.dataset=mnist",
                            "--set", f"data.path={LONG_NAME}"], "data.path"),
        # values
        ("5000-digit rounds", ["validate", QUICK, "--set", f"rounds={big_int}"], "rounds"),
        ("int beyond int64", ["validate", QUICK, "--set", "rounds=9223372036854775808"],
         "rounds"),
        ("int beyond float", ["validate", QUICK, "--set", f"algorithm.lr={'9' * 400}"],
         "algorithm.lr"),
        ("lr beyond float32", ["run", QUICK, *SMALL, "--set", "algorithm.lr=3.5e38"],
         "algorithm.lr"),
        ("mu beyond float32", ["run", QUICK, *SMALL, "--set", "algorithm.name=fedprox",
                               "--set", "algorithm.mu=1e39"], "algorithm.mu"),
        ("over_selection 1e308", ["run", QUICK, *SMALL, "--set", "network.policy=first_k",
                                  "--set", "network.over_selection=1e308"],
         "network.over_selection"),
        ("gossip seconds_per_sample 1e308",
         ["run", RING, "--set", "rounds=1", "--set", "network.compute.seconds_per_sample=1e308"],
         "network.compute.seconds_per_sample"),
        ("gossip steps of no time",
         ["run", RING, "--set", "rounds=1", "--set", "variants={}", "--set",
          "algorithm.name=gossip_sgd", "--set", "network.compute.seconds_per_sample=0"],
         "network.compute.seconds_per_sample"),
        ("lognormal sigma 40", ["run", RING, "--set", "rounds=1", "--set",
                                "network.compute.model=lognormal",
                                "--set", "network.compute.sigma=40"], "network.compute.sigma"),
        ("lognormal sigma 1000", ["run", QUICK, *SMALL, "--set", "network.compute.sigma=1000"],
         "network.compute.sigma"),
        ("latency 1e308 in a variant",
         ["run", QUICK, "--set", "rounds=1", "--set", "variants.slow.network.latency_s=1e308"],
         "variants.slow.network.latency_s"),
        ("bandwidth below 1 bit/s", ["run", QUICK, *SMALL, "--set", "network.bandwidth_bps=1e-300"],
         "network.bandwidth_bps"),
        ("rate reciprocal overflows", ["run", QUICK, *SMALL,
                                       "--set", "network.compute.model=shifted_exponential",
                                       "--set", "network.compute.rate=1e-320"],
         "network.compute.rate"),
        ("attack parameter beyond float32",
         ["validate", QUICK, "--set", "attack.name=alie", "--set", "attack.fraction=0.2",
          "--set", "attack.params={z=1e300}"], "attack.params.z"),
        # nesting that would exhaust Python's recursion
        ("3000 nested lists", ["validate", QUICK, "--set", "rounds=" + "[" * 3000 + "]" * 3000],
         "nested too deeply"),
        ("900 nested tables", ["validate", QUICK, "--set",
                               "attack.params=" + "{a=" * 900 + "1" + "}" * 900],
         "nested too deeply"),
        ("2000-part dotted key", ["validate", QUICK, "--set",
                                  "variants.v." + ".".join(["a"] * 2000) + "=1"],
         "nested too deeply"),
        # types inside free-form tables
        ("aggregator name a list (validate)",
         ["validate", QUICK, "--set", "algorithm.aggregator={name=[]}"],
         "algorithm.aggregator.name"),
        ("aggregator name a list (run)",
         ["run", QUICK, *SMALL, "--set", "algorithm.aggregator={name=[]}"],
         "algorithm.aggregator.name"),
        ("aggregator name a list (sweep)", ["sweep", QUICK, *SMALL, "--set", sweep_agg],
         "algorithm.aggregator.name"),
        # fedsim topology and bench
        ("topology seed -1", ["topology", "erdos_renyi", "--param", "n=10", "--param", "p=0.5",
                              "--seed", "-1"], "--seed"),
        ("topology 5000-digit param", ["topology", "ring", "--param", f"n={big_int}"], "n"),
        ("bench clock server-bps nan", ["bench", "clock", "--server-bps", "nan"], "--server-bps"),
        ("bench clock server-bps -1", ["bench", "clock", "--server-bps", "-1"], "--server-bps"),
        ("bench clock server-bps inf", ["bench", "clock", "--server-bps", "inf"], "--server-bps"),
        ("bench clock bytes -1", ["bench", "clock", "--bytes-up", "-1"], "--bytes-up"),
        ("bench flower timeout nan", ["bench", "flower", "--flower-timeout", "nan"],
         "--flower-timeout"),
        ("bench flower cpus 0", ["bench", "flower", "--flower-client-cpus", "0"],
         "--flower-client-cpus"),
        # argparse usage errors
        ("missing argument", ["run"], "required: scenario"),
        ("unknown command", ["nosuch"], "invalid choice"),
        ("unknown option", ["validate", QUICK, "--nope"], "unrecognized arguments"),
        ("bad int option", ["bench", "clock", "--clients", "x"], "--clients"),
        ("bad choice", ["compare", "--x", "speed", "a"], "--x"),
    ]


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in _cases()],
                         ids=[c[0] for c in _cases()])
def test_one_line_exit_2(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a case wrongly writes lands here
    if argv[0] in ("run", "sweep"):
        argv = [*argv, "--out", str(tmp_path / "out")]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedsim: error: ") and words in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written


def test_deeply_nested_file(tmp_path, capsys):
    path = tmp_path / "deep.toml"
    path.write_text("rounds = " + "[" * 3000 + "]" * 3000 + "\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deeply" in err and "Traceback" not in err


def test_help_still_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    assert "usage: fedsim run" in capsys.readouterr().out


# ------------------------------------------------------------------ bench children


def _gone(pid: int, timeout_s: float) -> bool:
    """True once ``pid`` has ended (a zombie counts: it no longer runs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _assert_child_dies_with_parent(tmp_path, parent_code: str) -> None:
    """Run ``parent_code`` (it prints its child's PID), SIGKILL it: the child must end too."""
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path)
    child_pid = None
    try:
        child_pid = int(parent.stdout.readline())
        time.sleep(2.0)  # let the child start its loop
        assert not _gone(child_pid, 0.0)  # it runs while its parent lives
        parent.kill()
        parent.wait(10)
        assert _gone(child_pid, 15.0)
    finally:
        _kill(parent.pid)
        if child_pid is not None:
            _kill(child_pid)
        parent.wait(10)
        parent.stdout.close()


def test_a_bench_child_dies_with_its_parent(tmp_path):
    """The clock bench's child process (a timing loop that would run for hours) ends when
    its parent is killed with SIGKILL, instead of running on at 100% CPU."""
    parent_code = textwrap.dedent("""
        import json, subprocess, sys
        from fedsim.bench.clock_bench import Workload
        from fedsim.bench.processes import child_env_of_this_process
        w = Workload(clients=50)
        cmd = [sys.executable, "-m", "fedsim.bench.clock_bench", "--mode", "timing",
               "--workload", json.dumps(vars(w)), "--repeats", "1000000000"]
        child = subprocess.Popen(cmd, env=child_env_of_this_process(),
                                 stdout=subprocess.DEVNULL)
        print(child.pid, flush=True)
        child.wait()
    """)
    _assert_child_dies_with_parent(tmp_path, parent_code)


def test_die_with_parent_when_the_parent_is_already_gone(tmp_path):
    """A child whose parent died before it asked to die with it ends at once."""
    code = textwrap.dedent("""
        import os, time
        os.environ["FEDSIM_BENCH_PARENT_PID"] = "1"  # not our parent: it is already gone
        from fedsim.bench.processes import die_with_parent
        die_with_parent()
        time.sleep(30)
    """)
    proc = subprocess.run([sys.executable, "-c", code], timeout=60, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL


def test_a_child_that_ignores_the_soft_signal_is_killed(tmp_path):
    """The Flower child gets SIGINT when its parent dies (so it can shut Ray down); one
    that ignores it is killed ``grace_s`` later."""
    child_code = ("import signal, time\n"
                  "from fedsim.bench.processes import die_with_parent\n"
                  "die_with_parent(signal.SIGINT, grace_s=1.0)\n"
                  "signal.signal(signal.SIGINT, lambda *a: None)\n"
                  "time.sleep(120)\n")
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        from fedsim.bench.processes import child_env_of_this_process
        child = subprocess.Popen([sys.executable, "-c", {child_code!r}],
                                 env=child_env_of_this_process(), start_new_session=True)
        print(child.pid, flush=True)
        time.sleep(120)
    """)
    _assert_child_dies_with_parent(tmp_path, parent_code)
