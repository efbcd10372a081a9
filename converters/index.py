"""The recipe table: every recipe of a catalog embedded by the teacher's recipe tower, in shards.

`build_index` streams `recipes.jsonl` (only the current shard's recipes are held in memory; the
table for Recipe1M's 1,029,720 recipes is never held whole), embeds recipes in batches and writes
one shard per `shard_size` recipes::

    DIR/index.json            teacher checkpoint and config hash, recipes file (path, size), shard size
    DIR/shard-00000.npy       float32 [n, D] (n = shard_size except for the last shard)
    DIR/shard-00000.ids.json  the n recipe ids, in recipes.jsonl order

Each shard is written under temporary names and renamed (ids first, then the .npy), so an
interrupted run leaves only complete shards; a rerun skips them (resume). Under torchrun, rank r of
W takes shards r, r + W, ... and no communication is needed until `finalize`. (Every rank parses
the whole file to count positions; the canonical reader keeps the ids seen, to refuse duplicates.)

`finalize` streams the shards in order into edge's `TableWriter` (int8 with per-row scales, or
float16; `table_format="twostage"`: a first pass computes the centre, then edge's
`TwoStageWriter` writes sign codes and 8-bit rows, table version 3) and edge's `write_catalog`
(row i of the catalog is row i of the table) in one pass over `recipes.jsonl`, checking every id;
with a `TableProjection` (converters/projection.py) every row is first narrowed to its W dims.
`table_quality` reports recall@1 / recall@10 of the quantized table against exact float32 search
over the shards, with the table version and bytes a recipe.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
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
from malm_edge.converters.progress import recipe_progress
from malm_edge.converters.projection import TableProjection
from malm_edge.edge.bundle import TableEntry
from malm_edge.edge.catalog import CATALOG_FILE, write_catalog
from malm_edge.edge.safe_json import load_json_file
from malm_edge.edge.table import EmbeddingTable, TableWriter, read_table, search_topk
from malm_edge.edge.twostage import DEFAULT_CANDIDATES, TwoStageWriter
from malm_edge.edge.write_errors import guard_writes
from malm_edge.training.data.canonical import iter_records, recipes_path
from malm_edge.training.data.records import Recipe
from malm_edge.training.harness.distributed import WorldInfo, world_info_from_env

INDEX_META = "index.json"
DEFAULT_SHARD_SIZE = 8192
DEFAULT_BATCH_SIZE = 128
logger = logging.getLogger(__name__)


class IndexFolderError(ConverterError, RuntimeError):
    """An index folder is inconsistent (other teacher, other recipes, missing or bad shard)."""


@dataclass
class IndexResult:
    """What `build_index` did on this process."""

    out_dir: Path
    shards_total: int
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    rows_computed: int = 0
    seconds: float = 0.0

    @property
    def recipes_per_second(self) -> float:
        return self.rows_computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out_dir"] = str(self.out_dir)
        data["recipes_per_second"] = self.recipes_per_second
        return data


def shard_paths(out_dir: Path, shard: int) -> tuple[Path, Path]:
    """(embeddings .npy, ids .json) of shard number `shard`."""
    stem = f"shard-{shard:05d}"
    return out_dir / f"{stem}.npy", out_dir / f"{stem}.ids.json"


def shard_complete(out_dir: Path, shard: int) -> bool:
    """True when both files of the shard exist and agree on the row count."""
    npy, ids = shard_paths(out_dir, shard)
    if not (npy.is_file() and ids.is_file()):
        return False
    try:
        rows = np.load(npy, mmap_mode="r").shape[0]
        return rows == len(json.loads(ids.read_text(encoding="utf-8")))
    except (ValueError, OSError):
        return False


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    with guard_writes(path, ConverterError, intact="shards already written are kept; rerun to resume"):
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(handle)
        try:
            write(Path(temp))
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def write_shard(out_dir: Path, shard: int, embeddings: np.ndarray, ids: list[str]) -> None:
    """Write one shard atomically: ids first, then the .npy that marks it complete."""
    npy, ids_path = shard_paths(out_dir, shard)
    _atomic(ids_path, lambda p: p.write_text(json.dumps(ids), encoding="utf-8"))

    def save(p: Path) -> None:
        with open(p, "wb") as handle:
            np.save(handle, np.ascontiguousarray(embeddings, dtype=np.float32))

    _atomic(npy, save)


def count_recipes(recipes_dir: Path) -> int:
    """Non-blank lines of recipes.jsonl (a cheap upper bound of the recipe count, for progress)."""
    with recipes_path(recipes_dir).open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def iter_shards(recipes_dir: Path, shard_size: int,
                wanted: Callable[[int], bool] = lambda _: True) -> Iterator[tuple[int, list[Recipe]]]:
    """Stream (shard number, recipes) in recipes.jsonl order; unwanted shards are not collected."""
    batch: list[Recipe] = []
    current = 0
    for position, recipe in enumerate(iter_records(recipes_dir)):
        shard = position // shard_size
        if shard != current:
            if batch:
                yield current, batch
            batch, current = [], shard
        if wanted(shard):
            batch.append(recipe)
    if batch:
        yield current, batch


def embed_recipes(teacher: Any, recipes: list[Recipe], batch_size: int = DEFAULT_BATCH_SIZE,
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """(n, D) float32 recipe embeddings from a `LoadedTeacher` (tokenizer + recipe tower)."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(recipes), batch_size):
            chunk = recipes[start:start + batch_size]
            batch = teacher.tokenizer.encode_batch(chunk)  # dict of (B, ...) tensors
            parts.append(teacher.model.encode_recipes(batch).float().numpy())  # (B, D)
            if on_batch is not None:
                on_batch(len(chunk))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _index_meta(teacher: Any, recipes_dir: Path, shard_size: int) -> dict[str, Any]:
    return {"format": "malm-edge-index", "version": 1,
            "teacher_config_hash": teacher.config.get("config_hash"),
            "teacher_checkpoint": str(teacher.checkpoint),
            "recipes": str(recipes_path(recipes_dir).resolve()),
            "recipes_bytes": recipes_path(recipes_dir).stat().st_size, "shard_size": shard_size}


