"""Native core (edge/native) vs the Python runtimes, one thread, in one run (issue 15, BENCHMARKS.md).

What is measured, all with 1 thread (OMP_NUM_THREADS=1, XNNPACK pool of 1, ORT intra-op 1):

- Encoder latency on the same preprocessed photo: the native C++ ExecuTorch runtime (.pte int8 and
  fp32, `malm-edge-native bench`'s `encoder_only`) vs ExecuTorch's Python runtime
  (`ExecuTorchBackend._execute`) vs ONNX Runtime (fp32 and QDQ int8, `OnnxBackend._execute`).
- Table search (k=5) over random int8 tables of the bundle's dim at --rows: native vs edge/'s numpy
  `search_topk`; bytes scanned per query (rows x (dim + 4 scale bytes)) against the single-thread
  read bandwidth the native bench measures (sum over a 1 GiB buffer, best of 5).
- End to end: photo file -> top-5 with catalog rows (decode, preprocess, encode, search, lookup):
  native vs `Retriever.search` (ExecuTorch int8), and the peak RSS of one
  `malm-edge-native search PHOTO --bundle B --json` process vs one `malm-edge search` process.

The bundle: a `mnv3_s` student (random weights, 224 px, 1024-d, the shipping architecture) exported
by converters/ to .pte (XNNPACK fp32 and PT2E int8) and ONNX (fp32 and int8), calibrated on real
photos, a 2,000-row table and catalog; built once into --work.

    python benchmarks/bench_native.py [--work runs/bench_native] [--repeats 30]
        [--rows 10000 100000 1029720] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
PHOTOS = REPO.parent / "shared" / "datasets" / "photos"
CLI = REPO / "build" / "native" / "release" / "malm-edge-native"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench_native")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--table-repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_029_720])
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def photos() -> list[Path]:
    found = sorted(PHOTOS.rglob("*.jpg"))
    if not found:
        sys.exit(f"no photos under {PHOTOS}")
    return found


def build_bundle(out: Path) -> Path:
    """mnv3_s student -> .pte fp32/int8 + .onnx fp32/int8, 2,000-row table + catalog."""
    if (out / "manifest.json").exists():
        return out
    import torch

    from edge_bundle_fixture import fake_recipes
    from malm_edge.converters.export_executorch import export_executorch
    from malm_edge.converters.export_onnx import export_onnx
    from malm_edge.edge.bundle import (Manifest, Preprocessing, TensorSpec, make_catalog_entry,
                                       make_encoder_entry, write_manifest)
    from malm_edge.edge.catalog import CATALOG_FILE, write_catalog
    from malm_edge.edge.preprocess import preprocess_image
    from malm_edge.edge.table import write_table
    from malm_edge.training.models.student import create_student
    from malm_edge.training.presets import get_student_preset

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_student(get_student_preset("mnv3_s")).eval()
    pre = Preprocessing(input_size=model.config.image_size)
    calib = torch.from_numpy(np.concatenate([preprocess_image(p, pre) for p in photos()[:16]]))
    encoders = []
    for target, exporter, suffix in (("executorch", export_executorch, "pte"), ("onnx", export_onnx, "onnx")):
        for quant in ("int8", "none"):
            name = f"mnv3_s_{'fp32' if quant == 'none' else quant}_{target}"
            report = exporter(model, calib[:1], out / f"{name}.{suffix}", quantize=quant, calibration=calib)
            encoders.append(make_encoder_entry(out, f"{name}.{suffix}", name=name, target=target,
                                               quantization=quant,
                                               input=TensorSpec("pixels", list(report.input_shape)),
                                               output=TensorSpec("embedding", list(report.output_shape))))
    with torch.no_grad():
        base = model(calib).numpy()  # (16, D)
    rng = np.random.default_rng(0)
    rows = base[np.arange(2000) % len(base)] + rng.normal(0, 0.5, (2000, base.shape[1]))
    table = write_table(out, (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    count = write_catalog(out / CATALOG_FILE, fake_recipes(2000))
    write_manifest(out, Manifest(embedding_dim=model.config.embed_dim, preprocessing=pre, encoders=encoders,
                                 table=table, catalog=make_catalog_entry(out, CATALOG_FILE, count),
                                 provenance={"student_config_hash": "random-mnv3_s", "metrics": {}}))
    return out


def ensure_cli() -> None:
    if not CLI.exists():
        subprocess.run(["bash", str(REPO / "edge" / "native" / "build.sh"), "release"], check=True,
                       env={**os.environ, "PYTHON": sys.executable})


def native_bench(bundle: Path, photo: Path, encoder: str, args, rows: list[int]) -> dict:
    cmd = [str(CLI), "bench", "--bundle", str(bundle), "--photo", str(photo), "--encoder", encoder,
           "--threads", "1", "--repeats", str(args.repeats), "--table-repeats", str(args.table_repeats),
           "--rows", ",".join(map(str, rows)), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return {"command": shlex.join(cmd), **json.loads(done.stdout)}


def timed(call, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        call()
    ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        ms.append((time.perf_counter() - start) * 1e3)
    ms.sort()
    return {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1) + 0.5)]}


def python_encoders(bundle: Path, photo: Path, repeats: int) -> dict:
    from malm_edge.converters.executorch_runtime import ExecuTorchBackend
    from malm_edge.edge.backends import OnnxBackend
    from malm_edge.edge.bundle import read_bundle
    from malm_edge.edge.preprocess import preprocess_image

    manifest = read_bundle(bundle).manifest
    pixels = preprocess_image(photo, manifest.preprocessing)
    results = {}
    for entry in manifest.encoders:
        cls = ExecuTorchBackend if entry.target == "executorch" else OnnxBackend
        backend = cls(bundle / entry.file, threads=1)
        results[entry.name] = timed(lambda: backend._execute(pixels), repeats)
    return results


def numpy_tables(rows_list: list[int], dim: int, repeats: int) -> dict:
    from malm_edge.edge.bench import synthetic_table
    from malm_edge.edge.table import search_topk

    query = np.random.default_rng(1).normal(size=dim).astype(np.float32)
    query /= np.linalg.norm(query)
    out = {}
    for rows in rows_list:
        with tempfile.TemporaryDirectory() as folder:
            table = synthetic_table(Path(folder), rows, dim)
            out[rows] = timed(lambda: search_topk(table, query, 5), repeats, warmup=1)
            del table
    return out


def python_end_to_end(bundle: Path, photo: Path, repeats: int) -> dict:
    from malm_edge.converters.executorch_runtime import register_executorch_backend
    from malm_edge.edge.retriever import Retriever

    register_executorch_backend()
    with Retriever(bundle, backend="mnv3_s_int8_executorch", threads=1) as retriever:
        return timed(lambda: retriever.search(photo, 5), repeats)


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS of one process, from GNU time's %M (kilobytes). Not os.wait4 here: a child that
    Python vforks inherits Python's own high-water mark in ru_maxrss; time forks its child."""
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    args = parse_args()
    meta = {"command": shlex.join([sys.executable, *sys.argv]),
            "date": subprocess.run(["date"], capture_output=True, text=True).stdout.strip(),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
            "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
                       f"{platform.platform()}",
            "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), "?")}
    ensure_cli()
    bundle = build_bundle(args.work / "bundle")
    photo = photos()[0]
    dim = json.loads((bundle / "manifest.json").read_text())["embedding_dim"]
    native = {"int8": native_bench(bundle, photo, "mnv3_s_int8_executorch", args, args.rows),
              "fp32": native_bench(bundle, photo, "mnv3_s_fp32_executorch", args, [])}
    report = {
        "meta": meta, "photo": str(photo), "bundle": str(bundle), "native": native,
        "python_encoders": python_encoders(bundle, photo, args.repeats),
        "numpy_tables": numpy_tables(args.rows, dim, args.table_repeats),
        "python_end_to_end": python_end_to_end(bundle, photo, args.repeats),
        "peak_rss_mb": {
            "malm-edge-native search": peak_rss_mb([str(CLI), "search", str(photo), "--bundle", str(bundle),
                                                    "--threads", "1", "--json"]),
            "malm-edge search (executorch int8)": peak_rss_mb(
                [sys.executable, "-m", "malm_edge", "search", str(photo), "--bundle", str(bundle), "--json",
                 "--encoder", "mnv3_s_int8_executorch", "--threads", "1"]),
        },
    }
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    print_summary(report)


def print_summary(r: dict) -> None:
    nat, py = r["native"], r["python_encoders"]
    print("\nencoder, 1 thread, median ms:")
    for quant, pte, onnx in (("int8", "mnv3_s_int8_executorch", "mnv3_s_int8_onnx"),
                             ("fp32", "mnv3_s_fp32_executorch", "mnv3_s_fp32_onnx")):
        n = nat[quant]["encoder_only"]["median_ms"]
        print(f"  {quant}: native .pte {n:.2f} | python .pte {py[pte]['median_ms']:.2f} "
              f"| onnxruntime {py[onnx]['median_ms']:.2f}")
    bw = nat["int8"]["read_bandwidth_gb_per_s_1_thread"]
    print(f"table search k=5, 1 thread (bandwidth {bw:.1f} GB/s):")
    for t in nat["int8"]["table_search_synthetic"]:
        numpy_ms = r["numpy_tables"][t["rows"]]["median_ms"]
        print(f"  {t['rows']:>8} rows: native {t['median_ms']:.2f} ms ({t['gb_per_s']:.1f} GB/s) "
              f"| numpy {numpy_ms:.2f} ms | x{numpy_ms / t['median_ms']:.1f}")
    print(f"end to end: native {nat['int8']['end_to_end']['median_ms']:.1f} ms | python "
          f"{r['python_end_to_end']['median_ms']:.1f} ms; peak RSS {r['peak_rss_mb']}")


if __name__ == "__main__":
    main()
