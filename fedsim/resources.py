"""Size a scenario before building it: memory and event counts, and a refusal when it won't fit.

Nothing here builds data, models or graphs (and torch is imported only to ask a GPU how
much memory it has free). :func:`estimate` works the sizes out arithmetically from the
scenario's fields; :func:`check_resources` compares them with what the machine has and
raises one ``ScenarioError`` naming the field that drives the largest part.

The estimate is of the order of the real peak, not exact (docs/architecture.md,
"Resources"): measured, it is within about 1.5x of the peak resident memory, on the high
side for large federated populations.

Parts (host memory, bytes):

* ``data``: ``samples x (2 x 4 x features + 32)`` (the float32 features held twice while
  the dataset is split, labels and ids) plus 500 per client (index arrays); the
  synthetic generator's per-user temporaries (``classes x dim`` and ``n_k x classes``
  float64) are added as ``generator``;
* ``model``: 6 copies of the ``d`` float32 parameters (the module, the population's
  start, the global model, the update, one training chunk's parameters and gradients)
  plus the activations of one evaluation batch (the widest layer twice, for up to 4096
  test samples);
* ``cohort``: the cohort's stacked updates ``[m, d]`` three times (updates, uplink rows,
  attacked rows) and its shuffled sample orders; with ``bgmd`` client memory, ``[n, d]``;
* ``optimizer state`` (``algorithm.local_opt`` other than plain SGD): the cohort's state
  vectors ``[m, d]`` (one for SGD momentum, two for Adam); with ``state = "keep"`` also
  one copy per client that can train, ``min(num_clients, rounds x m)``;
* decentralized ``nodes``: the node models ``[n, d]`` four times (x, x~, the trained rows,
  the mixed rows); ``mixing``: D-SGD's Metropolis matrix, dense ``n x n`` (float64 and a
  float32 copy) up to ``DENSE_MAX_NODES`` nodes, sparse beyond (20 bytes an entry: one per
  node and per edge direction); ``events``: 600 bytes per event of the asynchronous
  schedule and plan and 16 bytes per sample index of the local steps' minibatches;
* ``runtime``: 400 MiB for the interpreter, numpy and torch;
* ``graph``: networkx's dicts, about 400 bytes per node and 600 per edge.

Device memory (``device = "cuda"``): the training set, ``model`` and ``cohort`` (or
``nodes``) as above.

Limits: host memory available is ``MemAvailable`` (``/proc/meminfo``; else free physical
pages), lowered to a cgroup's ``memory.max`` and an address-space rlimit when they are
set; ``FEDSIM_MEMORY_LIMIT_BYTES`` replaces it (``FEDSIM_DEVICE_MEMORY_LIMIT_BYTES`` the
GPU's free memory). Asynchronous runs are also refused past ``MAX_STEPS`` local steps
(the clock's own guard) and ``MAX_EXCHANGES`` exchanges.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from fedsim.config import Scenario
from fedsim.errors import ScenarioError
from fedsim.network.mixing import DENSE_MAX_NODES

MEMORY_ENV = "FEDSIM_MEMORY_LIMIT_BYTES"
DEVICE_MEMORY_ENV = "FEDSIM_DEVICE_MEMORY_LIMIT_BYTES"
MAX_STEPS = 50_000_000  # AsyncGossipClock.events' max_events
MAX_EXCHANGES = 50_000_000

# dataset -> (samples in all, features per sample, input shape); synthetic is computed
DATASET_SHAPES = {"digits": (1797, (1, 8, 8)), "mnist": (70_000, (1, 28, 28)),
                  "cifar10": (60_000, (3, 32, 32))}
NUM_CLASSES = 10
# fedsim.models' CNN_CHANNELS and CNN_POOL_MIN_SIZE (that module imports torch; a test
# checks these copies against it)
CNN_CHANNELS = (16, 32)
CNN_POOL_MIN_SIZE = 12
RUNTIME_BYTES = 400 * 2**20  # measured: a tiny run peaks at 380 MB resident
BYTES_PER_CLIENT = 500
BYTES_PER_NODE = 400
BYTES_PER_EDGE = 600
BYTES_PER_EVENT = 600
EVAL_BATCH = 4096
MODEL_COPIES = 6
COHORT_COPIES = 3
# a kept client's optimizer state: the dict entry, its tuple and the tensor objects
BYTES_PER_KEPT_CLIENT = 600
NODE_COPIES = 4


@dataclass(frozen=True)
class Part:
    """One part of the estimate: its bytes, the field that drives it, and how it was sized."""

    name: str
    bytes: int
    key: str
    detail: str = ""


@dataclass(frozen=True)
class Estimate:
    """What a scenario needs: host and device memory by part, and event counts."""

    host: list[Part] = field(default_factory=list)
    device: list[Part] = field(default_factory=list)
    num_params: int = 0
    steps: int | None = None  # asynchronous: expected local steps
    exchanges: int | None = None  # asynchronous: expected exchanges

    @property
    def host_bytes(self) -> int:
        return sum(p.bytes for p in self.host)

    @property
    def device_bytes(self) -> int:
        return sum(p.bytes for p in self.device)


# --------------------------------------------------------------------------- sizes


def input_shape(sc: Scenario) -> tuple[int, ...]:
    """One sample's shape, as the data loaders produce it."""
    if sc.data.dataset == "synthetic":
        return (sc.data.synthetic_dim,)
    return DATASET_SHAPES.get(sc.data.dataset, (0, (1,)))[1]