def _check_or_write_meta(out_dir: Path, meta: dict[str, Any], world: WorldInfo) -> None:
    path = out_dir / INDEX_META
    if path.is_file():
        old = load_json_file(path, error=IndexFolderError)
        keys = ("teacher_config_hash", "teacher_checkpoint", "recipes", "recipes_bytes", "shard_size")
        diff = [k for k in keys if old.get(k) != meta.get(k)]
        if diff:
            raise IndexFolderError(f"{path}: this index was built with other settings ({', '.join(diff)}); "
                                   "use another --out or delete it")
    elif world.is_main:
        _atomic(path, lambda p: p.write_text(json.dumps(meta, indent=2), encoding="utf-8"))


def build_index(teacher: Any, recipes_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                world: WorldInfo | None = None, progress: bool = True,
                on_shard: Callable[[int], None] | None = None) -> IndexResult:
    """Embed every recipe of `recipes_dir` (with or without images) into shards under `out_dir`.

    Args:
        teacher: A `LoadedTeacher` (training/teacher.py), eval mode.
        recipes_dir: Canonical dataset folder (recipes.jsonl).
        out_dir: Index folder (created; complete shards already there are kept and skipped).
        shard_size: Recipes per shard.
        batch_size: Recipes per forward pass.
        world: This process's rank / world size (default: torchrun's environment).
        progress: Show a rich progress bar (rank 0 only).
        on_shard: Called with each shard number after it is written (tests use it to interrupt).

    Returns:
        An `IndexResult` for this process's shards.
    """
    recipes_dir, out_dir = Path(recipes_dir), Path(out_dir)
    world = world or world_info_from_env()
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_or_write_meta(out_dir, _index_meta(teacher, recipes_dir, shard_size), world)
    total = count_recipes(recipes_dir)
    shards_total = (total + shard_size - 1) // shard_size
    mine = [s for s in range(shards_total) if s % world.world_size == world.rank]
    result = IndexResult(out_dir, shards_total)
    result.skipped = [s for s in mine if shard_complete(out_dir, s)]
    todo = set(mine) - set(result.skipped)
    start = time.perf_counter()
    teacher.model.eval()
    with recipe_progress(progress and world.is_main, "embedding recipes",
                         sum(min(shard_size, total - s * shard_size) for s in todo)) as advance:
        for shard, recipes in iter_shards(recipes_dir, shard_size, lambda s: s in todo):
            embeddings = embed_recipes(teacher, recipes, batch_size, advance)  # (n, D)
            write_shard(out_dir, shard, embeddings, [r.id for r in recipes])
            result.computed.append(shard)
            result.rows_computed += len(recipes)
            if on_shard is not None:
                on_shard(shard)
    result.seconds = time.perf_counter() - start
    return result


def list_shards(index_dir: Path) -> list[int]:
    """Shard numbers present (complete or not) in an index folder, sorted."""
    return sorted(int(p.name[6:11]) for p in Path(index_dir).glob("shard-*.npy"))


