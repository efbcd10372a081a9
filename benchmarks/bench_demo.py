"""Benchmark the offline web demo (mobile_demo/) in headless Chromium; prints one JSON object.

For each ONNX encoder of the bundle, twice: served cross-origin isolated (COOP/COEP, so
onnxruntime-web runs multi-threaded) and not isolated (the single-threaded fallback a plain
http:// LAN page gets). Measures page load to ready (first visit: download + compile; reload:
from the service worker cache), photo -> top-5 time (median and p90 over the photos x repeats after
one warm-up, with the median of each step: decode, resize, model, table, catalog), and bytes
downloaded (bundle files; app shell as sent, gzipped, and raw).

    python benchmarks/bench_demo.py [--bundle B | --preset mnv3_s --rows 20000] [--photos DIR]
        [--repeats 3] [--max-photos 8]

Without --bundle, a bundle is built from a randomly initialised student preset (tests/demo_bundles.py:
ONNX fp32 + QDQ int8 calibrated on the photos, int8 table of --rows rows): the speed of a real
model of that architecture, not its accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # demo_bundles, edge_bundle_fixture (bundle builders)

from malm_edge.edge.bundle import read_manifest  # noqa: E402
from malm_edge.edge.demo_server import APP_DIR, make_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READY = "() => ['ready', 'error', 'unsupported'].includes(document.body.dataset.state)"
STEPS = ("decode", "preprocess", "encode", "topk", "catalog", "total")


def find_photos(root: Path, limit: int) -> list[Path]:
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        raise SystemExit(f"no photos under {root}")
    return photos[:limit]


def serve(bundle: Path, isolate: bool):
    server = make_server(bundle, "127.0.0.1", 0, isolate=isolate)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_ready(page) -> float:
    page.wait_for_function(READY, timeout=300_000)
    if page.evaluate("document.body.dataset.state") != "ready":
        raise RuntimeError(page.inner_text("body"))
    return float(page.evaluate("document.body.dataset.readyMs"))


def time_searches(page, photos: list[Path], repeats: int) -> dict:
    """Median/p90 of the page's own step timings over photos x repeats (after one warm-up)."""
    samples: list[dict[str, float]] = []
    for index, photo in enumerate([photos[0]] + photos * repeats):
        count = int(page.get_attribute("#results", "data-search-count"))
        page.set_input_files("#photo", str(photo))
        page.wait_for_function(
            f"() => Number(document.querySelector('#results').dataset.searchCount) > {count}",
            timeout=120_000)
        if index:
            samples.append({step: float(page.get_attribute("#timing", f"data-{step}-ms")) for step in STEPS})
    totals = sorted(s["total"] for s in samples)
    return {"median_ms": statistics.median(totals), "p90_ms": totals[int(0.9 * (len(totals) - 1))],
            "n": len(totals),
            "steps_median_ms": {s: round(statistics.median(x[s] for x in samples), 2) for s in STEPS[:-1]}}


def run_case(browser, bundle: Path, encoder: str, isolate: bool, photos: list[Path], repeats: int) -> dict:
    server = serve(bundle, isolate)
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{server.url}?encoder={encoder}")
        cold_ms = wait_ready(page)
        page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=60_000)
        first_visit = dict(server.bytes_sent)  # bodies sent (gzipped where accepted), 304s excluded
        page.reload()
        cached_ms = wait_ready(page)
        result = {
            "encoder": encoder, "cross_origin_isolated": page.evaluate("crossOriginIsolated"),
            "threads": int(page.evaluate("document.body.dataset.threads")),
            "load_to_ready_first_visit_ms": round(cold_ms, 1),
            "load_to_ready_reload_cached_ms": round(cached_ms, 1),
            "search": time_searches(page, photos, repeats),
            "bytes_sent_first_visit": first_visit,
            "bytes_sent_reload": {k: server.bytes_sent[k] - first_visit[k] for k in first_visit},
        }
    finally:
        context.close()
        server.shutdown()
        server.server_close()
    return result


def app_shell_bytes() -> int:
    return sum(p.stat().st_size for p in APP_DIR.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="An existing bundle (default: build one).")
    parser.add_argument("--preset", default="mnv3_s", help="Student preset for the built bundle.")
    parser.add_argument("--rows", type=int, default=20000, help="Table rows of the built bundle.")
    parser.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "datasets" / "photos")
    parser.add_argument("--max-photos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is absent (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    photos = find_photos(args.photos, args.max_photos)
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as work:
        bundle = args.bundle
        build_s = None
        if bundle is None:
            from demo_bundles import build_student_bundle

            started = time.perf_counter()
            bundle = build_student_bundle(Path(work) / "bundle", photos, preset=args.preset, rows=args.rows,
                                          quantizations=("none", "int8"))
            build_s = round(time.perf_counter() - started, 1)
        manifest = read_manifest(bundle)
        encoders = [e for e in manifest.encoders if e.target == "onnx"]
        runs = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for entry in encoders:
                for isolate in (True, False):
                    runs.append(run_case(browser, bundle, entry.name, isolate, photos, args.repeats))
            version = browser.version
            browser.close()
        files = {e.name: e.size_bytes for e in encoders}
        files.update({manifest.table.file: (bundle / manifest.table.file).stat().st_size,
                      manifest.catalog.file: (bundle / manifest.catalog.file).stat().st_size})
        if manifest.table.scales_file:
            files[manifest.table.scales_file] = (bundle / manifest.table.scales_file).stat().st_size
        report = {
            "chromium": version, "cpu_count": os.cpu_count(), "photos": len(photos), "repeats": args.repeats,
            "bundle": {"path": str(args.bundle) if args.bundle else f"built: {args.preset}, random weights",
                       "build_s": build_s, "rows": manifest.table.rows, "dim": manifest.embedding_dim,
                       "input_size": manifest.preprocessing.input_size, "file_bytes": files},
            "app_shell_bytes_raw": app_shell_bytes(),
            "runs": runs,
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
