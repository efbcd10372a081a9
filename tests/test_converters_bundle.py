"""`malm-edge convert` end to end on a micro teacher + micro student: the bundle, its parity on
real photos through ExecuTorch and ONNX Runtime, CoreML's structure, edge round trip, the report."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
import typer
from run_fixtures import make_dataset, make_student, make_student_run, make_teacher_run
from typer.testing import CliRunner

from malm_edge.edge.bundle import read_bundle

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "photos"
pytestmark = pytest.mark.filterwarnings("ignore")
N_PHOTOS = 32  # 16 train (calibration) + 16 val (verification) photos in the dataset


def _cli() -> typer.Typer:
    from malm_edge.cli import convert as convert_cli
    from malm_edge.cli import report as report_cli

    app = typer.Typer()
    app.command("convert")(convert_cli.convert)
    app.command("report")(report_cli.report)
    return app


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Dataset of real photos, teacher and student runs, and a bundle made by the CLI."""
    from malm_edge.converters.calibration import calibration_pixels
    from malm_edge.training.harness.teacher import load_teacher

    photos = sorted(p for p in PHOTOS.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if len(photos) < N_PHOTOS + 8:
        pytest.skip(f"{PHOTOS} is absent or holds too few photos")
    root = tmp_path_factory.mktemp("convert")
    data = make_dataset(root / "data", photos[:N_PHOTOS])
    teacher_run = make_teacher_run(root / "teacher", data)
    teacher = load_teacher(teacher_run)
    calibration, _ = calibration_pixels(data, teacher.preprocessing, 16)
    student = make_student("mobileone_micro", calibration)
    student_run = make_student_run(root / "student", teacher_run, student, teacher.preprocessing)
    out = root / "bundle"
    result = CliRunner().invoke(_cli(), [
        "convert", str(student_run), "--recipes", str(data), "--out", str(out), "--target", "all",
        "--quantize", "int8", "--n-calibration", "16", "--n-verify", "16", "--batch-size", "16", "--no-report",
        "--json"])
    assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "out": out, "summary": json.loads(result.stdout),
            "student_run": student_run, "teacher_run": teacher_run, "extra_photos": photos[N_PHOTOS:]}


def test_bundle_has_every_variant_and_reads_back(built):
    bundle = read_bundle(built["out"])
    names = [e.name for e in bundle.manifest.encoders]
    assert names == ["student_int8_executorch", "student_fp32_executorch", "student_int8_onnx",
                     "student_fp32_onnx", "student_int8_weights_coreml", "student_fp16_coreml"]
    manifest = bundle.manifest
    assert manifest.embedding_dim == 64 and manifest.table.rows == manifest.catalog.count == 56
    assert manifest.preprocessing.input_size == 64
    assert {e.pixel_input for e in manifest.encoders if e.target == "coreml"} == {"rgb_0_255"}
    provenance = manifest.provenance
    assert provenance["teacher_config_hash"] and provenance["student_config_hash"]
    assert Path(provenance["student_run"]) == built["student_run"]
    assert "student_int8_onnx" in provenance["metrics"] and provenance["table_quality"]["recall_at_10"] > 0.5
    assert not [p for p in built["out"].parent.iterdir() if ".staging-" in p.name]


@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_exports_match_eager_on_real_photos(built, target):
    """Manifest verification (held-out val photos) and an independent check on unseen photos."""
    from malm_edge.converters.calibration import load_pixels
    from malm_edge.converters.verify import eager_embeddings, verify_export
    from malm_edge.training.harness.student import load_student

    bundle = read_bundle(built["out"])
    student = load_student(built["student_run"])
    pixels, _ = load_pixels(built["extra_photos"], student.preprocessing, 16)  # never calibrated on
    reference = eager_embeddings(student.model, pixels)
    for entry in bundle.encoders_for(target):
        floor = 0.99 if entry.quantization == "none" else 0.95
        assert entry.verification.n_photos == 16
        assert entry.verification.cosine_mean >= floor, entry
        check, _ = verify_export(bundle.encoder_path(entry), target, reference, pixels.numpy())
        assert check.cosine_mean >= floor, (entry.name, check)
        if entry.quantization == "none":
            assert check.cosine_min >= 0.99 and entry.verification.top10_agreement >= 0.9
        parity = bundle.manifest.provenance["parity"][entry.name]
        assert parity["eager_spread"] > 0.01  # photos differ, so the cosines above mean something
        assert parity["centered_cosine_mean"] >= (0.99 if entry.quantization == "none" else 0.8)


