"""Import the Epicurious set (Kaggle "Food Ingredients and Recipe Dataset with Images") in place.

The Kaggle layout, read as users download it:
- `Food Ingredients and Recipe Dataset with Image Name Mapping.csv`: an unnamed row-index column,
  `Title`, `Ingredients` (a Python-list literal, parsed with `ast.literal_eval`), `Instructions`
  (newline-separated steps), `Image_Name` (no extension), `Cleaned_Ingredients`;
- `Food Images/<Image_Name>.jpg` (some of which are really GIF or PNG: PIL reads them by content,
  so the original path is kept).

Partition: from a split file `{"train": [row index, ...], "val": [...], "test": [...]}` when given
(rows it does not list are skipped and reported); otherwise a fixed split by recipe: rows sharing a
normalised title, an image name or identical photo bytes form one group, and the group goes to
train / val / test by `sha1(smallest normalised title in the group) % 100` < 80 / < 90 / else, so
it never depends on row order and repeated recipes never straddle partitions.

Rows are skipped, and reported, when their photo is missing (`#NAME?`), unreadable or in a format
not every consumer can decode (e.g. a Photoshop file), when they carry no text at all, or when a
split file leaves them out. Rows whose method text sits in `Ingredients` with empty `Instructions`
get it moved to the instructions; a row without a title takes one from its image name.

`add_unpaired` adds the photos no CSV row names as title-only training recipes, the title taken
from the file-name slug (`hazelnut-cookies-109469.jpg` -> "Hazelnut Cookies"). Photos whose title
or bytes match a val/test recipe are left out so they cannot leak into training.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from malm_edge.edge.safe_json import load_json_file
from malm_edge.training.data.canonical import DatasetError, ensure_writable, inspect_image, progress_iter, write_dataset
from malm_edge.training.data.limits import (
    MAX_CELL_CHARS,
    MAX_TITLE_CHARS,
    clean_lines,
    clean_text,
    plain_file_name_error,
)
from malm_edge.training.data.records import PARTITIONS, Recipe

log = logging.getLogger(__name__)

CSV_NAME = "Food Ingredients and Recipe Dataset with Image Name Mapping.csv"
IMAGES_DIR = "Food Images"
REQUIRED_COLUMNS = ("Title", "Ingredients", "Instructions", "Image_Name")
INDEX_COLUMNS = ("", "Unnamed: 0", "index")
NO_IMAGE_NAMES = {"", "#NAME?", "nan"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp"}
DEFAULT_SPLIT = (("train", 80), ("val", 10), ("test", 10))  # percent of recipe groups
_METHOD_LINE_CHARS = 250  # an ingredient line longer than this is method text
_METHOD_MEAN_CHARS = 100


@dataclass
class EpicuriousRow:
    """One CSV row after parsing (before its photo is checked)."""

    index: int
    line: int
    title: str
    ingredients: list[str]
    instructions: list[str]
    image_name: str
    notes: list[str] = field(default_factory=list)


@dataclass
class EpicuriousReport:
    """What an import kept, skipped and fixed.

    Attributes:
        n_rows: CSV rows read.
        n_recipes: Recipes written (rows plus unpaired photos).
        partitions: Recipes per partition.
        n_unpaired: Title-only recipes added from photos without a row.
        image_formats: Photos of kept recipes per real format (GIF/PNG files named .jpg show here).
        skipped: Skipped rows or photos per reason.
        fixed: Rows kept after a fix, per kind of fix.
        problems: One line per skipped or fixed row, `file:line: message`.
    """

    n_rows: int = 0
    n_recipes: int = 0
    partitions: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PARTITIONS})
    n_unpaired: int = 0
    image_formats: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    fixed: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"source": "epicurious", **self.__dict__}


# ----------------------------------------------------------------------------- layout and CSV


def find_layout(src: Path) -> tuple[Path, Path]:
    """(CSV file, images folder) for a Kaggle download given as its folder or as the CSV itself."""
    src = Path(src)
    if src.is_file():
        csv_path = src
    elif src.is_dir():
        csv_path = src / CSV_NAME
        if not csv_path.is_file():
            found = sorted(src.glob("*.csv"))
            if len(found) != 1:
                raise DatasetError(f"{src}: expected {CSV_NAME!r} (or a single .csv file) in this folder")
            csv_path = found[0]
    else:
        raise DatasetError(f"{src}: does not exist")
    images_dir = csv_path.parent / IMAGES_DIR
    if (images_dir / IMAGES_DIR).is_dir():  # the Kaggle zip nests the folder in itself
        images_dir = images_dir / IMAGES_DIR
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: missing (the photos folder beside {csv_path.name})")
    return csv_path, images_dir


def parse_list_cell(text: str) -> list[str] | None:
    """A Python-list literal of strings, or None when the cell is not one (`ast.literal_eval` only)."""
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
        return None
    return [item.strip() for item in value if item.strip()]


def split_steps(text: str) -> list[str]:
    """Newline-separated instruction steps, stripped, without empties."""
    return [step.strip() for step in text.splitlines() if step.strip()]


def slug_title(slug: str) -> str:
    """Title from an Epicurious image slug: drop a numeric suffix, dashes to spaces, capitalise words."""
    slug = re.sub(r"-\d+$", "", slug.strip())
    words = [word for word in re.split(r"[-_\s]+", slug) if word]
    return " ".join(word[:1].upper() + word[1:] for word in words)


def normalise_title(title: str) -> str:
    """Lower case, runs of non-alphanumerics to one space (how titles are compared)."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", title.lower()).split())


