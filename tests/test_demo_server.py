"""`malm-edge demo`'s server (edge/demo_server.py) over real HTTP, without a browser."""

from __future__ import annotations

import gzip
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from edge_bundle_fixture import get_bundle
from typer.testing import CliRunner

from malm_edge.cli import demo as demo_cli
from malm_edge.edge.bundle import BundleError
from malm_edge.edge.demo_server import APP_DIR, DemoError, make_server

REQUIRED_APP_FILES = ["index.html", "sw.js", "js/main.js", "vendor/ort/ort-wasm-simd-threaded.wasm",
                      "vendor/ort/ort.wasm.min.mjs", "vendor/sqlite/sqlite3.wasm",
                      "vendor/sqlite/sqlite3.mjs"]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory, targets=("onnx",))


@pytest.fixture(scope="module")
def served(bundle_dir: Path, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A copy of the bundle served on a free port, then given an extra file the manifest does not name."""
    copy = tmp_path_factory.mktemp("served") / "bundle"
    shutil.copytree(bundle_dir, copy)
    server = make_server(copy, "127.0.0.1", 0)
    (copy / "secret.txt").write_text("not in the manifest")  # after start-up: an unnamed file is refused before
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url, copy
    server.shutdown()
    server.server_close()


def fetch(url: str, headers: dict[str, str] | None = None):
    """(status, headers, body) of a GET; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_app_files_are_in_the_checkout() -> None:
    missing = [name for name in REQUIRED_APP_FILES if not (APP_DIR / name).is_file()]
    assert not missing, f"{APP_DIR}: missing {missing} (run `npm ci && npm run vendor` in mobile_demo/)"


def test_headers_and_mime_types(served) -> None:
    url, _ = served
    expected = {"": "text/html", "sw.js": "text/javascript", "app.webmanifest": "application/manifest+json",
                "vendor/ort/ort-wasm-simd-threaded.wasm": "application/wasm",
                "vendor/sqlite/sqlite3.mjs": "text/javascript", "bundle/manifest.json": "application/json"}
    for path, mime in expected.items():
        status, headers, _ = fetch(url + path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(mime), (path, headers["Content-Type"])
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        csp = headers["Content-Security-Policy"]
        for directive in ("default-src 'self'", "script-src 'self' 'wasm-unsafe-eval'", "connect-src 'self'",
                          "worker-src 'self' blob:", "style-src 'self'"):
            assert directive in csp


def test_serves_only_the_files_the_manifest_names(served) -> None:
    url, copy = served
    manifest = json.loads((copy / "manifest.json").read_text())
    for relative in (manifest["table"]["file"], manifest["table"]["scales_file"], manifest["catalog"]["file"],
                     manifest["encoders"][0]["file"]):
        status, _, body = fetch(f"{url}bundle/{relative}?v=abc")  # the app's cache-key query is ignored
        assert status == 200 and body == (copy / relative).read_bytes(), relative
    for path in ("bundle/secret.txt", "bundle/", "bundle/../manifest.json", "../pyproject.toml",
                 "bundle/%2e%2e/secret.txt", "nothing.js"):
        assert fetch(url + path)[0] == 404, path


def test_revalidation_and_gzip(served) -> None:
    url, _ = served
    wasm = APP_DIR / "vendor/sqlite/sqlite3.wasm"
    status, headers, body = fetch(url + "vendor/sqlite/sqlite3.wasm", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == wasm.read_bytes()
    status, _, _ = fetch(url + "vendor/sqlite/sqlite3.wasm", {"If-None-Match": headers["ETag"]})
    assert status == 304
    status, headers, body = fetch(url + "bundle/table.i8")
    assert status == 200 and "Content-Encoding" not in headers


def test_bundle_without_onnx_encoder_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoders"][0]["target"] = "executorch"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DemoError, match="no ONNX encoder"):
        make_server(copy, "127.0.0.1", 0)


def test_cli_reports_a_broken_bundle(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    (copy / "table.i8").write_bytes(b"\0" * (copy / "table.i8").stat().st_size)
    app = typer.Typer()
    app.command("demo")(demo_cli.demo)
    app.command("other")(lambda: None)  # two commands, so "demo" stays a subcommand
    result = CliRunner().invoke(app, ["demo", "--bundle", str(copy), "--port", "0"])
    assert result.exit_code == 1
    assert "table.i8" in result.output and "sha256" in result.output.lower()
    with pytest.raises(BundleError):
        make_server(copy, "127.0.0.1", 0)


def test_https_with_a_self_signed_certificate(bundle_dir: Path, tmp_path: Path) -> None:
    """--cert/--key: the documented openssl line makes a certificate the server accepts."""
    import shutil as _shutil
    import ssl
    import subprocess

    if _shutil.which("openssl") is None:
        pytest.skip("openssl is absent")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = make_server(bundle_dir, "127.0.0.1", 0, certfile=cert, keyfile=key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        url = server.url + "bundle/manifest.json"
        with urllib.request.urlopen(url, context=context, timeout=30) as response:
            assert response.status == 200
            assert json.loads(response.read())["format"] == "malm-edge-bundle"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        server.shutdown()
        server.server_close()
