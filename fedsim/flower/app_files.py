"""The Flower app folder ``fedsim deploy`` writes, and how its components read it back.

Layout (``flwr run APP_DIR`` packages it as a FAB; no network is needed)::

    APP_DIR/
      pyproject.toml            [project], [tool.flwr.app] components and run config
      fedsim_app/__init__.py
      fedsim_app/server_app.py  app = fedsim.flower.server_app.make_server_app(here)
      fedsim_app/client_app.py  app = fedsim.flower.client_app.make_client_app(here)
      fedsim_app/scenario.toml  the resolved scenario (one variant, overrides applied)

Both components load ``scenario.toml`` from the installed app, so the server and every
SuperNode run the same scenario. fedsim itself (and torch) must be installed where they
run: the app declares ``fedsim`` as its dependency, and runtime installation stays off.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import Scenario
from fedsim.errors import FedsimError

PACKAGE = "fedsim_app"
SCENARIO_FILE = "scenario.toml"


@dataclass(frozen=True)
class RunConfig:
    """The run config of a deployment (``[tool.flwr.app.config]``; ``flwr run -c`` can
    override any of them).

    Attributes:
        run_dir: where the ServerApp writes the run directory (absolute; on the machine
            that runs the ServerApp, i.e. next to the SuperLink).
        base_dir: the scenario file's folder (relative data, trace, model paths).
        round_timeout_s: how long the server waits for a round's replies; a node that
            has not replied by then counts as failed for the round.
        min_nodes: SuperNodes to wait for before the first round.
        wait_nodes_s: how long to wait for them.
        fmt: format of the plots (png, pdf, svg).
    """

    run_dir: str
    base_dir: str
    round_timeout_s: float = 60.0
    min_nodes: int = 1
    wait_nodes_s: float = 120.0
    fmt: str = "png"

    def as_toml_table(self) -> dict[str, Any]:
        """The ``[tool.flwr.app.config]`` table."""
        return {"run-dir": self.run_dir, "base-dir": self.base_dir,
                "round-timeout-s": float(self.round_timeout_s), "min-nodes": int(self.min_nodes),
                "wait-nodes-s": float(self.wait_nodes_s), "format": self.fmt}

    @classmethod
    def from_flower(cls, cfg: Any) -> RunConfig:
        """From a Flower ``context.run_config`` (keys as in ``as_toml_table``)."""
        return cls(run_dir=str(cfg["run-dir"]), base_dir=str(cfg["base-dir"]),
                   round_timeout_s=float(cfg["round-timeout-s"]),
                   min_nodes=int(cfg["min-nodes"]), wait_nodes_s=float(cfg["wait-nodes-s"]),
                   fmt=str(cfg["format"]))


def write_app(app_dir: Path, sc: Scenario, config: RunConfig) -> Path:
    """Write a runnable Flower app for the scenario ``sc`` (one variant) into ``app_dir``.

    Args:
        app_dir: the app folder (created; files of an earlier app there are replaced).
        sc: the scenario, overrides and variant applied.
        config: the run config.

    Returns:
        ``app_dir``.
    """
    from fedsim.results.toml_writer import to_toml
    from fedsim.scenario import to_dict

    app_dir = Path(app_dir)
    pkg = app_dir / PACKAGE
    pkg.mkdir(parents=True, exist_ok=True)
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": "fedsim-app", "version": "1.0.0",
                    "description": f"fedsim scenario {sc.name!r} as a Flower app",
                    "license": "Apache-2.0", "dependencies": ["fedsim"]},
        "tool": {"hatch": {"build": {"targets": {"wheel": {"packages": ["."]}}}},
                 "flwr": {"app": {"publisher": "fedsim",
                                  "components": {"serverapp": f"{PACKAGE}.server_app:app",
                                                 "clientapp": f"{PACKAGE}.client_app:app"},
                                  "config": config.as_toml_table()}}},
    }
    (app_dir / "pyproject.toml").write_text(
        "# Written by `fedsim deploy`: the scenario in fedsim_app/scenario.toml as a Flower app.\n"
        + to_toml(pyproject), encoding="utf-8")
    (pkg / "__init__.py").write_text('"""fedsim scenario as a Flower app."""\n',
                                     encoding="utf-8")
    for name, module, factory in (("server_app", "server_app", "make_server_app"),
                                  ("client_app", "client_app", "make_client_app")):
        (pkg / f"{name}.py").write_text(
            f'"""The {name.replace("_", " ").title()} of fedsim scenario {sc.name!r}."""\n\n'
            "from pathlib import Path\n\n"
            f"from fedsim.flower.{module} import {factory}\n\n"
            f"app = {factory}(Path(__file__).parent)\n", encoding="utf-8")
    (pkg / SCENARIO_FILE).write_text(to_toml(to_dict(sc)), encoding="utf-8")
    return app_dir


def read_scenario(pkg_dir: Path) -> Scenario:
    """The scenario an installed app carries (``fedsim_app/scenario.toml``), validated
    against its fields (files are checked where they are read)."""
    from fedsim.scenario import from_dict

    path = Path(pkg_dir) / SCENARIO_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise FedsimError(f"the Flower app has no readable {path}: {err}") from None
    return from_dict(raw)
