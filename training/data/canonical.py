"""Read and validate the canonical dataset format (docs/architecture.md, "Canonical dataset format").

A dataset is a folder holding `recipes.jsonl` (one JSON object a line, see `records.Recipe`) and,
optionally, `dataset.json`: a small metadata file written by the importers that read images in place
(Recipe1M, Epicurious). Its `images_root` says where relative image paths live:

    {"format": "malm-edge-dataset", "version": 1, "source": "recipe1m",
     "images_root": "/data/recipe1m/images", ...}

Image paths in `recipes.jsonl` resolve as follows (`resolve_image_path`):
1. an absolute path is used as is;
2. otherwise it is relative to the `images_root` argument when one is given;
3. otherwise relative to `images_root` from `dataset.json` (itself relative to the dataset folder
   when not absolute);
4. otherwise relative to the dataset folder (SynthFood writes its images beside `recipes.jsonl`).

The reader streams the file a line at a time and never opens an image unless asked to check them.
Every problem names `file:line`. In strict mode the first bad line raises `DatasetError`; in lenient
mode bad lines are skipped and reported through a callback.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from malm_edge.edge.preprocess import SUPPORTED_FORMATS
from malm_edge.edge.safe_json import MAX_DEPTH as MAX_JSON_DEPTH
from malm_edge.edge.safe_json import json_depth, load_json_file
from malm_edge.edge.write_errors import guard_writes
from malm_edge.training.data.limits import MAX_ITEMS, MAX_RECORD_BYTES, image_path_error, text_error
from malm_edge.training.data.records import PARTITIONS, RECIPES_FILE, Recipe, write_recipes_jsonl
from malm_edge.training.errors import TrainingError

DATASET_META_FILE = "dataset.json"
DATASET_FORMAT = "malm-edge-dataset"
DATASET_FORMAT_VERSION = 1
# Formats every consumer can decode, the browser demo included (so not PSD, TIFF, ...).
SUPPORTED_IMAGE_FORMATS = SUPPORTED_FORMATS  # edge/preprocess.py decides, for every component
_LIST_FIELDS = ("ingredients", "instructions", "images")
MAX_META_BYTES = 64 << 20  # dataset.json holds counts and a few paths
T = TypeVar("T")


class DatasetError(TrainingError, ValueError):
    """A dataset (or importer input) is missing or malformed; the message names file and line."""


class ImageCheck(str, Enum):
    """How thoroughly `check_dataset` inspects images."""

    none = "none"  # do not look at images at all
    exists = "exists"  # the file exists
    verify = "verify"  # header only: format and size (fast; misses truncated files)
    decode = "decode"  # the pixel data decodes to the end (JPEG at 1/8 scale): the default


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset file.

    Attributes:
        file: The file the problem is in.
        line: 1-based line number (0 when the problem is about the whole file).
        message: What is wrong.
    """

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


@dataclass
class CheckReport:
    """What `check_dataset` found.

    Attributes:
        dataset_dir: The dataset folder.
        partitions: Valid recipes per partition.
        n_recipes: Valid recipes.
        n_text_only: Valid recipes without images.
        n_images: Image references in valid recipes.
        n_missing_images: References whose file does not exist.
        n_unreadable_images: References whose file exists but cannot be read as a supported image.
        n_bad_lines: Lines skipped as malformed.
        n_problems: All problems found (only the first `max_problems` are kept in `problems`).
        problems: The first problems as (file, line, message).
        image_check: The image check that was run.
    """

    dataset_dir: str
    partitions: dict[str, int] = field(default_factory=lambda: {p: 0 for p in PARTITIONS})
    n_recipes: int = 0
    n_text_only: int = 0
    n_images: int = 0
    n_missing_images: int = 0
    n_unreadable_images: int = 0
    n_bad_lines: int = 0
    n_problems: int = 0
    problems: list[tuple[str, int, str]] = field(default_factory=list)
    image_check: str = ImageCheck.decode.value

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.n_problems == 0

    def to_dict(self) -> dict:
        """JSON-ready dict (problems as objects with file, line, message)."""
        record = asdict(self)
        record["problems"] = [{"file": f, "line": n, "message": m} for f, n, m in self.problems]
        record["ok"] = self.ok
        return record


# ----------------------------------------------------------------------------- paths


