"""``fedsim attack leakage SCENARIO``: the gradient-leakage grid on a scenario's own data.

The command-line layer (``fedsim.cli``) only parses flags; everything else is here:

- :func:`parse_options` checks the flags (one ``ScenarioError`` naming the flag, so the
  CLI prints one line and exits 2);
- :func:`client_images` loads the scenario's dataset (digits, MNIST or CIFAR-10, split
  across clients exactly as ``fedsim run`` splits it) and takes the first ``--images``
  samples of client ``--client``'s partition;
- :func:`sketch_factory` builds, per ratio ``b/d``, the operator of
  :mod:`fedsim.privacy.sketch` (``gaussian``, ``srht`` or ``countsketch``) that a client
  compressing its update with ``algorithm.compress`` would apply, as a
  :data:`fedsim.privacy.leakage.Sketch`; ``b/d = 1`` (``b = d``) is the plain update;
- :func:`run_study` runs :func:`fedsim.privacy.leakage_grid.run_leakage_grid` on those
  images and writes ``leakage.csv``, ``leakage_grid.png`` and ``leakage.md`` into
  ``<output_dir>/<name>/leakage/`` (or ``--out``), refusing to replace an earlier
  ``leakage.csv`` unless told to overwrite.

The victim is by default the untrained DLG network (:func:`fedsim.privacy.leakage.victim_cnn`,
sigmoid convolutions, weights ``U(−0.5, 0.5)``) sized to the dataset's images and classes,
as in the DLG setting, not the scenario's model. ``model="scenario"`` attacks the
scenario's own model at its initialization (the global model of round 1, same seed as
``fedsim run``) when it ends in a linear layer. Each image is one client's batch of 1;
the client runs ``K`` local SGD steps with the scenario's ``algorithm.lr``.

References:
    Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019.
    Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020.
    Geiping, Bauermeister, Dröge, Moeller, "Inverting Gradients", NeurIPS 2020.
    Song et al., "Sketching for First Order Method: Efficient Algorithm for
    Low-Bandwidth Channel and Vulnerability", ICML 2023.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from fedsim.errors import ScenarioError

if TYPE_CHECKING:
    from torch import nn

    from fedsim.config import Scenario
    from fedsim.privacy.leakage import Sketch

IMAGE_DATASETS = ("digits", "mnist", "cifar10")
SKETCH_KINDS = ("gaussian", "srht", "countsketch")  # fedsim.privacy.sketch.KINDS (no torch here)
ATTACK_NAMES = ("dlg", "idlg", "ig")  # fedsim.privacy.leakage.ATTACKS
VICTIMS = ("dlg", "scenario")
DEFAULT_RATIOS = (1.0, 0.1, 0.02)
DEFAULT_NOISE = (0.0, 0.01, 0.1)
DEFAULT_ATTACKS = ("idlg", "ig")
DEFAULT_SKETCH = "gaussian"
DEFAULT_STEPS = (1,)
DEFAULT_IMAGES = 4
MAX_DENSE_FLOATS = 1 << 26  # a sketch of at most this many entries is held as a matrix (256 MB)
OUTPUT_FILES = ("leakage.csv", "leakage_grid.png", "leakage.md")


# ----------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class LeakageOptions:
    """The settings of one leakage study (the flags of ``fedsim attack leakage``).

    Attributes:
        ratios: sketch widths ``b/d`` in ``(0, 1]``; 1 is the plain update.
        noise_stds: std of the Gaussian noise on the (sketched) message, each >= 0.
        attacks: names among ``dlg``, ``idlg``, ``ig``.
        sketch: the operator kind of :mod:`fedsim.privacy.sketch`.
        local_steps: client SGD steps ``K``, each >= 1.
        images: how many of the client's first samples are attacked (one at a time).
        client: the attacked client's index.
        iterations: per attack, overriding the grid's defaults.
        model: ``"dlg"`` (the untrained DLG victim) or ``"scenario"`` (the scenario's
            model at initialization).
    """

    ratios: tuple[float, ...] = DEFAULT_RATIOS
    noise_stds: tuple[float, ...] = DEFAULT_NOISE
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    sketch: str = DEFAULT_SKETCH
    local_steps: tuple[int, ...] = DEFAULT_STEPS
    images: int = DEFAULT_IMAGES
    client: int = 0
    iterations: dict[str, int] = field(default_factory=dict)
    model: str = "dlg"


def _items(text: str, flag: str) -> list[str]:
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise ScenarioError(flag, f"expects values separated by commas, got {text!r}")
    if len(set(parts)) != len(parts):
        raise ScenarioError(flag, f"each value once, got {text!r}")
    return parts


def _float(part: str, flag: str) -> float:
    try:
        value = float(part)
    except ValueError:
        raise ScenarioError(flag, f"{part!r} is not a number") from None
    if not math.isfinite(value):
        raise ScenarioError(flag, f"must be finite, got {part}")
    return value


def _int(part: str, flag: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise ScenarioError(flag, f"{part!r} is not an integer") from None


def _parse_each(text: str, flag: str, convert: Callable[[str, str], Any],
                valid: Callable[[Any], bool], message: str) -> tuple:
    """``text``'s comma-separated values, converted; ``message.format(v)`` names a bad one."""
    values = tuple(convert(p, flag) for p in _items(text, flag))
    for v in values:
        if not valid(v):
            raise ScenarioError(flag, message.format(v))
    return values


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"1,0.1,0.02"`` -> sketch widths ``b/d``, each in ``(0, 1]``.

    Raises:
        ScenarioError: naming ``--ratios``.
    """
    return _parse_each(text, "--ratios", _float, lambda v: 0 < v <= 1,
                       "each b/d must be in (0, 1], got {:g}")


def parse_noise(text: str) -> tuple[float, ...]:
    """``"0,0.01,0.1"`` -> noise stds, each finite and >= 0.

    Raises:
        ScenarioError: naming ``--noise``.
    """
    return _parse_each(text, "--noise", _float, lambda v: v >= 0,
                       "each std must be >= 0, got {:g}")


def parse_attacks(text: str) -> tuple[str, ...]:
    """``"idlg,ig"`` -> attack names among ``dlg``, ``idlg``, ``ig``.

    Raises:
        ScenarioError: naming ``--attacks``.
    """
    names = tuple(p.lower() for p in _items(text, "--attacks"))
    for name in names:
        if name not in ATTACK_NAMES:
            raise ScenarioError("--attacks", f"unknown attack {name!r}; allowed: "
                                f"{', '.join(ATTACK_NAMES)}")
    return names


def parse_steps(text: str) -> tuple[int, ...]:
    """``"1,5"`` -> local step counts ``K``, each >= 1.

    Raises:
        ScenarioError: naming ``--steps``.
    """
    return _parse_each(text, "--steps", _int, lambda v: v >= 1, "each K must be >= 1, got {}")


def parse_iterations(text: str, attacks: Sequence[str]) -> dict[str, int]:
    """``"300"`` (every attack) or ``"idlg=100,ig=400"`` -> iterations per attack, each >= 1.

    Raises:
        ScenarioError: naming ``--iterations``.
    """
    flag = "--iterations"
    parts = _items(text, flag)
    if len(parts) == 1 and "=" not in parts[0]:
        value = _int(parts[0], flag)
        if value < 1:
            raise ScenarioError(flag, f"must be >= 1, got {value}")
        return {a: value for a in attacks}
    out: dict[str, int] = {}
    for part in parts:
        name, sep, num = (s.strip() for s in part.partition("="))
        if not sep:
            raise ScenarioError(flag, f"expects N or attack=N,..., got {text!r}")
        if name not in ATTACK_NAMES:
            raise ScenarioError(flag, f"unknown attack {name!r}; allowed: "
                                f"{', '.join(ATTACK_NAMES)}")
        value = _int(num, flag)
        if value < 1:
            raise ScenarioError(flag, f"{name} must be >= 1, got {value}")
        out[name] = value
    return out


def parse_options(
    *,
    ratios: str | None = None,
    noise: str | None = None,
    attacks: str | None = None,
    sketch: str | None = None,
    steps: str | None = None,
    images: int | None = None,
    client: int | None = None,
    iterations: str | None = None,
    model: str | None = None,
) -> LeakageOptions:
    """Check the flags' text and build the options (None: the default).

    Raises:
        ScenarioError: naming the first flag that is wrong (``--ratios``, ``--noise``,
            ``--attacks``, ``--sketch``, ``--steps``, ``--images``, ``--client``,
            ``--iterations``, ``--model``).
    """
    opts = LeakageOptions()
    chosen_attacks = parse_attacks(attacks) if attacks is not None else opts.attacks
    kind = opts.sketch if sketch is None else str(sketch).lower()
    if kind not in SKETCH_KINDS:
        raise ScenarioError("--sketch", f"unknown sketch {sketch!r}; allowed: "
                            f"{', '.join(SKETCH_KINDS)}")
    victim = opts.model if model is None else str(model)
    if victim not in VICTIMS:
        raise ScenarioError("--model", f"unknown victim {model!r}; allowed: {', '.join(VICTIMS)}")
    count = opts.images if images is None else int(images)
    if count < 1:
        raise ScenarioError("--images", f"must be >= 1, got {count}")
    index = opts.client if client is None else int(client)
    if index < 0:
        raise ScenarioError("--client", f"must be >= 0, got {index}")
    return LeakageOptions(
        ratios=parse_ratios(ratios) if ratios is not None else opts.ratios,
        noise_stds=parse_noise(noise) if noise is not None else opts.noise_stds,
        attacks=chosen_attacks,
        sketch=kind,
        local_steps=parse_steps(steps) if steps is not None else opts.local_steps,
        images=count,
        client=index,
        iterations=parse_iterations(iterations, chosen_attacks) if iterations else {},
        model=victim,
    )


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class ClientImages:
    """The attacked client's first samples.

    Attributes:
        x: ``[n, C, H, W]`` float32 in ``[0, 1]``.
        y: ``[n]`` int64 labels.
        indices: ``[n]`` their indices in the scenario's training set.
        num_classes: the dataset's label count.
        dataset: its name.
        client_size: how many samples the client holds.
    """

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    num_classes: int
    dataset: str
    client_size: int


def check_scenario(sc: Scenario, client: int) -> None:
    """What can be checked before loading data: an image dataset, the client in range.

    Raises:
        ScenarioError: ``data.dataset`` is not an image dataset, or ``--client`` is out of
            range.
    """
    if sc.data.dataset not in IMAGE_DATASETS:
        raise ScenarioError("data.dataset", f"the leakage study attacks images "
                            f"({', '.join(IMAGE_DATASETS)}), got {sc.data.dataset!r}")
    if not 0 <= client < sc.data.num_clients:
        raise ScenarioError("--client", f"must be in [0, {sc.data.num_clients - 1}] "
                            f"(data.num_clients = {sc.data.num_clients}), got {client}")


def client_images(
    sc: Scenario, client: int, count: int, base_dir: Path | None = None
) -> ClientImages:
    """The first ``count`` samples of ``client``'s partition, split as ``fedsim run`` does.

    Args:
        sc: the scenario (its ``data`` section and ``seed``).
        client: the client's index.
        count: how many samples.
        base_dir: the scenario's folder (a relative ``data.path`` is resolved there).

    Returns:
        :class:`ClientImages`.

    Raises:
        ScenarioError: not an image dataset, ``--client`` out of range, or ``--images``
            more than the client holds.
        DataError: the dataset's files are missing or malformed (MNIST, CIFAR-10).
    """
    from fedsim.data import load_federated

    check_scenario(sc, client)
    fd = load_federated(sc.data, sc.seed, base_dir)
    idx = np.asarray(fd.client_indices[client])
    if count > idx.size:
        raise ScenarioError("--images", f"client {client} holds {idx.size} samples, "
                            f"asked for {count}")
    idx = idx[:count]
    x = np.asarray(fd.x_train[idx], dtype=np.float32)
    if x.ndim != 4:
        raise ScenarioError("data.dataset", f"expected images [C, H, W], got samples of "
                            f"shape {list(x.shape[1:])}")
    return ClientImages(x=x, y=np.asarray(fd.y_train[idx], dtype=np.int64), indices=idx,
                        num_classes=int(fd.num_classes), dataset=fd.name,
                        client_size=int(len(fd.client_indices[client])))


# --------------------------------------------------------------------------- sketches


def _dense_matrix(op) -> object:
    """The operator's ``[width, d]`` float32 matrix: the Gaussian's own tiles, or ``S`` applied
    to blocks of the identity (column blocks, so memory stays ``O(width · d)``)."""
    import torch

    if op.kind == "gaussian":
        mat = torch.empty(op.b, op.d, dtype=torch.float32)
        for r, c, tile in op.tiles():
            mat[r, c] = tile
        return mat
    mat = torch.empty(op.width, op.d, dtype=torch.float32)
    block = max(1, min(op.d, (1 << 24) // op.d))
    for c0 in range(0, op.d, block):
        c1 = min(op.d, c0 + block)
        eye = torch.zeros(c1 - c0, op.d, dtype=torch.float32)
        eye[:, c0:c1] = torch.eye(c1 - c0)
        mat[:, c0:c1] = op.sketch(eye).T
    return mat


def sketch_factory(kind: str, seed: int) -> Callable[[int, int], Sketch | None]:
    """``(d, b) -> sketch`` for :func:`fedsim.privacy.leakage_grid.run_leakage_grid`.

    For ``b < d`` the map is the ``kind`` operator of :mod:`fedsim.privacy.sketch`
    (``make_sketch(kind, d, b, seed_b)``, count sketch with ``min(5, b)`` rows), seeded
    from ``seed`` and the width; the attacker knows it. The Gaussian and count sketches
    are held as their dense matrix when it has at most ``MAX_DENSE_FLOATS`` entries
    (same map, fewer regenerated draws per attack step), otherwise and for the SRHT they
    run through :func:`fedsim.privacy.leakage.operator_sketch`. ``b = d`` gives None:
    the plain update, no sketch.

    Args:
        kind: ``gaussian``, ``srht`` or ``countsketch``.
        seed: the study's root seed.

    Returns:
        The factory.
    """
    from fedsim.privacy.leakage import matrix_sketch, operator_sketch
    from fedsim.privacy.sketch import DEFAULT_ROWS, make_sketch
    from fedsim.seeding import stream_seed

    def make(d: int, b: int) -> Sketch | None:
        if b >= d:
            return None
        op = make_sketch(kind, d, b, stream_seed(seed, f"leakage/sketch/{kind}/{b}"),
                         rows=min(DEFAULT_ROWS, b))
        if kind != "srht" and op.width * d <= MAX_DENSE_FLOATS:
            return matrix_sketch(_dense_matrix(op))
        return operator_sketch(op)

    return make


# ----------------------------------------------------------------------------- model


def scenario_victim(sc: Scenario, input_shape: Sequence[int], num_classes: int,
                    base_dir: Path | None = None) -> nn.Module:
    """The scenario's model at initialization (the seed ``fedsim run`` uses), in eval mode.

    Raises:
        ScenarioError: (``--model``) its last layer with parameters is not ``nn.Linear``
            (the label inference reads the head's gradient).
    """
    from torch import nn

    from fedsim.models import build_model
    from fedsim.scenario import model_dirs
    from fedsim.seeding import stream_seed

    model = build_model(sc.model, tuple(input_shape), num_classes,
                        seed=stream_seed(sc.seed, "model"), search_dirs=model_dirs(base_dir))
    layers = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    if not layers or not isinstance(layers[-1], nn.Linear):
        last = type(layers[-1]).__name__ if layers else "nothing"
        raise ScenarioError("--model", f"scenario: the model must end in a linear layer "
                            f"(its head), ends in {last}; use --model dlg")
    return model.eval()


# ------------------------------------------------------------------------------ study


@dataclass
class LeakageStudy:
    """What :func:`run_study` made.

    Attributes:
        out_dir: the folder written.
        rows: the grid's rows (as in ``leakage.csv``).
        table: the Markdown summary table (also in ``leakage.md``).
        seconds: wall time of the attacks.
        d: the victim's parameter count.
    """

    out_dir: Path
    rows: list[dict]
    table: str
    seconds: float
    d: int


def leakage_dir(sc: Scenario, out: str | Path | None = None) -> Path:
    """``out`` if given, else ``<output_dir>/<name>/leakage``."""
    return Path(out) if out is not None else Path(sc.output_dir) / sc.name / "leakage"


def prepare_output(out_dir: Path, overwrite: bool) -> None:
    """Create ``out_dir``; refuse (one line) when it holds a ``leakage.csv`` and not ``overwrite``.

    Raises:
        OutputError: not writable, or an earlier study is there.
    """
    from fedsim.results.output import ensure_dir, refusal

    ensure_dir(out_dir)
    if (out_dir / "leakage.csv").exists() and not overwrite:
        raise refusal(out_dir, "a leakage study (leakage.csv)")


class _Progress:
    """One stderr line per finished setting (attack × b/d × K × σ, all images)."""

    def __init__(self, log: TextIO, images: int, settings: int):
        self.log, self.images, self.settings = log, images, settings
        self.done: dict[tuple, list[dict]] = {}
        self.count = 0
        self.t0 = time.perf_counter()

    def __call__(self, row: dict) -> None:
        key = (row["attack"], row["b/d"], row["steps"], row["noise"])
        rows = self.done.setdefault(key, [])
        rows.append(row)
        if len(rows) < self.images:
            return
        self.count += 1
        mean = sum(min(r["psnr_db"], 150.0) for r in rows) / len(rows)
        acc = sum(r["label_acc"] for r in rows) / len(rows)
        width = "plain" if row["sketch"] == "none" else f"{row['sketch']} b={row['b']}"
        print(f"leakage [{self.count}/{self.settings}] {row['attack']} b/d={row['b/d']:g} "
              f"({width}) σ={row['noise']:g} K={row['steps']}: PSNR {mean:.1f} dB, "
              f"labels {acc:.0%} ({time.perf_counter() - self.t0:.0f} s)",
              file=self.log, flush=True)


def _summary_text(sc: Scenario, scenario_path: Path, options: LeakageOptions,
                  data: ClientImages, d: int, lr: float, iterations: dict[str, int],
                  table: str, seconds: float) -> str:
    victim = ("the untrained DLG network (victim_cnn: sigmoid convs, U(-0.5, 0.5) weights), "
              "not the scenario's model" if options.model == "dlg" else
              f"the scenario's model ({sc.model.factory or sc.model.name}) at initialization")
    labels = ", ".join(str(int(v)) for v in data.y)
    its = ", ".join(f"{a} {iterations[a]}" for a in options.attacks)
    attacks = (len(options.attacks) * len(options.ratios) * len(options.noise_stds)
               * len(options.local_steps) * len(data.y))
    return "\n".join([
        f"# Gradient leakage: {sc.name}",
        "",
        f"- scenario: `{scenario_path}` (seed {sc.seed})",
        f"- data: {data.dataset}, client {options.client} of {sc.data.num_clients} "
        f"({data.client_size} samples); attacked its first {len(data.y)} "
        f"(labels {labels}), one image per attack (batch 1)",
        f"- victim: {victim}; d = {d} parameters",
        f"- client: K local SGD steps, lr {lr:g} (algorithm.lr); the server knows the "
        f"model, K, lr and the sketch",
        f"- sketch: {options.sketch} (fedsim.privacy.sketch), b = round(b/d · d); "
        f"b/d = 1 is the plain update; noise N(0, σ²) on the sent message",
        f"- iterations: {its}",
        f"- {attacks} attacks in {seconds:.0f} s",
        "",
        "Mean PSNR over the images / label accuracy:",
        "",
        table,
        "",
        "Files: `leakage.csv` (one row per attack × setting × image), `leakage_grid.png` "
        "(originals on top, reconstructions below).",
        "",
    ])


def run_study(
    scenario_path: str | Path,
    overrides: Sequence[str] = (),
    options: LeakageOptions | None = None,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    log: TextIO | None = None,
) -> LeakageStudy:
    """Load the scenario, attack its client's images over the grid, write the three files.

    Args:
        scenario_path: the scenario TOML file.
        overrides: ``--set key=value`` strings.
        options: the study's settings (default :class:`LeakageOptions`).
        out: the output folder (default ``<output_dir>/<name>/leakage``).
        overwrite: replace an earlier study's files instead of refusing.
        log: where progress lines go (None: silent).

    Returns:
        :class:`LeakageStudy`.

    Raises:
        ScenarioError: a bad scenario, flag or dataset (one line).
        DataError: the dataset's files are missing.
        OutputError: the folder cannot be written, or holds a study and not ``overwrite``.
    """
    import torch

    from fedsim.privacy.leakage_grid import DEFAULT_ITERATIONS, markdown_table, run_leakage_grid
    from fedsim.results.output import remove_files, write_text
    from fedsim.scenario import load_scenario

    options = options or LeakageOptions()
    path = Path(scenario_path)
    sc = load_scenario(path, overrides)
    check_scenario(sc, options.client)
    out_dir = leakage_dir(sc, out)
    prepare_output(out_dir, overwrite)
    data = client_images(sc, options.client, options.images, path.parent)
    _, c, h, w = data.x.shape
    factory = None
    if options.model == "scenario":
        victim = scenario_victim(sc, data.x.shape[1:], data.num_classes, path.parent)

        def factory(_seed: int) -> nn.Module:
            return victim
    elif h != w:
        raise ScenarioError("data.dataset", f"the DLG victim needs square images, got {h}x{w}")
    iterations = {**DEFAULT_ITERATIONS, **options.iterations}
    settings = (len(options.attacks) * len(options.ratios) * len(options.noise_stds)
                * len(options.local_steps))
    progress = _Progress(log, len(data.y), settings) if log is not None else None
    if overwrite:
        remove_files(out_dir, OUTPUT_FILES)
    if log is not None:
        print(f"leakage: {sc.name}: {len(data.y)} {data.dataset} images of client "
              f"{options.client} (labels {' '.join(str(int(v)) for v in data.y)}), "
              f"{settings} settings -> {out_dir}", file=log, flush=True)
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch-1 attacks on a small net: more threads only contend
    try:
        rows = run_leakage_grid(
            data.x, data.y, out_dir=out_dir, model_factory=factory,
            num_classes=data.num_classes, ratios=options.ratios,
            noise_stds=options.noise_stds, attacks=options.attacks,
            local_steps=options.local_steps, lr=sc.algorithm.lr, iterations=iterations,
            seed=sc.seed, progress=progress,
            sketch_factory=sketch_factory(options.sketch, sc.seed), sketch_name=options.sketch,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    table = markdown_table(rows)
    d = int(rows[0]["d"]) if rows else 0
    write_text(out_dir / "leakage.md", _summary_text(
        sc, path, options, data, d, sc.algorithm.lr, iterations, table, seconds))
    return LeakageStudy(out_dir=out_dir, rows=rows, table=table, seconds=seconds, d=d)