def num_classes(sc: Scenario) -> int:
    return sc.data.synthetic_classes if sc.data.dataset == "synthetic" else NUM_CLASSES


def num_params(sc: Scenario) -> int:
    """Parameters of the scenario's model, counted from the layer shapes (nothing built).

    Mirrors ``fedsim.models``: logreg ``in*C + C``; mlp one ``Linear`` per hidden width and
    the output layer; cnn two 3x3 convolutions (16 and 32 channels, each max-pooled while
    the map is at least 12 wide) and a linear head. 0 when the model does not apply (a cnn
    on flat features), which validation reports elsewhere.
    """
    shape, classes = input_shape(sc), num_classes(sc)
    flat = math.prod(shape)
    if sc.model.name == "logreg":
        return flat * classes + classes
    if sc.model.name == "mlp":
        total, width = 0, flat
        for h in sc.model.hidden:
            total += width * h + h
            width = h
        return total + width * classes + classes
    if sc.model.name == "cnn" and len(shape) == 3:
        channels, height, width = shape
        total = 0
        for out in CNN_CHANNELS:
            total += channels * out * 9 + out
            channels = out
            if min(height, width) >= CNN_POOL_MIN_SIZE:
                height, width = height // 2, width // 2
        return total + channels * height * width * classes + classes
    return 0


def _model_key(sc: Scenario) -> str:
    """The field behind the model's largest weight matrix (the one furthest above usual)."""
    d = sc.data
    synthetic = d.dataset == "synthetic"
    # each layer's sides: (key or None when the dataset fixes it, value, usual value)
    inp = ("data.synthetic_dim" if synthetic else None, math.prod(input_shape(sc)), 60)
    out = ("data.synthetic_classes" if synthetic else None, num_classes(sc), 10)
    if sc.model.name != "mlp":
        sides = [s for s in (inp, out) if s[0]]
        return _blame(*sides) if sides else "model.name"
    chain = [inp] + [(f"model.hidden[{i}]", h, 64) for i, h in enumerate(sc.model.hidden)]
    chain.append(out)
    layers = list(zip(chain[:-1], chain[1:], strict=True))
    a, b = max(layers, key=lambda ab: ab[0][1] * ab[1][1])
    sides = [s for s in (a, b) if s[0]]
    return _blame(*sides) if sides else "model.name"


def _activation_width(sc: Scenario) -> int:
    """Largest activation of one sample (floats): the widest layer of the model."""
    shape, classes = input_shape(sc), num_classes(sc)
    widths = [math.prod(shape), classes]
    if sc.model.name == "mlp":
        widths += list(sc.model.hidden)
    elif sc.model.name == "cnn" and len(shape) == 3:
        widths.append(CNN_CHANNELS[-1] * shape[1] * shape[2])
    return max(widths)


