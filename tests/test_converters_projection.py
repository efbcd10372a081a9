"""converters/projection.py: the table's width reduction (PCA of the recipe embeddings), folded into the
student's output layer so the exported encoder emits the table's width."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from malm_edge.converters import projection as pj


def _rows_in_subspace(n: int, dim: int, rank: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))  # (D, r) orthonormal
    rows = rng.standard_normal((n, rank)) @ basis.T  # (n, D) inside the subspace
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_projection_onto_the_rows_subspace_keeps_every_dot_product():
    rows = _rows_in_subspace(300, 64, 16)
    projection = pj.fit_projection(np.array_split(rows, 3), 16)  # streamed over three "shards"
    assert projection.matrix.shape == (64, 16) and projection.retained_energy == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(projection.matrix.T @ projection.matrix, np.eye(16), atol=1e-5)
    projected = projection.apply(rows)  # (300, 16) unit rows
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(projected @ projected.T, rows @ rows.T, atol=1e-5)


def test_a_narrower_projection_keeps_the_top_directions_in_order_and_is_deterministic():
    rng = np.random.default_rng(1)
    scales = np.array([8.0, 4.0, 2.0, 1.0] + [0.1] * 28)  # four strong dims, in decreasing energy
    rows = (rng.standard_normal((500, 32)) * scales).astype(np.float32)
    first, again = pj.fit_projection([rows], 4), pj.fit_projection([rows[::-1].copy()], 4)
    np.testing.assert_allclose(first.matrix, again.matrix, atol=1e-5)  # signs fixed, order-free
    assert list(np.abs(first.matrix).argmax(axis=0)) == [0, 1, 2, 3]  # the strongest first
    energy = (scales[:4] ** 2).sum() / (scales ** 2).sum()
    assert first.retained_energy == pytest.approx(energy, rel=0.1) and first.retained_energy < 1


def test_default_width_fits_a_two_stage_table_in_128_bytes():
    assert pj.table_width(512, "twostage", None) == 128
    assert pj.table_width(64, "twostage", None) == 64
    assert pj.table_width(512, "exact", None) == 512
    assert pj.table_width(512, "exact", 96) == 96
    with pytest.raises(pj.ProjectionError, match="1..64"):
        pj.table_width(64, "twostage", 65)


def test_folded_student_emits_the_projected_direction():
    from malm_edge.training.models.student import create_student
    from malm_edge.training.presets import get_student_preset

    torch.manual_seed(0)
    student = create_student(get_student_preset("mnv3_micro")).eval()  # 64-d
    pixels = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        full = student(pixels).numpy()  # (4, 64)
    projection = pj.fit_projection([np.random.default_rng(2).standard_normal((200, 64))], 24)
    folded = pj.fold_into_student(student, projection)
    with torch.no_grad():
        narrow = folded(pixels).numpy()  # (4, 24)
    assert folded.embed_dim == 24 and student.embed_dim == 64  # the original is untouched
    np.testing.assert_allclose(narrow, projection.apply(full), atol=1e-5)
    with pytest.raises(pj.ProjectionError, match="24 dims, the projection expects 64"):
        pj.fold_into_student(folded, projection)


def _manifest(folder, record: dict | None) -> SimpleNamespace:
    from malm_edge.edge.bundle import ExtraFile, sha256_path

    path = folder / pj.PROJECTION_FILE
    listed = [ExtraFile(pj.PROJECTION_FILE, sha256_path(path))] if path.exists() else []
    return SimpleNamespace(provenance={} if record is None else {"table_projection": record}, extra_files=listed)


def test_saved_projection_reads_back_only_as_the_manifest_names_it(tmp_path):
    projection = pj.fit_projection([np.random.default_rng(3).standard_normal((50, 16))], 8)
    pj.save_projection(tmp_path / pj.PROJECTION_FILE, projection)
    record = projection.to_provenance()
    manifest = _manifest(tmp_path, record)
    np.testing.assert_array_equal(pj.load_projection(tmp_path, manifest).matrix, projection.matrix)
    assert pj.load_projection(tmp_path, _manifest(tmp_path, None)) is None  # a full-width table
    with pytest.raises(pj.ProjectionError, match="must name"):  # no other path, inside or out
        pj.load_projection(tmp_path, _manifest(tmp_path, {**record, "file": "../elsewhere.f32"}))
    (tmp_path / pj.PROJECTION_FILE).write_bytes((tmp_path / pj.PROJECTION_FILE).read_bytes()[:-4])
    with pytest.raises(pj.ProjectionError, match="sha256"):  # changed after the manifest was written
        pj.load_projection(tmp_path, manifest)
    with pytest.raises(pj.ProjectionError, match="expected 16 x 8"):  # listed, but the wrong size
        pj.load_projection(tmp_path, _manifest(tmp_path, record))