def test_executorch_delegates_every_convolution(built):
    summary = {e["name"]: e for e in built["summary"]["encoders"]}
    for name in ("student_int8_executorch", "student_fp32_executorch"):
        outside = summary[name]["non_delegated_ops"]
        assert not [op for op in outside if "conv" in op or "linear" in op or "mm" in op], outside


def test_coreml_packages_pass_the_structural_check(built):
    from malm_edge.converters.export_coreml import check_mlpackage

    bundle = read_bundle(built["out"])
    for entry in bundle.encoders_for("coreml"):
        found = check_mlpackage(bundle.encoder_path(entry), input_size=64, embed_dim=64,
                                quantization=entry.quantization)
        assert found.outputs["embedding"][1] == "FLOAT32"
        if platform.system() != "Darwin":
            assert entry.verification is None  # cannot run here; never a fake number


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_round_trip_through_edge_retriever(built, backend):
    from malm_edge.converters.executorch_runtime import register_executorch_backend
    from malm_edge.converters.verify import eager_embeddings
    from malm_edge.edge.retriever import Retriever
    from malm_edge.training.data.canonical import iter_records
    from malm_edge.training.data.transforms import EvalTransform, load_rgb
    from malm_edge.training.harness.student import load_student

    register_executorch_backend()  # host tools register it (the edge runtime is torch-free); alone, so does this test
    photo = built["extra_photos"][0]
    student = load_student(built["student_run"])
    with Retriever(built["out"], backend=backend) as retriever:
        hits = retriever.search(photo, k=5)
        assert len(hits) == 5 and retriever.backend.name == backend
        pixels = EvalTransform(student.preprocessing)(load_rgb(photo))[None]
        eager_hits = retriever.search_embedding(eager_embeddings(student.model, pixels)[0], k=5)
        assert hits[0]["id"] == eager_hits[0]["id"] or "int8" in retriever.backend.encoder
        ids = [r.id for r in iter_records(built["data"])]
        assert [r["id"] for r in retriever.catalog.lookup(range(len(ids)))] == ids  # text-only too


def test_existing_output_is_refused_before_any_work(built):
    result = CliRunner().invoke(_cli(), [
        "convert", str(built["student_run"]), "--recipes", str(built["data"]), "--out", str(built["out"])])
    assert result.exit_code == 1 and "already exists" in result.output


def test_failed_conversion_leaves_no_bundle(built, tmp_path):
    from malm_edge.converters.bundle_builder import ConvertOptions, convert
    from malm_edge.converters.calibration import CalibrationError

    empty = tmp_path / "no_photos"
    empty.mkdir()
    out = tmp_path / "bundle"
    with pytest.raises(CalibrationError):
        convert(built["student_run"], built["data"], out,
                ConvertOptions(targets=("onnx",), calibration=empty, progress=False))
    assert list(tmp_path.iterdir()) == [empty]