def _samples(sc: Scenario) -> int:
    d = sc.data
    if d.dataset == "synthetic":
        return d.num_clients * d.synthetic_mean_samples
    return DATASET_SHAPES.get(d.dataset, (0, ()))[0]


def _blame(*candidates: tuple[str, float, float]) -> str:
    """The field whose value is furthest above its usual size: ``(key, value, usual)``."""
    return max(candidates, key=lambda c: c[1] / c[2])[0]


def _graph_size(sc: Scenario) -> tuple[int, int]:
    """(nodes, edges) of the scenario's graph, from the builder's parameters when it has one."""
    net, n = sc.network, sc.data.num_clients
    p = net.topology_params
    try:
        if net.topology == "ring":
            n = int(p["n"])
            return n, n
        if net.topology in ("torus", "grid"):
            rows = int(p.get("rows") or math.isqrt(int(p["n"])))
            cols = int(p.get("cols") or rows)
            return rows * cols, 2 * rows * cols
        if net.topology == "hypercube":
            n = 2 ** int(p["dim"])
            return n, n * int(p["dim"]) // 2
        if net.topology == "complete":
            n = int(p["n"])
            return n, n * (n - 1) // 2
        if net.topology == "erdos_renyi":
            n = int(p["n"])
            return n, int(float(p["p"]) * n * (n - 1) / 2)
        if net.topology == "random_regular":
            n = int(p["n"])
            return n, n * int(p["degree"]) // 2
        if net.topology == "exponential":
            n = int(p["n"])
            return n, n * max(1, (n - 1).bit_length())
        if net.topology == "star" and "n" in p:
            n = int(p["n"])
    except (KeyError, TypeError, ValueError, OverflowError):
        pass  # validation reports bad parameters
    return n, n


def _mean_step_s(sc: Scenario, n: int, base_dir: Path | None) -> float:
    """Mean simulated time of one local step (``batch_size`` samples), over the nodes."""
    import numpy as np

    from fedsim.network.compute import make_compute_model

    model = make_compute_model(sc.network.compute, n, base_dir)
    work = np.full(n, float(sc.algorithm.batch_size))
    return float(np.mean(model.mean_times(np.arange(n), work)))


