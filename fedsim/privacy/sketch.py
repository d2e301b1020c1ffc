"""Linear sketch operators ``S: R^d -> R^b`` with ``E[S^T S] = I``.

Every operator is a pure function of ``(d, b, seed)``: the same seed gives the same matrix on
every machine and device (the random draws are made on the CPU, then moved), so a client that
sketches and a server that de-sketches agree without exchanging ``S``. In a federated round
every client of round ``t`` uses the same operator, drawn fresh each round from
``round_seed(base_seed, t)``.

- ``gaussian``: dense ``R [b, d]`` with entries ``N(0, 1/b)``, drawn tile by tile (each tile
  from its own seed). When ``R`` is small (``4 b d <= DENSE_BYTES``, 64 MB) the operator
  assembles it once from its tiles and keeps it; otherwise ``sketch`` and ``desketch``
  regenerate the tiles they need, one at a time, into one reused buffer. Cost ``O(m b d)``
  flops plus ``b d`` normal draws (per operator when kept, per call otherwise); memory
  ``min(R, one tile)`` (a tile is ``TILE_ROWS x TILE_COLS`` floats, 32 MB).
- ``srht``: subsampled randomized Hadamard transform ``sqrt(d'/b) P H D`` on ``x`` padded to
  ``d' = 2^ceil(log2 d)``: random signs ``D``, the orthonormal Walsh-Hadamard ``H`` (a batched
  fast transform, ``O(d' log d')`` per row; the sketch computes only the ``b`` kept outputs
  in its last passes), ``b`` of the ``d'`` rows kept without replacement (``P``). Memory
  ``O(m b)`` plus two buffers of about ``FWHT_CHUNK_BYTES``.
- ``countsketch``: ``r`` count-sketch rows of ``c = b // r`` buckets each (width ``r c``),
  scaled by ``1/sqrt(r)``. Cost ``O(m r d)`` (a sparse CSR product); memory ``r d`` bucket
  indices and signs.

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
DENSE_BYTES = 64 << 20  # a Gaussian R of at most this many bytes is kept whole by its operator
FWHT_LOW_BITS = 4  # the first log2 passes of the FWHT, done as one product with H_16
FWHT_GATHER_BITS = 6  # at most this many last SRHT passes computed for the kept rows only
COUNT_BLOCK_COLS = 8192  # count sketch: S applied to column blocks of x this wide
GATHER_DESKETCH_ROWS = 8  # count-sketch de-sketch of at most this many rows: a gather, no CSR


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
    be regenerated alone. A small ``R`` (``4 b d <= DENSE_BYTES``) is assembled once and kept
    (one matrix product per call); a larger one is regenerated by ``sketch`` and ``desketch``
    one tile at a time into a reused buffer (32 MB at the default tile size). The tile size is
    part of the operator's definition; both ways give the same ``R``.

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
        self._dense: Tensor | None = None  # R, once assembled, if keeps_matrix
        self._moved: tuple[tuple[torch.dtype, str], Tensor] | None = None  # R, last dtype/device

    def _tile_shape(self, i: int, j: int) -> tuple[int, int]:
        return (min(self.tile_rows, self.b - i * self.tile_rows),
                min(self.tile_cols, self.d - j * self.tile_cols))

    def _draw_tile(self, i: int, j: int, buffer: Tensor | None = None) -> Tensor:
        """Tile ``(i, j)`` drawn into ``buffer`` (a flat float32 tensor, reused) or a new tensor.

        ``torch.randn(..., out=)`` draws the same numbers as a fresh tensor of that shape; the
        reused buffer spares the allocation (and page faults) of a 32 MB tile each time.
        """
        rows, cols = self._tile_shape(i, j)
        gen = _cpu_generator(_hash_seed(self.seed, "gaussian", self.d, self.b, i, j))
        if buffer is None:
            t = torch.randn(rows, cols, generator=gen, dtype=torch.float32)  # [rows, cols]
        else:
            t = buffer[: rows * cols].view(rows, cols)
            torch.randn(rows, cols, generator=gen, dtype=torch.float32, out=t)
        return t.mul_(self.scale)

    def tile(self, i: int, j: int) -> Tensor:
        """Tile ``(i, j)`` of ``R``: float32 on the CPU, ``[rows_i, cols_j]``."""
        return self._draw_tile(i, j)

    def _ranges(self) -> Iterator[tuple[int, int, slice, slice]]:
        for i in range(math.ceil(self.b / self.tile_rows)):
            r = slice(i * self.tile_rows, min((i + 1) * self.tile_rows, self.b))
            for j in range(math.ceil(self.d / self.tile_cols)):
                c = slice(j * self.tile_cols, min((j + 1) * self.tile_cols, self.d))
                yield i, j, r, c

    def tiles(self) -> Iterator[tuple[slice, slice, Tensor]]:
        """Every tile with its row and column ranges in ``R``, one at a time (fresh tensors)."""
        for i, j, r, c in self._ranges():
            yield r, c, self.tile(i, j)

    def _reused_tiles(self) -> Iterator[tuple[slice, slice, Tensor]]:
        """As ``tiles``, but every tile drawn into one buffer: valid until the next one."""
        buffer = torch.empty(min(self.tile_rows, self.b) * min(self.tile_cols, self.d),
                             dtype=torch.float32)
        for i, j, r, c in self._ranges():
            yield r, c, self._draw_tile(i, j, buffer)

    @property
    def keeps_matrix(self) -> bool:
        """Whether this operator holds ``R`` whole (``4 b d <= DENSE_BYTES``)."""
        return FLOAT_BYTES * self.b * self.d <= DENSE_BYTES

    def dense(self) -> Tensor:
        """``R [b, d]`` float32 on the CPU, assembled from the tiles (kept when small)."""
        if self._dense is not None:
            return self._dense
        mat = torch.empty(self.b, self.d, dtype=torch.float32)
        for i, j, r, c in self._ranges():
            rows, cols = self._tile_shape(i, j)
            if cols == self.d:  # a row band: draw it in place
                self._draw_tile(i, j, mat[r].view(-1))
            else:
                mat[r, c] = self._draw_tile(i, j)
        if self.keeps_matrix:
            self._dense = mat
        return mat

    def _matrix_on(self, like: Tensor) -> Tensor:
        key = (like.dtype, str(like.device))
        if self._moved is None or self._moved[0] != key:
            self._moved = (key, self.dense().to(device=like.device, dtype=like.dtype))
        return self._moved[1]

    def _sketch(self, x: Tensor) -> Tensor:
        if self.keeps_matrix:
            return x @ self._matrix_on(x).T  # [m, b]
        out = torch.zeros(x.shape[0], self.b, dtype=x.dtype, device=x.device)  # [m, b]
        for r, c, t in self._reused_tiles():
            t = t.to(device=x.device, dtype=x.dtype)  # [rows, cols]
            out[:, r] += x[:, c] @ t.T
        return out

    def _desketch(self, y: Tensor) -> Tensor:
        if self.keeps_matrix:
            return y @ self._matrix_on(y)  # [m, d]
        out = torch.zeros(y.shape[0], self.d, dtype=y.dtype, device=y.device)  # [m, d]
        for r, c, t in self._reused_tiles():
            t = t.to(device=y.device, dtype=y.dtype)
            out[:, c] += y[:, r] @ t
        return out


# -- SRHT -------------------------------------------------------------------------------------


_HADAMARD: dict[tuple[int, torch.dtype, str], Tensor] = {}


def hadamard(n: int, dtype: torch.dtype = torch.float64,
             device: torch.device | str = "cpu") -> Tensor:
    """The unnormalised Sylvester Hadamard matrix ``H_n`` (entries +-1), ``n`` a power of two.

    ``H_2n = [[H_n, H_n], [H_n, -H_n]]``, so ``H_n[i, j] = (-1)^popcount(i & j)``. Small ones
    are cached per dtype/device.
    """
    key = (n, dtype, str(device))
    if key in _HADAMARD:
        return _HADAMARD[key]
    idx = torch.arange(n)
    bits = idx[:, None] & idx[None, :]  # [n, n]
    parity = torch.zeros_like(bits)
    while bool(bits.any()):
        parity ^= bits & 1
        bits = bits >> 1
    h = (1 - 2 * parity).to(device=device, dtype=dtype)
    if n <= 64:
        _HADAMARD[key] = h
    return h


def _fwht_low(src: Tensor, dst: Tensor, bits: int) -> Tensor:
    """Unnormalised Walsh-Hadamard over the lowest ``bits`` index bits of each row of ``src``.

    That is ``I ⊗ H_{2^bits}`` on each row (every block of ``2^bits`` consecutive entries
    transformed). ``src`` and ``dst`` are contiguous ``[k, n]`` buffers used in turn; ``src``
    is overwritten. The first ``FWHT_LOW_BITS`` bits are one product with a small Hadamard
    matrix (the butterflies over adjacent entries do not vectorise); the rest are butterfly
    passes ``(a, b) -> (a + b, a - b)`` between the two buffers. Returns the buffer holding
    the result.
    """
    k, n = src.shape
    low = min(bits, FWHT_LOW_BITS)
    h = 1
    if low >= 2:
        h = 1 << low
        torch.matmul(src.view(-1, h), hadamard(h, src.dtype, src.device), out=dst.view(-1, h))
        src, dst = dst, src
    while h < 1 << bits:
        a = src.view(k, n // (2 * h), 2, h)
        o = dst.view(k, n // (2 * h), 2, h)
        torch.add(a[:, :, 0], a[:, :, 1], out=o[:, :, 0])
        torch.sub(a[:, :, 0], a[:, :, 1], out=o[:, :, 1])
        src, dst = dst, src
        h *= 2
    return src


def _chunk_rows(n: int, dtype: torch.dtype) -> int:
    """Rows of length ``n`` per FWHT batch (about ``FWHT_CHUNK_BYTES``, at least one)."""
    return max(1, FWHT_CHUNK_BYTES // (n * torch.empty((), dtype=dtype).element_size()))


def fwht(x: Tensor) -> Tensor:
    """The orthonormal fast Walsh-Hadamard transform of each row, ``[m, n] -> [m, n]``.

    ``n`` must be a power of two. Sylvester ordering (``H_2n = [[H, H], [H, -H]] / sqrt 2``),
    so the transform is symmetric and its own inverse. A few rows at a time (about
    ``FWHT_CHUNK_BYTES`` of them, so that the passes stay in cache): the lowest
    ``FWHT_LOW_BITS`` bits as one product with ``H_16``, then one butterfly pass per
    remaining bit between two reused buffers; the input is not modified. ``O(m n log n)``.
    """
    m, n = x.shape
    if n < 1 or n & (n - 1):
        raise ValueError(f"fwht needs a power-of-two length, got {n}")
    bits = n.bit_length() - 1
    out = torch.empty_like(x)
    chunk = _chunk_rows(n, x.dtype)
    buffers = torch.empty(2, min(chunk, m), n, dtype=x.dtype, device=x.device)
    for start in range(0, m, chunk):
        k = min(chunk, m - start)
        src, dst = buffers[0, :k], buffers[1, :k]  # [k, n] each, contiguous
        src.copy_(x[start : start + k])
        out[start : start + k] = _fwht_low(src, dst, bits)
    return out.mul_(1.0 / math.sqrt(n))


class SRHTSketch(Sketch):
    """Subsampled randomized Hadamard transform ``S = sqrt(d'/b) P H D`` (``x`` zero-padded).

    ``D``: ``d'`` random signs; ``H``: orthonormal Walsh-Hadamard of size ``d' = 2^ceil(log2 d)``;
    ``P``: ``b`` of the ``d'`` rows, drawn without replacement. ``E[P^T P] = (b/d') I`` makes
    ``E[S^T S] = D H H D = I``; with ``b = d' = d`` the operator is orthogonal (``S^T S = I``).

    Computation: ``H_{d'} = H_{2^s} ⊗ H_L`` (``L = d' / 2^s``, Sylvester ordering), so the
    sketch transforms every block of ``L`` entries (``_fwht_low``) and then computes only the
    ``b`` kept outputs, ``y_p = sum_q H_{2^s}[p // L, q] z[q L + p % L]`` (``2^s b`` products
    instead of ``s`` full passes; ``s`` is chosen so that ``2^s b <= d' / 4``, at most
    ``FWHT_GATHER_BITS``). The de-sketch is the transpose: the ``b`` inputs are spread with
    ``H_{2^s}`` first, then the block transforms.

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
        bits = self.padded.bit_length() - 1
        spare = max(0, (self.padded // (4 * self.b)).bit_length() - 1)  # 2^s b <= d' / 4
        self.gather_bits = min(FWHT_GATHER_BITS, bits, spare)  # s
        self.block = self.padded >> self.gather_bits  # L
        self._cache: tuple[tuple[torch.dtype, str], tuple[Tensor, ...]] | None = None

    def _consts(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(signs ``[d]``, kept block offsets ``[b]``, coefficients ``[2^s, b]``) for ``like``.

        ``coef[q, j] = H_{2^s}[rows_j // L, q] * sqrt(d'/b) / sqrt(d')``: the kept output's
        last passes with the sketch's whole scale folded in.
        """
        key = (like.dtype, str(like.device))
        if self._cache is None or self._cache[0] != key:
            g = 1 << self.gather_bits
            h = hadamard(g, torch.float64)[:, self.rows // self.block]  # [2^s, b]
            coef = h * (self.scale / math.sqrt(self.padded))
            self._cache = (key, (self.signs[: self.d].to(like),
                                 (self.rows % self.block).to(like.device),
                                 coef.to(like)))
        signs, offsets, coef = self._cache[1]
        return signs, offsets, coef

    def _chunked(self, x: Tensor, width: int
                 ) -> tuple[Tensor, Iterator[tuple[slice, Tensor, Tensor]]]:
        """``out`` ``[m, width]``, and per chunk of ``x``'s rows ``(rows, src, dst)``: two
        ``[k, d']`` work buffers."""
        m, n = x.shape[0], self.padded
        out = torch.empty(m, width, dtype=x.dtype, device=x.device)
        chunk = _chunk_rows(n, x.dtype)
        buffers = torch.empty(2, min(chunk, m), n, dtype=x.dtype, device=x.device)

        def chunks() -> Iterator[tuple[slice, Tensor, Tensor]]:
            for start in range(0, m, chunk):
                k = min(chunk, m - start)
                yield slice(start, start + k), buffers[0, :k], buffers[1, :k]

        return out, chunks()

    def _sketch(self, x: Tensor) -> Tensor:
        g, low = 1 << self.gather_bits, self.padded.bit_length() - 1 - self.gather_bits
        signs, offsets, coef = self._consts(x)
        out, chunks = self._chunked(x, self.b)  # [m, b]
        for rows, src, dst in chunks:
            torch.mul(x[rows], signs, out=src[:, : self.d])
            src[:, self.d :].zero_()
            z = _fwht_low(src, dst, low)
            picked = z.view(-1, g, self.block).index_select(2, offsets)  # [k, 2^s, b]
            torch.sum(picked.mul_(coef), dim=1, out=out[rows])
        return out

    def _desketch(self, y: Tensor) -> Tensor:
        g, low = 1 << self.gather_bits, self.padded.bit_length() - 1 - self.gather_bits
        signs, offsets, coef = self._consts(y)
        out, chunks = self._chunked(y, self.d)  # [m, d]
        for rows, src, dst in chunks:
            src.zero_()
            spread = coef * y[rows, None, :]  # [k, 2^s, b]
            src.view(-1, g, self.block).index_add_(2, offsets, spread)
            z = _fwht_low(src, dst, low)
            torch.mul(z[:, : self.d], signs, out=out[rows])
        return out


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
        self._csr: dict[tuple[torch.dtype, str], list[tuple[int, int, Tensor]]] = {}  # S
        self._csr_t: dict[tuple[torch.dtype, str], Tensor] = {}  # S^T as CSR
        self._gather: tuple[tuple[torch.dtype, str], tuple[Tensor, Tensor]] | None = None

    @property
    def width(self) -> int:
        return self.r * self.c

    def _sketch_blocks(self, dtype: torch.dtype,
                       device: torch.device) -> list[tuple[int, int, Tensor]]:
        """``S`` cut into column blocks ``(c0, c1, S[:, c0:c1] as CSR [r c, c1 - c0])``.

        Built directly, without a transposition: in a block, a stable sort of the flat bucket
        indices (row-major ``[r, cols]``; the hash rows' bucket ranges do not overlap) orders
        the entries by bucket, then by coordinate, which is CSR order. The product is done
        block by block so that the block of ``x`` it reads at random stays in cache. Cached
        per dtype/device.
        """
        key = (dtype, str(device))
        if key not in self._csr:
            blocks = []
            signs = self.signs.to(dtype) * self.scale  # [r, d]
            for c0 in range(0, self.d, COUNT_BLOCK_COLS):
                c1 = min(self.d, c0 + COUNT_BLOCK_COLS)
                flat = self.flat[:, c0:c1].reshape(-1)  # [r (c1 - c0)]
                order = torch.argsort(flat, stable=True)  # by bucket, then coordinate
                col = order % (c1 - c0)
                val = signs[:, c0:c1].reshape(-1)[order]
                crow = torch.zeros(self.width + 1, dtype=torch.int64)
                torch.cumsum(torch.bincount(flat, minlength=self.width), 0, out=crow[1:])
                with warnings.catch_warnings():  # CSR support is "beta" in torch
                    warnings.simplefilter("ignore")
                    block = torch.sparse_csr_tensor(crow, col, val, (self.width, c1 - c0))
                blocks.append((c0, c1, block.to(device)))
            self._csr[key] = blocks
        return self._csr[key]

    def _transpose_csr(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``S^T`` as a sparse CSR ``[d, r c]`` (``r`` entries a row, in increasing column)."""
        key = (dtype, str(device))
        if key not in self._csr_t:
            crow = torch.arange(0, self.r * self.d + 1, self.r)  # [d + 1]
            col = self.flat.T.reshape(-1)  # [d r], increasing within a row (offsets j c)
            val = self.signs.T.reshape(-1).to(dtype) * self.scale
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                st = torch.sparse_csr_tensor(crow, col, val, (self.d, self.width))
            self._csr_t[key] = st.to(device)
        return self._csr_t[key]

    def _sketch(self, x: Tensor) -> Tensor:
        out = torch.zeros(self.width, x.shape[0], dtype=x.dtype, device=x.device)  # [r c, m]
        for c0, c1, block in self._sketch_blocks(x.dtype, x.device):
            out += block @ x[:, c0:c1].T
        return out.T.contiguous()  # [m, r c]

    def _desketch(self, y: Tensor) -> Tensor:
        """``S^T y``: ``x_i = (1/sqrt r) sum_j s_j(i) y[h_j(i) + j c]``.

        A gather per hash row for a few rows (the de-sketch of a round's mean), the CSR
        product with ``S^T`` for more.
        """
        if y.shape[0] > GATHER_DESKETCH_ROWS:
            return (self._transpose_csr(y.dtype, y.device) @ y.T).T.contiguous()  # [m, d]
        flat, signs = self._gather_consts(y)
        out = y[:, flat[0]] * signs[0]  # [m, d]
        for j in range(1, self.r):
            out.addcmul_(y[:, flat[j]], signs[j])
        return out

    def _gather_consts(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(flat bucket indices ``[r, d]``, scaled signs ``[r, d]``) on ``like``'s device/dtype."""
        key = (like.dtype, str(like.device))
        if self._gather is None or self._gather[0] != key:
            self._gather = (key, (self.flat.to(like.device),
                                  self.signs.to(like) * self.scale))
        return self._gather[1]

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
