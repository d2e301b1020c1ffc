"""A Flower federation on this machine: one SuperLink and N SuperNodes on 127.0.0.1, an app
run on it with ``flwr run``, and everything stopped by PID afterwards.

Every process is started in its own session (process group), with ``FLWR_HOME`` in the
federation's work folder, telemetry and update checks off, and runtime dependency
installation disabled on the SuperLink (nothing is downloaded). ``stop`` sends SIGTERM,
then SIGKILL, to each process group it started, then to any process left that carries
the work folder in its command line or environment (``flwr-serverapp``,
``flwr-clientapp`` and ``flower-superexec`` children inherit ``FLWR_HOME``), so a run
leaves nothing behind. ``flwr run`` is given the SuperLink's explicit address, so it
never starts a detached local SuperLink of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError
from fedsim.flower.auth import NodeKey, make_node_key
from fedsim.flower.tls import TlsFiles

CONNECTION = "fedsim"  # the SuperLink connection's name in $FLWR_HOME/config.toml


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def executable(name: str) -> str:
    """The Flower command ``name`` next to this Python, else on PATH.

    Raises:
        FedsimError: not installed.
    """
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FedsimError(f"{name} not found (install flwr 1.42 in this environment)")
    return found


@dataclass
class Proc:
    """A process the federation started: its name, handle and log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        """Its PID (also its process group's id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.popen.poll() is None


@dataclass
class LocalFederation:
    """A SuperLink and SuperNodes on 127.0.0.1 for one deployment.

    Args:
        work: a folder of its own (FLWR_HOME, logs, keys); processes carry it in their
            environment, which is how leftovers are found.
        tls: serve the SuperLink over TLS with these files (None: ``--insecure``).
        auth: SuperNode authentication: the SuperLink accepts only registered keys; each
            node started with ``start_node`` gets a fresh key, registered unless told not.
            Needs ``tls`` (flwr 1.42 refuses authentication over an insecure channel).
        log: called with each line of progress.

    Use as a context manager, or call ``stop`` in a ``finally``.
    """

    work: Path
    tls: TlsFiles | None = None
    auth: bool = False
    log: Callable[[str], Any] = print
    procs: list[Proc] = field(default_factory=list)
    port: int = 0
    seen_pids: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.auth and self.tls is None:
            raise FedsimError("SuperNode authentication needs TLS (flwr 1.42's SuperLink "
                              "refuses --enable-supernode-auth without certificates)")
        self.work = Path(self.work).resolve()
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.home = self.work / "flwr_home"
        self.home.mkdir(exist_ok=True)

    # ---------------------------------------------------------------- set-up
    def env(self) -> dict[str, str]:
        """The environment of every process started (no telemetry, no update check,
        FLWR_HOME here, this Python's scripts first on PATH)."""
        env = dict(os.environ)
        for key in ("RAY_ADDRESS", "RAY_NAMESPACE"):
            env.pop(key, None)
        env.update(FLWR_HOME=str(self.home), FLWR_TELEMETRY_ENABLED="0",
                   FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1",
                   FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2",
                   FEDSIM_FLOWER_WORK=str(self.work),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        return env

    def _spawn(self, name: str, argv: Sequence[str]) -> Proc:
        """Start ``argv`` in its own session, output to ``logs/<name>.log``."""
        path = self.work / "logs" / f"{name}.log"
        with open(path, "ab") as out:
            popen = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env(),
                                     cwd=self.work, start_new_session=True)
        proc = Proc(name, popen, path)
        self.procs.append(proc)
        self.seen_pids.add(popen.pid)
        return proc

    def start_superlink(self, timeout_s: float = 60.0) -> None:
        """Start the SuperLink on a free port of 127.0.0.1 and write the connection."""
        self.port = free_port()
        argv = [executable("flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key),
                     "--ssl-ca-certfile", str(self.tls.ca)]
        if self.auth:
            argv.append("--enable-supernode-auth")
        proc = self._spawn("superlink", argv)
        conn = [f'address = "127.0.0.1:{self.port}"']
        conn.append("insecure = true" if self.tls is None else
                    f'root-certificates = "{self.tls.ca}"')
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            + "\n".join(conn) + "\n", encoding="utf-8")
        self._wait_port(self.port, proc, timeout_s)
        extra = (", TLS" if self.tls else "") + (", SuperNode authentication" if self.auth else "")
        self.log(f"fedsim deploy: SuperLink on 127.0.0.1:{self.port} (pid {proc.pid}{extra})")

    def _wait_port(self, port: int, proc: Proc, timeout_s: float) -> None:
        """Until ``port`` accepts connections; the process must stay alive meanwhile."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not proc.alive():
                raise FedsimError(f"fedsim deploy: {proc.name} exited at start (see {proc.log})")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    time.sleep(0.5)  # the HTTP app is up a moment after the socket
                    return
            time.sleep(0.2)
        raise FedsimError(f"fedsim deploy: {proc.name} did not listen on 127.0.0.1:{port} "
                          f"within {timeout_s:g} s (see {proc.log})")

    def register(self, key: NodeKey, timeout_s: float = 60.0) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode
        register``)."""
        out = subprocess.run([executable("flwr"), "supernode", "register", str(key.public),
                              CONNECTION], env=self.env(), cwd=self.work, capture_output=True,
                             text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise FedsimError(f"fedsim deploy: registering {key.public.name} failed: "
                              f"{(out.stdout + out.stderr).strip().splitlines()[-1:]}")

    def start_node(self, node_config: str, name: str | None = None,
                   register: bool = True, key: NodeKey | None = None) -> Proc:
        """Start a SuperNode with ``node_config`` (e.g. ``"partition-id=0"``).

        Args:
            node_config: its ``--node-config``.
            name: its log's name (default ``supernode<k>``).
            register: with ``auth``, register its key first (False: an unregistered node,
                which the SuperLink must refuse).
            key: its key pair (default: a fresh one, with ``auth``).
        """
        if not self.port:
            raise FedsimError("fedsim deploy: start the SuperLink first")
        name = name or f"supernode{sum(p.name.startswith('supernode') for p in self.procs)}"
        argv = [executable("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}",
                "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", node_config]
        argv += ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca)]
        if self.auth:
            key = key or make_node_key(self.work / "keys", name)
            if register:
                self.register(key)
            argv += ["--auth-supernode-private-key", str(key.private)]
        return self._spawn(name, argv)

    # ------------------------------------------------------------------- run
    def run_app(self, app_dir: Path, timeout_s: float,
                on_line: Callable[[str], Any] | None = None) -> int:
        """``flwr run APP_DIR fedsim --stream``: its output line by line to ``on_line``
        until the run ends; stopped (process group) after ``timeout_s``.

        Returns:
            ``flwr run``'s exit status (None-safe: -9 when it had to be killed).
        """
        argv = [executable("flwr"), "run", str(Path(app_dir).resolve()), CONNECTION, "--stream"]
        popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=self.env(), cwd=self.work,
                                 start_new_session=True, text=True, errors="replace")
        self.procs.append(Proc("flwr-run", popen, self.work / "logs" / "flwr-run.log"))
        self.seen_pids.add(popen.pid)
        log_file = open(self.work / "logs" / "flwr-run.log", "a", encoding="utf-8")  # noqa: SIM115

        def pump() -> None:
            assert popen.stdout is not None
            for line in popen.stdout:
                log_file.write(line)
                log_file.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))

        reader = threading.Thread(target=pump, name="flwr-run-output", daemon=True)
        reader.start()
        try:
            popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.log(f"fedsim deploy: flwr run still running after {timeout_s:g} s; stopping it")
            _stop_group(popen)
        reader.join(5.0)
        log_file.close()
        return popen.returncode if popen.returncode is not None else -9

    # ------------------------------------------------------------------ stop
    def stop_node(self, proc: Proc) -> None:
        """Kill one SuperNode (its whole process group) at once, as a crash would."""
        _stop_group(proc.popen, sig=signal.SIGKILL)

    def pids(self) -> set[int]:
        """Every PID started, and the descendants of those still running (now)."""
        import psutil

        out = set(self.seen_pids)
        for p in self.procs:
            try:
                out.update(c.pid for c in psutil.Process(p.pid).children(recursive=True))
            except psutil.Error:
                continue
        self.seen_pids |= out
        return out

    def stop(self) -> int:
        """Stop every process started (SIGTERM, then SIGKILL, per process group, newest
        first), then any process still carrying the work folder; returns how many of the
        latter had to be stopped."""
        from fedsim.bench.processes import processes_mentioning, still_running

        self.pids()
        for proc in reversed(self.procs):
            _stop_group(proc.popen)
        left = processes_mentioning(str(self.work))
        for p in left:
            try:
                p.terminate()
            except Exception:  # noqa: BLE001 - gone, or not ours to inspect
                pass
        for p in still_running(left, 5.0):
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass
        still_running(left, 5.0)
        return len(left)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_group(popen: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 5.0) -> None:
    """Signal the process group led by ``popen`` (``sig``, then SIGKILL) and reap it."""
    if popen.poll() is not None:
        _kill_group(popen.pid, signal.SIGKILL)  # its children may still run
        return
    _kill_group(popen.pid, sig)
    try:
        popen.wait(wait_s)
    except subprocess.TimeoutExpired:
        _kill_group(popen.pid, signal.SIGKILL)
        try:
            popen.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
    _kill_group(popen.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    """``killpg`` that ignores a group already gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