def estimate(sc: Scenario, base_dir: Path | None = None, params: int | None = None
             ) -> Estimate:
    """Memory (host and device) and event counts the scenario will need.

    Args:
        sc: a scenario whose fields passed the range checks.
        base_dir: the scenario file's folder (a compute trace for the step rate).
        params: the model's parameter count when known (a built ``model.factory`` model);
            None counts fedsim's own model from its layer shapes (0 for a factory, whose
            size is unknown before it is built).

    Returns:
        The :class:`Estimate` (see the module doc for each part).
    """
    from fedsim.scenario import DECENTRALIZED_ALGORITHMS

    d, a = sc.data, sc.algorithm
    n = d.num_clients
    shape, classes = input_shape(sc), num_classes(sc)
    feats = math.prod(shape)
    samples = _samples(sc)
    P = params if params is not None else 0 if sc.model.factory else num_params(sc)
    host: list[Part] = [Part("runtime", RUNTIME_BYTES, "", "python, numpy and torch")]
    device: list[Part] = []

    # ---- data
    data_key = "data.num_clients"
    if d.dataset == "synthetic":
        data_key = _blame(("data.num_clients", n, 50), ("data.synthetic_dim", feats, 60),
                          ("data.synthetic_mean_samples", d.synthetic_mean_samples, 50))
        per_user = 8 * (classes * feats + d.synthetic_mean_samples * (classes + 2 * feats))
        gen_key = _blame(("data.synthetic_classes", classes, 10),
                         ("data.synthetic_dim", feats, 60),
                         ("data.synthetic_mean_samples", d.synthetic_mean_samples, 50))
        host.append(Part("generator", per_user, gen_key,
                         f"{classes} classes x {feats} features per user"))
    host.append(Part("data", samples * (8 * feats + 32) + n * BYTES_PER_CLIENT, data_key,
                     f"{samples:,} samples x {feats:,} features, {n:,} clients"))

    # ---- model
    model_key = "model.factory" if sc.model.factory else _model_key(sc)
    test = (10_000 if d.dataset in ("mnist", "cifar10")
            else max(1, round(samples * d.test_fraction)))
    model_bytes = MODEL_COPIES * 4 * P + 2 * 4 * min(EVAL_BATCH, test) * _activation_width(sc)
    host.append(Part("model", model_bytes, model_key, f"{P:,} parameters"))

    steps = exchanges = None
    nodes, edges = _graph_size(sc)
    if sc.network.topology != "star" or a.name in DECENTRALIZED_ALGORITHMS:
        host.append(Part("graph", nodes * BYTES_PER_NODE + edges * BYTES_PER_EDGE,
                         "network.topology_params", f"{nodes:,} nodes, {edges:,} edges"))
    if a.name in DECENTRALIZED_ALGORITHMS:
        node_part = Part("nodes", NODE_COPIES * 4 * nodes * P,
                         _blame(("data.num_clients", nodes, 50), (model_key, P, 1e5)),
                         f"{nodes:,} node models of {P:,} parameters")
        host.append(node_part)
        device.append(node_part)
        if a.name == "dsgd" and nodes <= DENSE_MAX_NODES:
            host.append(Part("mixing", 12 * nodes * nodes, "data.num_clients",
                             f"dense {nodes:,} x {nodes:,} mixing matrix"))
            if sc.device != "cpu":
                device.append(Part("mixing", 4 * nodes * nodes, "data.num_clients",
                                   f"dense {nodes:,} x {nodes:,} mixing matrix"))
        elif a.name == "dsgd":  # sparse: int64 column and float64 + float32 value per entry
            host.append(Part("mixing", 20 * (nodes + 2 * edges), "network.topology_params",
                             f"sparse mixing matrix, {nodes + 2 * edges:,} entries"))
        else:
            horizon = sc.rounds * a.eval_interval_s
            try:
                step_s = _mean_step_s(sc, nodes, base_dir)
            except (ScenarioError, ValueError, OSError):
                step_s = math.inf  # a bad compute section: validation says so
            steps = _count(nodes * horizon / step_s) if step_s > 0 else None
            exchanges = _count(a.gossip_rate * edges * horizon)
            events = (steps or 0) + exchanges
            ev_key = ("algorithm.gossip_rate" if exchanges >= (steps or 0)
                      else "algorithm.eval_interval_s")
            host.append(Part("events", BYTES_PER_EVENT * events
                             + 16 * (steps or 0) * a.batch_size, ev_key,
                             f"{steps:,} local steps and {exchanges:,} exchanges"
                             if steps is not None else f"{exchanges:,} exchanges"))
    else:
        over = sc.network.over_selection if sc.network.policy == "first_k" else 1.0
        m = min(n, math.ceil(sc.clients_per_round * over))
        per_client = d.synthetic_mean_samples if d.dataset == "synthetic" else samples // n
        cohort = (COHORT_COPIES * 4 * m * P + 16 * m * a.local_epochs * max(per_client, 1))
        cohort_part = Part("cohort", cohort, _blame(("clients_per_round", m, 10),
                                                    (model_key, P, 1e5)),
                           f"{m:,} clients x {P:,} parameters")
        host.append(cohort_part)
        device.append(cohort_part)
        opt_part = _opt_state_part(sc, m, P)
        if opt_part is not None:
            host.append(opt_part)
            device.append(opt_part)
        agg = a.aggregator if isinstance(a.aggregator, dict) else {}
        if agg.get("name") == "bgmd" and agg.get("memory") == "client":
            host.append(Part("aggregator", 4 * n * P, "algorithm.aggregator.memory",
                             f"bgmd client memory, {n:,} x {P:,}"))
    device.append(Part("model", MODEL_COPIES * 4 * P, model_key, f"{P:,} parameters"))
    device.append(Part("data", samples * (4 * feats + 8), data_key,
                       f"{samples:,} samples x {feats:,} features"))
    return Estimate(host=host, device=device, num_params=P, steps=steps, exchanges=exchanges)


