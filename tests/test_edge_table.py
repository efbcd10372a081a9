"""edge/table.py: int8 quantization, raw files, memory-mapped exact top-k against a float reference."""

from __future__ import annotations

import numpy as np
import pytest

from malm_edge.edge.bundle import sha256_path
from malm_edge.edge.table import (
    EmbeddingTable,
    TableWriter,
    quantize_rows_int8,
    read_table,
    search_topk,
    write_table,
)


def _unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _naive_topk(matrix: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 scores, full stable sort (score desc, then index asc)."""
    scores = matrix.astype(np.float64) @ query.astype(np.float64)  # (N,)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return np.array(order), scores[order]


def test_quantize_rows_int8_is_symmetric_per_row() -> None:
    matrix = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -0.5]], np.float32)
    quantized, scales = quantize_rows_int8(matrix)
    assert quantized.dtype == np.int8 and scales.dtype == np.float32
    np.testing.assert_allclose(scales, [1.0 / 127, 1.0, 2.0 / 127], rtol=1e-6)
    assert quantized[0].tolist() == [64, -127, 32]  # round(0.5 * 127) = 64 (63.5 rounds to even)
    assert quantized[1].tolist() == [0, 0, 0]
    assert np.abs(quantized).max() == 127
    np.testing.assert_allclose(quantized * scales[:, None], matrix, atol=scales.max() / 2 + 1e-7)


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_write_read_round_trip_is_memory_mapped_little_endian(tmp_path, dtype) -> None:
    matrix = _unit_rows(300, 24, seed=1)
    entry = write_table(tmp_path, matrix, dtype=dtype, chunk_rows=64)
    assert (entry.rows, entry.dim, entry.dtype) == (300, 24, dtype)
    assert entry.sha256 == sha256_path(tmp_path / entry.file)
    table = read_table(tmp_path, entry)
    assert isinstance(table.values, np.memmap)
    raw = np.fromfile(tmp_path / entry.file, dtype="<i1" if dtype == "int8" else "<f2")
    assert raw.size == 300 * 24
    np.testing.assert_array_equal(np.asarray(table.values).reshape(-1), raw)
    if dtype == "int8":
        assert entry.scales_file == "table.scales.f32"
        scales = np.fromfile(tmp_path / entry.scales_file, dtype="<f4")
        np.testing.assert_array_equal(np.asarray(table.scales), scales)
        expected, _ = quantize_rows_int8(matrix)
        np.testing.assert_array_equal(np.asarray(table.values), expected)
    else:
        assert entry.scales_file is None
        np.testing.assert_array_equal(np.asarray(table.values), matrix.astype(np.float16))


def test_streaming_writer_equals_whole_write(tmp_path) -> None:
    matrix = _unit_rows(250, 8, seed=2)
    whole = write_table(tmp_path / "whole", matrix)
    with TableWriter(tmp_path / "stream", 8) as writer:
        for start in (0, 7, 100, 199):
            stop = {0: 7, 7: 100, 100: 199, 199: 250}[start]
            writer.append(matrix[start:stop])
        streamed = writer.close()
    assert (streamed.sha256, streamed.scales_sha256) == (whole.sha256, whole.scales_sha256)
    assert not list((tmp_path / "stream").glob(".*.tmp"))


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_topk_identical_to_exact_search_on_the_dequantised_table(tmp_path, dtype) -> None:
    matrix = _unit_rows(1000, 32, seed=3)
    table = read_table(tmp_path, write_table(tmp_path, matrix, dtype=dtype))
    dense = table.dequantize()  # exactly what the file stores, as float32
    queries = _unit_rows(20, 32, seed=4)
    indices, scores = search_topk(table, queries, k=10, chunk_rows=128)
    assert indices.shape == scores.shape == (20, 10)
    for q, query in enumerate(queries):
        expected_idx, expected_scores = _naive_topk(dense, query, 10)
        np.testing.assert_array_equal(indices[q], expected_idx)
        np.testing.assert_allclose(scores[q], expected_scores, atol=1e-5)


def test_int8_recall_against_the_original_float_table(tmp_path) -> None:
    """Quantization changes the table, so top-k vs the float32 original is a recall, not identity."""
    matrix = _unit_rows(2000, 64, seed=5)
    table = read_table(tmp_path, write_table(tmp_path, matrix))
    queries = matrix[:50] + 0.3 * _unit_rows(50, 64, seed=6)  # noisy copies, so rank 1 is meaningful
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    found, _ = search_topk(table, queries, k=10)
    recall1 = np.mean([found[q, 0] == _naive_topk(matrix, queries[q], 1)[0][0] for q in range(50)])
    recall10 = np.mean([len(set(found[q]) & set(_naive_topk(matrix, queries[q], 10)[0])) / 10
                        for q in range(50)])
    print(f"int8 vs float32: recall@1 {recall1:.3f}, recall@10 {recall10:.3f}")
    assert recall1 >= 0.98 and recall10 >= 0.9


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 999, 1000, 5000])
def test_chunked_equals_unchunked(tmp_path, chunk_rows) -> None:
    table = read_table(tmp_path, write_table(tmp_path, _unit_rows(1000, 16, seed=7)))
    query = _unit_rows(1, 16, seed=8)[0]
    reference = search_topk(table, query, k=25, chunk_rows=10**9)
    chunked = search_topk(table, query, k=25, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(chunked[0], reference[0])
    # BLAS may sum a 1-row chunk in another order: equal up to float32 rounding.
    np.testing.assert_allclose(chunked[1], reference[1], rtol=1e-6, atol=1e-7)


def test_ties_break_towards_the_lower_index_across_chunks() -> None:
    values = np.zeros((50, 4), np.float32)
    values[[3, 11, 17, 42], 0] = 1.0  # four identical best rows
    values[30, 0] = 0.5
    table = EmbeddingTable(values=values)
    query = np.array([1.0, 0, 0, 0], np.float32)
    for chunk_rows in (1, 5, 16, 50):
        indices, scores = search_topk(table, query, k=5, chunk_rows=chunk_rows)
        assert indices.tolist() == [3, 11, 17, 42, 30]
        assert scores.tolist() == [1.0, 1.0, 1.0, 1.0, 0.5]
    indices, _ = search_topk(table, query, k=2)
    assert indices.tolist() == [3, 11]


def test_k_larger_than_table_and_shapes(tmp_path) -> None:
    table = read_table(tmp_path, write_table(tmp_path, _unit_rows(6, 4, seed=9)))
    indices, scores = search_topk(table, _unit_rows(1, 4, seed=10)[0], k=50)
    assert indices.shape == (6,) and sorted(indices.tolist()) == list(range(6))
    assert np.all(np.diff(scores) <= 0)
    with pytest.raises(ValueError, match="query dim"):
        search_topk(table, np.ones(5, np.float32), k=1)
