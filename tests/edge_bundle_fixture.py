"""A small hand-made bundle for edge/ tests (and later the PWA tests): tiny conv encoder exported
to ONNX and ExecuTorch (XNNPACK; target "executorch_int8" adds the project's PT2E int8 export,
calibrated on real photos), a ~200-row int8 table built from its embeddings, a fake catalog.

Torch is used here, in the test helper only; edge/ itself never imports it.

Usage from a test::

    from edge_bundle_fixture import get_bundle
    bundle_dir = get_bundle(tmp_path_factory)          # built once per pytest session
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from malm_edge.edge.bundle import (
    Manifest,
    Preprocessing,
    TensorSpec,
    make_catalog_entry,
    make_encoder_entry,
    write_manifest,
)
from malm_edge.edge.catalog import CATALOG_FILE, write_catalog
from malm_edge.edge.table import write_table
from malm_edge.edge.twostage import write_twostage_table

INPUT_SIZE = 32
RESIZE_SIZE = 36
EMBED_DIM = 16
ROWS = 200
TWOSTAGE_CANDIDATES = 40  # < ROWS: the prefilter drops rows in the shared two-stage table
ONNX_FILE = "encoder_fp32.onnx"
PTE_FILE = "encoder_fp32_xnnpack.pte"
PTE_INT8_FILE = "encoder_int8.pte"
N_CALIBRATION = 16
_WORDS = ["chicken", "curry", "tomato", "basil", "lemon", "garlic", "rice", "noodle", "beef",
          "tofu", "salmon", "mushroom", "pepper", "ginger", "apple", "chocolate"]
_CACHE: dict[str, Path] = {}


def tiny_encoder(seed: int = 0):
    """conv -> relu -> conv -> relu -> global avgpool -> linear -> L2 normalise; (N,3,S,S) -> (N,D)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.proj = nn.Linear(32, EMBED_DIM)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv1(pixels))  # (N, 16, S/2, S/2)
            x = F.relu(self.conv2(x))  # (N, 32, S/4, S/4)
            x = x.mean(dim=(2, 3))  # (N, 32)
            return F.normalize(self.proj(x), dim=-1)  # (N, D)

    torch.manual_seed(seed)
    return TinyEncoder().eval()


def export_onnx(model, path: Path) -> None:
    """torch.onnx.export with the dynamo exporter, a dynamic batch and weights inside the file
    (bundle rule: an .onnx encoder is self-contained, no external-data side files)."""
    import torch

    example = (torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE),)
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), dynamo=True, input_names=["pixels"],
                          output_names=["embedding"], dynamic_shapes={"pixels": {0: batch}},
                          external_data=False,
                          verbose=False)


def export_pte(model, path: Path) -> None:
    """torch.export -> to_edge_transform_and_lower(XnnpackPartitioner) -> .pte (batch 1)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE),))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        path.write_bytes(lowered.to_executorch().buffer)


def calibration_photos() -> list[Path]:
    """Real photos for int8 calibration, none of them among test_native's parity photos."""
    from conftest import SHARED_DATASETS

    photos = sorted((SHARED_DATASETS / "photos" / "recipe1m_val").glob("*.jpg"))[20:20 + N_CALIBRATION]
    if len(photos) < N_CALIBRATION:
        import pytest

        pytest.skip(f"int8 calibration needs {N_CALIBRATION} real photos under {SHARED_DATASETS}/photos")
    return photos


def export_pte_int8(model, path: Path) -> None:
    """The converters' own int8 path (PT2E XNNPACKQuantizer, per-channel) calibrated on real photos."""
    import torch

    from malm_edge.converters.export_executorch import export_executorch
    from malm_edge.edge.preprocess import preprocess_image

    pre = Preprocessing(input_size=INPUT_SIZE, resize_size=RESIZE_SIZE)
    calibration = torch.from_numpy(np.concatenate([preprocess_image(p, pre) for p in calibration_photos()]))
    export_executorch(model, calibration[:1], path, quantize="int8", calibration=calibration)


def fake_recipes(n: int, seed: int = 0) -> list[dict]:
    """n fake recipes with distinct ids and word-based titles/ingredients."""
    rng = np.random.default_rng(seed)
    recipes = []
    for i in range(n):
        words = [_WORDS[j] for j in rng.choice(len(_WORDS), size=3, replace=False)]
        recipes.append({"id": f"r{i:05d}", "title": f"{words[0].title()} {words[1]} dish {i}",
                        "ingredients": [f"1 cup {w}" for w in words],
                        "instructions": [f"Cook the {words[0]}.", "Serve."],
                        "image": f"images/r{i:05d}.jpg" if i % 2 == 0 else None})
    return recipes


