"""Bundles with a real student architecture (random weights) for the web demo's tests and benchmark.

A `micro` MobileNetV3 student (training/models/student.py, 64 px, 64-d) exported to ONNX by
converters/export_onnx.py (fp32, optionally QDQ int8 calibrated on real photos), a table of its
embeddings of perturbed real photos (so the scores spread like a real table's), fake recipes.
The same bundle format v1 `malm-edge convert` writes; torch is used here, in test helpers only.

    from demo_bundles import build_student_bundle
    bundle_dir = build_student_bundle(tmp_path / "bundle", photos, preset="mnv3_micro", rows=300)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from edge_bundle_fixture import fake_recipes

from malm_edge.edge.bundle import (
    Manifest,
    Preprocessing,
    TensorSpec,
    make_catalog_entry,
    make_encoder_entry,
    write_manifest,
)
from malm_edge.edge.catalog import CATALOG_FILE, write_catalog
from malm_edge.edge.preprocess import preprocess_image
from malm_edge.edge.table import write_table


def _table_rows(model, photos: np.ndarray, rows: int, seed: int, images: int = 256,
                chunk: int = 64) -> np.ndarray:
    """(rows, D) L2-normalised table rows: the model's embeddings of up to `images` perturbed photos
    (random colour casts and shifts), each row one of them plus Gaussian noise (a big table costs
    no more model calls)."""
    import torch

    rng = np.random.default_rng(seed)
    parts = []
    for start in range(0, min(rows, images), chunk):
        n = min(chunk, min(rows, images) - start)
        picks = photos[rng.integers(0, len(photos), n)]  # (n, 3, S, S)
        picks = picks * rng.uniform(0.6, 1.4, (n, 3, 1, 1)) + rng.normal(0, 0.3, (n, 3, 1, 1))
        picks = np.roll(picks, rng.integers(-8, 8), axis=(2, 3)).astype(np.float32)
        with torch.no_grad():
            parts.append(model(torch.from_numpy(picks)).numpy())  # (n, D)
    base = np.concatenate(parts)  # (min(rows, images), D)
    embeddings = base[np.arange(rows) % len(base)] + rng.normal(0, 0.2, (rows, base.shape[1]))  # (rows, D)
    return (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)


def build_student_bundle(out_dir: Path, photo_paths: list[Path], *, preset: str = "mnv3_micro",
                         rows: int = 300, quantizations: tuple[str, ...] = ("none",),
                         seed: int = 0) -> Path:
    """Write a complete bundle with one ONNX encoder per quantization ("none", "int8").

    Args:
        out_dir: The bundle folder to write.
        photo_paths: Real photos: int8 calibration and table rows.
        preset: A student preset (training/presets.py STUDENT_PRESETS); pretrained ones start from
            their ImageNet weights.
        rows: Table rows (and fake recipes).
        quantizations: ONNX encoders to export, in manifest order.
        seed: Weights, table and recipe seed.
    """
    import torch

    from malm_edge.converters.export_onnx import export_onnx
    from malm_edge.training.models.student import create_student
    from malm_edge.training.presets import get_student_preset

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = create_student(get_student_preset(preset), load_pretrained=True).eval()
    size = model.config.image_size
    pre = Preprocessing(input_size=size)
    photos = np.concatenate([preprocess_image(p, pre) for p in photo_paths])  # (P, 3, S, S)
    encoders = []
    for quantization in quantizations:
        name = f"{preset}_{'fp32' if quantization == 'none' else quantization}_onnx"
        report = export_onnx(model, torch.from_numpy(photos[:1]), out_dir / f"{name}.onnx",
                             quantize=quantization, calibration=torch.from_numpy(photos))
        encoders.append(make_encoder_entry(
            out_dir, f"{name}.onnx", name=name, target="onnx", quantization=quantization,
            input=TensorSpec("pixels", list(report.input_shape)),
            output=TensorSpec("embedding", list(report.output_shape))))
    table = write_table(out_dir, _table_rows(model, photos, rows, seed), dtype="int8")
    count = write_catalog(out_dir / CATALOG_FILE, fake_recipes(rows, seed))
    manifest = Manifest(embedding_dim=model.config.embed_dim, preprocessing=pre, encoders=encoders,
                        table=table, catalog=make_catalog_entry(out_dir, CATALOG_FILE, count),
                        provenance={"student_config_hash": f"random-{preset}", "metrics": {}})
    write_manifest(out_dir, manifest)
    return out_dir
