"""Datasets in fedsim.data: synthetic, digits, MNIST IDX files, CIFAR-10 batches."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.config import DataConfig
from fedsim.data import DATASETS, PARTITIONS, FederatedData, load_federated
from fedsim.data.synthetic import synthetic_sizes
from fedsim.errors import DataError, ScenarioError

SYN = DataConfig(dataset="synthetic", partition="natural", num_clients=30)


def assert_valid(fd: FederatedData, num_clients: int) -> None:
    """Check the FederatedData contract: dtypes, shapes, disjoint non-empty clients."""
    assert fd.x_train.dtype == np.float32 and fd.x_test.dtype == np.float32
    assert fd.y_train.dtype == np.int64 and fd.y_test.dtype == np.int64
    assert fd.x_train.shape[1:] == fd.input_shape == fd.x_test.shape[1:]
    assert len(fd.client_indices) == num_clients
    assert (fd.client_sizes() > 0).all()
    pooled = np.concatenate(fd.client_indices)
    assert np.unique(pooled).size == pooled.size
    assert 0 <= fd.y_train.min() and fd.y_train.max() < fd.num_classes
    assert str(fd.num_clients) in fd.summary()


# --- synthetic --------------------------------------------------------------


def test_synthetic_shapes_and_natural_users():
    fd = load_federated(SYN, seed=0)
    assert_valid(fd, 30)
    assert fd.input_shape == (60,) and fd.num_classes == 10
    assert fd.x_train.shape[0] == fd.client_sizes().sum()  # natural uses every sample
    assert 0 <= fd.y_test.min() and fd.y_test.max() < 10


def test_synthetic_is_deterministic_per_seed():
    a, b, c = (load_federated(SYN, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    pairs = zip(a.client_indices, b.client_indices, strict=True)
    assert all(np.array_equal(x, y) for x, y in pairs)
    assert a.x_train.shape != c.x_train.shape or not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("mean", [10, 50, 200])
def test_synthetic_user_sizes_mean(mean):
    cfg = replace(SYN, num_clients=40, synthetic_mean_samples=mean, synthetic_dim=5)
    fd = load_federated(cfg, seed=1)
    per_user = (len(fd.y_train) + len(fd.y_test)) / 40
    assert abs(per_user - mean) <= 0.02 * mean + 1
    sizes = synthetic_sizes(1000, mean, np.random.default_rng(0))
    assert sizes.min() >= 10 and abs(sizes.mean() - mean) <= 0.5


def test_synthetic_test_fraction_held_out_per_user():
    fd = load_federated(replace(SYN, test_fraction=0.25), seed=2)
    share = len(fd.y_test) / (len(fd.y_test) + len(fd.y_train))
    assert abs(share - 0.25) < 0.03


def test_synthetic_beta_spreads_user_features():
    def spread(ab: float) -> float:
        cfg = replace(SYN, synthetic_alpha=ab, synthetic_beta=ab)
        stds = []
        for seed in range(3):
            fd = load_federated(cfg, seed=seed)
            stds.append(np.std([fd.x_train[i].mean() for i in fd.client_indices]))
        return float(np.mean(stds))

    assert spread(1.0) > 4 * spread(0.0)


def test_synthetic_repartition_iid_mixes_labels():
    natural = load_federated(SYN, seed=0)
    mixed = load_federated(replace(SYN, partition="iid"), seed=0)
    assert_valid(mixed, 30)
    assert np.array_equal(natural.x_train, mixed.x_train)  # same data, other split
    assert mixed.labels_per_client().mean() > natural.labels_per_client().mean()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("synthetic_alpha", -1.0),
        ("synthetic_classes", 1),
        ("synthetic_mean_samples", 5),
        ("num_clients", 0),
    ],
)
def test_synthetic_bad_values_name_the_key(field, value):
    with pytest.raises(ScenarioError) as err:
        load_federated(replace(SYN, **{field: value}), seed=0)
    assert err.value.key == f"data.{field}"


# --- digits -----------------------------------------------------------------


def test_digits_split_and_range():
    cfg = DataConfig(dataset="digits", num_clients=20, test_fraction=0.2)
    fd = load_federated(cfg, seed=0)
    assert_valid(fd, 20)
    assert len(fd.y_train) + len(fd.y_test) == 1797
    assert abs(len(fd.y_test) - 0.2 * 1797) <= 10  # rounded per class
    assert fd.input_shape == (1, 8, 8) and fd.num_classes == 10
    assert np.unique(fd.y_test).size == 10  # stratified
    assert fd.x_train.min() >= 0.0 and fd.x_train.max() <= 1.0 and fd.x_train.max() == 1.0


def test_digits_partition_does_not_change_data():
    a = load_federated(DataConfig(dataset="digits", partition="iid"), seed=3)
    b = load_federated(DataConfig(dataset="digits", partition="shards"), seed=3)
    assert np.array_equal(a.y_test, b.y_test)
    assert b.labels_per_client().mean() < a.labels_per_client().mean()


def test_digits_dirichlet():
    fd = load_federated(DataConfig(dataset="digits", partition="dirichlet", alpha=0.1), seed=0)
    assert_valid(fd, 50)


# --- config errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"dataset": "imagenet"}, "data.dataset", ", ".join(DATASETS)),
        ({"partition": "zipf"}, "data.partition", ", ".join(PARTITIONS)),
        ({"partition": "natural"}, "data.partition", "allowed for: synthetic"),
        ({"dataset": "mnist"}, "data.path", "required for dataset 'mnist'"),
        ({"dataset": "cifar10"}, "data.path", "required for dataset 'cifar10'"),
        ({"test_fraction": 1.0}, "data.test_fraction", "[0, 1)"),
        ({"num_clients": 5000}, "data.num_clients", "training samples"),
    ],
)
def test_config_errors_name_key_and_allowed(changes, key, words):
    cfg = replace(DataConfig(dataset="digits"), **changes)
    with pytest.raises(ScenarioError) as err:
        load_federated(cfg, seed=0)
    assert err.value.key == key
    assert words in str(err.value)


# --- MNIST IDX files ---------------------------------------------------------


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as an IDX file (or with a given magic number)."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(
    folder: Path, n_train: int = 20, n_test: int = 10, dotted: bool = False
) -> dict[str, np.ndarray]:
    """Write tiny MNIST files (train images gzipped) and return the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        fname = name.replace("-idx", ".idx") if dotted else name
        if name.startswith("train"):
            (folder / f"{fname}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / fname).write_bytes(data)
    return arrays


def test_mnist_loads_tiny_idx_files(tmp_path):
    arrays = write_mnist(tmp_path / "mnist")
    cfg = DataConfig(dataset="mnist", path=str(tmp_path / "mnist"), num_clients=4)
    fd = load_federated(cfg, seed=0)
    assert_valid(fd, 4)
    assert fd.x_train.shape == (20, 1, 28, 28) and fd.x_test.shape == (10, 1, 28, 28)
    expected = arrays["train-images-idx3-ubyte"][:, None].astype(np.float32) / 255
    assert np.allclose(fd.x_train, expected)
    assert np.array_equal(fd.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= fd.x_train.min() and fd.x_train.max() <= 1.0


def test_mnist_dotted_names_and_relative_path(tmp_path):
    write_mnist(tmp_path / "data" / "mnist", dotted=True)
    cfg = DataConfig(dataset="mnist", path="data/mnist", num_clients=2, partition="shards")
    fd = load_federated(cfg, seed=0, base_dir=tmp_path)
    assert_valid(fd, 2)


def test_mnist_wrong_magic(tmp_path):
    write_mnist(tmp_path)
    bad = idx_bytes(np.zeros((10, 28, 28)), magic=0x00000801)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(bad)
    with pytest.raises(DataError, match="magic"):
        load_federated(DataConfig(dataset="mnist", path=str(tmp_path), num_clients=2), seed=0)


def test_mnist_truncated_file(tmp_path):
    write_mnist(tmp_path)
    data = idx_bytes(np.arange(10) % 10)[:-3]
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(data)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_federated(DataConfig(dataset="mnist", path=str(tmp_path), num_clients=2), seed=0)


def test_mnist_missing_directory_names_path_and_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_federated(DataConfig(dataset="mnist", path=str(missing)), seed=0)
    message = str(err.value)
    assert str(missing) in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "never downloads" in message


def test_mnist_missing_file_names_it(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_federated(DataConfig(dataset="mnist", path=str(tmp_path), num_clients=2), seed=0)
    assert "t10k-labels-idx1-ubyte" in str(err.value) and str(tmp_path) in str(err.value)


# --- CIFAR-10 batches --------------------------------------------------------


def write_cifar(folder: Path, per_batch: int = 4, n_test: int = 6) -> np.ndarray:
    """Write tiny pickled CIFAR-10 batches; return the first training batch's data."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    first = None
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": list(range(n))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2 if name.endswith("1") else 5)
        first = data if first is None else first
    return first


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_cifar10_loads_tiny_batches(tmp_path, subdir):
    first = write_cifar(tmp_path / subdir if subdir else tmp_path)
    cfg = DataConfig(dataset="cifar10", path=str(tmp_path), num_clients=5)
    fd = load_federated(cfg, seed=0)
    assert_valid(fd, 5)
    assert fd.x_train.shape == (20, 3, 32, 32) and fd.x_test.shape == (6, 3, 32, 32)
    assert np.allclose(fd.x_train[:4], first.reshape(4, 3, 32, 32) / 255.0)
    assert fd.x_train.min() >= 0.0 and fd.x_train.max() <= 1.0


def test_cifar10_missing_directory(tmp_path):
    with pytest.raises(DataError) as err:
        load_federated(DataConfig(dataset="cifar10", path=str(tmp_path / "none")), seed=0)
    assert str(tmp_path / "none") in str(err.value) and "data_batch_1" in str(err.value)


def test_cifar10_missing_batch_and_bad_batch(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    cfg = DataConfig(dataset="cifar10", path=str(tmp_path), num_clients=2)
    with pytest.raises(DataError, match="data_batch_3"):
        load_federated(cfg, seed=0)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_federated(cfg, seed=0)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    write_cifar(tmp_path)
    payload = pickle.dumps({b"data": Path("x"), b"labels": [0]})  # needs pathlib globals
    (tmp_path / "test_batch").write_bytes(payload)
    cfg = DataConfig(dataset="cifar10", path=str(tmp_path), num_clients=2)
    with pytest.raises(DataError, match="not allowed"):
        load_federated(cfg, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(-2, 12), min_size=1, max_size=5), min_size=1,
                max_size=5))
def test_client_index_sets_are_checked_for_range_and_overlap(sets):
    """Accepted iff every index is in [0, 10) and no index is in two clients' sets; the
    error names the first client out of range, else the overlap."""
    x, y = np.zeros((10, 2), np.float32), np.zeros(10, np.int64)
    ci = tuple(np.asarray(s, dtype=np.int64) for s in sets)
    bad = [k for k, s in enumerate(sets) if min(s) < 0 or max(s) >= 10]
    pooled = [i for s in sets for i in s]
    build = lambda: FederatedData("t", x, y, x, y, ci, 2, (2,))  # noqa: E731
    if bad:
        with pytest.raises(ValueError, match=rf"^client {bad[0]}: indices out of range"):
            build()
    elif len(set(pooled)) != len(pooled):
        with pytest.raises(ValueError, match="^client index sets overlap$"):
            build()
    else:
        assert build().client_indices is ci
