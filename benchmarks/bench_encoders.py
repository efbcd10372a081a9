"""Student encoders (.pte XNNPACK / ONNX, int8 / fp32) vs the teacher's image tower, table search
and photo -> top-5 latency, in one run (BENCHMARKS.md).

Method. One real photo is decoded and preprocessed once per preprocessing (the bundle manifest's for
the exported encoders, the teacher's own `Preprocessing` for its image tower, the student run's for
eager student). Every model then gets batch-1 calls timed *interleaved*: for each repeat, one call
per model in turn (`time.perf_counter`), so load drift on the machine hits all models alike.
Reported: median and p90 ms per model, and speed-up = teacher median / model median. The teacher is
`MALM.encode_images` in eager torch under `torch.no_grad`, at the teacher's input size.

Table search: `search_topk` (k=5, one unit query) over random int8 tables of the bundle's dim
(`edge.bench.synthetic_table`), one per `--rows` count, plus the bundle's own table.
End to end: `Retriever.search(photo, k=5)` per encoder (decode + preprocess + encode + search +
catalog lookup), interleaved the same way.

    python benchmarks/bench_encoders.py --bundle B --teacher RUN [--student RUN] [--photo P]
        [--threads 1] [--repeats 50] [--warmup 5] [--rows 10000 100000 1029720] [--json OUT]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from malm_edge.edge.backends import BackendError, load_backend
from malm_edge.edge.bench import RECIPE1M_ROWS, synthetic_table
from malm_edge.edge.bundle import Bundle, EncoderEntry, read_bundle
from malm_edge.edge.preprocess import preprocess_image
from malm_edge.edge.table import open_bundle_table, search_topk

PHOTOS_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "photos"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
TOP_K = 5
TARGET_LABELS = {"executorch": ".pte XNNPACK", "onnx": "ONNX", "coreml": "CoreML"}
VERSIONED = ("torch", "onnxruntime", "executorch", "numpy", "pillow")

Timed = dict[str, Any]  # {"name", "file", "size_mb", "call": () -> Any}


# ----------------------------------------------------------------------------- arguments, inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True, help="bundle from `malm-edge convert`")
    parser.add_argument("--teacher", type=Path, required=True, help="teacher run folder")
    parser.add_argument("--student", type=Path, help="student run folder (eager reference)")
    parser.add_argument("--photo", type=Path, help="a real photo (default: first under "
                                                   "../shared/datasets/photos)")
    parser.add_argument("--threads", type=int, default=1, help="torch and edge runtime threads")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, RECIPE1M_ROWS],
                        help="synthetic table sizes to search")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def default_photo(root: Path = PHOTOS_DIR) -> Path:
    """The first photo (sorted path order) under `root`."""
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES) \
        if root.is_dir() else []
    if not photos:
        raise SystemExit(f"{root}: no photo found; pass --photo")
    return photos[0]


def set_threads(threads: int) -> None:
    """Eager torch intra-op threads (the edge backends get `threads` when constructed)."""
    import torch

    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- timing


def summarize(samples_ms: list[float]) -> dict[str, float]:
    """Median and p90 (nearest rank) of latency samples in ms."""
    ordered = sorted(samples_ms)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"median_ms": statistics.median(ordered), "p90_ms": p90, "repeats": len(ordered)}


def elapsed_ms(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int,
                     warmup: int) -> dict[str, dict[str, float]]:
    """Round-robin timing: each repeat runs every call once, in order, so noise hits all alike."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            samples[name].append(elapsed_ms(call))
    return {name: summarize(values) for name, values in samples.items()}


# ----------------------------------------------------------------------------- models to time


