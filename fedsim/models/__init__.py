"""Torch models used by scenarios, built from a ``ModelConfig``: fedsim's own or the user's.

fedsim's models (``logreg``, ``mlp``, ``cnn``) are plain ``nn.Module``s without
BatchNorm, dropout or other state; a whole cohort of copies is trained at once with
``torch.func.vmap`` (see ``fedsim.population``, which also batches Dropout and
BatchNorm in user models).

A user's own model comes from ``model.factory = "package.module:function"`` (or
``fedsim.run(..., model=...)`` in Python): the function is called as
``function(input_shape, num_classes)`` and must return an ``nn.Module`` mapping
``[batch, *input_shape]`` to ``[batch, num_classes]`` logits. Every way it can fail
(import, attribute, what it returns, its forward pass) is one ``ScenarioError``
naming ``model.factory``.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from fedsim.config import ModelConfig
from fedsim.errors import ScenarioError

MODELS = ("logreg", "mlp", "cnn")
BUFFER_POLICIES = ("average", "local")  # model.buffers
FACTORY_KEY = "model.factory"

# Channels of the two conv layers of the CNN.
CNN_CHANNELS = (16, 32)
# The CNN max-pools (2x2) after a conv while the feature map is at least this large.
CNN_POOL_MIN_SIZE = 12


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int = 0,
    search_dirs: Sequence[Path] = (),
) -> nn.Module:
    """Build the model named by ``cfg.name`` (or made by ``cfg.factory``), deterministically.

    The global torch RNG state is left untouched: initialization runs inside
    ``torch.random.fork_rng`` seeded with ``seed``.

    Args:
        cfg: the scenario's model section (``name`` in ``MODELS``, ``hidden`` widths, or
            ``factory`` ``"package.module:function"``, which wins over ``name``).
        input_shape: shape of one sample, without the batch dimension, e.g. ``(60,)``
            or ``(1, 28, 28)``.
        num_classes: number of output logits.
        seed: initialization seed; the same seed gives the same parameters.
        search_dirs: folders a factory's module is also looked for in, after
            ``sys.path`` (the scenario's folder, the working folder).

    Returns:
        An ``nn.Module`` mapping ``[batch, *input_shape]`` to ``[batch, num_classes]``.

    Raises:
        ScenarioError: ``model.name`` is unknown, ``model.hidden`` has a width < 1,
            ``cnn`` is asked for on an input that is not ``[C, H, W]``, or the factory
            cannot be imported, fails, or returns no fitting module (``model.factory``).
    """
    if cfg.factory:
        return make_model(load_factory(cfg.factory, search_dirs), input_shape, num_classes,
                          seed, what=cfg.factory)
    if cfg.name not in MODELS:
        raise ScenarioError(
            "model.name", f"unknown model {cfg.name!r}; allowed: {', '.join(MODELS)}"
        )
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ScenarioError("model", f"input shape must be non-empty and positive, got {shape}")
    if num_classes < 2:
        raise ScenarioError("model", f"num_classes must be >= 2, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.name == "logreg":
            return logreg(shape, num_classes)
        if cfg.name == "mlp":
            return mlp(shape, num_classes, tuple(cfg.hidden))
        return cnn(shape, num_classes)


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten, then one linear layer.

    Args:
        input_shape: shape of one sample.
        num_classes: number of output logits.

    Returns:
        ``Sequential(Flatten, Linear)``.
    """
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...]) -> nn.Module:
    """A fully connected network: flatten, then Linear+ReLU per hidden width, then Linear.

    Args:
        input_shape: shape of one sample.
        num_classes: number of output logits.
        hidden: widths of the hidden layers (empty gives logistic regression).

    Returns:
        An ``nn.Sequential``; e.g. 60-200-10 has 60*200+200+200*10+10 = 14210 parameters.
    """
    if any(int(h) < 1 for h in hidden):
        raise ScenarioError("model.hidden", f"hidden widths must be >= 1, got {list(hidden)}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A small CNN: two 3x3 conv+ReLU blocks (each max-pooled while the map is large), Linear.

    Sizes: [1, 8, 8] -> 8x8 maps (no pooling); [1, 28, 28] -> 14 -> 7; [3, 32, 32] -> 16 -> 8.
    No BatchNorm and no dropout (the golden numbers of the shipped scenarios rely on it).

    Args:
        input_shape: ``(channels, height, width)`` of one image.
        num_classes: number of output logits.

    Returns:
        An ``nn.Sequential``.

    Raises:
        ScenarioError: the input is not an image shape ``[C, H, W]``.
    """
    if len(input_shape) != 3:
        raise ScenarioError(
            "model.name",
            f"cnn needs image inputs of shape [C, H, W], got {list(input_shape)}; "
            f"use 'mlp' or 'logreg' for flat features",
        )
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out_channels in CNN_CHANNELS:
        layers += [nn.Conv2d(channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        channels = out_channels
        if min(height, width) >= CNN_POOL_MIN_SIZE:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(channels * height * width, num_classes)]
    return nn.Sequential(*layers)


def check_factory_spec(spec: str, key: str = FACTORY_KEY) -> tuple[str, str]:
    """``"package.module:function"`` -> ``("package.module", "function")``.

    Raises:
        ScenarioError: (``key``, e.g. ``model.factory``) the text is not of that form.
    """
    module, sep, attr = spec.partition(":")
    names = module.split(".") + attr.split(".")
    if not sep or not all(part.isidentifier() for part in names):
        raise ScenarioError(key, f"must be 'package.module:function', got {spec!r}")
    return module, attr


@contextlib.contextmanager
def _import_path(search_dirs: Sequence[Path]) -> Iterator[None]:
    """``search_dirs`` appended to ``sys.path`` for the block (installed packages win)."""
    added = [str(Path(d).resolve()) for d in search_dirs]
    added = [d for i, d in enumerate(added) if d not in sys.path and d not in added[:i]]
    sys.path.extend(added)
    try:
        yield
    finally:
        for d in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def load_factory(spec: str, search_dirs: Sequence[Path] = (), key: str = FACTORY_KEY,
                 expected: str = "(input_shape, num_classes) -> nn.Module") -> Callable:
    """The function named by ``"package.module:function"`` (``function`` may be dotted).

    The module is imported from ``sys.path``, then from ``search_dirs``.

    Raises:
        ScenarioError: (``key``: ``model.factory``, ``algorithm.loss``) a malformed name, a
            module that cannot be imported (or raises while importing), a missing
            attribute, or one that is not callable.
    """
    module_name, attr = check_factory_spec(spec, key)
    try:
        with _import_path(search_dirs):
            obj = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = f" ({err})" if err.name != module_name else ""
        raise ScenarioError(key, f"cannot import module {module_name!r}{missing}; "
                            "it must be importable (installed, or a .py file next to the "
                            "scenario or in the working folder)") from None
    except Exception as err:  # the user's module failed while importing
        raise ScenarioError(key, f"importing {module_name!r} raised "
                            f"{type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ScenarioError(key, f"module {module_name!r} has no attribute "
                                f"{attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ScenarioError(key, f"{spec!r} is a {type(obj).__name__}, not a function "
                            f"{expected}")
    return obj


def make_model(factory: Callable | nn.Module, input_shape: Sequence[int], num_classes: int,
               seed: int = 0, what: str = "the model factory") -> nn.Module:
    """A user's model: ``factory(input_shape, num_classes)`` under a seeded RNG, or a copy of
    a given module; checked to map ``[2, *input_shape]`` to ``[2, num_classes]``.

    Args:
        factory: a function ``(input_shape: tuple[int, ...], num_classes: int) -> nn.Module``,
            or an ``nn.Module`` (deep-copied: its own initialization is the start).
        input_shape: shape of one sample.
        num_classes: number of output logits.
        seed: seeds torch's RNG (inside ``fork_rng``) while the factory runs.
        what: how errors name the factory.

    Raises:
        ScenarioError: (``model.factory``) the factory raised, returned something other
            than an ``nn.Module``, or the module's forward pass fails or gives another shape.
    """
    import copy

    shape = tuple(int(s) for s in input_shape)
    if isinstance(factory, nn.Module):
        model = copy.deepcopy(factory)
        what = f"the given {type(factory).__name__}"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = factory(shape, int(num_classes))
            except Exception as err:
                raise ScenarioError(FACTORY_KEY, f"{what}({shape}, {num_classes}) raised "
                                    f"{type(err).__name__}: {err}") from None
        if not isinstance(model, nn.Module):
            raise ScenarioError(FACTORY_KEY, f"{what}({shape}, {num_classes}) returned "
                                f"{type(model).__name__}, not a torch.nn.Module")
    if not any(True for _ in model.parameters()):
        raise ScenarioError(FACTORY_KEY, f"{what}: the module has no parameters to train")
    _check_forward(model, shape, num_classes, what)
    return model


def _check_forward(model: nn.Module, shape: tuple[int, ...], num_classes: int,
                   what: str) -> None:
    """One eval-mode forward pass on zeros, on a copy (the model is left as it was)."""
    import copy

    probe = copy.deepcopy(model).eval()
    try:
        dtype = next(probe.parameters()).dtype
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = probe(torch.zeros(2, *shape, dtype=dtype))
    except Exception as err:
        raise ScenarioError(FACTORY_KEY, f"{what}: the model's forward pass on a batch "
                            f"[2, {', '.join(map(str, shape))}] raised {type(err).__name__}: "
                            f"{err}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ScenarioError(FACTORY_KEY, f"{what}: the model must map [batch, "
                            f"{', '.join(map(str, shape))}] to [batch, {num_classes}] logits, "
                            f"got {got} for a batch of 2")


__all__ = ["BUFFER_POLICIES", "MODELS", "build_model", "check_factory_spec", "cnn",
           "load_factory", "logreg", "make_model", "mlp"]
