"""The native core under AddressSanitizer + UndefinedBehaviorSanitizer, and libFuzzer runs.

The ASan variant instruments all of our C++ (bundle reader, preprocessing, table, catalog, C API,
image decoding glue, CLI) and runs the prebuilt ExecuTorch libraries uninstrumented inside the same
process, so the encoder path is exercised too (its own code is not checked by ASan). A sanitizer
report makes the process exit 86 (ASan/LSan) or 87 (UBSan), which these tests refuse.

Fuzzing: `fuzz_manifest` (manifest.json text -> parser), `fuzz_image` (file bytes -> JPEG/PNG
decoding, EXIF orientation, PIL-exact resize + crop) and `fuzz_signature` (manifest.sig text ->
record checks -> OpenSSL Ed25519 verification), clang + libFuzzer + ASan + UBSan, each for
MALM_FUZZ_SECONDS (default 12) from a seed corpus made here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import SHARED_DATASETS
from edge_bundle_fixture import get_bundle
from native_build import native_dir, run_cli
from PIL import Image
from test_native import TAMPERINGS, bad_images, parity_photos
from test_native_signature import SIGNATURE_CASES
from test_native_twostage import check_table_search, tied_table

from malm_edge.edge.bundle import MANIFEST_FILE
from malm_edge.edge.signing import SIGNATURE_FILE, generate_keypair, sign_bundle

SANITIZER_EXIT_CODES = {86, 87}
FUZZ_SECONDS = int(os.environ.get("MALM_FUZZ_SECONDS", "12"))


@pytest.fixture(scope="module")
def asan() -> Path:
    return native_dir("asan")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory)


def _clean(done: subprocess.CompletedProcess) -> None:
    assert done.returncode not in SANITIZER_EXIT_CODES and done.returncode >= 0, done.stderr[-4000:]
    assert "ERROR: AddressSanitizer" not in done.stderr and "runtime error:" not in done.stderr, done.stderr[-4000:]


def test_unit_tests_under_asan(asan) -> None:
    done = subprocess.run([str(asan / "native_unit_tests")], capture_output=True, text=True, cwd=asan)
    _clean(done)
    assert done.returncode == 0


def test_parity_under_asan(asan, bundle_dir, tmp_path) -> None:
    """The sanitized CLI gives the release build's top-5 on the parity photos."""
    photos = [str(p) for p in parity_photos(tmp_path / "photos")]
    sanitized = run_cli(asan, "search", *photos, "--bundle", str(bundle_dir), "--json", "--threads", "1",
                        timeout=600)
    _clean(sanitized)
    release = run_cli(native_dir("release"), "search", *photos, "--bundle", str(bundle_dir), "--json",
                      "--threads", "1")
    assert sanitized.returncode == release.returncode == 0
    ids = lambda out: [[h["id"] for h in o["results"]] for o in json.loads(out)]  # noqa: E731
    assert ids(sanitized.stdout) == ids(release.stdout)
    _clean(run_cli(asan, "text", "chicken curry", "--bundle", str(bundle_dir), "--json"))


@pytest.mark.parametrize("simd", ["", "1"], ids=["simd", "portable"])
def test_two_stage_table_search_under_asan(asan, tmp_path, monkeypatch, simd: str) -> None:
    """The two-stage prefilter and dot kernels (the vector ones stay in this build) on 20,000 tied rows."""
    monkeypatch.setenv("MALM_EDGE_DISABLE_SIMD", simd)
    entry, queries = tied_table(tmp_path)
    check_table_search(asan, tmp_path, entry, queries, 10)
    check_table_search(asan, tmp_path, entry, queries, 300)


def test_bad_bundles_under_asan(asan, bundle_dir, tmp_path) -> None:
    for case, (tamper, named) in sorted(TAMPERINGS.items()):
        bundle = Path(shutil.copytree(bundle_dir, tmp_path / case))
        tamper(bundle)
        done = run_cli(asan, "search", "x.jpg", "--bundle", str(bundle), "--json")
        _clean(done)
        assert done.returncode == 1 and str(bundle / named) in done.stderr, case
    (bundle := Path(shutil.copytree(bundle_dir, tmp_path / "deep"))).joinpath(MANIFEST_FILE).write_text("{" * 10**5)
    _clean(run_cli(asan, "verify", "--bundle", str(bundle)))


