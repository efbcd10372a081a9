"""Optional Ed25519 signatures of bundle manifests: who built this bundle, not only is it intact.

Checksums catch corruption, but whoever can rewrite the table can rewrite its sha256 in the
manifest. A signature closes that: the manifest names every file of the bundle with its sha256
(an unnamed file is an error, edge/bundle.py), and `manifest.sig` signs the exact bytes of
`manifest.json` with the builder's Ed25519 key. A reader given the trusted public key
(`--require-signature PUBKEY`) checks the signature over the bytes it then parses, so no file of a
signed bundle can change without the key.

`manifest.sig` is a small JSON file::

    {"format": "malm-edge-signature", "version": 1, "algorithm": "Ed25519",
     "key_id": "<first 16 hex of sha256(raw public key)>", "public_key": "<raw 32 bytes, base64>",
     "signature": "<64 bytes over manifest.json's bytes, base64>"}

`public_key` and `key_id` only help a person see which key signed; verification always uses the
key the reader trusts. Keys are PEM files: PKCS#8 private key (written 0600), SubjectPublicKeyInfo
public key. The phone app (mobile_demo) verifies the same file with WebCrypto's Ed25519.

The `cryptography` package (extra `malm-edge[sign]`) is imported only when signing or verifying.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from malm_edge.edge.bundle import MANIFEST_FILE, BundleError
from malm_edge.edge.safe_json import JsonFileError, loads

SIGNATURE_FILE = "manifest.sig"
SIGNATURE_FORMAT = "malm-edge-signature"
SIGNATURE_VERSION = 1
_INSTALL_HINT = "signing needs the cryptography package: pip install 'malm-edge[sign]'"


class SignatureError(BundleError):
    """A bundle's signature is missing, malformed, by another key or does not match the manifest."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as err:
        raise SignatureError(_INSTALL_HINT) from err
    return serialization, ed25519


def key_id(raw_public_key: bytes) -> str:
    """Short, stable name of a public key: the first 16 hex digits of sha256 of its 32 raw bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()[:16]


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike,
                     overwrite: bool = False) -> str:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only).

    Returns:
        The key id.
    """
    serialization, ed25519 = _crypto()
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise SignatureError(f"{path}: already exists (pass --overwrite to replace it)")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(_raw_public(key.public_key()))


def _raw_public(public_key: Any) -> bytes:
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_private_key(path: str | os.PathLike) -> Any:
    """An Ed25519 private key from a PEM file."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not a readable unencrypted PEM private key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key (make one with `malm-edge keygen`)")
    return key


def load_public_key(path: str | os.PathLike) -> Any:
    """An Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not a readable PEM public key ({err})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key (make one with `malm-edge keygen`)")
    return key


def trusted_key_record(public_key_path: str | os.PathLike) -> dict[str, str]:
    """{"key_id", "public_key" (raw 32 bytes, base64)}: what the demo publishes in trusted-key.json."""
    raw = _raw_public(load_public_key(public_key_path))
    return {"key_id": key_id(raw), "public_key": base64.b64encode(raw).decode()}


def sign_bundle(bundle_dir: str | os.PathLike, private_key_path: str | os.PathLike) -> Path:
    """Sign a bundle's `manifest.json` (validated first, checksums included); writes `manifest.sig`.

    Returns:
        The signature file's path.
    """
    from malm_edge.edge.bundle import read_bundle

    root = Path(bundle_dir)
    key = load_private_key(private_key_path)
    read_bundle(root)  # never sign a bundle a reader would refuse
    data = (root / MANIFEST_FILE).read_bytes()
    raw_public = _raw_public(key.public_key())
    record = {"format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": "Ed25519",
              "key_id": key_id(raw_public), "public_key": base64.b64encode(raw_public).decode(),
              "signature": base64.b64encode(key.sign(data)).decode()}
    target = root / SIGNATURE_FILE
    temp = root / f".{SIGNATURE_FILE}.tmp"
    temp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, target)
    return target


def _read_signature(path: Path) -> tuple[bytes, str]:
    """(64 signature bytes, key id) from `manifest.sig`."""
    if path.is_symlink() or not path.is_file():
        raise SignatureError(f"{path}: missing; the bundle is not signed (sign it with `malm-edge sign` or "
                             "`malm-edge convert --sign KEY`)")
    try:
        record = loads(path.read_bytes()[: 1 << 16], path)
    except JsonFileError as err:
        raise SignatureError(f"{path}: not a signature file ({str(err).split(': ', 1)[-1]})") from None
    if not isinstance(record, dict) or record.get("format") != SIGNATURE_FORMAT:
        raise SignatureError(f"{path}: not a {SIGNATURE_FORMAT} file")
    if record.get("version") != SIGNATURE_VERSION or record.get("algorithm") != "Ed25519":
        raise SignatureError(f"{path}: unsupported signature version/algorithm "
                             f"({record.get('version')!r}, {record.get('algorithm')!r}; this reader: 1, Ed25519)")
    try:
        signature = base64.b64decode(str(record.get("signature", "")), validate=True)
    except ValueError:
        signature = b""
    if len(signature) != 64:
        raise SignatureError(f"{path}: 'signature' is not 64 base64-encoded bytes")
    return signature, str(record.get("key_id", "?"))


def verify_manifest_bytes(bundle_dir: Path, manifest_bytes: bytes, public_key_path: str | os.PathLike) -> str:
    """Check `manifest.sig` over these exact manifest bytes with the trusted key; returns the key id.

    Raises:
        SignatureError: no or malformed signature, signed by another key, or not over these bytes.
    """
    key = load_public_key(public_key_path)
    trusted = key_id(_raw_public(key))
    signature, signed_by = _read_signature(Path(bundle_dir) / SIGNATURE_FILE)
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, manifest_bytes)
    except InvalidSignature:
        if signed_by != trusted:
            raise SignatureError(f"{Path(bundle_dir) / SIGNATURE_FILE}: signed by key {signed_by}, not by the "
                                 f"trusted key {trusted} ({public_key_path})") from None
        raise SignatureError(f"{Path(bundle_dir) / MANIFEST_FILE}: the signature does not match the manifest "
                             f"(key {trusted}); the manifest was changed after signing") from None
    return trusted
