"""Builds (once per pytest session) and locates the native core in edge/native/ for tests/test_native*.py.

`MALM_NATIVE_BUILD=DIR` uses a prebuilt folder holding `release/`, `asan/`, `fuzz/` instead
(edge/native/build.sh writes build/native/<variant>). Without a C++ compiler or CMake the native
tests skip with one clear line; CI (scripts/test.sh) installs both, so there they run.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO_ROOT / "edge" / "native" / "build.sh"
CLI_NAME = "malm-edge-native"
_BUILT: dict[str, Path] = {}


def _missing_tools(variant: str) -> str | None:
    compiler = "clang++" if variant == "fuzz" else None
    needed = ["cmake", compiler or ("c++" if shutil.which("c++") else "g++")]
    missing = [tool for tool in needed if shutil.which(tool, path=_tool_path()) is None]
    return ", ".join(missing) or None


def _tool_path() -> str:
    """PATH with this interpreter's bin folder first (pip's cmake lives there)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def native_dir(variant: str = "release") -> Path:
    """The build folder of one variant (release, asan, fuzz), building it on first use."""
    prebuilt = os.environ.get("MALM_NATIVE_BUILD")
    if prebuilt:
        return Path(prebuilt) / variant
    if variant in _BUILT:
        return _BUILT[variant]
    missing = _missing_tools(variant)
    if missing:
        pytest.skip(f"native core not built: no {missing} on this machine (install a C++ compiler and "
                    "`pip install cmake`; scripts/test.sh does)")
    env = {**os.environ, "PATH": _tool_path(), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BUILD_SCRIPT), variant], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"edge/native/build.sh {variant} failed:\n{done.stdout}\n{done.stderr}")
    _BUILT[variant] = Path(done.stdout.strip().splitlines()[-1])
    return _BUILT[variant]


def run_cli(build: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run malm-edge-native with the given arguments (text output, never raising on exit codes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87"}
    return subprocess.run([str(build / CLI_NAME), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


class NativeLib:
    """ctypes view of libmalm_edge.so's C ABI (the part the tests call)."""

    def __init__(self, build: Path) -> None:
        lib = ctypes.CDLL(str(build / "libmalm_edge.so"))
        u8p, f32p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_float)
        lib.malm_last_error.restype = ctypes.c_char_p
        lib.malm_resize_crop_rgb8.argtypes = [u8p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                              ctypes.c_int, u8p]
        lib.malm_verify_bundle.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.malm_verify_bundle_signed.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        lib.malm_public_key_id.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.malm_open.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.malm_close.argtypes = [ctypes.c_void_p]
        lib.malm_preprocess_rgb8.argtypes = [ctypes.c_void_p, u8p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                             f32p, ctypes.c_size_t]
        self.lib = lib

    def last_error(self) -> str:
        return self.lib.malm_last_error().decode("utf-8")


class OpenOptions(ctypes.Structure):
    _fields_ = [("verify_checksums", ctypes.c_int), ("load_encoder", ctypes.c_int),
                ("threads", ctypes.c_int), ("encoder", ctypes.c_char_p),
                ("trusted_public_key", ctypes.c_char_p)]