def _opt_state_part(sc: Scenario, m: int, P: int) -> Part | None:
    """The local optimizer's state (``algorithm.local_opt``): ``[m, d]`` per state vector
    for the cohort in training, and with ``state = "keep"`` one copy per client that can
    train (``min(num_clients, rounds x m)``) plus ``BYTES_PER_KEPT_CLIENT`` of bookkeeping
    each; None for plain SGD (no state)."""
    from fedsim.local_opt import build_local_opt

    try:
        opt = build_local_opt(sc.algorithm.local_opt)
    except ScenarioError:
        return None  # validation says what is wrong
    if opt.slots == 0:
        return None
    cohort = opt.slots * 4 * m * P
    if not opt.keeps:
        return Part("optimizer state", cohort, "algorithm.local_opt.name",
                    f"{opt.name}: {m:,} clients x {opt.slots} x {P:,}")
    kept = min(sc.data.num_clients, sc.rounds * m)
    return Part("optimizer state",
                cohort + kept * (opt.state_bytes(P) + BYTES_PER_KEPT_CLIENT),
                "algorithm.local_opt.state",
                f"{opt.name}, kept for up to {kept:,} clients x {opt.slots} x {P:,}")


def _count(x: float) -> int:
    return int(min(x, 2.0**62)) if math.isfinite(x) else 2**62


# --------------------------------------------------------------------------- the machine


def available_memory() -> tuple[int, str]:
    """Bytes of host memory a run may use now, and where the figure comes from."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return _env_bytes(env, MEMORY_ENV), MEMORY_ENV
    found: list[tuple[int, str]] = []
    try:
        text = Path("/proc/meminfo").read_text()
        match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
        if match:
            found.append((int(match.group(1)) * 1024, "MemAvailable"))
    except OSError:
        pass
    if not found:
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            found.append((int(pages), "free physical memory"))
        except (ValueError, OSError, AttributeError):
            found.append((2**62, "unknown"))
    try:  # a cgroup v2 limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append((max(0, int(limit) - used), "cgroup memory.max"))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            found.append((max(0, soft - _vm_size()), "address-space limit (ulimit -v)"))
    except (ImportError, OSError, ValueError):
        pass
    return min(found)


def _vm_size() -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(r"^VmSize:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0


def available_device_memory(device: str) -> tuple[int, str] | None:
    """Free bytes on the GPU a ``cuda`` run would use (None on CPU or without a GPU)."""
    if device == "cpu":
        return None
    env = os.environ.get(DEVICE_MEMORY_ENV)
    if env:
        return _env_bytes(env, DEVICE_MEMORY_ENV), DEVICE_MEMORY_ENV
    if device == "auto" and "torch" not in sys.modules and not _nvidia_driver():
        return None  # no GPU here: "auto" runs on CPU (and validate need not import torch)
    import torch

    if not torch.cuda.is_available():
        return None  # "cuda" without a GPU is refused by the runner; "auto" runs on CPU
    free, _ = torch.cuda.mem_get_info(device if device.startswith("cuda:") else None)
    return int(free), "free GPU memory"


def _nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded (Linux); True where that cannot be told."""
    if not Path("/proc").is_dir():
        return True
    return Path("/proc/driver/nvidia").exists()


