"""Sketch operators: unbiasedness, linearity, transpose, seeding, tiles, error size, recovery."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.privacy.sketch import (
    KINDS,
    TILE_COLS,
    TILE_ROWS,
    CountSketch,
    GaussianSketch,
    SRHTSketch,
    fwht,
    make_sketch,
    round_seed,
)

SETTINGS = settings(max_examples=25, deadline=None)
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread (2-core machines thrash with more), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_average_over_seeds(kind: str) -> None:
    """mean over many round operators of S^T S x is x, within the sampling error."""
    d, b, n = 64, 16, 400
    x = torch.randn(d, generator=_gen(1), dtype=F64)
    acc = torch.zeros(d, dtype=F64)
    for step in range(n):
        op = make_sketch(kind, d, b, round_seed(7, step), rows=4)
        acc += op.desketch(op.sketch(x))
    mean = acc / n
    # each term has E||S^T S x - x||^2 ~ (d + 1)/b ||x||^2; the mean of n has 1/n of it
    sd = math.sqrt((d + 1) / (b * n)) * x.norm().item()
    assert (mean - x).norm().item() < 2.5 * sd


@pytest.mark.parametrize("kind", KINDS)
def test_expected_gram_is_identity(kind: str) -> None:
    d, b, n = 24, 8, 400
    acc = torch.zeros(d, d, dtype=F64)
    for step in range(n):
        s = make_sketch(kind, d, b, round_seed(3, step), rows=2).matrix()
        acc += s.T @ s
    acc /= n
    assert torch.allclose(acc.diagonal(), torch.ones(d, dtype=F64), atol=0.2)
    off = acc - torch.diag(acc.diagonal())
    assert off.abs().max().item() < 5 / math.sqrt(b * n) * math.sqrt(2)


@SETTINGS
@given(kind=st.sampled_from(KINDS), d=st.integers(1, 70), m=st.integers(1, 5),
       frac=st.floats(0.05, 1.0), seed=st.integers(0, 2**40), a=st.floats(-3, 3))
def test_linear_and_transpose(kind: str, d: int, m: int, frac: float, seed: int,
                              a: float) -> None:
    """S(a x + y) = a S x + S y, and <S x, z> = <x, S^T z> (desketch is the transpose)."""
    b = max(1, int(frac * d))
    op = make_sketch(kind, d, b, seed, rows=min(3, b))
    g = _gen(seed % 1000)
    x, y = torch.randn(2, m, d, generator=g, dtype=F64)
    z = torch.randn(m, op.width, generator=g, dtype=F64)
    assert torch.allclose(op.sketch(a * x + y), a * op.sketch(x) + op.sketch(y), atol=1e-9)
    lhs = (op.sketch(x) * z).sum(dim=1)
    rhs = (x * op.desketch(z)).sum(dim=1)
    assert torch.allclose(lhs, rhs, atol=1e-9)
    assert op.sketch(x).shape == (m, op.width) and op.desketch(z).shape == (m, d)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_operator_new_step_new_operator(kind: str) -> None:
    d, b = 50, 10
    a = make_sketch(kind, d, b, round_seed(11, 3)).matrix()
    assert torch.equal(a, make_sketch(kind, d, b, round_seed(11, 3)).matrix())
    assert not torch.equal(a, make_sketch(kind, d, b, round_seed(11, 4)).matrix())
    assert not torch.equal(a, make_sketch(kind, d, b, round_seed(12, 3)).matrix())


def test_round_seed_stable() -> None:
    assert round_seed(0, 0) == round_seed(0, 0)
    assert len({round_seed(s, t) for s in range(5) for t in range(20)}) == 100
    assert 0 <= round_seed(2**70, -1) < 2**63


@pytest.mark.parametrize("kind", KINDS)
def test_dtype_and_batch_shape_follow_input(kind: str) -> None:
    op = make_sketch(kind, 40, 10, 0, rows=2)
    for dtype in (torch.float32, F64):
        x = torch.randn(2, 3, 40, dtype=dtype)
        y = op.sketch(x)
        assert y.dtype == dtype and y.shape == (2, 3, op.width)
        assert op.desketch(y).dtype == dtype and op.desketch(y).shape == (2, 3, 40)
    assert op.sketch(torch.randn(40)).shape == (op.width,)
    with pytest.raises(ValueError, match="last dimension of 40"):
        op.sketch(torch.randn(3, 41))


def test_gaussian_tiles_equal_a_materialised_matrix() -> None:
    """Tile by tile (ragged edges in both directions) == R assembled from the same tiles."""
    d, b = 300, 50
    op = GaussianSketch(d, b, seed=5, tile_rows=16, tile_cols=64)
    rows = []
    for i in range(math.ceil(b / 16)):
        rows.append(torch.cat([op.tile(i, j) for j in range(math.ceil(d / 64))], dim=1))
    r = torch.cat(rows, dim=0).double()  # [b, d]
    assert r.shape == (b, d)
    x = torch.randn(4, d, dtype=F64)
    y = torch.randn(4, b, dtype=F64)
    assert torch.allclose(op.sketch(x), x @ r.T, atol=1e-12)
    assert torch.allclose(op.desketch(y), y @ r, atol=1e-12)
    assert abs(r.var().item() * b - 1) < 0.05  # entries N(0, 1/b)
    assert abs(r.mean().item()) < 0.01


def test_gaussian_tile_memory_is_bounded() -> None:
    assert TILE_ROWS * TILE_COLS * 4 <= 64 * 2**20
    op = GaussianSketch(2**20, 2**20 // 100, seed=0)
    t = op.tile(0, 0)
    assert t.numel() * t.element_size() <= 64 * 2**20
    last = op.tile(math.ceil(op.b / TILE_ROWS) - 1, math.ceil(op.d / TILE_COLS) - 1)
    assert last.shape == (op.b - (math.ceil(op.b / TILE_ROWS) - 1) * TILE_ROWS, TILE_COLS)


@pytest.mark.parametrize(("kind", "expected"), [
    ("gaussian", lambda d, b: (d + 1) / b),
    ("srht", lambda d, b: (d - b) / b),  # d a power of two: d'/b - 1
    ("countsketch", lambda d, b: (d - 1) / b),
])
def test_desketch_error_size(kind: str, expected) -> None:
    """E||S^T S x - x||^2 / ||x||^2: exact forms, and ~ (d + 1)/b within 15% in root mean."""
    d, b, n = 1024, 64, 60
    x = torch.randn(d, generator=_gen(2), dtype=F64)
    sq = []
    for step in range(n):
        op = make_sketch(kind, d, b, round_seed(5, step), rows=4)
        sq.append(((op.desketch(op.sketch(x)) - x).norm() / x.norm()).item() ** 2)
    mean_sq = sum(sq) / n
    assert abs(mean_sq / expected(d, b) - 1) < 0.15
    assert abs(math.sqrt(mean_sq) / math.sqrt((d + 1) / b) - 1) < 0.15


def test_srht_orthogonal_at_full_width() -> None:
    for d in (1, 2, 16, 128):
        s = SRHTSketch(d, d, seed=9).matrix()
        assert torch.allclose(s.T @ s, torch.eye(d, dtype=F64), atol=1e-12)
        assert torch.allclose(s @ s.T, torch.eye(d, dtype=F64), atol=1e-12)


def test_srht_pads_to_a_power_of_two() -> None:
    op = SRHTSketch(100, 30, seed=1)
    assert op.padded == 128 and op.width == 30
    assert len(set(op.rows.tolist())) == 30  # rows drawn without replacement


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=F64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


@SETTINGS
@given(log_n=st.integers(0, 10), m=st.integers(1, 4))
def test_fwht_is_the_orthonormal_hadamard(log_n: int, m: int) -> None:
    n = 1 << log_n
    x = torch.randn(m, n, dtype=F64)
    before = x.clone()
    y = fwht(x)
    assert torch.equal(x, before)  # input untouched
    assert torch.allclose(y, x @ _hadamard(n), atol=1e-10)
    assert torch.allclose(fwht(y), x, atol=1e-10)


def test_fwht_chunks_rows_like_one_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsim.privacy.sketch as sk

    x = torch.randn(7, 256, dtype=F64)
    whole = fwht(x)
    monkeypatch.setattr(sk, "FWHT_CHUNK_BYTES", 3 * 256 * 8)  # 3 rows per chunk
    assert torch.allclose(sk.fwht(x), whole, atol=1e-12)
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.randn(2, 12))


def test_countsketch_table_and_width() -> None:
    d, b, r = 500, 103, 5
    op = CountSketch(d, b, seed=4, rows=r)
    assert (op.r, op.c, op.width, op.nbytes) == (5, 20, 100, 400)
    x = torch.randn(3, d, dtype=F64)
    t = op.table(op.sketch(x))  # [3, r, c]
    assert t.shape == (3, r, op.c)
    for j in range(r):  # each table row is a plain, unscaled count sketch
        manual = torch.zeros(3, op.c, dtype=F64)
        manual.index_add_(1, op.buckets[j], x * op.signs[j])
        assert torch.allclose(t[:, j], manual, atol=1e-12)


def test_countsketch_median_recovers_sparse_vector_exactly() -> None:
    """A k-sparse vector: its support values exact, other coordinates 0 wherever a majority
    of their buckets are free (all of them when c >> k)."""
    d, k = 10_000, 10
    op = CountSketch(d, 5 * 200, seed=21, rows=5)
    x = torch.zeros(2, d, dtype=F64)
    g = _gen(3)
    for row in range(2):
        idx = torch.randperm(d, generator=g)[:k]
        x[row, idx] = torch.randn(k, generator=g, dtype=F64) * 10
    est = op.median_estimate(op.sketch(x))  # [2, d]
    support = x != 0
    assert torch.allclose(est[support], x[support], atol=1e-12)
    # a zero coordinate is wrong only if >= 3 of its 5 buckets collide (p ~ 10 * 0.05^3 each)
    assert (est[~support] != 0).sum().item() <= 0.005 * d
    # c >> k: every coordinate exact (expected wrong ones: d * 10 (k/c)^3 ~ 0.01)
    wide = CountSketch(2000, 5 * 400, seed=21, rows=5)
    x = torch.zeros(2000, dtype=F64)
    x[torch.randperm(2000, generator=g)[:3]] = torch.tensor([4.0, -2.5, 7.0], dtype=F64)
    assert torch.allclose(wide.median_estimate(wide.sketch(x)), x, atol=1e-12)


def test_countsketch_median_finds_heavy_coordinates_in_noise() -> None:
    d = 20_000
    op = CountSketch(d, 7 * 2000, seed=8, rows=7)  # wrong heavies expected: d 35 (20/c)^4
    g = _gen(4)
    x = torch.randn(d, generator=g, dtype=F64) * 0.01
    heavy = torch.randperm(d, generator=g)[:20]
    x[heavy] = 5.0
    est = op.median_estimate(op.sketch(x))
    assert set(est.abs().topk(20).indices.tolist()) == set(heavy.tolist())
    assert (est[heavy] - 5).abs().max().item() < 0.2


def test_countsketch_median_even_rows_averages_the_middle() -> None:
    op = CountSketch(30, 8, seed=0, rows=2)
    y = torch.randn(op.width, dtype=F64)
    vals = torch.stack([y.view(2, 4)[j, op.buckets[j]] * op.signs[j] for j in range(2)])
    assert torch.allclose(op.median_estimate(y), vals.mean(dim=0) * math.sqrt(2), atol=1e-12)


@pytest.mark.parametrize(("args", "key", "text"), [
    (("hadamard", 10, 5, 0), "algorithm.compress.kind", "gaussian, srht, countsketch"),
    (("gaussian", 7850, 9000, 0), "algorithm.compress.b",
     "must be 1 <= b <= d (d = 7850), got 9000"),
    (("srht", 10, 0, 0), "algorithm.compress.b", "got 0"),
    (("countsketch", 10, 2.5, 0), "algorithm.compress.b", "got 2.5"),
])
def test_bad_parameters(args: tuple, key: str, text: str) -> None:
    with pytest.raises(ScenarioError, match="must") as info:
        make_sketch(*args)
    assert info.value.key == key and text in str(info.value)


def test_bad_countsketch_rows() -> None:
    with pytest.raises(ScenarioError) as info:
        make_sketch("countsketch", 100, 4, 0, rows=5)
    assert info.value.key == "algorithm.compress.rows"


@pytest.mark.parametrize("kind", KINDS)
def test_nbytes_is_width_floats(kind: str) -> None:
    op = make_sketch(kind, 1000, 100, 0, rows=4)
    assert op.nbytes == 4 * op.width == 400


# -- fast paths equal the plain definitions ----------------------------------------------------


def test_gaussian_tile_path_equals_the_kept_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large R (regenerated tile by tile into one buffer) gives what the kept R gives."""
    import fedsim.privacy.sketch as sk

    d, b = 300, 40
    x, y = torch.randn(5, d, dtype=F64), torch.randn(3, b, dtype=F64)
    kept = GaussianSketch(d, b, seed=8, tile_rows=16, tile_cols=64)
    assert kept.keeps_matrix
    r = kept.dense()  # [b, d] float32, from the tiles
    assert torch.equal(r[16:32, 64:128], kept.tile(1, 1))
    monkeypatch.setattr(sk, "DENSE_BYTES", 0)
    tiled = GaussianSketch(d, b, seed=8, tile_rows=16, tile_cols=64)
    assert not tiled.keeps_matrix
    assert torch.allclose(tiled.sketch(x), kept.sketch(x), atol=1e-12)
    assert torch.allclose(tiled.desketch(y), kept.desketch(y), atol=1e-12)
    assert torch.allclose(tiled.sketch(x), x @ r.to(F64).T, atol=1e-12)
    assert tiled._dense is None  # nothing kept


