"""fedsim.flower in one process: the strategy and the ClientApp's train step exchanging real
Flower messages (serialized as on the wire), the reply checks, the app folder, certificates,
keys and the ``fedsim deploy`` command line. No process is started here
(tests/test_flower_processes.py runs the real SuperLink and SuperNodes)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, Message, RecordDict  # noqa: E402
from flwr.app.error import Error  # noqa: E402
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedsim.flower import client_app  # noqa: E402
from fedsim.flower.app_files import RunConfig, read_scenario, write_app  # noqa: E402
from fedsim.flower.deploy import node_configs  # noqa: E402
from fedsim.flower.strategy import FedsimStrategy  # noqa: E402
from fedsim.runners import FederatedRun, run_scenario  # noqa: E402
from fedsim.scenario import from_dict  # noqa: E402

SCENARIO = {
    "name": "flower_unit", "seed": 3, "rounds": 3, "clients_per_round": 4, "device": "cpu",
    "data": {"dataset": "digits", "num_clients": 4, "partition": "dirichlet", "alpha": 0.5},
    "model": {"name": "mlp", "hidden": [16]},
    "algorithm": {"name": "fedavg", "lr": 0.1, "local_epochs": 2, "batch_size": 16},
    "network": {"policy": "all",
                "compute": {"model": "lognormal", "seconds_per_sample": 0.01, "sigma": 1.0}},
}
NODE0 = 100  # node ids of the fake federation: NODE0 + partition


@pytest.fixture(autouse=True)
def task_identity():
    """Messages need a run id outside Flower's processes; restored afterwards."""
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def scenario(**algorithm):
    raw = {**SCENARIO, "algorithm": {**SCENARIO["algorithm"], **algorithm}}
    return from_dict(raw)


class FakeGrid:
    """The nodes ``NODE0 + k`` holding partition ``k`` each."""

    def __init__(self, n: int):
        self.nodes = [NODE0 + k for k in range(n)]

    def get_node_ids(self):
        return list(self.nodes)


def wire(content: RecordDict) -> RecordDict:
    """``content`` after Flower's serialization, as a node receives it."""
    return recorddict_from_proto(recorddict_to_proto(content))


def node_reply(app_pkg: Path, msg: Message) -> Message:
    """What the ClientApp of node ``msg.dst_node_id`` answers (through the wire format)."""
    held = [msg.metadata.dst_node_id - NODE0]
    received = Message(content=wire(msg.content), dst_node_id=msg.metadata.dst_node_id,
                       message_type="train")
    setup = client_app._setup(app_pkg, str(app_pkg), held)
    content = client_app.train_partitions(setup, received, held)
    return Message(content=wire(content), reply_to=msg)


def deploy_in_process(sc, tmp_path: Path, tamper=None) -> tuple[FederatedRun, FedsimStrategy]:
    """Every round of ``sc`` through the strategy and the ClientApp's train step."""
    app = write_app(tmp_path / "app", sc, RunConfig(str(tmp_path / "run"), str(tmp_path)))
    run = FederatedRun(sc, tmp_path)
    n = sc.data.num_clients
    strategy = FedsimStrategy(run, {k: NODE0 + k for k in range(n)}, None, log=lambda _: None)
    grid = FakeGrid(n)
    for rnd in range(1, sc.rounds + 1):
        msgs = strategy.configure_train(rnd, None, None, grid)
        replies = [node_reply(app / "fedsim_app", m) for m in msgs]
        if tamper is not None:
            replies = tamper(rnd, msgs, replies, run)
        strategy.aggregate_train(rnd, replies)
    return run, strategy


@pytest.mark.parametrize("aggregator", ["mean", "gm"])
def test_strategy_and_client_app_equal_the_simulator(tmp_path, aggregator):
    sc = scenario(aggregator={"name": aggregator})
    run, strategy = deploy_in_process(sc, tmp_path)
    sim = run_scenario(sc, tmp_path / "sim", base_dir=tmp_path, progress=False)
    diff = float((run.params.cpu() - sim.final_params).abs().max())
    assert diff <= 1e-6, diff
    assert strategy.failed_total == strategy.malformed_total == 0


def test_sketch_and_central_dp_run_through_the_same_stages(tmp_path):
    sc = from_dict({**SCENARIO, "algorithm": {**SCENARIO["algorithm"],
                                              "compress": {"name": "sketch", "ratio": 0.5}},
                    "privacy": {"mode": "central", "clip": 1.0, "noise_multiplier": 0.5}})
    run, _ = deploy_in_process(sc, tmp_path)
    sim = run_scenario(sc, tmp_path / "sim", base_dir=tmp_path, progress=False)
    assert float((run.params.cpu() - sim.final_params).abs().max()) <= 1e-6


