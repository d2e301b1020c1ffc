"""fedsim: a fast simulator for federated and decentralized learning.

The Python API, in one call (README, "Python API")::

    import fedsim

    data = fedsim.FederatedData.from_arrays(x, y, x_test, y_test, num_clients=20)
    result = fedsim.run({"rounds": 30, "clients_per_round": 10}, model=MyNet, data=data)
    result.summary["final_accuracy"]; result.load_into(MyNet(...))

``run`` takes a scenario (a ``Scenario``, a dict of the TOML's tables, or a TOML file or
shipped scenario's name), your own model (an ``nn.Module`` or a function
``(input_shape, num_classes) -> nn.Module``) and your own data, and returns the
``RunResult``. ``FederatedData``, ``Scenario`` and ``RunResult`` are the types involved.

Heavy modules (torch, flwr) are imported lazily by the pieces that need them, so
``import fedsim`` and ``fedsim --help`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.config import Scenario
    from fedsim.data.base import FederatedData
    from fedsim.runners import RunResult

__all__ = ["FederatedData", "RunResult", "Scenario", "run"]

# public names imported on first use: name -> module
_LAZY = {"FederatedData": "fedsim.data.base", "RunResult": "fedsim.runners",
         "Scenario": "fedsim.config"}


def run(
    scenario: Scenario | Mapping[str, Any] | str | Path | None = None,
    *,
    model: Any = None,
    data: FederatedData | None = None,
    loss: Callable | None = None,
    metrics: Mapping[str, Callable] | None = None,
    callback: Callable[[dict], Any] | None = None,
    overrides: Iterable[str] = (),
    variant: str | None = None,
    run_dir: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    plots: bool = False,
) -> RunResult:
    """Run one scenario, optionally with your own model and data; return its ``RunResult``.

    Args:
        scenario: a ``fedsim.Scenario``; a dict shaped like the TOML file
            (``{"rounds": 30, "algorithm": {"lr": 0.1}}``, missing fields take their
            defaults); a TOML file's path; or a shipped scenario's name
            (``"quickstart"``). None: every default.
        model: your model instead of the scenario's ``[model]``: an ``nn.Module``
            (copied; its own initialization is the starting point) or a function
            ``(input_shape: tuple[int, ...], num_classes: int) -> nn.Module`` (called with
            torch's RNG seeded from the run's ``model`` stream, so reruns are identical).
            It must map ``[batch, *input_shape]`` to ``[batch, num_classes]`` logits.
        data: your data (``FederatedData.from_arrays``) instead of the scenario's
            ``[data]``; ``data.num_clients`` is set from it.
        loss: your training loss instead of ``algorithm.loss``: ``fn(logits [B, C],
            labels [B]) -> [B]`` per-sample losses from torch operations (e.g.
            ``lambda z, y: F.cross_entropy(z, y, reduction="none", label_smoothing=0.1)``);
            the clients minimise its mean, and ``train_loss``/``test_loss`` report it.
        metrics: your metrics, ``{name: fn(logits, labels) -> float}``: on every evaluated
            round, ``fn`` gets the global model's logits ``[M, num_classes]`` on the test set
            (eval mode, no grad) and the labels ``[M]``; each is a column ``name`` of
            ``metrics.csv`` (after fedsim's own, empty on rounds not evaluated) and a key of
            ``metrics.jsonl``, and ``summary["final_metrics"][name]`` is its last value.
            Names are identifiers other than fedsim's own columns.
        callback: ``fn(row)`` after every round, once its rows are on disk: ``row`` is the
            round's ``metrics.jsonl`` record (``round``, ``sim_time_s``, ``bytes_up``, ...,
            ``test_accuracy``, ``rejected``; then your metrics; for decentralized runs also
            ``consensus_distance`` and the node accuracies). For TensorBoard:
            ``callback=fedsim.results.tensorboard.tensorboard_callback("tb/")``. An
            exception in it stops the run (the rounds done are kept, status "failed").
        overrides: ``"dotted.key=value"`` strings, as ``fedsim run --set``.
        variant: for a scenario with ``[variants]``, the one to run (required there).
        run_dir: where the run's files go; default ``<output_dir>/<name>[/<variant>]``.
        overwrite: replace an earlier run in ``run_dir`` (else refused with an error).
        resume: continue the unfinished run in ``run_dir`` from its ``checkpoint.pt``
            (written every ``checkpoint_every`` rounds) with the same scenario, model, data
            and metrics; the files end as if it had never stopped.
        progress: show a progress line.
        plots: also draw the run's figures (png) into ``run_dir``.

    Returns:
        The ``RunResult``: ``run_dir``, ``summary`` (as ``summary.json``: e.g.
        ``final_accuracy``), ``final_params`` and ``final_buffers``; ``load_into(module)``
        copies them into a model of the same architecture.

    Raises:
        ScenarioError: a field is wrong (one line naming the dotted key, e.g.
            ``model.factory`` or ``clients_per_round``).
        FedsimError: any other error a user can cause (data, output folder).
    """
    import dataclasses

    from fedsim.config import Scenario
    from fedsim.errors import ScenarioError
    from fedsim.results.output import check_resumable, prepare_study
    from fedsim.runners import check_metrics, run_scenario
    from fedsim.scenario import (
        apply_overrides,
        expand_variants,
        from_dict,
        load_scenario,
        to_dict,
        validate_scenario,
    )

    check_metrics(metrics)  # before anything is loaded or written
    base_dir = Path.cwd()
    if scenario is None or isinstance(scenario, Scenario | Mapping):
        raw = to_dict(scenario) if isinstance(scenario, Scenario) else dict(scenario or {})
        sc = from_dict(apply_overrides(raw, overrides))
    elif isinstance(scenario, str | Path):
        from fedsim.shipped import scenario_path

        path = scenario_path(scenario)
        sc = load_scenario(path, overrides, validate=False)
        base_dir = path.parent
    else:
        raise ScenarioError("", f"scenario must be a Scenario, a dict or a TOML path, got "
                                f"{type(scenario).__name__}")
    name = ""
    if sc.variants or variant is not None:
        runs = dict(expand_variants(sc))
        if variant not in runs:
            allowed = ", ".join(n for n in runs if n) or "(the scenario has no variants)"
            what = f"unknown variant {variant!r}" if variant else "the scenario has variants"
            raise ScenarioError("variant", f"{what}; allowed: {allowed}")
        name, sc = variant, runs[variant]
    if data is not None:
        sc = dataclasses.replace(sc, data=dataclasses.replace(sc.data,
                                                              num_clients=data.num_clients))
    if model is not None and sc.model.factory:  # the given model wins
        sc = dataclasses.replace(sc, model=dataclasses.replace(sc.model, factory=""))
    validate_scenario(sc, base_dir, load_data=data is None)
    if data is not None:  # the run's scenario.toml (and figure titles) name the given data
        sc = dataclasses.replace(sc, data=dataclasses.replace(
            sc.data, dataset=data.name, partition=data.partition or "given"))
    study_dir = Path(sc.output_dir) / sc.name
    target = Path(run_dir) if run_dir is not None else study_dir / name if name else study_dir
    if resume:
        check_resumable(target)
    else:
        prepare_study(target.parent if run_dir is not None else study_dir, [target],
                      overwrite, compare=False)
    result = run_scenario(sc, target, base_dir=base_dir, progress=progress,
                          label=f"{sc.name}/{name}" if name else sc.name, data=data,
                          model=model, metrics=metrics, callback=callback, resume=resume,
                          loss=loss)
    if plots:
        from fedsim.results.plots import plot_run

        plot_run(target)
    return result


def _version() -> str:
    """The installed distribution's version (wheel or editable install); in a source tree
    that was never installed, the version in the checkout's ``pyproject.toml``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsim")
    except PackageNotFoundError:
        pass
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return "0+unknown"
    if project.get("name") != "fedsim":
        return "0+unknown"
    return str(project.get("version", "0+unknown"))


def __getattr__(name: str):
    """``fedsim.__version__`` (from the package metadata), ``FederatedData``, ``Scenario``
    and ``RunResult``, each looked up on first use."""
    if name == "__version__":
        value = _version()
        globals()["__version__"] = value
        return value
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
