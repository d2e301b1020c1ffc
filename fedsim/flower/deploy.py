"""``fedsim deploy SCENARIO``: write the scenario as a Flower app and, with ``local``, run it
on a SuperLink and SuperNodes started on 127.0.0.1 (``docs/deploy.md``)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fedsim.errors import FedsimError, ScenarioError


@dataclass(frozen=True)
class DeployResult:
    """What ``deploy`` produced.

    Attributes:
        app_dir: the Flower app folder.
        run_dir: the run directory (written by the ServerApp when run locally).
        summary: ``summary.json`` of a local run, else None.
        leftovers: processes that had to be stopped after the local run (0 normally).
        pids: every process the local run started (SuperLink, SuperNodes, their children
            seen, ``flwr run``): all stopped when ``deploy`` returns.
    """

    app_dir: Path
    run_dir: Path
    summary: dict | None = None
    leftovers: int = 0
    pids: frozenset[int] = frozenset()


def node_configs(num_nodes: int, num_clients: int) -> list[str]:
    """``--node-config`` of each of ``num_nodes`` SuperNodes: partitions dealt round-robin
    (node ``i`` holds clients ``i, i + N, i + 2N, ...``)."""
    if num_nodes < 1 or num_nodes > num_clients:
        raise FedsimError(f"--local: need 1 to {num_clients} SuperNodes (the scenario has "
                          f"{num_clients} clients), got {num_nodes}")
    out = []
    for i in range(num_nodes):
        ids = list(range(i, num_clients, num_nodes))
        out.append(f"partition-id={ids[0]}" if len(ids) == 1 else
                   f'partition-ids="{" ".join(map(str, ids))}"')
    return out


def deploy(scenario: str | Path, overrides: Sequence[str] = (), *, variant: str | None = None,
           out: str | Path | None = None, app_dir: str | Path | None = None,
           local: int | None = None, tls: bool = False,
           tls_files: tuple[str, str, str] | None = None, auth: bool = False,
           round_timeout_s: float = 60.0, run_timeout_s: float = 1800.0,
           overwrite: bool = False, fmt: str = "png", verbose: bool = False,
           log: TextIO = sys.stderr, kill_node_after_round: int | None = None) -> DeployResult:
    """Write the Flower app of one scenario variant; with ``local``, run it here.

    Args:
        scenario: the scenario file.
        overrides: ``key=value`` strings, as ``fedsim run --set``.
        variant: the variant to deploy (required when the file has several).
        out: the output folder (replaces the scenario's ``output_dir``).
        app_dir: where the app goes (default ``<output_dir>/<name>/flower_app``).
        local: start a SuperLink and this many SuperNodes on 127.0.0.1 and run the app.
        tls: serve the SuperLink over TLS (certificates made for the run unless
            ``tls_files`` = ``(ca, cert, key)`` PEM paths are given).
        tls_files: the user's CA certificate, server certificate and key.
        auth: SuperNode authentication (each node's key registered; others refused);
            flwr 1.42 allows it over TLS only, so it turns ``tls`` on.
        round_timeout_s: how long the server waits for a round's replies.
        run_timeout_s: the whole ``flwr run`` is stopped after this long.
        overwrite: replace an earlier run in the run directory.
        fmt: format of the plots.
        verbose: forward every line of the Flower log, not only fedsim's.
        log: where progress goes.
        kill_node_after_round: (fault drills) kill the last SuperNode once this round's
            row is written.

    Returns:
        The app folder, run directory and (local runs) the summary.
    """
    from fedsim.flower.app_files import RunConfig, write_app
    from fedsim.results.output import prepare_study
    from fedsim.results.plots import check_format
    from fedsim.scenario import DECENTRALIZED_ALGORITHMS, expand_variants, load_scenario

    check_format(fmt)
    if round_timeout_s <= 0 or run_timeout_s <= 0:
        raise FedsimError("--round-timeout and --run-timeout must be > 0 seconds")
    path = Path(scenario)
    sc = load_scenario(path, overrides)
    if out is not None:
        sc = dataclasses.replace(sc, output_dir=str(out))
    variants = dict(expand_variants(sc))
    if variant is None and len(variants) > 1:
        raise ScenarioError("variants", f"the file has {len(variants)} variants; pick one "
                                        f"with --variant ({', '.join(variants)})")
    if variant is not None and variant not in variants:
        raise ScenarioError("variants", f"no variant {variant!r}; allowed: "
                                        f"{', '.join(n for n in variants if n) or 'none'}")
    name = variant if variant is not None else next(iter(variants))
    one = variants[name]
    if one.algorithm.name in DECENTRALIZED_ALGORITHMS:
        raise ScenarioError("algorithm.name", f"{one.algorithm.name!r} has no server; "
                                              "fedsim deploy runs federated algorithms")
    study = Path(sc.output_dir).resolve() / sc.name
    run_dir = study / (f"{name}_flower" if name else "flower")
    app = Path(app_dir).resolve() if app_dir else study / "flower_app"
    nodes = None if local is None else node_configs(local, one.data.num_clients)
    config = RunConfig(run_dir=str(run_dir), base_dir=str(path.parent.resolve()),
                       round_timeout_s=round_timeout_s, min_nodes=local or 1,
                       wait_nodes_s=120.0, fmt=fmt)
    if nodes is not None:
        prepare_study(study, [run_dir], overwrite, compare=False)
    write_app(app, one, config)
    print(f"fedsim deploy: wrote the Flower app {app}", file=log, flush=True)
    if nodes is None:
        print(f"fedsim deploy: run it with `flwr run {app} <superlink-connection>` (SuperNodes "
              f"need --node-config partition-id=K; see docs/deploy.md)", file=log, flush=True)
        return DeployResult(app, run_dir)
    return _run_local(app, run_dir, nodes, tls, tls_files, auth, run_timeout_s, verbose, log,
                      kill_node_after_round)


def _run_local(app: Path, run_dir: Path, nodes: list[str], tls: bool,
               tls_files: tuple[str, str, str] | None, auth: bool, run_timeout_s: float,
               verbose: bool, log: TextIO, kill_after: int | None) -> DeployResult:
    """Start the federation, run the app, stop every process, read the summary."""
    import json

    from fedsim.bench.processes import temp_root
    from fedsim.flower.local import LocalFederation
    from fedsim.flower.tls import given_certificates, make_certificates

    work = Path(tempfile.mkdtemp(prefix="fedsim-flower-", dir=temp_root()))

    def say(line: str) -> None:
        print(line, file=log, flush=True)

    files = None
    if auth and not tls and tls_files is None:
        say("fedsim deploy: --auth needs TLS in flwr 1.42; serving TLS with certificates made "
            "for the run")
        tls = True
    if tls_files is not None:
        files = given_certificates(*tls_files)
    elif tls:
        files = make_certificates(work / "tls")
    fed = LocalFederation(work, tls=files, auth=auth, log=say)
    ok = False
    try:
        fed.start_superlink()
        procs = [fed.start_node(cfg) for cfg in nodes]
        say(f"fedsim deploy: {len(procs)} SuperNodes (pids "
            f"{', '.join(str(p.pid) for p in procs)})")
        killed: list[bool] = [False]

        def on_line(line: str) -> None:
            text = line.split("fedsim ", 1)
            if len(text) == 2 and text[1].startswith(("round", "deploy", "strategy")):
                say("fedsim " + text[1])
                if (kill_after is not None and not killed[0]
                        and text[1].startswith(f"round {kill_after}/")):
                    killed[0] = True
                    say(f"fedsim deploy: killing {procs[-1].name} (pid {procs[-1].pid})")
                    fed.stop_node(procs[-1])
            elif verbose:
                say(line)

        rc = fed.run_app(app, run_timeout_s, on_line)
        summary_path = run_dir / "summary.json"
        if not summary_path.is_file():
            raise FedsimError(f"fedsim deploy: the run wrote no summary (flwr run exit {rc}); "
                              f"Flower's logs are in {run_dir.parent / 'flower_logs'}")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        ok = True
    finally:
        leftovers = fed.stop()
        if not ok:
            _keep_logs(work, run_dir.parent / "flower_logs")
        shutil.rmtree(work, ignore_errors=True)
    say(f"fedsim deploy: results in {run_dir}")
    return DeployResult(app, run_dir, summary, leftovers, frozenset(fed.seen_pids))


def _keep_logs(work: Path, dest: Path) -> None:
    """Copy the federation's logs out of its work folder (a failed run)."""
    try:
        shutil.copytree(work / "logs", dest, dirs_exist_ok=True)
    except OSError:
        pass


def describe(result: DeployResult) -> dict[str, Any]:
    """A short JSON-able account of a deployment."""
    out: dict[str, Any] = {"app_dir": str(result.app_dir), "run_dir": str(result.run_dir)}
    if result.summary is not None:
        out["deploy"] = result.summary.get("deploy")
        out["final_test_accuracy"] = result.summary.get("final_test_accuracy")
    return out
