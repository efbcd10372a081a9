"""The native core's signature check (edge/native/src/signature.cc) against edge/signing.py.

Each case is run through both readers: `read_bundle(root, require_signature=KEY)` and
`malm-edge-native verify --bundle B --require-signature KEY`. The native CLI must refuse exactly what
edge/ refuses, with the same message (or, where Python's and OpenSSL's or nlohmann's own texts
differ, the same message up to that detail), naming the same file, and accept what edge/ accepts.
Through the C API the refusals come back as MALM_ERR_SIGNATURE (signature problems) or
MALM_ERR_BUNDLE (the bundle itself), never as a crash.
"""

from __future__ import annotations

import base64
import ctypes
import json
import shutil
from pathlib import Path

import pytest
from edge_bundle_fixture import get_bundle
from native_build import NativeLib, OpenOptions, native_dir, run_cli

from malm_edge.edge.bundle import MANIFEST_FILE, BundleError, add_extra_files, read_bundle, sha256_path
from malm_edge.edge.signing import SIGNATURE_FILE, SignatureError, generate_keypair, key_id, sign_bundle

MALM_OK, MALM_ERR_BUNDLE, MALM_ERR_SIGNATURE = 0, 2, 9


@pytest.fixture(scope="module")
def build() -> Path:
    return native_dir("release")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "builder.pem", folder / "builder.pem.pub")
    generate_keypair(folder / "other.pem", folder / "other.pem.pub")
    return {"private": folder / "builder.pem", "public": folder / "builder.pem.pub",
            "other_private": folder / "other.pem", "other_public": folder / "other.pem.pub"}


@pytest.fixture
def signed(tmp_path_factory, tmp_path, keys) -> Path:
    """A fresh copy of the session's bundle (ONNX + ExecuTorch encoders), signed by the builder key."""
    root = Path(shutil.copytree(get_bundle(tmp_path_factory), tmp_path / "bundle"))
    sign_bundle(root, keys["private"])
    return root


def native_verify(build: Path, root: Path, key: Path | None) -> tuple[int, str]:
    """(exit code, message without the `error: ` prefix) of `malm-edge-native verify`."""
    args = ["verify", "--bundle", str(root)] + (["--require-signature", str(key)] if key else [])
    done = run_cli(build, *args)
    return done.returncode, (done.stderr.strip().removeprefix("error: ") or done.stdout.strip())


def python_error(root: Path, key: Path | None) -> BaseException | None:
    try:
        read_bundle(root, require_signature=key)
    except BundleError as error:
        return error
    return None


def _record(root: Path) -> dict:
    return json.loads((root / SIGNATURE_FILE).read_text())


def _write_record(root: Path, record: dict) -> None:
    (root / SIGNATURE_FILE).write_text(json.dumps(record))


def _flip_signature(root: Path, keys) -> None:
    record = _record(root)
    raw = bytearray(base64.b64decode(record["signature"]))
    raw[5] ^= 0x01
    _write_record(root, {**record, "signature": base64.b64encode(bytes(raw)).decode()})


def _rewrite_table_and_hash(root: Path, keys) -> None:
    """The attack checksums cannot see: a table row changed and its sha256 rewritten to match."""
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    table = root / manifest["table"]["file"]
    data = bytearray(table.read_bytes())
    data[10] ^= 0x7F
    table.write_bytes(bytes(data))
    manifest["table"]["sha256"] = sha256_path(table)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def _edit_manifest_whitespace(root: Path, keys) -> None:
    (root / MANIFEST_FILE).write_bytes((root / MANIFEST_FILE).read_bytes() + b"\n")


def _unsigned(root: Path, keys) -> None:
    (root / SIGNATURE_FILE).unlink()


def _signature_symlink(root: Path, keys) -> None:
    target = root.parent / "elsewhere.sig"
    shutil.move(root / SIGNATURE_FILE, target)
    (root / SIGNATURE_FILE).symlink_to(target)


def _signed_by_other(root: Path, keys) -> None:
    sign_bundle(root, keys["other_private"])


def _lying_key_id(root: Path, keys) -> None:
    """Signed by the other key but claiming the trusted key's id: the signature still decides."""
    sign_bundle(root, keys["other_private"])
    _write_record(root, {**_record(root), "key_id": key_id(_raw_public(keys["public"]))})


