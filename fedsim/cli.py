"""The ``fedsim`` command: run | sweep | validate | list | topology | plot | compare | attack |
deploy | bench.

Heavy modules are imported inside the commands, so ``fedsim --help`` answers fast.
Errors a user can cause print one line ``fedsim: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from fedsim.errors import FedsimError

EXIT_USAGE = 2


class UsageError(FedsimError):
    """A command line argparse cannot parse (printed as one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ``fedsim: error: ...`` (subcommands too:
    ``add_subparsers`` makes them of the parent's class)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see {self.prog} --help)")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    if getattr(args, "scenario", None):  # a file, or the name of a shipped scenario
        from fedsim.shipped import scenario_path

        args.scenario = str(scenario_path(args.scenario))
    try:
        return args.func(args) or 0
    except FedsimError as err:
        print(f"fedsim: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fedsim: interrupted; rounds already finished are in the run directory",
              file=sys.stderr)
        return 130


def _version() -> str:
    import fedsim

    return fedsim.__version__


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fedsim",
        description="Simulate federated and decentralized learning on one machine.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run a scenario file (all its variants)")
    run.add_argument("scenario", help="a scenario TOML file, or a shipped scenario's name "
                     "(quickstart; see fedsim list)")
    _add_set(run)
    run.add_argument("--out", metavar="DIR", help="output folder (replaces output_dir)")
    run.add_argument("--variant", action="append", metavar="NAME",
                     help="run only this variant (repeatable)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace earlier runs in the output folder (default: refuse)")
    run.add_argument("--resume", metavar="RUN_DIR",
                     help="continue the run in RUN_DIR from its checkpoint.pt (the scenario "
                          "must set checkpoint_every); same scenario and --set options")
    run.add_argument("--seeds", type=_seed_list, metavar="K,K,...",
                     help="run each variant once per seed, into <variant>/seed<k>/; the "
                          "comparison shows mean ± std over the seeds (e.g. --seeds 0,1,2)")
    run.add_argument("--ray", nargs="?", const="", type=_ray_address, metavar="ADDRESS",
                     help="train each round's cohort on Ray actors: on the cluster at ADDRESS "
                          "(HOST:PORT, ray://HOST:PORT, auto), or without ADDRESS on a Ray "
                          "started here on 127.0.0.1 (see docs/scale-out.md)")
    run.add_argument("--ray-actors", type=_int, metavar="K",
                     help="shard actors for --ray (default: one per GPU, or per CPU)")
    _add_format(run)
    quiet = run.add_mutually_exclusive_group()
    quiet.add_argument("--quiet", action="store_true", help="no progress line")
    quiet.add_argument("--progress", action="store_true",
                       help="progress line even when not on a terminal")
    run.set_defaults(func=_cmd_run)

    sweep = sub.add_parser("sweep", help="run (or resume) the grid in a scenario's [sweep] table")
    sweep.add_argument("scenario")
    _add_set(sweep)
    sweep.add_argument("--out", metavar="DIR", help="output folder (replaces output_dir)")
    sweep.add_argument("--quiet", action="store_true", help="no progress line")
    sweep.add_argument("--overwrite", action="store_true",
                       help="run every cell again, replacing earlier runs (default: resume "
                            "cells of the same settings, refuse others)")
    _add_format(sweep)
    sweep.set_defaults(func=_cmd_sweep)

    val = sub.add_parser("validate", help="check a scenario file without running it")
    val.add_argument("scenario")
    _add_set(val)
    val.set_defaults(func=_cmd_validate)

    lst = sub.add_parser("list", help="list scenarios, topologies, datasets, models, algorithms")
    lst.add_argument("what", nargs="?", default="all",
                     choices=["all", "scenarios", "topologies", "datasets", "models",
                              "algorithms", "aggregators", "attacks", "server_opts",
                              "local_opts", "compressions", "privacy_modes"])
    lst.set_defaults(func=_cmd_list)

    topo = sub.add_parser("topology", help="describe a topology (and save a picture)")
    topo.add_argument("name", help="a builder (ring, torus, ...) or a file in topologies/")
    topo.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                      help="builder parameter, e.g. --param n=16 (repeatable)")
    topo.add_argument("--seed", type=_seed, default=0,
                      help="seed of the random builders, an integer >= 0 (default 0)")
    topo.add_argument("--save", metavar="PNG", help="save a drawing of the graph")
    topo.set_defaults(func=_cmd_topology)

    plot = sub.add_parser("plot", help="(re)draw the plots of run directories")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="a run folder, or a folder of seed<k>/ runs (each is redrawn)")
    _add_format(plot)
    plot.set_defaults(func=_cmd_plot)

    cmp_ = sub.add_parser("compare", help="overlay runs in one plot and print a table")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="a run folder, or a folder of seed<k>/ runs (drawn as mean ± std)")
    cmp_.add_argument("--x", default="sim_time_s", choices=["sim_time_s", "round", "cum_bytes"],
                      help="x axis (default: simulated time)")
    cmp_.add_argument("--out", metavar="FILE",
                      help="the picture (default compare.<format>); its extension must "
                           "match --format when both are given")
    _add_format(cmp_, default=None)
    cmp_.set_defaults(func=_cmd_compare)

    attack = sub.add_parser("attack", help="privacy attacks on a scenario's clients "
                            "(see docs/leakage.md)")
    attack_sub = attack.add_subparsers(metavar="ATTACK")
    attack.set_defaults(func=lambda _args: attack.print_help() or EXIT_USAGE)
    leak = attack_sub.add_parser(
        "leakage", help="gradient leakage (DLG, iDLG, Inverting Gradients) vs sketch width "
                        "and noise on a client's images",
        description="Attack the first --images samples of client --client (one image per "
                    "attack) through a sketched and noised update; the victim is the "
                    "untrained DLG network sized to the dataset (--model dlg), as in DLG, "
                    "not the scenario's model. Writes leakage.csv, leakage_grid.png and "
                    "leakage.md; prints the table.")
    leak.add_argument("scenario", help="a scenario TOML file or a shipped scenario's name; "
                      "its data section gives the images (digits, mnist, cifar10)")
    _add_set(leak)
    leak.add_argument("--out", metavar="DIR",
                      help="output folder (default <output_dir>/<name>/leakage)")
    leak.add_argument("--ratios", metavar="R,R,...",
                      help="sketch widths b/d in (0, 1]; 1 is the plain update "
                           "(default 1,0.1,0.02)")
    leak.add_argument("--noise", metavar="S,S,...",
                      help="std of the Gaussian noise on the sent message, >= 0 "
                           "(default 0,0.01,0.1)")
    leak.add_argument("--attacks", metavar="A,A,...",
                      help="among dlg, idlg, ig (default idlg,ig)")
    leak.add_argument("--sketch", metavar="KIND",
                      help="gaussian, srht or countsketch (fedsim.privacy.sketch; "
                           "default gaussian)")
    leak.add_argument("--steps", metavar="K,K,...",
                      help="client local SGD steps, unrolled by the attacker (default 1)")
    leak.add_argument("--images", type=_int, metavar="N",
                      help="how many of the client's first samples to attack (default 4)")
    leak.add_argument("--client", type=_int, metavar="I",
                      help="the attacked client (default 0)")
    leak.add_argument("--iterations", metavar="N|A=N,...",
                      help="attack iterations, for every attack or per attack "
                           "(default dlg 200, idlg 200, ig 300)")
    leak.add_argument("--model", choices=["dlg", "scenario"], default="dlg",
                      help="victim: the untrained DLG network (default) or the scenario's "
                           "model at initialization (must end in a linear layer)")
    leak.add_argument("--overwrite", action="store_true",
                      help="replace an earlier study in the folder (default: refuse)")
    leak.add_argument("--quiet", action="store_true", help="no progress lines")
    leak.set_defaults(func=_cmd_attack_leakage)

    dep = sub.add_parser("deploy", help="write a scenario as a Flower app; --local N runs it "
                         "on a SuperLink and N SuperNodes here (see docs/deploy.md)")
    dep.add_argument("scenario", help="a scenario TOML file, or a shipped scenario's name")
    _add_set(dep)
    dep.add_argument("--variant", metavar="NAME", help="the variant to deploy (required when "
                     "the file has several)")
    dep.add_argument("--out", metavar="DIR", help="output folder (replaces output_dir); the run "
                     "goes to <out>/<name>/flower (or <variant>_flower)")
    dep.add_argument("--app", metavar="DIR", help="where the Flower app is written (default "
                     "<out>/<name>/flower_app)")
    dep.add_argument("--local", type=_int, metavar="N", help="start a SuperLink and N SuperNodes "
                     "on 127.0.0.1 (partitions dealt round-robin), run the app with flwr run, "
                     "write the run directory, stop every process")
    dep.add_argument("--tls", action="store_true", help="serve the SuperLink over TLS with "
                     "certificates made for the run (SAN 127.0.0.1), or --tls-ca/-cert/-key")
    dep.add_argument("--tls-ca", metavar="PEM", help="CA certificate the nodes trust")
    dep.add_argument("--tls-cert", metavar="PEM", help="the SuperLink's certificate")
    dep.add_argument("--tls-key", metavar="PEM", help="the SuperLink's private key")
    dep.add_argument("--auth", action="store_true", help="SuperNode authentication: only "
                     "SuperNodes whose key is registered may connect")
    dep.add_argument("--round-timeout", type=float, default=60.0, metavar="S",
                     help="seconds the server waits for a round's replies (default 60)")
    dep.add_argument("--run-timeout", type=float, default=1800.0, metavar="S",
                     help="seconds before a --local run is stopped (default 1800)")
    dep.add_argument("--overwrite", action="store_true",
                     help="replace an earlier run in the run folder (default: refuse)")
    dep.add_argument("--verbose", action="store_true", help="show Flower's own log lines too")
    _add_format(dep)
    dep.set_defaults(func=_cmd_deploy)

    bench = sub.add_parser("bench", help="side-by-side performance runs (see docs/performance.md)")
    bench_sub = bench.add_subparsers(metavar="BENCH")
    import importlib

    from fedsim.bench import BENCHES

    for name, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        b = bench_sub.add_parser(name, help=module.__doc__.splitlines()[0])
        module.add_arguments(b)
        b.set_defaults(func=_cmd_bench, bench_run=module.run)
    return p


