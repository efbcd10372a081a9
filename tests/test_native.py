"""The native core (edge/native): parity with edge/ on real photos, bad bundles and bad images.

Parity: `malm-edge-native search --json` top-5 ids equal `malm-edge search --json` (ONNX and
ExecuTorch backends) in the same order, scores within 1e-3, on >= 20 real photos plus an
EXIF-rotated JPEG and a transparent PNG; the native PIL-exact bicubic resize + crop equals
edge/preprocess.py on the same decoded pixels (max difference measured, at most one 8-bit level).
The int8 `encoder_int8.pte` (the converters' PT2E export, calibrated on other real photos) gets the
same top-5 check against the Python ExecuTorch runtime, and on the same input tensor the native and
Python runtimes give the same embedding (INT8_EMBEDDING_TOLERANCE, measured: exact).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATASETS
from edge_bundle_fixture import EMBED_DIM, INPUT_SIZE, ONNX_FILE, PTE_FILE, PTE_INT8_FILE, RESIZE_SIZE, ROWS, get_bundle
from native_build import NativeLib, OpenOptions, native_dir, run_cli
from PIL import Image

from malm_edge.edge.bundle import MANIFEST_FILE, BundleError, read_bundle
from malm_edge.edge.preprocess import center_crop, load_rgb, preprocess_image, resize_shorter_side
from malm_edge.edge.retriever import Retriever

BUNDLE_FILES = [ONNX_FILE, PTE_FILE, "table.i8", "table.scales.f32", "catalog.sqlite", MANIFEST_FILE]
SCORE_TOLERANCE = 1e-3
INT8_ENCODER = "tiny_int8_executorch"
INT8_EMBEDDING_TOLERANCE = 1e-6  # same .pte, same XNNPACK kernels, same input: equal to float rounding


@pytest.fixture(scope="module")
def build() -> Path:
    return native_dir("release")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory)


@pytest.fixture
def bundle(bundle_dir, tmp_path) -> Path:
    """A fresh copy of the session's bundle, free to tamper with."""
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def parity_photos(extra_dir: Path) -> list[Path]:
    """6 phone photos, 14 Recipe1M val photos, 4 Epicurious photos, plus an EXIF-rotated JPEG and
    a transparent PNG made from them (orientation and alpha handling)."""
    root = SHARED_DATASETS
    if not (root / "photos").exists():
        pytest.skip(f"{root} is absent (../shared/datasets is not beside the checkout)")
    photos = sorted((root / "photos" / "inversecooking").glob("*.jpg"))[:6]
    photos += sorted((root / "photos" / "recipe1m_val").glob("*.jpg"))[:14]
    photos += sorted((root / "epicurious" / "Food Images").glob("*.jpg"))[:4]
    extra_dir.mkdir(parents=True, exist_ok=True)
    base = Image.open(photos[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    base.save(extra_dir / "rotated.jpg", exif=exif.tobytes(), quality=90)
    rgba = Image.open(photos[1]).convert("RGBA").resize((160, 120))
    alpha = np.tile(np.linspace(0, 255, 160, dtype=np.uint8), (120, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(extra_dir / "alpha.png")
    return photos + [extra_dir / "rotated.jpg", extra_dir / "alpha.png"]


def python_search(photos: list[Path], bundle: Path, backend: str) -> list[dict]:
    """`malm-edge search PHOTO... --bundle B --json --backend X` (the reference CLI)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "malm_edge", "search", *map(str, photos), "--bundle",
                           str(bundle), "--json", "--backend", backend, "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def native_results(build, bundle_dir, tmp_path_factory) -> tuple[list[Path], list[dict]]:
    photos = parity_photos(tmp_path_factory.mktemp("photos"))
    done = run_cli(build, "search", *map(str, photos), "--bundle", str(bundle_dir), "--json",
                   "--threads", "1")
    assert done.returncode == 0, done.stderr
    return photos, json.loads(done.stdout)


def test_unit_tests_pass(build) -> None:
    done = subprocess.run(["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("backend", ["onnx", "executorch"])
def test_top5_matches_malm_edge_search(native_results, bundle_dir, backend) -> None:
    photos, native = native_results
    assert len(photos) >= 20
    reference = python_search(photos, bundle_dir, backend)
    assert [r["photo"] for r in native] == [r["photo"] for r in reference] == [str(p) for p in photos]
    worst = 0.0
    for mine, theirs in zip(native, reference):
        assert set(mine) == set(theirs) - {"error"} | {"results"} and mine["bundle"] == theirs["bundle"]
        assert [h["id"] for h in mine["results"]] == [h["id"] for h in theirs["results"]], mine["photo"]
        assert [h["rank"] for h in mine["results"]] == [1, 2, 3, 4, 5]
        assert [h["title"] for h in mine["results"]] == [h["title"] for h in theirs["results"]]
        gaps = [abs(a["score"] - b["score"]) for a, b in zip(mine["results"], theirs["results"])]
        worst = max(worst, *gaps)
    assert worst < SCORE_TOLERANCE
    print(f"native vs malm-edge search ({backend}): max score difference {worst:.2e} "
          f"over {len(photos)} photos")


@pytest.fixture(scope="module")
def int8_bundle_dir(tmp_path_factory) -> Path:
    """The tiny encoder as int8 .pte (first, the one apps pick) and fp32 .pte."""
    return get_bundle(tmp_path_factory, targets=("executorch_int8", "executorch"))


def test_int8_pte_top5_matches_the_python_executorch_runtime(build, int8_bundle_dir, native_results) -> None:
    photos, _ = native_results
    bundle = read_bundle(int8_bundle_dir)
    first = bundle.manifest.encoders[0]
    assert (first.file, first.quantization) == (PTE_INT8_FILE, "int8")
    done = run_cli(build, "search", *map(str, photos), "--bundle", str(int8_bundle_dir), "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    native = json.loads(done.stdout)
    reference = python_search(photos, int8_bundle_dir, "executorch")
    assert {r["encoder"] for r in native} == {r["encoder"] for r in reference} == {INT8_ENCODER}
    worst = 0.0
    for mine, theirs in zip(native, reference, strict=True):
        assert [h["id"] for h in mine["results"]] == [h["id"] for h in theirs["results"]], mine["photo"]
        worst = max(worst, *(abs(a["score"] - b["score"]) for a, b in zip(mine["results"], theirs["results"])))
    assert worst < SCORE_TOLERANCE
    print(f"native vs malm-edge search (int8 .pte): max score difference {worst:.2e} over {len(photos)} photos")


def test_int8_pte_embedding_equals_the_python_runtime_on_the_same_input(build, int8_bundle_dir,
                                                                        native_results) -> None:
    """The encoder alone: native malm_embed_rgb8 vs ExecuTorch's Python runtime on the native tensor."""
    from malm_edge.converters.executorch_runtime import ExecuTorchBackend

    lib = NativeLib(build)
    u8p, f32p = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(ctypes.c_float)
    lib.lib.malm_embed_rgb8.argtypes = [ctypes.c_void_p, u8p, ctypes.c_int, ctypes.c_int, ctypes.c_int, f32p,
                                        ctypes.c_size_t]
    engine = ctypes.c_void_p()
    options = OpenOptions(1, 1, 1, INT8_ENCODER.encode())
    assert lib.lib.malm_open(str(int8_bundle_dir).encode(), ctypes.byref(options), ctypes.byref(engine)) == 0, \
        lib.last_error()
    python_runtime = ExecuTorchBackend(int8_bundle_dir / PTE_INT8_FILE, threads=1)
    photos, _ = native_results
    worst, fp32_gap = 0.0, 0.0
    try:
        for photo in photos:
            rgb = _rgb_array(photo)
            args = (rgb.ctypes.data_as(u8p), rgb.shape[1], rgb.shape[0], rgb.shape[1] * 3)
            pixels = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
            assert lib.lib.malm_preprocess_rgb8(engine, *args, pixels.ctypes.data_as(f32p), pixels.size) == 0
            native = np.zeros(EMBED_DIM, np.float32)
            assert lib.lib.malm_embed_rgb8(engine, *args, native.ctypes.data_as(f32p), native.size) == 0, \
                lib.last_error()
            expected = python_runtime.embed(pixels)[0]
            worst = max(worst, float(np.abs(native - expected).max()))
            fp32_gap = max(fp32_gap, float(np.abs(native - _fp32_embedding(int8_bundle_dir, pixels)).max()))
    finally:
        lib.lib.malm_close(engine)
    print(f"int8 .pte, native vs Python runtime on the same input: max |difference| {worst:.2e} "
          f"(int8 vs fp32 .pte: {fp32_gap:.2e})")
    assert worst <= INT8_EMBEDDING_TOLERANCE
    assert fp32_gap > 1e-4  # the int8 program really is a different (quantized) one


_FP32_RUNTIME: dict[Path, object] = {}


def _fp32_embedding(bundle: Path, pixels: np.ndarray) -> np.ndarray:
    from malm_edge.converters.executorch_runtime import ExecuTorchBackend

    if bundle not in _FP32_RUNTIME:
        _FP32_RUNTIME[bundle] = ExecuTorchBackend(bundle / PTE_FILE, threads=1)
    return _FP32_RUNTIME[bundle].embed(pixels)[0]


def _rgb_array(photo: Path) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(load_rgb(photo), dtype=np.uint8))  # (H, W, 3)


def _native_crop(lib: NativeLib, rgb: np.ndarray, resize: int, size: int) -> np.ndarray:
    out = np.zeros((size, size, 3), np.uint8)
    u8p = ctypes.POINTER(ctypes.c_uint8)
    status = lib.lib.malm_resize_crop_rgb8(rgb.ctypes.data_as(u8p), rgb.shape[1], rgb.shape[0],
                                           rgb.shape[1] * 3, resize, size, out.ctypes.data_as(u8p))
    assert status == 0, lib.last_error()
    return out


@pytest.mark.parametrize("resize, size", [(RESIZE_SIZE, INPUT_SIZE), (224, 224), (256, 224), (600, 512)])
def test_bicubic_resize_and_crop_match_pil(build, native_results, resize, size) -> None:
    """Same decoded pixels in; native PIL-exact BICUBIC + centre crop vs edge/preprocess.py."""
    lib = NativeLib(build)
    photos, _ = native_results
    worst = 0
    for photo in photos:
        rgb = _rgb_array(photo)
        expected = np.asarray(center_crop(resize_shorter_side(Image.fromarray(rgb), resize), size))
        diff = np.abs(_native_crop(lib, rgb, resize, size).astype(int) - expected.astype(int))
        worst = max(worst, int(diff.max()))
    print(f"bicubic {resize}->{size}: max difference {worst} levels over {len(photos)} photos")
    assert worst <= 1


def test_bicubic_upsampling_and_odd_shapes_match_pil(build) -> None:
    lib = NativeLib(build)
    rng = np.random.default_rng(0)
    for width, height in [(1, 1), (3, 50), (50, 3), (17, 13), (31, 32), (500, 7)]:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        expected = np.asarray(center_crop(resize_shorter_side(Image.fromarray(rgb), 36), 32))
        assert np.abs(_native_crop(lib, rgb, 36, 32).astype(int) - expected.astype(int)).max() <= 1


def test_normalized_tensor_matches_preprocess_image(build, bundle_dir, native_results) -> None:
    """The whole float32 NCHW input, within one 8-bit level (1/255/std) of edge/preprocess.py."""
    lib = NativeLib(build)
    engine = ctypes.c_void_p()
    options = OpenOptions(1, 0, 0, None)
    assert lib.lib.malm_open(str(bundle_dir).encode(), ctypes.byref(options), ctypes.byref(engine)) == 0
    try:
        pre = read_bundle(bundle_dir).manifest.preprocessing
        photos, _ = native_results
        level = (1 / 255) / min(pre.std)
        for photo in photos[:8]:
            rgb = _rgb_array(photo)
            out = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
            status = lib.lib.malm_preprocess_rgb8(
                engine, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), rgb.shape[1], rgb.shape[0],
                rgb.shape[1] * 3, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out.size)
            assert status == 0, lib.last_error()
            assert np.abs(out - preprocess_image(photo, pre)).max() <= level + 1e-6
    finally:
        lib.lib.malm_close(engine)


def test_text_search_matches_retriever(build, bundle_dir) -> None:
    with Retriever(bundle_dir, backend="onnx") as retriever:
        for query in ["chicken", "curry chicken", "Lemon, basil!", "garlic rice dish", "zzz", "  "]:
            done = run_cli(build, "text", query, "--bundle", str(bundle_dir), "--json", "--top-k", "7")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["results"] == retriever.search_text(query, 7), query


# ------------------------------------------------------------------------------- bad bundles


def _edit(bundle: Path, change) -> None:
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _flip(name: str):
    def tamper(bundle: Path) -> None:
        data = bytearray((bundle / name).read_bytes())
        data[len(data) // 2] ^= 0x01
        (bundle / name).write_bytes(bytes(data))
    return tamper


def _truncate(name: str):
    def tamper(bundle: Path) -> None:
        data = (bundle / name).read_bytes()
        (bundle / name).write_bytes(data[: len(data) // 2])
    return tamper


def _remove(name: str):
    return lambda bundle: (bundle / name).unlink()


TAMPERINGS = {
    **{f"flip-{name}": (_flip(name), name) for name in BUNDLE_FILES if name != MANIFEST_FILE},
    **{f"truncate-{name}": (_truncate(name), name) for name in BUNDLE_FILES},
    **{f"missing-{name}": (_remove(name), name) for name in BUNDLE_FILES},
    "wrong-version": (lambda b: _edit(b, lambda d: d.update(version=2)), MANIFEST_FILE),
    "wrong-format": (lambda b: _edit(b, lambda d: d.update(format="x")), MANIFEST_FILE),
    "encoder-dim": (lambda b: _edit(b, lambda d: d["encoders"][1]["output"].update(shape=[1, EMBED_DIM + 1])),
                    PTE_FILE),
    "table-dim": (lambda b: _edit(b, lambda d: d["table"].update(dim=EMBED_DIM * 2)), "table.i8"),
    "rows": (lambda b: _edit(b, lambda d: (d["table"].update(rows=ROWS + 1), d["catalog"].update(count=ROWS + 1))),
             "table.i8"),
    "catalog-count": (lambda b: _edit(b, lambda d: d["catalog"].update(count=ROWS - 1)), "catalog.sqlite"),
    "input-shape": (lambda b: _edit(b, lambda d: d["preprocessing"].update(input_size=24, resize_size=24)),
                    ONNX_FILE),
    "missing-field": (lambda b: _edit(b, lambda d: d["encoders"][0].pop("sha256")), MANIFEST_FILE),
    "field-type": (lambda b: _edit(b, lambda d: d.update(embedding_dim="16")), MANIFEST_FILE),
    "table-dtype": (lambda b: _edit(b, lambda d: d["table"].update(dtype="int4")), MANIFEST_FILE),
    "interpolation": (lambda b: _edit(b, lambda d: d["preprocessing"].update(interpolation="nearest")),
                      MANIFEST_FILE),
    "target": (lambda b: _edit(b, lambda d: d["encoders"][1].update(target="tflite")), MANIFEST_FILE),
    "pixel-input": (lambda b: _edit(b, lambda d: d["encoders"][0].update(pixel_input="bgr")), MANIFEST_FILE),
    "duplicate-names": (lambda b: _edit(b, lambda d: d["encoders"].append(dict(d["encoders"][0]))), MANIFEST_FILE),
    "no-encoders": (lambda b: _edit(b, lambda d: d.update(encoders=[])), MANIFEST_FILE),
    "outside-path": (lambda b: _edit(b, lambda d: d["encoders"][0].update(file="../outside.onnx")), MANIFEST_FILE),
    "absolute-path": (lambda b: _edit(b, lambda d: d["table"].update(file="/etc/passwd")), MANIFEST_FILE),
    "unexpected-file": (lambda b: (b / "notes.txt").write_text("not in the manifest"), "notes.txt"),
    "unexpected-nested-file": (lambda b: ((b / "notes").mkdir(), (b / "notes" / "a.md").write_text("x")),
                               "notes/a.md"),
    "unexpected-hidden-file": (lambda b: (b / ".table.i8.tmp").write_bytes(b"x"), ".table.i8.tmp"),
    "manifest-symlink": (lambda b: _link_to_copy(b, MANIFEST_FILE), MANIFEST_FILE),
    "table-symlink": (lambda b: _link_to_copy(b, "table.i8"), "table.i8"),
}


def _link_to_copy(bundle: Path, name: str) -> None:
    """Replace a bundle file by a link to an identical copy outside the bundle (checksums still pass)."""
    outside = bundle.parent / f"outside-{name}"
    shutil.move(bundle / name, outside)
    (bundle / name).symlink_to(outside)


@pytest.mark.parametrize("case", sorted(TAMPERINGS))
def test_tampered_bundle_rejected_like_edge(build, bundle, case) -> None:
    """Every case edge/ rejects: the native CLI exits 1 with the same message, naming the file."""
    tamper, named = TAMPERINGS[case]
    tamper(bundle)
    with pytest.raises(BundleError) as caught:
        read_bundle(bundle)
    done = run_cli(build, "verify", "--bundle", str(bundle))
    assert done.returncode == 1, done.stdout + done.stderr
    message = done.stderr.strip().removeprefix("error: ")
    assert str(bundle / named) in message
    if case != "truncate-manifest.json":  # Python's and nlohmann's JSON error texts differ
        assert message == str(caught.value)
    search = run_cli(build, "search", str(bundle / "x.jpg"), "--bundle", str(bundle), "--json")
    assert search.returncode == 1 and search.stdout == "" and str(bundle / named) in search.stderr


def test_a_linked_folder_on_the_way_is_rejected(build, bundle, tmp_path) -> None:
    """A folder of the bundle swapped for a link to one outside it (same bytes, so checksums pass):
    edge/ only refuses a link as the file itself; the native reader refuses any link on the path."""
    (bundle / "sub").mkdir()
    shutil.move(bundle / "table.i8", bundle / "sub" / "table.i8")
    _edit(bundle, lambda d: d["table"].update(file="sub/table.i8"))
    assert run_cli(build, "verify", "--bundle", str(bundle)).returncode == 0
    shutil.move(bundle / "sub", tmp_path / "outside-sub")
    (bundle / "sub").symlink_to(tmp_path / "outside-sub")
    done = run_cli(build, "verify", "--bundle", str(bundle))
    assert done.returncode == 1
    assert f"{bundle / 'sub'}: symbolic links are not allowed inside a bundle" in done.stderr


def test_deeply_nested_and_huge_manifests_fail_cleanly(build, bundle) -> None:
    (bundle / MANIFEST_FILE).write_text("[" * 200000 + "]" * 200000)
    done = run_cli(build, "verify", "--bundle", str(bundle))
    assert done.returncode == 1 and "nested deeper than" in done.stderr
    (bundle / MANIFEST_FILE).write_bytes(b"\xff\xfe{}")
    done = run_cli(build, "verify", "--bundle", str(bundle))
    assert done.returncode == 1 and "not valid JSON" in done.stderr


def test_missing_bundle_and_no_pte(build, bundle, tmp_path) -> None:
    done = run_cli(build, "verify", "--bundle", str(tmp_path / "nothing"))
    assert done.returncode == 1 and "is not a malm-edge bundle" in done.stderr
    done = run_cli(build, "search", "x.jpg", "--bundle", str(bundle), "--encoder", "tiny_fp32_onnx")
    assert done.returncode == 1 and "no executorch encoder 'tiny_fp32_onnx'" in done.stderr


# -------------------------------------------------------------------------------- bad images


def bad_images(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    png = folder / "good.png"
    Image.open(good).convert("RGB").resize((64, 48)).save(png)
    cases = {
        "zero-byte.jpg": b"",
        "truncated.jpg": data[: len(data) // 3],
        "header-only.jpg": data[:200],
        "corrupt.jpg": data[:600] + bytes(range(256)) * 40,
        "truncated.png": png.read_bytes()[:300],
        "corrupt.png": png.read_bytes()[:40] + b"\x00" * 500,
        "text.jpg": b"this is not an image\n" * 10,
        "garbage.bin": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    }
    for name, content in cases.items():
        (folder / name).write_bytes(content)
    return {name: folder / name for name in cases}


def test_bad_images_give_errors_never_crashes(build, bundle_dir, tmp_path) -> None:
    photo = sorted((SHARED_DATASETS / "photos" / "inversecooking").glob("*.jpg"))
    if not photo:
        pytest.skip("no real photos in ../shared/datasets")
    cases = bad_images(tmp_path / "bad", photo[0])
    paths = [str(p) for p in cases.values()] + [str(tmp_path / "absent.jpg"), str(photo[0])]
    done = run_cli(build, "search", *paths, "--bundle", str(bundle_dir), "--json")
    assert done.returncode == 1, done.stderr  # some photo failed; no signal, no sanitizer exit code
    outputs = json.loads(done.stdout)
    assert [o["photo"] for o in outputs] == paths
    for output in outputs[:-1]:
        assert output["results"] == [] and output["error"].startswith(output["photo"] + ": ")
        assert f"error: {output['error']}" in done.stderr
    assert "error" not in outputs[-1] and len(outputs[-1]["results"]) == 5
    single = run_cli(build, "search", str(cases["zero-byte.jpg"]), "--bundle", str(bundle_dir), "--json")
    assert single.returncode == 1 and single.stdout == "" and "zero-byte.jpg" in single.stderr
