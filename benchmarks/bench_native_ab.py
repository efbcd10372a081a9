"""Two builds of `malm-edge-native table-search` side by side on the same tables, alternated.

For each table folder (a `table.json` manifest entry, its files and `queries.f32`, as
benchmarks/bench_twostage.py writes them under --work) and each candidate count, runs A then B,
ROUNDS times, each run timing every query `--repeats` times; prints per build the median and
minimum of the runs' median ms per query, and the ratio B / A of each round (median, min, max).
The rows both builds return are compared too: a change that should not move results must not.

    python benchmarks/bench_native_ab.py OLD_CLI NEW_CLI DIR... [--candidates 1000 2000]
        [--rounds 6] [--repeats 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="build A's malm-edge-native (e.g. the commit before)")
    parser.add_argument("b", type=Path, help="build B's malm-edge-native")
    parser.add_argument("tables", type=Path, nargs="+", help="table folders with table.json and queries.f32")
    parser.add_argument("--candidates", type=int, nargs="+", default=[1000])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the queries in one run")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def run(cli: Path, table: Path, candidates: int, args: argparse.Namespace) -> tuple[float, list]:
    done = subprocess.run([str(cli), "table-search", "--table", str(table), "--queries", str(table / "queries.f32"),
                           "--top-k", str(args.top_k), "--candidates", str(candidates),
                           "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    return report["median_ms"], report["rows"]


def main() -> None:
    args = parse_args()
    results = []
    for table in args.tables:
        for candidates in args.candidates:
            times: dict[str, list[float]] = {"a": [], "b": []}
            same = True
            for _ in range(args.rounds):
                ms_a, rows_a = run(args.a, table, candidates, args)
                ms_b, rows_b = run(args.b, table, candidates, args)
                times["a"].append(ms_a)
                times["b"].append(ms_b)
                same = same and rows_a == rows_b
            ratios = [b / a for a, b in zip(times["a"], times["b"])]
            row = {"table": table.name, "candidates": candidates, "same_rows": same, "ms": times,
                   "ratio_b_over_a": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}}
            results.append(row)
            print(f"{table.name:<24} C={candidates:<5} A median {statistics.median(times['a']):.3f} ms "
                  f"(min {min(times['a']):.3f})  B median {statistics.median(times['b']):.3f} ms "
                  f"(min {min(times['b']):.3f})  B/A {statistics.median(ratios):.3f} "
                  f"[{min(ratios):.3f}, {max(ratios):.3f}]  same rows: {same}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