def _looks_like_method(cell: str, items: list[str] | None) -> bool:
    if items is None:
        return bool(cell.strip()) and cell.strip() not in ("[]", "nan")
    if not items:
        return False
    mean = sum(map(len, items)) / len(items)
    return max(map(len, items)) > _METHOD_LINE_CHARS or mean > _METHOD_MEAN_CHARS


def _parse_row(row: dict, index: int, line: int) -> EpicuriousRow:
    """Parse one CSV row, moving misplaced method text; notes say what was fixed."""
    title = (row.get("Title") or "").strip()
    title = "" if title == "nan" else title
    cell = row.get("Ingredients") or ""
    ingredients = parse_list_cell(cell)
    instructions = split_steps(row.get("Instructions") or "")
    notes = []
    if not instructions and _looks_like_method(cell, ingredients):
        instructions = split_steps("\n".join(ingredients)) if ingredients is not None else split_steps(cell)
        ingredients = parse_list_cell(row.get("Cleaned_Ingredients") or "") or []
        if _looks_like_method("", ingredients):
            ingredients = []
        notes.append("method text in Ingredients moved to instructions")
    elif ingredients is None:
        ingredients = [cell.strip()] if cell.strip() and cell.strip() != "nan" else []
        if ingredients:
            notes.append("Ingredients is not a list literal; kept as one line")
    image_name = (row.get("Image_Name") or "").strip()
    title, fixes = clean_text(title, MAX_TITLE_CHARS)
    ingredients, more = clean_lines(ingredients)
    instructions, most = clean_lines(instructions)
    fixed = dict.fromkeys(fixes + more + most)
    notes += [f"{fix.replace('_', ' ')}; text limits (training/data/limits.py)" for fix in fixed]
    return EpicuriousRow(index, line, title, ingredients, instructions, image_name, notes)


def read_rows(csv_path: Path, on_bad: Callable[[DatasetError], None] | None = None) -> Iterator[EpicuriousRow]:
    """Stream the CSV's rows (parsed), checking the header and the row index.

    Args:
        csv_path: The CSV file.
        on_bad: Called with each malformed row's error, which is then skipped (`--skip-bad`);
            None raises at the first.

    Raises:
        DatasetError: Unreadable CSV, missing columns, or (without on_bad) a malformed row, a bad or
            repeated row index (file:line named).
    """
    old_limit = csv.field_size_limit()
    csv.field_size_limit(16 * 1024 * 1024)  # long method texts exceed the csv default of 128 KiB
    try:
        with csv_path.open("r", encoding="utf-8-sig", newline="") as handle:
            yield from _read_rows(csv_path, handle, on_bad)
    except UnicodeDecodeError as error:
        raise DatasetError(f"{csv_path}: not valid UTF-8 ({error.reason})") from None
    finally:
        csv.field_size_limit(old_limit)


