"""The server side of a deployment as a Flower ``ServerApp``.

``main`` loads the scenario the app carries, builds the run's state
(``FederatedRun``: model, test set, clock, algorithm pieces, seeded streams), waits for
``min-nodes`` SuperNodes, asks them which partitions they hold, runs
``FedsimStrategy`` for the scenario's rounds, and writes the run directory the way
``fedsim run`` does (``RunLoop``: scenario.toml, metrics.csv/jsonl, timing.csv,
summary.json, model.pt; then the plots). ``summary.json`` gets a ``deploy`` entry:
nodes, partitions held, failed replies and rows rejected before stacking.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedsim.errors import FedsimError


def run_server(grid: Grid, context: Context, pkg_dir: Path) -> dict:
    """Play the deployment's rounds and write the run directory; returns the summary."""
    from fedsim.flower.app_files import RunConfig, read_scenario
    from fedsim.flower.strategy import FedsimStrategy, query_partitions, wait_for_nodes
    from fedsim.runners import FederatedRun, restore_threads
    from fedsim.runs.loop import RunLoop

    started = time.perf_counter()
    cfg = RunConfig.from_flower(context.run_config)
    sc = read_scenario(pkg_dir)
    with restore_threads():
        run = FederatedRun(sc, Path(cfg.base_dir))
        run.label = sc.name
        nodes = wait_for_nodes(grid, cfg.min_nodes, cfg.wait_nodes_s)
        holders = query_partitions(grid, nodes, max(cfg.round_timeout_s, cfg.wait_nodes_s))
        print(f"fedsim deploy: {len(nodes)} SuperNodes hold {len(holders)} of "
              f"{sc.data.num_clients} partitions", flush=True)
        if not holders:
            raise FedsimError("fedsim deploy: no SuperNode answered with its partitions "
                              f"within {max(cfg.round_timeout_s, cfg.wait_nodes_s):g} s")
        loop = RunLoop(sc, Path(cfg.run_dir), label=sc.name, progress=False,
                       device=run.device, metric_columns=run.own_columns, started=started)
        strategy = FedsimStrategy(run, holders, loop,
                                  log=lambda line: print(line, flush=True))
        completed = False
        try:
            params = run.params.detach().cpu().numpy().astype(np.float32)
            strategy.start(grid, ArrayRecord({"params": Array(params)}), num_rounds=sc.rounds,
                           timeout=cfg.round_timeout_s)
            completed = True
        finally:
            facts = run.summary(rounds_done=len(loop.records))
            facts["deploy"] = {"nodes": len(nodes), "partitions_held": len(holders),
                               "failed_replies": strategy.failed_total,
                               "malformed_rows": strategy.malformed_total}
            summary = loop.finish(facts, model=(run.pop.model, run.params, run.eval_buffers())
                                  if completed else None)
    from fedsim.results.plots import plot_run

    plot_run(Path(cfg.run_dir), cfg.fmt)
    print(f"fedsim deploy: finished, results in {cfg.run_dir}", flush=True)
    return summary


def make_server_app(pkg_dir: Path) -> ServerApp:
    """The ``ServerApp`` of the app whose package folder (holding ``scenario.toml``) is
    ``pkg_dir``."""
    app = ServerApp()
    pkg_dir = Path(pkg_dir)

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context, pkg_dir)

    return app
