"""The two-stage recipe table: a sign-bit prefilter, then rescoring of the candidates.

Table format v3 (written by `TwoStageWriter`; encodings in edge/table_codes.py), little-endian,
row-major, no header:

- `table.sign.u64`  uint64 [N, W]  W = ceil(D / 64) words of sign bits of r = x - c
- `table.i8n`       uint8  [N, ceil(D / 2) + ceil(D / 4) + ceil(D / 8)]  the 7-bit magnitudes |v|
                    of the 8-bit rescoring values v in -127..127 (their signs are the sign bits)

and in the manifest's table entry: `version` 3, `dtype` "int8n", `centre` (D integers c8 in
-127..127), `centre_scale` (c = centre_scale * c8), `candidates` (how many rows the prefilter
keeps) and `query_bits` (the prefilter's query weights, 1..4; absent: 1, plain Hamming). No
per-row scale is stored: each row's is implied by its unit length. For D = 128: 16 + 112 = 128
bytes a recipe.

Table format v2 (still read, and written with `version=2`): `table.i7` holds 6-bit magnitudes (7-bit
values, 96 bytes for D = 128), `table.scales.f32` a float32 scale per row, and `centre` D floats:
116 bytes a recipe.

Search, one query q (the same steps in edge/native and mobile_demo):
1. Distance of every row's code to the code of x = q - c: with query_bits P = 1 the Hamming
   distance (popcount of XOR); with P >= 2 the XOR weighed by x's P-bit magnitudes,
   sum_k 2^k popcount((code_r ^ code_x) & plane_k) (edge/table_codes.py, "Weighted prefilter").
2. Candidates: the C = min(N, max(k, candidates)) rows of smallest distance; at the boundary
   distance, the lower rows (a counting rule, so every implementation keeps the same set).
3. Rescoring, with the int8-quantised query q8 (exact integers, see edge/table_codes.py): v3
   key_r = float64(v_r . q8) * s_r (s_r implied); v2 key_r = float32(v_r . q8) * scale_r; top-k by
   key, ties to the lower row.
4. Reported score: key_r * s_q + c . q, the approximate cosine (float32; implementations
   may differ in its last bits, never in the rows or their order).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from malm_edge.edge.bundle import BundleError, TableEntry, sha256_path
from malm_edge.edge.staged_files import StagedFiles
from malm_edge.edge.table_codes import (
    check_query_bits,
    code_words,
    default_query_bits,
    implied_scales,
    magnitude8_bytes,
    magnitude_bytes,
    quantize_centre,
    quantize_query_int8,
    quantize_rows_int7,
    quantize_rows_int8n,
    query_weights,
    sign_codes,
    unpack_int7,
    unpack_int8n,
    weight_planes,
)

TABLE_VERSION = 3
TWOSTAGE_VERSIONS = (2, 3)
DTYPES = {2: "int7", 3: "int8n"}
CODES_FILE = "table.sign.u64"
INT7_FILE = "table.i7"
INT8N_FILE = "table.i8n"
SCALES_FILE = "table.scales.f32"
DEFAULT_CANDIDATES = 1000
PREFILTER_CHUNK_ROWS = 1 << 14  # 256 KiB of 128-bit codes: the XOR buffers stay in L2
UNIT_TOLERANCE = 1e-3  # how far from length 1 a version 3 row may be


@dataclass
class TwoStageTable:
    """A memory-mapped two-stage table (version 2 or 3).

    Attributes:
        codes: (N, W) uint64 sign codes.
        values: (N, B) uint8 magnitude planes (B = magnitude8_bytes(D) in v3, magnitude_bytes(D) in v2).
        scales: (N,) float32 per-row scales (v2), None (v3: implied).
        centre: (D,) float32 centre row.
        candidates: Rows kept by the prefilter (at least k are always kept).
        version: Table format version, 2 or 3.
        centre8: (D,) int64 quantised centre (v3), None (v2).
        centre_scale: centre = centre_scale * centre8 (v3), None (v2).
        query_bits: Bits of the prefilter's query weights: 1 plain Hamming, 2..4 weighted (v3).
    """

    codes: np.ndarray
    values: np.ndarray
    scales: np.ndarray | None
    centre: np.ndarray
    candidates: int = DEFAULT_CANDIDATES
    version: int = TABLE_VERSION
    centre8: np.ndarray | None = None
    centre_scale: float | None = None
    query_bits: int = 1

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centre.shape[0])

    @property
    def dtype(self) -> str:
        return DTYPES[self.version]

    @property
    def bytes_per_row(self) -> int:
        return self.codes.shape[1] * 8 + self.values.shape[1] + (4 if self.scales is not None else 0)

    def decode(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((C, D) integer values, (C,) float64 scales) of `rows`: residual ~= values * scales."""
        if self.version == 2:
            values = unpack_int7(self.values[rows], self.codes[rows], self.dim)  # (C, D) int8
            return values, np.asarray(self.scales[rows], dtype=np.float64)
        values = unpack_int8n(self.values[rows], self.codes[rows], self.dim)  # (C, D) int16
        return values, implied_scales(values, self.centre8, self.centre_scale)

    def dequantize(self) -> np.ndarray:
        """The rescoring rows as float32 (N, D) (centre added back); small tables only."""
        values, scales = self.decode(np.arange(self.rows))
        residual = values.astype(np.float64) * scales[:, None]
        centre = self.centre8 * self.centre_scale if self.version == 3 else self.centre
        return (residual + centre[None, :]).astype(np.float32)


