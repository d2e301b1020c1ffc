"""Your own model on your own numpy arrays: a CNN with BatchNorm and Dropout, federated.

    python examples/own_model.py --out runs/examples [--buffers local]

The data are plain numpy arrays (scikit-learn's 8x8 digits, standing in for yours),
split across 20 clients with label skew; the model is an ``nn.Module`` of your own.
``fedsim.run`` trains it with FedAvg, the whole cohort batched (BatchNorm statistics per
client, Dropout masks per client from the run's seed), and returns the result; the
final model is then loaded back into a fresh module and evaluated with plain torch.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fedsim


class SmallCNN(nn.Module):
    """Two conv blocks with BatchNorm, then Dropout and a linear head."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4 -> 2x2
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25),
                                  nn.Linear(32 * 2 * 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def make_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """What fedsim calls: one sample's shape (here (1, 8, 8)) and the number of classes."""
    return SmallCNN(input_shape[0], num_classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/examples")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--buffers", choices=("average", "local"), default="average")
    args = parser.parse_args()

    # your arrays: images [N, C, H, W] as float, integer labels [N]
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # [1797, 1, 8, 8]
    y = digits.target
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:360], order[360:]

    data = fedsim.FederatedData.from_arrays(x[train], y[train], x[test], y[test],
                                            num_clients=20, partition="dirichlet", alpha=1.0)
    result = fedsim.run(
        {"name": "own_model", "rounds": args.rounds, "clients_per_round": 10,
         "algorithm": {"lr": 0.05, "local_epochs": 2, "batch_size": 16},
         "model": {"buffers": args.buffers}},
        model=make_model, data=data,
        run_dir=f"{args.out}/own_model_{args.buffers}", overwrite=True,
    )
    print(f"final accuracy {result.summary['final_accuracy']:.3f} "
          f"({result.summary['rounds_completed']} rounds, buffers {args.buffers})")

    # the trained global model in a fresh module of your own, evaluated with plain torch
    net = result.load_into(make_model((1, 8, 8), 10)).eval()
    with torch.no_grad():
        predicted = net(torch.from_numpy(x[test])).argmax(dim=1).numpy()
    print(f"loaded model accuracy {np.mean(predicted == y[test]):.3f}")


if __name__ == "__main__":
    main()
