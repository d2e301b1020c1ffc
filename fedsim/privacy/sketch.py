"""Linear sketch operators ``S: R^d -> R^b`` with ``E[S^T S] = I``.

Every operator is a pure function of ``(d, b, seed)``: the same seed gives the same matrix on
every machine and device (the random draws are made on the CPU, then moved), so a client that
sketches and a server that de-sketches agree without exchanging ``S``. In a federated round
every client of round ``t`` uses the same operator, drawn fresh each round from
``round_seed(base_seed, t)``.

- ``gaussian``: dense ``R [b, d]`` with entries ``N(0, 1/b)``, never materialised whole: it is
  drawn tile by tile (each tile from its own seed), and both ``sketch`` and ``desketch``
  regenerate the tiles they need. Cost ``O(m b d)`` flops plus ``b d`` normal draws per call;
  memory one tile (``TILE_ROWS x TILE_COLS`` floats, 32 MB).
- ``srht``: subsampled randomized Hadamard transform ``sqrt(d'/b) P H D`` on ``x`` padded to
  ``d' = 2^ceil(log2 d)``: random signs ``D``, the orthonormal Walsh-Hadamard ``H`` (a batched
  fast transform, ``O(d' log d')`` per row), ``b`` of the ``d'`` rows kept without
  replacement (``P``). Memory ``O(m d')``.
- ``countsketch``: ``r`` count-sketch rows of ``c = b // r`` buckets each (width ``r c``),
  scaled by ``1/sqrt(r)``. Cost ``O(m r d)``; memory ``r d`` bucket indices and signs.

De-sketching with the transpose is unbiased, ``E[S^T S x] = x``, with error
``E||S^T S x - x||^2 = (d + 1)/b ||x||^2`` for the Gaussian sketch, ``(d - 1)/b ||x||^2`` for
the count sketch and ``(d'/b - 1) ||x||^2`` (before truncation to ``d``) for the SRHT: about
``d/b`` times the signal, which is why a de-sketched update wants a step scaled ``~ b/d``
(``docs/sketching.md``).

References:
    Song, Z., Wang, Y., Yu, Z., Zhang, L., "Sketching for First Order Method: Efficient
    Algorithm for Low-Bandwidth Channel and Vulnerability" (ICML 2023).
    Ailon, Chazelle, "The Fast Johnson-Lindenstrauss Transform and Approximate Nearest
    Neighbors" (SIAM J. Comput. 2009); Tropp, "Improved Analysis of the Subsampled
    Randomized Hadamard Transform" (2011).
    Charikar, Chen, Farach-Colton, "Finding Frequent Items in Data Streams" (ICALP 2002).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from fedsim.errors import ScenarioError

KINDS = ("gaussian", "srht", "countsketch")
FLOAT_BYTES = 4
TILE_ROWS = 2048  # Gaussian tile: 2048 x 4096 float32 = 32 MB, the most of R held at a time
TILE_COLS = 4096
DEFAULT_ROWS = 5  # count-sketch rows (hash functions) unless told
FWHT_CHUNK_BYTES = 2 << 20  # rows per FWHT batch: about 2 MB, so the passes stay in cache


def _hash_seed(*parts: object) -> int:
    """A 63-bit seed from the parts (sha256 of their text, as ``fedsim.seeding``)."""
    text = "/".join(str(p) for p in parts)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def round_seed(base_seed: int, step: int) -> int:
    """The sketch seed of round ``step``: shared by every client of the round, fresh each round.

    Args:
        base_seed: the sketch stream's seed (e.g. ``fedsim.seeding.stream_seed(root, "sketch")``).
        step: the round number (``ctx.step``).

    Returns:
        A non-negative int below 2**63, stable across Python versions and platforms.
    """
    return _hash_seed(int(base_seed), "sketch-round", int(step))


def _cpu_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def _as_rows(x: Tensor, width: int, name: str) -> tuple[Tensor, tuple[int, ...]]:
    """``x [..., width]`` as ``[m, width]`` plus its leading shape."""
    if x.ndim == 0 or x.shape[-1] != width:
        raise ValueError(f"{name}: expected a last dimension of {width}, got shape "
                         f"{tuple(x.shape)}")
    lead = tuple(x.shape[:-1])
    return x.reshape(-1, width), lead


class Sketch:
    """A linear operator ``S: R^d -> R^width``, applied to the rows of a batch.

    Subclasses implement ``_sketch([m, d]) -> [m, width]`` and ``_desketch([m, width]) ->
    [m, d]`` (the transpose). Results follow the input's dtype and device.
    """

    kind = ""

    def __init__(self, d: int, b: int, seed: int):
        check_dims(d, b)
        self.d = int(d)
        self.b = int(b)
        self.seed = int(seed)

    @property
    def width(self) -> int:
        """Floats one sketched row holds (``b``, or ``r * (b // r)`` for the count sketch)."""
        return self.b

    @property
    def nbytes(self) -> int:
        """Wire size of one sketched row: ``width`` float32."""
        return FLOAT_BYTES * self.width

    def sketch(self, x: Tensor) -> Tensor:
        """``S x`` for each row: ``[..., d] -> [..., width]``."""
        rows, lead = _as_rows(x, self.d, f"{self.kind} sketch")
        return self._sketch(rows).reshape(*lead, self.width)

    def desketch(self, y: Tensor) -> Tensor:
        """``S^T y`` for each row: ``[..., width] -> [..., d]`` (unbiased: ``E[S^T S] = I``)."""
        rows, lead = _as_rows(y, self.width, f"{self.kind} desketch")
        return self._desketch(rows).reshape(*lead, self.d)

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The operator as a dense ``[width, d]`` matrix (for tests and small ``d`` only)."""
        eye = torch.eye(self.d, dtype=dtype)
        return self.sketch(eye).T.contiguous()

    def _sketch(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _desketch(self, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def check_dims(d: int, b: int, key: str = "algorithm.compress.b") -> None:
    """Refuse a sketch width outside ``1 <= b <= d``.

    Raises:
        ScenarioError: naming ``key``.
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"the model width d must be an integer >= 1, got {d!r}")
    if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= d:
        raise ScenarioError(key, f"must be 1 <= b <= d (d = {d}), got {b!r}")


# -- Gaussian ---------------------------------------------------------------------------------


class GaussianSketch(Sketch):
    """Dense Gaussian sketch ``R [b, d]``, entries ``N(0, 1/b)``, generated tile by tile.

    Tile ``(i, j)`` covers rows ``i*tile_rows ...`` and columns ``j*tile_cols ...`` of ``R`` and
    is drawn (float32, on the CPU) from a generator seeded by ``(seed, i, j)``, so any tile can
    be regenerated alone: ``sketch`` and ``desketch`` hold one tile at a time (32 MB at the
    default tile size). The tile size is part of the operator's definition.

    References: Song, Wang, Yu, Zhang, "Sketching for First Order Method: Efficient Algorithm
    for Low-Bandwidth Channel and Vulnerability" (ICML 2023), Gaussian sketching matrix.
    """

    kind = "gaussian"

    def __init__(self, d: int, b: int, seed: int, tile_rows: int = TILE_ROWS,
                 tile_cols: int = TILE_COLS):
        super().__init__(d, b, seed)
        if tile_rows < 1 or tile_cols < 1:
            raise ValueError("tile sizes must be >= 1")
        self.tile_rows = int(tile_rows)
        self.tile_cols = int(tile_cols)
        self.scale = 1.0 / math.sqrt(self.b)

    def tile(self, i: int, j: int) -> Tensor:
        """Tile ``(i, j)`` of ``R``: float32 on the CPU, ``[rows_i, cols_j]``."""
        r0, c0 = i * self.tile_rows, j * self.tile_cols
        rows = min(self.tile_rows, self.b - r0)
        cols = min(self.tile_cols, self.d - c0)
        gen = _cpu_generator(_hash_seed(self.seed, "gaussian", self.d, self.b, i, j))
        t = torch.randn(rows, cols, generator=gen, dtype=torch.float32)  # [rows, cols]
        return t.mul_(self.scale)

    def tiles(self) -> Iterator[tuple[slice, slice, Tensor]]:
        """Every tile with its row and column ranges in ``R``, one at a time."""
        for i in range(math.ceil(self.b / self.tile_rows)):
            r = slice(i * self.tile_rows, min((i + 1) * self.tile_rows, self.b))
            for j in range(math.ceil(self.d / self.tile_cols)):
                c = slice(j * self.tile_cols, min((j + 1) * self.tile_cols, self.d))
                yield r, c, self.tile(i, j)

    def _sketch(self, x: Tensor) -> Tensor:
        out = torch.zeros(x.shape[0], self.b, dtype=x.dtype, device=x.device)  # [m, b]
        for r, c, t in self.tiles():
            t = t.to(device=x.device, dtype=x.dtype)  # [rows, cols]
            out[:, r] += x[:, c] @ t.T
        return out

    def _desketch(self, y: Tensor) -> Tensor:
        out = torch.zeros(y.shape[0], self.d, dtype=y.dtype, device=y.device)  # [m, d]
        for r, c, t in self.tiles():
            t = t.to(device=y.device, dtype=y.dtype)
            out[:, c] += y[:, r] @ t
        return out


# -- SRHT -------------------------------------------------------------------------------------


def fwht(x: Tensor) -> Tensor:
    """The orthonormal fast Walsh-Hadamard transform of each row, ``[m, n] -> [m, n]``.

    ``n`` must be a power of two. Sylvester ordering (``H_2n = [[H, H], [H, -H]] / sqrt 2``),
    so the transform is symmetric and its own inverse. ``log2 n`` butterfly passes between two
    buffers, a few rows at a time (about ``FWHT_CHUNK_BYTES`` of them, so that the passes stay
    in cache); the input is not modified. ``O(m n log n)``.
    """
    m, n = x.shape
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    out = torch.empty_like(x)
    chunk = max(1, FWHT_CHUNK_BYTES // (n * x.element_size()))
    for start in range(0, m, chunk):
        rows = x[start : start + chunk]
        k = rows.shape[0]
        src, dst = rows.clone(), torch.empty_like(rows)  # [k, n] each
        h = 1
        while h < n:
            a = src.view(k, n // (2 * h), 2, h)
            o = dst.view(k, n // (2 * h), 2, h)
            torch.add(a[:, :, 0], a[:, :, 1], out=o[:, :, 0])
            torch.sub(a[:, :, 0], a[:, :, 1], out=o[:, :, 1])
            src, dst = dst, src
            h *= 2
        out[start : start + k] = src
    return out.mul_(1.0 / math.sqrt(n))


class SRHTSketch(Sketch):
    """Subsampled randomized Hadamard transform ``S = sqrt(d'/b) P H D`` (``x`` zero-padded).

    ``D``: ``d'`` random signs; ``H``: orthonormal Walsh-Hadamard of size ``d' = 2^ceil(log2 d)``;
    ``P``: ``b`` of the ``d'`` rows, drawn without replacement. ``E[P^T P] = (b/d') I`` makes
    ``E[S^T S] = D H H D = I``; with ``b = d' = d`` the operator is orthogonal (``S^T S = I``).

    References: Ailon, Chazelle (SIAM J. Comput. 2009); Tropp, "Improved Analysis of the
    Subsampled Randomized Hadamard Transform" (2011); Song, Wang, Yu, Zhang (ICML 2023).
    """

    kind = "srht"

    def __init__(self, d: int, b: int, seed: int):
        super().__init__(d, b, seed)
        self.padded = 1 << (self.d - 1).bit_length()  # d'
        gen = _cpu_generator(_hash_seed(self.seed, "srht", self.d, self.b))
        self.signs = torch.randint(0, 2, (self.padded,), generator=gen).mul_(2).sub_(1)  # [d']
        self.rows = torch.randperm(self.padded, generator=gen)[: self.b]  # [b]
        self.scale = math.sqrt(self.padded / self.b)

    def _sketch(self, x: Tensor) -> Tensor:
        m = x.shape[0]
        z = torch.zeros(m, self.padded, dtype=x.dtype, device=x.device)  # [m, d']
        z[:, : self.d] = x * self.signs[: self.d].to(x)
        z = fwht(z)
        return z[:, self.rows.to(x.device)] * self.scale  # [m, b]

    def _desketch(self, y: Tensor) -> Tensor:
        m = y.shape[0]
        z = torch.zeros(m, self.padded, dtype=y.dtype, device=y.device)  # [m, d']
        z[:, self.rows.to(y.device)] = y * self.scale
        z = fwht(z)
        return z[:, : self.d] * self.signs[: self.d].to(y)  # [m, d]


# -- CountSketch ------------------------------------------------------------------------------


class CountSketch(Sketch):
    """``r`` count-sketch rows of ``c = b // r`` buckets, stacked and scaled by ``1/sqrt(r)``.

    Row ``j`` sends coordinate ``i`` to bucket ``h_j(i)`` with sign ``s_j(i)``; the sketch of
    ``x`` is ``y[j, h] = (1/sqrt r) sum_{i: h_j(i) = h} s_j(i) x_i``, flattened to ``r c`` floats.
    Each row's ``C_j^T C_j`` has unit diagonal and zero-mean off-diagonal, so
    ``E[S^T S] = (1/r) sum_j E[C_j^T C_j] = I``. ``table`` gives the classic (unscaled) table
    ``[r, c]`` and ``median_estimate`` the count sketch's median query, the unsketch of FetchSGD.

    References: Charikar, Chen, Farach-Colton, "Finding Frequent Items in Data Streams"
    (ICALP 2002); Rothchild et al., "FetchSGD: Communication-Efficient Federated Learning with
    Sketching" (ICML 2020).
    """

    kind = "countsketch"

    def __init__(self, d: int, b: int, seed: int, rows: int = DEFAULT_ROWS):
        super().__init__(d, b, seed)
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= b:
            raise ScenarioError("algorithm.compress.rows",
                                f"must be an integer with 1 <= rows <= b (b = {b}), got {rows!r}")
        self.r = rows
        self.c = self.b // rows
        gen = _cpu_generator(_hash_seed(self.seed, "countsketch", self.d, self.r, self.c))
        self.buckets = torch.randint(0, self.c, (self.r, self.d), generator=gen)  # [r, d]
        self.signs = torch.randint(0, 2, (self.r, self.d), generator=gen).mul_(2).sub_(1)
        offsets = torch.arange(self.r)[:, None] * self.c
        self.flat = self.buckets + offsets  # [r, d] index into the flattened [r * c]
        self.scale = 1.0 / math.sqrt(self.r)
        self._csr: dict[tuple[torch.dtype, str], tuple[Tensor, Tensor]] = {}

    @property
    def width(self) -> int:
        return self.r * self.c

    def _transpose_csr(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``S^T`` as a sparse CSR ``[d, r c]`` (``r`` entries per row), cached per dtype/device."""
        key = (dtype, str(device))
        if key not in self._csr:
            crow = torch.arange(0, self.r * self.d + 1, self.r)  # [d + 1]
            col = self.flat.T.reshape(-1)  # [d r], increasing within a row (offsets j c)
            val = self.signs.T.reshape(-1).to(dtype) * self.scale
            with warnings.catch_warnings():  # CSR support is "beta" in torch
                warnings.simplefilter("ignore")
                st = torch.sparse_csr_tensor(crow, col, val, (self.d, self.width))
                s = st.t().to_sparse_csr()  # [r c, d]
                self._csr[key] = (st.to(device), s.to(device))
        return self._csr[key]

    def _sketch(self, x: Tensor) -> Tensor:
        _, s = self._transpose_csr(x.dtype, x.device)
        return (s @ x.T).T.contiguous()  # [m, r c]

    def _desketch(self, y: Tensor) -> Tensor:
        st, _ = self._transpose_csr(y.dtype, y.device)
        return (st @ y.T).T.contiguous()  # [m, d]

    def table(self, y: Tensor) -> Tensor:
        """The classic count-sketch table ``[..., r, c]`` of sketched rows ``y [..., r c]``.

        Each table row is an unscaled count sketch (``sqrt(r)`` times the slice of ``y``).
        """
        return y.reshape(*y.shape[:-1], self.r, self.c) * math.sqrt(self.r)

    def median_estimate(self, y: Tensor) -> Tensor:
        """The median query: ``x_i ~ median_j s_j(i) T[j, h_j(i)]`` for each row, ``[..., d]``.

        Exact for every coordinate whose buckets, in a majority of rows, hold no other
        nonzero coordinate (a heavy coordinate of a sparse vector is recovered exactly).
        With an even ``r`` the two middle values are averaged.
        """
        rows, lead = _as_rows(y, self.width, "countsketch median_estimate")
        flat = self.flat.to(y.device)
        signs = self.signs.to(rows)
        vals = rows[:, flat] * signs * math.sqrt(self.r)  # [m, r, d]
        vals = vals.sort(dim=1).values
        mid = self.r // 2
        est = vals[:, mid] if self.r % 2 else (vals[:, mid - 1] + vals[:, mid]) / 2  # [m, d]
        return est.reshape(*lead, self.d)

    def bucket_indices(self, coords: Tensor) -> Tensor:
        """The flat sketch positions ``[r, k]`` of coordinates ``coords [k]``, every row."""
        return self.flat[:, coords.cpu()].to(coords.device)


def make_sketch(kind: str, d: int, b: int, seed: int, rows: int = DEFAULT_ROWS) -> Sketch:
    """The sketch operator of ``kind`` for width ``d``, sketch size ``b`` and ``seed``.

    Args:
        kind: ``"gaussian"``, ``"srht"`` or ``"countsketch"``.
        d: the model's width (>= 1).
        b: floats per sketched row, ``1 <= b <= d`` (the count sketch uses ``r * (b // r)``).
        seed: the operator's seed (``round_seed(base, step)`` for a per-round operator).
        rows: count-sketch rows ``r`` (ignored by the other kinds).

    Returns:
        A ``Sketch`` with ``sketch``, ``desketch``, ``width`` and ``nbytes``.

    Raises:
        ScenarioError: ``algorithm.compress.kind`` unknown, ``algorithm.compress.b`` outside
            ``[1, d]``, ``algorithm.compress.rows`` outside ``[1, b]``.

    References: Song, Wang, Yu, Zhang (ICML 2023); Rothchild et al., FetchSGD (ICML 2020).
    """
    check_kind(kind)
    if kind == "gaussian":
        return GaussianSketch(d, b, seed)
    if kind == "srht":
        return SRHTSketch(d, b, seed)
    return CountSketch(d, b, seed, rows=rows)


def check_kind(kind: str) -> None:
    """Refuse an unknown sketch kind with a ScenarioError naming ``algorithm.compress.kind``."""
    if kind not in KINDS:
        raise ScenarioError("algorithm.compress.kind",
                            f"must be one of {', '.join(KINDS)}, got {kind!r}")
