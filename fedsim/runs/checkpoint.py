"""Checkpoint files of a run directory: ``checkpoint.pt`` to resume, ``model.pt`` to use.

``checkpoint.pt`` holds everything a run needs to continue exactly where it was: the
global model (or the nodes' models), the state of every stage and of the server
optimizer, every random stream (numpy and torch generator states), the simulated clock,
the clients' kept optimizer state and buffers, and the run loop's own bookkeeping
(the size of each metrics file at that round, the rows so far). It is written with
``torch.save`` to a temporary file, flushed to disk and renamed over the old one, so a
kill -9 at any moment leaves either the previous checkpoint or the new one.

``checkpoint.pt`` is a pickle: load only checkpoints you wrote yourself.

``model.pt`` is the final model as a ``state_dict`` of the run's module:
``module.load_state_dict(torch.load("model.pt"))``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedsim.errors import DataError, ScenarioError
from fedsim.results.output import output_error

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
FORMAT = 1  # bumped when the layout changes; older checkpoints are refused by name
# scenario fields that do not change what a run computes: they may differ on resume
NOT_COMPARED = frozenset({"output_dir", "checkpoint_every"})


def save_atomic(path: Path, obj: Any) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file renamed over it.

    Raises:
        OutputError: the file cannot be written (the previous one, if any, is kept).
    """
    import torch

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise output_error(path, err) from None


def save_checkpoint(run_dir: Path, state: Mapping[str, Any]) -> None:
    """Write ``run_dir/checkpoint.pt`` atomically (``state`` plus the format number)."""
    save_atomic(Path(run_dir) / CHECKPOINT, {"format": FORMAT, **state})


def load_checkpoint(run_dir: Path, scenario: Mapping[str, Any], metric_columns: tuple,
                    device: str) -> dict:
    """The checkpoint of ``run_dir``, checked to belong to this scenario.

    Args:
        run_dir: the run directory given to ``--resume``.
        scenario: the resolved scenario as a dict (``scenario.to_dict``); it must equal the
            one the run started with, field for field (but ``NOT_COMPARED``).
        metric_columns: the user metrics of this call; they must be the run's.
        device: where tensors are loaded.

    Raises:
        DataError: no checkpoint, or not one fedsim can read.
        ScenarioError: the scenario or the metrics differ from the run's.
    """
    import torch

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint to resume from (set checkpoint_every = K "
                        "in the scenario to write one every K rounds)")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise DataError(f"{path}: not a fedsim checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{path}: not a checkpoint of this fedsim version "
                        f"(format {state.get('format') if isinstance(state, dict) else '?'}, "
                        f"expected {FORMAT})")
    key = first_difference(state["scenario"], scenario)
    if key is not None:
        raise ScenarioError(key, f"differs from the run being resumed in {run_dir}; resume "
                                 "with the scenario (and --set options) it was started with")
    if tuple(state["metric_columns"]) != tuple(metric_columns):
        raise ScenarioError("metrics", f"the run in {run_dir} logged "
                                       f"{list(state['metric_columns'])}; resume with the same")
    return state


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """The first dotted key at which two scenario dicts differ (but ``NOT_COMPARED``), or
    None."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for name in sorted(set(old) | set(new)):
            key = f"{prefix}{name}"
            if key in NOT_COMPARED:
                continue
            if name not in old or name not in new:
                return key
            found = first_difference(old[name], new[name], f"{key}.")
            if found is not None:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


def load_flat(module, params, buffers=None):
    """Copy flat ``params [d]`` (``parameters_to_vector`` order) and ``buffers [b]``
    (``buffers()`` order, as floats; None: keep the module's) into ``module``; returns it."""
    import torch
    from torch.nn.utils import vector_to_parameters

    with torch.no_grad():
        vector_to_parameters(params.detach().to(next(module.parameters())),
                             module.parameters())
        offset = 0
        for buf in module.buffers():
            if buffers is not None:
                part = buffers[offset:offset + buf.numel()].detach()
                buf.copy_(part.reshape(buf.shape).to(buf.device, buf.dtype))
            offset += buf.numel()
    return module


def save_model(run_dir: Path, module, params, buffers) -> Path:
    """Write ``run_dir/model.pt``: ``module``'s ``state_dict`` (on CPU) with the flat
    ``params [d]`` and ``buffers [b]`` (or None) copied in; ``module`` is left unchanged."""
    import copy

    model = load_flat(copy.deepcopy(module).cpu(), params.cpu(),
                      None if buffers is None else buffers.cpu())
    path = Path(run_dir) / MODEL
    save_atomic(path, model.state_dict())
    return path
