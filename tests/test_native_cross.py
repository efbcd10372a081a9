"""The native two-stage search on the phone's CPU: AArch64 (NEON kernels), under qemu-aarch64.

edge/native/tests/table_search_raw.cc (twostage.cc and table.cc, no bundle code) is built with the
AArch64 cross compiler as a static binary and run in qemu-aarch64 on the large tied tables of
tests/test_native_twostage.py, table versions 3 (at each prefilter weighting) and 2, at 64, 128 and
200 dims (the NEON scans and dots; 200 is no multiple of 16, so its dots are portable): it returns
edge/twostage.py's rows in the same order, with its NEON kernels and with the portable ones
(MALM_EDGE_DISABLE_SIMD=1). Skipped where the cross compiler or qemu is missing (scripts/test.sh
installs Debian's g++-aarch64-linux-gnu and qemu-user).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from native_build import REPO_ROOT
from test_native_twostage import tied_table, widest_table

CXX, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"
NATIVE = REPO_ROOT / "edge" / "native"
K = 12


@pytest.fixture(scope="module")
def aarch64_search(tmp_path_factory) -> Path:
    missing = [tool for tool in (CXX, QEMU) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} (apt install g++-aarch64-linux-gnu qemu-user; scripts/test.sh does)")
    binary = tmp_path_factory.mktemp("aarch64") / "table_search_raw"
    done = subprocess.run([CXX, "-O2", "-std=c++17", "-static", "-ffp-contract=off", "-Wall", "-Wextra",
                           "-Wno-unused-parameter", "-Werror", f"-I{NATIVE / 'include'}",
                           str(NATIVE / "tests" / "table_search_raw.cc"), str(NATIVE / "src" / "twostage.cc"),
                           str(NATIVE / "src" / "table.cc"), "-o", str(binary)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return binary


def write_raw(folder: Path, entry: object, queries: np.ndarray) -> None:
    """The files table_search_raw reads, from a version 3 or 2 table written by edge/."""
    shutil.copyfile(folder / entry.codes_file, folder / "codes.u64")
    shutil.copyfile(folder / entry.file, folder / "values.u8")
    if entry.version == 2:
        shutil.copyfile(folder / entry.scales_file, folder / "scales.f32")
        np.asarray(entry.centre, "<f4").tofile(folder / "centre.f32")
    else:
        centre8 = np.asarray(entry.centre, np.int64)  # version 3: the centre's codes; centre = scale x codes
        (centre8 * entry.centre_scale).astype("<f4").tofile(folder / "centre.f32")
        centre8.astype("<i4").tofile(folder / "centre8.i32")
        np.asarray([entry.centre_scale], "<f8").tofile(folder / "centre_scale.f64")
    queries.astype("<f4").tofile(folder / "queries.f32")


def run_aarch64(binary: Path, folder: Path, entry: object, query_bits: int, k: int, candidates: int,
                simd: bool) -> list[list[int]]:
    env = {"PATH": "/usr/bin:/bin", **({} if simd else {"MALM_EDGE_DISABLE_SIMD": "1"})}
    done = subprocess.run([QEMU, str(binary), str(folder), str(len(entry.centre)), str(entry.rows), str(query_bits),
                           str(candidates), str(k)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [[int(r) for r in line.split()] for line in done.stdout.splitlines()]


def check_aarch64(binary: Path, folder: Path, entry: object, queries: np.ndarray,
                  searches: tuple[tuple[int, int | None], ...]) -> None:
    """Each (k, candidates) search returns edge/'s rows, in order, with NEON and portable kernels."""
    from malm_edge.edge.twostage import read_twostage_table, search_twostage

    write_raw(folder, entry, queries)
    query_bits = entry.query_bits or 1
    for k, candidates in searches:
        expected, _ = search_twostage(read_twostage_table(folder, entry), queries, k=k, candidates=candidates)
        for simd in (True, False):
            got = run_aarch64(binary, folder, entry, query_bits, k, candidates or entry.candidates, simd)
            assert got == expected.tolist(), f"k={k} candidates={candidates} simd={simd}"


@pytest.mark.parametrize("version,query_bits", [(3, 4), (3, 2), (3, 1), (2, 1)])
@pytest.mark.parametrize("dim", [64, 128, 200])
def test_aarch64_search_matches_edge_on_large_tied_tables(aarch64_search, tmp_path, dim: int, version: int,
                                                          query_bits: int) -> None:
    """20,000 rows (the sampled limit), a third of them tied; k > candidates too."""
    entry, queries = tied_table(tmp_path, dim, version=version, query_bits=query_bits)
    check_aarch64(aarch64_search, tmp_path, entry, queries, ((K, None), (300, None), (K, 250)))


def test_aarch64_search_matches_edge_on_a_small_table_and_the_widest(aarch64_search, tmp_path) -> None:
    """1,003 rows (no sample; 43 rows past the last block), a zero-residual query, every row
    returned; and the 4,368-d table whose distances reach 65,520."""
    from malm_edge.edge.twostage import read_twostage_table

    small = tmp_path / "small"
    entry, queries = tied_table(small, 128, n_rows=1003, query_bits=3)
    centre = read_twostage_table(small, entry).centre  # a zero residual: every weight 0
    queries = np.concatenate([queries[:4], centre[None]]).astype(np.float32)
    check_aarch64(aarch64_search, small, entry, queries, ((K, None), (entry.rows, None)))
    entry, queries = widest_table(tmp_path / "widest")
    check_aarch64(aarch64_search, tmp_path / "widest", entry, queries, ((entry.rows, None), (K, None)))
