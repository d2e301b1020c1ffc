"""Gradient codes: who computes which partitions, and how the master decodes (numpy only).

Setting (Tandon et al. 2017): ``n`` workers, the data cut into ``n`` partitions with
gradients ``g_1..g_n``; the master needs ``g = sum_j g_j``. An encoding matrix
``B in R^{n x n}`` (rows: workers, columns: partitions) gives worker ``i`` the partitions
in the support of row ``B[i]`` and has it send one vector, ``B[i] @ G`` (``G``: the
``n x d`` matrix of partition gradients). The code tolerates ``s`` stragglers when, for
every set ``F`` of ``n - s`` workers, ``1`` lies in the row span of ``B_F``: there is an
``a`` with ``B_F^T a = 1``, and then ``a @ (B_F @ G) = 1^T G = g`` exactly.

- **FRC** (fractional repetition, needs ``(s + 1) | n``): the workers form ``s + 1``
  groups of ``n / (s + 1)``; inside a group, worker ``k`` holds partition block ``k`` (``s +
  1`` consecutive partitions) and sends their sum. Each block is held by ``s + 1`` workers,
  one per group, so any ``s`` stragglers leave a copy of every block.
- **CRC** (cyclic repetition, any ``s < n``): a random ``H in R^{s x n}`` with ``H 1 = 0``;
  row ``i`` of ``B`` has support ``S_i = {i, i+1, ..., i+s} mod n``, ``B[i, i] = 1`` and the
  other ``s`` entries ``b`` solve ``H[:, S_i \\ {i}] b = -H[:, i]``. Every row lies in the
  null space of ``H`` (dimension ``n - s``, it contains ``1``) and, with probability one,
  any ``n - s`` rows are independent, so they span it and ``1`` with it.

Decoding is solved per round for the set ``F`` that arrived (:func:`decode_vector`,
least squares with minimum norm over the arrived rows: an SVD truncated at the code's
known rank, then iterative refinement in float64), never tabulated over all ``C(n, s)``
sets; its conditioning (``sigma_max / sigma_min`` over the kept singular values of
``B_F``) is reported with it. Random-``H`` CRC is badly conditioned at large ``n``
(``cond`` up to ~1e13 at ``n = 256, s = 64``, set by the draw of ``H``); the
rank-truncated, refined solve still decodes every sampled set there (relative error
<= ~1e-7, docs/gradient_coding.md). The codes tolerate any ``s`` stragglers (all
``C(n, s)`` sets, tested exhaustively for ``n <= 12``), not only ``s - 1``.

References:
    Tandon, Lei, Dimakis, Karampatziakis, "Gradient Coding: Avoiding Stragglers in
    Distributed Learning" (ICML 2017), Sections 3-4 (FRC: Algorithm 1's construction;
    CRC: Algorithm 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.errors import ScenarioError

CODES = ("frc", "crc")
DECODE_TOL = 1e-6  # max |B_F^T a - 1| accepted (CRC at n = 256, s = 64 reaches ~5e-8)


class DecodeError(RuntimeError):
    """The rows that arrived do not span the all-ones vector: not decodable."""


def check_code_params(code: str, n: int, s: int, key: str = "algorithm.coding") -> None:
    """Validate a code's parameters; one-line :class:`ScenarioError` when wrong.

    Args:
        code: ``"frc"`` or ``"crc"``.
        n: workers (= partitions), ``>= 1``.
        s: stragglers to tolerate, ``0 <= s < n``; FRC also needs ``(s + 1) | n``.
        key: the dotted prefix of the scenario keys named in errors.

    Raises:
        ScenarioError: keys ``{key}.code``, ``{key}.n`` or ``{key}.s``.
    """
    if code not in CODES:
        raise ScenarioError(f"{key}.code", f"must be one of {', '.join(CODES)}; got {code!r}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ScenarioError(f"{key}.n", f"must be an integer >= 1, got {n!r}")
    if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or not 0 <= s < n:
        raise ScenarioError(f"{key}.s", f"must be an integer in [0, n - 1] = [0, {n - 1}] "
                                        f"(s >= n leaves no worker), got {s!r}")
    if code == "frc" and n % (s + 1):
        raise ScenarioError(f"{key}.s", f"FRC needs (s + 1) to divide n; got s = {s}, n = {n} "
                                        f"(use code = 'crc', or s + 1 in "
                                        f"{_divisors(n)})")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def frc_matrix(n: int, s: int) -> np.ndarray:
    """The fractional repetition code's ``B`` (0/1 entries).

    Worker ``i`` (group ``i // (n/(s+1))``, position ``k = i mod n/(s+1)``) holds the
    partitions ``k(s+1) .. k(s+1) + s`` and sends their sum.

    Args:
        n: workers; ``(s + 1) | n``.
        s: stragglers tolerated.

    Returns:
        ``[n, n]`` float64.

    References:
        Tandon et al., "Gradient Coding" (ICML 2017), Section 3 (fractional repetition).
    """
    check_code_params("frc", n, s)
    per_group = n // (s + 1)
    b = np.zeros((n, n))
    for i in range(n):
        k = i % per_group
        b[i, k * (s + 1):(k + 1) * (s + 1)] = 1.0
    return b


def crc_matrix(n: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """The cyclic repetition code's ``B``: row ``i`` supported on ``{i..i+s} mod n``.

    ``H`` is ``s x n`` standard normal with its last column replaced by minus the sum of
    the others (``H 1 = 0``); ``B[i, i] = 1`` and ``H[:, S_i \\ {i}] b = -H[:, i]`` gives
    the other ``s`` entries, so ``H B[i]^T = 0``.

    Args:
        n: workers.
        s: stragglers tolerated, ``0 <= s < n``.
        rng: draws ``H``.

    Returns:
        ``[n, n]`` float64.

    References:
        Tandon et al., "Gradient Coding" (ICML 2017), Algorithm 2 (cyclic repetition).
    """
    check_code_params("crc", n, s)
    h = rng.standard_normal((s, n))
    if s:
        h[:, -1] = -h[:, :-1].sum(axis=1)
    b = np.zeros((n, n))
    for i in range(n):
        support = (i + np.arange(s + 1)) % n
        b[i, i] = 1.0
        if s:
            b[i, support[1:]] = np.linalg.solve(h[:, support[1:]], -h[:, i])
    return b


@dataclass(frozen=True)
class Decoding:
    """How the master combines the messages that arrived.

    Attributes:
        rows: ``[m]`` the workers whose messages are combined (sorted).
        a: ``[m]`` their weights: ``sum_k a[k] * message[rows[k]] = g``.
        cond: ``sigma_max / sigma_min`` of ``B_rows`` over its non-zero singular values
            (1.0 for a single row): how much the decode amplifies rounding errors.
        residual: ``max |B_rows^T a - 1|`` (``<=`` :data:`DECODE_TOL` for a decode).
    """

    rows: np.ndarray
    a: np.ndarray
    cond: float
    residual: float


def decode_vector(b: np.ndarray, arrived: Sequence[int] | np.ndarray,
                  rank: int | None = None) -> Decoding:
    """Solve ``B_F^T a = 1`` for the workers ``F`` that arrived (least squares, min norm).

    The solve is a truncated SVD of ``B_F`` followed by two steps of iterative refinement
    (``a += pinv(B_F^T) (1 - B_F^T a)``, in float64). Which singular values are kept
    matters for codes whose ``B_F`` is badly conditioned (random-``H`` CRC at ``n = 256,
    s = 64``: ``sigma_min / sigma_max`` down to ~1e-13): a relative threshold would drop a
    genuine direction of the row space and leave ``B_F^T a`` far from ``1``. When the
    code's ``rank`` is known (CRC: ``n - s``; FRC: ``n / (s + 1)``) the top
    ``min(rank, |F|)`` singular values are kept, those numerically zero (``<= sigma_max *
    eps``) excepted; otherwise the usual threshold ``sigma_max * max(shape) * eps * 16``.

    Args:
        b: ``[n, k]`` encoding matrix (rows: workers).
        arrived: worker ids (any order, no duplicates), or an ``[n]`` boolean mask.
        rank: the rank of ``b`` (the dimension of the space the rows of a decodable set
            span); None: decided from the singular values.

    Returns:
        The :class:`Decoding`.

    Raises:
        DecodeError: ``1`` is not in the span of the arrived rows (too many stragglers).

    References:
        Tandon et al., "Gradient Coding" (ICML 2017), Section 2 (condition ``a^T B_F = 1^T``);
        Higham, "Accuracy and Stability of Numerical Algorithms" (2002), Chapter 12
        (iterative refinement).
    """
    arrived = np.asarray(arrived)
    rows = np.flatnonzero(arrived) if arrived.dtype == bool else np.sort(arrived.astype(int))
    ones = np.ones(b.shape[1])
    if rows.size == 0:
        raise DecodeError("no message arrived")
    bf = b[rows]
    u, sv, vt = np.linalg.svd(bf, full_matrices=False)
    if sv[0] <= 0:
        raise DecodeError(f"the {rows.size} arrived rows are zero")
    if rank is None:
        keep = sv > sv[0] * max(bf.shape) * np.finfo(float).eps * 16
    else:
        keep = (np.arange(sv.size) < min(rank, rows.size)) & (sv > sv[0] * np.finfo(float).eps)
    uk, sk, vk = u[:, keep], sv[keep], vt[keep]
    # a = pinv(B_F^T) 1 = U diag(1/sv) V^T 1 over the kept singular values, then refined
    a = uk @ ((vk @ ones) / sk)
    for _ in range(2):
        a = a + uk @ ((vk @ (ones - bf.T @ a)) / sk)
    residual = float(np.abs(bf.T @ a - ones).max())
    if not residual <= DECODE_TOL:
        raise DecodeError(f"workers {rows.tolist()} do not span the all-ones vector "
                          f"(residual {residual:.2e})")
    return Decoding(rows=rows, a=a, cond=float(sk[0] / sk[-1]), residual=residual)


@dataclass(frozen=True)
class GradientCode:
    """An ``(n, s)`` gradient code: the encoding matrix and its decoder.

    Attributes:
        kind: ``"frc"`` or ``"crc"``.
        n: workers (= partitions).
        s: stragglers tolerated (any ``s`` of the ``n``).
        matrix: ``[n, n]`` ``B`` (rows: workers, columns: partitions).
    """

    kind: str
    n: int
    s: int
    matrix: np.ndarray

    @property
    def rank(self) -> int:
        """The rank of ``matrix``, the span of any decodable set's rows: ``n - s`` (CRC),
        ``n / (s + 1)`` (FRC, one row per block)."""
        return self.n // (self.s + 1) if self.kind == "frc" else self.n - self.s

    @property
    def load(self) -> float:
        """Fraction of the data each worker computes on: ``(s + 1) / n``."""
        return (self.s + 1) / self.n

    def support(self, worker: int) -> np.ndarray:
        """The partitions worker ``worker`` holds (non-zero entries of its row)."""
        return np.flatnonzero(self.matrix[worker])

    def encode(self, grads):
        """All workers' messages ``B @ G`` for partition gradients ``G`` ``[n, d]``
        (numpy array or torch tensor of the same float dtype)."""
        if hasattr(grads, "new_tensor"):
            return grads.new_tensor(self.matrix) @ grads
        return self.matrix @ np.asarray(grads)

    def decoding(self, arrived: Sequence[int] | np.ndarray) -> Decoding:
        """The decode for the workers that arrived (:func:`decode_vector`)."""
        return decode_vector(self.matrix, arrived, self.rank)

    def decode(self, arrived: Sequence[int] | np.ndarray, messages):
        """The full gradient from the messages of the workers that arrived.

        Args:
            arrived: worker ids or an ``[n]`` mask (at most ``s`` missing).
            messages: ``[n, d]`` all workers' messages (rows not arrived are ignored), or
                ``[m, d]`` only the arrived workers' messages in increasing worker order.

        Returns:
            ``[d]`` the decoded ``sum_j g_j`` (same type as ``messages``).
        """
        dec = self.decoding(arrived)
        rows = messages[dec.rows] if messages.shape[0] == self.n else messages
        if hasattr(rows, "new_tensor"):
            return rows.new_tensor(dec.a) @ rows
        return dec.a @ np.asarray(rows)


def make_code(kind: str, n: int, s: int, seed: int = 0) -> GradientCode:
    """An FRC or CRC code (CRC's ``H`` drawn from ``numpy.random.default_rng(seed)``).

    Args:
        kind: ``"frc"`` or ``"crc"``.
        n: workers (= partitions).
        s: stragglers tolerated, ``0 <= s < n`` (FRC: ``(s + 1) | n``).
        seed: CRC's random ``H``.

    Returns:
        The :class:`GradientCode`.

    Raises:
        ScenarioError: bad parameters (``algorithm.coding.code``, ``.n`` or ``.s``).

    References:
        Tandon et al., "Gradient Coding" (ICML 2017).
    """
    check_code_params(kind, n, s)
    if kind == "frc":
        return GradientCode("frc", n, s, frc_matrix(n, s))
    return GradientCode("crc", n, s, crc_matrix(n, s, np.random.default_rng(seed)))
