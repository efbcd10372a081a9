"""A narrower recipe table for a wide teacher: the recipe embeddings' top principal directions.

A two-stage table (table version 3) costs D bytes a recipe for D-dim embeddings, so a teacher wider
than 128 (`small` and `base` embed into 512) misses the 128-bytes-a-recipe budget. `convert
--table-width W` projects every recipe embedding onto the W directions that hold most of the
catalog's energy (the top eigenvectors of the uncentred second moment E[r r^T], which keep dot
products best), renormalises it, and folds the same projection into the student's output layer:
normalize(P^T normalize(A h + b)) = normalize((P^T A) h + P^T b), so the exported encoder emits
W-dim embeddings and no runtime (edge/, the native core, the PWA) changes. The (D, W) matrix is kept
in the bundle (`table_projection.f32`, raw little-endian float32, row-major, named in the manifest's
`extra_files` and `provenance.table_projection`) so `malm-edge report` can score the teacher in its
own width beside the bundle's files.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from malm_edge.converters.errors import ConverterError

PROJECTION_FILE = "table_projection.f32"
TWOSTAGE_WIDTH = 128  # the widest two-stage table that fits 128 bytes a recipe (D bytes a row)


class ProjectionError(ConverterError, ValueError):
    """A table width that cannot be applied (wider than the embeddings, a bad projection file)."""


@dataclass
class TableProjection:
    """(D, W) orthonormal columns: the catalog's top-W principal directions, and what they keep.

    Attributes:
        matrix: (D, W) float32, columns ordered by eigenvalue, each with its largest entry positive.
        retained_energy: Share of the recipe embeddings' energy (sum of squares) inside the W directions.
    """

    matrix: np.ndarray
    retained_energy: float

    @property
    def from_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def width(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) embeddings -> (N, W) float32 unit rows (zero rows stay zero)."""
        projected = np.asarray(embeddings, dtype=np.float64) @ self.matrix.astype(np.float64)  # (N, W)
        norms = np.linalg.norm(projected, axis=1, keepdims=True)  # (N, 1)
        return (projected / np.maximum(norms, 1e-12)).astype(np.float32)

    def to_provenance(self) -> dict[str, Any]:
        return {"file": PROJECTION_FILE, "from_dim": self.from_dim, "width": self.width,
                "retained_energy": round(float(self.retained_energy), 6)}


def table_width(dim: int, table_format: str, requested: int | None) -> int:
    """The table's width: `requested`, else 128 for a two-stage table of wider embeddings, else `dim`."""
    if requested is None:
        return min(dim, TWOSTAGE_WIDTH) if table_format == "twostage" else dim
    if not 1 <= requested <= dim:
        raise ProjectionError(f"--table-width {requested}: the teacher embeds into {dim} dims, so the table "
                              f"width must be 1..{dim}")
    return requested


def fit_projection(shards: Iterable[np.ndarray], width: int) -> TableProjection:
    """The top-`width` principal directions of the rows of `shards` ((n_i, D) arrays, streamed once)."""
    moment, rows = None, 0
    for values in shards:
        values = np.asarray(values, dtype=np.float64)  # (n, D)
        part = values.T @ values  # (D, D)
        moment = part if moment is None else moment + part
        rows += len(values)
    if moment is None or rows == 0:
        raise ProjectionError("no recipe embeddings to fit the table's projection on")
    if not 1 <= width <= moment.shape[0]:
        raise ProjectionError(f"table width {width}: the embeddings have {moment.shape[0]} dims")
    eigenvalues, eigenvectors = np.linalg.eigh(moment)  # ascending
    top = eigenvectors[:, ::-1][:, :width]  # (D, W), largest eigenvalue first
    peaks = np.abs(top).argmax(axis=0)  # (W,)
    top = top * np.sign(top[peaks, np.arange(width)])[None, :]  # deterministic signs
    total = float(np.clip(eigenvalues, 0, None).sum())
    kept = float(np.clip(eigenvalues[::-1][:width], 0, None).sum())
    return TableProjection(np.ascontiguousarray(top, dtype=np.float32), kept / total if total > 0 else 1.0)


def save_projection(path: str | os.PathLike, projection: TableProjection) -> None:
    """Write the (D, W) matrix as raw little-endian float32, row-major."""
    Path(path).write_bytes(np.ascontiguousarray(projection.matrix, dtype="<f4").tobytes())


def load_projection(bundle_dir: str | os.PathLike, manifest: Any) -> TableProjection | None:
    """The projection a manifest's `provenance.table_projection` names (None: a full-width table).

    Only `table_projection.f32` at the bundle's top is read, and only when the manifest's
    `extra_files` name it with a matching sha256.
    """
    from malm_edge.edge.bundle import sha256_path

    record = manifest.provenance.get("table_projection")
    if record is None:
        return None
    listed = {x.file: x.sha256 for x in manifest.extra_files}
    path = Path(bundle_dir) / PROJECTION_FILE
    if not isinstance(record, dict) or record.get("file") != PROJECTION_FILE or PROJECTION_FILE not in listed:
        raise ProjectionError(f"{bundle_dir}: provenance.table_projection must name {PROJECTION_FILE}, "
                              "listed in the manifest's extra_files")
    try:
        shape = (int(record["from_dim"]), int(record["width"]))
        if path.is_symlink() or sha256_path(path) != listed[PROJECTION_FILE]:
            raise ValueError("not the file the manifest names (sha256)")
        matrix = np.fromfile(path, dtype="<f4")
    except (KeyError, TypeError, ValueError, OSError) as error:
        raise ProjectionError(f"{path}: cannot read the table projection ({error})") from None
    if matrix.size != shape[0] * shape[1]:
        raise ProjectionError(f"{path}: {matrix.size} floats, expected {shape[0]} x {shape[1]}")
    return TableProjection(matrix.reshape(shape).astype(np.float32), float(record.get("retained_energy", 0.0)))


def fold_into_student(model: nn.Module, projection: TableProjection) -> nn.Module:
    """A copy of a student (StudentEncoder: `proj` linear, then L2 normalisation) emitting W dims.

    The output direction equals normalize(P^T student(x)) for every input (module doc).
    """
    if model.proj.out_features != projection.from_dim:
        raise ProjectionError(f"the student embeds into {model.proj.out_features} dims, the projection "
                              f"expects {projection.from_dim}")
    folded = copy.deepcopy(model)
    weight = model.proj.weight
    p = torch.as_tensor(projection.matrix, dtype=weight.dtype, device=weight.device)  # (D, W)
    linear = nn.Linear(model.proj.in_features, projection.width, dtype=weight.dtype, device=weight.device)
    with torch.no_grad():
        linear.weight.copy_(p.T @ model.proj.weight)  # (W, C)
        linear.bias.copy_(p.T @ model.proj.bias)  # (W,)
    folded.proj = linear
    folded.config = dataclasses.replace(model.config, embed_dim=projection.width)
    return folded.eval()
