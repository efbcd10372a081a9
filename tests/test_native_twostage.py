"""The native core on table versions 3 and 2 (edge/native/src/twostage.cc) against edge/twostage.py.

On the shared two-stage test table (tests/edge_bundle_fixture.py: 200 rows of 16 dims, a
prefilter of 40 candidates, rows 3 and 10 exact copies of rows 1 and 2) the native search returns
the same rows in the same order as edge/ (ties included) for table rows, blends of rows and random
queries, with scores within 1e-5; tampered v3 manifests are refused with edge/'s messages; the
table-search command matches edge/ on version 3 and version 2 tables, with and without SIMD.
"""

from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from edge_bundle_fixture import EMBED_DIM, get_bundle, rewrite_as_table_v2
from native_build import NativeLib, OpenOptions, native_dir, run_cli

from malm_edge.edge.bundle import MANIFEST_FILE, BundleError, read_bundle
from malm_edge.edge.table import open_bundle_table, search_topk

K = 12


@pytest.fixture(scope="module")
def build() -> Path:
    return native_dir("release")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory, targets=("onnx",), table_format="twostage")


@pytest.fixture(scope="module")
def v2_bundle_dir(bundle_dir, tmp_path_factory) -> Path:
    return rewrite_as_table_v2(bundle_dir, tmp_path_factory.mktemp("native_v2") / "bundle")


def parity_queries(bundle_dir: Path) -> np.ndarray:
    """(Q, D) float32: table rows (ties), blends of two rows, random unit vectors, a zero query."""
    rows = np.asarray(open_bundle_table(read_bundle(bundle_dir)).dequantize())  # (N, D)
    rng = np.random.default_rng(0)
    blends = rows[rng.integers(0, len(rows), 20)] + rows[rng.integers(0, len(rows), 20)]
    random = rng.standard_normal((20, EMBED_DIM))
    queries = np.concatenate([rows[[1, 2, 3, 10, 0, 50]], blends, random, np.zeros((1, EMBED_DIM))])
    norms = np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return (queries / norms).astype(np.float32)


def native_search(build: Path, bundle_dir: Path, queries: np.ndarray, k: int) -> list[tuple[list[int], list[float]]]:
    lib = NativeLib(build).lib
    lib.malm_search_embedding.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_size_t,
                                          ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    lib.malm_results_count.argtypes = [ctypes.c_void_p]
    lib.malm_results_row.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.malm_results_row.restype = ctypes.c_int64
    lib.malm_results_score.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.malm_results_score.restype = ctypes.c_float
    lib.malm_results_free.argtypes = [ctypes.c_void_p]
    engine = ctypes.c_void_p()
    options = OpenOptions(verify_checksums=1, load_encoder=0, threads=1, encoder=None)
    assert lib.malm_open(str(bundle_dir).encode(), ctypes.byref(options), ctypes.byref(engine)) == 0, \
        lib.malm_last_error()
    found = []
    try:
        for query in queries:
            results = ctypes.c_void_p()
            pointer = np.ascontiguousarray(query).ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            assert lib.malm_search_embedding(engine, pointer, len(query), k, ctypes.byref(results)) == 0
            n = lib.malm_results_count(results)
            found.append(([lib.malm_results_row(results, i) for i in range(n)],
                          [lib.malm_results_score(results, i) for i in range(n)]))
            lib.malm_results_free(results)
    finally:
        lib.malm_close(engine)
    return found


@pytest.mark.parametrize("version", [3, 2])
def test_native_two_stage_search_returns_edge_rows_ties_included(build, bundle_dir, v2_bundle_dir,
                                                                 version: int) -> None:
    bundle_dir = bundle_dir if version == 3 else v2_bundle_dir
    queries = parity_queries(bundle_dir)
    table = open_bundle_table(read_bundle(bundle_dir))
    assert table.version == version
    assert table.candidates < table.rows  # the prefilter really drops rows here
    expected_rows, expected_scores = search_topk(table, queries, k=K)  # (Q, K)
    native = native_search(build, bundle_dir, queries, K)
    for q, (rows, scores) in enumerate(native):
        assert rows == expected_rows[q].tolist(), f"query {q}"
        np.testing.assert_allclose(scores, expected_scores[q], atol=1e-5)
    assert expected_rows[0, :2].tolist() == [1, 3] and expected_rows[1, :2].tolist() == [2, 10]  # ties


