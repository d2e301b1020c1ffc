"""Helpers shared by the benchmarks: repeated timing, memory, the JSON line."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (a bad value is a one-line usage error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device cpu|cuda|cuda:N|auto`` (default cpu) for a bench with tensor work."""
    parser.add_argument("--device", default="cpu",
                        help="where fedsim and the hand-written programs run: cpu (default), "
                             "cuda, cuda:N, or auto (cuda when torch sees a GPU)")


def bench_device(name: str) -> str:
    """``--device`` resolved as a scenario's ``device`` is; a device torch cannot use is a
    one-line error naming ``--device``."""
    from fedsim.errors import FedsimError, ScenarioError
    from fedsim.runners import resolve_device

    if name not in ("cpu", "auto", "cuda") and not (name.startswith("cuda:")
                                                    and name[5:].isdigit()):
        raise FedsimError(f"--device: must be cpu, cuda, cuda:N or auto, got {name!r}")
    try:
        return resolve_device(name)
    except ScenarioError as exc:
        raise FedsimError(f"--device: {exc.message}") from None


def device_name(device: str) -> str:
    """The device in words for a report: the GPU's name, or the CPU count."""
    if device.startswith("cuda"):
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cpus)"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call, by ``time.perf_counter``."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """Median and all wall times of ``repeats`` calls of ``fn``."""
    times = [timed(fn)[0] for _ in range(max(1, repeats))]
    return statistics.median(times), times


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(figures: dict, stream=None) -> None:
    """Print the figures as one JSON line (the last line a bench command prints)."""
    print(json.dumps(figures, sort_keys=False), file=stream or sys.stdout, flush=True)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block on ``threads`` torch threads (None: what fedsim's runner picks).

    Sets ``FEDSIM_TORCH_THREADS`` (which fedsim's runner reads) and the process's torch
    thread count, so hand-written comparison code runs under the same setting; both are
    restored afterwards.
    """
    import torch

    from fedsim.runners import configure_threads

    saved_env = os.environ.get("FEDSIM_TORCH_THREADS")
    saved = torch.get_num_threads()
    try:
        if threads is not None:
            os.environ["FEDSIM_TORCH_THREADS"] = str(threads)
        configure_threads("cpu")
        yield
    finally:
        if saved_env is None:
            os.environ.pop("FEDSIM_TORCH_THREADS", None)
        else:
            os.environ["FEDSIM_TORCH_THREADS"] = saved_env
        torch.set_num_threads(saved)
