"""Latency and memory of the edge pipeline, per backend and thread count (`malm-edge bench`).

Plain functions returning dicts; the CLI prints them. Latencies are wall-clock medians and 90th
percentiles (milliseconds) after warm-up runs. Peak memory: the process's peak resident set
(`resource.getrusage`, monotonic over the process lifetime) and, for table search, the peak of
Python/numpy allocations inside the search (`tracemalloc`), which shows that chunking bounds it.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from malm_edge.edge.backends import BackendError, load_backend
from malm_edge.edge.bundle import Bundle, TableEntry, read_bundle, size_path
from malm_edge.edge.preprocess import preprocess_image
from malm_edge.edge.retriever import Retriever
from malm_edge.edge.table import (
    DEFAULT_CHUNK_ROWS,
    INT8_FILE,
    SCALES_FILE,
    EmbeddingTable,
    open_bundle_table,
    read_table,
    search_topk,
)
from malm_edge.edge.twostage import TwoStageTable, TwoStageWriter, read_twostage_table

RECIPE1M_ROWS = 1_029_720
DEFAULT_SYNTHETIC_ROWS = (100_000, RECIPE1M_ROWS)


def time_ms(fn: Callable[[], Any], repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """Median and p90 wall-clock latency of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    p90 = samples[min(len(samples) - 1, int(round(0.9 * (len(samples) - 1))))]
    return {"median_ms": statistics.median(samples), "p90_ms": p90, "repeats": repeats}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (ru_maxrss is KB on Linux, B on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def synthetic_table(out_dir: Path, rows: int, dim: int, seed: int = 0,
                    chunk_rows: int = DEFAULT_CHUNK_ROWS) -> EmbeddingTable:
    """Write a random int8 table (rows scaled to unit norm) of `rows` x `dim` in chunks, memmap it.

    Values are drawn directly as int8 (uniform in [-127, 127]) rather than quantized from floats,
    so a 1,029,720-row table takes seconds; search cost does not depend on the values.
    """
    rng = np.random.default_rng(seed)
    with open(out_dir / INT8_FILE, "wb") as values, open(out_dir / SCALES_FILE, "wb") as scales:
        for start in range(0, rows, chunk_rows):
            block = rng.integers(-127, 128, (min(chunk_rows, rows - start), dim), dtype=np.int8)
            norms = np.linalg.norm(block.astype(np.float32), axis=1)  # (C,)
            block.tofile(values)
            (1.0 / np.maximum(norms, 1.0)).astype("<f4").tofile(scales)
    entry = TableEntry(file=INT8_FILE, dtype="int8", rows=rows, dim=dim, sha256="",
                       scales_file=SCALES_FILE, scales_sha256="")
    return read_table(out_dir, entry)


def synthetic_twostage_table(out_dir: Path, rows: int, dim: int, seed: int = 0,
                             chunk_rows: int = DEFAULT_CHUNK_ROWS, query_bits: int = 1) -> TwoStageTable:
    """A random two-stage table (the current two-stage version, the bundle's prefilter weighting) of
    unit rows, written in chunks, memmapped.

    Its search cost does not depend on the values: every code is XOR-ed and counted, and the
    manifest's candidate count (1,000) is rescored whatever the rows.
    """
    rng = np.random.default_rng(seed)
    with TwoStageWriter(out_dir, np.zeros(dim, np.float32), query_bits=query_bits) as writer:
        for start in range(0, rows, chunk_rows):
            block = rng.standard_normal((min(chunk_rows, rows - start), dim), dtype=np.float32)
            writer.append(block / np.linalg.norm(block, axis=1, keepdims=True))
        entry = writer.close()
    return read_twostage_table(out_dir, entry)


def bench_search(table: EmbeddingTable | TwoStageTable, k: int = 5, repeats: int = 10,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, Any]:
    """Latency and peak traced allocation of one top-k query over `table`."""
    query = np.random.default_rng(1).standard_normal(table.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    timing = time_ms(lambda: search_topk(table, query, k, chunk_rows), repeats=repeats, warmup=1)
    tracemalloc.start()
    search_topk(table, query, k, chunk_rows)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table_bytes = table.values.nbytes + (table.scales.nbytes if table.scales is not None else 0)
    table_bytes += table.codes.nbytes if isinstance(table, TwoStageTable) else 0
    return {"rows": table.rows, "dim": table.dim, "dtype": table.dtype, **timing,
            "search_peak_alloc_mb": traced_peak / 2**20, "table_mb": table_bytes / 2**20,
            "bytes_per_recipe": table_bytes / max(table.rows, 1)}


def bench_encoder(bundle: Bundle, entry_name: str, pixels: np.ndarray, threads: int,
                  repeats: int = 20) -> dict[str, Any]:
    """Latency of one encoder entry at one thread count, batch 1."""
    entry = next(e for e in bundle.manifest.encoders if e.name == entry_name)
    backend = load_backend(bundle, entry, threads=threads)
    timing = time_ms(lambda: backend.embed(pixels), repeats=repeats)
    return {"encoder": entry.name, "backend": entry.target, "quantization": entry.quantization,
            "threads": threads, **timing, "size_mb": entry.size_bytes / 2**20}


def bench_end_to_end(bundle: Bundle, entry_name: str, photo: Any, k: int = 5,
                     repeats: int = 20) -> dict[str, Any]:
    """Photo -> top-k recipes (preprocess, encoder, search, catalog lookup), default threads."""
    with Retriever(bundle.root, backend=entry_name) as retriever:
        timing = time_ms(lambda: retriever.search(photo, k), repeats=repeats)
    return {"encoder": entry_name, **timing}


def _sample_photo():
    """A synthetic 640x480 RGB gradient, used when no photo is given."""
    from PIL import Image

    gradient = np.linspace(0, 255, 640 * 480 * 3, dtype=np.float32).reshape(480, 640, 3)
    return Image.fromarray(gradient.astype(np.uint8), mode="RGB")


def run_bench(bundle_dir: str | os.PathLike, *, photo: str | os.PathLike | None = None,
              backends: list[str] | None = None, threads: list[int] | None = None,
              synthetic_rows: tuple[int, ...] = DEFAULT_SYNTHETIC_ROWS, repeats: int = 20,
              k: int = 5, require_signature: str | os.PathLike | None = None) -> dict[str, Any]:
    """Benchmark a bundle: preprocessing, every encoder x thread count, table search sizes.

    `require_signature` (a trusted Ed25519 public key, PEM) refuses an unsigned or wrongly signed bundle.

    Args:
        bundle_dir: The bundle.
        photo: A photo to preprocess (default: a synthetic 640x480 image).
        backends: Targets to include (default: every encoder whose runtime loads here).
        threads: Thread counts (default: 1 and all cores).
        synthetic_rows: Extra random tables to search (at the bundle's dim, in its table format:
            int8 for table version 1, two-stage for versions 2 and 3).
        repeats: Timed runs per measurement.
        k: Top-k.

    Returns:
        {"bundle", "preprocess", "encoders": [...], "search": [...], "skipped": [...],
         "files": {name: bytes}, "peak_rss_mb"}.
    """
    bundle = read_bundle(bundle_dir, require_signature=require_signature)
    pre = bundle.manifest.preprocessing
    source = photo if photo is not None else _sample_photo()
    result: dict[str, Any] = {"bundle": str(bundle.root), "encoders": [], "search": [],
                              "end_to_end": [], "skipped": []}
    result["preprocess"] = time_ms(lambda: preprocess_image(source, pre), repeats=repeats)
    pixels = preprocess_image(source, pre)
    for entry in bundle.manifest.encoders:
        if backends and entry.target not in backends:
            continue
        for count in threads or sorted({1, os.cpu_count() or 1}):
            try:
                result["encoders"].append(bench_encoder(bundle, entry.name, pixels, count, repeats))
            except BackendError as err:
                result["skipped"].append({"encoder": entry.name, "reason": str(err)})
                break
        else:
            result["end_to_end"].append(bench_end_to_end(bundle, entry.name, source, k, repeats))
    quality = bundle.manifest.provenance.get("table_quality") or {}  # measured by convert, against float32
    recall = {name: quality.get(name) for name in ("recall_at_1", "recall_at_10")}
    result["search"].append({"table": "bundle", **bench_search(open_bundle_table(bundle), k), **recall})
    for rows in synthetic_rows:
        with tempfile.TemporaryDirectory(prefix="malm_bench_") as scratch:
            entry = bundle.manifest.table
            if entry.version in (2, 3):
                table = synthetic_twostage_table(Path(scratch), rows, bundle.manifest.embedding_dim,
                                                 query_bits=entry.query_bits or 1)
            else:
                table = synthetic_table(Path(scratch), rows, bundle.manifest.embedding_dim)
            result["search"].append({"table": f"synthetic_{rows}", **bench_search(table, k, 5),
                                     "recall_at_1": None, "recall_at_10": None})
            del table
    files = [e.file for e in bundle.manifest.encoders] + [bundle.manifest.table.file,
                                                          bundle.manifest.catalog.file]
    if bundle.manifest.table.scales_file:
        files.append(bundle.manifest.table.scales_file)
    if bundle.manifest.table.codes_file:
        files.append(bundle.manifest.table.codes_file)
    result["files"] = {name: size_path(bundle.root / name) for name in files}
    result["peak_rss_mb"] = peak_rss_mb()
    return result