def test_report_cli_lists_every_stage(built):
    result = CliRunner().invoke(_cli(), ["report", str(built["out"])])
    assert result.exit_code == 0, result.output
    for stage in ("| teacher |", "| student |", "| student quantized |", "encoder_int8.pte",
                  "encoder_fp32.onnx", "runs on macOS only"):
        assert stage in result.output
    assert (built["out"] / "report.md").is_file() and (built["out"] / "report.png").is_file()
    table_line = next(line for line in result.output.splitlines() if line.startswith("| exact (int8 rows"))
    _, rows, per_recipe, recall1, recall10, ms = [cell.strip() for cell in table_line.strip("|").split("|")]
    dim = read_bundle(built["out"]).manifest.table.dim
    assert int(rows.replace(",", "")) > 0 and float(per_recipe) == dim + 4  # int8 rows + a float32 scale
    assert 0.0 <= float(recall1) <= 1.0 and 0.0 <= float(recall10) <= 1.0 and float(ms) > 0
    rows = json.loads((built["out"] / "report.json").read_text())
    assert all(r["r1"] is None or 0.0 <= r["r1"] <= 1.0 for r in rows)
    read_bundle(built["out"])  # the report files do not disturb the checksums


def test_convert_twostage_table_writes_table_version_3(built, tmp_path):
    from malm_edge.edge.bundle import read_bundle
    from malm_edge.edge.retriever import Retriever

    out = tmp_path / "bundle"
    result = CliRunner().invoke(_cli(), [
        "convert", str(built["student_run"]), "--recipes", str(built["data"]), "--out", str(out), "--target", "onnx",
        "--quantize", "none", "--table", "twostage", "--candidates", "12", "--n-calibration", "16",
        "--n-verify", "16", "--batch-size", "16", "--no-report", "--json"])
    assert result.exit_code == 0, result.output
    table = read_bundle(out).manifest.table
    assert (table.version, table.dtype, table.candidates, table.codes_file) == (3, "int8n", 12, "table.sign.u64")
    summary = json.loads(result.stdout)["table"]
    assert summary["table_version"] == 3 and summary["bytes_per_recipe"] <= table.dim
    with Retriever(out, backend="onnx") as retriever:
        hits = retriever.search(built["extra_photos"][0], k=3)
    assert len(hits) == 3


def test_convert_narrows_the_table_and_the_encoder_together(built, tmp_path):
    from malm_edge.converters.projection import PROJECTION_FILE
    from malm_edge.edge.retriever import Retriever

    out = tmp_path / "narrow"
    result = CliRunner().invoke(_cli(), [
        "convert", str(built["student_run"]), "--recipes", str(built["data"]), "--out", str(out), "--target", "onnx",
        "--quantize", "none", "--table", "twostage", "--table-width", "32", "--n-calibration", "16",
        "--n-verify", "16", "--batch-size", "16", "--no-report"])
    assert result.exit_code == 0, result.output
    assert "32 of the teacher's 64 dims" in result.output
    manifest = read_bundle(out).manifest
    assert manifest.embedding_dim == manifest.table.dim == 32 and manifest.encoders[0].output.shape[-1] == 32
    assert manifest.provenance["table_projection"]["from_dim"] == 64
    assert [x.file for x in manifest.extra_files] == [PROJECTION_FILE]
    assert manifest.encoders[0].verification.cosine_min > 0.99  # the file emits the folded student's output
    with Retriever(out, backend="onnx") as retriever:
        assert len(retriever.search(built["extra_photos"][0], k=3)) == 3
    report = CliRunner().invoke(_cli(), ["report", str(out), "--data", str(built["data"])])
    assert report.exit_code == 0, report.output
    report_md = (out / "report.md").read_text()
    assert "32 of the teacher's 64 dims" in report_md and "| student narrowed |" in report_md
    read_bundle(out)  # the report's files are named in the manifest beside the projection


def test_a_table_wider_than_the_teacher_is_refused_before_the_catalog_is_embedded(built, tmp_path):
    result = CliRunner().invoke(_cli(), [
        "convert", str(built["student_run"]), "--recipes", str(built["data"]), "--out", str(tmp_path / "b"),
        "--target", "onnx", "--table", "twostage", "--table-width", "65", "--n-calibration", "16",
        "--n-verify", "16", "--no-report"])
    assert result.exit_code != 0 and "--table-width 65" in result.output and "1..64" in result.output
    assert not (tmp_path / "b").exists()
