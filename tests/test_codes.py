"""FRC and CRC gradient codes: exact decoding for every straggler set of size <= s."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.coding import (
    AtMostS,
    BurstyModel,
    DecodeError,
    decode_vector,
    frc_matrix,
    load_linear,
    make_code,
    play_clock,
    read_delay_trace,
    round_duration,
    straggler_mask,
)
from fedsim.errors import ScenarioError


def _codes(n: int):
    for s in range(n):
        yield make_code("crc", n, s, seed=n * 100 + s)
        if n % (s + 1) == 0:
            yield make_code("frc", n, s)


def _exact(code, arrived, rng) -> float:
    g = rng.standard_normal((code.n, 3))
    got = code.decode(arrived, code.encode(g))
    return float(np.linalg.norm(got - g.sum(0)) / np.linalg.norm(g.sum(0)))


@pytest.mark.parametrize("n", range(1, 13))
def test_every_straggler_set_of_size_at_most_s_decodes_exactly(n):
    """Exhaustive for n <= 12: every code, every s < n, every set of <= s stragglers."""
    rng = np.random.default_rng(n)
    for code in _codes(n):
        for k in range(code.s + 1):
            for out in itertools.combinations(range(n), k):
                arrived = np.setdiff1d(np.arange(n), out)
                assert _exact(code, arrived, rng) < 1e-6, (code.kind, n, code.s, out)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(13, 64), frac=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_sampled_straggler_sets_decode_for_n_up_to_64(n, frac, seed):
    rng = np.random.default_rng(seed)
    s = min(n - 1, int(frac * n))
    code = make_code("crc", n, s, seed=seed)
    out = rng.choice(n, size=s, replace=False)
    assert _exact(code, np.setdiff1d(np.arange(n), out), rng) < 1e-6
    divisors = [d - 1 for d in range(1, n + 1) if n % d == 0 and d - 1 <= s]
    frc = make_code("frc", n, max(divisors))
    out = rng.choice(n, size=frc.s, replace=False)
    assert _exact(frc, np.setdiff1d(np.arange(n), out), rng) < 1e-12


def test_tolerates_s_not_only_s_minus_1_and_not_s_plus_1():
    """Exactly s: FRC loses a block when its s + 1 holders straggle; CRC with n - s - 1 rows
    cannot span 1 (generic)."""
    frc = make_code("frc", 6, 2)  # blocks {0,1,2} and {3,4,5}; worker k and k + 2 ... share
    holders = [i for i in range(6) if frc.matrix[i, 0]]
    assert len(holders) == 3
    with pytest.raises(DecodeError):
        frc.decoding(np.setdiff1d(np.arange(6), holders))
    crc = make_code("crc", 7, 3, seed=1)
    with pytest.raises(DecodeError):
        crc.decoding([0, 1, 2])
    crc.decoding([0, 1, 2, 3])  # n - s = 4 rows: fine


def test_frc_golden_n4_s1():
    b = frc_matrix(4, 1)
    assert b.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]
    dec = decode_vector(b, [0, 1, 2])  # worker 3 straggles
    assert np.allclose(dec.a, [0.5, 1.0, 0.5])
    assert dec.cond == pytest.approx(np.sqrt(2))
    assert make_code("frc", 4, 1).load == 0.5


def test_crc_structure_n4_s1():
    """Row i supported on {i, i+1 mod n}, B[i, i] = 1, rows in null(H) with H 1 = 0."""
    b = make_code("crc", 4, 1, seed=3).matrix
    for i in range(4):
        assert b[i, i] == 1.0
        assert set(np.flatnonzero(b[i])) <= {i, (i + 1) % 4}
    assert np.linalg.matrix_rank(b) == 3  # null(H) has dimension n - s
    # any 3 rows span 1
    for out in range(4):
        decode_vector(b, np.setdiff1d(np.arange(4), [out]))


def test_crc_s1_golden_coefficients():
    """With s = 1, H is 1 x n with H 1 = 0 and b_i = -H_i / H_{i+1}; golden for seed 0."""
    rng = np.random.default_rng(0)
    h = rng.standard_normal((1, 4))
    h[:, -1] = -h[:, :-1].sum(axis=1)
    b = make_code("crc", 4, 1, seed=0).matrix
    for i in range(4):
        assert b[i, (i + 1) % 4] == pytest.approx(-h[0, i] / h[0, (i + 1) % 4])


def test_bad_parameters_are_one_line_scenario_errors():
    with pytest.raises(ScenarioError, match=r"^algorithm\.coding\.s: FRC needs \(s \+ 1\)"):
        make_code("frc", 6, 3)
    with pytest.raises(ScenarioError, match=r"^algorithm\.coding\.s: .*s >= n"):
        make_code("crc", 4, 4)
    with pytest.raises(ScenarioError, match=r"^algorithm\.coding\.code"):
        make_code("mds", 4, 1)
    for err in (pytest.raises(ScenarioError),):
        with err as info:
            make_code("frc", 5, 1)
        assert "\n" not in str(info.value)


def test_straggler_rule_and_round_duration():
    d = np.array([1.0, 1.5, 2.5, 2.0])
    assert straggler_mask(d, 1.0).tolist() == [False, False, True, False]
    assert round_duration(d, True, 1.0) == 2.0
    assert round_duration(d, False, 1.0) == 2.5
    assert round_duration(np.array([1.0, 1.2]), True, 1.0) == 1.2  # nobody slow: the max


def test_bursty_model_windows():
    m = BurstyModel(B=2, W=4, lam=1)
    ok = np.array([[1, 1, 0, 0, 0, 0, 1]], dtype=bool)       # burst of 2, next >= W later
    assert m.conforms(ok)
    assert not m.conforms(np.array([[1, 1, 1, 0]], dtype=bool))  # burst of 3 > B
    assert not m.conforms(np.array([[1, 0, 1, 0]], dtype=bool))  # span 3 > B inside W
    two = np.array([[1, 0, 0, 0, 0], [0, 0, 0, 1, 0]], dtype=bool)
    assert not m.conforms(two)  # two distinct in rounds 1..4
    assert m.conforms(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]], dtype=bool))


def test_play_clock_counts_waits():
    delays = np.array([[1.0, 1.0, 1.0], [1.1, 3.0, 3.0], [1.2, 3.0, 1.0]])
    rounds = play_clock(delays, AtMostS(1), mu=1.0)
    assert [c.duration_s for c in rounds] == [1.2, 3.0, 2.0]
    assert [c.waited for c in rounds] == [False, True, False]
    assert rounds[2].stragglers.tolist() == [False, True, False]


def test_load_linear_and_trace(tmp_path):
    base = np.ones((2, 3))
    assert np.allclose(load_linear(base, 0.25, 2.2), 1.55)
    path = tmp_path / "d.csv"
    path.write_text("# workers x rounds\n1,2,3,4\n2,3,4,5\n")
    assert read_delay_trace(path, 2, 3).tolist() == [[1, 2, 3], [2, 3, 4]]
    with pytest.raises(ScenarioError, match=r"^network\.delays\.trace: .*expected 3 rows"):
        read_delay_trace(path, 3, 3)
    with pytest.raises(ScenarioError, match=r"expected 2 rows \(workers\) of >= 5 values"):
        read_delay_trace(path, 2, 5)


def test_numpy_modules_never_import_torch():
    code = ("import sys; import fedsim.coding, fedsim.coding.sequential, "
            "fedsim.coding.baselines, fedsim.network.stragglers, fedsim.coding.codes; "
            "sys.exit(3 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ill_conditioned_crc_at_n256_still_decodes():
    """Random-H CRC, n = 256, s = 64 (seed 320): the 3rd and 21st sampled straggler sets
    have cond ~1e13; a relative singular-value threshold dropped a genuine direction
    (residual ~0.1, not decodable); the rank-truncated, refined solve decodes them."""
    code = make_code("crc", 256, 64, seed=320)
    rng = np.random.default_rng(0)
    sets = [rng.choice(256, 64, replace=False) for _ in range(21)]
    for k in (2, 20):
        arrived = np.setdiff1d(np.arange(256), sets[k])
        dec = code.decoding(arrived)
        assert dec.cond > 1e12 and dec.residual < 1e-6
        assert _exact(code, arrived, rng) < 1e-6
        with pytest.raises(DecodeError, match="do not span"):
            decode_vector(code.matrix, arrived)  # rank unknown: the threshold rule
