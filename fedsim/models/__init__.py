"""Small torch models used by scenarios, built from a ``ModelConfig``.

Every model here is a plain ``nn.Module`` without BatchNorm, dropout or other
state; a whole cohort of copies is trained at once with ``torch.func.vmap`` (see
``fedsim.population``, which also batches Dropout and BatchNorm in user models).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedsim.config import ModelConfig
from fedsim.errors import ScenarioError

MODELS = ("logreg", "mlp", "cnn")

# Channels of the two conv layers of the CNN.
CNN_CHANNELS = (16, 32)
# The CNN max-pools (2x2) after a conv while the feature map is at least this large.
CNN_POOL_MIN_SIZE = 12


def build_model(
    cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int, seed: int = 0
) -> nn.Module:
    """Build the model named by ``cfg.name`` with a deterministic initialization.

    The global torch RNG state is left untouched: initialization runs inside
    ``torch.random.fork_rng`` seeded with ``seed``.

    Args:
        cfg: the scenario's model section (``name`` in ``MODELS``, ``hidden`` widths).
        input_shape: shape of one sample, without the batch dimension, e.g. ``(60,)``
            or ``(1, 28, 28)``.
        num_classes: number of output logits.
        seed: initialization seed; the same seed gives the same parameters.

    Returns:
        An ``nn.Module`` mapping ``[batch, *input_shape]`` to ``[batch, num_classes]``.

    Raises:
        ScenarioError: ``model.name`` is unknown, ``model.hidden`` has a width < 1,
            or ``cnn`` is asked for on an input that is not ``[C, H, W]``.
    """
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


__all__ = ["MODELS", "build_model", "cnn", "logreg", "mlp"]
