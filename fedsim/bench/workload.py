"""The benchmark workload, identical for every side that is compared.

FedAvg; an MLP 60-200-10; synthetic classification data (Gaussian features,
labels from a fixed random linear teacher), 50 samples per client; 1 local
epoch, batch 10, plain SGD; every client trains every round. All sides start
from the same initial model (``make_model``) and the same data (``make_data``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.config import (
    AlgorithmConfig,
    ComputeConfig,
    DataConfig,
    ModelConfig,
    NetworkConfig,
    Scenario,
)
from fedsim.data.base import FederatedData
from fedsim.seeding import numpy_rng, stream_seed


@dataclass(frozen=True)
class Workload:
    """Sizes of the benchmark problem."""

    clients: int = 1000
    rounds: int = 3
    samples_per_client: int = 50
    dim: int = 60
    hidden: int = 200  # the MLP's hidden width; 0: logistic regression (no hidden layer)
    classes: int = 10
    batch_size: int = 10
    epochs: int = 1
    lr: float = 0.05
    test_samples: int = 2000
    seed: int = 0

    @property
    def num_params(self) -> int:
        """Parameters of the workload's model (``make_model``'s), counted without building it."""
        if not self.hidden:
            return self.dim * self.classes + self.classes
        return self.dim * self.hidden + self.hidden + self.hidden * self.classes + self.classes


def make_data(w: Workload) -> FederatedData:
    """Gaussian features labelled by a random linear teacher; client c holds rows c*50..c*50+49."""
    rng = numpy_rng(w.seed, "bench/data")
    teacher = rng.standard_normal((w.dim, w.classes), dtype=np.float32)
    n = w.clients * w.samples_per_client
    x = rng.standard_normal((n + w.test_samples, w.dim), dtype=np.float32)  # no float64 copy
    y = (x @ teacher).argmax(axis=1).astype(np.int64)
    per = w.samples_per_client
    return FederatedData(
        name="bench",
        x_train=x[:n], y_train=y[:n], x_test=x[n:], y_test=y[n:],
        client_indices=tuple(np.arange(c * per, (c + 1) * per, dtype=np.int64)
                             for c in range(w.clients)),
        num_classes=w.classes, input_shape=(w.dim,),
    )


def model_config(w: Workload) -> ModelConfig:
    return ModelConfig(name="mlp", hidden=(w.hidden,)) if w.hidden else ModelConfig("logreg")


def make_model(w: Workload):
    """The initial MLP every side starts from (the same seed stream as fedsim's runs)."""
    from fedsim.models import build_model

    return build_model(model_config(w), (w.dim,), w.classes, seed=stream_seed(w.seed, "model"))


def scenario(w: Workload, device: str = "cpu") -> Scenario:
    """The fedsim scenario of the workload (evaluated only after the last round)."""
    return Scenario(
        name=f"bench_{w.clients}",
        seed=w.seed,
        rounds=w.rounds,
        clients_per_round=w.clients,
        eval_every=w.rounds,
        device=device,
        data=DataConfig(dataset="synthetic", num_clients=w.clients),
        model=model_config(w),
        algorithm=AlgorithmConfig(lr=w.lr, local_epochs=w.epochs, batch_size=w.batch_size),
        network=NetworkConfig(compute=ComputeConfig(model="constant")),
    )