def _edit(bundle: Path, change) -> None:  # noqa: ANN001 - change(dict) -> None
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


TAMPERINGS = {
    "version": lambda d: d["table"].update(version=4),
    "dtype": lambda d: d["table"].update(dtype="int7"),
    "centre-length": lambda d: d["table"].update(centre=[0] * 3),
    "centre-float": lambda d: d["table"].update(centre=[0.5] * EMBED_DIM),
    "centre-range": lambda d: d["table"].update(centre=[-128] * EMBED_DIM),
    "centre-type": lambda d: d["table"].update(centre="0"),
    "centre-scale": lambda d: d["table"].update(centre_scale=-1.0),
    "centre-scale-type": lambda d: d["table"].update(centre_scale="1"),
    "no-centre-scale": lambda d: d["table"].pop("centre_scale"),
    "scales-file": lambda d: d["table"].update(scales_file="table.scales.f32", scales_sha256="0" * 64),
    "candidates": lambda d: d["table"].update(candidates=0),
    "no-codes": lambda d: d["table"].pop("codes_file"),
    "codes-sha": lambda d: d["table"].update(codes_sha256="0" * 64),
    "empty-scales-file": lambda d: d["table"].update(scales_file=""),
    "centre-too-long": lambda d: d["table"].update(centre=[127] * EMBED_DIM, centre_scale=0.1),
    "query-bits-range": lambda d: d["table"].update(query_bits=5),
    "query-bits-zero": lambda d: d["table"].update(query_bits=0),
    "query-bits-type": lambda d: d["table"].update(query_bits="4"),
}
V2_TAMPERINGS = {  # the older format keeps its own checks
    "v2-dtype": lambda d: d["table"].update(dtype="int8n"),
    "v2-centre-length": lambda d: d["table"].update(centre=[0.5] * 3),
    "v2-no-scales": lambda d: d["table"].pop("scales_file"),
    "v2-codes-sha": lambda d: d["table"].update(codes_sha256="0" * 64),
    "v2-query-bits": lambda d: d["table"].update(query_bits=4),
}


@pytest.mark.parametrize("case", sorted(TAMPERINGS) + sorted(V2_TAMPERINGS) + ["truncated-codes"])
def test_tampered_two_stage_tables_rejected_like_edge(build, bundle_dir, v2_bundle_dir, tmp_path, case) -> None:
    source = v2_bundle_dir if case.startswith("v2-") else bundle_dir
    bundle = Path(shutil.copytree(source, tmp_path / "bundle"))
    if case == "truncated-codes":
        codes = bundle / "table.sign.u64"
        codes.write_bytes(codes.read_bytes()[:-8])
    else:
        _edit(bundle, {**TAMPERINGS, **V2_TAMPERINGS}[case])
    with pytest.raises(BundleError) as caught:
        read_bundle(bundle)
    done = run_cli(build, "verify", "--bundle", str(bundle))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().removeprefix("error: ") == str(caught.value)


