"""The one way to read a JSON file that comes from outside: size and nesting bounded, errors named.

`json.loads` recurses once per nesting level, so a file of 100,000 `[` raises RecursionError (or,
with a raised recursion limit, crashes the interpreter). Every reader of outside JSON (bundle
manifest, dataset.json, Recipe1M's layer files, Epicurious split files, run and index metadata)
goes through `load_json_file` / `loads`, which turn every failure into the caller's error type with
`file[:line]: what is wrong`. Nesting deeper than `MAX_DEPTH` is refused: the deepest real file
(Recipe1M's layer1.json) nests 4 levels.

Standard library only (edge/ is torch-free; training imports this module too).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from malm_edge.edge.errors import EdgeError

MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 4 << 30  # 4 GiB: Recipe1M's layer1.json is 1.3 GB; a manifest is kilobytes


class JsonFileError(EdgeError, ValueError):
    """A JSON file is missing, unreadable, malformed or too deep (when the caller names no error type)."""


def json_depth(value: Any) -> int:
    """Nesting depth of a decoded value, iteratively (no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                return depth
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def loads(text: str | bytes, source: str | os.PathLike, *, error: type[Exception] = JsonFileError,
          max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON text, raising `error("source[:line]: ...")` for anything malformed or too deep."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        value = json.loads(text)
    except UnicodeDecodeError as err:
        raise error(f"{source}: not valid UTF-8 (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise error(f"{source}:{err.lineno}: malformed JSON: {err.msg} (column {err.colno})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply (more than {max_depth} levels)") from None
    if json_depth(value) > max_depth:
        raise error(f"{source}: JSON nested too deeply (more than {max_depth} levels)")
    return value


def load_json_file(path: str | os.PathLike, *, error: type[Exception] = JsonFileError,
                   max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """Read and decode a JSON file (see `loads`); a missing, unreadable or oversized file raises `error`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise error(f"{path}: is a folder, not a JSON file")
        if size > max_bytes:
            raise error(f"{path}: {size} bytes, over the limit of {max_bytes} for this file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: missing") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    return loads(data, path, error=error, max_depth=max_depth)
