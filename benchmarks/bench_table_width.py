"""How narrow a two-stage table can be: recall against exact full-width float32 search at each width
(issue 16: a wider model reduces width "the same measured way"), one thread.

For each real set and each width W, the table rows are projected onto their top-W principal
directions and renormalised (converters/projection.py, what `malm-edge convert --table-width W`
does), written as a version 3 two-stage table (sign bits + 8-bit rows, W bytes a recipe for W a
multiple of 64), and searched by edge/ (numpy) with the queries projected the same way. Rows:

- `float, projected`: exact float32 search in the projected space (what the width alone loses);
- `two-stage P=p C=c`: the table as an app searches it, with its bytes a recipe and numpy ms;

recall@1 (top-1 equal to the exact top-1) and recall@10 (|top-10 ∩ exact top-10| / 10) against the
exact float32 top-10 at the embeddings' full width.

Sets (benchmarks/bench_twostage.py): `minilm`, the cached all-MiniLM-L6-v2 sentence vectors of the
Epicurious recipes at their full 384 dims (centred, normalised; 1,000 held out as queries), and
`teacher`, a teacher run's recipe table with its val-photo queries (--teacher, --recipes); `--tile
ROWS` also tiles each set to ROWS rows at full width before projecting.

    OMP_NUM_THREADS=1 python benchmarks/bench_table_width.py --minilm [--teacher RUN --recipes DATA]
        [--widths 64 96 128 192] [--candidates 1000 2000] [--query-bits 4] [--tile 1029720] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_twostage import exact_top, finish, minilm, recall, teacher_set, tiled  # noqa: E402

from malm_edge.converters.projection import fit_projection  # noqa: E402
from malm_edge.edge.table import read_table  # noqa: E402
from malm_edge.edge.twostage import search_twostage, write_twostage_table  # noqa: E402

K = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minilm", action="store_true", help="the cached MiniLM sentence vectors (384 d)")
    parser.add_argument("--teacher", type=Path, default=None, help="teacher run folder")
    parser.add_argument("--recipes", type=Path, default=None, help="canonical dataset for --teacher")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 96, 128, 192])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--query-bits", type=int, nargs="+", default=[4])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--time-queries", type=int, default=100, help="queries timed (all are scored)")
    parser.add_argument("--tile", type=int, default=0, help="also tile each set to this many rows")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def width_rows(name: str, matrix: np.ndarray, queries: np.ndarray, args: argparse.Namespace,
               work: Path) -> list[dict]:
    dim = matrix.shape[1]
    print(f"[{name}] {matrix.shape[0]} x {dim}, {len(queries)} queries", flush=True)
    exact = exact_top(matrix, queries)  # (Q, K) at full width
    results = []
    for width in [w for w in args.widths if w <= dim]:
        projection = fit_projection(np.array_split(matrix, max(1, len(matrix) // 65536)), width)
        rows, projected_queries = projection.apply(matrix), projection.apply(queries)  # (N, W), (Q, W)
        base = {"set": name, "rows": len(matrix), "from_dim": dim, "width": width,
                "retained_energy": projection.retained_energy}
        results.append({**base, "method": "float, projected", **recall(exact_top(rows, projected_queries), exact)})
        for bits in args.query_bits:
            table_dir = work / f"{name}_w{width}_p{bits}"
            entry = write_twostage_table(table_dir, rows, query_bits=bits)
            table = read_table(table_dir, entry)
            for candidates in args.candidates:
                found = search_twostage(table, projected_queries, K, candidates)[0]  # (Q, K)
                times = []
                for query in projected_queries[:args.time_queries]:
                    start = time.perf_counter()
                    search_twostage(table, query, K, candidates)
                    times.append((time.perf_counter() - start) * 1e3)
                results.append({**base, "method": f"two-stage P={bits} C={candidates}",
                                "bytes_per_row": table.bytes_per_row, "numpy_ms": float(np.median(times)),
                                **recall(found, exact)})
        for r in results[-1 - len(args.query_bits) * len(args.candidates):]:
            size = f"{r['bytes_per_row']:>4} B" if "bytes_per_row" in r else "      "
            ms = f"numpy {r['numpy_ms']:6.2f} ms" if "numpy_ms" in r else " " * 18
            print(f"  W={width:<4} energy {r['retained_energy']:.3f}  {r['method']:<22} {size}  {ms}  "
                  f"R@1 {r['recall_at_1']:.3f} R@10 {r['recall_at_10']:.3f}", flush=True)
    return results


def main() -> None:
    args = parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_width_"))
    work.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": platform.node(), "cpus": os.cpu_count(),
            "load_before": os.getloadavg(), "threads": os.environ["OMP_NUM_THREADS"]}
    sets = []
    if args.minilm:
        sets.append(("minilm",) + minilm(args.queries, dim=None))
    if args.teacher:
        sets.append(("teacher",) + teacher_set(args.teacher, args.recipes, work, args.queries))
    if not sets:
        raise SystemExit("nothing to measure: pass --minilm and/or --teacher RUN --recipes DATA")
    results = []
    for name, matrix, queries in sets:
        results += width_rows(name, matrix, queries, args, work)
        if args.tile:
            results += width_rows(f"{name}_tiled", tiled(matrix, args.tile), queries, args, work)
    finish(meta, results, args.json)


if __name__ == "__main__":
    main()
