"""Child processes of the benchmarks: environment, stopping by PID, reaping leftovers,
and dying with the parent.

Used by ``fedsim bench flower``: Flower's simulation runs in a child process that leads
its own session; Ray starts servers and workers below it. Everything the child started
is found again by PID (with its creation time, so a reused PID is never touched) or by
the run's temporary directory in its command line or environment, and stopped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fedsim.bench.flower_child import RAY_DIR

_MAX_TEMP_ROOT = 28
PARENT_PID_ENV = "FEDSIM_BENCH_PARENT_PID"  # the pid a bench child must not outlive
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_env_of_this_process(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) naming this process as the parent
    that a bench child started with it dies with (see :func:`die_with_parent`)."""
    out = dict(os.environ if env is None else env)
    out[PARENT_PID_ENV] = str(os.getpid())
    return out


def die_with_parent(sig: int = signal.SIGKILL, grace_s: float = 30.0) -> None:
    """Make this bench child end when the process that started it ends, however it ends.

    On Linux the kernel sends ``sig`` when the parent exits (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere, and as a fallback, a daemon thread polls the parent's pid. If the parent was
    gone already (its pid, from ``FEDSIM_BENCH_PARENT_PID``, is no longer our parent),
    ``sig`` is sent at once. When ``sig`` lets the child clean up (SIGINT: the Flower child
    shuts Ray down), the thread kills the child ``grace_s`` seconds later if it still runs.

    Args:
        sig: the signal to receive when the parent dies.
        grace_s: seconds between ``sig`` and SIGKILL when ``sig`` is not SIGKILL.
    """
    expected = int(os.environ.get(PARENT_PID_ENV, "0") or 0) or os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != expected:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    if armed and sig == signal.SIGKILL:
        return

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(0.5)
        if not armed:
            os.kill(os.getpid(), sig)
        if sig != signal.SIGKILL:
            time.sleep(grace_s)
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def temp_root() -> str | None:
    """Parent of the run's temp dir: the default one, or /tmp when that is too long.

    Ray puts unix sockets at ``<dir>/r/session_<date>_<pid>/sockets/plasma_store``,
    about 78 characters below the default temp dir, and Linux allows 107 in all.
    """
    root = tempfile.gettempdir()
    if len(root) > _MAX_TEMP_ROOT and os.path.isdir("/tmp"):
        return "/tmp"
    return None


def child_env(work: Path) -> dict[str, str]:
    """Environment of the Flower child: no telemetry, state and temp files under ``work``."""
    env = child_env_of_this_process()
    for key in ("RAY_ADDRESS", "RAY_NAMESPACE"):
        env.pop(key, None)
    env.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_HOME=str(work / "flwr_home"),
        RAY_TMPDIR=str(work / RAY_DIR),
        RAY_USAGE_STATS_ENABLED="0",
        # Linux resolves Ray's node address from the outward interface; with this
        # Ray takes the loopback address, so its servers are reached on 127.0.0.1.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        TMPDIR=str(work / "tmp"),
        PYTHONUNBUFFERED="1",
    )
    return env


def stop_group(proc: subprocess.Popen) -> None:
    """Stop the child: SIGINT first, so it shuts Ray down and reaps Ray's processes itself;
    then SIGTERM and SIGKILL to its whole process group (it leads its own session)."""
    steps = ((signal.SIGINT, False, 20.0), (signal.SIGTERM, True, 10.0),
             (signal.SIGKILL, True, 5.0))
    for sig, group, wait_s in steps:
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def reap(seen: dict[int, float], marker: str, grace_s: float = 10.0) -> int:
    """Stop processes the Flower run left behind; returns how many had to be stopped.

    Candidates are the child's descendants seen while it ran (matched by pid and
    creation time, so a reused pid is never touched) and every process that names
    our temporary directory in its command line or environment (Ray's servers and
    workers inherit the child's ``TMPDIR`` and ``RAY_TMPDIR``, which lie inside it).
    Those still running ``grace_s`` seconds later get SIGTERM, then SIGKILL.
    """
    import psutil

    left: dict[int, psutil.Process] = {}
    for pid, created in seen.items():
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                left[pid] = p
        except psutil.Error:
            continue
    for p in processes_mentioning(marker):
        left.setdefault(p.pid, p)
    # Ray workers exit on their own shortly after their raylet stops: give them a moment.
    procs = still_running(list(left.values()), grace_s)
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    for p in still_running(procs, 5.0):
        try:
            p.kill()
        except psutil.Error:
            pass
    still_running(procs, 5.0)
    return len(procs)


def processes_mentioning(marker: str) -> list:
    """Running processes (not zombies, not this one) whose command line or environment
    contains ``marker``; processes we may not inspect are skipped."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.pid == os.getpid() or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if (any(marker in a for a in (p.info["cmdline"] or []))
                    or any(marker in v for v in p.environ().values())):
                found.append(p)
        except psutil.Error:
            continue
    return found


def still_running(procs: list, timeout_s: float) -> list:
    """The processes of ``procs`` still running (zombies count as ended) after waiting."""
    import psutil

    def running(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if running(p)]
    return alive
