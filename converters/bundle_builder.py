"""`malm-edge convert`: a distilled student + its teacher + a recipe catalog -> a verified bundle.

Steps (each a plain function below): recipe table and catalog through the index pipeline
(converters/index.py) -> real calibration photos (a folder, or the dataset's train split) ->
export every target/variant -> verify each file through its runtime on held-out real photos
(the dataset's val split, else the calibration folder past the calibration photos) -> measured
val retrieval through each file -> manifest.json (edge's writer) -> edge.read_bundle as a final
check -> compression report. Everything is built in a staging folder beside `--out` that is
renamed into place only when complete, so a half-written bundle never appears at `--out`.

Variants: `--quantize int8` writes the int8 file first (the one apps pick: first in manifest
order) AND the float variant of the same target, so size and accuracy can be compared and an app
can fall back: ExecuTorch int8 + fp32, ONNX int8 (QDQ) + fp32, CoreML int8 weights + fp16.
`--quantize none` writes the float variant only (CoreML: fp16 compute, fp16 weights).
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from malm_edge.converters import calibration as cal
from malm_edge.converters.errors import ConverterError
from malm_edge.converters.evaluation import ValPairs, image_to_recipe, load_val_pairs
from malm_edge.converters.export_executorch import ExportReport
from malm_edge.converters.index import (
    build_index,
    embed_recipes,
    finalize,
    iter_shard_arrays,
    mixed_recipe_queries,
    table_quality,
    teacher_image_queries,
)
from malm_edge.converters.projection import (
    PROJECTION_FILE,
    TableProjection,
    fit_projection,
    fold_into_student,
    save_projection,
    table_width,
)
from malm_edge.converters.verify import (
    eager_embeddings,
    open_backend,
    parity_details,
    run_backend,
    verify_export,
)
from malm_edge.edge import bundle as eb
from malm_edge.edge.catalog import CATALOG_FILE
from malm_edge.edge.table import read_table
from malm_edge.edge.write_errors import guard_writes, write_failure_cause
from malm_edge.training.configs import config_hash
from malm_edge.training.harness.student import load_student
from malm_edge.training.harness.teacher import load_teacher
from malm_edge.training.models.config import MalmConfig

logger = logging.getLogger(__name__)
# Below this spread (1 - mean pairwise cosine of the eager embeddings of the verification photos)
# the student's embeddings have collapsed: photos embed nearly alike.
COLLAPSED_SPREAD = 0.01


class ConvertError(ConverterError, RuntimeError):
    """The conversion cannot proceed; the message names the file or setting at fault."""


@dataclass
class ConvertOptions:
    """Settings of one conversion (the CLI's options).

    Attributes:
        targets: Targets to export, in manifest order.
        quantize: "none" or "int8" (see the module doc for the variants written).
        table_dtype: "int8" (per-row scales) or "float16" (table "exact").
        table_format: "exact" (table version 1) or "twostage" (version 3, edge/twostage.py).
        candidates: Rows the two-stage prefilter keeps (two-stage tables).
        query_bits: Bits of the two-stage prefilter's query weights (1: plain Hamming; None: the
            writer's default, 4 up to 4,369 dims).
        table_width: Project the table and the encoder's output onto this many principal
            directions of the recipe embeddings (converters/projection.py); None: 128 for a
            two-stage table of a wider teacher, else the teacher's width.
        calibration: Folder of photos or dataset folder for calibration (default: the recipes
            dataset's train split).
        n_calibration: Calibration photos.
        n_verify: Verification photos (held out from calibration).
        index_dir: Reuse / keep the recipe index shards here (default: a temp folder, deleted).
        shard_size / batch_size: Index settings.
        overwrite: Replace an existing bundle at the output path.
        val_limit: At most this many val pairs for the measured retrieval metrics.
        report: Also write report.md / report.png into the bundle.
        progress: Show progress bars.
        allow_collapsed: Convert a student whose embeddings collapsed (refused by default).
        sign_key: Sign the manifest with this Ed25519 private key (PEM) before the bundle is
            published, so a signed conversion never leaves an unsigned bundle at the output.
    """

    targets: tuple[str, ...] = eb.TARGETS
    quantize: str = "int8"
    table_dtype: str = "int8"
    table_format: str = "exact"
    candidates: int = 1000
    query_bits: int | None = None
    table_width: int | None = None
    calibration: Path | None = None
    n_calibration: int = 64
    n_verify: int = 64
    index_dir: Path | None = None
    shard_size: int = 8192
    batch_size: int = 128
    overwrite: bool = False
    report: bool = True
    progress: bool = True
    val_limit: int = 500
    allow_collapsed: bool = False
    sign_key: Path | None = None


@dataclass
class ExportedEncoder:
    """One exported file with its manifest entry and measurements."""

    entry: eb.EncoderEntry
    report: ExportReport
    val_metrics: dict[str, float] | None = None
    embeddings: np.ndarray | None = None
    parity: dict[str, float] | None = None


@dataclass
class ConvertResult:
    """What `build_bundle` produced."""

    bundle_dir: Path
    manifest: eb.Manifest
    encoders: list[ExportedEncoder] = field(default_factory=list)
    table_quality: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary for `--json`."""
        return {"bundle": str(self.bundle_dir),
                "encoders": [{"name": e.entry.name, "file": e.entry.file, "target": e.entry.target,
                              "quantization": e.entry.quantization, "size_bytes": e.entry.size_bytes,
                              "verification": None if e.entry.verification is None else
                              vars(e.entry.verification), "parity": e.parity, "val": e.val_metrics,
                              "non_delegated_ops": e.report.non_delegated_ops}
                             for e in self.encoders],
                "table": {"rows": self.manifest.table.rows, "dtype": self.manifest.table.dtype,
                          **self.table_quality}}


def export_plan(targets: tuple[str, ...], quantize: str) -> list[tuple[str, str]]:
    """(target, quantization) pairs to export, quantized variant first within a target."""
    unknown = [t for t in targets if t not in eb.TARGETS]
    if unknown or quantize not in ("none", "int8"):
        raise ConvertError(f"targets {list(targets)} / quantize {quantize!r}: expected targets from "
                           f"{eb.TARGETS} and quantize none|int8")
    floats = {"executorch": "none", "onnx": "none", "coreml": "fp16"}
    quantized = {"executorch": "int8", "onnx": "int8", "coreml": "int8_weights"}
    plan = []
    for target in dict.fromkeys(targets):
        plan += ([(target, quantized[target])] if quantize == "int8" else []) + [(target, floats[target])]
    return plan


def encoder_file(target: str, quantization: str) -> str:
    """File name inside the bundle, e.g. encoder_int8.pte."""
    suffix = {"executorch": ".pte", "onnx": ".onnx", "coreml": ".mlpackage"}[target]
    label = "fp32" if quantization == "none" else quantization
    return f"encoder_{label}{suffix}"


def encoder_name(target: str, quantization: str) -> str:
    """Manifest encoder name, e.g. student_int8_executorch."""
    return f"student_{'fp32' if quantization == 'none' else quantization}_{target}"


def bundle_preprocessing(prep: Any) -> eb.Preprocessing:
    """The student's own `Preprocessing` for the manifest, refused when bundle format v1 cannot hold it."""
    prep = cal.as_preprocessing(prep)
    if prep.channel_order != "RGB" or prep.layout != "NCHW" or prep.interpolation != "bicubic":
        raise ConvertError(f"bundle format v{eb.FORMAT_VERSION} needs RGB, NCHW, bicubic "
                           f"preprocessing; the student uses {prep}")
    return prep


def export_one(model: torch.nn.Module, prep: Any, target: str, quantization: str, path: Path,
               calibration: torch.Tensor) -> ExportReport:
    """Export one variant (lazy imports: each exporter pulls in its heavy library)."""
    example = calibration[:1]  # (1, 3, S, S) a real photo
    if target == "executorch":
        from malm_edge.converters.export_executorch import export_executorch

        return export_executorch(model, example, path, quantize=quantization, calibration=calibration)
    if target == "onnx":
        from malm_edge.converters.export_onnx import export_onnx

        return export_onnx(model, example, path, quantize=quantization, calibration=calibration)
    from malm_edge.converters.export_coreml import check_mlpackage, export_coreml

    report = export_coreml(model, cal.as_preprocessing(prep), path,
                           compression="none" if quantization == "fp16" else quantization)
    check_mlpackage(path, input_size=example.shape[-1], embed_dim=report.output_shape[-1],
                    quantization=report.quantization)
    return report


def _runs_here(target: str) -> bool:
    return target != "coreml" or platform.system() == "Darwin"


def _tensor_specs(report: ExportReport) -> tuple[eb.TensorSpec, eb.TensorSpec]:
    """Input/output specs; every exporter names them "pixels" and "embedding"."""
    return (eb.TensorSpec("pixels", list(report.input_shape)),
            eb.TensorSpec("embedding", list(report.output_shape)))


def verification_photos(student_prep: Any, recipes_dir: Path, options: ConvertOptions,
                        val_pixels: torch.Tensor | None) -> torch.Tensor:
    """Held-out real photos: the val photos, else the calibration folder past the calibration ones."""
    if val_pixels is not None:
        return val_pixels[: options.n_verify]
    source = options.calibration or recipes_dir
    try:
        pixels, _ = cal.calibration_pixels(source, cal.as_preprocessing(student_prep),
                                           options.n_verify, partition="train", skip=options.n_calibration)
    except cal.CalibrationError as error:
        raise ConvertError(f"no held-out verification photos: {recipes_dir} has no val photos and "
                           f"{error}") from None
    return pixels


def _stage(out: Path, overwrite: bool) -> Path:
    """A fresh staging folder beside `out` (checked before any work is done)."""
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{out}: exists and is not a folder")
    if out.exists() and not overwrite:
        raise ConvertError(f"{out}: already exists; pass --overwrite to replace it")
    with guard_writes(out, ConvertError, intact="nothing was written"):
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))