def test_signature_cases_under_asan(asan, bundle_dir, tmp_path) -> None:
    """Every signature case of test_native_signature, and the good signed bundle, on the sanitized CLI."""
    keys = {"private": tmp_path / "k.pem", "public": tmp_path / "k.pem.pub",
            "other_private": tmp_path / "o.pem", "other_public": tmp_path / "o.pem.pub"}
    generate_keypair(keys["private"], keys["public"])
    generate_keypair(keys["other_private"], keys["other_public"])
    good = Path(shutil.copytree(bundle_dir, tmp_path / "good"))
    sign_bundle(good, keys["private"])
    done = run_cli(asan, "verify", "--bundle", str(good), "--require-signature", str(keys["public"]))
    _clean(done)
    assert done.returncode == 0, done.stderr
    for case, (tamper, named, _) in sorted(SIGNATURE_CASES.items()):
        bundle = Path(shutil.copytree(good, tmp_path / case, symlinks=True))
        tamper(bundle, keys)
        done = run_cli(asan, "search", "x.jpg", "--bundle", str(bundle), "--require-signature", str(keys["public"]))
        _clean(done)
        assert done.returncode == 1 and str(bundle / named) in done.stderr, case
    _clean(run_cli(asan, "verify", "--bundle", str(good), "--require-signature", str(keys["private"])))


def test_bad_images_under_asan(asan, bundle_dir, tmp_path) -> None:
    photos = sorted((SHARED_DATASETS / "photos" / "inversecooking").glob("*.jpg"))
    if not photos:
        pytest.skip("no real photos in ../shared/datasets")
    cases = bad_images(tmp_path / "bad", photos[0])
    done = run_cli(asan, "search", *map(str, cases.values()), "--bundle", str(bundle_dir), "--json")
    _clean(done)
    assert done.returncode == 1
    assert all("error" in o for o in json.loads(done.stdout))


def _seed_corpus(folder: Path, bundle_dir: Path, kind: str) -> Path:
    folder.mkdir(parents=True)
    if kind == "manifest":
        shutil.copy(bundle_dir / MANIFEST_FILE, folder / "manifest.json")
        (folder / "nested.json").write_text('{"a": [[[{"b": 1}]]]}')
        return folder
    if kind == "signature":
        signed = Path(shutil.copytree(bundle_dir, folder.parent / "signed"))
        generate_keypair(folder.parent / "k.pem", folder.parent / "k.pem.pub")
        sign_bundle(signed, folder.parent / "k.pem")
        shutil.copy(signed / SIGNATURE_FILE, folder / "manifest.sig")
        (folder / "rsa.sig").write_text('{"format": "malm-edge-signature", "version": 1, "algorithm": "RSA"}')
        return folder
    photos = sorted((SHARED_DATASETS / "photos" / "inversecooking").glob("*.jpg"))
    image = (Image.open(photos[0]).convert("RGB") if photos else Image.new("RGB", (40, 30), "red"))
    small = image.resize((24, 18))
    small.save(folder / "a.jpg", quality=80)
    small.save(folder / "b.jpg", progressive=True)
    small.save(folder / "c.png")
    small.convert("RGBA").save(folder / "d.png")
    small.convert("P").save(folder / "e.png")
    small.convert("L").save(folder / "f.png")
    exif = Image.Exif()
    exif[0x0112] = 8
    small.save(folder / "g.jpg", exif=exif.tobytes())
    return folder


@pytest.mark.parametrize("target, kind", [("fuzz_manifest", "manifest"), ("fuzz_image", "image"),
                                          ("fuzz_signature", "signature")])
def test_fuzz_target_finds_nothing(bundle_dir, tmp_path, target, kind) -> None:
    fuzz = native_dir("fuzz")
    corpus = _seed_corpus(tmp_path / "corpus", bundle_dir, kind)
    # A single allocation over 2 GB is a finding; the whole process's RSS (ASan's shadow and quarantine
    # included) is only bounded loosely: a CI run once tripped a 2 GB RSS limit on the empty input.
    env = {**os.environ, "ASAN_OPTIONS": "quarantine_size_mb=64:" + os.environ.get("ASAN_OPTIONS", "")}
    done = subprocess.run([str(fuzz / target), f"-max_total_time={FUZZ_SECONDS}", "-rss_limit_mb=6144",
                           "-malloc_limit_mb=2048", "-timeout=60", f"-artifact_prefix={tmp_path}/", str(corpus)],
                          capture_output=True, text=True, timeout=FUZZ_SECONDS + 120, env=env)
    runs = [line for line in done.stderr.splitlines() if line.startswith("Done ")]
    assert done.returncode == 0 and runs, done.stderr[-4000:]
    print(f"{target}: {runs[-1]}")
