"""Smoke tests of ``fedsim bench limit`` and ``fedsim bench scale`` at tiny sizes (no timings)."""

from __future__ import annotations

import json
import math
import os

import pytest

from fedsim.bench import limit_bench, limit_programs, workload
from fedsim.cli import main


def _last_json(capsys: pytest.CaptureFixture[str]) -> dict:
    """The JSON line a bench command ends with."""
    out = capsys.readouterr().out.strip().splitlines()
    assert out, "the bench printed nothing on stdout"
    return json.loads(out[-1])


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def _ratio_of_rounded(ratio: float, num: float, den: float, places: int, ratio_places: int
                      ) -> bool:
    """``ratio`` (rounded to ``ratio_places``) is ``num / den`` for the unrounded times behind
    ``num`` and ``den`` (each rounded to ``places``)."""
    h, hr = 0.5 * 10.0**-places, 0.5 * 10.0**-ratio_places
    return (num - h) / (den + h) - hr <= ratio <= (num + h) / (den - h) + hr


def test_limit_bench_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "limit", "--clients", "8", "--rounds", "2", "--repeats", "2"]) == 0
    fig = _last_json(capsys)
    assert fig["bench"] == "limit"
    assert (fig["clients"], fig["rounds"], fig["repeats"]) == (8, 2, 2)
    assert fig["threads"] == f"default({os.environ.get('FEDSIM_TORCH_THREADS', '1')})"
    # all three sides end with the same global model
    assert fig["models_agree"] is True
    # the workload's MLP trains with the fused engine; chunks never exceed the clients
    assert fig["engine"] == "fused_mlp"
    # ... so the hand-written fused program is a side too, like for like
    assert _finite_positive(fig["limit_fused_s"])
    assert _ratio_of_rounded(fig["ratio_fedsim_over_limit_fused"], fig["fedsim_s"],
                             fig["limit_fused_s"], 4, 3)
    assert fig["device"].startswith("cpu")
    assert 1 <= fig["engine_chunk"] <= 8 and 1 <= fig["limit_chunk"] <= 8
    # timings: finite and positive; each ratio is the quotient of the reported times
    assert _finite_positive(fig["fedsim_s"], fig["limit_s"], fig["limit_chunked_s"])
    assert _ratio_of_rounded(fig["ratio_fedsim_over_limit"], fig["fedsim_s"], fig["limit_s"],
                             4, 3)
    assert _ratio_of_rounded(fig["ratio_fedsim_over_limit_chunked"], fig["fedsim_s"],
                             fig["limit_chunked_s"], 4, 3)
    # the breakdown names every part; the parts are non-negative and none exceeds the total
    parts = fig["breakdown_s"]
    assert set(parts) == {
        "setup: model", "setup: population (data to tensors)", "setup: clock",
        "setup: other (runner, writer, algorithm)", "round: clock", "round: training",
        "round: cohort indices (CSR gather)", "training: shuffles", "training: local SGD",
        "round: aggregation + server step", "round: evaluation", "round: file writing",
        "round: other (sampling, bookkeeping)", "finish: summary, files", "total"}
    assert _finite_positive(parts["total"], parts["round: training"])
    assert all(math.isfinite(v) and 0 <= v <= parts["total"] for v in parts.values())
    # the parts of training (medians of nested timers) each within training
    for key in ("training: shuffles", "training: local SGD"):
        assert parts[key] <= parts["round: training"]