def recipes_path(dataset_dir: Path | str) -> Path:
    """Path of `recipes.jsonl` in `dataset_dir`, raising `DatasetError` when either is missing."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir}: dataset folder does not exist")
    path = dataset_dir / RECIPES_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing (a dataset folder holds {RECIPES_FILE})")
    return path


def read_dataset_meta(dataset_dir: Path | str) -> dict:
    """The contents of `dataset.json` ({} when absent). Raises `DatasetError` when malformed."""
    path = Path(dataset_dir) / DATASET_META_FILE
    if not path.is_file():
        return {}
    return dict(_read_meta_cached(str(path), path.stat().st_mtime_ns))


@lru_cache(maxsize=64)
def _read_meta_cached(path: str, mtime_ns: int) -> tuple:
    # Cached per (path, mtime) so resolving millions of image paths reads the file once.
    del mtime_ns
    meta = load_json_file(path, error=DatasetError, max_bytes=MAX_META_BYTES)
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}:1: expected a JSON object")
    root = meta.get("images_root")
    if root is not None and not isinstance(root, str):
        raise DatasetError(f"{path}:1: 'images_root' must be a string")
    return tuple(meta.items())


def dataset_images_root(dataset_dir: Path | str) -> Path:
    """Folder that relative image paths are relative to (`dataset.json`'s images_root, else the dataset)."""
    dataset_dir = Path(dataset_dir)
    root = read_dataset_meta(dataset_dir).get("images_root")
    return dataset_dir / root if root else dataset_dir


def resolve_image_path(dataset_dir: Path | str, image: str, images_root: Path | str | None = None) -> Path:
    """Resolve an image entry of `recipes.jsonl` to a file path (rules in the module docstring).

    Args:
        dataset_dir: The dataset folder.
        image: The entry as written in `recipes.jsonl`.
        images_root: Overrides `dataset.json`'s images_root (e.g. after moving the images).

    Returns:
        The path of the image file (not checked for existence).
    """
    path = Path(image)
    if path.is_absolute():
        return path
    root = Path(images_root) if images_root is not None else dataset_images_root(dataset_dir)
    return root / path


def write_dataset_meta(out_dir: Path, meta: dict) -> Path:
    """Write `dataset.json` atomically (format and version are added). Returns its path."""
    record = {"format": DATASET_FORMAT, "version": DATASET_FORMAT_VERSION, **meta}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / DATASET_META_FILE
    tmp = out_dir / f".{DATASET_META_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- line validation


def validate_record(record: object) -> str | None:
    """Check one decoded JSON line against the canonical schema.

    Returns:
        None when valid, else a one-line description of the first thing wrong.
    """
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    missing = [name for name in ("id", "title", *_LIST_FIELDS, "partition") if name not in record]
    if missing:
        return "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(repr(m) for m in missing)
    recipe_id = record["id"]
    if isinstance(recipe_id, bool) or not isinstance(recipe_id, (str, int)) or str(recipe_id) == "":
        return f"'id' must be a non-empty string, got {recipe_id!r}"
    if not isinstance(record["title"], str):
        return f"'title' must be a string, got {type(record['title']).__name__}"
    for name in _LIST_FIELDS:
        error = _list_of_str_error(name, record[name])
        if error:
            return error
    if any(not image.strip() for image in record["images"]):
        return "'images' holds an empty path"
    if record["partition"] not in PARTITIONS:
        return f"unknown partition {record['partition']!r} (expected one of {', '.join(PARTITIONS)})"
    class_name = record.get("class")
    if class_name is not None and not isinstance(class_name, (str, int)):
        return f"'class' must be a string or null, got {type(class_name).__name__}"
    for image in record["images"]:
        error = image_path_error(image)
        if error:
            return error
    if len(record["images"]) > MAX_ITEMS:
        return f"'images' has {len(record['images'])} entries, over the limit of {MAX_ITEMS}"
    return text_error(record["title"], record["ingredients"], record["instructions"])


def _list_of_str_error(name: str, value: object) -> str | None:
    if not isinstance(value, list):
        return f"{name!r} must be a list of strings, got {type(value).__name__}"
    for index, item in enumerate(value):
        if not isinstance(item, str):
            return f"{name!r}[{index}] must be a string, got {type(item).__name__}"
    return None


def _decode_line(raw: bytes) -> tuple[object | None, str | None]:
    """(record, None) or (None, error message) for one raw line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 (byte {error.start})"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return None, f"malformed JSON: {error.msg} (column {error.colno})"
    except RecursionError:
        return None, f"malformed JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    if json_depth(record) > MAX_JSON_DEPTH:
        return None, f"malformed JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)"
    return record, None


# ----------------------------------------------------------------------------- reading


def iter_lines(
    dataset_dir: Path | str,
    *,
    strict: bool = True,
    on_problem: Callable[[Problem], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, Recipe]]:
    """Stream `(line number, Recipe)` from `recipes.jsonl`, validating each line.

    Args:
        dataset_dir: The dataset folder.
        strict: Raise `DatasetError` at the first bad line; otherwise skip it and report it.
        on_problem: Called with each skipped line's `Problem` (lenient mode).
        on_bytes: Called with the size of each line read (for a progress bar over the file size).

    Raises:
        DatasetError: The folder or file is missing, or (strict) a line is bad; the message is
            `path:line: what is wrong`.
    """
    path = recipes_path(dataset_dir)
    first_line_of: dict[str, int] = {}
    with path.open("rb") as handle:
        for line_no, raw, size in _bounded_lines(handle):
            if on_bytes is not None:
                on_bytes(size)
            if raw is None:
                record, error = None, f"line is {size} bytes, over the limit of {MAX_RECORD_BYTES}"
            elif not raw.strip():
                continue  # blank lines (e.g. a trailing newline) carry nothing
            else:
                record, error = _decode_line(raw)
            if error is None:
                error = validate_record(record)
            if error is None:
                recipe = Recipe.from_json(record)
                if recipe.id in first_line_of:
                    error = f"duplicate id {recipe.id!r} (first on line {first_line_of[recipe.id]})"
                else:
                    first_line_of[recipe.id] = line_no
                    yield line_no, recipe
                    continue
            problem = Problem(str(path), line_no, error)
            if strict:
                raise DatasetError(str(problem))
            if on_problem is not None:
                on_problem(problem)


def _bounded_lines(handle) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, raw line or None when over MAX_RECORD_BYTES, size); never holds more than the limit."""
    line_no = 0
    while raw := handle.readline(MAX_RECORD_BYTES + 1):
        line_no += 1
        if len(raw) <= MAX_RECORD_BYTES:
            yield line_no, raw, len(raw)
            continue
        size = len(raw)
        while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line
            raw = handle.readline(1 << 20)
            size += len(raw)
        yield line_no, None, size


def iter_records(
    dataset_dir: Path | str,
    *,
    strict: bool = True,
    on_problem: Callable[[Problem], None] | None = None,
) -> Iterator[Recipe]:
    """Stream the valid recipes of a dataset (see `iter_lines` for arguments and errors)."""
    for _, recipe in iter_lines(dataset_dir, strict=strict, on_problem=on_problem):
        yield recipe


def load_recipes(
    dataset_dir: Path | str,
    partition: str | None = None,
    strict: bool = True,
    on_problem: Callable[[Problem], None] | None = None,
) -> list[Recipe]:
    """All valid recipes of a dataset, optionally of one partition only (images are not opened).

    Raises:
        DatasetError: As `iter_lines`, or for an unknown `partition`.
    """
    if partition is not None and partition not in PARTITIONS:
        raise DatasetError(f"unknown partition {partition!r} (expected one of {', '.join(PARTITIONS)})")
    return [
        recipe
        for recipe in iter_records(dataset_dir, strict=strict, on_problem=on_problem)
        if partition is None or recipe.partition == partition
    ]


# ----------------------------------------------------------------------------- images


def inspect_image(path: Path, decode: bool = True) -> tuple[str | None, str | None]:
    """The real format of an image file and whether the project accepts it.

    The rule (formats, pixel limit, decoding) is `edge.preprocess.check_image_file`'s, the same
    training and search apply; PIL identifies the format from the content, so a PNG or GIF named
    `.jpg` is fine.

    Args:
        path: The image file.
        decode: Decode the pixel data to the end (catches truncated files; the default) instead of
            reading the header only.

    Returns:
        (format, None) when accepted, else (format or None, a short reason).
    """
    from malm_edge.edge.preprocess import (
        ImageError,
        ImageTooLargeError,
        MissingImageError,
        UnsupportedImageError,
        check_image_file,
    )

    try:
        return check_image_file(path, decode=decode), None
    except MissingImageError:
        return None, "missing"
    except UnsupportedImageError as error:
        return error.format, f"in an unsupported image format ({error.format})"
    except ImageTooLargeError as error:
        return None, f"too large ({str(error).split(': ', 1)[-1]})"
    except ImageError as error:
        detail = str(error).split(": ", 1)[-1]
        return None, "a folder, not an image file" if "is a folder" in detail else f"unreadable ({detail})"


def check_image(path: Path, decode: bool = True) -> str | None:
    """None when `path` is an image every consumer can read, else a short reason (`inspect_image`)."""
    return inspect_image(path, decode)[1]


def _check_recipe_images(
    dataset_dir: Path, recipe: Recipe, mode: ImageCheck, images_root: Path | None
) -> list[tuple[str, str]]:
    """(kind, message) per bad image of one recipe; kind is "missing" or "unreadable"."""
    found = []
    for image in recipe.images:
        path = resolve_image_path(dataset_dir, image, images_root)
        if path.is_dir():
            found.append(("unreadable", f"image {image!r} is a folder, not an image file ({path})"))
        elif not path.is_file():
            found.append(("missing", f"image {image!r} is missing ({path})"))
        elif mode in (ImageCheck.verify, ImageCheck.decode):
            reason = check_image(path, decode=mode is ImageCheck.decode)
            if reason is not None:
                found.append(("unreadable", f"image {image!r} is {reason} ({path})"))
    return found


def check_dataset(
    dataset_dir: Path | str,
    check_images: bool | ImageCheck | str = True,
    max_problems: int = 20,
    images_root: Path | str | None = None,
    progress: bool = False,
) -> CheckReport:
    """Validate every line of a dataset and (optionally) its images, collecting counts and problems.

    Args:
        dataset_dir: The dataset folder.
        check_images: True for `ImageCheck.decode`, False for none, or an `ImageCheck` (name).
        max_problems: How many problems to keep in the report (all are counted).
        images_root: Overrides `dataset.json`'s images_root.
        progress: Show a progress bar (over the bytes of `recipes.jsonl`).

    Returns:
        The report; `report.ok` is False when anything is wrong.

    Raises:
        DatasetError: The folder, `recipes.jsonl` or `dataset.json` is missing or unreadable.
    """
    mode = _image_check_mode(check_images)
    dataset_dir = Path(dataset_dir)
    report = CheckReport(dataset_dir=str(dataset_dir), image_check=mode.value)
    root = Path(images_root) if images_root is not None else dataset_images_root(dataset_dir)

    def add_problem(problem: Problem) -> None:
        report.n_problems += 1
        if len(report.problems) < max_problems:
            report.problems.append((problem.file, problem.line, problem.message))

    def on_bad_line(problem: Problem) -> None:
        report.n_bad_lines += 1
        add_problem(problem)

    jsonl = recipes_path(dataset_dir)
    with _byte_progress(jsonl, progress) as on_bytes:
        for line_no, recipe in iter_lines(dataset_dir, strict=False, on_problem=on_bad_line, on_bytes=on_bytes):
            _count_recipe(report, recipe)
            if mode is ImageCheck.none:
                continue
            for kind, message in _check_recipe_images(dataset_dir, recipe, mode, root):
                if kind == "missing":
                    report.n_missing_images += 1
                else:
                    report.n_unreadable_images += 1
                add_problem(Problem(str(jsonl), line_no, message))
    return report


def progress_iter(items: Iterable[T], total: int, description: str, enabled: bool = True) -> Iterable[T]:
    """`items`, with a transient rich progress bar on stderr when `enabled`."""
    if not enabled:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, total=total, description=description, transient=True, console=Console(stderr=True))


