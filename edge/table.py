"""The recipe embedding table: raw files, symmetric per-row int8 quantization, exact top-k search.

Files (little-endian, row-major, no header, so Swift/Kotlin/JS read them with one typed view):

- `table.i8`          int8    [N, D]
- `table.scales.f32`  float32 [N]     row r dequantises as table.i8[r] * scale[r]
- `table.f16`         float16 [N, D]  (alternative to int8 + scales)

Quantization is symmetric per row: scale = max|x| / 127, q = round(x / scale) clipped to
[-127, 127] (an all-zero row gets scale 1 so it stays zero). Scores are cosine similarities of
L2-normalised vectors: int8 path score_r = (q_r . query) * scale_r with float32 accumulation.

Search is exact and chunked: `chunk_rows` rows are scored at a time (numpy einsum, float32
accumulation, the int8 -> float32 cast done in small internal buffers), so extra memory stays near
Q * chunk_rows * 4 bytes for scores for any N, and the table is memory-mapped, never copied.
Ties break towards the lower row index.

That is table format version 1. Versions 2 and 3 (edge/twostage.py: sign-bit prefilter, then 7-bit
or 8-bit rescoring, 116 or 128 bytes a 128-d recipe) are read by the same `read_table` and searched
by the same `search_topk`, which dispatch on the entry's version and the table's type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from malm_edge.edge.bundle import Bundle, BundleError, TableEntry, sha256_path
from malm_edge.edge.staged_files import StagedFiles
from malm_edge.edge.twostage import TwoStageTable, read_twostage_table, search_twostage

INT8_FILE = "table.i8"
SCALES_FILE = "table.scales.f32"
FLOAT16_FILE = "table.f16"
FLOAT32_FILE = "table.f32"
_NUMPY_DTYPES = {"int8": np.dtype("<i1"), "float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
_FILES = {"int8": INT8_FILE, "float16": FLOAT16_FILE, "float32": FLOAT32_FILE}
DEFAULT_CHUNK_ROWS = 65536


def quantize_rows_int8(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantization.

    Args:
        matrix: (N, D) float array.

    Returns:
        (int8 (N, D), float32 scales (N,)) with matrix ~= int8 * scales[:, None].
    """
    matrix = np.asarray(matrix, dtype=np.float32)  # (N, D)
    peak = np.abs(matrix).max(axis=1) if matrix.size else np.zeros(len(matrix), np.float32)  # (N,)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)  # (N,)
    quantized = np.clip(np.rint(matrix / scales[:, None]), -127, 127).astype(np.int8)  # (N, D)
    return quantized, scales


@dataclass
class EmbeddingTable:
    """A (memory-mapped) embedding table.

    Attributes:
        values: (N, D) int8, float16 or float32 array, usually an np.memmap.
        scales: (N,) float32 per-row scales for int8, else None.
    """

    values: np.ndarray
    scales: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    @property
    def dtype(self) -> str:
        return {np.int8: "int8", np.float16: "float16", np.float32: "float32"}[self.values.dtype.type]

    def dequantize(self) -> np.ndarray:
        """The whole table as float32 (N, D); for tests and small tables only."""
        dense = self.values.astype(np.float32)
        return dense * self.scales[:, None] if self.scales is not None else dense