def _with(msg: Message, reply: Message, **arrays) -> Message:
    """``reply`` to ``msg`` with some of its arrays replaced."""
    out = dict(reply.content["arrays"].items())
    out.update({k: Array(v) for k, v in arrays.items()})
    return Message(content=RecordDict({"arrays": ArrayRecord(out),
                                       "metrics": reply.content["metrics"]}), reply_to=msg)


@pytest.mark.filterwarnings("ignore:.*were non-finite")
def test_bad_replies_are_rejected_and_counted_never_aggregated(tmp_path):
    sc = scenario()

    def tamper(rnd, msgs, replies, run):
        if rnd != 2:
            return replies
        msg = {m.metadata.dst_node_id: m for m in msgs}
        rep = {r.metadata.src_node_id: r for r in replies}
        nan = rep[NODE0].content["arrays"]["updates"].numpy().copy()
        nan[0, 0] = np.nan
        d = nan.shape[1]
        return [
            _with(msg[NODE0], rep[NODE0], updates=nan),  # NaN: reject_nonfinite
            _with(msg[NODE0 + 1], rep[NODE0 + 1], updates=np.zeros((1, d + 1), np.float32)),
            _with(msg[NODE0 + 2], rep[NODE0 + 2], **{"num-examples": np.array([10**6])}),
            Message(Error(code=0, reason="node crashed"), reply_to=msg[NODE0 + 3]),
        ]

    run, strategy = deploy_in_process(sc, tmp_path, tamper)
    assert strategy.malformed_total == 2  # wrong length, implausible num-examples
    assert strategy.failed_total == 1  # the error reply
    assert run.rejected_rows == 1  # the NaN row
    assert bool(torch.isfinite(run.params).all())


def test_a_round_with_only_bad_replies_leaves_the_model_unchanged(tmp_path):
    sc = scenario()
    before: dict[str, torch.Tensor] = {}

    def tamper(rnd, msgs, replies, run):
        if rnd != 3:
            return replies
        before["params"] = run.params.clone()
        return [_with(m, r, **{"num-examples": np.array([-1])})
                for m, r in zip(msgs, replies, strict=True)]

    run, strategy = deploy_in_process(sc, tmp_path, tamper)
    assert strategy.malformed_total == 4
    assert torch.equal(run.params, before["params"])


def test_node_configs_deal_partitions_round_robin():
    assert node_configs(2, 2) == ["partition-id=0", "partition-id=1"]
    assert node_configs(2, 5) == ['partition-ids="0 2 4"', 'partition-ids="1 3"']
    assert client_app.node_partitions({"partition-ids": "1 3"}) == [1, 3]
    assert client_app.node_partitions({"partition-id": 4}) == [4]
    from fedsim.errors import FedsimError

    with pytest.raises(FedsimError):
        node_configs(3, 2)
    with pytest.raises(FedsimError):
        client_app.node_partitions({})


def test_app_folder_has_components_run_config_and_the_scenario(tmp_path):
    sc = scenario()
    app = write_app(tmp_path / "app", sc, RunConfig("/r", "/b", round_timeout_s=7.0))
    py = tomllib.loads((app / "pyproject.toml").read_text())
    flwr = py["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "fedsim_app.server_app:app",
                                  "clientapp": "fedsim_app.client_app:app"}
    assert flwr["config"]["round-timeout-s"] == 7.0 and flwr["config"]["run-dir"] == "/r"
    assert read_scenario(app / "fedsim_app") == sc
    assert RunConfig.from_flower(flwr["config"]).round_timeout_s == 7.0


def test_certificates_name_127_0_0_1_and_keys_load(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from fedsim.flower.auth import make_node_key
    from fedsim.flower.tls import given_certificates, make_certificates

    files = make_certificates(tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert files.key.stat().st_mode & 0o077 == 0
    assert given_certificates(files.ca, files.cert, files.key) == files
    key = make_node_key(tmp_path / "keys", "n0")
    serialization.load_ssh_private_key(key.private.read_bytes(), None)
    assert key.public.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_deploy_command_writes_the_app_and_reports_mistakes_in_one_line(tmp_path, capsys):
    from fedsim.cli import main
    from fedsim.results.toml_writer import to_toml

    path = tmp_path / "s.toml"
    path.write_text(to_toml(SCENARIO))
    assert main(["deploy", str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "flower_unit" / "flower_app" / "pyproject.toml").is_file()
    assert main(["deploy", str(path), "--auth"]) == 2
    assert main(["deploy", str(path), "--local", "9", "--out", str(tmp_path / "o")]) == 2
    assert main(["deploy", str(path), "--tls-ca", "x", "--local", "1"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("fedsim: error:")]
    assert len(lines) == 3, err