def _env_bytes(text: str, name: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ScenarioError("", f"{name} must be a number of bytes > 0, got {text!r}")
    return int(value)


# --------------------------------------------------------------------------- the check


def check_resources(sc: Scenario, base_dir: Path | None = None,
                    params: int | None = None) -> Estimate:
    """Refuse a scenario that will not fit: one ScenarioError naming the field.

    Args:
        sc: a scenario that passed the range checks.
        base_dir: the scenario file's folder.
        params: the model's parameter count when known (see ``estimate``).

    Returns:
        The :class:`Estimate` when it fits.

    Raises:
        ScenarioError: too many asynchronous events, or more host (or GPU) memory than
            available; names the field behind the largest part.
    """
    est = estimate(sc, base_dir, params)
    if est.steps is not None and est.steps > MAX_STEPS:
        horizon = sc.rounds * sc.algorithm.eval_interval_s
        key = _blame(("algorithm.eval_interval_s", sc.algorithm.eval_interval_s, 2.5),
                     ("rounds", sc.rounds, 40))
        raise ScenarioError(key, f"about {est.steps:.3g} local steps in {horizon:.3g} simulated "
                            f"s (rounds x algorithm.eval_interval_s), more than {MAX_STEPS:,}; "
                            "shorten the horizon or raise network.compute.seconds_per_sample")
    if est.exchanges is not None and est.exchanges > MAX_EXCHANGES:
        raise ScenarioError("algorithm.gossip_rate", f"about {est.exchanges:.3g} exchanges "
                            f"(gossip_rate x edges x {sc.rounds * sc.algorithm.eval_interval_s:.3g}"
                            f" simulated s), more than {MAX_EXCHANGES:,}; lower it or shorten "
                            "the horizon")
    avail, source = available_memory()
    _refuse_if_over(est.host, avail, source, "memory")
    dev = available_device_memory(sc.device)
    if dev is not None:
        _refuse_if_over(est.device, *dev, "GPU memory")
    return est


def check_cohort_memory(sc: Scenario, m: int, d: int, element_size: int, device: str
                        ) -> None:
    """Refuse a federated run whose round would not fit, before its first round.

    What ``check_resources`` sizes from a scenario file's fields, measured here on the
    built run (``fedsim.run`` and the benches pass here too): the stacked ``[m, d]``
    update matrices against the memory still free where they live. One matrix (the
    updates, a buffer kept across rounds) plus one per stage that makes new rows: a
    compressor or DP clipping on the uplink, an update attack, an aggregator other than
    the mean (its working copy).

    Raises:
        ScenarioError: naming ``clients_per_round``.
    """
    from fedsim.stages.attacks import UPDATE_ATTACKS

    a = sc.algorithm
    copies = (1 + (a.compress.get("name", "none") != "none" or sc.privacy.mode != "none")
              + (sc.attack.name != "none" and sc.attack.name in UPDATE_ATTACKS)
              + (a.aggregator.get("name", "mean") != "mean"))
    need = copies * m * d * element_size
    part = Part("cohort", need, "clients_per_round",
                f"{copies} x {m:,} clients x {d:,} parameters x {element_size} bytes")
    dev = available_device_memory(device)
    if dev is not None:
        _refuse_if_over([part], *dev, "GPU memory")
    else:
        _refuse_if_over([part], *available_memory(), "memory")


def _refuse_if_over(parts: list[Part], avail: int, source: str, what: str) -> None:
    total = sum(p.bytes for p in parts)
    if total <= avail:
        return
    top = max(parts, key=lambda p: p.bytes)
    raise ScenarioError(top.key, f"the run needs about {fmt_bytes(total)} of {what} "
                        f"({top.name}: {top.detail}, {fmt_bytes(top.bytes)}), more than the "
                        f"{fmt_bytes(avail)} available ({source}); make it smaller")


def fmt_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"  # pragma: no cover


def summary_lines(est: Estimate) -> list[str]:
    """What ``fedsim validate`` prints: memory by part, and event counts when asynchronous."""
    parts = ", ".join(f"{p.name} {fmt_bytes(p.bytes)}" for p in est.host if p.bytes >= 1024**2)
    lines = [f"  memory: about {fmt_bytes(est.host_bytes)} ({parts or 'all parts under 1 MiB'});"
             f" model {est.num_params:,} parameters"]
    if est.steps is not None or est.exchanges is not None:
        steps = "?" if est.steps is None else f"{est.steps:,}"
        lines.append(f"  events: about {steps} local steps and {est.exchanges:,} exchanges")
    return lines


def report_lines(variants: list[tuple[str, Scenario]], base_dir: Path | None = None) -> list[str]:
    """``fedsim validate``'s lines for each run: ``[(variant name or "", scenario)]``."""
    lines = []
    for name, sc in variants:
        body = summary_lines(estimate(sc, base_dir))
        if name:
            body = [f"  {name}: " + body[0][len("  "):]] + ["  " + line for line in body[1:]]
        lines += body
    return lines
