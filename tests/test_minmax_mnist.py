"""The image GAN on the user's MNIST files (``dataset = "mnist"``): tiny IDX files written
by the test; the same classifier-based scores on 28x28; one-line errors."""

from __future__ import annotations

import gzip
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import fedsim
from fedsim.errors import ScenarioError
from fedsim.minmax import dadam3, make_task, run_minmax
from fedsim.network.topology import ring
from fedsim.scenario import load_scenario


def _idx(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 48, n_test: int = 24) -> None:
    """Tiny MNIST-layout files: digit-like blobs per class, train images gzipped."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 40, (n, 28, 28))
        for k, c in enumerate(labels):  # a bright bar whose place is the class
            images[k, 4 + 2 * c: 7 + 2 * c, 6:22] = 250
        data = _idx(images)
        name = f"{split}-images-idx3-ubyte"
        if split == "train":
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(_idx(labels))


def test_mnist_gan_reads_idx_files_and_scores_28x28(tmp_path):
    write_mnist(tmp_path / "mnist")
    task = make_task("digits", num_nodes=4, dataset="mnist", path=str(tmp_path / "mnist"),
                     hidden=8, z_dim=4, batch_size=4, eval_samples=30, classifier_hidden=16)
    shards = task.node_data[0]
    assert tuple(shards.shape) == (4, 12, 784)
    assert float(shards.min()) >= -1 and float(shards.max()) <= 1
    assert task.d_theta == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 784 + 784)
    assert tuple(task.generate(task.x0, 5).shape) == (5, 28, 28)
    rows = run_minmax(task, dadam3(lr=1e-3), ring(4), 2, eval_every=1)
    assert 1.0 <= rows[-1]["inception_score"] <= 10.0 and rows[-1]["fid"] > 0
    # the same classifier-based scores: real held-out-like images score better than noise
    from fedsim.minmax.gan import _features, _image_data, _train_classifier, inception_score

    x_tr, y_tr, x_te, side = _image_data("mnist", str(tmp_path / "mnist"), 0)
    assert side == 28 and tuple(x_te.shape) == (24, 784)
    clf = _train_classifier(x_tr, y_tr, 64, torch.Generator().manual_seed(0))
    _, probs = _features(clf, x_te, 64)
    assert float((probs.argmax(1) == torch.arange(24) % 10).float().mean()) > 0.9
    assert inception_score(probs) > 5


@pytest.mark.parametrize("params, key, words", [
    ({"dataset": "mnist"}, "task.path", "required"),
    ({"dataset": "mnist", "path": "nowhere"}, "task.path", "never downloads"),
    ({"dataset": "cifar"}, "task.dataset", "unknown dataset"),
    ({"path": "x"}, "task.path", "only used with dataset = 'mnist'"),
])
def test_mnist_gan_errors_are_one_line(tmp_path, params, key, words):
    params = {k: (str(tmp_path / v) if k == "path" else v) for k, v in params.items()}
    with pytest.raises(ScenarioError) as info:
        make_task("digits", num_nodes=2, **params)
    assert info.value.key == key and words in str(info.value)
    assert "\n" not in str(info.value)


def test_mnist_gan_missing_file_is_named(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ScenarioError, match="t10k-labels-idx1-ubyte") as info:
        make_task("digits", num_nodes=2, dataset="mnist", path=str(tmp_path))
    assert info.value.key == "task.path" and "\n" not in str(info.value)


SCENARIO = textwrap.dedent("""
    name = "mnist_gan"
    rounds = 2
    eval_every = 1
    [algorithm]
    name = "minmax"
    [algorithm.minmax]
    method = "dposg"
    lr = 0.01
    [algorithm.minmax.task]
    name = "digits"
    dataset = "mnist"
    path = "{path}"
    hidden = 8
    z_dim = 4
    batch_size = 4
    eval_samples = 30
    classifier_hidden = 16
    [network]
    topology = "ring"
    topology_params = {{ n = 3 }}
""")


def test_mnist_gan_scenario_relative_path_and_missing_files(tmp_path):
    write_mnist(tmp_path / "data" / "mnist")
    path = tmp_path / "mnist_gan.toml"
    path.write_text(SCENARIO.format(path="data/mnist"))  # relative to the scenario file
    result = fedsim.run(path, run_dir=tmp_path / "run")
    assert result.summary["final_minmax"]["fid"] > 0
    assert (tmp_path / "run" / "samples.png").stat().st_size > 0
    path.write_text(SCENARIO.format(path="data/elsewhere"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.key == "algorithm.minmax.task.path" and "\n" not in str(info.value)
