"""BGMD: reduces to the GM, sparsity, memory bookkeeping, selection rules."""

from __future__ import annotations

import pytest
import torch
from helpers import make_ctx
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ScenarioError
from fedsim.stages.bgmd import BGMDState, bgmd, block_size, select_columns
from fedsim.stages.geomed import geometric_median_rows

SETTINGS = settings(max_examples=30, deadline=None)


def rows(seed: int, m: int, d: int) -> torch.Tensor:
    return torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@SETTINGS
@given(seed=st.integers(0, 2**31), m=st.integers(1, 8), d=st.integers(1, 20))
def test_whole_block_without_memory_is_the_geometric_median(seed, m, d):
    u = rows(seed, m, d)
    w = torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    agg = bgmd(k_fraction=1.0, memory=False)
    out, state = agg.aggregate(u, agg.init(m, d), make_ctx(w))
    gm, info = geometric_median_rows(u, w)
    torch.testing.assert_close(out, gm)
    assert state.info == info and torch.equal(state.memory, torch.zeros(d, dtype=u.dtype))


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 8),
    d=st.integers(1, 40),
    k_fraction=st.floats(0.01, 1.0),
    selection=st.sampled_from(["topk", "norm_sampling"]),
    memory=st.booleans(),
)
def test_one_step_bookkeeping(seed, m, d, k_fraction, selection, memory):
    """At most k nonzeros; u[K] = GM of the block; u + new memory = mean of G off the block."""
    agg = bgmd(k_fraction, selection=selection, memory=memory)
    w = torch.rand(m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    old = BGMDState(memory=rows(seed + 1, 1, d)[0] if memory else torch.zeros(d))
    u = rows(seed, m, d)
    out, state = agg.aggregate(u, old, make_ctx(w, seed))
    k = min(d, max(1, round(k_fraction * d)))  # the documented rule, restated
    kept = state.kept
    assert kept.shape == (k,) and bool((kept[1:] > kept[:-1]).all())
    assert int((out != 0).sum()) <= k
    g = u + old.memory  # [m, d], memory added to every row
    off = torch.ones(d, dtype=torch.bool)
    off[kept] = False
    assert bool((out[off] == 0).all())
    torch.testing.assert_close(out[kept], geometric_median_rows(g[:, kept], w)[0])
    if memory:
        assert bool((state.memory[kept] == 0).all())
        mean = (w / w.sum()) @ g
        torch.testing.assert_close(out[off] + state.memory[off], mean[off])
    else:
        assert bool((state.memory == 0).all())


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    m=st.integers(1, 6),
    d=st.integers(2, 30),
    steps=st.integers(1, 6),
    k_fraction=st.floats(0.05, 0.6),
    selection=st.sampled_from(["topk", "norm_sampling"]),
)
def test_memory_conserves_identical_honest_rows(seed, m, d, steps, k_fraction, selection):
    """Identical rows r_t each step (exact GM): sum_t u_t + M_T == sum_t r_t, and
    at every step M_t + u_t == r_t + M_{t-1}: nothing is lost, only postponed."""
    agg = bgmd(k_fraction, selection=selection)
    state = agg.init(m, d)
    total_in = torch.zeros(d, dtype=torch.float64)
    total_out = torch.zeros(d, dtype=torch.float64)
    for t in range(steps):
        r = rows(seed + t, 1, d)[0] * 10 ** (t % 3)
        before = state.memory.to(torch.float64)
        out, state = agg.aggregate(r.expand(m, d).clone(), state, make_ctx(torch.ones(m), t))
        torch.testing.assert_close(out + state.memory, r + before)
        total_in += r
        total_out += out
    torch.testing.assert_close(total_out + state.memory, total_in)


