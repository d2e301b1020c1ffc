"""One divergence check for every runner, and warnings printed as one line.

Python prints a ``UserWarning`` on two lines (the location, then the source line that
raised it). A :class:`FedsimWarning` prints as ``fedsim: warning: <message>``, the form of
the CLI's errors (a hook on ``warnings.showwarning``, installed on import, that passes
every other warning on unchanged); it is still a warning, so ``warnings.simplefilter`` and
``pytest.warns`` see it as usual.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


class FedsimWarning(UserWarning):
    """A warning fedsim reports to a user on one line."""


def warn(message: str) -> None:
    """Emit ``message`` (made one line) as a :class:`FedsimWarning`."""
    warnings.warn(" ".join(message.split()), FedsimWarning, stacklevel=2)


def _one_line_hook(previous):
    """``warnings.showwarning`` that prints FedsimWarning as one line, others as ``previous``."""

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(category, type) and issubclass(category, FedsimWarning):
            stream = file if file is not None else sys.stderr
            try:
                stream.write(f"fedsim: warning: {message}\n")
            except OSError:  # like warnings' own: a closed or broken stream loses it
                pass
            return
        previous(message, category, filename, lineno, file, line)

    show._fedsim_one_line = True
    return show


# Installed once, when the runners import this module: a ``catch_warnings`` block (pytest's
# recorder included) swaps it out and back in as usual.
if not getattr(warnings.showwarning, "_fedsim_one_line", False):
    warnings.showwarning = _one_line_hook(warnings.showwarning)


def check_finite(values: Tensor, rnd: int, diverged_round: int | None, message: str
                 ) -> int | None:
    """The run's first round with non-finite model values; warns (one line) when it is ``rnd``.

    Args:
        values: the model(s) after round ``rnd`` (the global model, or every node's).
        rnd: the round just played.
        diverged_round: the run's first diverged round so far (None: none yet).
        message: the warning, when the model first turns non-finite.

    Returns:
        ``diverged_round``, or ``rnd`` when the values turn non-finite now.
    """
    import torch

    if diverged_round is None and not bool(torch.isfinite(values).all()):
        warn(message)
        return rnd
    return diverged_round
