"""The compression report: image -> recipe R@1 / medR on the val split through every stage.

Stages: teacher (MALM image tower) -> student (float, eager) -> student quantized (the PT2E
int8 model, converted, run eagerly) -> every exported file through its runtime (ONNX Runtime,
ExecuTorch; CoreML only on macOS). Each row also gives the size (MB: parameters for eager stages,
the file for exports) and the median single-image latency on this machine, in two columns: through
the file's runtime for exports, eager PyTorch (Python overhead per op) for the others. A last section
gives the recipe table: its kind, bytes a recipe, recall against exact float32 search (measured by
`convert`) and one query's latency. Written into
the bundle as report.md, report.json and report.png (R@1, medR and size per stage, size vs latency
per exported file; drawn with pillow, matplotlib is not needed).
The manifest names these files in `extra_files` (a signed bundle must be signed again). A bundle
whose table was narrowed (`convert --table-width`) scores its eager rows in the teacher's width and
its exported files in the table's.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from malm_edge.converters.calibration import (
    CalibrationError,
    as_preprocessing,
    calibration_pixels,
)
from malm_edge.converters.errors import ConverterError
from malm_edge.converters.evaluation import (
    ValPairs,
    image_to_recipe,
    load_val_pairs,
    module_bytes,
    torch_latency_ms,
)
from malm_edge.converters.index import embed_recipes
from malm_edge.converters.projection import TableProjection, fold_into_student, load_projection
from malm_edge.converters.verify import (
    eager_embeddings,
    open_backend,
    run_backend,
    single_image_latency_ms,
)
from malm_edge.edge.bundle import EncoderEntry, add_extra_files, read_bundle
from malm_edge.training.harness.student import load_student
from malm_edge.training.harness.teacher import load_teacher
from malm_edge.training.models.student import prepare_for_export
from malm_edge.training.plots import Panel, Series, save_figure

REPORT_MD, REPORT_PNG, REPORT_JSON = "report.md", "report.png", "report.json"
logger = logging.getLogger(__name__)


class ReportError(ConverterError, ValueError):
    """The report cannot be measured (no val photos, teacher run missing)."""


@dataclass
class StageRow:
    """One line of the report."""

    stage: str
    detail: str
    size_mb: float | None
    r1: float | None
    medr: float | None
    latency_ms: float | None
    n_val: int


def _eager_rows(val: ValPairs, recipe_emb: np.ndarray, student: Any, teacher: Any,
                calibration: torch.Tensor | None, projection: TableProjection | None = None) -> list[StageRow]:

    rows = []
    if teacher is not None:
        pixels = val.pixels(teacher.preprocessing)
        with torch.inference_mode():
            emb = teacher.model.encode_images(pixels).float().numpy()
        tower = module_bytes(teacher.model.image_encoder) + module_bytes(teacher.model.image_head)
        rows.append(_row("teacher", "MALM image tower (fp32, eager)", tower, emb, recipe_emb,
                         torch_latency_ms(teacher.model.encode_images, pixels[:1]), len(val.photos)))
    if student is None:
        return rows
    pixels = val.pixels(student.preprocessing)
    float_model = prepare_for_export(student.model)
    rows.append(_row("student", "float (fp32, eager)", module_bytes(float_model),
                     eager_embeddings(student.model, pixels), recipe_emb,
                     torch_latency_ms(float_model, pixels[:1]), len(val.photos)))
    if projection is not None:  # what narrowing the table costs, before any quantisation
        narrow = fold_into_student(student.model, projection)
        rows.append(_row("student narrowed", f"float, {projection.width} of {projection.from_dim} dims (PCA), eager",
                         module_bytes(narrow), eager_embeddings(narrow, pixels), projection.apply(recipe_emb),
                         None, len(val.photos)))
    if calibration is not None:
        from malm_edge.converters.export_executorch import pt2e_quantize

        quantized = pt2e_quantize(float_model, calibration[:1], calibration)
        with torch.inference_mode():
            emb = torch.cat([quantized(pixels[i:i + 1]) for i in range(len(pixels))]).numpy()
        rows.append(_row("student quantized", "PT2E int8 (XNNPACK quantizer), eager",
                         _graph_bytes(quantized), emb, recipe_emb,
                         torch_latency_ms(quantized, pixels[:1]), len(val.photos)))
    return rows


def _graph_bytes(graph_module: torch.nn.Module) -> int:
    """Bytes of a PT2E graph's tensors (int8 weights are frozen attributes, not parameters)."""
    tensors = {id(t): t for t in list(graph_module.parameters()) + list(graph_module.buffers())}
    for node in graph_module.graph.nodes:
        value = getattr(graph_module, str(node.target), None) if node.op == "get_attr" else None
        if isinstance(value, torch.Tensor):
            tensors[id(value)] = value
    return int(sum(t.numel() * t.element_size() for t in tensors.values()))


