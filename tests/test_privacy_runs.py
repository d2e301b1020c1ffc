"""Sketching, FetchSGD, top-k and DP-FedAvg inside a federated run: the pieces in the
right slots, the bytes on the wire, the privacy spent each round, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

import fedsim
from fedsim.errors import ScenarioError
from fedsim.privacy.accounting import epsilon, noise_for_target
from fedsim.privacy.sketch import make_sketch, round_seed
from fedsim.results.records import read_metrics
from fedsim.seeding import stream_seed

BASE = {"rounds": 4, "clients_per_round": 10, "data": {"num_clients": 40},
        "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"lr": 0.1}}
D = 64 * 16 + 16 + 16 * 10 + 10  # 1210, the MLP's width on 8x8 digits


def _scenario(**sections) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in sections.items():
        if isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def _run(tmp_path, name, **sections):
    return fedsim.run(_scenario(**sections), run_dir=tmp_path / name)


def test_central_dp_reports_opacus_epsilon_every_round(tmp_path):
    res = _run(tmp_path, "dp", privacy={"mode": "central", "clip": 0.5,
                                        "noise_multiplier": 1.1, "delta": 1e-4})
    rows = read_metrics(res.run_dir)
    q = 10 / 40
    assert [r["epsilon"] for r in rows] == pytest.approx(
        [epsilon("rdp", 1.1, q, t, 1e-4) for t in range(1, 5)], rel=1e-12)
    privacy = res.summary["privacy"]
    assert privacy["sample_rate"] == q and privacy["noise_multiplier"] == 1.1
    assert privacy["epsilon"] == pytest.approx(rows[-1]["epsilon"])


def test_target_epsilon_picks_the_noise(tmp_path):
    res = _run(tmp_path, "target", privacy={"mode": "central", "target_epsilon": 4.0,
                                            "delta": 1e-4})
    z = res.summary["privacy"]["noise_multiplier"]
    assert z == pytest.approx(noise_for_target(4.0, 0.25, 4, 1e-4))
    assert 3.9 <= res.summary["privacy"]["epsilon"] <= 4.0


def test_budget_stops_the_run_cleanly(tmp_path):
    from fedsim.divergence import FedsimWarning

    with pytest.warns(FedsimWarning, match=r"stopped before round \d+: round \d+ would spend"):
        res = _run(tmp_path, "budget", rounds=20,
                   privacy={"mode": "central", "noise_multiplier": 1.0, "delta": 1e-4,
                            "max_epsilon": 3.0})
    rows = read_metrics(res.run_dir)
    n = len(rows)
    assert 1 <= n < 20 and res.summary["rounds_completed"] == n
    assert rows[-1]["epsilon"] <= 3.0 < epsilon("rdp", 1.0, 0.25, n + 1, 1e-4)
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and "privacy budget" in summary["stopped"]
    assert (res.run_dir / "model.pt").exists()


def test_local_dp_counts_the_most_exposed_client(tmp_path):
    res = _run(tmp_path, "local", privacy={"mode": "local", "noise_multiplier": 2.0,
                                           "delta": 1e-4})
    rows = read_metrics(res.run_dir)
    # a client takes part at most once per round; rows show 1, 2, ... releases at z/2, q=1
    got = rows[-1]["epsilon"]
    options = [epsilon("rdp", 1.0, 1.0, k, 1e-4) for k in range(1, 5)]
    assert any(got == pytest.approx(e, rel=1e-12) for e in options)
    assert [r["epsilon"] for r in rows] == sorted(r["epsilon"] for r in rows)


def test_central_clip_bounds_each_rounds_step(tmp_path):
    start = fedsim.run(_scenario(rounds=1, algorithm={"lr": 1e-30}),
                       run_dir=tmp_path / "start").final_params
    clipped = _run(tmp_path, "clip", privacy={"mode": "central", "clip": 0.01,
                                              "noise_multiplier": 0.0})
    plain = _run(tmp_path, "plain")
    # each round moves by the mean of rows clipped to C = 0.01: at most C, 4 rounds
    assert (clipped.final_params - start).norm() <= 4 * 0.01 * (1 + 1e-4)
    assert (plain.final_params - start).norm() > 0.1  # plain FedAvg moves far more


def test_sketched_round_is_the_desketched_aggregate(tmp_path):
    plain = fedsim.run(_scenario(rounds=1), run_dir=tmp_path / "plain")
    start = fedsim.run(_scenario(rounds=1, algorithm={"lr": 1e-30}),
                       run_dir=tmp_path / "start").final_params
    u = plain.final_params - start  # the round's aggregate (server_lr 1)
    b = 100
    sk = fedsim.run(_scenario(rounds=1, algorithm={"lr": 0.1, "compress": {
        "name": "sketch", "kind": "srht", "b": b}}), run_dir=tmp_path / "sk")
    op = make_sketch("srht", D, b, round_seed(stream_seed(0, "compress"), 1))
    expected = op.desketch(op.sketch(u.double()[None]))[0]
    torch.testing.assert_close((sk.final_params - start).double(), expected, rtol=1e-4,
                               atol=1e-6)
    rows = read_metrics(sk.run_dir)
    assert rows[0]["bytes_up"] == 10 * 4 * b and rows[0]["bytes_down"] == 10 * 4 * b


def test_central_dp_on_a_sketch_sends_the_sketch(tmp_path):
    res = _run(tmp_path, "skdp", privacy={"mode": "central"},
               algorithm={"lr": 0.1, "compress": {"name": "sketch", "b": 64}})
    rows = read_metrics(res.run_dir)
    assert rows[0]["bytes_up"] == rows[0]["bytes_down"] == 10 * 4 * 64


@pytest.mark.parametrize("threat", ["known", "secret"])
def test_the_sketch_threat_model_is_stated_and_changes_no_epsilon(tmp_path, threat):
    sketched = _run(tmp_path, threat, privacy={"mode": "central", "sketch_threat": threat},
                    algorithm={"lr": 0.1, "compress": {"name": "sketch", "b": 64}})
    plain = _run(tmp_path, "plain", privacy={"mode": "central"})
    p = sketched.summary["privacy"]
    assert p["sketch_threat"] == threat and p["epsilon_valid_if_attacker_knows_sketch"]
    assert p["epsilon"] == plain.summary["privacy"]["epsilon"]  # no amplification taken
    assert ("amplification_by_secret_sketch" in p) == (threat == "secret")
    assert "sketch_threat" not in plain.summary["privacy"]  # nothing sketched, nothing to say
    if threat == "secret":
        assert p["amplification_by_secret_sketch"].startswith("none claimed")


@pytest.mark.parametrize(("compress", "up", "down"), [
    ({"name": "topk", "k": 50}, 8 * 50, 4 * D),
    ({"name": "fetchsgd", "rows": 5, "cols": 40, "k": 30}, 4 * 200, 8 * 30),
    ({"name": "sketch", "kind": "countsketch", "ratio": 0.05, "rows": 3},
     4 * 3 * (-(-D * 5 // 100) // 3), 4 * 3 * (-(-D * 5 // 100) // 3)),
])
def test_compressed_runs_count_their_bytes(tmp_path, compress, up, down):
    res = _run(tmp_path, compress["name"], algorithm={"lr": 0.1, "compress": compress})
    rows = read_metrics(res.run_dir)
    assert [r["bytes_up"] for r in rows] == [10 * up] * 4
    assert [r["bytes_down"] for r in rows] == [10 * down] * 4
    assert res.summary["final_accuracy"] is not None


@pytest.mark.parametrize(("sections", "message"), [
    ({"privacy": {"mode": "central", "delta": 1.0}}, r"^privacy\.delta: must be in \(0, 1\)"),
    ({"privacy": {"mode": "central", "clip": 0.0}}, r"^privacy\.clip: "),
    ({"privacy": {"mode": "local", "noise_multiplier": -1.0}}, r"^privacy\.noise_multiplier: "),
    ({"privacy": {"mode": "sometimes"}}, r"^privacy\.mode: unknown value 'sometimes'"),
    ({"privacy": {"mode": "central", "accountant": "gdp"}}, r"^privacy\.accountant: "),
    ({"privacy": {"mode": "central", "sketch_threat": "maybe"}},
     r"^privacy\.sketch_threat: unknown value 'maybe'; allowed: known, secret"),
    ({"privacy": {"mode": "central", "target_epsilon": 1e-9}}, r"^privacy\.target_epsilon: "),
    ({"privacy": {"mode": "central"}, "algorithm": {"aggregator": {"name": "gm"}}},
     r"^algorithm\.aggregator\.name: must be 'mean' with privacy\.mode = 'central'"),
    ({"algorithm": {"compress": {"name": "sketch", "b": 0}}}, r"^algorithm\.compress\.b: "),
    ({"algorithm": {"compress": {"name": "sketch", "b": 10**6}}},
     r"^algorithm\.compress\.b: must be 1 <= b <= d \(d = 1210\)"),
    ({"algorithm": {"compress": {"name": "sketch", "b": 10, "ratio": 0.1}}},
     r"^algorithm\.compress\.b: give b .* not both or neither"),
    ({"algorithm": {"compress": {"name": "zip"}}}, r"^algorithm\.compress\.name: unknown"),
    ({"algorithm": {"compress": {"name": "topk", "k": 5, "rho": 1}}},
     r"^algorithm\.compress\.rho: unknown parameter for 'topk'"),
    ({"algorithm": {"compress": {"name": "sketch", "b": 10},
                    "aggregator": {"name": "coordinate_median"}}},
     r"^algorithm\.aggregator\.name: must be 'mean' with compress 'sketch'"),
    ({"algorithm": {"compress": {"name": "fetchsgd", "cols": 10, "k": 5},
                    "server_opt": {"name": "fedadam"}}}, r"^algorithm\.server_opt\.name: "),
    ({"algorithm": {"name": "dsgd"}, "clients_per_round": 40, "privacy": {"mode": "central"},
      "network": {"topology": "ring", "topology_params": {"n": 40}}},
     r"^privacy\.mode: not available for the decentral"),
])
def test_bad_settings_are_one_line_errors(tmp_path, sections, message):
    with pytest.raises(ScenarioError, match=message) as err:
        fedsim.run(_scenario(**sections), run_dir=tmp_path / "bad")
    assert "\n" not in str(err.value)
