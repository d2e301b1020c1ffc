"""The per-round callback of fedsim.run, and the TensorBoard writer fed from it."""

from __future__ import annotations

import json

import pytest

import fedsim
from fedsim.errors import FedsimError
from fedsim.results.records import METRIC_FIELDS
from fedsim.results.tensorboard import tensorboard_callback

TINY = {"name": "cb", "seed": 1, "rounds": 3, "clients_per_round": 4,
        "data": {"dataset": "synthetic", "num_clients": 6, "synthetic_mean_samples": 10},
        "model": {"name": "logreg"}, "algorithm": {"lr": 0.1, "batch_size": 5}}


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_callback_sees_each_round_as_written(tmp_path):
    seen = []

    def callback(row):  # the row is on disk when the callback runs
        seen.append(row)
        assert len(rows_of(tmp_path / "run")) == row["round"]

    fedsim.run(TINY, run_dir=tmp_path / "run", callback=callback,
               metrics={"top1": lambda logits, y: float((logits.argmax(1) == y).float().mean())})
    assert seen == [{**r} for r in rows_of(tmp_path / "run")]
    assert list(seen[0]) == [*METRIC_FIELDS, "top1"]
    assert seen[-1]["top1"] == pytest.approx(seen[-1]["test_accuracy"], abs=1e-6)


def test_decentralized_rows_carry_the_node_columns(tmp_path):
    seen = []
    raw = {**TINY, "clients_per_round": 6, "algorithm": {**TINY["algorithm"], "name": "dsgd"},
           "network": {"topology": "ring", "topology_params": {"n": 6}}}
    fedsim.run(raw, run_dir=tmp_path / "run", callback=seen.append)
    assert [r["round"] for r in seen] == [1, 2, 3]
    assert seen[-1]["consensus_distance"] >= 0 and "node_accuracy_mean" in seen[-1]


def test_a_failing_callback_stops_the_run_and_keeps_what_was_done(tmp_path):
    def callback(row):
        if row["round"] == 2:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fedsim.run(TINY, run_dir=tmp_path / "run", callback=callback)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 2


class FakeWriter:
    def __init__(self):
        self.scalars, self.flushes, self.closed = [], 0, False

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_tensorboard_gets_every_number_at_its_round(tmp_path):
    writer = FakeWriter()
    callback = tensorboard_callback(tmp_path / "tb", writer=writer)
    fedsim.run({**TINY, "eval_every": 2}, run_dir=tmp_path / "run", callback=callback)
    callback.close()
    rows = rows_of(tmp_path / "run")
    expected = [(k, v, r["round"]) for r in rows for k, v in r.items()
                if k != "round" and v is not None]
    assert writer.scalars == expected and writer.flushes == 3 and writer.closed
    assert ("test_accuracy", rows[0]["test_accuracy"], 1) not in writer.scalars  # not evaluated


def test_tensorboard_missing_is_one_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kw):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(FedsimError, match=r"pip install 'fedsim\[tensorboard\]'"):
        tensorboard_callback(tmp_path / "tb")