def _read_rows(csv_path: Path, handle, on_bad: Callable[[DatasetError], None] | None) -> Iterator[EpicuriousRow]:
    reader = csv.DictReader(handle)
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise DatasetError(f"{csv_path}:1: malformed CSV: {error}") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise DatasetError(f"{csv_path}:1: missing column(s) {', '.join(missing)} (header: {header})")
    index_column = next((name for name in INDEX_COLUMNS if name in header), None)
    seen: dict[int, int] = {}
    line = reader.line_num + 1
    while True:
        try:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise DatasetError(f"{csv_path}:{reader.line_num}: malformed CSV: {error}") from None
            _check_row_shape(csv_path, line, reader.line_num, row, len(header))
            index = _row_index(csv_path, line, row, index_column, len(seen))
            if index in seen:
                raise DatasetError(f"{csv_path}:{line}: duplicate row index {index} (first on line {seen[index]})")
            seen[index] = line
            yield _parse_row(row, index, line)
        except DatasetError as error:
            if on_bad is None:
                raise
            on_bad(error)
        line = reader.line_num + 1


def _check_row_shape(csv_path: Path, line: int, last_line: int, row: dict, n_header: int) -> None:
    """Refuse a row with more or fewer fields than the header, saying how many it really has."""
    if None in row:
        n_fields = n_header + len(row[None])
    else:
        n_fields = sum(value is not None for value in row.values())
    if n_fields != n_header:
        spans = f" (lines {line}-{last_line}: a quote left open?)" if last_line > line else ""
        raise DatasetError(f"{csv_path}:{line}: row has {n_fields} fields where the header has {n_header}{spans}")
    too_long = [name for name, value in row.items() if len(value) > MAX_CELL_CHARS]
    if too_long:
        raise DatasetError(
            f"{csv_path}:{line}: column {too_long[0]!r} is {len(row[too_long[0]])} characters, "
            f"over the limit of {MAX_CELL_CHARS}"
        )


def _row_index(csv_path: Path, line: int, row: dict, column: str | None, position: int) -> int:
    if column is None:
        return position  # no index column: the 0-based data row number, as pandas would give
    try:
        return int(row[column])
    except ValueError:
        raise DatasetError(f"{csv_path}:{line}: row index {row[column]!r} is not an integer") from None


def read_split_file(path: Path) -> dict[int, str]:
    """Row index -> partition from `{"train": [...], "val": [...], "test": [...]}`.

    Raises:
        DatasetError: Missing or malformed file, unknown partition, non-integer or repeated index.
    """
    if not Path(path).is_file():
        raise DatasetError(f"{path}: split file does not exist")
    data = load_json_file(path, error=DatasetError)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected an object {{partition: [row index, ...]}}")
    partition_of: dict[int, str] = {}
    for partition, indices in data.items():
        if partition not in PARTITIONS:
            raise DatasetError(f"{path}: unknown partition {partition!r} (expected {', '.join(PARTITIONS)})")
        if not isinstance(indices, list) or not all(type(i) is int for i in indices):
            raise DatasetError(f"{path}: {partition!r} must be a list of integer row indices")
        for index in indices:
            if index in partition_of:
                raise DatasetError(f"{path}: row index {index} is in both {partition_of[index]!r} and {partition!r}")
            partition_of[index] = partition
    return partition_of


# ----------------------------------------------------------------------------- default split


