"""edge/bundle.py: manifest round trip and every tampering case rejected, naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from edge_bundle_fixture import EMBED_DIM, ONNX_FILE, PTE_FILE, ROWS, get_bundle

from malm_edge.edge.bundle import (
    FORMAT_NAME,
    MANIFEST_FILE,
    BundleError,
    read_bundle,
    read_manifest,
    sha256_path,
    write_manifest,
)


@pytest.fixture
def bundle(tmp_path_factory, tmp_path) -> Path:
    """A fresh copy of the session's test bundle, free to tamper with."""
    return Path(shutil.copytree(get_bundle(tmp_path_factory), tmp_path / "bundle"))


def _edit(bundle: Path, change) -> None:
    path = bundle / MANIFEST_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_round_trip(bundle) -> None:
    loaded = read_bundle(bundle)
    manifest = loaded.manifest
    assert (manifest.format, manifest.version, manifest.embedding_dim) == (FORMAT_NAME, 1, EMBED_DIM)
    assert [e.target for e in manifest.encoders] == ["onnx", "executorch"]
    assert manifest.table.rows == manifest.catalog.count == ROWS
    assert loaded.table_path == bundle / "table.i8"
    write_manifest(bundle, manifest)  # rewrite from the dataclasses: identical content
    again = read_bundle(bundle).manifest
    assert again == manifest
    assert json.loads((bundle / MANIFEST_FILE).read_text())["preprocessing"]["resize"] == "shorter_side"


def test_directory_digest_is_deterministic_and_content_sensitive(tmp_path) -> None:
    package = tmp_path / "model.mlpackage"
    (package / "Data" / "weights").mkdir(parents=True)
    (package / "Manifest.json").write_text("{}")
    (package / "Data" / "weights" / "weight.bin").write_bytes(b"\x00\x01")
    first = sha256_path(package)
    (package / "Data" / "empty_dir").mkdir()
    assert sha256_path(package) == first  # empty folders and metadata do not count
    (package / "Data" / "weights" / "weight.bin").write_bytes(b"\x00\x02")
    assert sha256_path(package) != first
    (package / "Data" / "weights" / "weight.bin").write_bytes(b"\x00\x01")
    (package / "Data" / "weights" / "weight.bin").rename(package / "Data" / "weights" / "w2.bin")
    assert sha256_path(package) != first  # names count


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(version=2), "unknown bundle format version 2"),
        (lambda d: d.update(format="something-else"), "format is 'something-else'"),
        (lambda d: d.pop("table"), "missing field 'table'"),
        (lambda d: d["encoders"][0].pop("sha256"), "missing field 'encoders\\[0\\].sha256'"),
        (lambda d: d.update(embedding_dim="16"), "field 'embedding_dim' has type str"),
        (lambda d: d["table"].update(dtype="int4"), "table.dtype = 'int4'"),
        (lambda d: d["preprocessing"].update(interpolation="nearest"), "preprocessing.interpolation"),
        (lambda d: d["encoders"][1].update(target="tflite"), "target = 'tflite'"),
        (lambda d: d["encoders"][0].update(pixel_input="bgr"), "pixel_input = 'bgr'"),
        (lambda d: d["encoders"].append(dict(d["encoders"][0])), "encoder names are not unique"),
        (lambda d: d.update(encoders=[]), "'encoders' is empty"),
        (lambda d: d["encoders"][0].update(file="../outside.onnx"), "must be relative and inside"),
    ],
)
def test_edited_manifest_rejected_naming_the_manifest(bundle, change, message) -> None:
    _edit(bundle, change)
    with pytest.raises(BundleError, match=message) as caught:
        read_bundle(bundle)
    assert str(bundle / MANIFEST_FILE) in str(caught.value)


def test_invalid_json_and_missing_manifest(bundle, tmp_path) -> None:
    (bundle / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match=f"{MANIFEST_FILE}: not valid JSON"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="is not a malm-edge bundle"):
        read_bundle(tmp_path / "empty")


