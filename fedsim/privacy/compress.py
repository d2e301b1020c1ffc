"""Communication compression as pipeline pieces: sketch / de-sketch, FetchSGD, top-k with
error feedback.

Slot order (``fedsim.stages.base``): client update -> uplink ``Stage`` (here: sketch, count
sketch, top-k) -> aggregate (a *linear* one: the weighted mean of sketches is the sketch of
the weighted mean) -> ``ServerStage`` (de-sketch, FetchSGD's unsketch) -> server optimizer.

- ``sketch_uplink`` + ``desketch_server``: Song et al.'s sketched first-order method. Each
  round ``t`` every client sends ``S_t u_k`` (``b`` floats), the server de-sketches the mean,
  ``S_t^T mean_k S_t u_k = S_t^T S_t u``, an unbiased but ``~d/b``-times noisier update.
- ``fetchsgd_uplink`` + ``fetchsgd_server``: Rothchild et al.'s FetchSGD. One fixed count
  sketch; momentum and error feedback live on the server, in sketch space; the server
  unsketches the top-k coordinates.
- ``topk_uplink``: the local top-k baseline with per-client error feedback (``8k`` bytes).

The uplink and server pieces of one method must be built with the same ``seed`` (the main
engineer passes one stream seed, e.g. ``fedsim.seeding.stream_seed(root, "sketch")``): that is
how the server knows the clients' operator without it being sent. Parameters are validated
with ``ScenarioError`` naming ``algorithm.compress.<param>``; the checks that need the model's
width ``d`` run in ``init``.

References:
    Song, Z., Wang, Y., Yu, Z., Zhang, L., "Sketching for First Order Method: Efficient
    Algorithm for Low-Bandwidth Channel and Vulnerability" (ICML 2023).
    Rothchild, Panda, Ullah, Ivkin, Stoica, Braverman, Gonzalez, Arora, "FetchSGD:
    Communication-Efficient Federated Learning with Sketching" (ICML 2020), Algorithm 1.
    Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory" (NeurIPS 2018); Karimireddy,
    Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other Gradient Compression
    Schemes" (ICML 2019).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import Tensor

from fedsim.errors import ScenarioError
from fedsim.privacy.sketch import (
    DEFAULT_ROWS,
    FLOAT_BYTES,
    CountSketch,
    Sketch,
    check_dims,
    check_kind,
    make_sketch,
    round_seed,
)
from fedsim.stages.base import Ctx, ServerStage, Stage

KEY = "algorithm.compress"
INDEX_BYTES = 4  # an int32 coordinate index
ERROR_UPDATES = ("subtract", "zero")


def _check_int(name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScenarioError(f"{KEY}.{name}", f"must be an integer >= {low}, got {value!r}")
    return value


def _check_seed(seed: object) -> int:
    return _check_int("seed", seed, low=0)


def _check_width(kind: str, b: int, rows: int) -> int:
    """Floats per sketched row for ``kind`` (the count sketch keeps ``rows * (b // rows)``)."""
    if kind == "countsketch":
        _check_int("rows", rows)
        if rows > b:
            raise ScenarioError(f"{KEY}.rows", f"must be <= b (b = {b}), got {rows}")
        return rows * (b // rows)
    return b


class SketchState(NamedTuple):
    """The model's width, recorded by ``init`` (the operator itself is redrawn each round)."""

    d: int


ROUND_CACHE_SIZE = 2  # round operators kept per process (the uplink's, until the server's)
_round_cache: OrderedDict[tuple[str, int, int, int, int, int], Sketch] = OrderedDict()
_round_lock = threading.Lock()


def _round_operator(kind: str, d: int, b: int, seed: int, step: int, rows: int,
                    release: bool = False) -> Sketch:
    """Round ``step``'s operator, built once and shared by the uplink and server stages.

    A small per-process cache keyed by ``(kind, d, b, seed, step, rows)`` (at most
    ``ROUND_CACHE_SIZE`` operators, least recently used dropped): the uplink stage builds the
    round's operator for its ``m`` rows (or finds it, when a round's clients come in several
    batches) and the server stage reuses it for the mean, then drops it (``release``), so that
    nothing outlives the round. Memory per operator: the Gaussian's ``R`` only when
    ``4 b d <= fedsim.privacy.sketch.DENSE_BYTES`` (else it is regenerated tile by tile); the
    SRHT's signs and rows; the count sketch's ``r d`` indices and CSR. The operator is a pure
    function of the key, so a cached one and a rebuilt one give the same results.
    """
    key = (kind, int(d), int(b), int(seed), int(step), int(rows) if kind == "countsketch" else 0)
    with _round_lock:
        op = _round_cache.pop(key, None)
    if op is None:
        op = make_sketch(kind, d, b, round_seed(seed, step), rows=rows)
    if not release:
        with _round_lock:
            _round_cache[key] = op
            while len(_round_cache) > ROUND_CACHE_SIZE:
                _round_cache.popitem(last=False)
    return op


def sketch_uplink(kind: str, b: int, seed: int, rows: int = DEFAULT_ROWS) -> Stage:
    """Each client's update sketched with round ``ctx.step``'s operator: ``[m, d] -> [m, b]``.

    Pseudo-code: ``S_t = make_sketch(kind, d, b, round_seed(seed, t))`` (the same for every
    client of round t, fresh each round); client k sends ``y_k = S_t u_k``.

    Args:
        kind: ``"gaussian"``, ``"srht"`` or ``"countsketch"``.
        b: floats per sketched row, ``1 <= b <= d`` (checked in ``init``, when ``d`` is known).
        seed: the sketch stream's seed, the same as ``desketch_server``'s.
        rows: count-sketch rows (``countsketch`` only; the width is ``rows * (b // rows)``).

    Returns:
        A ``Stage``; state ``SketchState(d)``; ``nbytes = 4 b`` (``4 rows (b // rows)``).

    Raises:
        ScenarioError: ``algorithm.compress.kind`` / ``.b`` / ``.rows`` / ``.seed`` invalid.

    References: Song, Wang, Yu, Zhang, "Sketching for First Order Method: Efficient Algorithm
    for Low-Bandwidth Channel and Vulnerability" (ICML 2023).
    """
    check_kind(kind)
    _check_int("b", b)
    _check_seed(seed)
    width = _check_width(kind, b, rows)

    def init(num_clients: int, d: int) -> SketchState:
        check_dims(d, b, f"{KEY}.b")
        return SketchState(d)

    def update(updates: Tensor, state: SketchState, ctx: Ctx) -> tuple[Tensor, SketchState]:
        op = _round_operator(kind, updates.shape[1], b, seed, ctx.step, rows)
        return op.sketch(updates), state  # [m, b]

    return Stage(init=init, update=update, nbytes=lambda d: FLOAT_BYTES * width)


def desketch_server(kind: str, b: int, seed: int, rows: int = DEFAULT_ROWS) -> ServerStage:
    """The aggregated sketch de-sketched with the round's operator: ``[b] -> S_t^T y [d]``.

    Pseudo-code: ``u = S_t^T ybar`` where ``ybar`` is the (weighted) mean of the clients'
    sketches, so ``u = S_t^T S_t ubar`` with ``E[u] = ubar``. The broadcast is ``ybar`` itself
    (``b`` floats; each client de-sketches with the shared ``S_t``), so ``nbytes = 4 b``.

    Variance and step size: ``E||S^T S x - x||^2 = (d + 1)/b ||x||^2`` for the Gaussian sketch
    (``(d - 1)/b`` count sketch, ``~ d/b - 1`` SRHT): the de-sketched update has second moment
    ``(1 + (d + 1)/b) ||ubar||^2``, so a stable global step scales like ``b / (d + b + 1)
    ~ b/d`` of the uncompressed one (set the server optimizer's ``lr`` accordingly).

    Args:
        kind: ``"gaussian"``, ``"srht"`` or ``"countsketch"`` (as ``sketch_uplink``).
        b: floats per sketched row, ``1 <= b <= d`` (checked in ``init``).
        seed: the same seed as ``sketch_uplink``'s.
        rows: count-sketch rows.

    Returns:
        A ``ServerStage``; state ``SketchState(d)``.

    Raises:
        ScenarioError: ``algorithm.compress.kind`` / ``.b`` / ``.rows`` / ``.seed`` invalid.

    References: Song, Z., Wang, Y., Yu, Z., Zhang, L., "Sketching for First Order Method:
    Efficient Algorithm for Low-Bandwidth Channel and Vulnerability" (ICML 2023).
    """
    check_kind(kind)
    _check_int("b", b)
    _check_seed(seed)
    width = _check_width(kind, b, rows)

    def init(d: int) -> SketchState:
        check_dims(d, b, f"{KEY}.b")
        return SketchState(d)

    def update(agg: Tensor, state: SketchState, ctx: Ctx) -> tuple[Tensor, SketchState]:
        op = _round_operator(kind, state.d, b, seed, ctx.step, rows, release=True)
        return op.desketch(agg), state  # [d]

    return ServerStage(init=init, update=update, nbytes=lambda d: FLOAT_BYTES * width)


# -- FetchSGD ---------------------------------------------------------------------------------


def _fetch_operator(d: int, rows: int, cols: int, seed: int) -> CountSketch:
    """FetchSGD's count sketch: ONE operator for the whole run (state accumulates in it)."""
    return CountSketch(d, rows * cols, seed, rows=rows)


def _check_fetch(rows: int, cols: int, seed: int) -> None:
    _check_int("rows", rows)
    _check_int("cols", cols)
    _check_seed(seed)


def fetchsgd_uplink(rows: int, cols: int, seed: int) -> Stage:
    """FetchSGD's client side: each update count-sketched, ``[m, d] -> [m, rows * cols]``.

    Clients are stateless (no local momentum or error). The count sketch is the same every
    round (the server's momentum and error live in its sketch space), drawn from ``seed``.

    Args:
        rows: count-sketch rows (hash functions), >= 1.
        cols: buckets per row, >= 1 (``rows * cols <= d``, checked in ``init``).
        seed: the same seed as ``fetchsgd_server``'s.

    Returns:
        A ``Stage`` without state (``SketchState(d)``); ``nbytes = 4 rows cols``.

    Raises:
        ScenarioError: ``algorithm.compress.rows`` / ``.cols`` / ``.seed`` invalid, or
            ``algorithm.compress.cols`` with ``rows * cols > d``.

    References: Rothchild, Panda, Ullah, Ivkin, Stoica, Braverman, Gonzalez, Arora, "FetchSGD:
    Communication-Efficient Federated Learning with Sketching" (ICML 2020), Algorithm 1.
    """
    _check_fetch(rows, cols, seed)
    cache: dict[int, CountSketch] = {}

    def init(num_clients: int, d: int) -> SketchState:
        check_dims(d, rows * cols, f"{KEY}.cols")
        return SketchState(d)

    def update(updates: Tensor, state: SketchState, ctx: Ctx) -> tuple[Tensor, SketchState]:
        d = updates.shape[1]
        if d not in cache:
            cache[d] = _fetch_operator(d, rows, cols, seed)
        return cache[d].sketch(updates), state  # [m, rows * cols]

    return Stage(init=init, update=update, nbytes=lambda d: FLOAT_BYTES * rows * cols)


class FetchState(NamedTuple):
    """FetchSGD's server state, all in sketch space ``[rows * cols]``."""

    d: int
    momentum: Tensor  # S_u
    error: Tensor  # S_e
    sent: Tensor | None = None  # the coordinates of the last Delta [k] (for inspection)


def fetchsgd_server(rows: int, cols: int, k: int, seed: int, rho: float = 0.9,
                    error_update: str = "subtract") -> ServerStage:
    """FetchSGD's server side: momentum and error feedback in the sketch, top-k unsketched.

    Pseudo-code (Algorithm 1 of the paper; ``y`` is the aggregated sketch ``S(gbar)``):
        S_u <- rho * S_u + y                     momentum, in sketch space
        S_e <- S_e + S_u                         error accumulation (no lr: see below)
        Delta <- Top-k(U(S_e))                   U = the count sketch's median estimate
        S_e <- S_e - S(Delta)    ("subtract")    or zero S_e at Delta's buckets ("zero")
        S_u <- 0 at Delta's buckets              momentum stopped where an update was sent
        return Delta                             the server optimizer adds lr * Delta

    The paper scales the accumulation, ``S_e += lr * S_u``; here the ServerStage returns
    ``Delta`` and the server optimizer applies its ``lr``. With a constant ``lr`` and
    ``server_sgd`` the two are the same algorithm (every step is linear in ``S_e`` and
    top-k is scale-invariant, so the paper's ``S_e`` is ``lr`` times this one). Pair it with
    ``server_sgd`` (momentum already lives here, not in ``fedavgm``). ``Delta`` points the way
    of the aggregated update (fedsim's updates are ``w_k - x``, downhill).

    ``"subtract"`` (default) keeps ``S_e`` exactly the sketch of the accumulated
    not-yet-sent error, so nothing accumulated is ever lost; ``"zero"`` clears the touched
    buckets (as a practical variant) and also drops whatever other coordinates shared them.
    The broadcast is ``Delta`` as ``k`` values plus ``k`` int32 indices: ``nbytes = 8 k``.

    Args:
        rows: count-sketch rows, >= 1 (as ``fetchsgd_uplink``).
        cols: buckets per row, >= 1.
        k: coordinates unsketched per round, ``1 <= k <= d`` (checked in ``init``).
        seed: the same seed as ``fetchsgd_uplink``'s.
        rho: momentum, ``0 <= rho < 1``.
        error_update: ``"subtract"`` or ``"zero"``.

    Returns:
        A ``ServerStage``; state ``FetchState``.

    Raises:
        ScenarioError: ``algorithm.compress.<rows|cols|k|seed|rho|error_update>`` invalid.

    References: Rothchild, Panda, Ullah, Ivkin, Stoica, Braverman, Gonzalez, Arora, "FetchSGD:
    Communication-Efficient Federated Learning with Sketching" (ICML 2020), Algorithm 1.
    """
    _check_fetch(rows, cols, seed)
    _check_int("k", k)
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0 <= rho < 1:
        raise ScenarioError(f"{KEY}.rho", f"must be in [0, 1), got {rho!r}")
    if error_update not in ERROR_UPDATES:
        raise ScenarioError(f"{KEY}.error_update",
                            f"must be one of {', '.join(ERROR_UPDATES)}, got {error_update!r}")
    cache: dict[int, CountSketch] = {}

    def operator(d: int) -> CountSketch:
        if d not in cache:
            cache[d] = _fetch_operator(d, rows, cols, seed)
        return cache[d]

    def init(d: int) -> FetchState:
        check_dims(d, rows * cols, f"{KEY}.cols")
        if k > d:
            raise ScenarioError(f"{KEY}.k", f"must be 1 <= k <= d (d = {d}), got {k}")
        zeros = torch.zeros(rows * cols)
        return FetchState(d, zeros, zeros.clone())

    def update(agg: Tensor, state: FetchState, ctx: Ctx) -> tuple[Tensor, FetchState]:
        op = operator(state.d)
        s_u = rho * state.momentum.to(agg) + agg  # [r c]
        s_e = state.error.to(agg) + s_u  # [r c]
        est = op.median_estimate(s_e)  # [d]
        sent = est.abs().topk(k).indices  # [k]
        delta = torch.zeros_like(est)  # [d]
        delta[sent] = est[sent]
        touched = op.bucket_indices(sent).reshape(-1)  # [r k]
        if error_update == "subtract":
            s_e = s_e - op.sketch(delta)
        else:
            s_e = s_e.index_fill(0, touched, 0.0)
        s_u = s_u.index_fill(0, touched, 0.0)
        return delta, FetchState(state.d, s_u, s_e, sent)

    return ServerStage(init=init, update=update,
                       nbytes=lambda d: (FLOAT_BYTES + INDEX_BYTES) * min(k, d))


# -- top-k with error feedback ----------------------------------------------------------------


def topk_uplink(k: int) -> Stage:
    """Local top-k sparsification with per-client error feedback: ``[m, d] -> [m, d]``.

    Pseudo-code, for each sender i (``e_i = 0`` at first):
        a = u_i + e_i
        c = Top-k(a)             the k largest |a_j| kept, the rest zeroed
        e_i <- a - c             what was not sent waits for the next round
        send c                   k float32 values + k int32 indices
    Rows are returned dense (the receiver's decoding), with ``k`` nonzeros each; the wire
    size is ``nbytes = 8 k``. The error memory ``[num_clients, d]`` is indexed by
    ``ctx.senders`` (a client that is not selected keeps its error).

    Args:
        k: coordinates sent per client, ``1 <= k <= d`` (checked in ``init``).

    Returns:
        A ``Stage``; its state is the error memory ``[num_clients, d]``.

    Raises:
        ScenarioError: ``algorithm.compress.k`` not an integer in ``[1, d]``.

    References: Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory" (NeurIPS 2018);
    Karimireddy, Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other Gradient
    Compression Schemes" (ICML 2019).
    """
    _check_int("k", k)

    def init(num_clients: int, d: int) -> Tensor:
        if k > d:
            raise ScenarioError(f"{KEY}.k", f"must be 1 <= k <= d (d = {d}), got {k}")
        return torch.zeros(num_clients, d)

    def update(updates: Tensor, state: Tensor, ctx: Ctx) -> tuple[Tensor, Tensor]:
        memory = state.to(updates)  # [n, d]
        senders = ctx.senders.to(updates.device)
        acc = updates + memory.index_select(0, senders)  # [m, d]
        idx = acc.abs().topk(k, dim=1).indices  # [m, k]
        sent = torch.zeros_like(acc).scatter_(1, idx, acc.gather(1, idx))  # [m, d]
        memory = memory.index_copy(0, senders, acc - sent)
        return sent, memory

    return Stage(init=init, update=update,
                 nbytes=lambda d: (FLOAT_BYTES + INDEX_BYTES) * min(k, d))