def _default_partitions(rows: list[EpicuriousRow], photo_hash: dict[str, str]) -> dict[int, str]:
    """Row index -> partition for the fixed split by recipe group (module docstring)."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def keys(row: EpicuriousRow) -> list[str]:
        found = [f"t:{normalise_title(row.title)}", f"i:{row.image_name}"]
        return found + ([f"h:{photo_hash[row.image_name]}"] if row.image_name in photo_hash else [])

    for row in rows:
        first, *rest = keys(row)
        for key in rest:
            parent[find(key)] = find(first)
    group_title: dict[str, str] = {}
    for row in rows:
        root = find(keys(row)[0])
        title = normalise_title(row.title)
        group_title[root] = min(group_title.get(root, title), title)
    return {row.index: _bucket(group_title[find(keys(row)[0])]) for row in rows}


def _bucket(key: str) -> str:
    value = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 100
    for partition, percent in DEFAULT_SPLIT:
        if value < percent:
            return partition
        value -= percent
    return DEFAULT_SPLIT[-1][0]


# ----------------------------------------------------------------------------- import


class EpicuriousImporter:
    """Reads the Kaggle layout and yields canonical recipes, recording what it skips or fixes.

    Args:
        src: The Kaggle folder (or its CSV).
        split_file: Optional split JSON; without it the fixed split by recipe group is used.
        add_unpaired: Add photos without a CSV row as title-only training recipes.
        max_problems: How many problem lines to keep in the report.
        progress: Show progress bars while photos are checked.
        skip_bad: Skip malformed CSV rows (counted as `malformed_row`) instead of stopping at the
            first; the import still fails when nothing is kept or when more than
            `max_bad_fraction` of the rows are malformed.
        max_bad_fraction: With skip_bad, the share of malformed rows above which the import fails.
    """

    def __init__(
        self,
        src: Path,
        split_file: Path | None = None,
        add_unpaired: bool = False,
        max_problems: int = 50,
        progress: bool = False,
        skip_bad: bool = False,
        max_bad_fraction: float = 0.05,
    ) -> None:
        self.csv_path, self.images_dir = find_layout(Path(src))
        self.skip_bad, self.max_bad_fraction = skip_bad, max_bad_fraction
        self.split = read_split_file(split_file) if split_file is not None else None
        self.add_unpaired = add_unpaired
        self.max_problems = max_problems
        self.progress = progress
        self.report = EpicuriousReport()
        self._skipped: Counter = Counter()
        self._fixed: Counter = Counter()
        self._formats: Counter = Counter()

    def _problem(self, line: int, message: str, file: Path | None = None) -> None:
        if len(self.report.problems) < self.max_problems:
            where = f"{file or self.csv_path}:{line}" if line else f"{file or self.csv_path}"
            self.report.problems.append(f"{where}: {message}")

    def _skip(self, reason: str, line: int, message: str, file: Path | None = None) -> None:
        self._skipped[reason] += 1
        self._problem(line, f"{message}; skipped", file)

    def _photo(self, image_name: str) -> tuple[Path | None, str | None, str | None]:
        """(path, format, None) for a readable photo, else (None, None, reason)."""
        if image_name in NO_IMAGE_NAMES:
            return None, None, f"no image name ({image_name!r})"
        escape = plain_file_name_error(image_name, IMAGES_DIR)
        if escape:
            return None, None, escape
        path = self.images_dir / f"{image_name}.jpg"
        if path.is_dir():
            return None, None, f"image {path.name!r} is a folder, not an image file"
        if not path.is_file():
            return None, None, f"image {path.name!r} is missing"
        image_format, reason = inspect_image(path)
        if reason is not None:
            return None, None, f"image {path.name!r} is {reason}"
        return path, image_format, None

    def recipes(self) -> Iterator[Recipe]:
        """Yield the kept recipes: CSV rows in file order, then unpaired photos by file name.

        Raises:
            DatasetError: Missing or malformed input (file and line named).
        """
        rows = list(read_rows(self.csv_path, self._malformed if self.skip_bad else None))
        self.report.n_rows = len(rows) + self._skipped["malformed_row"]
        kept = list(self._rows_with_photos(rows))
        photo_hash = {row.image_name: _sha1(path) for row, path, _ in kept}
        partition_of = self.split
        if partition_of is None:
            partition_of = _default_partitions([row for row, _, _ in kept], photo_hash)
        held_out_titles, held_out_hashes = set(), set()
        for row, path, image_format in kept:
            partition = partition_of.get(row.index)
            if partition is None:
                self._skip("not_in_split_file", row.line, f"row index {row.index} is not in the split file")
                continue
            if partition != "train":
                held_out_titles.add(normalise_title(row.title))
                held_out_hashes.add(photo_hash[row.image_name])
            self._formats[image_format] += 1
            yield self._count(
                Recipe(f"epicurious-{row.index}", row.title, row.ingredients, row.instructions, [path.name], partition)
            )
        if self.add_unpaired:
            named = {row.image_name for row in rows}
            yield from self._unpaired(named, held_out_titles, held_out_hashes)
        self._finish()
        self._check_kept()

    def _malformed(self, error: DatasetError) -> None:
        self._skipped["malformed_row"] += 1
        if len(self.report.problems) < self.max_problems:
            self.report.problems.append(f"{error}; skipped")

    def _check_kept(self) -> None:
        """With skip_bad: fail (nothing written) when nothing was kept or too many rows were malformed."""
        bad = self._skipped["malformed_row"]
        if not bad:
            return
        if self.report.n_recipes == 0:
            raise DatasetError(f"{self.csv_path}: no recipe kept ({bad} malformed rows skipped); nothing written")
        if bad > self.max_bad_fraction * self.report.n_rows:
            raise DatasetError(
                f"{self.csv_path}: {bad} of {self.report.n_rows} rows are malformed, over the "
                f"--max-bad {self.max_bad_fraction:g} threshold; nothing written"
            )

    def _rows_with_photos(self, rows: list[EpicuriousRow]) -> Iterator[tuple[EpicuriousRow, Path, str]]:
        """Rows with text and a readable photo, as (row, photo path, real photo format)."""
        for row in progress_iter(rows, len(rows), "Epicurious rows", enabled=self.progress):
            if not row.title and not row.ingredients and not row.instructions:
                self._skip("no_text", row.line, f"row index {row.index} has no title, ingredients or instructions")
                continue
            path, image_format, reason = self._photo(row.image_name)
            if path is None:
                self._skip("bad_image", row.line, f"row index {row.index}: {reason}")
                continue
            if not row.title:
                row.title = slug_title(row.image_name)
                row.notes.append(f"no title; took {row.title!r} from the image name")
            for note in row.notes:
                self._fixed[note.split(";")[0]] += 1
                self._problem(row.line, f"row index {row.index}: {note}")
            yield row, path, image_format

    def _unpaired(self, named: set[str], held_out_titles: set[str], held_out_hashes: set[str]) -> Iterator[Recipe]:
        photos = sorted(self.images_dir.iterdir())
        for path in progress_iter(photos, len(photos), "Unpaired photos", enabled=self.progress):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.stem in named or not path.is_file():
                continue
            title = slug_title(path.stem)
            image_format, reason = inspect_image(path) if title else (None, "without a title in its name")
            if reason is None and (normalise_title(title) in held_out_titles or _sha1(path) in held_out_hashes):
                reason = "the same recipe or photo as a val/test row"
            if reason is not None:
                self._skip("unpaired_photo", 0, f"unpaired photo is {reason}", file=path)
                continue
            self.report.n_unpaired += 1
            self._formats[image_format] += 1
            yield self._count(Recipe(f"epicurious-photo-{path.stem}", title, [], [], [path.name], "train"))

    def _count(self, recipe: Recipe) -> Recipe:
        self.report.n_recipes += 1
        self.report.partitions[recipe.partition] += 1
        return recipe

    def _finish(self) -> None:
        self.report.skipped = dict(sorted(self._skipped.items()))
        self.report.fixed = dict(sorted(self._fixed.items()))
        self.report.image_formats = dict(sorted(self._formats.items()))


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def import_epicurious(
    src: Path,
    out_dir: Path,
    split_file: Path | None = None,
    add_unpaired: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    skip_bad: bool = False,
    max_bad_fraction: float = 0.05,
) -> EpicuriousReport:
    """Write a canonical dataset at `out_dir` that reads the Epicurious photos in place.

    Args:
        src: The Kaggle folder (or its CSV); photos in `Food Images/` beside the CSV.
        out_dir: The dataset folder to write (`recipes.jsonl`, `dataset.json` with `images_root`).
        split_file: Optional split JSON (`{"train": [row index, ...], "val": [...]}`).
        add_unpaired: Add photos without a CSV row as title-only training recipes.
        overwrite: Replace an existing dataset at `out_dir`.
        progress: Show progress bars.
        skip_bad: Skip malformed CSV rows (counted) instead of stopping at the first.
        max_bad_fraction: With skip_bad, fail when more than this share of the rows is malformed.

    Returns:
        What was kept, skipped and fixed (also stored in `dataset.json`, problems aside).

    Raises:
        DatasetError: Missing or malformed input, or `out_dir` already holds a dataset; nothing is written.
    """
    importer = EpicuriousImporter(
        src, split_file, add_unpaired, progress=progress, skip_bad=skip_bad, max_bad_fraction=max_bad_fraction
    )
    out_dir = Path(out_dir)
    ensure_writable(out_dir, overwrite)

    def meta() -> dict:
        summary = {k: v for k, v in importer.report.to_dict().items() if k != "problems"}
        return {
            **summary,
            "csv": str(importer.csv_path.resolve()),
            "images_root": str(importer.images_dir.resolve()),
            "split": str(Path(split_file).resolve()) if split_file else "default: sha1(title group) % 100, 80/10/10",
        }

    write_dataset(out_dir, importer.recipes(), meta)
    log.info("Epicurious: wrote %d recipes to %s", importer.report.n_recipes, out_dir)
    return importer.report
