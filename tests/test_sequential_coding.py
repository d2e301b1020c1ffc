"""SR-SGC and M-SGC: every job decodes by t + T on every pattern of the bursty model.

Exhaustive over all straggler patterns that fit the (B, W, lambda)-bursty model, for
small n (<= 6) and W (<= 4): the decoding theorems of Krishnan et al. (ICLR 2023).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.coding import (
    MSGC,
    SRSGC,
    BurstyModel,
    DecodeFailure,
    IgnoreStragglers,
    gilbert_elliott_delays,
    make_scheme,
    msgc_load,
    play_schedule,
    srsgc_s,
    wait_for_all,
)
from fedsim.coding.playback import srsgc_timing
from fedsim.errors import ScenarioError


def conforming_patterns(n: int, rounds: int, model: BurstyModel) -> list[np.ndarray]:
    """Every ``[n, rounds]`` straggler pattern inside the model (depth-first)."""
    subsets = [np.array([(m >> i) & 1 for i in range(n)], dtype=bool) for m in range(2**n)]
    out: list[np.ndarray] = []

    def extend(cols):
        if len(cols) == rounds:
            out.append(np.stack(cols, axis=1))
            return
        past = (np.stack(cols[-model.memory:], axis=1) if cols
                else np.zeros((n, 0), dtype=bool))
        for sub in subsets:
            if model.fits(past, sub):
                extend([*cols, sub])

    extend([])
    return out


def _check_all_patterns(cls, n, B, W, lam, jobs) -> int:
    first = cls(n, B, W, lam, jobs)
    patterns = conforming_patterns(n, first.rounds, first.model)
    for p in patterns:
        sch = cls(n, B, W, lam, jobs)
        res = play_schedule(sch, stragglers=p)  # raises DecodeFailure on a missed deadline
        assert sorted(res.decodes) == list(range(1, jobs + 1))
        for job, dec in res.decodes.items():
            assert dec.round <= job + sch.T
            assert np.abs(sch.coefficient_sum(dec) - 1.0).max() < 1e-9  # = the full gradient
    return len(patterns)


@pytest.mark.parametrize("n,B,W,lam,jobs,count", [
    (4, 1, 2, 1, 4, 181), (4, 1, 3, 2, 4, 963), (4, 2, 3, 1, 4, 253), (5, 1, 3, 2, 3, 546),
    (6, 1, 3, 2, 2, 154), (4, 1, 4, 2, 3, 113), (3, 2, 3, 2, 4, 3571)])
def test_srsgc_decodes_every_job_by_t_plus_B_on_every_conforming_pattern(
        n, B, W, lam, jobs, count):
    assert _check_all_patterns(SRSGC, n, B, W, lam, jobs) == count


@pytest.mark.parametrize("n,B,W,lam,jobs,count", [
    (4, 1, 2, 1, 4, 181), (4, 2, 3, 1, 4, 517), (5, 1, 3, 2, 3, 2211), (6, 1, 2, 1, 3, 133),
    (4, 1, 4, 2, 3, 1141), (3, 1, 2, 3, 4, 2197)])
def test_msgc_decodes_every_job_by_deadline_on_every_conforming_pattern(
        n, B, W, lam, jobs, count):
    assert _check_all_patterns(MSGC, n, B, W, lam, jobs) == count


def test_pattern_outside_the_model_can_fail():
    """A burst longer than B breaks SR-SGC (the master's clock would wait instead)."""
    sch = SRSGC(4, 1, 3, 2, jobs=3)  # s = ceil(2/3) = 1
    p = np.zeros((4, sch.rounds), dtype=bool)
    p[:2, :2] = True  # workers 0 and 1 straggle in rounds 1 and 2: bursts of 2 > B
    with pytest.raises(DecodeFailure):
        play_schedule(sch, stragglers=p)


@pytest.mark.parametrize("n,B,W,lam", [(4, 1, 3, 2), (6, 2, 3, 2), (8, 3, 4, 3), (5, 1, 2, 5),
                                       (64, 2, 4, 20)])
def test_msgc_counted_work_equals_the_load_formula(n, B, W, lam):
    sch = MSGC(n, B, W, lam, jobs=12)
    res = play_schedule(sch, stragglers=np.zeros((n, sch.rounds), dtype=bool))
    expected = (lam + 1) * (W - 1 + B) / (n * (B + (W - 1) * (lam + 1))) if lam < n else \
        (W - 1 + B) / (n * (W - 1))
    assert sch.load == pytest.approx(expected) == pytest.approx(msgc_load(n, B, W, lam))
    steady = res.work[:, sch.T:sch.jobs]  # rounds T+1 .. J: every slot busy
    if lam < n:
        assert np.allclose(steady, expected)
    assert res.work.max() <= expected + 1e-12
    assert sch.fractions.sum() == pytest.approx(1.0)


def test_msgc_load_with_stragglers_never_exceeds_formula():
    rng = np.random.default_rng(0)
    sch = MSGC(8, 2, 3, 2, jobs=30)
    d = gilbert_elliott_delays(8, sch.rounds, rng, p_slow=0.1, p_recover=0.5)
    res = play_schedule(sch, d)
    assert res.work.max() <= sch.load + 1e-12
    assert len(res.decodes) == 30


@pytest.mark.parametrize("B,W,lam,s", [(1, 2, 3, 2), (1, 3, 2, 1), (2, 3, 4, 2), (2, 5, 6, 2),
                                       (3, 4, 10, 5), (1, 5, 9, 2)])
def test_srsgc_s_delay_and_load(B, W, lam, s):
    assert srsgc_s(B, W, lam) == s == -(-B * lam // (W - 1 + B))
    sch = SRSGC(12, B, W, lam, jobs=10)
    assert sch.T == B and sch.s == s and sch.load == pytest.approx((s + 1) / 12)
    res = play_schedule(sch, stragglers=np.zeros((12, sch.rounds), dtype=bool))
    assert np.allclose(res.work[:, :sch.jobs], (s + 1) / 12)


def test_msgc_delay():
    assert MSGC(4, 2, 3, 1, jobs=5).T == 3 and MSGC(4, 1, 2, 1, jobs=5).T == 1


def test_srsgc_worked_example_n4():
    """docs/gradient_coding.md: n = 4, (B, W, lambda) = (1, 3, 2): s = 1, T = 1.

    Workers 0 and 1 straggle in round 1: job 1 misses 2 > s tasks, so in round 2 worker 0
    (v - s = 1 of them, lowest id) redoes its job-1 task; job 1 decodes at the end of round
    2 from workers {0, 2, 3}, job 2 from {1, 2, 3} at the end of round 2.
    """
    sch = SRSGC(4, 1, 3, 2, jobs=3)
    p = np.zeros((4, sch.rounds), dtype=bool)
    p[[0, 1], 0] = True
    sch.assign(1)
    assert sch.receive(1, p[:, 0]) == []
    tasks = sch.assign(2)
    assert [(t.worker, t.job) for t in tasks] == [(0, 1), (1, 2), (2, 2), (3, 2)]
    decs = sch.receive(2, p[:, 1])
    assert [(d.job, [t.worker for t in d.tasks]) for d in decs] == [(1, [0, 2, 3]),
                                                                     (2, [1, 2, 3])]


def test_msgc_worked_example_n4():
    """n = 4, (B, W, lambda) = (1, 2, 1): T = 1, two minitasks per round (slot 0: D1 chunk,
    slot 1: D2 group 0 with a (4, 1)-code, or a D1 retry). Worker 2 straggles in round 1:
    in round 2 it retries its job-1 chunk, the others send group-0 coded tasks of job 1."""
    sch = MSGC(4, 1, 2, 1, jobs=2)
    assert sch.load == pytest.approx(2 * 2 / (4 * (1 + 2)))
    sch.assign(1)
    sch.receive(1, np.array([False, False, True, False]))
    tasks = sch.assign(2)
    job1 = [(t.worker, t.kind) for t in tasks if t.job == 1]
    assert job1 == [(0, "d2"), (1, "d2"), (2, "d1"), (3, "d2")]
    (dec,) = sch.receive(2, np.zeros(4, dtype=bool))
    assert dec.job == 1 and dec.round == 2
    assert np.allclose(sch.coefficient_sum(dec), 1.0)


def test_baselines():
    w = wait_for_all(4, 3)
    assert np.array_equal(w.code.matrix, np.eye(4)) and w.load == 0.25
    d = np.array([[1.0], [1.1], [5.0], [1.2]])
    ig = IgnoreStragglers(4, 1, jobs=1)
    ig.assign(1)
    clk = ig.clock(d[:, 0])
    assert clk.duration_s == 1.2 and clk.stragglers.tolist() == [False, False, True, False]
    (dec,) = ig.receive(1, clk.stragglers)
    assert np.allclose(dec.weights, 4 / 3)
    assert not np.allclose(ig.coefficient_sum(dec), 1.0)  # biased
    res = play_schedule(wait_for_all(4, 1), d)
    assert res.rows[0]["duration_s"] == 5.0 and res.rows[0]["waited"]


def test_bad_inputs_are_one_line_scenario_errors():
    cases = [
        (lambda: SRSGC(4, 2, 4, 2, jobs=3), r"^algorithm\.coding\.B: SR-SGC needs B to divide"),
        (lambda: MSGC(4, 1, 3, 5, jobs=3), r"^algorithm\.coding\.lam: must be an integer in"),
        (lambda: MSGC(4, 3, 3, 1, jobs=3), r"^algorithm\.coding\.W: must be an integer >= B"),
        (lambda: make_scheme("gc", 4, 3, s=4), r"^algorithm\.coding\.s:"),
        (lambda: make_scheme("gc", 6, 3, s=3, code="frc"), r"^algorithm\.coding\.s: FRC"),
        (lambda: make_scheme("m-sgc", 4, 3, B=1), r"^algorithm\.coding\.W: scheme"),
        (lambda: make_scheme("lt", 4, 3), r"^algorithm\.coding\.scheme:"),
        (lambda: make_scheme("gc", 4, 0, s=1), r"^algorithm\.coding\.jobs:"),
    ]
    for make, pattern in cases:
        with pytest.raises(ScenarioError, match=pattern) as info:
            make()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("B,W,lam", [(1, 2, 2), (1, 3, 3), (2, 3, 4), (2, 5, 3), (3, 4, 5)])
def test_srsgc_timing_equals_the_state_machine(B, W, lam):
    """The grid's task-free SR-SGC clock plays the same rounds as SRSGC + play_schedule."""
    for seed in range(4):
        base = gilbert_elliott_delays(10, 30, np.random.default_rng(seed), p_slow=0.1,
                                      p_recover=0.4)
        sch = SRSGC(10, B, W, lam, jobs=24)
        delays = base + sch.load * 2.2
        res = play_schedule(sch, delays)
        dur, waited = srsgc_timing(delays, B, W, lam, 24)
        assert np.allclose(dur, [r["duration_s"] for r in res.rows], rtol=0, atol=1e-12)
        assert waited.tolist() == [r["waited"] for r in res.rows]
        assert sorted(res.decodes) == list(range(1, 25))


def test_srsgc_skips_rounds_with_nothing_to_compute():
    """Rounds J + 1 .. J + B only redo missing tasks: with every job decoded on time they
    are skipped (0 s); a re-attempt in round J + B makes that round count."""
    d = np.ones((4, 5))
    sch = SRSGC(4, 2, 3, 2, jobs=3)  # s = ceil(4 / 4) = 1, T = 2
    res = play_schedule(sch, d)
    assert [r["duration_s"] for r in res.rows] == [1.0, 1.0, 1.0, 0.0, 0.0]
    d[[0, 1], 2] = 5.0  # 2 > s stragglers in round 3: worker 0 redoes job 3 in round 5
    res = play_schedule(SRSGC(4, 2, 3, 2, jobs=3), d)
    assert [r["duration_s"] for r in res.rows] == [1.0, 1.0, 2.0, 0.0, 1.0]
    assert res.decodes[3].round == 5


def test_srsgc_harmless_rounds_are_accepted_and_left_out_of_the_pattern():
    """A round where everybody computes its own job and <= s straggle decodes on the spot;
    its stragglers cannot matter to another job, so it is accepted without the model
    check and does not count against later rounds' windows (the authors' simulation does
    the same). Here worker 0 straggles in rounds 1 and 3: outside the (1, 3, 2) model
    (two bursts in a window of 3), yet nobody has to wait and every job decodes."""
    d = np.ones((4, 5))
    d[0, [0, 2]] = 5.0
    sch = SRSGC(4, 1, 3, 2, jobs=4)  # s = 1
    assert not sch.model.conforms(d > 2.0)
    res = play_schedule(sch, d)
    assert [r["waited"] for r in res.rows] == [False] * 5
    assert [r["stragglers"] for r in res.rows] == [1, 0, 1, 0, 0]
    assert sorted(res.decodes) == [1, 2, 3, 4]
    # two stragglers (> s) in rounds 1 and 3 are not harmless: the window (3 distinct
    # workers > lambda in rounds 1..3) binds in round 3 and the master waits
    d[1, 0] = d[2, 2] = 5.0
    res = play_schedule(SRSGC(4, 1, 3, 2, jobs=4), d)
    assert [r["waited"] for r in res.rows] == [False, False, True, False, False]