@pytest.mark.parametrize("name", [ONNX_FILE, PTE_FILE, "table.i8", "table.scales.f32", "catalog.sqlite"])
def test_missing_file_rejected_naming_it(bundle, name) -> None:
    (bundle / name).unlink()
    with pytest.raises(BundleError, match="missing") as caught:
        read_bundle(bundle)
    assert str(bundle / name) in str(caught.value)


@pytest.mark.parametrize("name", [ONNX_FILE, PTE_FILE, "table.i8", "table.scales.f32", "catalog.sqlite"])
def test_checksum_mismatch_rejected_naming_the_file(bundle, name) -> None:
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    (bundle / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch") as caught:
        read_bundle(bundle)
    assert str(bundle / name) in str(caught.value)
    read_bundle(bundle, verify_checksums=False)  # everything else still consistent


def test_dim_mismatch_between_encoder_table_and_manifest(bundle) -> None:
    _edit(bundle, lambda d: d["encoders"][1]["output"].update(shape=[1, EMBED_DIM + 1]))
    with pytest.raises(BundleError, match="output dim 17 != manifest embedding_dim 16") as caught:
        read_bundle(bundle)
    assert str(bundle / PTE_FILE) in str(caught.value)


def test_table_dim_mismatch(bundle) -> None:
    _edit(bundle, lambda d: d["table"].update(dim=EMBED_DIM * 2))
    with pytest.raises(BundleError, match="table dim 32 != manifest embedding_dim 16") as caught:
        read_bundle(bundle)
    assert str(bundle / "table.i8") in str(caught.value)


def test_rows_edited_in_manifest(bundle) -> None:
    _edit(bundle, lambda d: (d["table"].update(rows=ROWS + 1), d["catalog"].update(count=ROWS + 1)))
    with pytest.raises(BundleError, match=f"expected {(ROWS + 1) * EMBED_DIM} for {ROWS + 1} x 16") as caught:
        read_bundle(bundle)
    assert str(bundle / "table.i8") in str(caught.value)


def test_catalog_count_mismatch(bundle) -> None:
    _edit(bundle, lambda d: d["catalog"].update(count=ROWS - 1))
    with pytest.raises(BundleError, match=f"catalog count {ROWS - 1} != table rows {ROWS}") as caught:
        read_bundle(bundle)
    assert str(bundle / "catalog.sqlite") in str(caught.value)


def test_encoder_input_shape_must_match_preprocessing(bundle) -> None:
    _edit(bundle, lambda d: d["preprocessing"].update(input_size=24, resize_size=24))
    with pytest.raises(BundleError, match="does not match NCHW \\[N, 3, 24, 24\\]"):
        read_bundle(bundle)


def test_replaced_file_of_other_size_rejected(bundle) -> None:
    (bundle / "table.scales.f32").write_bytes(b"\x00" * 12)
    with pytest.raises(BundleError, match="table.scales.f32: 12 bytes, expected 800"):
        read_bundle(bundle)


def test_nothing_is_loaded_from_a_tampered_bundle(bundle, monkeypatch) -> None:
    """The retriever validates before it opens the table, the catalog or the encoder."""
    import malm_edge.edge.retriever as retriever_module

    touched = []
    for name in ("open_bundle_table", "select_backend", "Catalog"):
        monkeypatch.setattr(retriever_module, name, lambda *a, _n=name, **k: touched.append(_n))
    (bundle / "table.i8").write_bytes(b"\x7f" * (ROWS * EMBED_DIM))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        retriever_module.Retriever(bundle)
    assert touched == []


def test_writer_refuses_non_finite_metrics_and_invalid_entries(bundle) -> None:
    manifest = read_bundle(bundle).manifest
    before = (bundle / MANIFEST_FILE).read_text()
    manifest.provenance["metrics"] = {"r1": float("nan")}
    with pytest.raises(BundleError, match="non-finite"):
        write_manifest(bundle, manifest)
    manifest.provenance["metrics"] = {}
    manifest.encoders[0].target = "tflite"
    with pytest.raises(BundleError, match="target = 'tflite'"):
        write_manifest(bundle, manifest)
    assert (bundle / MANIFEST_FILE).read_text() == before  # nothing half-written
    assert not list(bundle.glob(".manifest.*"))