def _seed(text: str) -> int:
    """A seed from the command line: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2``: integers >= 0, each once."""
    from fedsim.sweep import check_seeds

    parts = [part.strip() for part in text.split(",")]
    try:
        seeds = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be distinct integers >= 0 separated by commas, e.g. 0,1,2; got {text!r}"
        ) from None
    try:
        return check_seeds(seeds, "--seeds")
    except FedsimError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def _ray_address(text: str) -> str:
    """``--ray ADDRESS``: ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto`` (a scenario file
    there means ``--ray`` came before the scenario)."""
    import re

    if text in ("", "auto", "local") or re.fullmatch(r"(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+", text):
        return text
    raise argparse.ArgumentTypeError(
        f"must be a Ray address (HOST:PORT, ray://HOST:PORT, auto), got {text!r}; for a Ray "
        "started here give --ray without ADDRESS after the scenario")


def _int(text: str) -> int:
    """An integer from the command line (argparse names the flag in the error)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _add_format(parser: argparse.ArgumentParser, default: str | None = "png") -> None:
    shown = default or "png"
    parser.add_argument("--format", choices=["png", "pdf", "svg"], default=default,
                        help=f"format of the figures (default {shown})")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides",
                        help="override a field, e.g. --set network.policy=deadline (repeatable)")


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While running, SIGTERM stops like Ctrl-C: finished rounds kept, summary written."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_run(args: argparse.Namespace) -> int:
    from fedsim.study import run_file

    progress = False if args.quiet else (True if args.progress else None)
    ray = None
    if args.ray is not None:
        from fedsim.distributed import RayOptions

        ray = RayOptions(address=None if args.ray in ("", "local") else args.ray,
                         actors=args.ray_actors)
    elif args.ray_actors is not None:
        raise UsageError("--ray-actors needs --ray (see fedsim run --help)")
    with _sigterm_as_interrupt():
        run_file(args.scenario, args.overrides, output_dir=args.out, only=args.variant,
                 progress=progress, overwrite=args.overwrite, log=sys.stderr,
                 seeds=args.seeds, fmt=args.format, resume=args.resume, ray=ray)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from fedsim.sweep import run_sweep

    with _sigterm_as_interrupt():
        run_sweep(args.scenario, args.overrides, output_dir=args.out,
                  progress=False if args.quiet else None, overwrite=args.overwrite,
                  log=sys.stderr, fmt=args.format)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from fedsim.scenario import expand_variants, load_scenario

    sc = load_scenario(args.scenario, args.overrides)
    variants = [name for name, _ in expand_variants(sc) if name]
    extra = f", variants: {', '.join(variants)}" if variants else ""
    if sc.sweep:  # the checks fedsim sweep makes, every cell validated
        from fedsim.sweep import plan

        extra += f", sweep: {len(plan(sc, Path(args.scenario).parent))} cells"
    print(f"{args.scenario}: ok ({sc.name}: {sc.data.dataset}, {sc.model.name}, "
          f"{sc.algorithm.name}, {sc.rounds} rounds{extra})")
    from fedsim.resources import report_lines

    print("\n".join(report_lines(expand_variants(sc), Path(args.scenario).parent)))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from fedsim.data import DATASETS
    from fedsim.data.poison import DATA_ATTACKS
    from fedsim.local_opt import LOCAL_OPTS
    from fedsim.models import MODELS
    from fedsim.network.topology import available_topologies
    from fedsim.privacy.federated import MODES
    from fedsim.privacy.registry import COMPRESSIONS
    from fedsim.scenario import ALGORITHMS
    from fedsim.shipped import SCENARIOS_DIR, shipped_scenarios
    from fedsim.stages.attacks import UPDATE_ATTACKS
    from fedsim.stages.registry import AGGREGATORS
    from fedsim.stages.server import SERVER_OPTS

    here = Path("scenarios")  # the working folder's own, when it is not the shipped one
    own = [] if not here.is_dir() or here.resolve() == SCENARIOS_DIR else here.glob("*.toml")
    items = {
        "scenarios": list(shipped_scenarios()) + sorted(str(p) for p in own),
        "topologies": available_topologies(),
        "datasets": list(DATASETS),
        "models": list(MODELS),
        "algorithms": list(ALGORITHMS),
        "aggregators": list(AGGREGATORS),  # algorithm.aggregator.name
        "attacks": [a for a in UPDATE_ATTACKS if a != "none"] + list(DATA_ATTACKS),
        "server_opts": list(SERVER_OPTS),  # algorithm.server_opt.name
        "local_opts": list(LOCAL_OPTS),  # algorithm.local_opt.name
        "compressions": list(COMPRESSIONS),  # algorithm.compress.name
        "privacy_modes": list(MODES),  # privacy.mode
    }
    for what, names in items.items():
        if args.what in ("all", what):
            print(f"{what}: {', '.join(names) if names else '(none here)'}")
    return 0


def _cmd_topology(args: argparse.Namespace) -> int:
    from fedsim.network.topology import resolve_topology
    from fedsim.network.topology_report import describe_topology, draw_topology, format_report
    from fedsim.scenario import parse_override, topology_dirs

    if args.save:
        from fedsim.results.output import check_figure_path

        check_figure_path(Path(args.save))
    params = {}
    for text in args.param:
        key, value = parse_override(text)
        params[key] = value
    graph = resolve_topology(args.name, params, seed=args.seed,
                             search_dirs=topology_dirs(Path.cwd()))
    print(format_report(args.name, describe_topology(graph)))
    if args.save:
        from fedsim.results.output import save_figure

        name = graph.graph.get("name") or Path(args.save).stem
        save_figure(Path(args.save), lambda tmp: draw_topology(graph, tmp, name=name))
        print(f"saved {args.save}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from fedsim.results.plots import expand_runs, plot_run

    for folder in args.run_dirs:
        for run_dir in expand_runs(folder):
            for path in plot_run(run_dir, args.format):
                print(path)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from fedsim.results.output import check_figure_path
    from fedsim.results.plots import compare_table, plot_compare

    out = Path(args.out or f"compare.{args.format or 'png'}")
    if args.format and out.suffix.lower() != f".{args.format}":
        raise UsageError(f"--out {out} does not end in .{args.format} (--format {args.format}); "
                         f"give one of them, or make them agree")
    check_figure_path(out)
    dirs = [Path(d) for d in args.run_dirs]
    table = compare_table(dirs)
    out = plot_compare(dirs, out, x=args.x)
    print(table)
    print(f"saved {out}")
    return 0


def _cmd_attack_leakage(args: argparse.Namespace) -> int:
    from fedsim.privacy.leakage_study import parse_options, run_study

    options = parse_options(ratios=args.ratios, noise=args.noise, attacks=args.attacks,
                            sketch=args.sketch, steps=args.steps, images=args.images,
                            client=args.client, iterations=args.iterations, model=args.model)
    study = run_study(args.scenario, args.overrides, options, out=args.out,
                      overwrite=args.overwrite, log=None if args.quiet else sys.stderr)
    print(study.table)
    print(f"\n{len(study.rows)} attacks in {study.seconds:.0f} s; wrote {study.out_dir}/"
          f"leakage.csv, leakage_grid.png, leakage.md")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from fedsim.flower.deploy import deploy

    tls_files = (args.tls_ca, args.tls_cert, args.tls_key)
    if any(tls_files) and not all(tls_files):
        raise UsageError("--tls-ca, --tls-cert and --tls-key go together")
    if args.local is None and (args.tls or any(tls_files) or args.auth):
        raise UsageError("--tls and --auth set up the local federation: add --local N")
    with _sigterm_as_interrupt():
        deploy(args.scenario, args.overrides, variant=args.variant, out=args.out,
               app_dir=args.app, local=args.local, tls=args.tls or all(tls_files),
               tls_files=tls_files if all(tls_files) else None, auth=args.auth,
               round_timeout_s=args.round_timeout, run_timeout_s=args.run_timeout,
               overwrite=args.overwrite, fmt=args.format, verbose=args.verbose)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from fedsim.bench.common import emit

    emit(args.bench_run(args, sys.stderr))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
