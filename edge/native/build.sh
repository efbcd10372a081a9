#!/usr/bin/env bash
# Build the native core: `bash edge/native/build.sh [release|asan|fuzz]... ` (default: release).
#   release -> build/native/release: libmalm_edge.so, malm-edge-native, native_unit_tests (+ ctest)
#   asan    -> build/native/asan: the same with AddressSanitizer + UBSan (ExecuTorch kept; see docs)
#   fuzz    -> build/native/fuzz: fuzz_manifest, fuzz_image, fuzz_signature (clang + libFuzzer)
# Needs: a C++17 compiler, CMake >= 3.28 (pip install cmake), Debian's libsqlite3-dev libssl-dev
# libjpeg-dev libpng-dev nlohmann-json3-dev, and the executorch wheel in the active Python.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python}"
jobs="${MALM_BUILD_JOBS:-2}"
et_root="$("$python" -c 'import executorch; print(list(executorch.__path__)[0])')"
[ "$#" -gt 0 ] || set -- release
for variant in "$@"; do
  out="$repo/build/native/$variant"
  case "$variant" in
    release) flags=() ;;
    asan) flags=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g" -DMALM_SANITIZE=ON) ;;
    fuzz) flags=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMALM_FUZZ=ON -DMALM_WITH_EXECUTORCH=OFF) ;;
    *) echo "unknown variant $variant (release, asan, fuzz)" >&2; exit 2 ;;
  esac
  cmake -S "$here" -B "$out" -DEXECUTORCH_ROOT="$et_root" "${flags[@]}" >/dev/null
  cmake --build "$out" -j "$jobs" >/dev/null
  echo "$out"
done
