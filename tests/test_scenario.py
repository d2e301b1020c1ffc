"""Scenario files: loading, overrides, variants, and one clear error per mistake."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedsim.config import Scenario
from fedsim.errors import ScenarioError
from fedsim.scenario import (
    apply_overrides,
    expand_variants,
    from_dict,
    load_scenario,
    parse_value,
    to_dict,
    validate_scenario,
)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "scenarios" / "quickstart.toml"


def write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, *overrides: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario(write(tmp_path, text), overrides)
    return info.value


def test_every_shipped_scenario_loads():
    files = sorted((ROOT / "scenarios").glob("*.toml"))
    assert files
    for path in files:
        assert isinstance(load_scenario(path), Scenario)


def test_quickstart_fields_and_variants():
    sc = load_scenario(QUICKSTART)
    assert sc.data.dataset == "digits" and sc.data.partition == "dirichlet"
    variants = dict(expand_variants(sc))
    assert set(variants) == {"wait_for_all", "deadline", "first_k"}
    assert variants["deadline"].network.policy == "deadline"
    assert variants["deadline"].network.deadline_s == 6.0
    # a variant changes only what it names
    assert variants["deadline"].network.compute == sc.network.compute
    assert variants["deadline"].variants == {}


def test_defaults_fill_missing_sections(tmp_path):
    sc = load_scenario(write(tmp_path, 'name = "x"\n'))
    assert sc == Scenario(name="x")


def test_set_overrides_any_field(tmp_path):
    path = write(tmp_path, 'name = "x"\n[network]\npolicy = "all"\n')
    sc = load_scenario(path, ["network.policy=deadline", "network.compute.sigma=0.5",
                              "model.hidden=[8, 4]", "algorithm.weighted=false", "rounds=3"])
    assert sc.network.policy == "deadline"
    assert sc.network.compute.sigma == 0.5
    assert sc.model.hidden == (8, 4)
    assert sc.algorithm.weighted is False
    assert sc.rounds == 3


def test_parse_value_reads_toml_or_bare_words():
    assert parse_value("0.5") == 0.5
    assert parse_value("3") == 3
    assert parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value('"a b"') == "a b"
    assert parse_value("deadline") == "deadline"


def test_int_is_accepted_for_float_but_not_the_reverse(tmp_path):
    assert load_scenario(write(tmp_path, "[network]\nbandwidth_bps = 1000000\n")) \
        .network.bandwidth_bps == 1e6
    err = error_of(tmp_path, "rounds = 2.5\n")
    assert err.key == "rounds" and "integer" in err.message


@pytest.mark.parametrize(
    ("text", "overrides", "key", "words"),
    [
        ("colour = 1\n", (), "colour", "unknown key"),
        ("[network]\nbandwith_bps = 1e6\n", (), "network.bandwith_bps", "allowed here"),
        ('rounds = "ten"\n', (), "rounds", "integer"),
        ("[network]\nbandwidth_bps = -5.0\n", (), "network.bandwidth_bps", ">= 1 (bit/s)"),
        ('[network]\ntopology = "moebius"\n', (), "network.topology", "ring"),
        ('[network.compute]\nmodel = "trace"\ntrace = "nope.csv"\n', (),
         "network.compute.trace", "not found"),
        ('[network.availability]\nmodel = "trace"\ntrace = "gone.csv"\n', (),
         "network.availability.trace", "not found"),
        ("clients_per_round = 51\n[data]\nnum_clients = 50\n", (), "clients_per_round",
         "larger than the population"),
        ('[data]\ndataset = "imagenet"\n', (), "data.dataset", "digits"),
        ('[data]\ndataset = "mnist"\n', (), "data.path", "required"),
        ('[data]\ndataset = "mnist"\npath = "no/such/dir"\n', (), "data.path", "not found"),
        ('[network]\npolicy = "whenever"\n', (), "network.policy", "deadline"),
        ("[network.availability]\ndropout = 1.5\n", (), "network.availability.dropout", "[0, 1]"),
        ('device = "tpu"\n', (), "device", "cuda"),
        ("[model]\nhidden = [8, 0]\n", (), "model.hidden[1]", ">= 1"),
        ('[algorithm]\nname = "fedprox"\n', (), "algorithm.mu", "mu > 0"),
        ("network = 3\n", (), "network", "table"),
        ("", ("network.nope=1",), "network.nope", "unknown key"),
        ("", ("rounds=-1",), "rounds", ">= 1"),
        ('[variants.fast]\nnetwork.policy = "soon"\n', (), "variants.fast.network.policy",
         "allowed"),
    ],
)
def test_mistakes_name_the_key(tmp_path, text, overrides, key, words):
    err = error_of(tmp_path, text, *overrides)
    assert err.key == key
    assert words in str(err)
    assert "\n" not in str(err)


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(write(tmp_path, "rounds = = 3\n"))
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario(tmp_path / "missing.toml")


def test_resolved_scenario_round_trips_through_dicts():
    sc = load_scenario(QUICKSTART)
    assert from_dict(to_dict(sc)) == sc


def test_trace_paths_are_relative_to_the_scenario_file(tmp_path):
    rows = "".join(f"{c},0.1\n" for c in range(50))
    (tmp_path / "speeds.csv").write_text("client,seconds_per_sample\n" + rows)
    text = '[network.compute]\nmodel = "trace"\ntrace = "speeds.csv"\n'
    sc = load_scenario(write(tmp_path, text))
    assert sc.network.compute.trace == "speeds.csv"


def test_validate_reads_the_traces_as_the_run_does(tmp_path):
    """A trace missing clients is refused by validation, not first by the run's clock."""
    (tmp_path / "speeds.csv").write_text("client,seconds_per_sample\n0,0.1\n")
    err = error_of(tmp_path, '[network.compute]\nmodel = "trace"\ntrace = "speeds.csv"\n')
    assert err.key == "network.compute.trace" and "no row for client 1" in err.message