@contextmanager
def _byte_progress(path: Path, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar over the bytes of `path` (yields its advance callback), or None."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"checking {path.name}", total=path.stat().st_size)
        yield lambda size: bar.advance(task, size)


def _count_recipe(report: CheckReport, recipe: Recipe) -> None:
    report.n_recipes += 1
    report.partitions[recipe.partition] += 1
    report.n_images += len(recipe.images)
    report.n_text_only += not recipe.images


def _image_check_mode(check_images: bool | ImageCheck | str) -> ImageCheck:
    if isinstance(check_images, bool):
        return ImageCheck.decode if check_images else ImageCheck.none
    try:
        return ImageCheck(check_images)
    except ValueError:
        choices = ", ".join(m.value for m in ImageCheck)
        raise DatasetError(f"unknown image check {check_images!r} (expected one of {choices})") from None


# ----------------------------------------------------------------------------- writing


def ensure_writable(out_dir: Path, overwrite: bool) -> None:
    """Refuse to replace an existing dataset unless `overwrite`; refuse a file where a folder goes."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: exists and is not a folder")
    if (out_dir / RECIPES_FILE).exists() and not overwrite:
        raise DatasetError(f"{out_dir / RECIPES_FILE}: already exists (pass --overwrite to replace it)")


def write_dataset(out_dir: Path, recipes: Iterable[Recipe], meta: Callable[[], dict] | dict | None) -> int:
    """Write `recipes.jsonl` (atomically) and then `dataset.json`; remove a folder this created on error.

    Args:
        out_dir: The dataset folder.
        recipes: The recipes; may be a generator that raises `DatasetError` part-way, in which case
            nothing is left behind.
        meta: `dataset.json` contents (or a callable giving them once `recipes` is exhausted, so the
            counts can go in); None writes no `dataset.json` and removes a stale one.

    Returns:
        The number of recipes written.
    """
    created = not out_dir.exists()
    intact = "nothing was replaced" if not created else "nothing was written"
    try:
        with guard_writes(out_dir / RECIPES_FILE, DatasetError, intact=intact):
            count = write_recipes_jsonl(recipes, out_dir)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    with guard_writes(out_dir / DATASET_META_FILE, DatasetError):
        if meta is None:
            (out_dir / DATASET_META_FILE).unlink(missing_ok=True)
        else:
            write_dataset_meta(out_dir, meta() if callable(meta) else meta)
    return count
