"""Shipped scenarios give the same rows as before the arrays-not-objects rewrite (issue 15).

``data/golden_runs_239acc3.json`` holds two rounds of the quickstart (three round
policies), robust_bgmd and gossip_ring (D-SGD, accelerated gossip) as commit 239acc3
wrote them, before clients became arrays (CSR indices, array schedules, the update
buffer kept across rounds). The same seed must give the same clock (times, bytes and
counts exactly) and the same training; losses are compared to 1e-6 relative and
accuracies to one test sample, so another CPU's float kernels cannot fail the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsim.results.records import read_metrics
from fedsim.study import run_file

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_runs_239acc3.json").read_text())
DIGITS_TEST = 359  # the digits' held-out samples in these scenarios: one sample of accuracy
EXACT = ("sim_time_s", "bytes_up", "bytes_down", "participants", "stragglers", "dropped")


@pytest.mark.parametrize("name, only", [("quickstart", None), ("robust_bgmd", None),
                                        ("gossip_ring", ["dsgd", "accelerated_gossip_sgd"])])
def test_shipped_scenarios_match_the_rows_written_before_the_rewrite(tmp_path, name, only):
    runs = run_file(ROOT / "scenarios" / f"{name}.toml", ["rounds=2"],
                    output_dir=str(tmp_path), only=only, progress=False, log=None)
    seen = set()
    for r in runs:
        key = f"{name}/{Path(r.run_dir).name}"
        seen.add(key)
        rows, want = read_metrics(r.run_dir), GOLDEN[key]
        assert len(rows) == len(want) == 2
        for row, w in zip(rows, want, strict=True):
            assert {k: row[k] for k in EXACT} == {k: w[k] for k in EXACT}, key
            for k in ("train_loss", "test_loss"):
                assert row[k] == pytest.approx(w[k], rel=1e-6), (key, k)
            assert abs(row["test_accuracy"] - w["test_accuracy"]) <= 1.01 / DIGITS_TEST, key
    assert seen == {k for k in GOLDEN if k.startswith(name + "/")}