def table_embeddings(model, n: int = ROWS, seed: int = 0) -> np.ndarray:
    """(n, D) L2-normalised table rows: the encoder's embeddings of random images (so scores spread)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, INPUT_SIZE, INPUT_SIZE, generator=generator) * 0.5
    images += torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1  # per-image colour cast
    with torch.no_grad():
        embeddings = model(images).numpy()
    noise = np.random.default_rng(seed).normal(scale=0.05, size=embeddings.shape)
    rows = embeddings + noise
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def build_bundle(out_dir: Path, *, targets: tuple[str, ...] = ("onnx", "executorch"),
                 rows: int = ROWS, table_dtype: str = "int8", seed: int = 0,
                 table_format: str = "exact") -> Path:
    """Write a complete, valid bundle into out_dir and return it.

    table_format "twostage" writes a table version 3 (edge/twostage.py) whose rows hold exact
    duplicates (rows 3 and 10 repeat rows 1 and 2), so top-k ties are exercised by every reader.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = tiny_encoder(seed)
    encoders = []
    specs = {"onnx": (ONNX_FILE, export_onnx, "batch", "none"), "executorch": (PTE_FILE, export_pte, 1, "none"),
             "executorch_int8": (PTE_INT8_FILE, export_pte_int8, 1, "int8")}
    for target in targets:
        file, export, batch, quantization = specs[target]
        export(model, out_dir / file)
        target = target.removesuffix("_int8")
        encoders.append(make_encoder_entry(
            out_dir, file, name=f"tiny_{'fp32' if quantization == 'none' else quantization}_{target}",
            target=target, quantization=quantization,
            input=TensorSpec("pixels", [batch, 3, INPUT_SIZE, INPUT_SIZE]),
            output=TensorSpec("embedding", [batch, EMBED_DIM])))
    embeddings = table_embeddings(model, rows, seed)  # (rows, D)
    if table_format == "twostage":
        embeddings[[3, 10]] = embeddings[[1, 2]]  # exact ties for the shared parity table
        table = write_twostage_table(out_dir, embeddings, candidates=TWOSTAGE_CANDIDATES)
    else:
        table = write_table(out_dir, embeddings, dtype=table_dtype)
    count = write_catalog(out_dir / CATALOG_FILE, fake_recipes(rows, seed))
    manifest = Manifest(
        embedding_dim=EMBED_DIM,
        preprocessing=Preprocessing(input_size=INPUT_SIZE, resize_size=RESIZE_SIZE),
        encoders=encoders, table=table, catalog=make_catalog_entry(out_dir, CATALOG_FILE, count),
        provenance={"teacher_config_hash": "test", "student_config_hash": "test",
                    "teacher_run": None, "student_run": None, "metrics": {}})
    write_manifest(out_dir, manifest)
    return out_dir


def get_bundle(tmp_path_factory, **kwargs) -> Path:
    """The session's shared test bundle (built on first use; do not modify it; copy to tamper)."""
    key = repr(sorted(kwargs.items()))
    if key not in _CACHE:
        _CACHE[key] = build_bundle(tmp_path_factory.mktemp("edge_bundle"), **kwargs)
    return _CACHE[key]


def rewrite_as_table_v2(bundle_dir: Path, out: Path) -> Path:
    """A copy of a two-stage bundle at `out` whose table is rewritten as table version 2 (the same
    decoded rows, so their ties are kept), with its manifest rewritten to match."""
    import dataclasses
    import shutil

    from malm_edge.edge.bundle import read_bundle, write_manifest
    from malm_edge.edge.table import open_bundle_table

    bundle = read_bundle(bundle_dir)
    rows = open_bundle_table(bundle).dequantize()  # (N, D)
    shutil.copytree(bundle_dir, out)
    for name in (bundle.manifest.table.file, bundle.manifest.table.codes_file):
        (out / name).unlink()
    entry = write_twostage_table(out, rows, candidates=bundle.manifest.table.candidates, version=2)
    write_manifest(out, dataclasses.replace(bundle.manifest, table=entry))
    return out
