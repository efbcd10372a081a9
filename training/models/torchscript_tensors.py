"""Read the tensors of a TorchScript archive without running any of its code.

`torch.jit.load` executes an archive's TorchScript (`__setstate__` methods among it) while loading,
before anything can be validated, so a downloaded `.pt` could run code. A TorchScript archive is a
zip: `<name>/data.pkl` pickles the module tree (objects of `__torch__.*` classes whose state is a
dict of attributes), `<name>/data/<key>` hold the raw tensor storages, `<name>/code/` the source.

This reader unpickles `data.pkl` with a restricted unpickler (the mitigation the pickle docs call
"restricting globals", as `torch.load(weights_only=True)` does): `__torch__.*` classes become inert
attribute holders, tensors are rebuilt from the zip's storages, and any other global (`os.system`,
`builtins.eval`, ...) is refused before it is called. Nothing from `code/` is read. The tensors of
the module tree come back as a flat `{dotted.name: tensor}` dict, as `state_dict()` would give.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from malm_edge.training.errors import TrainingError

# Storage class names in the pickle -> dtype of the raw little-endian bytes.
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
MAX_MODULE_DEPTH = 64  # nesting of submodules walked (a real CLIP tree is under 10 deep)


class TorchScriptReadError(TrainingError, ValueError):
    """The archive cannot be read as tensors only (not TorchScript, or it needs code to load)."""


class _ScriptObject:
    """Stands in for a `__torch__.*` class: keeps the pickled state, runs nothing."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _script_class(qualified_name: str) -> type:
    return type(qualified_name.rsplit(".", 1)[-1], (_ScriptObject,), {})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


class _TensorOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose only callables are tensor rebuilders and inert `__torch__` holders."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only tensors are read)")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        raw = bytearray(self.archive.read(f"{self.prefix}data/{pid[2]}"))
        dtype = _STORAGE_DTYPES[pid[1]]
        return torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def _data_pickle_name(archive: zipfile.ZipFile) -> str:
    names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise TorchScriptReadError("not a TorchScript archive (no single <name>/data.pkl)")
    return names[0]


def _collect(root: Any) -> dict[str, torch.Tensor]:
    """Flat {dotted name: tensor} over the module tree (iterative; depth bounded)."""
    tensors: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        prefix, node, depth = stack.pop()
        if isinstance(node, torch.Tensor):
            tensors[prefix.rstrip(".")] = node
            continue
        if depth > MAX_MODULE_DEPTH:
            raise TorchScriptReadError(f"module tree nested more than {MAX_MODULE_DEPTH} levels")
        state = node.state if isinstance(node, _ScriptObject) else node
        if isinstance(state, dict):
            for key, value in state.items():
                if isinstance(key, str) and isinstance(value, (torch.Tensor, _ScriptObject, dict)):
                    stack.append((f"{prefix}{key}.", value, depth + 1))
    return tensors


def read_torchscript_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript archive's module tree, read without executing its code.

    Raises:
        TorchScriptReadError: Not a TorchScript zip, or its pickle needs anything but tensors.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            name = _data_pickle_name(archive)
            prefix = name[: -len("data.pkl")]
            root = _TensorOnlyUnpickler(archive.read(name), archive, prefix).load()
    except (pickle.UnpicklingError, zipfile.BadZipFile, KeyError, EOFError, ValueError, TypeError,
            RuntimeError) as error:
        raise TorchScriptReadError(f"{type(error).__name__}: {error}") from None
    return _collect(root)