def iter_shard_arrays(index_dir: Path) -> Iterator[tuple[int, np.ndarray, list[str]]]:
    """(row offset, memory-mapped (n, D) embeddings, ids) of every shard in order.

    Raises:
        IndexFolderError: A shard is missing or incomplete.
    """
    index_dir, offset = Path(index_dir), 0
    shards = list_shards(index_dir)
    for expected, shard in enumerate(shards):
        if shard != expected or not shard_complete(index_dir, shard):
            raise IndexFolderError(f"{shard_paths(index_dir, expected)[0]}: missing or incomplete "
                                   "shard; rerun the index to complete it")
        npy, ids_path = shard_paths(index_dir, shard)
        values = np.load(npy, mmap_mode="r")
        yield offset, values, load_json_file(ids_path, error=IndexFolderError)
        offset += len(values)


def _check_shards_cover(index_dir: Path, recipes_dir: Path) -> None:
    meta = load_json_file(Path(index_dir) / INDEX_META, error=IndexFolderError)
    expected = (count_recipes(recipes_dir) + meta["shard_size"] - 1) // meta["shard_size"]
    missing = [s for s in range(expected) if not shard_complete(Path(index_dir), s)]
    if missing:
        raise IndexFolderError(f"{index_dir}: shards {missing[:10]} are missing or incomplete "
                               f"({len(missing)} of {expected}); run `malm-edge index` to finish them")


TABLE_FORMATS = ("exact", "twostage")


def shard_centre(index_dir: Path, projection: TableProjection | None = None) -> np.ndarray:
    """(D,) float32 mean row over all shards (float64 sums, one streamed pass); (W,) when projected."""
    total, count = None, 0
    for _, values, _ in iter_shard_arrays(index_dir):
        rows = values if projection is None else projection.apply(values)  # (n, D) or (n, W)
        part = np.asarray(rows, dtype=np.float64).sum(axis=0)  # (D,)
        total = part if total is None else total + part
        count += len(values)
    return (total / max(count, 1)).astype(np.float32)


def _table_writer(index_dir: Path, out_dir: Path, dim: int, table_dtype: str, table_format: str,
                  candidates: int, query_bits: int | None,
                  projection: TableProjection | None) -> TableWriter | TwoStageWriter:
    if table_format not in TABLE_FORMATS:
        raise ValueError(f"table format {table_format!r}, expected one of {TABLE_FORMATS}")
    if table_format == "twostage":
        return TwoStageWriter(out_dir, shard_centre(index_dir, projection), candidates, query_bits=query_bits)
    return TableWriter(out_dir, dim, table_dtype)


def finalize(index_dir: str | os.PathLike, recipes_dir: str | os.PathLike, out_dir: str | os.PathLike,
             *, table_dtype: str = "int8", table_format: str = "exact",
             candidates: int = DEFAULT_CANDIDATES, query_bits: int | None = None,
             catalog_file: str = CATALOG_FILE,
             projection: TableProjection | None = None) -> tuple[TableEntry, int]:
    """Stream the shards into the table files and the catalog (same order), in one pass.

    Args:
        index_dir: A complete index folder (`build_index`).
        recipes_dir: The same canonical dataset folder (the catalog text comes from it).
        out_dir: Where the table files and the catalog go (e.g. a bundle staging folder).
        table_dtype: "int8" (per-row scales) or "float16" (table_format "exact" only).
        table_format: "exact" (table version 1, `table_dtype` rows) or "twostage" (table version
            3: sign-bit prefilter + 8-bit rescoring of unit-length rows, edge/twostage.py).
        candidates: Rows the two-stage prefilter keeps (written into the manifest).
        query_bits: Bits of the two-stage prefilter's query weights (written into the manifest;
            None: the writer's default, 4 up to 4,369 dims).
        catalog_file: Catalog file name inside `out_dir`.
        projection: Write every row projected onto these W directions and renormalised
            (converters/projection.py), a W-dim table; None keeps the embeddings' own width.

    Returns:
        (the table's manifest entry, catalog row count).

    Raises:
        IndexFolderError: A shard is missing, or its ids differ from recipes.jsonl.
    """
    index_dir, recipes_dir, out_dir = Path(index_dir), Path(recipes_dir), Path(out_dir)
    _check_shards_cover(index_dir, recipes_dir)
    shards = iter_shard_arrays(index_dir)
    first = next(iter_shard_arrays(index_dir))[1]
    dim = int(first.shape[1]) if projection is None else projection.width
    writer = _table_writer(index_dir, out_dir, dim, table_dtype, table_format, candidates, query_bits, projection)

    def records() -> Iterator[Recipe]:
        pending: list[str] = []
        for recipe in iter_records(recipes_dir):
            if not pending:
                offset, values, pending = next(shards)
                # (n, D) copied chunk by chunk, or (n, W) projected
                writer.append(np.asarray(values) if projection is None else projection.apply(values))
                pending = list(reversed(pending))
            expected = pending.pop()
            if recipe.id != expected:
                raise IndexFolderError(f"{index_dir}: row {offset} holds recipe {expected!r} but "
                                       f"recipes.jsonl has {recipe.id!r} there; rebuild the index")
            offset += 1
            yield recipe

    with writer:
        count = write_catalog(out_dir / catalog_file, records())
        entry = writer.close()
    if entry.rows != count:
        raise IndexFolderError(f"{index_dir}: {entry.rows} table rows but {count} catalog rows")
    return entry, count