def table_centre(matrix: np.ndarray) -> np.ndarray:
    """(D,) float32 mean of (N, D) rows, accumulated in float64."""
    matrix = np.asarray(matrix)
    return matrix.astype(np.float64).mean(axis=0).astype(np.float32) if len(matrix) else \
        np.zeros(matrix.shape[1], np.float32)


class TwoStageWriter:
    """Streams a two-stage table to disk; files are renamed into place by `close`.

    Args:
        out_dir: Folder to write into.
        centre: (D,) float32 centre, known before the first row (a first pass over the rows).
        candidates: The prefilter's default candidate count, written into the entry.
        version: Table format version: 3 (unit-length rows, 8-bit values, implied scales) or 2.
        query_bits: The prefilter's query weight bits written into a version 3 entry (1: Hamming;
            default: edge/table_codes.py `default_query_bits`).
    """

    def __init__(self, out_dir: str | os.PathLike, centre: np.ndarray,
                 candidates: int = DEFAULT_CANDIDATES, version: int = TABLE_VERSION,
                 query_bits: int | None = None) -> None:
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        if version not in TWOSTAGE_VERSIONS:
            raise ValueError(f"two-stage table version {version}, expected one of {TWOSTAGE_VERSIONS}")
        self.out_dir, self.rows, self.candidates, self.version = Path(out_dir), 0, int(candidates), version
        self.centre = np.asarray(centre, dtype=np.float32)  # (D,)
        if not np.isfinite(self.centre).all():
            raise ValueError("the table centre holds NaN or infinity (a broken recipe tower output?)")
        self.dim = int(self.centre.shape[0])
        bits = default_query_bits(self.dim) if query_bits is None else query_bits
        self.query_bits = check_query_bits(bits, self.dim) if version == 3 else 1
        self.centre8, self.centre_scale = quantize_centre(self.centre) if version == 3 else (None, None)
        self.values_file = INT8N_FILE if version == 3 else INT7_FILE
        names = [self.values_file, CODES_FILE] + ([SCALES_FILE] if version == 2 else [])
        self._files = StagedFiles(self.out_dir, names)

    def append(self, rows: np.ndarray) -> None:
        """Append (C, D) float rows (centred, coded and quantized here; unit length for version 3)."""
        rows = np.asarray(rows, dtype=np.float32)  # (C, D)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows of shape {rows.shape}, expected (C, {self.dim})")
        if not np.isfinite(rows).all():
            raise ValueError("table rows hold NaN or infinity (a broken recipe tower output?)")
        if self.version == 3:
            lengths = np.linalg.norm(rows.astype(np.float64), axis=1)  # (C,)
            worst = int(np.abs(lengths - 1.0).argmax()) if len(rows) else 0
            if len(rows) and abs(lengths[worst] - 1.0) > UNIT_TOLERANCE:
                raise ValueError(f"table version 3 needs unit-length rows (L2-normalised embeddings); row "
                                 f"{self.rows + worst} has length {lengths[worst]:.4g}")
            residuals = rows.astype(np.float64) - (self.centre8 * self.centre_scale)[None, :]  # (C, D)
            packed, scales = quantize_rows_int8n(residuals), None
        else:
            residuals = rows - self.centre[None, :]  # (C, D)
            packed, scales = quantize_rows_int7(residuals)  # (C, B), (C,)
        with self._files.guard():
            self._files.write(0, packed.tobytes())
            self._files.write(1, sign_codes(residuals).astype("<u8").tobytes())
            if scales is not None:
                self._files.write(2, scales.astype("<f4").tobytes())
        self.rows += len(rows)

    def close(self) -> TableEntry:
        """Flush, rename into place and return the manifest entry (with sha256s)."""
        self._files.publish()
        common = dict(file=self.values_file, dtype=DTYPES[self.version], rows=self.rows, dim=self.dim,
                      sha256=sha256_path(self.out_dir / self.values_file), version=self.version,
                      codes_file=CODES_FILE, codes_sha256=sha256_path(self.out_dir / CODES_FILE),
                      candidates=self.candidates)
        if self.version == 3:
            return TableEntry(**common, centre=[int(v) for v in self.centre8], centre_scale=self.centre_scale,
                              query_bits=self.query_bits)
        return TableEntry(**common, centre=[float(v) for v in self.centre], scales_file=SCALES_FILE,
                          scales_sha256=sha256_path(self.out_dir / SCALES_FILE))

    def __enter__(self) -> "TwoStageWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._files.closed:
            if exc[0] is None:
                self.close()
            else:
                self._files.abandon()


