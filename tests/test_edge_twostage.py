"""edge/twostage.py and edge/table_codes.py: table versions 3 (sign-bit prefilter, 8-bit rescoring
with implied scales) and 2 (7-bit rescoring, stored scales).

Checked against naive references written with Python integers and loops, against exact float32
search, and through the bundle reader (manifest round trip, tampering, old bundles).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from edge_bundle_fixture import TWOSTAGE_CANDIDATES, get_bundle

from malm_edge.edge.bundle import BundleError, TableEntry, read_bundle
from malm_edge.edge.table import open_bundle_table, read_table, search_topk, write_table
from malm_edge.edge.table_codes import (
    implied_scales,
    magnitude8_bytes,
    magnitude_bytes,
    quantize_centre,
    quantize_query_int8,
    quantize_rows_int7,
    quantize_rows_int8n,
    query_weights,
    sign_bits,
    sign_codes,
    unpack_int7,
    unpack_int8n,
    weight_planes,
)
from malm_edge.edge.twostage import (
    TwoStageTable,
    prefilter,
    prefilter_distances,
    query_prefilter,
    read_twostage_table,
    search_twostage,
    write_twostage_table,
)


def _clustered(n: int, d: int, seed: int, clusters: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    rows = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, d)) + 1.0
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _naive_search(table_dir: Path, entry: TableEntry, query: np.ndarray, k: int,
                  candidates: int) -> list[int]:
    """Reference from the raw bytes: Python ints and floats, bit by bit, full sorts."""
    dim, rows = entry.dim, entry.rows
    words = (dim + 63) // 64
    codes = np.fromfile(table_dir / entry.codes_file, "<u8").reshape(rows, words)
    planes = np.fromfile(table_dir / entry.file, "u1").reshape(rows, -1)
    if entry.version == 2:
        centre = np.asarray(entry.centre, np.float32)
    else:
        centre = np.asarray([np.float32(c * entry.centre_scale) for c in entry.centre], np.float32)
    query = np.asarray(query, np.float32)
    residual = [np.float32(query[d] - centre[d]) for d in range(dim)]  # float32 subtraction
    positive = [bool(x > 0) for x in residual]
    bits = entry.query_bits or 1
    weights = [1] * dim
    if bits > 1:  # P-bit magnitudes of the residual, float32 steps, Python's half-to-even round
        most = np.float32(2 ** bits - 1)
        step = np.float32(max(abs(x) for x in residual) / most)
        step = step if step > 0 else np.float32(1)  # a zero residual: every weight 0
        weights = [min(int(most), round(float(np.float32(abs(x) / step)))) for x in residual]

    def bit(r: int, d: int) -> int:
        return (int(codes[r, d // 64]) >> (d % 64)) & 1

    distance = [sum(w for d, w in enumerate(weights) if bit(r, d) != positive[d]) for r in range(rows)]
    kept = sorted(range(rows), key=lambda r: (distance[r], r))[:max(k, candidates)]
    scale = np.float32(np.float32(np.abs(query).max()) / np.float32(127))
    query8 = [round(float(np.float32(v / scale))) for v in query]  # Python round: half to even
    half, quarter = (dim + 1) // 2, (dim + 3) // 4

    def value(r: int, d: int) -> int:
        low = (int(planes[r, d // 2]) >> (4 * (d % 2))) & 15
        high = (int(planes[r, half + d // 4]) >> (2 * (d % 4))) & 3
        top = (int(planes[r, half + quarter + d // 8]) >> (d % 8)) & 1 if entry.version == 3 else 0
        return (low | high << 4 | top << 6) * (1 if bit(r, d) else -1)

    def key(r: int) -> float:
        values = [value(r, d) for d in range(dim)]
        dot = sum(v * q for v, q in zip(values, query8))
        if entry.version == 2:
            scales = np.fromfile(table_dir / entry.scales_file, "<f4")
            return float(np.float32(np.float32(dot) * scales[r]))
        sc = entry.centre_scale
        along, energy = sum(v * c for v, c in zip(values, entry.centre)), sum(v * v for v in values)
        k3 = 1.0 - (sc * sc) * sum(c * c for c in entry.centre)
        a = sc * along
        return dot * ((math.sqrt(a * a + energy * k3) - a) / energy if energy else 0.0)

    keys = {r: key(r) for r in kept}
    return sorted(kept, key=lambda r: (-keys[r], r))[:k]


def test_sign_codes_are_little_endian_bits_of_the_residual() -> None:
    residuals = np.random.default_rng(0).standard_normal((7, 70)).astype(np.float32)
    codes = sign_codes(residuals)
    assert codes.shape == (7, 2) and codes.dtype == np.dtype("<u8")
    for r in range(7):
        for d in range(128):
            want = d < 70 and residuals[r, d] > 0
            assert ((int(codes[r, d // 64]) >> (d % 64)) & 1) == want


@pytest.mark.parametrize("dim", [16, 13, 128])
def test_int7_rows_round_trip_with_signs_from_the_codes(dim: int) -> None:
    residuals = np.random.default_rng(dim).standard_normal((50, dim)).astype(np.float32)
    residuals[3] = 0.0  # an all-zero row stays zero
    planes, scales = quantize_rows_int7(residuals)
    assert planes.shape == (50, magnitude_bytes(dim)) and scales.dtype == np.float32
    values = unpack_int7(planes, sign_codes(residuals), dim)  # (50, dim)
    assert np.abs(values).max() <= 63 and not values[3].any()
    rebuilt = values.astype(np.float32) * scales[:, None]
    assert np.all(np.abs(rebuilt - residuals) <= 0.51 * scales[:, None] + 1e-6)
    peak = np.abs(residuals).max(axis=1)
    assert np.all(scales[peak > 0] <= peak[peak > 0] / 63 * 1.01)  # the refit never widens much


@pytest.mark.parametrize("dim", [16, 13, 128])
def test_int8n_rows_round_trip_onto_the_unit_sphere(dim: int) -> None:
    rows = _clustered(50, dim, seed=dim)
    centre8, centre_scale = quantize_centre(rows.mean(axis=0))
    assert np.abs(centre8).max() == 127
    residuals = rows.astype(np.float64) - centre8 * centre_scale
    planes = quantize_rows_int8n(residuals)
    assert planes.shape == (50, magnitude8_bytes(dim)) and magnitude8_bytes(128) == 112
    values = unpack_int8n(planes, sign_codes(residuals), dim)  # (50, dim)
    assert np.abs(values).max(axis=1).tolist() == [127] * 50  # max-abs scale: the peak is 127
    scales = implied_scales(values, centre8, centre_scale)  # (50,)
    rebuilt = centre8 * centre_scale + values * scales[:, None]
    np.testing.assert_allclose(np.linalg.norm(rebuilt, axis=1), 1.0, atol=1e-12)  # on the sphere
    step = np.abs(residuals).max(axis=1) / 127
    assert np.all(np.abs(rebuilt - rows) <= step[:, None])  # within a step of the rows
    assert implied_scales(np.zeros((1, dim)), centre8, centre_scale).tolist() == [0.0]


def test_query_quantization_rounds_half_to_even() -> None:
    query8, scale = quantize_query_int8(np.array([1.27, -0.005, 0.015, 0.025], np.float32))
    assert scale == np.float32(np.float32(1.27) / np.float32(127))
    assert query8.tolist() == [127.0, float(round(float(np.float32(np.float32(-0.005) / scale)))),
                               float(round(float(np.float32(np.float32(0.015) / scale)))),
                               float(round(float(np.float32(np.float32(0.025) / scale))))]


def test_query_weights_round_half_to_even_into_bit_planes() -> None:
    residual = np.float32([0.3, -0.1, 0.05, 0.0, -0.15] + [0.0] * 65)  # (70,): 2 code words
    assert query_weights(residual, 1).tolist() == [1] * 70  # plain Hamming
    # s = 0.3 / 3 = 0.1: 0.05 / 0.1 = 0.5 and 0.15 / 0.1 = 1.5 round half to even
    assert query_weights(residual, 2)[:5].tolist() == [3, 1, 0, 0, 2]
    assert query_weights(residual, 4)[:5].tolist() == [15, 5, round(float(np.float32(0.05) / np.float32(0.02))), 0,
                                                       round(float(np.float32(0.15) / np.float32(0.02)))]
    assert query_weights(np.zeros(3, np.float32), 4).tolist() == [0, 0, 0]
    assert query_weights(np.float32([1e-45, -1e-45, 0]), 4).tolist() == [0, 0, 0]  # the step underflows
    planes = weight_planes(np.array([3, 1, 0, 2] + [1] * 66), 2)  # (2, 2) uint64
    assert planes.shape == (2, 2) and planes.dtype == np.uint64
    assert int(planes[0, 0]) & 0xF == 0b0011 and int(planes[1, 0]) & 0xF == 0b1001
    assert int(planes[0, 1]) == (1 << 6) - 1 and int(planes[1, 1]) == 0  # dims 64..69


def test_weighted_distances_are_sign_dots_with_the_quantised_residual(tmp_path) -> None:
    matrix = _clustered(300, 70, seed=11)
    table = read_twostage_table(tmp_path, write_twostage_table(tmp_path, matrix, query_bits=3))
    query = _clustered(1, 70, seed=12)[0]
    code, planes = query_prefilter(table, query)  # (2,), (3, 2)
    residual = query - table.centre
    weights = query_weights(residual, 3)  # (70,)
    signs = np.where(sign_bits(table.codes, 70), 1, -1)  # (300, 70)
    agreement = signs @ (np.where(residual > 0, 1, -1) * weights)  # sum_d sign_r sign_x w_d
    distances = prefilter_distances(table.codes, code, planes, chunk_rows=64)
    assert distances.dtype == np.uint16  # up to 7 x 70
    np.testing.assert_array_equal(2 * distances.astype(np.int64), weights.sum() - agreement)


def test_v3_tables_without_query_bits_keep_the_hamming_prefilter(tmp_path) -> None:
    matrix = _clustered(500, 32, seed=13)
    entry = write_twostage_table(tmp_path, matrix, candidates=20, query_bits=4)
    old = TableEntry(**{**entry.__dict__, "query_bits": None})  # a bundle written before query_bits
    assert "query_bits" not in old.to_dict() and read_twostage_table(tmp_path, old).query_bits == 1
    assert set(old.to_dict()) == set(entry.to_dict()) - {"query_bits"}  # and no scales fields
    queries = _clustered(6, 32, seed=14)
    for query in queries:
        assert search_twostage(read_twostage_table(tmp_path, old), query, 5)[0].tolist() == \
            _naive_search(tmp_path, old, query, 5, 20)
    with pytest.raises(ValueError, match=r"query_bits must be one of \(1, 2, 3, 4\), got 5"):
        write_twostage_table(tmp_path / "bad", matrix, query_bits=5)
    with pytest.raises(ValueError, match=r"query_bits must be one of"):
        read_twostage_table(tmp_path, TableEntry(**{**entry.__dict__, "query_bits": 0}))
    wide = np.eye(4370, dtype=np.float32)[:3]  # (2^4 - 1) x 4370 > 65535: the default drops to 3 bits
    assert write_twostage_table(tmp_path / "wide", wide).query_bits == 3


def test_prefilter_keeps_the_lowest_rows_at_the_boundary_distance() -> None:
    distances = np.array([5, 1, 3, 3, 0, 3, 9, 3], np.uint16)
    assert prefilter(distances, 4).tolist() == [1, 2, 3, 4]  # 0, 1, then the first two 3s
    assert prefilter(distances, 2).tolist() == [1, 4]
    assert prefilter(distances, 20).tolist() == list(range(8))


@pytest.mark.parametrize("version,query_bits", [(3, 4), (3, 2), (3, 1), (2, 1)])
@pytest.mark.parametrize("dim,candidates", [(16, 40), (70, 25), (128, 300), (200, 30)])
def test_search_matches_the_naive_reference_ties_included(tmp_path, dim: int, candidates: int,
                                                          version: int, query_bits: int) -> None:
    matrix = _clustered(400, dim, seed=dim)
    matrix[[5, 9, 300]] = matrix[7]  # exact ties: four identical rows
    entry = write_twostage_table(tmp_path, matrix, candidates=candidates, chunk_rows=128, version=version,
                                 query_bits=query_bits)
    assert entry.version == version and (entry.query_bits or 1) == query_bits
    table = read_twostage_table(tmp_path, entry)
    queries = np.concatenate([matrix[[7, 0, 123]], _clustered(5, dim, seed=99), table.centre[None]])
    found, scores = search_twostage(table, queries, k=12)  # the last: a zero residual
    assert found.shape == (9, 12) and scores.dtype == np.float32
    for query, rows in zip(queries, found):
        assert rows.tolist() == _naive_search(tmp_path, entry, query, 12, candidates)
    assert found[0, :4].tolist() == [5, 7, 9, 300]  # the tie goes to the lower rows, in order
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("version", [3, 2])
def test_recall_against_exact_float32_on_clustered_rows(tmp_path, version: int) -> None:
    matrix = _clustered(20000, 64, seed=3)
    rng = np.random.default_rng(4)
    queries = matrix[rng.integers(0, len(matrix), 100)] + 0.03 * rng.standard_normal((100, 64))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    exact = np.argsort(-(queries @ matrix.T), axis=1, kind="stable")[:, :10]  # (100, 10)
    table = read_twostage_table(tmp_path, write_twostage_table(tmp_path, matrix, candidates=500, version=version))
    found, scores = search_twostage(table, queries, k=10)
    recall10 = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert np.mean(found[:, 0] == exact[:, 0]) >= 0.97 and recall10 >= 0.9
    true = np.take_along_axis(queries @ matrix.T, found, axis=1)  # reported score ~ cosine
    np.testing.assert_allclose(scores, true, atol=0.02)


def test_search_edges(tmp_path) -> None:
    matrix = _clustered(30, 16, seed=5)
    table = read_twostage_table(tmp_path, write_twostage_table(tmp_path, matrix))
    rows, _ = search_twostage(table, matrix[2], k=50)  # k > rows: every row, the best first
    assert sorted(rows.tolist()) == list(range(30)) and rows[0] == 2
    assert search_twostage(table, matrix[2], k=0)[0].shape == (0,)
    with pytest.raises(ValueError, match="query dim 5 != table dim 16"):
        search_twostage(table, np.ones(5, np.float32))
    with pytest.raises(ValueError, match="NaN or infinity"):
        search_twostage(table, np.full(16, np.nan, np.float32))
    empty = read_twostage_table(tmp_path / "empty", write_twostage_table(tmp_path / "empty",
                                                                         np.zeros((0, 16), np.float32)))
    assert empty.rows == 0 and search_twostage(empty, matrix[0], k=3)[0].shape == (0,)


@pytest.mark.parametrize("version,dtype,row_bytes", [(3, "int8n", 8 + 8 + 4 + 2), (2, "int7", 8 + 12 + 4)])
def test_read_table_and_search_topk_dispatch_on_the_table_version(tmp_path, version: int, dtype: str,
                                                                  row_bytes: int) -> None:
    matrix = _clustered(100, 16, seed=6)
    entry = write_twostage_table(tmp_path, matrix, candidates=20, version=version)
    assert (entry.version, entry.dtype, entry.candidates) == (version, dtype, 20)
    table = read_table(tmp_path, entry)
    assert isinstance(table, TwoStageTable) and table.bytes_per_row == row_bytes
    np.testing.assert_array_equal(search_topk(table, matrix[:3], k=5)[0],
                                  search_twostage(table, matrix[:3], k=5)[0])
    np.testing.assert_allclose(table.dequantize(), matrix, atol=0.02)


def test_writer_refuses_non_finite_rows(tmp_path) -> None:
    matrix = _clustered(10, 16, seed=7)
    matrix[4, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        write_twostage_table(tmp_path, matrix)


def test_version3_writer_refuses_rows_off_the_unit_sphere(tmp_path) -> None:
    matrix = _clustered(10, 16, seed=7)
    matrix[6] *= 1.5
    with pytest.raises(ValueError, match="unit-length rows .* row 6 has length 1.5"):
        write_twostage_table(tmp_path, matrix)
    assert write_twostage_table(tmp_path, matrix, version=2).rows == 10  # version 2 takes any rows


# --------------------------------------------------------------------------------------------
# Through the bundle reader
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def twostage_bundle(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory, targets=("onnx",), table_format="twostage")


def _tampered(bundle: Path, tmp_path: Path, edit) -> Path:  # noqa: ANN001 - edit(dict) -> None
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_twostage_bundle_reads_and_searches(twostage_bundle) -> None:
    bundle = read_bundle(twostage_bundle)
    table = bundle.manifest.table
    assert (table.version, table.dtype, table.codes_file, table.candidates) == (
        3, "int8n", "table.sign.u64", TWOSTAGE_CANDIDATES)
    raw = json.loads((twostage_bundle / "manifest.json").read_text())["table"]
    assert raw["version"] == 3 and len(raw["centre"]) == table.dim and raw["centre_scale"] > 0
    assert "scales_file" not in raw and all(isinstance(c, int) for c in raw["centre"])
    found, _ = search_topk(open_bundle_table(bundle), np.ones(table.dim, np.float32), k=5)
    assert found.shape == (5,)


def test_v1_table_entries_are_written_as_before(tmp_path) -> None:
    entry = write_table(tmp_path, _clustered(4, 8, seed=8))
    assert set(entry.to_dict()) == {"file", "dtype", "rows", "dim", "sha256", "scales_file",
                                    "scales_sha256"}


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["table"].update(version=4), "unknown table format version 4"),
    (lambda m: m["table"].update(dtype="int7"), "expected 'int8n' for table version 3"),
    (lambda m: m["table"].update(centre=[0] * 3), r"table.centre must be 16 integers in -127..127"),
    (lambda m: m["table"].update(centre=[0.5] * 16), r"table.centre must be 16 integers in -127..127"),
    (lambda m: m["table"].update(centre=[128] * 16), r"table.centre must be 16 integers in -127..127"),
    (lambda m: m["table"].update(centre_scale=0), r"table.centre_scale must be a finite number > 0"),
    (lambda m: m["table"].pop("centre_scale"), r"table version 3 needs table.centre_scale"),
    (lambda m: m["table"].update(scales_file="table.scales.f32", scales_sha256="0" * 64), "has no scales file"),
    (lambda m: m["table"].update(candidates=0), r"table.candidates >= 1"),
    (lambda m: m["table"].pop("codes_file"), r"table version 3 needs table.codes_file"),
    (lambda m: m["table"].update(centre="0"), r"field 'table.centre' has type str"),
    (lambda m: m["table"].update(codes_sha256="0" * 64), "sha256 mismatch for table codes"),
    (lambda m: m["table"].update(query_bits=5), r"table.query_bits must be one of \(1, 2, 3, 4\), got 5"),
    (lambda m: m["table"].update(query_bits="4"), r"field 'table.query_bits' has type str"),
    (lambda m: m["table"].update(query_bits=4, dim=4370, centre=[0] * 4370),
     r"table.query_bits 4 is too wide for a 4370-d table"),
    (lambda m: m["table"].update(version=2, dtype="int7", centre=[0.0] * 16, scales_file="s", scales_sha256="0"),
     r"table.query_bits needs table version 3 \(this table is version 2\)"),
])
def test_tampered_twostage_manifests_are_refused(twostage_bundle, tmp_path, edit, message) -> None:
    with pytest.raises(BundleError, match=message):
        read_bundle(_tampered(twostage_bundle, tmp_path, edit))


def test_truncated_codes_file_is_refused(twostage_bundle, tmp_path) -> None:
    copy = _tampered(twostage_bundle, tmp_path, lambda m: None)
    codes = copy / "table.sign.u64"
    codes.write_bytes(codes.read_bytes()[:-8])
    with pytest.raises(BundleError, match=r"table.sign.u64: 1592 bytes, expected 1600 for 200 sign codes"):
        read_bundle(copy)


def test_bench_reports_bytes_per_recipe_of_a_twostage_bundle(twostage_bundle) -> None:
    from malm_edge.edge.bench import run_bench

    report = run_bench(twostage_bundle, threads=[1], synthetic_rows=(3000,), repeats=2)
    bundle_row, synthetic_row = report["search"]
    assert bundle_row["dtype"] == synthetic_row["dtype"] == "int8n"  # synthetic tables follow the bundle
    assert bundle_row["bytes_per_recipe"] == synthetic_row["bytes_per_recipe"] == 8 + 8 + 4 + 2
    assert report["files"]["table.sign.u64"] == 200 * 8