def test_memory_is_added_before_selection_golden():
    """Step 1 keeps coordinate 0 and remembers coordinate 1; step 2 spends the memory."""
    agg = bgmd(k_fraction=0.5)
    ctx = make_ctx(torch.ones(3))
    out1, state = agg.aggregate(torch.tensor([[3.0, 1.0]] * 3), agg.init(3, 2), ctx)
    assert out1.tolist() == [3.0, 0.0] and state.memory.tolist() == [0.0, 1.0]
    out2, state = agg.aggregate(torch.zeros(3, 2), state, ctx)
    assert out2.tolist() == [0.0, 1.0] and state.memory.tolist() == [0.0, 0.0]


def test_without_memory_the_left_out_mass_is_dropped():
    agg = bgmd(k_fraction=0.5, memory=False)
    ctx = make_ctx(torch.ones(3))
    _, state = agg.aggregate(torch.tensor([[3.0, 1.0]] * 3), agg.init(3, 2), ctx)
    out2, _ = agg.aggregate(torch.zeros(3, 2), state, ctx)
    assert state.memory.tolist() == [0.0, 0.0] and out2.tolist() == [0.0, 0.0]


def test_topk_keeps_the_largest_column_norms():
    u = torch.tensor([[1.0, 0.0, 3.0, -2.0, 0.5], [1.0, 0.1, -3.0, 2.0, 0.5]])
    kept = select_columns(u.square().sum(dim=0), 2, "topk", None)
    assert kept.tolist() == [2, 3]


def test_norm_sampling_is_reproducible_with_the_same_generator():
    u = rows(0, 10, 1000)
    agg = bgmd(0.05, selection="norm_sampling")
    out_a, st_a = agg.aggregate(u, agg.init(10, 1000), make_ctx(torch.ones(10), seed=7))
    out_b, st_b = agg.aggregate(u, agg.init(10, 1000), make_ctx(torch.ones(10), seed=7))
    _, st_c = agg.aggregate(u, agg.init(10, 1000), make_ctx(torch.ones(10), seed=8))
    assert torch.equal(out_a, out_b) and torch.equal(st_a.kept, st_b.kept)
    assert not torch.equal(st_a.kept, st_c.kept)


def test_norm_sampling_draws_proportionally_to_the_squared_norm():
    sq = torch.tensor([1.0, 0.0, 0.0, 3.0])  # P(first draw) = 1/4, 0, 0, 3/4
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([select_columns(sq, 1, "norm_sampling", gen) for _ in range(4000)])
    assert (draws == 3).float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert not bool(((draws == 1) | (draws == 2)).any())  # zero columns never drawn first
    two = select_columns(sq, 2, "norm_sampling", gen)
    assert two.tolist() == [0, 3]  # the nonzero columns come before any zero one


def test_norm_sampling_of_an_all_zero_matrix_is_uniform_not_an_error():
    gen = torch.Generator().manual_seed(0)
    kept = select_columns(torch.zeros(10), 3, "norm_sampling", gen)
    assert kept.shape == (3,) and len(set(kept.tolist())) == 3


def test_block_size():
    assert block_size(0.1, 1000) == 100
    assert block_size(0.001, 10) == 1  # at least one coordinate
    assert block_size(1.0, 7) == 7
    assert block_size(0.19, 10) == 2  # rounded, not truncated (1.9 -> 2)
    assert block_size(0.5, 3) == 2  # 1.5 -> 2
    assert block_size(0.29, 10) == 3


def test_kept_columns_golden():
    """d = 10, k_fraction = 0.19: k = round(1.9) = 2; the two largest columns are 7 and 3."""
    u = torch.tensor([[0.1, 0.2, 0.0, -4.0, 0.3, 0.0, 0.5, 9.0, 0.1, 1.0],
                      [0.1, -0.2, 0.0, 4.0, 0.3, 0.0, 0.5, 9.0, -0.1, 1.0],
                      [0.1, 0.2, 0.0, -4.0, 0.3, 0.0, 0.5, 9.0, 0.1, 1.0]])
    agg = bgmd(k_fraction=0.19, memory=False)
    out, state = agg.aggregate(u, agg.init(3, 10), make_ctx(torch.ones(3)))
    assert state.kept.tolist() == [3, 7]
    assert out[7].item() == pytest.approx(9.0) and abs(out[3].item()) <= 4.0
    assert out[[0, 1, 2, 4, 5, 6, 8, 9]].tolist() == [0.0] * 8
    agg = bgmd(k_fraction=0.29, memory=False)  # k = 3: column 9 joins
    _, state = agg.aggregate(u, agg.init(3, 10), make_ctx(torch.ones(3)))
    assert state.kept.tolist() == [3, 7, 9]


