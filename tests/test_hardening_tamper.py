"""Hardening (issue 17): the tamper suite. Every byte flip, truncation, manifest edit, symlink, swap
and unexpected file is rejected with the file named, for unsigned and signed bundles; a signed
bundle also rejects a file replaced together with its rewritten sha256."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from edge_bundle_fixture import get_bundle
from typer.testing import CliRunner

from malm_edge.cli.root import app
from malm_edge.edge.bundle import MANIFEST_FILE, BundleError, add_extra_files, read_bundle, sha256_path
from malm_edge.edge.signing import SIGNATURE_FILE, SignatureError, generate_keypair, sign_bundle


@pytest.fixture(scope="module")
def source_bundle(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory, targets=("onnx",))


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "builder.pem", folder / "builder.pem.pub")
    generate_keypair(folder / "other.pem", folder / "other.pem.pub")
    return {"private": folder / "builder.pem", "public": folder / "builder.pem.pub",
            "other_private": folder / "other.pem", "other_public": folder / "other.pem.pub"}


@pytest.fixture(params=["unsigned", "signed"])
def bundle(request, source_bundle: Path, keys: dict[str, Path], tmp_path: Path) -> tuple[Path, Path | None]:
    copy = tmp_path / "bundle"
    shutil.copytree(source_bundle, copy)
    if request.param == "signed":
        sign_bundle(copy, keys["private"])
        return copy, keys["public"]
    return copy, None


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_FILE).read_text())


def _files(root: Path) -> dict[str, str]:
    manifest = _manifest(root)
    files = {"encoder": manifest["encoders"][0]["file"], "table": manifest["table"]["file"],
             "catalog": manifest["catalog"]["file"]}
    if manifest["table"].get("scales_file"):
        files["scales"] = manifest["table"]["scales_file"]
    return files


def _rejects(root: Path, key: Path | None, named: str, error: type[Exception] = BundleError) -> str:
    with pytest.raises(error) as failure:
        read_bundle(root, require_signature=key)
    message = str(failure.value)
    assert named in message, message
    return message


def test_the_untouched_bundle_reads(bundle) -> None:
    root, key = bundle
    assert read_bundle(root, require_signature=key).root == root


@pytest.mark.parametrize("kind", ["encoder", "table", "scales", "catalog"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_byte_flip_is_rejected_naming_the_file(bundle, kind: str, where: str) -> None:
    root, key = bundle
    name = _files(root)[kind]
    data = bytearray((root / name).read_bytes())
    index = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[index] ^= 0x01
    (root / name).write_bytes(bytes(data))
    assert "sha256 mismatch" in _rejects(root, key, name)


@pytest.mark.parametrize("kind", ["encoder", "table", "scales", "catalog"])
@pytest.mark.parametrize("keep", [0, 1, 0.5])
def test_truncation_is_rejected_naming_the_file(bundle, kind: str, keep: float) -> None:
    root, key = bundle
    name = _files(root)[kind]
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[: int(len(data) * keep) if keep != 1 else len(data) - 1])
    _rejects(root, key, name)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m["table"].update(rows=m["table"]["rows"] + 1), "catalog"),  # "count 200 != table rows 201"
        (lambda m: m["table"].update(dim=m["table"]["dim"] * 2), "table"),
        (lambda m: m.update(embedding_dim=m["embedding_dim"] + 1), "table"),
        (lambda m: m["catalog"].update(count=m["catalog"]["count"] - 1), "catalog"),
        (lambda m: m["encoders"][0].update(size_bytes=m["encoders"][0]["size_bytes"] + 1), "encoder"),
        (lambda m: m["table"].update(sha256="0" * 64), "table"),
        (lambda m: m["encoders"][0].update(file="../outside.onnx"), MANIFEST_FILE),
        (lambda m: m["catalog"].update(file="/etc/passwd"), MANIFEST_FILE),
        (lambda m: m.update(version=2), MANIFEST_FILE),
        (lambda m: m.pop("table"), MANIFEST_FILE),
    ],
)
def test_manifest_edits_are_rejected(bundle, edit, named: str) -> None:
    root, key = bundle
    manifest = _manifest(root)
    edit(manifest)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    files = _files(root) if named != MANIFEST_FILE else {}
    if key is not None:  # signed: any edit breaks the signature first
        _rejects(root, key, MANIFEST_FILE, SignatureError)
    else:
        _rejects(root, key, files.get(named, named))


def test_a_rewritten_hash_passes_unsigned_and_fails_signed(source_bundle: Path, keys, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(source_bundle, root)
    sign_bundle(root, keys["private"])
    name = _files(root)["table"]
    data = bytearray((root / name).read_bytes())
    data[10] ^= 0x7F  # the attacker rewrites a table row ...
    (root / name).write_bytes(bytes(data))
    manifest = _manifest(root)
    manifest["table"]["sha256"] = sha256_path(root / name)  # ... and its hash in the manifest
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    read_bundle(root)  # checksums alone cannot see it
    message = _rejects(root, keys["public"], MANIFEST_FILE, SignatureError)
    assert "changed after signing" in message


@pytest.mark.parametrize("kind", ["encoder", "table", "catalog", "manifest"])
def test_symlinks_are_rejected_even_to_identical_bytes(bundle, kind: str, tmp_path: Path) -> None:
    root, key = bundle
    name = MANIFEST_FILE if kind == "manifest" else _files(root)[kind]
    outside = tmp_path / f"outside-{Path(name).name}"
    shutil.copy(root / name, outside)
    (root / name).unlink()
    (root / name).symlink_to(outside)
    assert "symbolic link" in _rejects(root, key, name)


def test_swapped_files_are_rejected(bundle) -> None:
    root, key = bundle
    files = _files(root)
    table, catalog = root / files["table"], root / files["catalog"]
    table_bytes, catalog_bytes = table.read_bytes(), catalog.read_bytes()
    table.write_bytes(catalog_bytes)
    catalog.write_bytes(table_bytes)
    _rejects(root, key, files["table"])


def test_a_file_from_another_bundle_is_rejected(bundle, tmp_path_factory) -> None:
    root, key = bundle
    other = get_bundle(tmp_path_factory, targets=("onnx", "executorch"))
    name = _files(root)["catalog"]
    shutil.copy(other / name, root / name)
    if sha256_path(other / name) != _manifest(root)["catalog"]["sha256"]:
        _rejects(root, key, name)


@pytest.mark.parametrize("extra", ["report.txt", "notes/readme.md", ".hidden", "encoder_fp32.onnx.data"])
def test_an_unexpected_file_is_an_error(bundle, extra: str) -> None:
    root, key = bundle
    (root / extra).parent.mkdir(parents=True, exist_ok=True)
    (root / extra).write_text("not covered by the manifest")
    assert "not named in manifest.json" in _rejects(root, key, extra)


def test_extra_files_named_in_the_manifest_are_covered(bundle, keys) -> None:
    root, key = bundle
    (root / "report.md").write_text("# report\n")
    removed = add_extra_files(root, ["report.md"])
    assert removed == (key is not None)  # the old signature no longer matches: removed
    read_bundle(root)
    if key is not None:
        sign_bundle(root, keys["private"])
    read_bundle(root, require_signature=key)
    (root / "report.md").write_text("# edited\n")
    _rejects(root, key, "report.md")


def test_signature_problems_are_named(source_bundle: Path, keys, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(source_bundle, root)
    _rejects(root, keys["public"], SIGNATURE_FILE, SignatureError)  # not signed
    sign_bundle(root, keys["other_private"])
    assert "not by the trusted key" in _rejects(root, keys["public"], SIGNATURE_FILE, SignatureError)
    sign_bundle(root, keys["private"])
    read_bundle(root, require_signature=keys["public"])
    record = json.loads((root / SIGNATURE_FILE).read_text())
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[5] ^= 0x01
    record["signature"] = base64.b64encode(bytes(raw)).decode()
    (root / SIGNATURE_FILE).write_text(json.dumps(record))
    _rejects(root, keys["public"], MANIFEST_FILE, SignatureError)
    (root / SIGNATURE_FILE).write_text("[" * 10_000)
    _rejects(root, keys["public"], SIGNATURE_FILE, SignatureError)
    (root / SIGNATURE_FILE).write_text('{"format": "malm-edge-signature", "version": 1, "algorithm": "RSA"}')
    assert "unsupported signature" in _rejects(root, keys["public"], SIGNATURE_FILE, SignatureError)
    with pytest.raises(SignatureError, match="not a readable PEM public key"):
        read_bundle(root, require_signature=keys["private"])


def test_cli_keygen_sign_and_require_signature(source_bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(source_bundle, root)
    runner = CliRunner()
    made = runner.invoke(app, ["keygen", "--out", str(tmp_path / "k.pem")])
    assert made.exit_code == 0 and (tmp_path / "k.pem.pub").is_file(), made.output
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0  # private key readable by its owner only
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    unsigned = runner.invoke(app, ["search", str(photo), "--bundle", str(root), "--require-signature",
                                   str(tmp_path / "k.pem.pub")])
    assert unsigned.exit_code == 1 and "not signed" in unsigned.output and "Traceback" not in unsigned.output
    signed = runner.invoke(app, ["sign", str(root), "--key", str(tmp_path / "k.pem")])
    assert signed.exit_code == 0, signed.output
    ok = runner.invoke(app, ["search", str(photo), "--bundle", str(root), "--require-signature",
                             str(tmp_path / "k.pem.pub"), "--json"])
    assert ok.exit_code == 0, ok.output
    (root / "extra.bin").write_bytes(b"x")
    refused = runner.invoke(app, ["sign", str(root), "--key", str(tmp_path / "k.pem")])
    assert refused.exit_code == 1 and "extra.bin: not named in manifest.json" in refused.output


def test_demo_serves_the_signature_and_refuses_unsigned(source_bundle: Path, keys, tmp_path: Path) -> None:
    from malm_edge.edge.demo_server import make_server

    root = tmp_path / "bundle"
    shutil.copytree(source_bundle, root)
    with pytest.raises(SignatureError):
        make_server(root, "127.0.0.1", 0, require_signature=keys["public"])
    sign_bundle(root, keys["private"])
    server = make_server(root, "127.0.0.1", 0, require_signature=keys["public"])
    try:
        assert f"/bundle/{SIGNATURE_FILE}" in server.routes
    finally:
        server.server_close()
