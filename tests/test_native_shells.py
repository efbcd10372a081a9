"""The phone shells' native layers, run on Linux against a real bundle and real photos.

- Android: edge/native/android (dev.malmedge.MalmEdge + libmalm_edge_jni.so) in a desktop JVM with
  -Xcheck:jni. The same top-k rows as edge/'s Retriever and `malm-edge-native search --json` on
  photos decoded with edge/preprocess.py (as the app decodes them with the OS), the C message in
  the Java exception for a tampered bundle, a clear exception on a closed engine, no crash on bad
  arguments. Paths and words beyond ASCII cross JNI (the bundle folder is "bündle 🍜").
- iOS: `@import MalmEdge;` through edge/native/include/module.modulemap with clang modules (what
  Swift's `import MalmEdge` reads), linked to libmalm_edge.so and run on the same photo.

Skips, each with its reason: no javac/java (Android), no jni.h for CMake, no clang modules (iOS),
no ../shared/datasets photos, no C++ toolchain (tests/native_build.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_DATASETS
from edge_bundle_fixture import EMBED_DIM, ROWS, get_bundle
from native_build import native_dir, run_cli
from PIL import Image

from malm_edge.edge.bundle import BundleError, read_bundle
from malm_edge.edge.preprocess import load_rgb, to_rgb
from malm_edge.edge.retriever import Retriever
from malm_edge.edge.signing import generate_keypair, sign_bundle, trusted_key_record

ANDROID_DIR = REPO_ROOT / "edge" / "native" / "android"
JAVA_SOURCES = sorted((ANDROID_DIR / "src" / "main" / "java" / "dev" / "malmedge").glob("*.java"))
SHELL_TESTS = Path(__file__).parent / "native_shells"
INCLUDE_DIR = REPO_ROOT / "edge" / "native" / "include"
K = 5
SCORE_TOLERANCE = 1e-3  # ONNX (the reference) vs ExecuTorch (the native core), as tests/test_native.py
TEXT_QUERIES = ["chicken", "curry chicken", "Lemon, basil!", "zzz", "crème brûlée 🍜"]


@pytest.fixture(scope="module")
def build() -> Path:
    return native_dir("release")


@pytest.fixture(scope="module")
def shell_bundles(tmp_path_factory) -> tuple[Path, Path]:
    """The session's bundle copied under a non-ASCII folder, and a copy with one flipped table byte."""
    root = tmp_path_factory.mktemp("shells")
    bundle = Path(shutil.copytree(get_bundle(tmp_path_factory), root / "bündle 🍜"))
    bad = Path(shutil.copytree(bundle, root / "bad bündle 🍜"))
    data = bytearray((bad / "table.i8").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "table.i8").write_bytes(bytes(data))
    return bundle, bad


@pytest.fixture(scope="module")
def signed_bundle(shell_bundles) -> tuple[Path, Path]:
    """(a signed copy of the shell bundle, the trusted public key)."""
    bundle, _ = shell_bundles
    keys = bundle.parent / "keys"
    keys.mkdir()
    generate_keypair(keys / "builder.pem", keys / "builder.pem.pub")
    signed = Path(shutil.copytree(bundle, bundle.parent / "signed bündle"))
    sign_bundle(signed, keys / "builder.pem")
    return signed, keys / "builder.pem.pub"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[tuple[Path, Path, int, int]]:
    """Three real photos, each decoded and EXIF-oriented by edge/preprocess.py into a raw RGB8 file:
    (photo, rgb8 file, width, height)."""
    root = SHARED_DATASETS / "photos"
    chosen = sorted((root / "inversecooking").glob("*.jpg"))[:2] + sorted((root / "recipe1m_val").glob("*.jpg"))[:1]
    if len(chosen) < 3:
        pytest.skip(f"no real photos under {root} (../shared/datasets is not beside the checkout)")
    folder = tmp_path_factory.mktemp("rgb8")
    decoded = []
    for i, photo in enumerate(chosen):
        pixels = np.ascontiguousarray(np.asarray(load_rgb(photo), dtype=np.uint8))  # (H, W, 3)
        raw = folder / f"photo{i}.rgb"
        raw.write_bytes(pixels.tobytes())
        decoded.append((photo, raw, pixels.shape[1], pixels.shape[0]))
    return decoded


@pytest.fixture(scope="module")
def reference(shell_bundles, photos) -> dict:
    """edge/'s Retriever (ONNX) on the same photos and words: the Python reference."""
    bundle, _ = shell_bundles
    with Retriever(bundle, backend="onnx", threads=1) as retriever:
        return {"photos": [retriever.search(photo, K) for photo, *_ in photos],
                "embeddings": [retriever.embed_image(photo) for photo, *_ in photos],
                "text": [retriever.search_text(query, K) for query in TEXT_QUERIES]}