def write_twostage_table(out_dir: str | os.PathLike, matrix: np.ndarray,
                         candidates: int = DEFAULT_CANDIDATES,
                         chunk_rows: int = PREFILTER_CHUNK_ROWS, version: int = TABLE_VERSION,
                         query_bits: int | None = None) -> TableEntry:
    """Write a whole (N, D) float matrix as a two-stage table; returns its manifest entry."""
    matrix = np.asarray(matrix)
    with TwoStageWriter(out_dir, table_centre(matrix), candidates, version, query_bits) as writer:
        for start in range(0, len(matrix), chunk_rows):
            writer.append(matrix[start:start + chunk_rows])
        return writer.close()


def _memmap(path: Path, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if path.stat().st_size != expected:
        raise BundleError(f"{path}: {path.stat().st_size} bytes, expected {expected}")
    if shape[0] == 0:  # np.memmap refuses empty files
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def read_twostage_table(root: str | os.PathLike, entry: TableEntry) -> TwoStageTable:
    """Memory-map a v2 or v3 table described by `entry` under folder `root` (no copy, read-only)."""
    root = Path(root)
    complete = entry.codes_file and entry.centre and (entry.scales_file if entry.version == 2 else entry.centre_scale)
    if entry.version not in TWOSTAGE_VERSIONS or not complete:
        raise BundleError(f"{root / entry.file}: not a complete two-stage table entry (version {entry.version})")
    codes = _memmap(root / entry.codes_file, "<u8", (entry.rows, code_words(entry.dim)))
    candidates = int(entry.candidates or DEFAULT_CANDIDATES)
    if entry.version == 2:
        values = _memmap(root / entry.file, "u1", (entry.rows, magnitude_bytes(entry.dim)))
        return TwoStageTable(codes=codes, values=values, scales=_memmap(root / entry.scales_file, "<f4", (entry.rows,)),
                             centre=np.asarray(entry.centre, dtype=np.float32), candidates=candidates, version=2)
    centre8 = np.asarray(entry.centre, dtype=np.int64)  # (D,)
    values = _memmap(root / entry.file, "u1", (entry.rows, magnitude8_bytes(entry.dim)))
    centre = (centre8 * entry.centre_scale).astype(np.float32)  # (D,)
    return TwoStageTable(codes=codes, values=values, scales=None, centre=centre, candidates=candidates, version=3,
                         centre8=centre8, centre_scale=float(entry.centre_scale),
                         query_bits=check_query_bits(1 if entry.query_bits is None else entry.query_bits, entry.dim))


def prefilter_distances(codes: np.ndarray, query_code: np.ndarray, planes: np.ndarray | None = None,
                        chunk_rows: int = PREFILTER_CHUNK_ROWS) -> np.ndarray:
    """(N,) distances of (N, W) codes to a (W,) query code, chunked.

    Hamming, popcount(codes[r] ^ query_code), without `planes`; with (P, W) weight planes
    (edge/table_codes.py `weight_planes`) the weighted distance
    sum_k 2^k popcount((codes[r] ^ query_code) & planes[k]). uint8 distances up to 255, uint16 up to
    65,535, uint32 above.

    The query code is tiled to the chunk's shape: a contiguous XOR runs 2-3x faster in numpy than
    one broadcast over a length-W inner axis.
    """
    rows, words = codes.shape
    if planes is not None and words == 2 and sys.byteorder == "little":
        return _weighted_distances_128(codes, query_code, planes, chunk_rows)
    chunk_rows = max(1, min(chunk_rows, rows))
    flat = np.asarray(codes).reshape(-1)  # (N W,), a view of the memmap
    tiled = np.tile(np.asarray(query_code, dtype=codes.dtype), chunk_rows)  # (C W,)
    planes = [] if planes is None else [np.tile(np.asarray(p, dtype=codes.dtype), chunk_rows) for p in planes]
    most = words * 64 * ((1 << len(planes)) - 1 if planes else 1)
    dtype = np.uint8 if most <= 255 else np.uint16 if most <= 65535 else np.uint32
    xored = np.empty(chunk_rows * words, codes.dtype)  # (C W,)
    masked = np.empty_like(xored) if planes else xored  # (C W,)
    counts = np.empty(chunk_rows * words, np.uint8)  # (C W,)
    plane_sum = np.empty(chunk_rows, dtype)  # (C,)
    distances = np.empty(rows, dtype)  # (N,)
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start) * words
        out = distances[start:start + n // words]
        np.bitwise_xor(flat[start * words:start * words + n], tiled[:n], out=xored[:n])
        for weight, plane in enumerate(planes or [None]):
            if plane is not None:
                np.bitwise_and(xored[:n], plane[:n], out=masked[:n])
            np.bitwise_count(masked[:n], out=counts[:n])
            total = out if weight == 0 else plane_sum[:len(out)]  # this plane's count per row
            np.copyto(total, counts[0:n:words], casting="unsafe")
            for word in range(1, words):
                np.add(total, counts[word:n:words], out=total, casting="unsafe")
            if weight:  # plane k counts 2^k
                np.left_shift(total, weight, out=total)
                np.add(out, total, out=out)
    return distances


def _weighted_distances_128(codes: np.ndarray, query_code: np.ndarray, planes: np.ndarray,
                            chunk_rows: int) -> np.ndarray:
    """`prefilter_distances` of 2-word codes (65..128 dims, the phone's case) with weight planes.

    Every pass is contiguous: the P masked copies of a chunk are counted in one call, and each
    row's two word counts of plane k, read as one uint16, are added as its low and high byte.
    """
    rows, bits = codes.shape[0], len(planes)
    chunk_rows = max(1, min(chunk_rows, rows))
    flat = np.asarray(codes).reshape(-1)  # (2 N,)
    tiled = np.tile(np.asarray(query_code, np.uint64), chunk_rows)  # (2 C,)
    tiled_planes = [np.tile(np.asarray(p, np.uint64), chunk_rows) for p in planes]  # P x (2 C,)
    xored = np.empty(2 * chunk_rows, np.uint64)  # (2 C,)
    masked = np.empty((bits, 2 * chunk_rows), np.uint64)  # (P, 2 C)
    counts = np.empty((bits, 2 * chunk_rows), np.uint8)  # (P, 2 C)
    plane_sums = np.empty((bits, chunk_rows), np.uint16)  # (P, C)
    high = np.empty((bits, chunk_rows), np.uint16)  # (P, C)
    distances = np.empty(rows, np.uint16)  # (N,)
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        np.bitwise_xor(flat[2 * start:2 * (start + n)], tiled[:2 * n], out=xored[:2 * n])
        for k in range(bits):
            np.bitwise_and(xored[:2 * n], tiled_planes[k][:2 * n], out=masked[k, :2 * n])
        np.bitwise_count(masked[:, :2 * n], out=counts[:, :2 * n])
        pairs = counts.view(np.uint16)[:, :n]  # (P, n): word 0's count + 256 x word 1's
        np.right_shift(pairs, 8, out=high[:, :n])
        np.bitwise_and(pairs, 0xFF, out=plane_sums[:, :n])
        np.add(plane_sums[:, :n], high[:, :n], out=plane_sums[:, :n])  # (P, n) plane counts
        out = distances[start:start + n]
        np.copyto(out, plane_sums[0, :n])
        for k in range(1, bits):  # plane k counts 2^k
            np.left_shift(plane_sums[k, :n], k, out=plane_sums[k, :n])
            np.add(out, plane_sums[k, :n], out=out)
    return distances


def query_prefilter(table: TwoStageTable, query: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The (W,) sign code of x = query - centre and, for query_bits >= 2, its (P, W) weight planes."""
    residual = (np.asarray(query, dtype=np.float32) - table.centre)  # (D,) float32
    code = sign_codes(residual[None, :])[0]  # (W,)
    if table.query_bits == 1:
        return code, None
    return code, weight_planes(query_weights(residual, table.query_bits), table.query_bits)


def prefilter(distances: np.ndarray, n_keep: int) -> np.ndarray:
    """Rows of the `n_keep` smallest distances, the lower rows at the boundary; sorted ascending.

    distances: (N,) small non-negative integers. Returns (n_keep,) int64.
    """
    if n_keep >= len(distances):
        return np.arange(len(distances), dtype=np.int64)
    low, high = 0, int(distances.max())  # the n_keep-th smallest distance, by bisection: a few
    while low < high:  # vectorised counts beat np.partition on many equal small integers
        middle = (low + high) // 2
        if np.count_nonzero(distances <= middle) >= n_keep:
            high = middle
        else:
            low = middle + 1
    boundary = low
    below = np.flatnonzero(distances < boundary)  # (< n_keep,)
    at = np.flatnonzero(distances == boundary)[:n_keep - len(below)]
    return np.sort(np.concatenate([below, at])).astype(np.int64)


def rescore(table: TwoStageTable, rows: np.ndarray, query8: np.ndarray) -> np.ndarray:
    """(C,) keys of candidate `rows` (exact integer dots): v3 float64(v_r . q8) * s_r (implied),
    v2 float32(v_r . q8) * scale_r."""
    values, scales = table.decode(rows)  # (C, D), (C,)
    dots = values.astype(np.float64) @ query8  # (C,) integers, exact in float64 in any order
    if table.version == 2:
        return dots.astype(np.float32) * scales.astype(np.float32)
    return dots * scales


def search_one(table: TwoStageTable, query: np.ndarray, k: int, candidates: int | None = None,
               chunk_rows: int = PREFILTER_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage top-k of one (D,) float32 query: ((k,) int64 rows, (k,) float32 scores)."""
    k = max(0, min(int(k), table.rows))
    if k == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    n_keep = min(table.rows, max(k, int(candidates or table.candidates)))
    query_code, planes = query_prefilter(table, query)  # (W,), (P, W) or None
    rows = prefilter(prefilter_distances(table.codes, query_code, planes, chunk_rows), n_keep)  # (C,)
    query8, query_scale = quantize_query_int8(query)  # (D,) float64 integers, ()
    keys = rescore(table, rows, query8)  # (C,)
    order = np.lexsort((rows, -keys))[:k]  # key descending, then row ascending
    offset = np.float32(np.dot(table.centre, query))
    return rows[order], (keys[order].astype(np.float32) * query_scale + offset).astype(np.float32)


def search_twostage(table: TwoStageTable, query: np.ndarray, k: int = 5,
                    candidates: int | None = None,
                    chunk_rows: int = PREFILTER_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Two-stage top-k of (D,) or (Q, D) queries; shapes and order as edge/table.py search_topk.

    Args:
        table: The two-stage table.
        query: (D,) or (Q, D) float query embeddings (L2-normalised).
        k: Results per query (clipped to the table size).
        candidates: Rows kept by the prefilter (default: the table's own, from the manifest).
        chunk_rows: Rows XOR-ed and counted at once.

    Returns:
        (indices, scores): int64 and float32, (k,) or (Q, k), best first, ties to the lower row.
    """
    single = np.ndim(query) == 1
    queries = np.atleast_2d(np.asarray(query, dtype=np.float32))  # (Q, D)
    if queries.shape[1] != table.dim:
        raise ValueError(f"query dim {queries.shape[1]} != table dim {table.dim}")
    if not np.isfinite(queries).all():
        raise ValueError("query embedding holds NaN or infinity (a broken encoder output?)")
    found = [search_one(table, q, k, candidates, chunk_rows) for q in queries]
    width = max(0, min(int(k), table.rows))
    indices = np.stack([f[0] for f in found]) if found else np.empty((0, width), np.int64)
    scores = np.stack([f[1] for f in found]) if found else np.empty((0, width), np.float32)
    return (indices[0], scores[0]) if single else (indices, scores)