@pytest.mark.parametrize("d,b", [(1000, 10), (1000, 200), (1024, 1024), (777, 3)])
def test_srht_fast_path_equals_the_definition(d: int, b: int) -> None:
    """``sqrt(d'/b) P H D`` built from a dense Hadamard equals the blocked + gathered one."""
    op = SRHTSketch(d, b, seed=4)
    assert op.gather_bits == 0 or (1 << op.gather_bits) * b <= op.padded // 4
    n = op.padded
    h = _hadamard(n)  # orthonormal
    full = (h * op.signs.to(F64))[:, :d]  # H D, truncated to the first d columns
    expected = full[op.rows] * op.scale  # [b, d]
    assert torch.allclose(op.matrix(), expected, atol=1e-10)
    y = torch.randn(2, b, dtype=F64)
    assert torch.allclose(op.desketch(y), y @ expected, atol=1e-10)


def test_fwht_float32_matches_float64() -> None:
    x = torch.randn(9, 1 << 13, dtype=F64)
    assert torch.allclose(fwht(x.float()).double(), fwht(x), atol=1e-4)


def test_countsketch_column_blocks_and_csr_desketch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocked CSR sketch == the definition; de-sketch by gather == de-sketch by CSR."""
    import fedsim.privacy.sketch as sk

    d, b = 500, 60
    monkeypatch.setattr(sk, "COUNT_BLOCK_COLS", 96)  # 6 blocks, the last one ragged
    op = CountSketch(d, b, seed=3, rows=3)
    dense = torch.zeros(op.width, d, dtype=F64)
    for j in range(op.r):
        dense[op.flat[j], torch.arange(d)] = op.signs[j].to(F64) / math.sqrt(op.r)
    x = torch.randn(4, d, dtype=F64)
    assert torch.allclose(op.sketch(x), x @ dense.T, atol=1e-12)
    y = torch.randn(sk.GATHER_DESKETCH_ROWS + 3, op.width, dtype=F64)
    many = op.desketch(y)  # the CSR product
    few = torch.cat([op.desketch(y[i : i + 1]) for i in range(len(y))])  # the gather
    assert torch.allclose(many, y @ dense, atol=1e-12)
    assert torch.allclose(few, many, atol=1e-12)