def weights_mb(*modules: Any) -> float:
    """MB (2**20) of the parameters and buffers of eager modules, as held in memory."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def eager_input(photo: Path, prep: Any) -> Any:
    """(1, 3, S, S) torch input through the training eval transform of `prep`."""
    from malm_edge.training.data.transforms import eval_transform, load_rgb

    return eval_transform(load_rgb(photo), prep).unsqueeze(0)  # (1, 3, S, S)


def eager_call(encode: Callable[[Any], Any], pixels: Any) -> Callable[[], Any]:
    import torch

    def call() -> Any:
        with torch.no_grad():
            return encode(pixels)  # (1, E)
    return call


def teacher_model(run: Path, photo: Path) -> Timed:
    """The teacher's image tower (`encode_images`), eager, at the teacher's input size."""
    from malm_edge.training.harness.teacher import load_teacher

    teacher = load_teacher(run)
    pixels = eager_input(photo, teacher.preprocessing)
    tower = (teacher.model.image_encoder, teacher.model.image_head)
    return {"name": f"teacher image tower (eager torch, {pixels.shape[-1]}px)",
            "file": f"{run.name}/{teacher.checkpoint.name} (image tower weights)",
            "size_mb": weights_mb(*tower), "call": eager_call(teacher.model.encode_images, pixels)}


def student_model(run: Path, photo: Path) -> Timed:
    """The distilled student as trained (eager torch, not re-parameterised), for reference."""
    from malm_edge.training.harness.student import load_student

    student = load_student(run)
    pixels = eager_input(photo, student.preprocessing)
    return {"name": f"student (eager torch, {pixels.shape[-1]}px)",
            "file": f"{run.name}/{student.checkpoint.name} (weights)",
            "size_mb": weights_mb(student.model), "call": eager_call(student.model, pixels)}


def encoder_label(entry: EncoderEntry, taken: Any = ()) -> str:
    """A label such as "student .pte XNNPACK int8"; plus the entry name if `taken` has it."""
    precision = "fp32" if entry.quantization == "none" else entry.quantization
    label = f"student {TARGET_LABELS.get(entry.target, entry.target)} {precision}"
    return f"{label} ({entry.name})" if label in taken else label


def bundle_models(bundle: Bundle, photo: Path, threads: int,
                  skipped: list[dict[str, str]]) -> list[Timed]:
    """One timed call per bundle encoder whose runtime loads here; others go to `skipped`."""
    pre, models = bundle.manifest.preprocessing, []
    for entry in bundle.manifest.encoders:
        try:
            backend = load_backend(bundle, entry, threads=threads)
        except BackendError as err:
            skipped.append({"encoder": entry.name, "reason": str(err)})
            continue
        pixels = preprocess_image(photo, pre, normalized=entry.pixel_input == "normalized")
        models.append({"name": encoder_label(entry, [m["name"] for m in models]), "file": entry.file,
                       "size_mb": entry.size_bytes / 2**20,
                       "call": lambda b=backend, x=pixels: b.embed(x)})  # (1, 3, S, S) -> (1, D)
    return models


def bench_models(models: list[Timed], repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Interleaved latency of every model, with speed-up vs the first (the teacher)."""
    timings = time_interleaved({m["name"]: m["call"] for m in models}, repeats, warmup)
    reference = timings[models[0]["name"]]["median_ms"]
    return [{"model": m["name"], "file": m["file"], "size_mb": m["size_mb"], **timings[m["name"]],
             "speedup_vs_teacher": reference / timings[m["name"]]["median_ms"]} for m in models]


# ----------------------------------------------------------------------------- search, end to end


def unit_query(dim: int, seed: int = 1) -> np.ndarray:
    query = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)  # (D,)
    return query / np.linalg.norm(query)


def time_search(table: Any, repeats: int, warmup: int) -> dict[str, Any]:
    query = unit_query(table.dim)
    timing = time_interleaved({"search": lambda: search_topk(table, query, TOP_K)}, repeats, warmup)
    return {"rows": table.rows, "dim": table.dim, "dtype": table.dtype, **timing["search"]}


def bench_search(bundle: Bundle, rows: list[int], repeats: int, warmup: int) -> list[dict[str, Any]]:
    """k=5 search latency over the bundle's table and over synthetic int8 tables of `rows` rows."""
    results = [{"table": "bundle", **time_search(open_bundle_table(bundle), repeats, warmup)}]
    for count in rows:
        with tempfile.TemporaryDirectory(prefix="bench_encoders_") as scratch:
            table = synthetic_table(Path(scratch), count, bundle.manifest.embedding_dim)
            results.append({"table": "synthetic", **time_search(table, repeats, warmup)})
            del table  # release the memmap before the folder goes
    return results


def open_retrievers(bundle: Bundle, threads: int) -> dict[str, Any]:
    """A `Retriever` per bundle encoder whose runtime loads here, keyed by label."""
    from malm_edge.edge.retriever import Retriever

    retrievers: dict[str, Any] = {}
    for entry in bundle.manifest.encoders:
        try:
            retriever = Retriever(bundle.root, backend=entry.name, threads=threads)
        except BackendError:
            continue  # already listed under skipped by bundle_models
        retrievers[encoder_label(entry, retrievers)] = retriever
    return retrievers


