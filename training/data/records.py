"""The canonical recipe record (docs/architecture.md, "Canonical dataset format").

A dataset is a folder with `recipes.jsonl`, one recipe a line, and its images. Every importer
(SynthFood, Recipe1M, Epicurious) writes this format and every reader streams it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

PARTITIONS = ("train", "val", "test")
RECIPES_FILE = "recipes.jsonl"


@dataclass
class Recipe:
    """One recipe with its photos.

    Attributes:
        id: Unique id within the dataset.
        title: Recipe title.
        ingredients: One string per ingredient line.
        instructions: One string per instruction step.
        images: Image paths, relative to the dataset folder (or absolute, e.g. Recipe1M read in place).
        partition: "train", "val" or "test".
        class_name: Optional semantic class (the JSON key is `class`).
    """

    id: str
    title: str
    ingredients: list[str]
    instructions: list[str]
    images: list[str] = field(default_factory=list)
    partition: str = "train"
    class_name: str | None = None

    def to_json(self) -> dict:
        """The JSON object written to recipes.jsonl (the class goes under the key `class`)."""
        record = asdict(self)
        class_name = record.pop("class_name")
        if class_name is not None:
            record["class"] = class_name
        return record

    @classmethod
    def from_json(cls, record: dict) -> "Recipe":
        """Build from an already validated JSON object."""
        return cls(
            id=str(record["id"]),
            title=record["title"],
            ingredients=list(record["ingredients"]),
            instructions=list(record["instructions"]),
            images=list(record.get("images", [])),
            partition=record.get("partition", "train"),
            class_name=record.get("class"),
        )


def write_recipes_jsonl(recipes: Iterable[Recipe], out_dir: Path) -> int:
    """Write `recipes.jsonl` atomically (temp file, then `os.replace`). Returns the count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=".recipes.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for recipe in recipes:
                handle.write(json.dumps(recipe.to_json(), ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp_name, out_dir / RECIPES_FILE)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count
