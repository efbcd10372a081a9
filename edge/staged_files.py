"""A set of files written under temporary names in one folder and renamed into place together.

The table writers (table.py, twostage.py) stream their rows through this; a write error becomes one
`OutputWriteError` line naming the first file, and nothing replaces the previous files until
`publish`.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from pathlib import Path

from malm_edge.edge.write_errors import OutputWriteError, guard_writes


class StagedFiles:
    """Open `.NAME.tmp` for each name in `out_dir` (created if needed); `publish` renames them."""

    def __init__(self, out_dir: Path, names: list[str]) -> None:
        self.out_dir, self.names = out_dir, names
        with self.guard():
            out_dir.mkdir(parents=True, exist_ok=True)
            self._handles = [open(out_dir / f".{name}.tmp", "wb") for name in names]

    def guard(self) -> AbstractContextManager[None]:
        """Turn an OSError inside the block into one OutputWriteError line."""
        return guard_writes(self.out_dir / self.names[0], OutputWriteError,
                            intact="the previous table, if any, is unchanged")

    def write(self, index: int, data: bytes) -> None:
        """Append bytes to the index-th file (call inside `guard`)."""
        self._handles[index].write(data)

    @property
    def closed(self) -> bool:
        return all(handle.closed for handle in self._handles)

    def publish(self) -> None:
        """Flush, fsync and close every file, then rename each into place."""
        with self.guard():
            for handle in self._handles:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            for name in self.names:
                os.replace(self.out_dir / f".{name}.tmp", self.out_dir / name)

    def abandon(self) -> None:
        """Close without publishing (the temporary files stay; the previous files are untouched)."""
        for handle in self._handles:
            handle.close()
