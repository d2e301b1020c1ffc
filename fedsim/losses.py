"""The clients' training loss: cross-entropy, or a function of the user's.

A loss is ``fn(logits [B, C], labels [B]) -> [B]``, one loss per sample, like
``F.cross_entropy(..., reduction="none")``: the batched path masks the padding samples
of clients with fewer samples than a batch out of the mean, so it needs them one by one.
It must be built from torch operations (``torch.func`` differentiates it, vmapped over
clients). The same function gives the ``train_loss`` and ``test_loss`` columns.

In a scenario: ``algorithm.loss = "cross_entropy"`` (the default) or
``"package.module:function"``; from Python: ``fedsim.run(..., loss=fn)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedsim.errors import ScenarioError

LOSS_KEY = "algorithm.loss"
LOSSES = ("cross_entropy",)

Loss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-sample cross-entropy ``[B]`` of logits ``[B, C]`` and class labels ``[B]``."""
    return F.cross_entropy(logits, labels, reduction="none")


def check_loss_spec(spec: str) -> None:
    """``algorithm.loss`` is ``cross_entropy`` or ``package.module:function``."""
    from fedsim.models import check_factory_spec

    if isinstance(spec, str) and spec in LOSSES:
        return
    try:
        check_factory_spec(spec if isinstance(spec, str) else "", LOSS_KEY)
    except ScenarioError:
        raise ScenarioError(LOSS_KEY, f"must be 'cross_entropy' or 'package.module:function', "
                                      f"got {spec!r}") from None


def load_loss(spec: str, search_dirs: Sequence[Path] = ()) -> Loss | None:
    """The function ``algorithm.loss`` names; None for cross-entropy (fedsim's own, which
    keeps the fused engine)."""
    from fedsim.models import load_factory

    check_loss_spec(spec)
    if spec in LOSSES:
        return None
    return load_factory(spec, search_dirs, key=LOSS_KEY,
                        expected="(logits, labels) -> per-sample losses")


def check_loss(fn: Loss, model: nn.Module, input_shape: Sequence[int], num_classes: int,
               what: str) -> None:
    """Probe ``fn`` on the model's logits for two samples: it must return two finite
    per-sample losses through which gradients flow.

    Raises:
        ScenarioError: (``algorithm.loss``) it raised, or returned another shape.
    """
    import copy

    probe = copy.deepcopy(model).eval()
    dtype = next(probe.parameters()).dtype
    with torch.random.fork_rng(devices=[]):
        logits = probe(torch.zeros(2, *input_shape, dtype=dtype))
    labels = torch.zeros(2, dtype=torch.long)
    try:
        out = fn(logits, labels)
    except Exception as err:
        raise ScenarioError(LOSS_KEY, f"{what}(logits [2, {num_classes}], labels [2]) raised "
                                      f"{type(err).__name__}: {err}") from None
    if not isinstance(out, Tensor) or tuple(out.shape) != (2,):
        got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ScenarioError(LOSS_KEY, f"{what} must return one loss per sample ([B], like "
                                      f"cross_entropy(..., reduction='none')), got {got} "
                                      "for a batch of 2")
    if not out.requires_grad:
        raise ScenarioError(LOSS_KEY, f"{what}: its result does not depend on the logits "
                                      "through torch operations (no gradient)")