# ---------------------------------------------------------------- bounds (fedsim.limits)

_SMALL = ("variants={}", "data.num_clients=50")


@pytest.mark.parametrize(
    ("override", "ok_value", "bad_value"),
    [
        ("rounds", str(2**63 - 1), str(2**63)),  # TOML integers are 64-bit
        ("seed", "0", str(-(2**63) - 1)),
        ("algorithm.lr", "3.4e38", "3.5e38"),  # finite in float32
        ("algorithm.mu", "3.4e38", "1e39"),
        ("algorithm.server_lr", "1e38", "inf"),
        ("data.synthetic_beta", "3e38", "4e38"),
        ("network.latency_s", "1e15", "1.0001e15"),  # simulated seconds <= 1e15
        ("network.deadline_s", "1e15", "2e15"),
        ("network.compute.seconds_per_sample", "1e15", "1e308"),
        ("algorithm.eval_interval_s", "1e15", "1e16"),
        ("network.compute.sigma", "8.3", "8.32"),  # exp(sigma^2/2) <= 1e15
        ("network.compute.rate", "1e-15", "1e-16"),  # 1/rate <= 1e15 s
        ("algorithm.gossip_rate", "1e-15", "1e-16"),
        ("network.bandwidth_bps", "1", "0.5"),  # >= 1 bit/s
        ("network.server_bandwidth_bps", "0", "0.5"),
        ("network.over_selection", "50", "50.5"),  # at most the population
        ("attack.params", "{}", "{scale=1e39}"),
    ],
)
def test_numbers_are_bounded_by_what_the_arithmetic_carries(override, ok_value, bad_value):
    load_scenario(QUICKSTART, [*_SMALL, f"{override}={ok_value}"])
    with pytest.raises(ScenarioError) as info:
        load_scenario(QUICKSTART, [*_SMALL, "attack.name=sign_flip", "attack.fraction=0.2",
                                   f"{override}={bad_value}"])
    assert info.value.key.startswith(override)


def test_a_split_without_test_samples_is_refused():
    with pytest.raises(ScenarioError) as info:
        load_scenario(QUICKSTART, [*_SMALL, "data.test_fraction=0.001"])
    assert info.value.key == "data.test_fraction" and "no test sample" in info.value.message


