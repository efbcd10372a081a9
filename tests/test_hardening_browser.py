"""Hardening (issue 17): the phone app checks a signed bundle's manifest with WebCrypto Ed25519 in
Chromium: verified when intact, refused when the manifest is changed in transit, and a clear
warning where the browser has no Ed25519."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_bundle_fixture import get_bundle
from test_mobile_demo import READY, TIMEOUT_MS, browser  # noqa: F401 - the Chromium fixture

from malm_edge.edge.demo_server import make_server
from malm_edge.edge.signing import generate_keypair, sign_bundle

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def signed_url(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("signed")
    root = folder / "bundle"
    shutil.copytree(get_bundle(tmp_path_factory, targets=("onnx",)), root)
    generate_keypair(folder / "k.pem", folder / "k.pem.pub")
    sign_bundle(root, folder / "k.pem")
    server = make_server(root, "127.0.0.1", 0, require_signature=folder / "k.pem.pub")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url, root
    server.shutdown()
    server.server_close()


def _load(browser, url: str, init_script: str | None = None, route=None) -> tuple[str, str, str]:  # noqa: F811
    context = browser.new_context()
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    if route:
        page.route("**/bundle/manifest.json*", route)
    page.goto(url)
    page.wait_for_function(READY, timeout=TIMEOUT_MS)
    state = page.evaluate("document.body.dataset.state")
    signature = page.evaluate("document.body.dataset.signature || ''")
    text = page.inner_text("body")
    context.close()
    return state, signature, text


def test_signed_bundle_is_verified_in_the_browser(browser, signed_url) -> None:  # noqa: F811
    state, signature, text = _load(browser, signed_url[0])
    assert (state, signature) == ("ready", "verified"), text
    assert "signature verified (key " in text


def test_a_manifest_changed_in_transit_is_refused(browser, signed_url) -> None:  # noqa: F811
    url, root = signed_url
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["provenance"] = {"note": "rewritten by a proxy"}

    def rewrite(route):
        route.fulfill(status=200, content_type="application/json", body=json.dumps(manifest))

    state, _, text = _load(browser, url, route=rewrite)
    assert state == "error" and "signature does not match" in text, text


def test_a_browser_without_ed25519_gets_a_clear_warning(browser, signed_url) -> None:  # noqa: F811
    no_ed25519 = """
      const importKey = crypto.subtle.importKey.bind(crypto.subtle);
      crypto.subtle.importKey = (format, data, algorithm, ...rest) =>
        (algorithm && algorithm.name === "Ed25519")
          ? Promise.reject(new DOMException("Ed25519 is not supported", "NotSupportedError"))
          : importKey(format, data, algorithm, ...rest);
    """
    state, signature, text = _load(browser, signed_url[0], init_script=no_ed25519)
    assert (state, signature) == ("ready", "unsupported"), text
    assert "cannot check Ed25519 signatures" in text