def _raw_public(path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(path.read_bytes())
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _field(**changes):
    def tamper(root: Path, keys) -> None:
        record = _record(root)
        for name, value in changes.items():
            if value is None:
                record.pop(name)
            else:
                record[name] = value
        _write_record(root, record)
    return tamper


def _text(text: str):
    return lambda root, keys: (root / SIGNATURE_FILE).write_text(text)


def _unexpected_file(root: Path, keys) -> None:
    (root / "notes.txt").write_text("not covered by the manifest")


# case -> (tamper, file the message names, exact: native message == Python's)
SIGNATURE_CASES = {
    "unsigned": (_unsigned, SIGNATURE_FILE, True),
    "signature-symlink": (_signature_symlink, SIGNATURE_FILE, True),
    "signed-by-another-key": (_signed_by_other, SIGNATURE_FILE, True),
    "lying-key-id": (_lying_key_id, MANIFEST_FILE, True),
    "flipped-signature-byte": (_flip_signature, MANIFEST_FILE, True),
    "rewritten-table-hash": (_rewrite_table_and_hash, MANIFEST_FILE, True),
    "manifest-one-byte-longer": (_edit_manifest_whitespace, MANIFEST_FILE, True),
    "short-signature": (_field(signature=base64.b64encode(b"x" * 63).decode()), SIGNATURE_FILE, True),
    "signature-not-base64": (_field(signature="!" * 88), SIGNATURE_FILE, True),
    "signature-missing": (_field(signature=None), SIGNATURE_FILE, True),
    "signature-a-number": (_field(signature=12), SIGNATURE_FILE, True),
    "algorithm-rsa": (_field(algorithm="RSA"), SIGNATURE_FILE, True),
    "version-2": (_field(version=2), SIGNATURE_FILE, True),
    "version-missing": (_field(version=None), SIGNATURE_FILE, True),
    "wrong-format": (_field(format="other"), SIGNATURE_FILE, True),
    "not-an-object": (_text("[1, 2]"), SIGNATURE_FILE, True),
    "deep-json": (_text("[" * 10_000), SIGNATURE_FILE, True),
    "malformed-json": (_text('{"format": '), SIGNATURE_FILE, False),  # Python's vs nlohmann's parser text
    "empty-file": (_text(""), SIGNATURE_FILE, False),
    "unexpected-file": (_unexpected_file, "notes.txt", True),
}


@pytest.mark.parametrize("case", sorted(SIGNATURE_CASES))
def test_signature_cases_match_edge(build, signed, keys, case) -> None:
    tamper, named, exact = SIGNATURE_CASES[case]
    tamper(signed, keys)
    expected = python_error(signed, keys["public"])
    assert expected is not None, "edge/ accepted it: not a tampering"
    code, message = native_verify(build, signed, keys["public"])
    assert code == 1, message
    assert str(signed / named) in message and str(signed / named) in str(expected)
    if exact:
        assert message == str(expected)
    else:
        assert message.split("(")[0] == str(expected).split("(")[0]  # "<file>: not a signature file "


def test_a_signed_bundle_verifies_and_searches_like_unsigned(build, signed, keys, tmp_path) -> None:
    code, message = native_verify(build, signed, keys["public"])
    assert code == 0 and message == f"{signed}: ok, signed by key {key_id(_raw_public(keys['public']))}"
    read_bundle(signed, require_signature=keys["public"])  # edge/ agrees
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    def search(*extra: str):
        return run_cli(build, "search", str(photo), "--bundle", str(signed), "--json", *extra)

    required, plain = search("--require-signature", str(keys["public"])), search()
    assert required.returncode == plain.returncode == 0, required.stderr
    assert json.loads(required.stdout)["results"] == json.loads(plain.stdout)["results"]
    text = run_cli(build, "text", "chicken", "--bundle", str(signed), "--require-signature", str(keys["public"]))
    assert text.returncode == 0, text.stderr


def test_unsigned_is_refused_only_when_required(build, signed, keys) -> None:
    (signed / SIGNATURE_FILE).unlink()
    assert native_verify(build, signed, None) == (0, f"{signed}: ok")
    code, message = native_verify(build, signed, keys["public"])
    assert code == 1 and message == f"{signed / SIGNATURE_FILE}: missing; the bundle is not signed (sign it " \
                                    "with `malm-edge sign` or `malm-edge convert --sign KEY`)"
    search = run_cli(build, "search", "x.jpg", "--bundle", str(signed), "--require-signature", str(keys["public"]))
    assert search.returncode == 1 and search.stdout == "" and "the bundle is not signed" in search.stderr


def test_a_rewritten_hash_passes_unsigned_and_fails_signed(build, signed, keys) -> None:
    """What a signature adds: checksums alone accept a table rewritten together with its sha256."""
    _rewrite_table_and_hash(signed, keys)
    assert native_verify(build, signed, None)[0] == 0
    code, message = native_verify(build, signed, keys["public"])
    assert code == 1 and message.endswith("the manifest was changed after signing")


def test_bad_trusted_keys_are_named(build, signed, keys, tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = tmp_path / "ec.pub"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    for key, exact in [(ec_key, True), (tmp_path / "absent.pub", True), (keys["private"], False), (garbage, False)]:
        with pytest.raises(SignatureError) as expected:
            read_bundle(signed, require_signature=key)
        code, message = native_verify(build, signed, key)
        assert code == 1 and message.startswith(f"{key}: ")
        if exact:
            assert message == str(expected.value)
        else:  # cryptography's and OpenSSL's own words differ inside the parentheses
            expected_head = f"{key}: not a readable PEM public key"
            assert message.split(" (")[0] == str(expected.value).split(" (")[0] == expected_head


def test_report_files_named_in_extra_files_are_covered(build, signed, keys) -> None:
    (signed / "report.md").write_text("# report\n")
    assert native_verify(build, signed, None) == (1, str(python_error(signed, None)))  # not named yet
    add_extra_files(signed, ["report.md"])  # removes the now stale signature
    assert native_verify(build, signed, None) == (0, f"{signed}: ok")
    sign_bundle(signed, keys["private"])
    assert native_verify(build, signed, keys["public"])[0] == 0
    (signed / "report.md").write_text("# edited\n")
    expected = python_error(signed, keys["public"])
    assert native_verify(build, signed, keys["public"]) == (1, str(expected))
    assert "report.md" in str(expected) and "sha256 mismatch for extra file 'report.md'" in str(expected)


def test_c_api_status_codes(build, signed, keys) -> None:
    lib = NativeLib(build)
    public, root = str(keys["public"]).encode(), str(signed).encode()
    assert lib.lib.malm_verify_bundle_signed(root, 1, public) == MALM_OK
    assert lib.lib.malm_verify_bundle_signed(root, 1, None) == MALM_OK
    key_text = ctypes.create_string_buffer(17)
    assert lib.lib.malm_public_key_id(public, key_text, 17) == MALM_OK
    assert key_text.value.decode() == key_id(_raw_public(keys["public"]))
    assert lib.lib.malm_public_key_id(public, key_text, 16) != MALM_OK  # no room for the NUL
    engine = ctypes.c_void_p()
    options = OpenOptions(1, 0, 0, None, public)
    assert lib.lib.malm_open(root, ctypes.byref(options), ctypes.byref(engine)) == MALM_OK, lib.last_error()
    lib.lib.malm_close(engine)
    _flip_signature(signed, keys)
    assert lib.lib.malm_verify_bundle_signed(root, 1, public) == MALM_ERR_SIGNATURE
    assert lib.last_error().endswith("the manifest was changed after signing")
    assert lib.lib.malm_open(root, ctypes.byref(options), ctypes.byref(engine)) == MALM_ERR_SIGNATURE
    assert not engine.value  # no engine on failure
    assert lib.lib.malm_verify_bundle_signed(root, 1, None) == MALM_OK  # not required: not checked
    (signed / "stray.bin").write_bytes(b"x")
    assert lib.lib.malm_verify_bundle_signed(root, 1, None) == MALM_ERR_BUNDLE
    assert lib.last_error().startswith(f"{signed / 'stray.bin'}: not named in manifest.json")