@pytest.mark.parametrize("version,query_bits", [(3, 4), (3, 3), (3, 2), (3, 1), (2, 1)])
@pytest.mark.parametrize("dim", [64, 128, 200])
def test_table_search_command_matches_edge_at_phone_widths(build, tmp_path, dim: int, version: int,
                                                           query_bits: int) -> None:
    """`malm-edge-native table-search` on 64-d and 128-d (the vector kernels) and 200-d tables, with
    each prefilter weighting."""
    from malm_edge.edge.twostage import read_twostage_table, search_twostage, write_twostage_table

    rng = np.random.default_rng(dim)
    centres = rng.standard_normal((8, dim))
    rows = centres[rng.integers(0, 8, 1003)] + 0.5 * rng.standard_normal((1003, dim))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    rows[[10, 500, 1002]] = rows[7]  # ties
    entry = write_twostage_table(tmp_path, rows, candidates=60, version=version, query_bits=query_bits)
    (tmp_path / "table.json").write_text(json.dumps(entry.to_dict()))
    queries = np.concatenate([rows[[7, 3, 999]], rng.standard_normal((12, dim))]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    centre = read_twostage_table(tmp_path, entry).centre  # a zero residual: every weight 0
    queries = np.concatenate([queries, centre[None]]).astype(np.float32)
    queries.astype("<f4").tofile(tmp_path / "queries.f32")
    done = run_cli(build, "table-search", "--table", str(tmp_path), "--queries", str(tmp_path / "queries.f32"),
                   "--top-k", str(K))
    assert done.returncode == 0, done.stderr
    expected, _ = search_twostage(read_twostage_table(tmp_path, entry), queries, k=K)
    assert json.loads(done.stdout)["rows"] == expected.tolist()
    assert expected[0, :4].tolist() == [7, 10, 500, 1002]


def tied_table(folder: Path, dim: int = 128, n_rows: int = 20_000, version: int = 3,
               query_bits: int = 4) -> tuple[object, np.ndarray]:
    """A table past the native sampled-limit size (16,384 rows, 64 x kept rows): a third of its rows
    one row (heavy distance and key ties), clustered rows elsewhere; (entry, queries)."""
    from malm_edge.edge.twostage import write_twostage_table

    rng = np.random.default_rng(16)
    centres = rng.standard_normal((8, dim))
    rows = centres[rng.integers(0, 8, n_rows)] + 0.5 * rng.standard_normal((n_rows, dim))
    rows[::3] = rows[1]
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    entry = write_twostage_table(folder, rows, candidates=60, version=version, query_bits=query_bits)
    (folder / "table.json").write_text(json.dumps(entry.to_dict()))
    queries = np.concatenate([rows[[1, 2, 5, n_rows - 1]], rows[[4, 8]] + rows[[7, 11]],
                              rng.standard_normal((6, dim))]).astype(np.float32)
    return entry, queries / np.linalg.norm(queries, axis=1, keepdims=True)


def check_table_search(build: Path, folder: Path, entry: object, queries: np.ndarray, k: int,
                       candidates: int | None = None) -> None:
    """`malm-edge-native table-search` returns edge/twostage.py's rows, in order, for every query."""
    from malm_edge.edge.twostage import read_twostage_table, search_twostage

    queries.astype("<f4").tofile(folder / "queries.f32")
    extra = ["--candidates", str(candidates)] if candidates else []
    done = run_cli(build, "table-search", "--table", str(folder), "--queries", str(folder / "queries.f32"),
                   "--top-k", str(k), *extra)
    assert done.returncode == 0, done.stderr[-4000:]
    expected, _ = search_twostage(read_twostage_table(folder, entry), queries, k=k, candidates=candidates)
    assert json.loads(done.stdout)["rows"] == expected.tolist()


def widest_table(folder: Path, n_rows: int = 1_000) -> tuple[object, np.ndarray]:
    """A 4,368-d table at query_bits 4, the widest a weighted table may be ((2^4 - 1) x 4,368 = 65,520
    <= 65,535): rows along +s, along -s (every code bit against the query's: the largest distance,
    every pair of code bytes adding 4 x 60 = 240) and random, for queries centre + 0.01 s, whose
    weights are all 15; (entry, queries)."""
    from malm_edge.edge.twostage import write_twostage_table

    dim = 4368
    rng = np.random.default_rng(4368)
    s = np.where(rng.random(dim) < 0.5, -1.0, 1.0)
    kinds = rng.integers(0, 3, n_rows)
    rows = np.where((kinds == 0)[:, None], s, np.where((kinds == 1)[:, None], -s, rng.standard_normal((n_rows, dim))))
    rows = rows + 0.05 * rng.standard_normal((n_rows, dim))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    entry = write_twostage_table(folder, rows, candidates=60, version=3, query_bits=4)
    (folder / "table.json").write_text(json.dumps(entry.to_dict()))
    centre = np.asarray(entry.centre, np.float64) * entry.centre_scale
    queries = np.stack([centre + 0.01 * s, centre - 0.01 * s, centre + 0.01 * s * (rng.random(dim) < 0.9)])
    return entry, queries.astype(np.float32)


@pytest.mark.parametrize("simd", ["", "1"], ids=["simd", "portable"])
def test_table_search_matches_edge_at_the_widest_weighted_table(build, tmp_path, monkeypatch, simd: str) -> None:
    """Distances up to 65,520 (the 16-bit sums of the block scan, unsigned compares) and byte sums
    of 240: every row, in edge/'s order, and the nearest 12 and 300."""
    from malm_edge.edge.twostage import prefilter_distances, query_prefilter, read_twostage_table

    monkeypatch.setenv("MALM_EDGE_DISABLE_SIMD", simd)
    entry, queries = widest_table(tmp_path)
    table = read_twostage_table(tmp_path, entry)
    distances = prefilter_distances(table.codes, *query_prefilter(table, queries[0]))  # (N,)
    assert distances.max() == 65_520 and distances.min() < 1_000  # the whole 16-bit range is used
    check_table_search(build, tmp_path, entry, queries, entry.rows)
    check_table_search(build, tmp_path, entry, queries, K)
    check_table_search(build, tmp_path, entry, queries, 300, candidates=250)


@pytest.mark.parametrize("version,query_bits", [(3, 4), (3, 1), (2, 1)])
@pytest.mark.parametrize("simd", ["", "1"], ids=["simd", "portable"])
def test_table_search_matches_edge_on_large_tied_tables(build, tmp_path, monkeypatch, simd: str,
                                                        version: int, query_bits: int) -> None:
    """The sampled limit, the vector kernels (or, with MALM_EDGE_DISABLE_SIMD, the portable ones),
    k > candidates and k == rows, against edge/ on 20,000 rows where a third tie."""
    monkeypatch.setenv("MALM_EDGE_DISABLE_SIMD", simd)
    for dim in (128, 200):
        folder = tmp_path / f"d{dim}"
        entry, queries = tied_table(folder, dim, version=version, query_bits=query_bits)
        check_table_search(build, folder, entry, queries, K)
        check_table_search(build, folder, entry, queries, 300)  # k > candidates: 300 rows kept
        check_table_search(build, folder, entry, queries, K, candidates=250)
    check_table_search(build, folder, entry, queries[:2], entry.rows)  # every row, in order


@pytest.mark.parametrize("n_rows", [1, 3, 40])
def test_tables_of_one_repeated_row_rank_alike(build, tmp_path, n_rows: int) -> None:
    """A table of one row repeated: its mean is a unit row, which rounding could push past length 1
    (then the implied scales would be NaN); the writer keeps the centre inside the sphere, and
    edge/ and the native core return every row in order."""
    from malm_edge.edge.twostage import read_twostage_table, search_twostage, write_twostage_table

    for seed in range(20):
        row = np.random.default_rng(seed).standard_normal(128)
        rows = np.repeat((row / np.linalg.norm(row))[None].astype(np.float32), n_rows, axis=0)
        folder = tmp_path / f"s{seed}"
        entry = write_twostage_table(folder, rows, candidates=2)
        assert entry.centre_scale ** 2 * sum(c * c for c in entry.centre) < 1
        (folder / "table.json").write_text(json.dumps(entry.to_dict()))
        queries = np.concatenate([rows[:1], -rows[:1]])
        rows_found, scores = search_twostage(read_twostage_table(folder, entry), queries, k=n_rows)
        assert rows_found.tolist() == [list(range(n_rows))] * 2 and np.isfinite(scores).all()
        check_table_search(build, folder, entry, queries, n_rows)