def _same_hits(mine: list[dict], theirs: list[dict]) -> None:
    """Same rows, ids and titles in the same order as the reference, scores within tolerance."""
    assert len(theirs) == K
    assert [(h["rank"], h["row"], h["id"], h["title"]) for h in mine] == \
        [(h["rank"], h["row"], h["id"], h["title"]) for h in theirs]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(mine, theirs)) < SCORE_TOLERANCE


# ------------------------------------------------------------------------------------- Android


@pytest.fixture(scope="module")
def jni_library(build) -> Path:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no javac/java on this machine (apt-get install openjdk-17-jdk-headless; scripts/test.sh does)")
    library = build / "android" / "libmalm_edge_jni.so"
    if not library.exists():
        cache = (build / "CMakeCache.txt").read_text()
        if "JAVA_INCLUDE_PATH:PATH=JAVA_INCLUDE_PATH-NOTFOUND" in cache or "JAVA_INCLUDE_PATH:" not in cache:
            pytest.skip("CMake found no jni.h (set JAVA_HOME to a JDK), so libmalm_edge_jni.so was not built")
        pytest.fail(f"CMake found jni.h but {library} was not built")
    return library


@pytest.fixture(scope="module")
def android_run(jni_library, shell_bundles, signed_bundle, photos, tmp_path_factory) -> dict:
    """Compile dev.malmedge (as Java 8, the floor Android's toolchains accept) and the driver, then
    run the driver once under -Xcheck:jni; every Android test reads this one run."""
    bundle, bad = shell_bundles
    work = tmp_path_factory.mktemp("android")
    classes = work / "classes"
    javac = subprocess.run(["javac", "--release", "8", "-Xlint:all", "-Xlint:-options", "-Werror", "-encoding",
                            "UTF-8", "-d", str(classes), *map(str, JAVA_SOURCES),
                            str(SHELL_TESTS / "MalmEdgeCheck.java")], capture_output=True, text=True, timeout=300)
    assert javac.returncode == 0, javac.stdout + javac.stderr
    job = [f"bundle {bundle}", f"bad_bundle {bad}", f"k {K}", f"signed_bundle {signed_bundle[0]}",
           f"key {signed_bundle[1]}"]
    job += [f"photo {raw} {width} {height}" for _, raw, width, height in photos]
    job += [f"text {query}" for query in TEXT_QUERIES]
    argb, width, height = _every_colour_and_alpha()
    (work / "argb.bin").write_bytes(argb.astype(">u4").tobytes())
    job += [f"argb {work / 'argb.bin'} {width} {height} {work / 'argb.rgb'}"]
    (work / "job.txt").write_text("\n".join(job) + "\n", encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LC_ALL": "C"}  # nothing may depend on the locale
    done = subprocess.run(["java", "-Xcheck:jni", "--enable-native-access=ALL-UNNAMED",  # JDK 24+ warns without
                           f"-Djava.library.path={jni_library.parent}", "-cp", str(classes),
                           "MalmEdgeCheck", str(work / "job.txt"), str(work / "out.json")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # -Xcheck:jni reports leaked local references, JNI calls with an exception pending, bad strings
    assert "WARNING" not in done.stdout + done.stderr and "FATAL" not in done.stdout + done.stderr, done.stderr
    result = json.loads((work / "out.json").read_text(encoding="utf-8"))
    result["argb_rgb8"] = np.frombuffer((work / "argb.rgb").read_bytes(), np.uint8).reshape(height, width, 3)
    return result


def _every_colour_and_alpha() -> tuple[np.ndarray, int, int]:
    """(256, 256) ARGB ints, Bitmap.getPixels style: every (channel value, alpha) pair in red, other
    values in green and blue."""
    value, alpha = np.meshgrid(np.arange(256, dtype=np.uint32), np.arange(256, dtype=np.uint32))
    argb = (alpha << 24) | (value << 16) | ((255 - value) << 8) | (value ^ 0x5A)
    return argb, 256, 256


def test_android_argb_to_rgb8_composites_like_edge_preprocess(android_run) -> None:
    """MalmEdge.rgb8FromArgb == edge/preprocess.py to_rgb (transparency on white), every pixel."""
    argb, _, _ = _every_colour_and_alpha()
    rgba = np.stack([(argb >> s) & 0xFF for s in (16, 8, 0, 24)], axis=-1).astype(np.uint8)
    expected = np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert np.array_equal(android_run["argb_rgb8"], expected)
    assert np.array_equal(expected[255], rgba[255, :, :3])  # opaque row copied as it is


def test_android_photo_search_matches_reference_and_cli(android_run, reference, build, shell_bundles,
                                                        photos) -> None:
    bundle, _ = shell_bundles
    assert android_run["table_rows"] == ROWS and android_run["encoder"] == "tiny_fp32_executorch"
    cli = run_cli(build, "search", *(str(photo) for photo, *_ in photos), "--bundle", str(bundle), "--json",
                  "--threads", "1")
    assert cli.returncode == 0, cli.stderr
    for mine, theirs, embedding, native in zip(android_run["photos"], reference["photos"], reference["embeddings"],
                                               json.loads(cli.stdout)):
        _same_hits(mine["by_photo"], theirs)
        assert mine["by_embedding"] == mine["by_photo"]
        assert [h["id"] for h in mine["by_photo"]] == [h["id"] for h in native["results"]]
        assert np.abs(np.array(mine["embedding"]) - embedding).max() < SCORE_TOLERANCE
        assert mine["by_photo"][0]["ingredients"][0].startswith("1 cup ")  # the catalog's JSON columns
        every = mine["all_rows"]
        assert sorted(h["row"] for h in every) == list(range(ROWS)) and every[:K] == mine["by_photo"]
        assert all(a["score"] >= b["score"] for a, b in zip(every, every[1:]))


def test_android_text_search_matches_reference(android_run, reference, build, shell_bundles) -> None:
    bundle, _ = shell_bundles
    for query, mine, theirs in zip(TEXT_QUERIES, android_run["text"], reference["text"]):
        cli = run_cli(build, "text", query, "--bundle", str(bundle), "--json", "--top-k", str(K))
        assert cli.returncode == 0, cli.stderr
        native = json.loads(cli.stdout)["results"]
        assert [(h["row"], h["id"], h["title"]) for h in mine] == [(h["row"], h["id"], h["title"]) for h in native]
        if query.isascii():  # non-ASCII word splitting differs from Python's \w (docs/native.md)
            assert [(h["row"], h["id"]) for h in mine] == [(h["row"], h["id"]) for h in theirs], query
    assert android_run["text"][0] and all(h["score"] == 0 for h in android_run["text"][0])


def test_android_bad_bundle_raises_the_c_message(android_run, shell_bundles) -> None:
    _, bad = shell_bundles
    with pytest.raises(BundleError) as caught:
        read_bundle(bad)
    assert str(bad / "table.i8") in str(caught.value)
    for attempt in android_run["bad_bundle"]:
        assert attempt["exception"] == "MalmEdgeException", attempt
        assert (attempt["code"], attempt["status"]) == (2, "BUNDLE")
        assert attempt["message"] == str(caught.value)  # edge/'s words, the path through JNI intact


def test_android_trusted_public_key(android_run, shell_bundles, signed_bundle) -> None:
    """Options.trustedPublicKey: the signed bundle opens and searches, the unsigned one is refused
    with SIGNATURE and edge/'s message; publicKeyId is edge/'s key id."""
    bundle, _ = shell_bundles
    _, key = signed_bundle
    assert android_run["key_id"] == trusted_key_record(key)["key_id"]
    assert android_run["signed"] == android_run["photos"][0]["by_photo"]
    with pytest.raises(BundleError) as caught:
        read_bundle(bundle, require_signature=key)
    opened, verified, missing_key = android_run["unsigned"]
    for attempt in (opened, verified):
        assert (attempt["exception"], attempt["code"], attempt["status"]) == ("MalmEdgeException", 9, "SIGNATURE")
        assert attempt["message"] == str(caught.value)
    assert missing_key["exception"] == "MalmEdgeException" and str(key) + ".absent" in missing_key["message"]


def test_android_closed_engine_gives_a_clear_exception(android_run) -> None:
    assert android_run["is_closed"] is True
    for attempt in android_run["closed"]:
        assert attempt["exception"] == "java.lang.IllegalStateException", attempt
        assert "closed" in attempt["message"]


def test_android_bad_arguments_raise_never_crash(android_run) -> None:
    expected = {  # case: (status, words in the message)
        "short-buffer": ("INVALID_ARGUMENT", "RGB8 image needs"),
        "null-rgb": ("INVALID_ARGUMENT", "NULL pixel buffer"),
        "zero-size": ("IMAGE", "empty image (0x0)"),
        "negative-width": ("IMAGE", "empty image"),
        "huge-width": ("INVALID_ARGUMENT", "RGB8 image needs"),
        "negative-k": ("INVALID_ARGUMENT", "k must be >= 0"),
        "wrong-dim": ("INVALID_ARGUMENT", f"query dim {EMBED_DIM + 1} != table dim {EMBED_DIM}"),
        "null-embedding": ("INVALID_ARGUMENT", "query or out_results is NULL"),
        "nan-embedding": ("ENCODER", "NaN"),
        "null-words": ("INVALID_ARGUMENT", "words or out_results is NULL"),
        "nul-in-words": ("INVALID_ARGUMENT", "words contains a NUL character"),
        "null-bundle": ("INVALID_ARGUMENT", "bundle_dir or out_engine is NULL"),
    }
    seen = {attempt["case"]: attempt for attempt in android_run["bad_arguments"]}
    assert set(seen) == set(expected)
    for case, (status, words) in expected.items():
        assert seen[case]["exception"] == "MalmEdgeException" and seen[case]["status"] == status, seen[case]
        assert words in seen[case]["message"], seen[case]
    assert android_run["after_errors"] == android_run["photos"][0]["by_photo"]
    no_encoder = android_run["no_encoder"]
    assert no_encoder["encoder"] == "" and no_encoder["errors"][0]["status"] == "UNSUPPORTED"
    assert "opened without an encoder" in no_encoder["errors"][0]["message"]


# ----------------------------------------------------------------------------------------- iOS


def _clang_modules(work: Path) -> None:
    """Skip unless clang builds and imports a module from a module map (-fmodules)."""
    if shutil.which("clang") is None:
        pytest.skip("no clang on this machine (apt-get install clang; scripts/test.sh does)")
    probe = work / "probe"
    probe.mkdir()
    (probe / "probe.h").write_text("int probe_value(void);\n")
    (probe / "module.modulemap").write_text('module Probe {\n  header "probe.h"\n  export *\n}\n')
    (probe / "use.m").write_text("@import Probe;\nint use(void) { return probe_value(); }\n")
    done = subprocess.run(["clang", "-fmodules", f"-fmodules-cache-path={probe / 'cache'}", "-I", str(probe), "-c",
                           str(probe / "use.m"), "-o", str(probe / "use.o")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"clang lacks module support (-fmodules with an Objective-C @import): {done.stderr.strip()}")


def test_ios_module_map_imports_links_and_searches(build, shell_bundles, photos, reference, tmp_path) -> None:
    """`@import MalmEdge;` resolves through include/module.modulemap alone, its `link` line reaches
    the object (clang's autolink record, what Xcode links from), and the program's top-k equals
    edge/'s on the same decoded photo."""
    _clang_modules(tmp_path)
    bundle, bad = shell_bundles
    cache, obj, program = tmp_path / "module-cache", tmp_path / "check.o", tmp_path / "ios_module_check"
    source = str(SHELL_TESTS / "ios_module_check.m")
    compile_args = ["clang", "-fmodules", f"-fmodules-cache-path={cache}", "-Wall", "-Wextra", "-Werror",
                    "-c", source, "-o", str(obj)]
    unresolved = subprocess.run(compile_args, capture_output=True, text=True)
    assert unresolved.returncode != 0 and "module 'MalmEdge' not found" in unresolved.stderr
    done = subprocess.run(compile_args[:1] + ["-I", str(INCLUDE_DIR)] + compile_args[1:], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert list(cache.rglob("MalmEdge-*.pcm")), "the MalmEdge module was not built"
    options = subprocess.run(["readelf", "-p", ".linker-options", str(obj)], capture_output=True, text=True)
    assert options.returncode == 0 and "malm_edge" in options.stdout, options.stdout + options.stderr
    link = subprocess.run(["clang", str(obj), "-o", str(program), f"-L{build}", "-lmalm_edge",
                           f"-Wl,-rpath,{build}"], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr
    photo, raw, width, height = photos[0]
    run = subprocess.run([str(program), str(bundle), str(raw), str(width), str(height), str(K), str(bad)],
                         capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr.decode("utf-8", "replace")
    lines = [line.split("\t") for line in run.stdout.decode("utf-8").splitlines()]
    expected = reference["photos"][0]
    assert [(int(row), rid) for row, _, rid in lines[:-1]] == [(h["row"], h["id"]) for h in expected]
    assert max(abs(float(line[1]) - h["score"]) for line, h in zip(lines, expected)) < SCORE_TOLERANCE
    with pytest.raises(BundleError) as caught:
        read_bundle(bad)
    assert lines[-1] == ["error", "2", str(caught.value)]
