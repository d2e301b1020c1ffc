"""A Ray session for a run: a local Ray on 127.0.0.1 started (and stopped) for it, or a
connection to a running cluster.

A local Ray is offline and quiet: no usage statistics, no dashboard, its servers on the
loopback address, its files in a fresh temporary folder (removed afterwards). Every
process it started (GCS, raylet, agents, workers) is recorded by PID and creation time;
after ``ray.shutdown()`` those still running are stopped by PID, so nothing outlives it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from fedsim.errors import FedsimError

# the environment of a local Ray: no usage statistics, servers on 127.0.0.1 (with
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray takes the loopback address as the node's, and
# binds its gRPC servers there instead of every interface)
LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
# idle shard actors (``ray_shards``) by (Ray job id, resource request): a run leaves its
# actors here for the next run of the same session (a study's variants and seeds)
IDLE_ACTORS: dict[tuple, list] = {}
_MAX_TEMP_ROOT = 28  # Ray's unix sockets lie ~78 characters below its temp dir (107 max)


@dataclass
class RaySession:
    """What ``ray_session`` opened.

    Attributes:
        started: True when this session started Ray (and stops it), False when it joined
            a running Ray (a cluster, or one the caller initialized).
        processes: ``(pid, create_time)`` of every process the local Ray started, seen
            when it was up and again before it was stopped.
        temp_dir: the local Ray's temporary folder (removed at the end).
    """

    started: bool
    processes: set[tuple[int, float]] = field(default_factory=set)
    temp_dir: str | None = None

    def record_processes(self) -> None:
        """Add the descendants of this process now running (Ray's servers and workers)."""
        import psutil

        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                self.processes.add((p.pid, p.create_time()))


def _temp_root() -> str | None:
    """Parent of Ray's temporary folder: the default one, or /tmp when that is too long."""
    root = tempfile.gettempdir()
    if len(root) > _MAX_TEMP_ROOT and os.path.isdir("/tmp"):
        return "/tmp"
    return None


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None,
                num_gpus: int | None = None) -> Iterator[RaySession]:
    """Ray for the block: joined when already initialized in this process, connected to
    ``address``, or (None) started here on 127.0.0.1 and stopped at the end.

    Args:
        address: a running cluster (``HOST:PORT``, ``ray://HOST:PORT``, ``auto``) or None.
        num_cpus: CPUs a local Ray offers (default: this machine's).
        num_gpus: GPUs a local Ray offers (default: those torch sees).

    Raises:
        FedsimError: Ray is not installed, or cannot start or connect (one line).
    """
    try:
        import ray
    except ImportError:
        raise FedsimError("--ray needs Ray: pip install 'ray[default]'") from None
    if ray.is_initialized():
        yield RaySession(started=False)
        return
    if address is not None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        try:
            ray.init(address=address, configure_logging=False, log_to_driver=True)
        except Exception as err:  # ConnectionError, ValueError, RuntimeError, ...
            raise FedsimError(f"--ray {address}: cannot connect to a Ray cluster there "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        try:
            yield RaySession(started=False)
        finally:
            IDLE_ACTORS.clear()
            ray.shutdown()  # disconnects (the job's actors end); the cluster keeps running
        return
    yield from _local(ray, num_cpus, num_gpus)


def _local(ray, num_cpus: int | None, num_gpus: int | None) -> Iterator[RaySession]:
    """Start a local Ray, yield its session, stop it and everything it started."""
    saved = {key: os.environ.get(key) for key in (*LOCAL_ENV, "RAY_ADDRESS")}
    os.environ.update(LOCAL_ENV)
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when imported: set its flag as well
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    saved_flag = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if saved_flag is not None:
        constants.ENABLE_RAY_CLUSTER = False
    os.environ.pop("RAY_ADDRESS", None)  # "local" must not join a cluster named there
    session = RaySession(started=True,
                         temp_dir=tempfile.mkdtemp(prefix="fsray", dir=_temp_root()))
    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        try:
            ray.init(address="local", include_dashboard=False,
                     num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus,
                     _temp_dir=session.temp_dir, _node_ip_address="127.0.0.1",
                     configure_logging=False, log_to_driver=True)
        except Exception as err:
            session.record_processes()
            raise FedsimError(f"--ray: could not start a local Ray ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else 'no message'})"
                              ) from None
        session.record_processes()
        yield session
    finally:
        session.record_processes()  # the actors' workers too
        IDLE_ACTORS.clear()
        if ray.is_initialized():
            ray.shutdown()
        stop_processes(session.processes)
        if saved_flag is not None:
            constants.ENABLE_RAY_CLUSTER = saved_flag
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(session.temp_dir, ignore_errors=True)


def alive(processes: set[tuple[int, float]]) -> list:
    """The processes of ``processes`` (pid, creation time) still running (zombies and
    reused PIDs do not count), as ``psutil.Process`` objects."""
    import psutil

    out = []
    for pid, created in processes:
        try:
            p = psutil.Process(pid)
            if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


def stop_processes(processes: set[tuple[int, float]], grace_s: float = 10.0) -> int:
    """Wait up to ``grace_s`` for the processes to end, then SIGTERM and SIGKILL them by
    PID; returns how many had to be stopped."""
    import psutil

    deadline = time.monotonic() + grace_s
    left = alive(processes)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = alive(processes)
    stopped = len(left)
    for stop in ("terminate", "kill"):
        for p in left:
            with contextlib.suppress(psutil.Error):
                getattr(p, stop)()
        psutil.wait_procs(left, timeout=5.0)
        left = [p for p in left if p.is_running() and _not_zombie(p)]
    return stopped


def _not_zombie(p) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
