"""Tests of fedsim.results: run directories, metrics files, plots, tables, progress."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsim.errors import FedsimError
from fedsim.results import (
    METRIC_FIELDS,
    Progress,
    RoundRecord,
    RunWriter,
    compare_table,
    format_bytes,
    plot_compare,
    plot_run,
    read_metrics,
    summarize,
    to_toml,
)
from fedsim.results.progress import auto_enabled, format_duration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_records(n: int = 6, eval_every: int = 2, acc0: float = 0.3) -> list[RoundRecord]:
    """A small fake run: accuracy rises, evaluation every ``eval_every`` rounds."""
    out, cum = [], 0
    for r in range(1, n + 1):
        up, down = 1000 * r, 500
        cum += up + down
        evaluated = r % eval_every == 0 or r == n
        out.append(RoundRecord(
            round=r, sim_time_s=2.5 * r, round_time_s=2.5, bytes_up=up, bytes_down=down,
            cum_bytes=cum, selected=5, participants=4 if r % 3 else 3, stragglers=1,
            dropped=0 if r % 3 else 1, train_loss=2.0 / r,
            test_loss=1.5 / r if evaluated else None,
            test_accuracy=min(acc0 + 0.1 * r, 1.0) if evaluated else None,
        ))
    return out


def write_run(run_dir: Path, records: list[RoundRecord], wall: float = 0.01) -> Path:
    """Write ``records`` into ``run_dir`` with RunWriter."""
    with RunWriter(run_dir) as writer:
        for rec in records:
            writer.append(rec, wall_time_s=wall, train_wall_s=wall / 2)
    return run_dir


# ---------------------------------------------------------------- records


def test_metric_fields_match_record():
    assert tuple(f.name for f in fields(RoundRecord)) == METRIC_FIELDS


def test_record_coerces_numpy_scalars_and_rejects_float_counts():
    np = pytest.importorskip("numpy")
    rec = RoundRecord(np.int64(1), np.float64(0.1), 0.1, 1, 1, 2, 1, 1, 0, 0,
                      test_accuracy=np.float32(0.5))
    assert type(rec.round) is int and type(rec.sim_time_s) is float
    assert type(rec.test_accuracy) is float
    with pytest.raises(TypeError, match="bytes_up"):
        RoundRecord(1, 0.1, 0.1, 1.5, 1, 2, 1, 1, 0, 0)
    with pytest.raises(TypeError, match="sim_time_s"):
        RoundRecord(1, None, 0.1, 1, 1, 2, 1, 1, 0, 0)


def test_identical_runs_give_byte_identical_metrics(tmp_path):
    records = make_records()
    a = write_run(tmp_path / "a", records, wall=0.01)
    b = write_run(tmp_path / "b", records, wall=0.02)
    for name in ("metrics.csv", "metrics.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "timing.csv").read_bytes() != (b / "timing.csv").read_bytes()
    header = (a / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(METRIC_FIELDS)
    assert (a / "timing.csv").read_text().splitlines()[0] == (
        "round,wall_time_s,train_wall_s,aggregate_wall_s,eval_wall_s")


def test_missing_accuracy_is_empty_in_csv_and_null_in_jsonl(tmp_path):
    run = write_run(tmp_path / "run", make_records(n=3, eval_every=2))
    first_csv = dict(zip(METRIC_FIELDS, (run / "metrics.csv").read_text().splitlines()[1]
                         .split(","), strict=True))
    assert first_csv["test_loss"] == first_csv["test_accuracy"] == ""
    first_json = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert first_json["test_accuracy"] is None and first_json["test_loss"] is None
    assert list(first_json) == list(METRIC_FIELDS)


def test_rows_survive_without_close(tmp_path):
    writer = RunWriter(tmp_path / "crash")
    for rec in make_records(n=2):
        writer.append(rec, wall_time_s=0.1)
    assert len(read_metrics(tmp_path / "crash")) == 2  # flushed, not yet closed
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.append(make_records(n=1)[0], wall_time_s=0.1)


any_float = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -0.0, 0.1, 1 / 3])


def same_float(a: float | None, b: float | None) -> bool:
    """Equality that also holds for NaN == NaN and tells 0.0 from -0.0."""
    if a is None or b is None:
        return a is b
    return repr(a) == repr(b)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(any_float, any_float, st.integers(0, 2**62),
                  any_float | st.none(), st.none() | any_float),
        min_size=1, max_size=5,
    )
)
def test_floats_round_trip_exactly(tmp_path_factory, rows):
    run = tmp_path_factory.mktemp("rt")
    records = [
        RoundRecord(round=i, sim_time_s=t, round_time_s=dt, bytes_up=nb, bytes_down=0,
                    cum_bytes=nb, selected=1, participants=1, stragglers=0, dropped=0,
                    train_loss=loss, test_loss=loss, test_accuracy=acc)
        for i, (t, dt, nb, loss, acc) in enumerate(rows)
    ]
    write_run(run, records)
    back = read_metrics(run)
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(back) == len(records) == len(jsonl)
    for rec, row, jrow in zip(records, back, jsonl, strict=True):
        for name, value in rec.as_dict().items():
            if isinstance(value, int):
                assert row[name] == value == jrow[name] and type(row[name]) is int
            else:
                assert same_float(row[name], value), name
                assert same_float(jrow[name], value), name


toml_scalars = (
    st.text(max_size=12)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
)
toml_keys = st.text(max_size=8)
toml_values = st.recursive(
    toml_scalars | st.lists(toml_scalars, max_size=4),
    lambda children: st.dictionaries(toml_keys, children, max_size=4)
    | st.lists(st.dictionaries(toml_keys, children, max_size=3), min_size=1, max_size=3)
    | st.lists(children, max_size=3),
    max_leaves=12,
)


def same_tree(a, b) -> bool:
    """Structural equality that tells 0.0 from -0.0 and 1 from 1.0 and True."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(
            same_tree(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list) and len(a) == len(b) and all(
            same_tree(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and repr(a) == repr(b)


@settings(max_examples=150, deadline=None)
@given(doc=st.dictionaries(toml_keys, toml_values, max_size=5))
def test_toml_round_trips_through_tomllib(doc):
    text = to_toml(doc)
    assert same_tree(doc, tomllib.loads(text)), text


def test_write_scenario_round_trips(tmp_path):
    scenario = {
        "name": 'fedavg "quoted"\n',
        "seed": 7,
        "data": {"dataset": "synthetic", "alpha": 0.1, "clients": 100, "flags": [True, False]},
        "network": {"bandwidth_bps": 1e7, "latency_s": float("inf"), "graph": {"kind": "star"}},
        "attacks": [{"kind": "sign_flip", "scale": -100.0}, {"kind": "alie", "z": 1.5}],
        "empty": {},
        "optional": None,
    }
    with RunWriter(tmp_path / "run") as writer:
        writer.write_scenario(scenario)
    back = tomllib.loads((tmp_path / "run" / "scenario.toml").read_text(encoding="utf-8"))
    expected = {k: v for k, v in scenario.items() if v is not None}
    assert same_tree(expected, back)
    with pytest.raises(TypeError, match="a.b"):
        to_toml({"a": {"b": object()}})


def test_summarize_hand_made():
    rows = [r.as_dict() for r in make_records(n=6, eval_every=2, acc0=0.3)]
    rows[3]["test_accuracy"] = 0.95  # round 4 is the best, round 6 the last
    s = summarize(rows)
    assert s["rounds"] == 6 and s["final_round"] == 6
    assert s["final_accuracy"] == pytest.approx(0.9)
    assert s["best_accuracy"] == 0.95 and s["best_round"] == 4
    assert s["sim_time_s"] == 15.0
    assert s["total_bytes_up"] == 21000 and s["total_bytes_down"] == 3000
    assert s["total_bytes"] == 24000
    assert s["mean_participants"] == pytest.approx((4 + 4 + 3 + 4 + 4 + 3) / 6)
    assert s["total_stragglers"] == 6 and s["total_dropped"] == 2
    assert s["final_test_loss"] == pytest.approx(0.25)
    empty = summarize([])
    assert empty["rounds"] == 0 and empty["final_accuracy"] is None


def test_write_summary_is_json(tmp_path):
    with RunWriter(tmp_path / "run") as writer:
        writer.write_summary({"b": 1, "a": Path("x"), "acc": 0.5})
    text = (tmp_path / "run" / "summary.json").read_text()
    assert json.loads(text) == {"a": "x", "acc": 0.5, "b": 1, "status": "complete"}


# ---------------------------------------------------------------- errors


def test_missing_run_dir_names_the_path(tmp_path):
    missing = tmp_path / "no_such_run"
    for call in (lambda: read_metrics(missing), lambda: plot_run(missing),
                 lambda: compare_table([missing]),
                 lambda: plot_compare([missing], tmp_path / "c.png")):
        with pytest.raises(FedsimError, match="no_such_run") as err:
            call()
        assert "\n" not in str(err.value)


def test_dir_without_metrics_names_the_path(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FedsimError, match="metrics.csv.*empty_run"):
        plot_run(tmp_path / "empty_run")


def test_bad_compare_arguments(tmp_path):
    run = write_run(tmp_path / "run", make_records(n=2))
    with pytest.raises(FedsimError, match="round, sim_time_s, cum_bytes"):
        plot_compare([run], tmp_path / "c.png", x="wall")
    with pytest.raises(FedsimError, match="labels"):
        compare_table([run], labels=["a", "b"])


# ---------------------------------------------------------------- plots and table


def test_plot_run_writes_four_pngs(tmp_path):
    run = write_run(tmp_path / "fedavg", make_records())
    paths = plot_run(run)
    assert [p.name for p in paths] == ["accuracy_vs_round.png", "accuracy_vs_time.png",
                                       "accuracy_vs_bytes.png", "loss_vs_round.png"]
    for path in paths:
        assert path.parent == run and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_run_without_evaluation(tmp_path):
    run = write_run(tmp_path / "noeval", make_records(n=3, eval_every=99)[:2])
    assert all(p.stat().st_size > 0 for p in plot_run(run))


def test_plot_compare_and_table(tmp_path):
    a = write_run(tmp_path / "fedavg", make_records(acc0=0.3))
    b = write_run(tmp_path / "gradcode", make_records(acc0=0.2))
    for x in ("round", "sim_time_s", "cum_bytes"):
        out = plot_compare([a, b], tmp_path / "out" / f"cmp_{x}.png", x=x)
        assert out.read_bytes()[:8] == PNG_MAGIC
    table = compare_table([a, b])
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| run |")
    assert "fedavg" in lines[2] and "0.9000" in lines[2]
    assert "gradcode" in lines[3] and "0.8000" in lines[3]
    assert "24 kB" in lines[2]
    labelled = compare_table([a, b], labels=["A|1", "B"])
    assert "A\\|1" in labelled


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1500) == "1.5 kB"
    assert format_bytes(999_999) == "1 MB"
    assert format_bytes(2.345e9) == "2.35 GB"
    assert format_bytes(-2000) == "-2 kB"


def test_results_does_not_import_torch_or_pyplot():
    code = ("import sys, fedsim.results; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- progress


class FakeClock:
    """A clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_disabled_writes_nothing():
    out = io.StringIO()
    with Progress(10, label="x", enabled=False, stream=out) as progress:
        for r in range(1, 11):
            progress.update(r, sim_time_s=r * 1.0, accuracy=0.5)
    assert out.getvalue() == ""


def test_progress_auto_is_off_for_non_tty(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("FEDSIM_QUIET", raising=False)
    out = io.StringIO()
    assert not auto_enabled(out)
    Progress(3, stream=out).update(3, 1.0)
    assert out.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert auto_enabled(Tty())
    monkeypatch.setenv("CI", "true")
    assert not auto_enabled(Tty())
    monkeypatch.delenv("CI")
    monkeypatch.setenv("FEDSIM_QUIET", "1")
    assert not auto_enabled(Tty())


def test_progress_line_eta_rate_limit_and_close():
    out, clock = io.StringIO(), FakeClock()
    progress = Progress(10, label="fedavg", enabled=True, stream=out, clock=clock)
    clock.now += 0.3
    progress.update(3, sim_time_s=4.5, accuracy=0.8125)
    text = out.getvalue()
    assert text.startswith("\r[fedavg] round 3/10  sim 4.5 s  acc 0.812  elapsed 0.3 s")
    assert text.endswith("ETA 2.1 s")  # 0.3 s for 1 update, 7 rounds left
    clock.now += 0.01
    progress.update(4, sim_time_s=6.0)  # too soon: not drawn
    assert out.getvalue() == text
    clock.now += 0.01
    progress.update(10, sim_time_s=15.0)  # the last round is always drawn
    assert "round 10/10" in out.getvalue() and "acc 0.812" in out.getvalue()
    progress.close()
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
    progress.close()
    assert out.getvalue().count("\n") == 1


def test_progress_close_without_drawing_writes_nothing():
    out = io.StringIO()
    Progress(5, enabled=True, stream=out).close()
    assert out.getvalue() == ""


def test_format_duration():
    assert format_duration(3.14) == "3.1 s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3720) == "1h02m"
    assert not math.isnan(float(format_duration(0.0).split()[0]))
