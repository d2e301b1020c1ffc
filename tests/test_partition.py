"""Properties of the client partitioners in fedsim.data.partition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.data.partition import dirichlet, iid, natural, shards
from fedsim.errors import ScenarioError

FAST = settings(max_examples=60, deadline=None)


@st.composite
def labels_and_clients(draw, min_per_client: int = 1):
    """Labels (N in [1, 300], up to 10 classes), a client count K <= N // min_per_client, a seed."""
    n = draw(st.integers(min_per_client, 300))
    classes = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, classes, size=n)
    k = draw(st.integers(1, max(1, min(30, n // min_per_client))))
    return labels, k, seed


def assert_partition(parts: list[np.ndarray], n: int, k: int, cover: bool = True) -> None:
    """Check: k parts, int64, sorted, non-empty, disjoint, in range, covering range(n)."""
    assert len(parts) == k
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1 and p.size > 0
        assert np.all(np.diff(p) > 0)
    pooled = np.concatenate(parts)
    assert np.unique(pooled).size == pooled.size  # disjoint
    assert pooled.min() >= 0 and pooled.max() < n
    if cover:
        assert pooled.size == n


def mean_labels_per_client(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Average number of distinct labels a client holds."""
    return float(np.mean([np.unique(labels[p]).size for p in parts]))


@FAST
@given(labels_and_clients())
def test_iid_is_a_balanced_cover(case):
    labels, k, seed = case
    parts = iid(labels, k, np.random.default_rng(seed))
    assert_partition(parts, len(labels), k)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


@FAST
@given(labels_and_clients(), st.integers(1, 4))
def test_shards_cover(case, per_client):
    labels, k, seed = case
    if k * per_client > len(labels):
        with pytest.raises(ScenarioError) as err:
            shards(labels, k, per_client, np.random.default_rng(seed))
        assert err.value.key == "data.shards_per_client"
        return
    parts = shards(labels, k, per_client, np.random.default_rng(seed))
    assert_partition(parts, len(labels), k)


@FAST
@given(labels_and_clients(min_per_client=5), st.sampled_from([0.1, 0.5, 1.0, 10.0]))
def test_dirichlet_cover_or_clear_error(case, alpha):
    labels, k, seed = case
    try:
        parts = dirichlet(labels, k, alpha, np.random.default_rng(seed))
    except ScenarioError as err:  # possible for small alpha and many clients
        assert err.key == "data.alpha" and "larger data.alpha" in err.message
        return
    assert_partition(parts, len(labels), k)


def test_dirichlet_min_size_and_typical_success():
    labels = np.repeat(np.arange(10), 100)
    for seed in range(5):
        parts = dirichlet(labels, 20, 0.5, np.random.default_rng(seed), min_size=5)
        assert_partition(parts, labels.size, 20)
        assert min(p.size for p in parts) >= 5


def test_dirichlet_small_alpha_skews_labels():
    labels = np.repeat(np.arange(10), 200)
    skewed = dirichlet(labels, 10, 0.05, np.random.default_rng(0))
    even = dirichlet(labels, 10, 100.0, np.random.default_rng(0))
    assert mean_labels_per_client(labels, skewed) < 0.6 * mean_labels_per_client(labels, even)
    assert mean_labels_per_client(labels, even) == 10


def label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the total variation distance between the client's label
    distribution and the whole data set's (0: every client iid, near 1: one label each)."""
    classes = labels.max() + 1
    overall = np.bincount(labels, minlength=classes) / labels.size
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=classes) / p.size
                                       - overall).sum() for p in parts]))


def test_dirichlet_alpha_sets_how_concentrated_client_labels_are():
    # 10 classes x 200 over 10 clients, 5 seeds. alpha = 100: client k's share of a class is
    # Beta(100, 900) (mean 0.1, sd 0.0095), so its label distribution stays within a few %
    # of uniform (TV about 0.5 * 10 * 0.0095 * sqrt(2 / pi) * 1.0 = 0.04). alpha = 0.05:
    # most of each class goes to one or two clients, so clients hold a few labels (TV 0.7+).
    labels = np.repeat(np.arange(10), 200)
    skew = {alpha: [label_skew(labels, dirichlet(labels, 10, alpha, np.random.default_rng(s)))
                    for s in range(5)]
            for alpha in (0.05, 1.0, 100.0)}
    assert all(v > 0.6 for v in skew[0.05])  # measured 0.71-0.78
    assert all(v < 0.06 for v in skew[100.0])  # measured 0.034-0.042
    assert np.mean(skew[0.05]) > 15 * np.mean(skew[100.0])
    assert np.mean(skew[0.05]) > np.mean(skew[1.0]) > np.mean(skew[100.0])


def test_dirichlet_impossible_request_names_alpha():
    labels = np.repeat(np.arange(2), 50)  # 2 classes, tiny alpha: most clients stay empty
    with pytest.raises(ScenarioError) as err:
        dirichlet(labels, 50, 1e-4, np.random.default_rng(0))
    assert err.value.key == "data.alpha"
    assert "fewer data.num_clients" in str(err.value)


def test_shards_two_per_client_give_at_most_two_labels():
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(10), 100))
    parts = shards(labels, 50, 2, np.random.default_rng(0))
    assert_partition(parts, labels.size, 50)
    assert max(np.unique(labels[p]).size for p in parts) <= 2


@FAST
@given(st.lists(st.integers(0, 20), min_size=1, max_size=200))
def test_natural_groups_by_user(user_list):
    users = np.array(user_list)
    parts = natural(users)
    assert_partition(parts, users.size, np.unique(users).size)
    for p in parts:
        assert np.unique(users[p]).size == 1
    assert [users[p[0]] for p in parts] == sorted(set(user_list))


@pytest.mark.parametrize(
    "split",
    [
        lambda y, r: iid(y, 7, r),
        lambda y, r: dirichlet(y, 7, 0.3, r),
        lambda y, r: shards(y, 7, 3, r),
    ],
)
def test_same_seed_same_partition(split):
    labels = np.random.default_rng(3).integers(0, 10, size=500)
    a = split(labels, np.random.default_rng(42))
    b = split(labels, np.random.default_rng(42))
    c = split(labels, np.random.default_rng(43))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (lambda y, r: iid(y, 0, r), "data.num_clients"),
        (lambda y, r: iid(y, 11, r), "data.num_clients"),
        (lambda y, r: dirichlet(y, 3, 0.0, r), "data.alpha"),
        (lambda y, r: dirichlet(y, 3, -1.0, r), "data.alpha"),
        (lambda y, r: shards(y, 3, 0, r), "data.shards_per_client"),
        (lambda y, r: shards(y, 3, 4, r), "data.shards_per_client"),
        (lambda y, r: shards(y, 20, 1, r), "data.num_clients"),
    ],
)
def test_bad_arguments_name_the_key(call, key):
    labels = np.arange(10) % 3
    with pytest.raises(ScenarioError) as err:
        call(labels, np.random.default_rng(0))
    assert err.value.key == key
