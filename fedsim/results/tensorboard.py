"""A per-round callback that writes a run's metrics to TensorBoard (the ``tensorboard`` extra).

    result = fedsim.run("quickstart", variant="deadline",
                        callback=tensorboard_callback("runs/tb/deadline"))

Every numeric value of the round's row becomes a scalar of that name at step ``round``
(``test_accuracy``, ``train_loss``, ``sim_time_s``, ``cum_bytes``, ..., your metrics);
empty values (rounds without evaluation) are skipped. Metric names: the columns of
``metrics.csv`` (README, "Each run writes a directory").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsim.errors import FedsimError


def tensorboard_callback(log_dir: str | Path, writer: Any = None) -> Callable[[dict], None]:
    """A ``callback`` for ``fedsim.run`` that logs each round's numbers to TensorBoard.

    Args:
        log_dir: TensorBoard's log folder for this run.
        writer: an object with ``add_scalar(tag, value, step)`` and ``flush()`` (default:
            ``torch.utils.tensorboard.SummaryWriter(log_dir)``, which needs ``tensorboard``).

    Returns:
        The callback; its ``close()`` closes the writer.

    Raises:
        FedsimError: no writer given and ``tensorboard`` is not installed.
    """
    if writer is None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise FedsimError("TensorBoard logging needs the tensorboard package: pip install "
                              "'fedsim[tensorboard]'") from None
        writer = SummaryWriter(str(log_dir))

    def callback(row: dict) -> None:
        step = int(row["round"])
        for name, value in row.items():
            if name != "round" and isinstance(value, int | float) and not isinstance(
                    value, bool):
                writer.add_scalar(name, value, step)
        writer.flush()

    callback.close = writer.close if hasattr(writer, "close") else (lambda: None)
    return callback
