"""The recipe catalog: one SQLite file, row order == embedding-table row order, FTS5 word search.

Schema (SQLite 3.9+ with FTS5, as shipped by iOS, Android and Python)::

    CREATE TABLE recipes (
        row INTEGER PRIMARY KEY,      -- 0..N-1, the table row this recipe's embedding is in
        id TEXT NOT NULL UNIQUE,      -- the dataset's recipe id
        title TEXT NOT NULL,
        ingredients TEXT NOT NULL,    -- JSON array of strings
        instructions TEXT NOT NULL,   -- JSON array of strings
        image TEXT                    -- optional image reference (relative path or URL)
    );
    CREATE VIRTUAL TABLE recipes_fts USING fts5(title, ingredients, content='recipes',
                                               content_rowid='row');
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- format, version, count

Writes stream (executemany in chunks) into a temporary file that is renamed into place, so a
crash never leaves a half-written catalog under the final name.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from malm_edge.edge.errors import EdgeError
from malm_edge.edge.write_errors import OutputWriteError, guard_writes

CATALOG_FILE = "catalog.sqlite"
CATALOG_FORMAT = "malm-edge-catalog"
CATALOG_VERSION = 1
_SCHEMA = """
CREATE TABLE recipes (
    row INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    title TEXT NOT NULL,
    ingredients TEXT NOT NULL,
    instructions TEXT NOT NULL,
    image TEXT
);
CREATE VIRTUAL TABLE recipes_fts USING fts5(
    title, ingredients, content='recipes', content_rowid='row'
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_WORD = re.compile(r"\w+", re.UNICODE)


LOOKUP_CHUNK = 900  # rows per SELECT: under SQLite's bound-parameter cap (999 before 3.32, 32,766 after)


class CatalogError(EdgeError, ValueError):
    """A catalog cannot be written or read; the message names the file."""


def _field(record: Any, name: str, default: Any = None) -> Any:
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


def _record_row(row: int, record: Any) -> tuple[int, str, str, str, str, str | None]:
    """A catalog row from a dict or an object with id/title/ingredients/instructions/image(s)."""
    image = _field(record, "image")
    if image is None:
        images = _field(record, "images") or []
        image = images[0] if images else None
    return (row, str(_field(record, "id")), str(_field(record, "title", "") or ""),
            json.dumps(list(_field(record, "ingredients", []) or []), ensure_ascii=False),
            json.dumps(list(_field(record, "instructions", []) or []), ensure_ascii=False),
            None if image is None else str(image))


def _chunks(records: Iterable[Any], size: int) -> Iterator[list[tuple]]:
    numbered = enumerate(records)
    while chunk := [_record_row(row, rec) for row, rec in islice(numbered, size)]:
        yield chunk


def write_catalog(path: str | os.PathLike, records: Iterable[Any], chunk_size: int = 10_000) -> int:
    """Write the catalog; record i becomes row i (same order as the embedding table).

    Args:
        path: Destination .sqlite file (replaced atomically).
        records: Dicts or objects (e.g. training's Recipe) with id, title, ingredients
            (list[str]), instructions (list[str]) and optionally image or images (first used).
        chunk_size: Rows per executemany, so the records can be a generator over 1M recipes.

    Returns:
        The number of recipes written.
    """
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    with guard_writes(path, OutputWriteError):
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write_catalog(path, temp, records, chunk_size)


def _write_catalog(path: Path, temp: Path, records: Iterable[Any], chunk_size: int) -> int:
    temp.unlink(missing_ok=True)
    connection = sqlite3.connect(temp)
    try:
        connection.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + _SCHEMA)
        count = 0
        for chunk in _chunks(records, chunk_size):
            try:
                connection.executemany("INSERT INTO recipes VALUES (?, ?, ?, ?, ?, ?)", chunk)
            except sqlite3.IntegrityError as err:
                raise CatalogError(f"{path}: {err} (recipe ids must be unique)") from err
            count += len(chunk)
        connection.execute("INSERT INTO recipes_fts(recipes_fts) VALUES ('rebuild')")
        meta = {"format": CATALOG_FORMAT, "version": str(CATALOG_VERSION), "count": str(count)}
        connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        connection.commit()
        connection.execute("VACUUM")
    except BaseException:
        connection.close()
        temp.unlink(missing_ok=True)
        raise
    connection.close()
    os.replace(temp, path)
    return count


def fts_query(text: str) -> str | None:
    """A safe FTS5 MATCH expression: every word of `text` as a quoted term, all required.

    User text never reaches FTS5 syntax (quotes, NEAR, *, column filters are neutralised), so
    any input is safe. Returns None when the text holds no word characters.
    """
    words = _WORD.findall(text)
    if not words:
        return None
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


class Catalog:
    """Read-only access to a catalog file.

    Args:
        path: The .sqlite file.
        expected_count: If given, the number of recipes must equal it (the table's row count).
    """

    def __init__(self, path: str | os.PathLike, expected_count: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CatalogError(f"{self.path}: catalog file is missing")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        self._connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            self.count = self._connection.execute("SELECT count(*) FROM recipes").fetchone()[0]
        except sqlite3.DatabaseError as err:
            self._connection.close()
            raise CatalogError(f"{self.path}: not a malm-edge catalog ({err})") from err
        if expected_count is not None and self.count != expected_count:
            self._connection.close()
            raise CatalogError(f"{self.path}: holds {self.count} recipes, expected {expected_count}")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        """Recipes at the given table rows, in the order asked (a missing row raises)."""
        rows = [int(r) for r in rows]
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(rows), LOOKUP_CHUNK):  # SQLite caps the parameters of one statement
            chunk = rows[start:start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(
                (r[0], {"row": r[0], "id": r[1], "title": r[2], "ingredients": json.loads(r[3]),
                        "instructions": json.loads(r[4]), "image": r[5]})
                for r in self._connection.execute(
                    f"SELECT row, id, title, ingredients, instructions, image FROM recipes "
                    f"WHERE row IN ({marks})", chunk)
            )
        missing = [r for r in rows if r not in found]
        if missing:
            raise CatalogError(f"{self.path}: no recipe at rows {missing[:5]}")
        return [found[r] for r in rows]

    def text_search(self, query: str, limit: int = 10) -> list[tuple[int, str, str]]:
        """Recipes whose title or ingredients contain every word of `query`, best (bm25) first.

        Returns:
            [(row, id, title)], ties broken by row.
        """
        match = fts_query(query)
        if match is None or limit <= 0:
            return []
        cursor = self._connection.execute(
            "SELECT r.row, r.id, r.title FROM recipes_fts f JOIN recipes r ON r.row = f.rowid "
            "WHERE recipes_fts MATCH ? ORDER BY bm25(recipes_fts), r.row LIMIT ?",
            (match, int(limit)))
        return [(int(row), str(rid), str(title)) for row, rid, title in cursor]
