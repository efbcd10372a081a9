"""Import Recipe1M (Marin et al., "Recipe1M+", TPAMI 2019) into the canonical format, in place.

Recipe1M ships `layer1.json` (a list of `{id, title, ingredients: [{text}], instructions: [{text}],
partition, url}`), `layer2.json` (a list of `{id, images: [{id: "<image id>.jpg", url}]}`), optionally
`det_ingrs.json` (a list of `{id, ingredients: [{text}], valid: [bool]}`, the detected ingredient
names), optionally `classes1M.pkl` (im2recipe's semantic classes, read into `class` with an
unpickler that accepts plain builtins only), and its photos as `<split>/a/b/c/d/<image id>` where a, b, c, d are the image id's first
four characters. The photos may sit under `<root>/images/` or straight under `<root>/`.

Nothing is copied: `recipes.jsonl` lists image paths relative to the images folder, whose absolute
path goes into `dataset.json` as `images_root` (see `canonical.resolve_image_path`). Recipes without
photos are kept by default (text-only; they belong in the recipe table). H-T's filters (Salvador et
al., CVPR 2021: drop recipes without images, without ingredients, or with 20 or more steps) are
options, as is H-T's cap of 5 images per recipe.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from malm_edge.edge.safe_json import load_json_file
from malm_edge.training.data.canonical import DatasetError, ensure_writable, progress_iter, write_dataset
from malm_edge.training.data.limits import MAX_TITLE_CHARS, clean_lines, clean_text, plain_file_name_error
from malm_edge.training.data.records import PARTITIONS, Recipe

log = logging.getLogger(__name__)

LAYER1 = "layer1.json"
LAYER2 = "layer2.json"
DET_INGRS = "det_ingrs.json"
CLASSES = "classes1M.pkl"
BACKGROUND_CLASS = 0  # im2recipe's "no semantic class" index
HT_MAX_STEPS = 20
MAX_PROBLEMS = 20  # problem lines kept in the summary (all are counted)


@dataclass
class Recipe1MOptions:
    """What to keep when importing Recipe1M.

    Attributes:
        max_images: Keep at most this many photos per recipe (H-T: 5).
        require_images: Drop recipes left without a photo (H-T filter).
        require_ingredients: Drop recipes without ingredients (H-T filter).
        max_steps: Drop recipes with this many instruction steps or more (H-T filter: 20); None keeps all.
        use_det_ingrs: Use det_ingrs.json's valid ingredient names in place of the raw lines.
        check_image_files: Keep only photos whose file exists (one stat per photo); when False every
            photo in layer2 is listed, e.g. for images mounted later. Photos are not decoded here
            (a million of them): `malm-edge data check OUT` decodes them before a long run.
        skip_bad: Skip malformed records (counted, first problems listed) and write the good ones,
            instead of stopping at the first; the import still fails when nothing is kept or more
            than `max_bad_fraction` of the records are bad.
        max_bad_fraction: With skip_bad, the share of bad records above which the import fails.
        read_classes: Read the semantic classes from `classes1M.pkl` into `class` when the file is
            there (TFood's semantic triplet term needs them); "background" recipes get none.
    """

    max_images: int = 5
    require_images: bool = False
    require_ingredients: bool = False
    max_steps: int | None = None
    use_det_ingrs: bool = False
    check_image_files: bool = True
    skip_bad: bool = False
    max_bad_fraction: float = 0.05
    read_classes: bool = True

    @classmethod
    def ht(cls, **overrides) -> "Recipe1MOptions":
        """Options with all of H-T's filters on."""
        values = dict(require_images=True, require_ingredients=True, max_steps=HT_MAX_STEPS)
        return cls(**{**values, **overrides})


def image_relpath(partition: str, image_id: str) -> str:
    """Recipe1M's path of a photo relative to the images folder: `<split>/a/b/c/d/<image id>`."""
    return "/".join([partition, *image_id[:4], image_id])


def find_images_root(root: Path) -> Path:
    """`<root>/images` when it holds the split folders, else `<root>` (both layouts occur)."""
    nested = root / "images"
    if nested.is_dir():
        return nested
    if any((root / split).is_dir() for split in PARTITIONS):
        return root
    return nested  # no photos at all: every photo will count as missing


def _load_json_list(path: Path) -> list:
    if not path.is_file():
        raise DatasetError(f"{path}: missing (expected Recipe1M's {path.name})")
    data = load_json_file(path, error=DatasetError)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _is_text_list(items: object) -> bool:
    """True for Recipe1M's `[{"text": str}, ...]`."""
    return isinstance(items, list) and all(isinstance(i, dict) and isinstance(i.get("text"), str) for i in items)


def _texts(path: Path, index: int, record: dict, name: str) -> list[str]:
    """The non-empty `text` values of a `[{text}]` field."""
    items = record.get(name)
    if not _is_text_list(items):
        where = f"{path}: record {index} (id {record.get('id')!r})"
        raise DatasetError(f"{where}: {name!r} must be a list of {{text}} objects")
    return [item["text"].strip() for item in items if item["text"].strip()]


def _check_layer1_record(path: Path, index: int, record: object) -> dict:
    if not isinstance(record, dict):
        raise DatasetError(f"{path}: record {index}: expected an object, got {type(record).__name__}")
    where = f"{path}: record {index} (id {record.get('id')!r})"
    for name in ("id", "title", "partition"):
        if name not in record:
            raise DatasetError(f"{where}: missing {name!r}")
        if not isinstance(record[name], str):
            raise DatasetError(f"{where}: {name!r} must be a string, got {type(record[name]).__name__}")
        if name != "title" and not record[name].strip():  # an empty title is fine when there are ingredients
            raise DatasetError(f"{where}: empty {name!r}")
    if record["partition"] not in PARTITIONS:
        raise DatasetError(f"{where}: unknown partition {record['partition']!r}")
    return record


def _load_images(path: Path, on_bad: Callable[[DatasetError], None] | None = None) -> dict[str, list[str]]:
    """Recipe id -> image ids (file names) from layer2.json (bad records go to `on_bad` when given)."""
    images: dict[str, list[str]] = {}
    for index, record in enumerate(_load_json_list(path)):
        try:
            ids = _layer2_image_ids(path, index, record)
        except DatasetError as error:
            if on_bad is None:
                raise
            on_bad(error)
            continue
        images.setdefault(record["id"], []).extend(ids)
    return images


def _layer2_image_ids(path: Path, index: int, record: object) -> list[str]:
    entries = record.get("images") if isinstance(record, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str) or not isinstance(entries, list):
        raise DatasetError(f"{path}: record {index}: expected {{id, images: [{{id}}]}}")
    ids = []
    for entry in entries:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(image_id, str) or len(image_id) < 5 or plain_file_name_error(image_id, "images"):
            raise DatasetError(f"{path}: record {index} (id {record['id']!r}): bad image id {image_id!r} "
                               "(expected a plain file name such as 0a1b2c3d4e.jpg)")
        ids.append(image_id)
    return ids


def _load_det_ingrs(path: Path) -> dict[str, list[str]]:
    """Recipe id -> valid detected ingredient names from det_ingrs.json."""
    detected: dict[str, list[str]] = {}
    for index, record in enumerate(_load_json_list(path)):
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise DatasetError(f"{path}: record {index}: expected {{id, ingredients, valid}}")
        _texts(path, index, record, "ingredients")  # validates the shape
        items = record["ingredients"]
        valid = record.get("valid")
        if not isinstance(valid, list) or len(valid) != len(items):
            where = f"{path}: record {index} (id {record['id']!r})"
            raise DatasetError(f"{where}: 'valid' must be a list as long as 'ingredients'")
        detected[record["id"]] = [i["text"].strip() for i, ok in zip(items, valid) if ok is True and i["text"].strip()]
    return detected


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain builtins only (dict, list, tuple, str, bytes, numbers, None, set): every other
    global is refused, so a crafted file cannot run code. classes1M.pkl comes from outside."""

    _ALLOWED = frozenset(
        (module, name) for module in ("builtins", "__builtin__") for name in ("set", "frozenset")
    )

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) in self._ALLOWED:
            return super().find_class("builtins", name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain builtins are allowed")


def _class_names(id2class: object) -> dict[int, str]:
    if isinstance(id2class, dict):
        return {int(k): str(v) for k, v in id2class.items()}
    if isinstance(id2class, (list, tuple)):
        return dict(enumerate(map(str, id2class)))
    raise TypeError(f"expected a dict or list of class names, got {type(id2class).__name__}")


def load_classes(path: Path) -> dict[str, str]:
    """Recipe id -> semantic class name from im2recipe's `classes1M.pkl` (used by AdaMine / TFood).

    The file holds two pickles (written by Python 2): {recipe id: class index}, then the class
    names by index. Index 0 is "background" (no class): those recipes get no class.

    Raises:
        DatasetError: The file is not two plain pickles of that shape, or holds anything but builtins.
    """
    try:
        with path.open("rb") as handle:
            class_of = _PlainUnpickler(handle, encoding="latin1").load()
            names = _class_names(_PlainUnpickler(handle, encoding="latin1").load())
        if not isinstance(class_of, dict):
            raise TypeError(f"expected a dict of recipe id -> class index, got {type(class_of).__name__}")
        return {
            str(recipe_id): names[int(index)] for recipe_id, index in class_of.items() if int(index) != BACKGROUND_CLASS
        }
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, AttributeError) as error:
        raise DatasetError(f"{path}: not im2recipe's classes file ({error})") from None


class Recipe1MReader:
    """Turns Recipe1M's layer files into canonical recipes, counting what it keeps and drops.

    Args:
        root: The Recipe1M folder (layer1.json, layer2.json, optional det_ingrs.json, images).
        options: What to keep.
    """

    def __init__(self, root: Path, options: Recipe1MOptions | None = None) -> None:
        self.root = Path(root)
        self.options = options or Recipe1MOptions()
        if self.options.max_images < 0:
            raise DatasetError(f"max_images must be >= 0, got {self.options.max_images}")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: Recipe1M folder does not exist")
        self.images_root = find_images_root(self.root)
        self.counts: Counter = Counter()
        self.classes: dict[str, str] = {}
        self.partitions: Counter = Counter()
        self.problems: list[str] = []

    def _bad(self, error: DatasetError) -> None:
        """Count a malformed record (skip_bad) and keep its message among the first problems."""
        self.counts["skipped_bad_record"] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(str(error))

    def _layers(self) -> tuple[list, dict[str, list[str]], dict[str, list[str]] | None]:
        classes_path = self.root / CLASSES
        self.classes = load_classes(classes_path) if self.options.read_classes and classes_path.is_file() else {}
        layer1 = _load_json_list(self.root / LAYER1)
        images = _load_images(self.root / LAYER2, self._bad if self.options.skip_bad else None)
        det_path = self.root / DET_INGRS
        if self.options.use_det_ingrs and not det_path.is_file():
            raise DatasetError(f"{det_path}: missing (asked to use detected ingredients)")
        detected = _load_det_ingrs(det_path) if self.options.use_det_ingrs else None
        return layer1, images, detected

    def recipes(self, progress: bool = False) -> Iterator[Recipe]:
        """Yield the kept recipes in layer1 order (counts fill in as it goes).

        Raises:
            DatasetError: A layer file is missing or malformed (file and record named).
        """
        layer1, images, detected = self._layers()
        known_ids: set[str] = set()
        records = progress_iter(enumerate(layer1), len(layer1), "Recipe1M", enabled=progress)
        for index, raw in records:
            try:
                recipe = self._record(index, raw, known_ids, images, detected)
            except DatasetError as error:
                if not self.options.skip_bad:
                    raise
                self._bad(error)
                continue
            if recipe is not None:
                yield recipe
        self.counts["layer2_unknown_ids"] = len(set(images) - known_ids)
        self._check_kept(len(layer1))

    def _record(self, index: int, raw: object, known_ids: set[str], images: dict[str, list[str]],
                detected: dict[str, list[str]] | None) -> Recipe | None:
        record = _check_layer1_record(self.root / LAYER1, index, raw)
        if record["id"] in known_ids:
            raise DatasetError(f"{self.root / LAYER1}: record {index}: duplicate id {record['id']!r}")
        recipe = self._convert(index, record, images.get(record["id"], []), detected)
        known_ids.add(record["id"])
        return recipe

    def _check_kept(self, n_records: int) -> None:
        """With skip_bad: fail (nothing written) when nothing was kept or too many records were bad."""
        bad = self.counts["skipped_bad_record"]
        if not self.options.skip_bad or not bad:
            return
        first = f" First: {self.problems[0]}" if self.problems else ""
        if self.counts["recipes"] == 0:
            raise DatasetError(
                f"{self.root}: no recipe kept ({bad} malformed records skipped); nothing written.{first}"
            )
        if bad > self.options.max_bad_fraction * max(n_records, 1):
            raise DatasetError(
                f"{self.root}: {bad} of {n_records} records are malformed, over the "
                f"--max-bad {self.options.max_bad_fraction:g} threshold; nothing written.{first}"
            )

    def _convert(
        self, index: int, record: dict, image_ids: list[str], detected: dict[str, list[str]] | None
    ) -> Recipe | None:
        path = self.root / LAYER1
        self.counts["layer1_records"] += 1
        ingredients = _texts(path, index, record, "ingredients")
        if detected is not None:
            if record["id"] in detected:
                ingredients = detected[record["id"]]
            else:
                self.counts["no_det_ingrs"] += 1
        instructions = _texts(path, index, record, "instructions")
        title, fixes = clean_text(record["title"], MAX_TITLE_CHARS)
        ingredients, more = clean_lines(ingredients)
        instructions, most = clean_lines(instructions)
        for fix in set(fixes + more + most):
            self.counts[f"fixed_{fix}"] += 1
        photos = self._photos(record["partition"], image_ids)
        drop = self._drop_reason(title, ingredients, instructions, photos)
        if drop:
            self.counts[f"dropped_{drop}"] += 1
            return None
        self.counts["recipes"] += 1
        self.counts["images"] += len(photos)
        self.counts["text_only"] += not photos
        self.partitions[record["partition"]] += 1
        class_name = self.classes.get(record["id"])
        self.counts["with_class"] += class_name is not None
        return Recipe(
            record["id"], title, ingredients, instructions, photos, record["partition"], class_name
        )

    def _photos(self, partition: str, image_ids: list[str]) -> list[str]:
        photos = []
        for image_id in image_ids:
            relpath = image_relpath(partition, image_id)
            if self.options.check_image_files and not (self.images_root / relpath).is_file():
                self.counts["missing_image_files"] += 1
                continue
            photos.append(relpath)
        self.counts["images_over_cap"] += max(0, len(photos) - self.options.max_images)
        return photos[: self.options.max_images]

    def _drop_reason(self, title: str, ingredients: list[str], instructions: list[str], photos: list[str]) -> str:
        options = self.options
        if options.require_images and not photos:
            return "no_image"
        if not ingredients and options.require_ingredients:
            return "no_ingredients"
        if not ingredients and not title.strip():
            return "no_title_or_ingredients"  # not a valid canonical record
        if options.max_steps is not None and len(instructions) >= options.max_steps:
            return "too_many_steps"
        return ""

    def summary(self) -> dict:
        """Counts so far: recipes kept per partition, photos, drops by reason."""
        return {
            "source": "recipe1m",
            "root": str(self.root.resolve()),
            "n_recipes": self.counts["recipes"],
            "partitions": {p: self.partitions[p] for p in PARTITIONS},
            "n_images": self.counts["images"],
            "n_text_only": self.counts["text_only"],
            "counts": {k: v for k, v in sorted(self.counts.items()) if k not in ("recipes", "images", "text_only")},
            "image_check": "exists" if self.options.check_image_files else "none",
            "problems": list(self.problems),
        }


def import_recipe1m(
    root: Path,
    out_dir: Path,
    options: Recipe1MOptions | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Write a canonical dataset at `out_dir` that reads Recipe1M's photos in place.

    Args:
        root: The Recipe1M folder.
        out_dir: The dataset folder to write (`recipes.jsonl`, `dataset.json`).
        options: What to keep (defaults: keep text-only recipes, at most 5 photos each).
        overwrite: Replace an existing dataset at `out_dir`.
        progress: Show a progress bar.

    Returns:
        The summary also stored in `dataset.json` (counts per partition, photos, drops by reason).

    Raises:
        DatasetError: Missing or malformed input, or `out_dir` already holds a dataset; nothing is written.
    """
    reader = Recipe1MReader(root, options)
    out_dir = Path(out_dir)
    ensure_writable(out_dir, overwrite)

    def meta() -> dict:
        options_used = vars(reader.options)
        return {**reader.summary(), "images_root": str(reader.images_root.resolve()), "options": options_used}

    write_dataset(out_dir, reader.recipes(progress=progress), meta)
    summary = reader.summary()
    log.info("Recipe1M: wrote %d recipes to %s", summary["n_recipes"], out_dir)
    return summary
