"""The ``[m, d]`` buffer a federated round's updates are written into, kept across rounds.

Fresh memory costs a page fault per 4 KiB on its first touch: for 100k clients of the
benchmark MLP (5.7 GB of updates) that was about 5 s of a round on CPU, more than the
local SGD itself. The runner therefore keeps one buffer and hands its first ``m`` rows
to the trainer every round. A stage that keeps a view of the round's rows in its state
(none of fedsim's do) would see them overwritten by the next round, so after every
round ``check`` looks for such a view and, if one is found, the buffer is given up to
that stage and the next round gets a new one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor


class UpdateWorkspace:
    """Rows for a round's updates, reused from round to round.

    Args:
        d: parameters per update.
        dtype, device: the updates' dtype and device.
    """

    def __init__(self, d: int, dtype: torch.dtype, device: torch.device | str):
        self.d, self.dtype, self.device = d, dtype, torch.device(device)
        self._buf: Tensor | None = None

    def rows(self, m: int) -> Tensor:
        """A ``[m, d]`` tensor to write this round's updates into (contents undefined)."""
        if self._buf is None or self._buf.shape[0] < m:
            self._buf = None  # release the old one before the new one is allocated
            self._buf = torch.empty(m, self.d, dtype=self.dtype, device=self.device)
        return self._buf[:m]

    def check(self, *trees: Any) -> None:
        """Give the buffer up if a tensor in ``trees`` (stage states: dicts, lists, tuples,
        dataclasses of tensors) shares its memory."""
        if self._buf is not None and _holds(trees, self._buf.untyped_storage().data_ptr()):
            self._buf = None


def _holds(tree: Any, ptr: int) -> bool:
    """Whether a tensor in ``tree`` lives in the storage starting at ``ptr``."""
    if isinstance(tree, Tensor):
        return tree.untyped_storage().data_ptr() == ptr
    if isinstance(tree, dict):
        return any(_holds(v, ptr) for v in tree.values())
    if isinstance(tree, list | tuple):
        return any(_holds(v, ptr) for v in tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return any(_holds(getattr(tree, f.name), ptr) for f in dataclasses.fields(tree))
    return False