def test_scale_bench_tiny(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "scale", "--population", "40", "--cohort", "10",
                 "--samples-per-client", "20", "--rounds", "2"]) == 0
    fig = _last_json(capsys)
    assert fig["bench"] == "scale"
    assert (fig["population"], fig["cohort"], fig["samples_per_client"], fig["rounds"]) == (
        40, 10, 20, 2)
    # timings: finite and positive; the derived figures follow from them
    assert _finite_positive(fig["round_s"], fig["total_run_s"], fig["warm_up_s"],
                            fig["clients_per_s"])
    assert fig["setup_s"] >= 0 and fig["data_build_s"] >= 0  # (rounded to 1 ms)
    assert _ratio_of_rounded(fig["clients_per_s"], 10, fig["round_s"], 3, 1)
    assert fig["setup_s"] + fig["round_s"] <= fig["total_run_s"] + 2e-3
    # per-round parts: training contains its sub-parts, and all round parts fit in the run
    parts = fig["round_parts_s"]
    assert {"round: clock", "round: training", "training: local SGD",
            "round: aggregation + server step", "round: evaluation"} <= set(parts)
    assert all(math.isfinite(v) and v >= 0 for v in parts.values())
    subs = [v for k, v in parts.items() if k.startswith("training:")]
    assert sum(subs) <= parts["round: training"] + 1e-4 * len(subs)
    rounds = sum(v for k, v in parts.items() if k.startswith("round:"))
    assert fig["rounds"] * rounds <= fig["total_run_s"] + 1e-3
    # memory: the whole process's peak is at least what was sampled during the run
    assert 0 < fig["rss_before_run_mb"] <= fig["peak_rss_during_run_mb"] + 1
    assert fig["peak_rss_during_run_mb"] <= fig["peak_rss_mb"] + 1
    assert 0 <= fig["final_accuracy"] <= 1
    # the simulator's overhead: the mean round minus its training and aggregation work
    assert fig["overhead_s"] >= 0
    assert fig["overhead_us_per_client"] == pytest.approx(fig["overhead_s"] / 10 * 1e6,
                                                          abs=5.1)  # overhead_s: 4 decimals
    work = (parts["training: local SGD"] + parts["training: shuffles"]
            + parts["round: aggregation + server step"])
    assert fig["overhead_s"] <= max(0.0, fig["total_run_s"] / fig["rounds"] - work) + 1e-3


def test_scale_bench_with_logistic_regression(capsys: pytest.CaptureFixture[str]) -> None:
    """``--hidden 0``: the workload's model is logistic regression (610 parameters)."""
    assert main(["bench", "scale", "--population", "30", "--cohort", "30",
                 "--samples-per-client", "5", "--hidden", "0"]) == 0
    captured = capsys.readouterr()
    fig = json.loads(captured.out.strip().splitlines()[-1])
    assert fig["hidden"] == 0 and fig["cohort"] == 30 and fig["overhead_us_per_client"] >= 0
    assert "logistic regression 60-10" in captured.err
    for hidden in (0, 7):  # the count the --hidden memory check uses is the built model's
        w = workload.Workload(clients=2, hidden=hidden)
        assert sum(p.numel() for p in workload.make_model(w).parameters()) == w.num_params
    assert workload.Workload(hidden=0).num_params == 610


def test_limit_program_matches_fedsim_with_two_epochs_and_partial_batches() -> None:
    """The limit replays fedsim's minibatches also for E = 2 and a partial last batch."""
    import dataclasses
    import tempfile

    import torch

    from fedsim.runners import run_scenario

    w = dataclasses.replace(workload.Workload(clients=6, rounds=2, samples_per_client=13),
                            epochs=2, batch_size=5)
    data = workload.make_data(w)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_scenario(workload.scenario(w), tmp, progress=False, data=data)
    fedsim_params, _ = limit_bench._fedsim_final_params(res, w, data)
    for program in (limit_programs.vmapped, limit_programs.fused):
        for chunk in (None, 4):
            limit = program(w, data, chunk=chunk)
            assert torch.allclose(fedsim_params, limit, rtol=limit_bench.RTOL,
                                  atol=limit_bench.ATOL), (program.__name__, chunk)
        assert not torch.allclose(fedsim_params, program(dataclasses.replace(w, lr=0.06), data),
                                  rtol=limit_bench.RTOL, atol=limit_bench.ATOL)


def test_replay_stands_for_the_run_when_the_result_has_no_params() -> None:
    """Without ``RunResult.final_params`` the bench replays the run with fedsim's pieces."""
    import tempfile
    from types import SimpleNamespace

    import torch

    from fedsim.runners import run_scenario

    w = workload.Workload(clients=5, rounds=2)
    data = workload.make_data(w)
    with tempfile.TemporaryDirectory() as tmp:
        res = run_scenario(workload.scenario(w), tmp, progress=False, data=data)
    replayed, source = limit_bench._fedsim_final_params(SimpleNamespace(summary=res.summary),
                                                        w, data)
    assert source.startswith("replay")
    assert torch.equal(replayed, res.final_params)
