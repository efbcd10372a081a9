"""Two-stage tables (table versions 3 and 2) vs the exact int8 scan, one thread, in one run (issue 16).

For each data set, against exact float32 top-10 (numpy matmul over the float rows):

- `exact int8`: edge/table.py `search_topk` over int8 rows + float32 scales (table version 1), and
  the native core's exact scan of the same files;
- `two-stage vV [P=p] C=...`: edge/twostage.py `search_topk` (sign-bit prefilter keeping C rows:
  Hamming, or with version 3's query_bits P >= 2 weighted by the query's P-bit magnitudes; then
  integer rescoring: 8-bit rows with implied scales in v3, 7-bit rows with stored scales in v2),
  and the native core's (`malm-edge-native table-search`); `--versions` and `--query-bits` pick which;

with bytes per recipe (every table file), milliseconds per query (one query at a time, median over
the queries), recall@1 (top-1 equal to the exact top-1) and recall@10 (|top-10 ∩ exact top-10| / 10).

Data sets:
- `synthetic`: ROWS x 128 clustered, L2-normalised rows: 1,024 cluster centres ~ N(0, I) plus a
  shared mean vector ~ N(0, I), each row centre + 0.6 N(0, I); queries are table rows plus noise
  (0.2 N(0, I / D)), normalised.
- `minilm`: the cached all-MiniLM-L6-v2 sentence vectors (titles, ingredient lines, steps of the
  Epicurious recipes, $MALM_EDGE_CACHE/sentence-embeddings/*.npz), PCA to 128 d, normalised; a
  random 1,000 held out as queries.
- `teacher`: a teacher run's recipe tower over every recipe of a canonical dataset (--teacher,
  --recipes; `converters/index.py build_index`), queries the teacher's embeddings of the val photos
  (cross-modal, as on the phone) plus blends of two table rows.
- `--pwa ROWS...`: the PWA's JavaScript (mobile_demo/app/js/topk.js, twostage.js) in headless
  Chromium (Playwright, /usr/bin/chromium) on the synthetic sets of those sizes: the tables are
  served over HTTP, the page times each query with performance.now().
- `--bits-sweep`: why 7-bit rows: recall@10 of every row rescored (no prefilter) with the centred
  rows quantised per row to 4..8 bits (least-squares scale, as edge/table_codes.py), and of the
  uncentred int8 rows of table version 1, on each set (float dequantised, so it isolates precision).
- `--libraries`: the same queries through FAISS (IndexFlatIP float32; ScalarQuantizer 8-bit;
  IndexBinaryFlat over the sign bits of the centred rows, then int8 rescoring of its best 1,000 or
  200 with edge/table.py's rows; IVF1024,PQ32 at nprobe 128) and USearch (HNSW over int8, M = 16),
  one thread for the queries, built with every core. Benchmark-only: `pip install -e '.[bench]'`.
- `--tile ROWS`: a real set tiled to ROWS: copy j of row i is normalise(x_i + s g), g ~ N(0, I / D),
  s = the median distance of a row to its nearest other row (so copies are about as near to each
  other as real neighbours); queries as in the set.

    OMP_NUM_THREADS=1 python benchmarks/bench_twostage.py [--rows 1029720] [--minilm]
        [--teacher RUN --recipes DATA] [--tile 1029720] [--candidates 1000 200] [--pwa 100000]
        [--versions 3 2] [--query-bits 4 1]
        [--libraries] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from malm_edge.edge.table import read_table, search_topk, write_table  # noqa: E402
from malm_edge.edge.twostage import write_twostage_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "build" / "native" / "release" / "malm-edge-native"
K = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_029_720], help="synthetic table sizes")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--minilm", action="store_true", help="the cached MiniLM sentence vectors")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher run folder")
    parser.add_argument("--recipes", type=Path, default=None, help="canonical dataset for --teacher")
    parser.add_argument("--tile", type=int, default=0, help="also tile the real sets to this many rows")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 200])
    parser.add_argument("--versions", type=int, nargs="+", default=[3, 2], help="two-stage table versions")
    parser.add_argument("--query-bits", type=int, nargs="+", default=[4, 1],
                        help="prefilter query weight bits of the version 3 tables (1: Hamming)")
    parser.add_argument("--time-queries", type=int, default=200, help="queries timed (all are scored)")
    parser.add_argument("--pwa", type=int, nargs="*", default=[], help="synthetic sizes timed in Chromium")
    parser.add_argument("--libraries", action="store_true", help="FAISS and USearch rows (the [bench] extra)")
    parser.add_argument("--bits-sweep", action="store_true", help="rescoring precision 4..8 bits")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def normalise(rows: np.ndarray) -> np.ndarray:
    return (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def synthetic(rows: int, n_queries: int, dim: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1024, dim)).astype(np.float32) + rng.standard_normal(dim).astype(np.float32)
    matrix = np.empty((rows, dim), np.float32)  # (N, D)
    for start in range(0, rows, 1 << 16):
        n = min(1 << 16, rows - start)
        part = centres[rng.integers(0, 1024, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
        matrix[start:start + n] = normalise(part)
    picks = rng.integers(0, rows, n_queries)
    queries = matrix[picks] + 0.2 / np.sqrt(dim) * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return matrix, normalise(queries)


def minilm(n_queries: int, dim: int | None = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(table, queries) of the cached MiniLM vectors, centred and normalised; PCA to `dim` (None: 384)."""
    root = Path(os.environ.get("MALM_EDGE_CACHE", Path.home() / ".cache" / "malm-edge")) / "sentence-embeddings"
    files = sorted(root.glob("*.npz"))
    if not files:
        raise SystemExit(f"no MiniLM cache under {root} (train a `lite` teacher once to fill it)")
    vectors = np.concatenate([np.load(f, allow_pickle=False)["vectors"].astype(np.float32) for f in files])
    vectors = normalise(vectors - vectors.mean(axis=0))  # (U, 384)
    if dim is None:
        order = np.random.default_rng(seed).permutation(len(vectors))
        return vectors[order[n_queries:]], vectors[order[:n_queries]]
    _, _, basis = np.linalg.svd(vectors[:20000] - vectors[:20000].mean(axis=0), full_matrices=False)
    projected = normalise(vectors @ basis[:dim].T)  # (U, 128): PCA, then unit length
    order = np.random.default_rng(seed).permutation(len(projected))
    return projected[order[n_queries:]], projected[order[:n_queries]]