def _row(stage: str, detail: str, size_bytes: int | None, image_emb: np.ndarray | None,
         recipe_emb: np.ndarray, latency: float | None, n_val: int) -> StageRow:
    metrics = image_to_recipe(image_emb, recipe_emb) if image_emb is not None else {}
    return StageRow(stage, detail, None if size_bytes is None else size_bytes / 1e6,
                    metrics.get("r1"), metrics.get("medr"), latency, n_val)


def _export_rows(bundle_dir: Path, entries: list[EncoderEntry], val: ValPairs, recipe_emb: np.ndarray,
                 prep: Any) -> list[StageRow]:

    rows = []
    for entry in entries:
        detail = f"{entry.file} ({entry.target}, {entry.quantization})"
        if entry.target == "coreml" and platform.system() != "Darwin":
            rows.append(StageRow("exported", detail + " - runs on macOS only", entry.size_bytes / 1e6,
                                 None, None, None, 0))
            continue
        pixels = val.pixels(prep).numpy() if entry.pixel_input == "normalized" else val.raw_rgb(prep)
        backend = open_backend(bundle_dir / entry.file, entry.target)
        emb = run_backend(backend, pixels)
        rows.append(_row("exported", detail, entry.size_bytes, emb, recipe_emb,
                         single_image_latency_ms(backend, pixels), len(val.photos)))
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


LATENCY_NOTE = ("Two latency columns, because they measure different things: *runtime* is the exported file "
                "run by its on-device runtime (ONNX Runtime, ExecuTorch), the number an app sees; *eager "
                "PyTorch* is the model run op by op from Python, which adds Python and dispatch overhead to "
                "every operator, so on a model this small it is far slower and is no estimate of the phone.")


def _is_eager(row: StageRow) -> bool:
    return row.stage != "exported"


@dataclass
class TableSummary:
    """The bundle's recipe table: its kind, bytes a recipe, recall against exact float32 search (measured
    by `convert`, in the manifest's provenance) and the latency of one query through edge/ (numpy)."""

    kind: str
    rows: int
    bytes_per_recipe: float
    recall_at_1: float | None
    recall_at_10: float | None
    recall_queries: str
    search_ms: float


def summarize_table(bundle_dir: Path, manifest: Any, k: int = 10) -> TableSummary:
    """Measure one top-k query over the bundle's table (median of 20, 1 thread) and read its recall."""
    from malm_edge.converters.index import table_bytes_per_row
    from malm_edge.edge.bench import time_ms
    from malm_edge.edge.table import read_table, search_topk

    entry = manifest.table
    table = read_table(bundle_dir, entry)
    query = np.random.default_rng(0).standard_normal(entry.dim).astype(np.float32)
    query /= np.linalg.norm(query)
    timing = time_ms(lambda: search_topk(table, query, min(k, entry.rows)), repeats=20, warmup=2)
    quality = manifest.provenance.get("table_quality") or {}
    kind = (f"two-stage (table v{entry.version}: sign bits + {entry.dtype} rows, {entry.candidates} candidates "
            "rescored)" if entry.version in (2, 3) else f"exact ({entry.dtype} rows, table v1)")
    narrowed = manifest.provenance.get("table_projection")
    if isinstance(narrowed, dict):
        kind += (f"; {narrowed.get('width')} of the teacher's {narrowed.get('from_dim')} dims (PCA, "
                 f"{float(narrowed.get('retained_energy', 0)):.1%} of the recipes' energy)")
    queries = f"{quality['n_queries']} {quality.get('queries', 'queries')}" if "n_queries" in quality else "n/a"
    return TableSummary(kind, int(entry.rows), table_bytes_per_row(entry), quality.get("recall_at_1"),
                        quality.get("recall_at_10"), queries, timing["median_ms"])