class TableWriter:
    """Streams a table to disk chunk by chunk (a 1,029,720-row table never sits in memory).

    Files are written under temporary names and renamed into place by `close`.

    Args:
        out_dir: Folder to write into (usually the bundle folder).
        dim: Embedding width D.
        dtype: "int8" (with per-row scales), "float16" or "float32".
    """

    def __init__(self, out_dir: str | os.PathLike, dim: int, dtype: str = "int8") -> None:
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(f"table dtype {dtype!r}, expected one of {list(_NUMPY_DTYPES)}")
        self.out_dir, self.dim, self.dtype, self.rows = Path(out_dir), dim, dtype, 0
        self._files = StagedFiles(self.out_dir, [_FILES[dtype]] + ([SCALES_FILE] if dtype == "int8" else []))

    def append(self, rows: np.ndarray) -> None:
        """Append (C, D) float rows (quantized here for int8)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"rows of shape {rows.shape}, expected (C, {self.dim})")
        with self._files.guard():
            if self.dtype == "int8":
                quantized, scales = quantize_rows_int8(rows)
                self._files.write(0, quantized.tobytes())
                self._files.write(1, scales.astype("<f4").tobytes())
            else:
                self._files.write(0, rows.astype(_NUMPY_DTYPES[self.dtype]).tobytes())
        self.rows += len(rows)

    def close(self) -> TableEntry:
        """Flush, rename into place and return the manifest entry (with sha256s)."""
        self._files.publish()
        main = self._files.names[0]
        scales = self._files.names[1] if len(self._files.names) > 1 else None
        return TableEntry(file=main, dtype=self.dtype, rows=self.rows, dim=self.dim,
                          sha256=sha256_path(self.out_dir / main), scales_file=scales,
                          scales_sha256=sha256_path(self.out_dir / scales) if scales else None)

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._files.closed:
            if exc[0] is None:
                self.close()
            else:
                self._files.abandon()


def write_table(out_dir: str | os.PathLike, matrix: np.ndarray, dtype: str = "int8",
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> TableEntry:
    """Write a whole (N, D) float matrix as a table; returns its manifest entry."""
    matrix = np.asarray(matrix)
    with TableWriter(out_dir, matrix.shape[1], dtype) as writer:
        for start in range(0, len(matrix), chunk_rows):
            writer.append(matrix[start:start + chunk_rows])
        return writer.close()


def read_table(root: str | os.PathLike, entry: TableEntry) -> EmbeddingTable | TwoStageTable:
    """Memory-map a table described by `entry` under folder `root` (no copy, read-only)."""
    root = Path(root)
    if entry.version in (2, 3):
        return read_twostage_table(root, entry)
    path = root / entry.file
    expected = entry.rows * entry.dim * _NUMPY_DTYPES[entry.dtype].itemsize
    if path.stat().st_size != expected:
        raise BundleError(f"{path}: {path.stat().st_size} bytes, expected {expected}")
    values = _memmap(path, _NUMPY_DTYPES[entry.dtype], (entry.rows, entry.dim))
    scales = None
    if entry.dtype == "int8":
        if not entry.scales_file:
            raise BundleError(f"{path}: int8 table without a scales file")
        scales = _memmap(root / entry.scales_file, np.dtype("<f4"), (entry.rows,))
    return EmbeddingTable(values=values, scales=scales)


def _memmap(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:  # np.memmap refuses empty files
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def open_bundle_table(bundle: Bundle) -> EmbeddingTable | TwoStageTable:
    """Memory-map the table of a validated bundle."""
    return read_table(bundle.root, bundle.manifest.table)


def _topk_of_column(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, ties to the lower index. scores: (C,)."""
    if k < len(scores):
        threshold = scores[np.argpartition(-scores, k - 1)[k - 1]]
        candidates = np.flatnonzero(scores >= threshold)  # may exceed k on ties
    else:
        candidates = np.arange(len(scores))
    order = np.lexsort((candidates, -scores[candidates]))  # primary: score desc, then index asc
    return candidates[order[:k]]


def _merge(best_idx: np.ndarray, best_score: np.ndarray, idx: np.ndarray, score: np.ndarray,
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge two candidate lists for one query, keep the k best (score desc, index asc)."""
    all_idx = np.concatenate([best_idx, idx])
    all_score = np.concatenate([best_score, score])
    order = np.lexsort((all_idx, -all_score))[:k]
    return all_idx[order], all_score[order]


def search_topk(table: EmbeddingTable | TwoStageTable, query: np.ndarray, k: int = 5,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product over the table, chunked (two-stage for a v2 table).

    Args:
        table: The (memory-mapped) table; a `TwoStageTable` is searched by edge/twostage.py.
        query: (D,) or (Q, D) float query embeddings (L2-normalised for cosine scores).
        k: Results per query (clipped to the table size).
        chunk_rows: Rows scored at once; bounds memory (Q * chunk_rows float32 scores).

    Returns:
        (indices, scores): int64 and float32, shape (k,) for a (D,) query, (Q, k) for (Q, D);
        best first, ties broken towards the lower row index.
    """
    if isinstance(table, TwoStageTable):
        return search_twostage(table, query, k, chunk_rows=chunk_rows)
    single = np.ndim(query) == 1
    queries = np.atleast_2d(np.asarray(query, dtype=np.float32))  # (Q, D)
    if queries.shape[1] != table.dim:
        raise ValueError(f"query dim {queries.shape[1]} != table dim {table.dim}")
    if not np.isfinite(queries).all():
        raise ValueError("query embedding holds NaN or infinity (a broken encoder output?)")
    k = max(0, min(int(k), table.rows))
    n_queries = len(queries)
    best_idx = [np.empty(0, np.int64) for _ in range(n_queries)]
    best_score = [np.empty(0, np.float32) for _ in range(n_queries)]
    for start in range(0, table.rows if k else 0, chunk_rows):
        stop = min(start + chunk_rows, table.rows)
        # einsum casts int8/float16 to float32 in small buffers: no (C, D) float32 copy of the
        # chunk, and 3-4x faster than astype + BLAS here (memory-bound).
        scores = np.einsum("cd,qd->cq", table.values[start:stop], queries)  # (C, Q) float32
        if table.scales is not None:
            scores *= np.asarray(table.scales[start:stop], dtype=np.float32)[:, None]
        for q in range(n_queries):
            local = _topk_of_column(scores[:, q], k)  # (<=k,)
            best_idx[q], best_score[q] = _merge(best_idx[q], best_score[q], local + start,
                                                scores[local, q], k)
    indices = np.stack(best_idx).astype(np.int64) if n_queries else np.empty((0, k), np.int64)
    values = np.stack(best_score).astype(np.float32) if n_queries else np.empty((0, k), np.float32)
    return (indices[0], values[0]) if single else (indices, values)