# ---------------------------------------------------------------- fuzzing

QUICK_RAW = tomllib.loads(QUICKSTART.read_text())


def _keys(raw: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in raw.items():
        if isinstance(value, dict) and value and key != "topology_params":
            out.extend(_keys(value, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


VALUES = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=12), st.lists(st.integers(-3, 300), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["ring", "torus", "abilene", "trace", "deadline", "first_k", "mnist",
                     "cnn", "natural", "shards", "iid", "synthetic", "cuda", "star"]),
)
KEYS = st.one_of(st.sampled_from(_keys(QUICK_RAW)), st.text(min_size=1, max_size=8),
                 st.sampled_from(["network.topology_params.n", "network.topology_params.p",
                                  "data.shards_per_client", "network.compute.trace"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(KEYS, VALUES), min_size=1, max_size=3))
def test_mutated_scenarios_fail_cleanly(mutations):
    """Whatever a user writes, the loader succeeds or raises one ScenarioError."""
    try:
        raw = apply_overrides(QUICK_RAW, mutations)
        validate_scenario(from_dict(raw), base_dir=ROOT / "scenarios")
    except ScenarioError as err:
        assert str(err) and "\n" not in str(err)


def test_docs_describe_every_field():
    import dataclasses

    from fedsim import config

    doc = (ROOT / "docs" / "scenarios.md").read_text()
    for cls in (config.Scenario, config.DataConfig, config.ModelConfig, config.AlgorithmConfig,
                config.NetworkConfig, config.ComputeConfig, config.AvailabilityConfig,
                config.AttackConfig):
        for f in dataclasses.fields(cls):
            mentioned = any(form in doc for form in (f"`{f.name}`", f"[{f.name}", f".{f.name}]"))
            assert mentioned, f"{cls.__name__}.{f.name} is not in docs/scenarios.md"


# ---------------------------------------------------------------- validate agrees with run

SCENARIOS = ROOT / "scenarios"


def _get(raw: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(raw, dict) or part not in raw:
            return None
        raw = raw[part]
    return raw


# shipped scenarios shrunk for speed: one round, a few clients, no variants or sweep
SHRUNK = {
    "quickstart": ["variants={}", "data.num_clients=6", "clients_per_round=3"],
    "gossip_ring": ["variants={}", "data.num_clients=6", "clients_per_round=3",
                    "network.topology_params={n=6}"],
    "robust_bgmd": ["sweep={}", "data.num_clients=6", "clients_per_round=4",
                    "data.partition=dirichlet"],
}
_FIELD_KEYS = sorted({k for name in SHRUNK for k in _keys(tomllib.loads(
    (SCENARIOS / f"{name}.toml").read_text())) if not k.startswith(("variants", "sweep"))}
    | set(_keys(to_dict(Scenario()))) - {"variants", "sweep"})
# values a careless user writes: wrong types, extremes, names of other fields' values
AGREE_VALUES = st.one_of(
    st.integers(-2, 12), st.sampled_from([0, -1, 2**63 - 1 + 1, -(2**63) - 1, 64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-320, 0.5, 1.5, 3.5e38, 1e15, 2e15, 1e308, -0.0]),
    st.booleans(), st.text(max_size=6), st.lists(st.integers(-1, 12), max_size=2),
    st.dictionaries(st.sampled_from(["name", "n", "p", "scale", "z", "f", "rows", "memory"]),
                    st.one_of(st.integers(-1, 8), st.floats(), st.text(max_size=4),
                              st.sampled_from(["gm", "krum", "mean", "bgmd"]), st.lists(
                                  st.integers(0, 2), max_size=1)), max_size=2),
    st.sampled_from(["ring", "torus", "complete", "erdos_renyi", "abilene", "trace",
                     "deadline", "first_k", "all", "synthetic", "digits", "cnn", "logreg",
                     "shards", "natural", "lognormal", "shifted_exponential", "bernoulli",
                     "fedprox", "dsgd", "gossip_sgd", "accelerated_gossip_sgd", "gm", "bgmd",
                     "krum", "sign_flip", "alie", "ipm", "label_flip", "backdoor",
                     "back_to_back", "cuda", "star"]),
)
AGREE_KEYS = st.one_of(
    st.sampled_from(_FIELD_KEYS),
    st.sampled_from(["network.topology_params.n", "network.topology_params.p",
                     "algorithm.aggregator.name", "algorithm.aggregator.f",
                     "attack.params.scale", "attack.params.z", "attack.fraction"]),
)
# where a mutation goes: the base scenario, a variant, or a cell of a [sweep] axis
TARGETS = st.sampled_from(["base", "base", "variant", "sweep"])
_DEFAULTS = {k: v for k, v in (
    (k, _get(to_dict(Scenario()), k)) for k in _FIELD_KEYS) if v is not None}
# plausible values of the field's own type, so that many mutants pass validation
_OF_TYPE = {bool: st.booleans(), int: st.integers(0, 9), str: AGREE_VALUES,
            float: st.one_of(st.floats(0.0, 3.0), st.sampled_from([1e-6, 0.99, 40.0]))}


@st.composite
def mutations(draw):
    """(target, key, value): half the time a value of the field's own type."""
    target, key = draw(TARGETS), draw(AGREE_KEYS)
    kind = type(_DEFAULTS.get(key))
    if kind in _OF_TYPE and draw(st.booleans()):
        return target, key, draw(_OF_TYPE[kind])
    return target, key, draw(AGREE_VALUES)


def _place(target: str, key: str, value) -> tuple[str, object]:
    if target == "variant" and key != "rounds":
        return f"variants.v.{key}", value
    if target == "sweep":
        return "sweep", {"seeds": [0], "axes": {"a": {"x": {key: value}, "y": {}}}}
    return key, value


@settings(max_examples=int(os.environ.get("FEDSIM_AGREE_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(SHRUNK)),
       st.lists(mutations(), min_size=1, max_size=2))
# disagreements found before (validate said ok, the run failed), always tried
@example("quickstart", [("base", "data.test_fraction", 0.001953125)])
@example("quickstart", [("variant", "algorithm.lr", 3.5e38)])
@example("quickstart", [("sweep", "algorithm.aggregator", {"name": []})])
@example("quickstart", [("base", "network.policy", "first_k"),
                        ("base", "network.over_selection", 1e308)])
@example("gossip_ring", [("base", "network.compute.seconds_per_sample", 1e308)])
@example("gossip_ring", [("base", "algorithm.name", "gossip_sgd"),
                         ("base", "network.compute.sigma", 40.0)])
@example("robust_bgmd", [("base", "attack.name", "backdoor"), ("base", "attack.fraction", 0.3)])
@example("quickstart", [("base", "device", "cuda")])
@example("gossip_ring", [("base", "algorithm.name", "gossip_sgd"),
                         ("base", "network.compute.seconds_per_sample", 0.0)])
def test_what_validate_accepts_runs(tmp_path, name, mutations):
    """If ``fedsim validate`` says ok, every variant (or sweep cell) builds and plays its
    first round without any exception: validate rejects all that run would reject."""
    from fedsim.errors import FedsimError
    from fedsim.runners import run_scenario
    from fedsim.sweep import plan

    path = SCENARIOS / f"{name}.toml"
    overrides = [*SHRUNK[name], *(_place(*m) for m in mutations)]
    try:  # what `fedsim validate` does
        sc = load_scenario(path, overrides)
        runs = ([c.scenario for c in plan(sc, path.parent)] if sc.sweep
                else [v for _, v in expand_variants(sc)])
    except FedsimError as err:
        assert str(err) and "\n" not in str(err)
        return
    for i, sc in enumerate(runs[:2]):
        sc = dataclasses.replace(sc, rounds=1)
        try:
            run_scenario(sc, tmp_path / f"run{len(list(tmp_path.iterdir()))}_{i}",
                         base_dir=path.parent, progress=False)
        except Exception as err:  # noqa: BLE001 - any failure is a disagreement
            pytest.fail(f"validate accepted {mutations} but the run failed: "
                        f"{type(err).__name__}: {err}")