def teacher_set(run: Path, recipes: Path, work: Path, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    from malm_edge.converters import index as idx
    from malm_edge.training.harness.teacher import load_teacher

    teacher = load_teacher(run)
    index_dir = work / "teacher_index"
    idx.build_index(teacher, recipes, index_dir, progress=False)
    matrix = np.concatenate([np.asarray(v) for _, v, _ in idx.iter_shard_arrays(index_dir)])
    images = idx.teacher_image_queries(teacher, recipes, n=n_queries // 2)
    mixed = idx.mixed_recipe_queries(index_dir, n=n_queries - (0 if images is None else len(images)))
    queries = mixed if images is None else np.concatenate([normalise(images), mixed])
    return normalise(matrix), queries.astype(np.float32)


def tiled(matrix: np.ndarray, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sample = matrix[rng.choice(len(matrix), min(2000, len(matrix)), replace=False)]
    distances = np.sqrt(np.maximum(2 - 2 * sample @ matrix.T, 0))  # (S, N)
    distances[distances < 1e-6] = np.inf  # itself
    spread = float(np.median(distances.min(axis=1)))
    copies = [matrix] + [normalise(matrix + spread / np.sqrt(matrix.shape[1]) *
                                   rng.standard_normal(matrix.shape, dtype=np.float32))
                         for _ in range((rows - 1) // len(matrix))]
    return np.concatenate(copies)[:rows]


def exact_top(matrix: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """(Q, k) exact float32 top-k, score descending (ties to the lower row)."""
    best = []
    for start in range(0, len(queries), 100):
        scores = queries[start:start + 100] @ matrix.T  # (q, N)
        part = np.argpartition(-scores, k, axis=1)[:, :k + 1]
        for row, cand in zip(scores, part):
            best.append(cand[np.lexsort((cand, -row[cand]))][:k])
    return np.stack(best)


def recall(found: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    overlap = [len(set(a.tolist()) & set(b.tolist())) / exact.shape[1] for a, b in zip(found, exact)]
    return {"recall_at_1": float(np.mean(found[:, 0] == exact[:, 0])), "recall_at_10": float(np.mean(overlap))}


def timed_search(queries: np.ndarray, exact: np.ndarray, n_timed: int,
                 search: Callable[[np.ndarray], np.ndarray]) -> dict[str, float]:
    """Recall of `search` over every query, and its median ms over the first `n_timed`."""
    found = np.stack([search(q) for q in queries])  # (Q, K)
    times = []
    for q in queries[:n_timed]:
        start = time.perf_counter()
        search(q)
        times.append((time.perf_counter() - start) * 1e3)
    return {"ms": float(np.median(times)), **recall(found, exact)}


def native_row(table_dir: Path, entry: object, queries: np.ndarray, exact: np.ndarray,
               candidates: int | None) -> dict[str, float] | None:
    if not CLI.exists():
        return None
    (table_dir / "table.json").write_text(json.dumps(entry.to_dict()))
    queries_file = table_dir / "queries.f32"
    queries.astype("<f4").tofile(queries_file)
    command = [str(CLI), "table-search", "--table", str(table_dir), "--queries", str(queries_file),
               "--top-k", str(K)] + (["--candidates", str(candidates)] if candidates else [])
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    return {"ms": report["median_ms"], **recall(np.array(report["rows"]), exact)}


PWA_SEARCH = """async ([base, queries, k, candidates]) => {
  const { makeTable, searchTopK } = await import('/js/topk.js');
  const { searchTwoStage } = await import('/js/twostage.js');
  const get = async (file) => (file ? await (await fetch(base + file)).arrayBuffer() : null);
  const entry = await (await fetch(base + 'table.json')).json();
  const table = makeTable(entry, await get(entry.file), await get(entry.scales_file), await get(entry.codes_file));
  const search = (q) => candidates ? searchTwoStage(table, q, k, candidates) : searchTopK(table, q, k);
  const rows = [], ms = [];
  for (const q of queries) {
    const query = Float32Array.from(q), start = performance.now();
    rows.push(search(query).rows);
    ms.push(performance.now() - start);
  }
  return { rows, ms };
}"""


def pwa_rows(work: Path, tables: list[tuple[Path, int | None]], queries: np.ndarray,
             exact: np.ndarray) -> list[dict[str, float]]:
    """Time the PWA's search of each (table folder, candidates) in headless Chromium."""
    import functools
    import http.server
    import threading

    from playwright.sync_api import sync_playwright

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            path = path.split("?")[0]
            root = REPO / "mobile_demo" / "app" if path.startswith("/js/") else work
            return str(root / path.lstrip("/"))

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/js/topk.js")
            for folder, candidates in tables:
                base = f"/{folder.relative_to(work).as_posix()}/"
                found = page.evaluate(PWA_SEARCH, [base, queries.tolist(), K, candidates])
                results.append({"ms": float(np.median(found["ms"][1:])), **recall(np.array(found["rows"]), exact)})
            browser.close()
    finally:
        server.shutdown()
    return results


def quantized(rows: np.ndarray, bits: int, refit: bool = True) -> np.ndarray:
    """(N, D) rows quantised symmetric per row to `bits` and dequantised (float32)."""
    top = 2 ** (bits - 1) - 1
    scales = np.maximum(np.abs(rows).max(axis=1), 1e-12) / top  # (N,)
    for _ in range(2 if refit else 0):
        values = np.clip(np.rint(rows / scales[:, None]), -top, top)
        scales = (values * rows).sum(axis=1) / np.maximum((values * values).sum(axis=1), 1)
    return (np.clip(np.rint(rows / scales[:, None]), -top, top) * scales[:, None]).astype(np.float32)


def bits_sweep(name: str, matrix: np.ndarray, queries: np.ndarray) -> list[dict]:
    exact = exact_top(matrix, queries)
    centre = matrix.mean(axis=0)
    rows = [("int8, uncentred, max-abs scale (table v1)", quantized(matrix, 8, refit=False))]
    rows += [(f"{bits}-bit centred", quantized(matrix - centre, bits) + centre) for bits in (4, 5, 6, 7, 8)]
    out = []
    for label, approx in rows:
        found = exact_top(approx, queries)
        out.append({"set": name, "rows": len(matrix), "method": f"sweep: {label}", **recall(found, exact)})
        print(f"  sweep {label:<44} R@1 {out[-1]['recall_at_1']:.3f} R@10 {out[-1]['recall_at_10']:.3f}", flush=True)
    return out


def bench_set(name: str, matrix: np.ndarray, queries: np.ndarray, args: argparse.Namespace,
              work: Path, pwa: bool = False) -> list[dict]:
    print(f"[{name}] {matrix.shape[0]} x {matrix.shape[1]}, {len(queries)} queries", flush=True)
    if args.bits_sweep:
        return bits_sweep(name, matrix, queries)
    exact = exact_top(matrix, queries)
    results = []
    exact_dir, twostage_dir = work / f"{name}_int8", work / f"{name}_twostage"
    int8_entry = write_table(exact_dir, matrix)
    (exact_dir / "table.json").write_text(json.dumps(int8_entry.to_dict()))
    int8 = read_table(exact_dir, int8_entry)
    row = {"set": name, "rows": len(matrix), "method": "exact int8 + scale", "bytes_per_row": matrix.shape[1] + 4}
    row["numpy"] = timed_search(queries, exact, args.time_queries, lambda q: search_topk(int8, q, K)[0])
    row["native"] = native_row(exact_dir, int8_entry, queries, exact, None)
    results.append(row)
    folders = [(exact_dir, None)]
    variants = [(v, bits) for v in args.versions for bits in (args.query_bits if v == 3 else [1])]
    for version, bits in variants:
        label = f"v{version}" + (f" P={bits}" if version == 3 else "")
        version_dir = twostage_dir.with_name(f"{twostage_dir.name}_v{version}_p{bits}")
        entry = write_twostage_table(version_dir, matrix, version=version, query_bits=bits)
        (version_dir / "table.json").write_text(json.dumps(entry.to_dict()))
        two = read_table(version_dir, entry)
        for candidates in args.candidates:
            row = {"set": name, "rows": len(matrix), "method": f"two-stage {label}, C={candidates}",
                   "bytes_per_row": two.bytes_per_row}
            row["numpy"] = timed_search(queries, exact, args.time_queries,
                                        lambda q, c=candidates: _twostage(two, q, c))
            row["native"] = native_row(version_dir, entry, queries, exact, candidates)
            row["prefilter_recall_at_10"] = prefilter_recall(two, queries, exact, candidates)
            results.append(row)
            folders.append((version_dir, candidates))
    if args.libraries:
        results += library_rows(name, matrix, queries, exact, args.time_queries, int8)
    if pwa:
        for row, timing in zip(results, pwa_rows(work, folders, queries[:args.time_queries],
                                                 exact[:args.time_queries])):
            row["pwa"] = timing
    for r in results:
        if "library" in r:
            print(f"  {r['method']:<46} {r['bytes_per_row']:>4} B  {r['library']['ms']:7.3f} ms "
                  f"R@1 {r['library']['recall_at_1']:.3f} R@10 {r['library']['recall_at_10']:.3f}", flush=True)
            continue
        native = r["native"] or {}
        print(f"  {r['method']:<25} {r['bytes_per_row']:>4} B  numpy {r['numpy']['ms']:7.2f} ms "
              f"R@1 {r['numpy']['recall_at_1']:.3f} R@10 {r['numpy']['recall_at_10']:.3f}  "
              f"native {native.get('ms', float('nan')):7.3f} ms R@10 {native.get('recall_at_10', float('nan')):.3f}"
              + (f"  pwa {r['pwa']['ms']:7.2f} ms R@10 {r['pwa']['recall_at_10']:.3f}" if "pwa" in r else "")
              + (f"  prefilter keeps {r['prefilter_recall_at_10']:.3f} of the top-10"
                 if "prefilter_recall_at_10" in r else ""),
              flush=True)
    return results


def library_rows(name: str, matrix: np.ndarray, queries: np.ndarray, exact: np.ndarray, n_timed: int,
                 int8: object) -> list[dict]:
    """FAISS and USearch on the same rows and queries (build: every core; queries: one thread)."""
    try:
        import faiss
        from usearch.index import Index
    except ImportError as error:
        sys.exit(f"--libraries needs FAISS and USearch: pip install -e '.[bench]' ({error})")
    from malm_edge.edge.table_codes import sign_codes

    rows, dim = matrix.shape
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    centre = matrix.mean(axis=0)
    results = []

    def add(method: str, bytes_per_row: float, search: Callable[[np.ndarray], np.ndarray]) -> None:
        faiss.omp_set_num_threads(1)
        timing = timed_search(queries, exact, n_timed, search)
        results.append({"set": name, "rows": rows, "method": method, "bytes_per_row": round(bytes_per_row, 1),
                        "library": timing})
        faiss.omp_set_num_threads(os.cpu_count() or 1)

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    flat = faiss.IndexFlatIP(dim)
    flat.add(matrix)
    add("FAISS IndexFlatIP float32", 4 * dim, lambda q: flat.search(q[None, :], K)[1][0])
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(matrix)
    sq8.add(matrix)
    add("FAISS ScalarQuantizer 8-bit", dim, lambda q: sq8.search(q[None, :], K)[1][0])
    codes = sign_codes(matrix - centre).view(np.uint8).reshape(rows, -1)  # (N, 8 W): whole 64-bit words
    binary = faiss.IndexBinaryFlat(8 * codes.shape[1])
    binary.add(codes)
    values, scales = np.asarray(int8.values), np.asarray(int8.scales)

    def binary_then_int8(query: np.ndarray, candidates: int) -> np.ndarray:
        code = sign_codes((query - centre)[None, :]).view(np.uint8).reshape(1, -1)
        kept = binary.search(code, min(candidates, rows))[1][0]
        scores = (values[kept].astype(np.float32) @ query) * scales[kept]  # (C,)
        return kept[np.argsort(-scores, kind="stable")[:K]]

    for candidates in (1000, 200):
        add(f"FAISS IndexBinaryFlat -> int8 rescoring {candidates}", dim / 8 + dim + 4,
            lambda q, c=candidates: binary_then_int8(q, c))
    ivfpq = faiss.index_factory(dim, "IVF1024,PQ32", faiss.METRIC_INNER_PRODUCT)
    sample = matrix[np.random.default_rng(0).choice(rows, size=min(rows, 100_000), replace=False)]
    ivfpq.train(sample)
    ivfpq.add(matrix)
    faiss.extract_index_ivf(ivfpq).nprobe = 128
    add("FAISS IVF1024,PQ32 (nprobe 128)", 32 + 8, lambda q: ivfpq.search(q[None, :], K)[1][0])
    hnsw = Index(ndim=dim, metric="ip", dtype="i8", connectivity=16)
    hnsw.add(np.arange(rows), matrix, threads=os.cpu_count() or 1)
    add("USearch HNSW int8 (M 16)", hnsw.memory_usage / rows,
        lambda q: np.asarray(hnsw.search(q, K, threads=1).keys))
    return results


def prefilter_recall(table: object, queries: np.ndarray, exact: np.ndarray, candidates: int) -> float:
    """Mean share of the exact top-10 inside the prefilter's candidates (the first stage's recall)."""
    from malm_edge.edge.twostage import prefilter, prefilter_distances, query_prefilter

    inside = []
    for query, best in zip(queries, exact):
        code, planes = query_prefilter(table, query)  # (W,), (P, W) or None
        kept = prefilter(prefilter_distances(table.codes, code, planes), min(table.rows, candidates))
        inside.append(np.isin(best, kept).mean())
    return float(np.mean(inside))


def _twostage(table: object, query: np.ndarray, candidates: int) -> np.ndarray:
    from malm_edge.edge.twostage import search_twostage

    return search_twostage(table, query, K, candidates=candidates)[0]


def main() -> None:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_twostage_"))
    work.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.node(),
            "cpus": os.cpu_count(), "load_before": os.getloadavg(), "threads": os.environ["OMP_NUM_THREADS"]}
    results = []
    real = []
    if args.minilm:
        real.append(("minilm",) + minilm(args.queries))
    if args.teacher:
        real.append(("teacher",) + teacher_set(args.teacher, args.recipes, work, args.queries))
    for name, matrix, queries in real:
        results += bench_set(name, matrix, queries, args, work)
        if args.tile:
            results += bench_set(f"{name}_tiled", tiled(matrix, args.tile), queries, args, work)
    for rows in args.rows:
        results += bench_set("synthetic", *synthetic(rows, args.queries), args, work)
    for rows in args.pwa:
        results += bench_set("synthetic_pwa", *synthetic(rows, args.queries), args, work, pwa=True)
    finish(meta, results, args.json)


def finish(meta: dict, results: list[dict], path: Path | None) -> None:
    """Print the run's load and machine, and write every row to `path` (JSON) when given."""
    meta["load_after"] = os.getloadavg()
    print(json.dumps(meta))
    if path:
        path.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
