"""Hardening (issue 17): the phone app's Ed25519 check (mobile_demo/app/js/signature.js) accepts what
edge/signing.py signs and rejects a changed manifest, run with Node's WebCrypto (no browser needed;
skipped without node). The demo server publishes the signature and the trusted key for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from edge_bundle_fixture import get_bundle

from malm_edge.edge.bundle import MANIFEST_FILE
from malm_edge.edge.demo_server import APP_DIR, make_server
from malm_edge.edge.signing import SIGNATURE_FILE, generate_keypair, sign_bundle, trusted_key_record

NODE = shutil.which("node")
SCRIPT = """
import { verifyManifest, checkManifestSignature } from %(module)s;
import fs from "node:fs";
const [manifestPath, sigPath, keyPath] = process.argv.slice(2);
const bytes = new Uint8Array(fs.readFileSync(manifestPath));
const record = JSON.parse(fs.readFileSync(sigPath, "utf8"));
const trusted = JSON.parse(fs.readFileSync(keyPath, "utf8"));
const out = { good: await verifyManifest(bytes, record, trusted.public_key) };
const changed = bytes.slice(); changed[changed.length - 2] ^= 1;
try { await verifyManifest(changed, record, trusted.public_key); out.changed = "accepted"; }
catch (err) { out.changed = err.message; }
try { await verifyManifest(bytes, null, trusted.public_key); out.unsigned = "accepted"; }
catch (err) { out.unsigned = err.message; }
globalThis.localStorage = undefined;
const files = { "bundle/trusted-key.json": trusted, "bundle/manifest.sig": record };
out.flow = await checkManifestSignature(bytes, async (url) => files[url] ?? null);
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_app_signature_check_matches_edge_signing(tmp_path_factory, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(get_bundle(tmp_path_factory, targets=("onnx",)), root)
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pem.pub")
    sign_bundle(root, tmp_path / "k.pem")
    (tmp_path / "trusted.json").write_text(json.dumps(trusted_key_record(tmp_path / "k.pem.pub")))
    script = tmp_path / "check.mjs"
    script.write_text(SCRIPT % {"module": json.dumps((APP_DIR / "js" / "signature.js").as_uri())})
    run = subprocess.run([NODE, str(script), str(root / MANIFEST_FILE), str(root / SIGNATURE_FILE),
                          str(tmp_path / "trusted.json")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["good"] == "verified"
    assert "signature does not match" in out["changed"]
    assert "manifest.sig: missing" in out["unsigned"]
    assert (
        out["flow"]["state"] == "verified"
        and out["flow"]["keyId"] == trusted_key_record(tmp_path / "k.pem.pub")["key_id"]
    )


def test_demo_publishes_signature_and_trusted_key(tmp_path_factory, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(get_bundle(tmp_path_factory, targets=("onnx",)), root)
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pem.pub")
    sign_bundle(root, tmp_path / "k.pem")
    server = make_server(root, "127.0.0.1", 0, require_signature=tmp_path / "k.pem.pub")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(server.url + "bundle/trusted-key.json", timeout=10) as response:
            assert json.loads(response.read()) == {"required": True, **trusted_key_record(tmp_path / "k.pem.pub")}
        with urllib.request.urlopen(server.url + "bundle/manifest.sig", timeout=10) as response:
            assert response.read() == (root / SIGNATURE_FILE).read_bytes()
        with urllib.request.urlopen(server.url + "js/signature.js", timeout=10) as response:
            assert b"verifyManifest" in response.read()
    finally:
        server.shutdown()
        server.server_close()
    unsigned = make_server(root, "127.0.0.1", 0)
    try:
        served = unsigned.routes["/bundle/trusted-key.json"]
        assert json.loads(served.read()) == {"required": False}
    finally:
        unsigned.server_close()