# --------------------------------------------------------------------------------------------
# Quantized table quality
# --------------------------------------------------------------------------------------------


def exact_topk(index_dir: Path, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) row indices of the exact float32 top-k over all shards (streamed, merged)."""
    best_rows = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    for offset, values, _ in iter_shard_arrays(index_dir):
        rows, scores = search_topk(EmbeddingTable(values=values), queries, k)  # (Q, k)
        all_rows = np.concatenate([best_rows, rows + offset], axis=1)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        # per query: score descending, ties to the lower row (as edge's search_topk)
        order = np.stack([np.lexsort((r, -s))[:k] for r, s in zip(all_rows, all_scores)])
        best_rows = np.take_along_axis(all_rows, order, axis=1)
        best_scores = np.take_along_axis(all_scores, order, axis=1)
    return best_rows


def table_quality(index_dir: str | os.PathLike, table_dir: str | os.PathLike, entry: TableEntry,
                  queries: np.ndarray, k: int = 10,
                  projection: TableProjection | None = None) -> dict[str, float]:
    """Recall of the quantized table against exact float32 search.

    recall@1: fraction of queries whose quantized top-1 is the exact top-1;
    recall@10: mean |quantized top-10 ∩ exact top-10| / 10. The exact search runs at the
    embeddings' full width; a projected table is searched with the projected queries, so its
    recall counts what the width reduction loses too.
    """
    queries = np.asarray(queries, dtype=np.float32)  # (Q, D)
    exact = exact_topk(Path(index_dir), queries, k)  # (Q, k)
    table_queries = queries if projection is None else projection.apply(queries)  # (Q, D) or (Q, W)
    approx, _ = search_topk(read_table(table_dir, entry), table_queries, k)  # (Q, k)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / exact.shape[1] for a, b in zip(exact, approx)]
    return {"recall_at_1": float(np.mean(exact[:, 0] == approx[:, 0])),
            "recall_at_10": float(np.mean(overlap)), "n_queries": int(len(queries)),
            "dtype": entry.dtype, "table_version": entry.version,
            "bytes_per_recipe": table_bytes_per_row(entry),
            **({} if projection is None else {"width": projection.width, "from_dim": projection.from_dim,
                                              "retained_energy": projection.retained_energy})}


def table_bytes_per_row(entry: TableEntry) -> float:
    """Bytes a recipe of the table's files (all of them: rows, scales, codes)."""
    from malm_edge.edge.bundle import table_file_bytes

    return sum(table_file_bytes(entry).values()) / max(entry.rows, 1)


def mixed_recipe_queries(index_dir: str | os.PathLike, n: int = 200, seed: int = 0) -> np.ndarray:
    """(n, D) queries between two random table rows, normalise(a + b) (when no val photos exist)."""
    rng = np.random.default_rng(seed)
    arrays = [(offset, values) for offset, values, _ in iter_shard_arrays(Path(index_dir))]
    total = arrays[-1][0] + len(arrays[-1][1])
    picks = rng.integers(0, total, size=(n, 2))

    def row(i: int) -> np.ndarray:
        for offset, values in arrays:
            if i < offset + len(values):
                return np.asarray(values[i - offset], dtype=np.float32)
        raise IndexError(i)

    queries = np.stack([row(a) + row(b) for a, b in picks])  # (n, D)
    return queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)


def teacher_image_queries(teacher: Any, recipes_dir: str | os.PathLike, n: int = 200) -> np.ndarray | None:
    """(n, D) teacher image embeddings of the dataset's val photos, or None when it has none."""
    try:
        pixels, _ = calibration_pixels(Path(recipes_dir), as_preprocessing(teacher.preprocessing),
                                       n, partition="val")
    except CalibrationError:
        return None
    with torch.inference_mode():
        parts = [teacher.model.encode_images(pixels[i:i + 32]) for i in range(0, len(pixels), 32)]
    return torch.cat(parts).float().numpy()
