"""Keep the screen for the project's own output: third-party chatter is silenced unless --verbose.

- Loggers of the libraries the exporters pull in (onnx_ir, onnxscript, coremltools, torchao,
  torchvision, torch, executorch, ...) only pass errors.
- Their Python warnings (deprecations, "failed to load", version notices) are ignored, and tqdm bars
  (coremltools' conversion passes) are turned off through tqdm's own TQDM_DISABLE.
- Native runtimes write to file descriptor 2 directly (ExecuTorch's `[cpuinfo_utils.cpp:71] ...`,
  `[threadpool.cpp:...]`): when stderr is a real file descriptor, fd 2 is routed through a pipe
  whose reader drops such lines and passes everything else on unchanged. Python's own sys.stderr
  (logging, progress bars) keeps writing to the original stream, so a terminal stays a terminal.

`--verbose` skips all of this.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from typing import Any, Callable, TextIO

THIRD_PARTY_LOGGERS = ("onnx_ir", "onnxscript", "onnx", "onnxruntime", "coremltools", "torchao", "torchvision",
                       "torch", "executorch", "PIL", "matplotlib", "urllib3", "filelock")
THIRD_PARTY_WARNINGS = r"(onnx_ir|onnxscript|onnx|onnxruntime|coremltools|torchao|torchvision|torch|executorch)(\.|$)"
# `[file.cpp:71] message` (ExecuTorch's ET_LOG), glog-style `I1201 09:20:52.424 123 file.cc:42] ...`
NATIVE_CHATTER = re.compile(
    rb"^(\[[\w./-]+\.(c|cc|cpp|cxx|h|hpp):\d+\]|[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w./-]+:\d+\])"
)
# What the start of such a line looks like before its end has arrived (held back until it has).
CHATTER_PREFIX = re.compile(rb"\[[\w./-]*(:\d*)?|[IWE]\d{0,4}( [\d:.]*( +\d*( [\w./-]*(:\d*)?)?)?)?")


def _may_be_chatter(partial: bytes) -> bool:
    """Whether a line without its end yet is, or may become, a native chatter line."""
    return bool(NATIVE_CHATTER.match(partial) or CHATTER_PREFIX.fullmatch(partial))


def quiet_third_party() -> None:
    """Silence third-party loggers and warnings (idempotent)."""
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=THIRD_PARTY_WARNINGS)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch resets its loggers' levels when imported: errors only


def filter_native_stderr() -> Callable[[], None] | None:
    """Route fd 2 through a filter dropping native log lines; returns the undo (None: not possible)."""
    try:
        if sys.stderr.fileno() != 2:
            return None  # a test runner's captured stream: leave it alone
    except (AttributeError, OSError, ValueError):
        return None
    sys.stderr.flush()
    original = os.dup(2)  # the real stderr
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    old_stream = sys.stderr
    real_stream = os.fdopen(os.dup(original), "w", buffering=1, encoding=old_stream.encoding,
                            errors=old_stream.errors)
    new_stream = FilteredStream(real_stream)  # ExecuTorch's pybindings log through sys.stderr
    sys.stderr = new_stream
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old_stream]
    for handler in handlers:
        handler.setStream(new_stream)
    pump = threading.Thread(target=_pump, args=(read_end, original), name="native-stderr-filter", daemon=True)
    pump.start()

    def undo() -> None:
        new_stream.drain()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF
        pump.join(timeout=2)
        for handler in handlers:
            handler.setStream(old_stream)
        sys.stderr = old_stream
        real_stream.close()
        os.close(original)

    return undo


class FilteredStream:
    """A text stream that drops native chatter lines and passes everything else through."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self._pending = stream, ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        out = "".join(line + "\n" for line in lines if not NATIVE_CHATTER.match(line.encode(errors="replace")))
        if self._pending and not _may_be_chatter(self._pending.encode(errors="replace")):
            out, self._pending = out + self._pending, ""
        if out:
            self._stream.write(out)
        return len(text)

    def flush(self) -> None:
        """Flush what is complete; a partial line that may still become chatter waits for its end
        (ExecuTorch writes `[`, `cpuinfo_utils.cpp`, `:71] `, ... each followed by a flush)."""
        self._stream.flush()

    def drain(self) -> None:
        """Write the last partial line unless it is chatter (when the filter is removed)."""
        if self._pending and not NATIVE_CHATTER.match(self._pending.encode(errors="replace")):
            self._stream.write(self._pending)
        self._pending = ""
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, ...; not the raw buffer or fd
        if name in ("buffer", "fileno"):
            raise AttributeError(name)
        return getattr(self._stream, name)


def _pump(read_end: int, target: int) -> None:
    """Copy `read_end` to `target` line by line, dropping native chatter; partial lines pass at once
    unless they could still become a chatter line."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as source:
        while chunk := source.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not NATIVE_CHATTER.match(line))
            if pending and not _may_be_chatter(pending):
                out, pending = out + pending, b""
            if out:
                os.write(target, out)
    if pending and not NATIVE_CHATTER.match(pending):
        os.write(target, pending)