def _table_markdown(table: TableSummary) -> list[str]:
    return ["", "## Recipe table", "",
            "| table | recipes | bytes a recipe | recall@1 | recall@10 | search (ms, 1 query, numpy) |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {table.kind} | {table.rows:,} | {table.bytes_per_recipe:.1f} | {_fmt(table.recall_at_1, '.3f')} | "
            f"{_fmt(table.recall_at_10, '.3f')} | {table.search_ms:.2f} |", "",
            f"Recall against exact float32 search over the same recipes, measured by `convert` on "
            f"{table.recall_queries}; recall@1: the top-1 is the exact top-1, recall@10: the share of the exact "
            "top-10 found. Search: edge/ (numpy) on this machine; `malm-edge bench` also times the native core."]


def render_markdown(rows: list[StageRow], title: str, table: TableSummary | None = None) -> str:
    """The markdown table of the report (and the recipe table's, when given)."""
    lines = [f"# {title}", "",
             "Image -> recipe retrieval on the val split (one bag of all val pairs, or bags of 1000): R@1 "
             "(higher is better) and median rank medR (lower is better).",
             "", "| stage | model | size (MB) | R@1 | medR | runtime latency (ms, 1 image) | eager PyTorch (ms) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        runtime = "-" if _is_eager(row) else _fmt(row.latency_ms, ".2f")
        eager = _fmt(row.latency_ms, ".2f") if _is_eager(row) else "-"
        lines.append(f"| {row.stage} | {row.detail} | {_fmt(row.size_mb, '.3f')} | "
                     f"{_fmt(row.r1, '.3f')} | {_fmt(row.medr, '.1f')} | {runtime} | {eager} |")
    n = max((row.n_val for row in rows), default=0)
    lines += ["", f"{n} val photos. Size: parameters for eager stages, the file for exports. Latency: median "
              f"of 10 runs after a warm-up on this machine ({platform.machine()}, {os.cpu_count()} CPUs).",
              "", LATENCY_NOTE, "", f"Charts: {REPORT_PNG}."]
    if table is not None:
        lines += _table_markdown(table)
    return "\n".join(lines) + "\n"


def _short_label(row: StageRow) -> str:
    """`teacher`, `student fp32`, `student PT2E int8`, or the exported file's name."""
    if row.stage == "exported":
        return row.detail.split(" ")[0]
    return {"student": "student fp32 (eager)", "student quantized": "student PT2E int8 (eager)",
            "student narrowed": "student fp32 narrowed (eager)",
            "teacher": "teacher image tower"}.get(row.stage, row.stage)


def report_panels(rows: list[StageRow]) -> list[Panel]:
    """R@1 and medR per stage, size per stage, and size vs runtime latency per exported file."""
    labels = [_short_label(row) for row in rows]
    n = max((row.n_val for row in rows), default=0)
    chance = f"{n} val photos; chance: R@1 = {1 / n:.3f}, medR = {(n + 1) / 2:g}" if n else ""
    measured = [row for row in rows if not _is_eager(row) and row.latency_ms is not None and row.size_mb is not None]
    return [
        Panel("val image->recipe R@1 per stage (higher is better)", kind="bars", labels=labels,
              values=[row.r1 for row in rows], note=chance),
        Panel("val image->recipe medR per stage (lower is better)", kind="bars", labels=labels,
              values=[row.medr for row in rows], value_format=".1f",
              note="n/a: not measured on this machine (CoreML runs on macOS only)"
              if any(row.r1 is None for row in rows) else ""),
        Panel("size per stage (MB: parameters, or the file)", kind="bars", labels=labels,
              values=[row.size_mb for row in rows]),
        Panel("exported files: size vs runtime latency", kind="scatter",
              series=[Series("files", [row.size_mb for row in measured], [row.latency_ms for row in measured])],
              labels=[_short_label(row) for row in measured], x_label="size (MB)", y_label="ms / image",
              note="through ONNX Runtime / ExecuTorch on this machine, 1 image"),
    ]


def render_png(rows: list[StageRow], path: Path, title: str = "Compression report") -> None:
    """Four panels drawn with pillow (training/plots.py): R@1, medR, size, size vs latency."""
    save_figure(report_panels(rows), path, title=title, columns=2,
                panel_size=(560, max(240, 70 + 24 * len(rows))))


def write_report(bundle_dir: str | os.PathLike, *, val: ValPairs, student: Any = None, teacher: Any = None,
                 calibration: torch.Tensor | None = None, recipe_emb: np.ndarray | None = None,
                 projection: TableProjection | None = None, title: str | None = None) -> Path:
    """Measure every stage and write report.md / report.json / report.png into `bundle_dir`.

    Args:
        bundle_dir: A bundle folder with a valid manifest (or its staging folder).
        val: The val pairs.
        student: A LoadedStudent-like (`.model`, `.preprocessing`), or None to skip eager rows.
        teacher: A LoadedTeacher; needed for recipe embeddings unless `recipe_emb` is given.
        calibration: Calibration photos for the PT2E quantized stage (None skips it).
        recipe_emb: (N, D) teacher recipe embeddings of `val.recipes`.
        projection: The bundle's table projection (converters/projection.py): the eager rows are
            scored in the teacher's width, the exported files in the table's (default: the one the
            manifest names, if any).
        title: Markdown title (default from the folder name).

    Returns:
        The report.md path.
    """
    bundle_dir = Path(bundle_dir)
    bundle = read_bundle(bundle_dir, verify_checksums=False)
    if recipe_emb is None:
        if teacher is None:
            raise ReportError("the report needs the teacher (recipe embeddings of the val recipes)")
        recipe_emb = embed_recipes(teacher, val.recipes)
    prep = student.preprocessing if student is not None else _manifest_prep(bundle.manifest)
    if projection is None:
        projection = load_projection(bundle_dir, bundle.manifest)
    if projection is not None and projection.from_dim != recipe_emb.shape[1]:
        raise ReportError(f"{bundle_dir}: the table was narrowed from {projection.from_dim} dims but the teacher "
                          f"embeds recipes into {recipe_emb.shape[1]}; is this the bundle's teacher?")
    rows = _eager_rows(val, recipe_emb, student, teacher, calibration, projection)
    table_emb = recipe_emb if projection is None else projection.apply(recipe_emb)  # (N, W)
    rows += _export_rows(bundle_dir, bundle.manifest.encoders, val, table_emb, prep)
    table = summarize_table(bundle_dir, bundle.manifest)
    (bundle_dir / REPORT_MD).write_text(
        render_markdown(rows, title or f"Compression report: {bundle_dir.name}", table), encoding="utf-8"
    )
    (bundle_dir / REPORT_JSON).write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    render_png(rows, bundle_dir / REPORT_PNG, title or f"Compression report: {bundle_dir.name}")
    # The manifest covers every file of a bundle: name the report's three files in it.
    if add_extra_files(bundle_dir, [REPORT_MD, REPORT_JSON, REPORT_PNG]):
        logger.warning("%s: the manifest changed, so its signature was removed; sign it again with "
                       "`malm-edge sign %s --key KEY`", bundle_dir, bundle_dir)
    return bundle_dir / REPORT_MD


def _manifest_prep(manifest: Any) -> dict[str, Any]:
    pre = manifest.preprocessing
    return {"input_size": pre.input_size, "resize_size": pre.resize_size, "mean": list(pre.mean),
            "std": list(pre.std)}


def build_report(bundle_dir: str | os.PathLike, data: str | os.PathLike | None = None,
                 val_limit: int = 1000) -> Path:
    """`malm-edge report`: reload the runs named in the manifest's provenance when present.

    The teacher run is required (its recipe tower embeds the val recipes); the student run adds
    the eager float and PT2E rows. Calibration for the PT2E row: the dataset's train photos.

    Raises:
        ReportError: no val photos, or the teacher run is missing.
    """
    bundle = read_bundle(bundle_dir)
    provenance = bundle.manifest.provenance
    data = Path(data or provenance.get("recipes") or "")
    val = load_val_pairs(data, val_limit) if data.is_dir() else None
    if val is None:
        raise ReportError(f"{data}: no val photos to measure retrieval on (pass --data DATASET)")
    teacher_run = Path(provenance.get("teacher_run") or "")
    if not (teacher_run / "config.json").is_file():
        raise ReportError(f"{teacher_run}: the teacher run named in the manifest is missing")
    teacher = load_teacher(teacher_run)
    student, calibration = _load_student_if_present(provenance.get("student_run")), None
    if student is not None:
        try:
            calibration, _ = calibration_pixels(data, as_preprocessing(student.preprocessing), 64)
        except CalibrationError:
            calibration = None
    return write_report(bundle_dir, val=val, student=student, teacher=teacher, calibration=calibration)


def _load_student_if_present(run: str | None) -> Any:
    if not run or not (Path(run) / "config.json").is_file():
        return None
    return load_student(Path(run))
