"""Documented limits on recipe text and image paths: one place for check, import and training.

Real recipes sit far below every limit (Recipe1M: at most ~130 ingredient lines, steps under
3,000 characters); the limits exist so a broken or hostile file cannot make training or an import
use gigabytes (a 10 MB line, a 200,000-ingredient recipe) or smuggle in control characters.

- `recipes.jsonl` (data check, training): a record over a limit, with a NUL or other control
  character, or whose title and ingredients are both blank (whitespace only), is a bad line
  (reported with file:line; strict readers stop at it, lenient ones skip and count it).
- Importers: text is cleaned (control characters removed), lists cut to `MAX_ITEMS`, lines and
  titles cut to their limit; each fix is counted in the import summary. A source cell over
  `MAX_CELL_CHARS` is not parsed at all: its row is malformed (the import stops there, or with
  `--skip-bad` skips and counts it).
- Image paths: relative paths may not leave their folder (`..`); importers write only plain file
  names for Epicurious and Recipe1M's fixed layout.
"""

from __future__ import annotations

import posixpath
import re

MAX_TITLE_CHARS = 1_000
MAX_LINE_CHARS = 10_000  # one ingredient line or instruction step
MAX_ITEMS = 1_000  # ingredient lines, instruction steps, images per recipe
MAX_RECORD_BYTES = 4 << 20  # one line of recipes.jsonl
MAX_CELL_CHARS = 256 << 10  # one CSV cell (ast.literal_eval takes ~150 bytes of memory per character)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_chars(text: str) -> bool:
    """True when `text` holds NUL or another control character (tab and newlines are allowed)."""
    return _CONTROL.search(text) is not None


def clean_text(text: str, limit: int) -> tuple[str, list[str]]:
    """(text without control characters, stripped, cut to `limit`; the fixes made, by name)."""
    fixes = []
    if has_control_chars(text):
        text, fixes = _CONTROL.sub("", text), ["control_chars_removed"]
    text = text.strip()
    if len(text) > limit:
        text, fixes = text[:limit].rstrip(), [*fixes, "text_truncated"]
    return text, fixes


def clean_lines(lines: list[str]) -> tuple[list[str], list[str]]:
    """Each line cleaned (`clean_text`, MAX_LINE_CHARS), blanks dropped, at most MAX_ITEMS kept."""
    fixes: list[str] = []
    kept = []
    for line in lines:
        cleaned, line_fixes = clean_text(line, MAX_LINE_CHARS)
        fixes += [f for f in line_fixes if f not in fixes]
        if cleaned:
            kept.append(cleaned)
    if len(kept) > MAX_ITEMS:
        kept, fixes = kept[:MAX_ITEMS], [*fixes, "list_truncated"]
    return kept, fixes


def text_error(title: str, ingredients: list[str], instructions: list[str]) -> str | None:
    """Why a canonical record's text breaks a limit, or None (for `canonical.validate_record`)."""
    if not title.strip() and not any(line.strip() for line in ingredients):
        return "recipe has neither a title nor ingredients (blank text counts as none)"
    if len(title) > MAX_TITLE_CHARS:
        return f"'title' is {len(title)} characters, over the limit of {MAX_TITLE_CHARS}"
    for name, lines in (("ingredients", ingredients), ("instructions", instructions)):
        if len(lines) > MAX_ITEMS:
            return f"{name!r} has {len(lines)} entries, over the limit of {MAX_ITEMS}"
        for index, line in enumerate(lines):
            if len(line) > MAX_LINE_CHARS:
                return f"{name!r}[{index}] is {len(line)} characters, over the limit of {MAX_LINE_CHARS}"
    for name, text in (("title", title), *((f"ingredients[{i}]", t) for i, t in enumerate(ingredients)),
                       *((f"instructions[{i}]", t) for i, t in enumerate(instructions))):
        if has_control_chars(text):
            return f"{name!r} holds a NUL or other control character"
    return None


def image_path_error(image: str) -> str | None:
    """Why an image entry of recipes.jsonl is refused, or None.

    Absolute paths are allowed (a dataset may read photos in place, docs/architecture.md); a
    relative path must stay inside its folder.
    """
    if has_control_chars(image):
        return f"image path {image!r} holds a control character"
    if posixpath.isabs(image) or re.match(r"^[A-Za-z]:[\\/]", image):
        return None
    normal = posixpath.normpath(image.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        return f"image path {image!r} leaves the dataset's images folder"
    return None


def plain_file_name_error(name: str, folder: str) -> str | None:
    """Why a file name from an import source is not a plain name inside `folder`, or None."""
    if not name or "/" in name or "\\" in name or name in (".", "..") or has_control_chars(name):
        return f"image name {name!r} is not a plain file name inside {folder!r} (a path leaving it?)"
    return None