def bench_end_to_end(bundle: Bundle, photo: Path, threads: int, repeats: int,
                     warmup: int) -> list[dict[str, Any]]:
    """Photo -> top-5 (decode, preprocess, encode, search, catalog) per encoder, interleaved."""
    retrievers = open_retrievers(bundle, threads)
    calls = {name: (lambda r=r: r.search(photo, TOP_K)) for name, r in retrievers.items()}
    pre = bundle.manifest.preprocessing
    calls["(decode + preprocess only)"] = lambda: preprocess_image(photo, pre)  # the shared part
    try:
        timings = time_interleaved(calls, repeats, warmup)
    finally:
        for retriever in retrievers.values():
            retriever.close()
    return [{"model": name, **timing} for name, timing in timings.items()]


# ----------------------------------------------------------------------------- report


def machine_info(threads: int) -> dict[str, Any]:
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "threads": threads,
            "versions": versions, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def encoder_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["model", "file", "size MB", "median ms", "p90 ms", "speed-up vs teacher"],
        [[r["model"], f"`{r['file']}`", f"{r['size_mb']:.2f}", f"{r['median_ms']:.2f}",
          f"{r['p90_ms']:.2f}", f"{r['speedup_vs_teacher']:.1f}x"] for r in rows])


def search_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["table", "rows", "dim", "median ms", "p90 ms"],
        [[r["table"], f"{r['rows']:,}", str(r["dim"]), f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}"]
         for r in rows])


def end_to_end_table(rows: list[dict[str, Any]]) -> str:
    return markdown_table(["encoder", "median ms", "p90 ms"],
                          [[r["model"], f"{r['median_ms']:.2f}", f"{r['p90_ms']:.2f}"] for r in rows])


def render(result: dict[str, Any]) -> str:
    """Markdown ready for BENCHMARKS.md: machine, command, then the three tables."""
    info = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    skipped = "".join(f"\n- skipped {s['encoder']}: {s['reason']}" for s in result["skipped"])
    return (f"Machine: {info['platform']}, {info['cpu_count']} CPUs, {info['threads']} thread(s); "
            f"Python {info['python']}; {versions}; {info['date']}\n"
            f"Command: `{result['command']}`\nPhoto: `{result['photo']}`\n\n"
            f"Encoder latency, batch 1, interleaved, {result['repeats']} runs each:\n\n"
            f"{encoder_table(result['encoders'])}\n\n"
            f"Table search, top-{TOP_K}, one query, int8:\n\n{search_table(result['search'])}\n\n"
            f"End to end, photo -> top-{TOP_K} (decode, preprocess, encode, search, catalog):\n\n"
            f"{end_to_end_table(result['end_to_end'])}\n{skipped}")


def command_line(argv: list[str] | None) -> str:
    """The command as typed (argv given: as if typed with these arguments)."""
    script = sys.argv[0] if argv is None else f"benchmarks/{Path(__file__).name}"
    return shlex.join(["python", script, *(sys.argv[1:] if argv is None else argv)])


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every measurement; returns a JSON-ready dict."""
    set_threads(args.threads)
    bundle = read_bundle(args.bundle)
    photo = args.photo or default_photo()
    skipped: list[dict[str, str]] = []
    models = [teacher_model(args.teacher, photo)]
    if args.student:
        models.append(student_model(args.student, photo))
    models += bundle_models(bundle, photo, args.threads, skipped)
    encoders = bench_models(models, args.repeats, args.warmup)
    return {"command": command, "machine": machine_info(args.threads),
            "bundle": str(bundle.root), "photo": str(photo), "repeats": args.repeats,
            "warmup": args.warmup, "encoders": encoders, "skipped": skipped,
            "search": bench_search(bundle, args.rows, args.repeats, args.warmup),
            "end_to_end": bench_end_to_end(bundle, photo, args.threads, args.repeats, args.warmup)}


def main(argv: list[str] | None = None) -> None:
    from malm_edge.converters.executorch_runtime import register_executorch_backend

    register_executorch_backend()
    args = parse_args(argv)
    result = run(args, command_line(argv))
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
