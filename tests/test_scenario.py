"""Scenario files: loading, overrides, variants, and one clear error per mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
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