def test_client_memory_chooses_columns_with_the_memory_added():
    """Raw rows favour column 0 (norm 1 each); with each client's memory (0, 5) added, the
    rows are (1, 5) and column 1 is kept: out = (0, 5), memories become (1, 0)."""
    agg = bgmd(k_fraction=0.5, memory="client")
    state = BGMDState(memory=torch.tensor([[0.0, 5.0], [0.0, 5.0], [0.0, 0.0]]))
    rows = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    out, state = agg.aggregate(rows, state, make_ctx(torch.ones(2), senders=[0, 1]))
    assert state.kept.tolist() == [1]
    assert out.tolist() == [0.0, 5.0]
    assert state.memory.tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        (dict(k_fraction=0.0), "algorithm.aggregator.k_fraction"),
        (dict(k_fraction=1.5), "algorithm.aggregator.k_fraction"),
        (dict(selection="random"), "algorithm.aggregator.selection"),
        (dict(memory="yes"), "algorithm.aggregator.memory"),
        (dict(nu=-1.0), "algorithm.aggregator.nu"),
        (dict(maxiter=0), "algorithm.aggregator.maxiter"),
    ],
)
def test_bad_parameters_name_the_key(kwargs, key):
    with pytest.raises(ScenarioError) as err:
        bgmd(**kwargs)
    assert err.value.key == key


def test_client_memory_keeps_each_clients_left_out_part():
    """memory="client": u + (mean of the new memories) == mean of (rows + old memories)."""
    torch.manual_seed(0)
    agg = bgmd(k_fraction=0.25, memory="client", ftol=1e-12, maxiter=500)
    state = agg.init(5, 8)
    for step in range(3):
        senders = [0, 2, 4] if step % 2 == 0 else [1, 2, 3]
        rows = torch.randn(3, 8, dtype=torch.float64)
        before = state.memory.to(rows)[senders]
        ctx = make_ctx(torch.ones(3, dtype=torch.float64), senders=senders)
        out, state = agg.aggregate(rows, state, ctx)
        after = state.memory[senders]
        assert int((out != 0).sum()) <= 2
        kept = state.kept
        left = [j for j in range(8) if j not in kept.tolist()]
        # outside the block nothing is aggregated and each client keeps exactly its part
        assert torch.allclose(after[:, left], (rows + before)[:, left])
        assert torch.all(after[:, kept] == 0)


def test_client_memory_is_robust_to_huge_rows():
    """A Byzantine row's memory only enters its own row: the block GM stays honest."""
    torch.manual_seed(1)
    agg = bgmd(k_fraction=0.5, memory="client", ftol=1e-10, maxiter=500)
    state = agg.init(7, 6)
    honest = torch.ones(6, dtype=torch.float64)
    for _ in range(5):
        rows = honest + 0.01 * torch.randn(7, 6, dtype=torch.float64)
        rows[:3] = -1e6  # 3 of 7 Byzantine
        out, state = agg.aggregate(rows, state, make_ctx(torch.ones(7, dtype=torch.float64)))
        kept = state.kept
        assert torch.all((out[kept] - 1.0).abs() < 5.0)  # honest scale, not -1e6


def test_memory_parameter_is_checked():
    with pytest.raises(ScenarioError, match="algorithm.aggregator.memory"):
        bgmd(memory="sometimes")
