"""The `malm-edge` command line; the typer app and its entry point are in `malm_edge.cli.root`.

This package file imports nothing, so that the on-device commands (`search`, `bench`, `demo`) load
without the training library: `import malm_edge.cli.search` must not pull in `cli/train.py`, whose
help text reads `training/presets.py`. Installs made before the entry point moved call
`malm_edge.cli.root`, which the attribute hook below still answers.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "main"):
        from malm_edge.cli import root

        return getattr(root, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
