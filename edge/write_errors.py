"""Turn a failed write (disk full, read-only or unwritable output) into one line naming path and cause.

Writers fail in many shapes: `OSError` with an errno (ENOSPC, EROFS, EACCES), safetensors'
`SafetensorError("... No space left on device ...")`, sqlite3's "database or disk is full", and
torch.save's opaque `RuntimeError: basic_ios::clear: iostream error`. `write_failure_cause` says which
cause it was (probing the folder's free space and permissions when the error does not say), and
`guard_writes` re-raises any of them as the caller's error type: `PATH: cannot write (CAUSE)`.

Every writer in the project writes to a temporary name and renames it into place, so a failed write
leaves the previous file (last checkpoint, dataset, bundle) intact; the message says so where the
caller passes `intact`. Standard library only.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from malm_edge.edge.errors import EdgeError

LOW_SPACE_BYTES = 16 << 20


class OutputWriteError(EdgeError, OSError):
    """An edge artifact (table, catalog, manifest) could not be written; names the path and cause."""

_ERRNO_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error on the device",
}
_TEXT_CAUSES = (
    ("No space left", "no space left on the device"),
    ("StorageFull", "no space left on the device"),
    ("disk is full", "no space left on the device"),
    ("Read-only file system", "read-only file system"),
    ("ReadOnlyFilesystem", "read-only file system"),
    ("readonly database", "read-only file system or file"),
    ("Permission denied", "permission denied"),
    ("PermissionDenied", "permission denied"),
)
# Errors a writer can raise that are not OSError but are still about the output.
_OPAQUE_WRITE_ERRORS = ("iostream error", "basic_ios", "unexpected pos", "PytorchStreamWriter failed")


def _existing_folder(path: Path) -> Path:
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _probe(path: Path) -> str | None:
    """Cause found by looking at the output folder: low free space, or not writable."""
    folder = _existing_folder(path)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free < LOW_SPACE_BYTES:
        return f"no space left on the device ({free} bytes free in {folder})"
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable"
    return None


def write_failure_cause(error: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """The cause of a failed write in a few words, or None when `error` is not a write failure."""
    code = getattr(error, "errno", None)
    if isinstance(error, OSError) and code in _ERRNO_CAUSES:
        return _ERRNO_CAUSES[code]
    text = str(error)
    for marker, cause in _TEXT_CAUSES:
        if marker in text:
            return cause
    opaque = any(marker in text for marker in _OPAQUE_WRITE_ERRORS)
    if opaque or type(error).__name__ in ("SafetensorError", "OperationalError") or isinstance(error, OSError):
        probed = _probe(Path(path)) if path is not None else None
        if probed:
            return probed
        if opaque or type(error).__name__ == "SafetensorError":
            return f"{type(error).__name__}: {text}"
    return None


@contextmanager
def guard_writes(path: str | os.PathLike, error: type[Exception], intact: str | None = None) -> Iterator[None]:
    """Re-raise a failed write inside the block as `error("PATH: cannot write (CAUSE)[; INTACT]")`."""
    try:
        yield
    except Exception as failure:  # noqa: BLE001 - only write failures are translated, others re-raised
        cause = write_failure_cause(failure, path)
        if cause is None:
            raise
        note = f"; {intact}" if intact else ""
        raise error(f"{path}: cannot write ({cause}){note}") from failure