def _write_failure(error: BaseException, staging: Path, out: Path) -> ConvertError | None:
    """A failed write into the staging folder (disk full, read-only) as one line about `out`.

    Exporters and edge's writers already name the staging file they failed on; a person needs the
    bundle path, the file inside it, the cause, and that nothing was published.
    """
    text = f"{error} {getattr(error, 'filename', None) or ''}"
    if str(staging) not in text:
        return None  # not a write into this bundle (an input that cannot be read, a bug)
    link: BaseException | None = error
    while link is not None:
        cause = write_failure_cause(link, staging)
        if cause is not None:
            inside = re.search(re.escape(str(staging)) + r"/([^\s:;()'\"]+)", text)
            what = f" {inside.group(1)}" if inside else ""
            return ConvertError(f"{out}: cannot write{what} ({cause}); nothing was published at {out} "
                                "and the partial bundle was removed")
        link = link.__cause__
    return None


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished staging folder to `out` (the old bundle is moved aside, then deleted)."""
    if out.exists():
        if not overwrite:
            raise ConvertError(f"{out}: already exists; pass --overwrite to replace it")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def _provenance(student: Any, teacher: Any, recipes_dir: Path) -> dict[str, Any]:
    student_hash = student.config.get("config_hash") if isinstance(student.config, dict) else None
    if student_hash is None:
        student_hash = config_hash(student.model.config)
    teacher_hash = teacher.config.get("config_hash") or config_hash(MalmConfig.from_dict(teacher.config["model"]))
    return {"teacher_config_hash": teacher_hash, "student_config_hash": student_hash,
            "teacher_run": str(teacher.checkpoint.parent.parent),
            "student_run": str(_student_run_dir(student) or ""),
            "recipes": str(Path(recipes_dir).resolve()), "metrics": {}}


def _student_run_dir(student: Any) -> Path | None:
    """The student's run folder: `.run_dir`, else the checkpoint's run (RUN/checkpoints/step-*)."""
    if getattr(student, "run_dir", None):
        return Path(student.run_dir)
    checkpoint = getattr(student, "checkpoint", None)
    return Path(checkpoint).parent.parent if checkpoint else None


def build_bundle(student: Any, teacher: Any, recipes_dir: str | os.PathLike, out: str | os.PathLike,
                 options: ConvertOptions | None = None) -> ConvertResult:
    """Build a verified bundle from loaded models (the testable core of `convert`).

    Args:
        student: A `LoadedStudent`-like object: `.model` (StudentEncoder, eval), `.preprocessing`,
            `.config` (dict), optionally `.run_dir`.
        teacher: A `LoadedTeacher` (training/teacher.py).
        recipes_dir: Canonical dataset folder whose recipes form the table and catalog.
        out: The bundle folder to create.
        options: Conversion settings.

    Returns:
        A `ConvertResult` for the published bundle.
    """
    options = options or ConvertOptions()
    recipes_dir, out = Path(recipes_dir), Path(out)
    plan = export_plan(tuple(options.targets), options.quantize)
    staging = _stage(out, options.overwrite)
    try:
        result = _build_into(staging, student, teacher, recipes_dir, plan, options, out.name)
        if options.sign_key is not None:
            from malm_edge.edge.signing import sign_bundle

            sign_bundle(staging, options.sign_key)  # last: a report added later would unsign it
        _publish(staging, out, options.overwrite)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        failure = _write_failure(error, staging, out) if isinstance(error, Exception) else None
        if failure is not None:
            raise failure from error
        raise
    result.bundle_dir = out
    return result


@dataclass
class BuiltTable:
    """The recipe table and catalog written into the staging folder."""

    entry: eb.TableEntry
    count: int
    quality: dict[str, Any]
    projection: TableProjection | None  # None: the teacher's own width


def _table_and_catalog(teacher: Any, recipes_dir: Path, staging: Path, options: ConvertOptions) -> BuiltTable:
    index_dir = options.index_dir or staging / "_index"
    build_index(teacher, recipes_dir, index_dir, shard_size=options.shard_size,
                batch_size=options.batch_size, progress=options.progress)
    dim = int(next(iter_shard_arrays(index_dir))[1].shape[1])
    width = table_width(dim, options.table_format, options.table_width)
    projection = None
    if width < dim:
        logger.info("projecting the %d-dim recipe embeddings onto their top %d principal directions", dim, width)
        projection = fit_projection((values for _, values, _ in iter_shard_arrays(index_dir)), width)
        save_projection(staging / PROJECTION_FILE, projection)
    table, count = finalize(index_dir, recipes_dir, staging, table_dtype=options.table_dtype,
                            table_format=options.table_format, candidates=options.candidates,
                            query_bits=options.query_bits, projection=projection)
    queries = teacher_image_queries(teacher, recipes_dir)
    source = "teacher val image embeddings"
    if queries is None:
        queries, source = mixed_recipe_queries(index_dir), "mixed recipe embeddings"
    quality = {**table_quality(index_dir, staging, table, queries, projection=projection), "queries": source}
    if options.index_dir is None:
        shutil.rmtree(index_dir, ignore_errors=True)
    return BuiltTable(table, count, quality, projection)


def _build_into(staging: Path, student: Any, teacher: Any, recipes_dir: Path,
                plan: list[tuple[str, str]], options: ConvertOptions, out_name: str) -> ConvertResult:
    prep = cal.as_preprocessing(student.preprocessing)
    calibration, _ = cal.calibration_pixels(options.calibration or recipes_dir, prep,
                                            options.n_calibration, partition="train")
    val = load_val_pairs(recipes_dir, options.val_limit)
    val_pixels = val.pixels(prep) if val is not None else None  # (V, 3, S, S)
    verify_pixels = verification_photos(prep, recipes_dir, options, val_pixels)
    reference = eager_embeddings(student.model, verify_pixels)  # (N, D)
    check_not_collapsed(reference, student, options.allow_collapsed)  # before any slow step
    if options.table_width is not None:  # a bad width fails before the catalog is embedded
        table_width(reference.shape[1], options.table_format, options.table_width)
    logger.info("embedding the recipes of %s with the teacher", recipes_dir)
    built = _table_and_catalog(teacher, recipes_dir, staging, options)
    table, projection = built.entry, built.projection
    teacher_dim = table.dim if projection is None else projection.from_dim
    student_dim = int(getattr(student.model, "embed_dim", teacher_dim))
    if student_dim != teacher_dim:
        raise ConvertError(f"the student embeds into {student_dim} dims but the teacher's recipe "
                           f"embeddings have {teacher_dim}; was it distilled from this teacher?")
    # the encoder that is exported: the student, with the table's projection folded into its output
    encoder = student.model if projection is None else fold_into_student(student.model, projection)
    if projection is not None:
        reference = eager_embeddings(encoder, verify_pixels)  # (N, W)
    table_view = read_table(staging, table)
    full_recipe_emb = embed_recipes(teacher, val.recipes) if val is not None else None  # (V, D)
    val_recipe_emb = full_recipe_emb if projection is None or val is None else projection.apply(full_recipe_emb)
    encoders = []
    for target, quantization in plan:
        file = encoder_file(target, quantization)
        logger.info("exporting %s (%s, %s)", file, target, quantization)
        report = export_one(encoder, prep, target, quantization, staging / file, calibration)
        encoders.append(_measure(staging, file, report, reference, verify_pixels, table_view,
                                 val, val_pixels, val_recipe_emb, prep))
    metrics = {}
    if val is not None:
        metrics["student_eager"] = image_to_recipe(eager_embeddings(encoder, val_pixels), val_recipe_emb)
        if projection is not None:  # what the width reduction costs the float student
            metrics["student_eager_full_width"] = image_to_recipe(eager_embeddings(student.model, val_pixels),
                                                                  full_recipe_emb)
    metrics.update({e.entry.name: e.val_metrics for e in encoders if e.val_metrics is not None})
    provenance = _provenance(student, teacher, recipes_dir)
    provenance.update(metrics=metrics, table_quality=built.quality,
                      non_delegated_ops={e.entry.name: e.report.non_delegated_ops
                                         for e in encoders if e.entry.target == "executorch"},
                      parity={e.entry.name: e.parity for e in encoders if e.parity is not None})
    extra_files = []
    if projection is not None:
        provenance["table_projection"] = projection.to_provenance()
        extra_files.append(eb.ExtraFile(PROJECTION_FILE, eb.sha256_path(staging / PROJECTION_FILE)))
    manifest = eb.Manifest(embedding_dim=int(table.dim), preprocessing=bundle_preprocessing(prep),
                           encoders=[e.entry for e in encoders], table=table,
                           catalog=eb.make_catalog_entry(staging, CATALOG_FILE, built.count),
                           provenance=provenance, extra_files=extra_files)
    eb.write_manifest(staging, manifest)
    eb.read_bundle(staging)  # the final check: exactly what an app will do
    result = ConvertResult(staging, manifest, encoders, built.quality)
    if options.report and val is not None:
        from malm_edge.converters.report import write_report

        write_report(staging, val=val, student=student, teacher=teacher, calibration=calibration,
                     recipe_emb=full_recipe_emb, projection=projection, title=f"Compression report: {out_name}")
    return result


def embedding_spread(embeddings: np.ndarray) -> float:
    """1 - mean pairwise cosine of (N, D) embeddings: near 0 when every photo embeds alike."""
    return parity_details(embeddings, embeddings)["eager_spread"]


def is_collapsed(parity: dict[str, float] | None) -> bool:
    """Whether `parity_details` found the eager embeddings collapsed (cosine parity says little)."""
    return parity is not None and parity["eager_spread"] < COLLAPSED_SPREAD


def check_not_collapsed(reference: np.ndarray, student: Any, allow: bool) -> None:
    """Refuse a student whose embeddings of different photos are nearly identical (unless `allow`).

    Such an encoder cannot tell photos apart, and every parity number of its exports reads ~1.0
    whatever the export does.
    """
    spread = embedding_spread(reference)
    if spread >= COLLAPSED_SPREAD:
        return
    run = _student_run_dir(student) or "the student run"
    message = (f"the student's embeddings have collapsed: its embeddings of {len(reference)} different "
               f"held-out photos are nearly identical (spread {spread:.4f} < {COLLAPSED_SPREAD}, where "
               f"spread = 1 - mean pairwise cosine), so it cannot tell photos apart and export parity "
               f"would say little")
    if allow:
        logger.warning("%s; converting anyway (--collapsed-ok)", message)
        return
    raise ConvertError(f"{message}. Look at {run}/curves.png and its val R@1, distil longer or from a "
                       f"better teacher, or pass --collapsed-ok to convert it anyway")


def _measure(staging: Path, file: str, report: ExportReport, reference: np.ndarray,
             verify_pixels: torch.Tensor, table_view: Any, val: ValPairs | None,
             val_pixels: torch.Tensor | None, val_recipe_emb: np.ndarray | None,
             prep: Any) -> ExportedEncoder:
    """Verification on held-out photos and val retrieval through the file's runtime."""
    pixel_input = "rgb_0_255" if report.target == "coreml" else "normalized"
    verification, val_metrics, val_emb, parity = None, None, None, None
    if _runs_here(report.target):
        photos = verify_pixels.numpy()
        if pixel_input == "rgb_0_255":
            photos = _to_rgb(photos, prep)
        verification, exported = verify_export(staging / file, report.target, reference, photos, table_view)
        parity = parity_details(reference, exported)
        if is_collapsed(parity):
            logger.warning("%s: the student's embeddings of different photos are nearly identical "
                           "(spread %.4f); cosine parity says little (centred cosine %.4f)", file,
                           parity["eager_spread"], parity["centered_cosine_mean"])
        if val is not None:
            inputs = val_pixels.numpy() if pixel_input == "normalized" else val.raw_rgb(prep)
            val_emb = _embed_file(staging / file, report.target, inputs)  # (N, D)
            val_metrics = image_to_recipe(val_emb, val_recipe_emb)
    input_spec, output_spec = _tensor_specs(report)
    entry = eb.make_encoder_entry(staging, file, name=encoder_name(report.target, report.quantization),
                                  target=report.target, quantization=report.quantization,
                                  input=input_spec, output=output_spec, verification=verification,
                                  pixel_input=pixel_input)
    return ExportedEncoder(entry, report, val_metrics, val_emb, parity)


def _embed_file(path: Path, target: str, pixels: np.ndarray) -> np.ndarray:
    return run_backend(open_backend(path, target), np.ascontiguousarray(pixels, dtype=np.float32))


def _to_rgb(pixels: np.ndarray, prep: Any) -> np.ndarray:
    """Undo the normalisation: (N, 3, S, S) normalised -> 0..255 RGB."""
    mean = np.asarray(prep.mean, np.float32)[None, :, None, None]
    std = np.asarray(prep.std, np.float32)[None, :, None, None]
    return (pixels * std + mean) * np.float32(255.0)


def convert(student_run: str | os.PathLike, recipes_dir: str | os.PathLike | None, out: str | os.PathLike,
            options: ConvertOptions | None = None, which: str = "best") -> ConvertResult:
    """Load a student run and its teacher run, then `build_bundle` (recipes default: the run's data).

    Raises:
        ConvertError / RunError / CheckpointError: naming the run folder at fault.
    """
    student = load_student(Path(student_run), which=which)
    teacher = load_teacher(Path(student.teacher_run), which="best")
    if recipes_dir is None:
        recipes_dir = student.config["data"]
    return build_bundle(student, teacher, recipes_dir, out, options)
