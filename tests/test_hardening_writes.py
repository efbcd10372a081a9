"""Hardening (issue 17, item 3): a full or read-only output is one clear line naming the path and the
cause, for every writer, and never corrupts what was there (last.json keeps pointing at the good
checkpoint). Root ignores chmod, so the failing write calls are monkeypatched to raise what a full
or read-only disk raises."""

from __future__ import annotations

import errno
import json
import sqlite3
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from typer.testing import CliRunner

from malm_edge.cli.root import app
from malm_edge.converters.errors import ConverterError
from malm_edge.edge import catalog as edge_catalog
from malm_edge.edge import write_errors
from malm_edge.edge.catalog import write_catalog
from malm_edge.edge.table import write_table
from malm_edge.edge.write_errors import OutputWriteError
from malm_edge.training.data import records
from malm_edge.training.data.canonical import DatasetError, write_dataset
from malm_edge.training.data.records import Recipe
from malm_edge.training.harness import checkpoint

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
EROFS = OSError(errno.EROFS, "Read-only file system")


def _save(root: Path, tag: str) -> Path:
    return checkpoint.save_checkpoint(root, {"w": torch.ones(2)}, {"step": 1}, {"step": 1}, tag=tag)


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize(
    ("target", "error", "cause"),
    [
        ("save_file", SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                      "message: \"No space left on device\" })"), "no space left on the device"),
        ("torch_save", RuntimeError("basic_ios::clear: iostream error"), "no space left on the device"),
        ("torch_save", EROFS, "read-only file system"),
    ],
)
def test_checkpoint_write_failure_is_one_line_and_last_stays_good(tmp_path: Path, monkeypatch, target, error,
                                                                   cause) -> None:
    root = tmp_path / "checkpoints"
    _save(root, "step-00000001")
    before = (root / "last.json").read_text()
    if target == "save_file":
        monkeypatch.setattr(checkpoint, "save_file", _raise(error))
    else:
        monkeypatch.setattr(checkpoint.torch, "save", _raise(error))
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(write_errors.shutil, "disk_usage", lambda p: usage(10, 10, 0))  # the disk is full
    with pytest.raises(checkpoint.CheckpointError) as failure:
        _save(root, "step-00000002")
    message = str(failure.value)
    assert message.startswith(f"{root / 'step-00000002'}: cannot write (") and cause in message
    assert "the last good checkpoint (step-00000001) is intact" in message
    assert "\n" not in message
    assert (root / "last.json").read_text() == before
    assert sorted(p.name for p in root.iterdir()) == ["last.json", "step-00000001"]  # no temp folder left


def test_table_catalog_and_manifest_writers_name_the_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("builtins.open", _raise(ENOSPC))
    with pytest.raises(OutputWriteError, match=r"table\.i8: cannot write \(no space left on the device\)"):
        write_table(tmp_path / "bundle", np.zeros((3, 4), np.float32))
    monkeypatch.undo()
    monkeypatch.setattr(edge_catalog.sqlite3, "connect", _raise(sqlite3.OperationalError("database or disk is full")))
    with pytest.raises(OutputWriteError, match=r"catalog\.sqlite: cannot write \(no space left on the device\)"):
        write_catalog(tmp_path / "bundle" / "catalog.sqlite", [])
    monkeypatch.undo()
    from malm_edge.edge import bundle as edge_bundle

    monkeypatch.setattr(edge_bundle.tempfile, "mkstemp", _raise(EROFS))
    monkeypatch.setattr(edge_bundle, "parse_manifest", lambda data, src: None)
    with pytest.raises(OutputWriteError, match=r"manifest\.json: cannot write \(read-only file system\)"):
        edge_bundle.write_manifest(tmp_path / "bundle", SimpleNamespace(to_dict=lambda: {"format": "x"}))


def test_index_shard_write_failure(tmp_path: Path, monkeypatch) -> None:
    from malm_edge.converters import index

    monkeypatch.setattr(index.tempfile, "mkstemp", _raise(ENOSPC))
    with pytest.raises(ConverterError, match=r"cannot write \(no space left on the device\); shards already written"):
        index.write_shard(tmp_path, 0, np.zeros((2, 4), np.float32), ["a", "b"])


def test_dataset_write_failure_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "ds"
    write_dataset(out, [Recipe("a", "Soup", ["water"], [], [], "train")], None)
    before = (out / "recipes.jsonl").read_text()
    monkeypatch.setattr(records.tempfile, "mkstemp", _raise(ENOSPC))
    with pytest.raises(DatasetError, match=r"recipes\.jsonl: cannot write \(no space left on the device\); "
                                           r"nothing was replaced"):
        write_dataset(out, [Recipe("b", "Stew", ["beef"], [], [], "train")], None)
    assert (out / "recipes.jsonl").read_text() == before


def test_import_command_on_a_read_only_output_is_one_line(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "r1m"
    root.mkdir()
    (root / "layer1.json").write_text(json.dumps([{"id": "a", "title": "Soup", "partition": "train",
                                                   "ingredients": [{"text": "water"}], "instructions": []}]))
    (root / "layer2.json").write_text("[]")
    monkeypatch.setattr(records.tempfile, "mkstemp", _raise(OSError(errno.EROFS, "Read-only file system",
                                                                   str(tmp_path / "out"))))
    result = CliRunner().invoke(app, ["data", "import", "recipe1m", str(root), "--out", str(tmp_path / "out"),
                                      "--json"])
    assert result.exit_code == 1
    assert "cannot write (read-only file system)" in result.output and "Traceback" not in result.output


def test_cli_fallback_turns_a_bare_write_oserror_into_one_line(capsys) -> None:
    import typer

    from malm_edge.cli._errors import run_or_exit

    with pytest.raises(typer.Exit):
        run_or_exit(_raise(OSError(errno.EROFS, "Read-only file system", "/runs/teacher/config.json")))
    assert capsys.readouterr().err == "error: /runs/teacher/config.json: cannot write (read-only file system)\n"
    with pytest.raises(KeyError):  # anything else is still a bug with a traceback
        run_or_exit(_raise(KeyError("x")))


# ------------------------------------------------------------------------- convert, per exporter
# A real full disk: the exporter's own temp file is opened on /dev/full, where every write fails
# with ENOSPC from the kernel. Read-only outputs raise EROFS where the file system would.

needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full on this machine")


def _tiny_encoder():
    from edge_bundle_fixture import INPUT_SIZE, tiny_encoder

    return tiny_encoder(), torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE)


def _mkstemp_on_dev_full(monkeypatch, module, out_dir: Path) -> None:
    """`module.tempfile.mkstemp` in `out_dir` hands back a descriptor of /dev/full (others unchanged)."""
    import os
    import tempfile

    real = tempfile.mkstemp

    def full_disk(*args, **kwargs):
        if Path(kwargs.get("dir") or ".") != out_dir:
            return real(*args, **kwargs)
        return os.open("/dev/full", os.O_WRONLY), str(out_dir / f"{kwargs.get('prefix', '')}full.tmp")

    monkeypatch.setattr(module.tempfile, "mkstemp", full_disk)


def _one_line(message: str, path: Path, cause: str) -> None:
    assert message.startswith(f"{path}: cannot write ({cause})"), message
    assert "\n" not in message and "Traceback" not in message


@needs_dev_full
def test_executorch_export_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    from malm_edge.converters import export_executorch as et

    model, example = _tiny_encoder()
    out = tmp_path / "bundle" / "encoder_fp32.pte"
    out.parent.mkdir()
    _mkstemp_on_dev_full(monkeypatch, et, out.parent)
    with pytest.raises(et.ExportError) as failure:
        et.export_executorch(model, example, out)
    _one_line(str(failure.value), out, "no space left on the device")
    assert list(out.parent.iterdir()) == []  # no .pte, no temp file
    monkeypatch.undo()
    monkeypatch.setattr(et.tempfile, "mkstemp", _raise(OSError(errno.EROFS, "Read-only file system", str(out))))
    with pytest.raises(et.ExportError) as failure:
        et.export_executorch(model, example, out)
    _one_line(str(failure.value), out, "read-only file system")


@needs_dev_full
def test_onnx_export_on_a_full_disk_is_not_retried_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import builtins

    from malm_edge.converters import export_onnx as onnx_export

    model, example = _tiny_encoder()
    out = tmp_path / "bundle" / "encoder_fp32.onnx"
    out.parent.mkdir()
    real_open, calls = builtins.open, []

    def full_disk_open(file, mode="r", *args, **kwargs):  # the exporter's own write of the .onnx
        if str(file).endswith("fp32.onnx") and "w" in mode:
            calls.append(file)
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    with pytest.raises(onnx_export.ExportError) as failure:
        onnx_export.export_onnx(model, example, out)
    monkeypatch.undo()
    assert calls, "torch.onnx.export no longer writes through open(); simulate the full disk elsewhere"
    _one_line(str(failure.value), out, "no space left on the device")
    assert len(calls) == 1  # a full disk is not mistaken for a dynamic-batch failure and retried
    assert list(out.parent.iterdir()) == []  # the work folder went with the export


def test_onnx_export_into_a_read_only_folder(tmp_path: Path, monkeypatch) -> None:
    import os

    from malm_edge.converters import export_onnx as onnx_export

    model, example = _tiny_encoder()
    out = tmp_path / "bundle" / "encoder_fp32.onnx"
    out.parent.mkdir()
    real_replace = os.replace

    def read_only(src, dst, *args, **kwargs):
        if Path(dst) == out:
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(onnx_export.os, "replace", read_only)
    with pytest.raises(onnx_export.ExportError) as failure:
        onnx_export.export_onnx(model, example, out)
    _one_line(str(failure.value), out, "read-only file system")
    assert list(out.parent.iterdir()) == []


def test_coreml_export_on_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    ct = pytest.importorskip("coremltools")
    from malm_edge.converters import export_coreml
    from malm_edge.training.data.transforms import Preprocessing

    model, _ = _tiny_encoder()
    out = tmp_path / "bundle" / "encoder_fp16.mlpackage"
    out.parent.mkdir()
    saved = []

    def full_disk(self, path):  # part of the package is written, then the disk fills
        Path(path).mkdir(parents=True)
        (Path(path) / "Manifest.json").write_text("{}")
        saved.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(path) / "Data"))

    monkeypatch.setattr(ct.models.MLModel, "save", full_disk)
    with pytest.raises(export_coreml.ExportError) as failure:
        export_coreml.export_coreml(model, Preprocessing(input_size=32, resize_size=36), out)
    assert saved
    _one_line(str(failure.value), out, "no space left on the device")
    assert list(out.parent.iterdir()) == []  # the half-written package went with its staging folder


@pytest.fixture
def fake_conversion(tmp_path_factory, monkeypatch):
    """`build_bundle` with `_build_into` replaced by a copy of a finished test bundle into the staging
    folder (plus whatever the test makes fail): the publish, sign and clean-up logic, for real."""
    import shutil

    from edge_bundle_fixture import get_bundle

    from malm_edge.converters import bundle_builder

    source = get_bundle(tmp_path_factory, targets=("onnx",))
    steps = []

    def build_into(staging, *args, **kwargs):
        for name in sorted(p.name for p in source.iterdir()):
            shutil.copy(source / name, staging / name)
        for step in steps:
            step(staging)
        return SimpleNamespace(bundle_dir=staging)

    monkeypatch.setattr(bundle_builder, "_build_into", build_into)
    return bundle_builder, steps


@needs_dev_full
def test_convert_on_a_full_disk_publishes_nothing(tmp_path: Path, monkeypatch, fake_conversion) -> None:
    from malm_edge.converters import export_executorch as et

    bundle_builder, steps = fake_conversion
    out = tmp_path / "out" / "bundle"

    def full_disk_on_the_pte(staging: Path) -> None:
        _mkstemp_on_dev_full(monkeypatch, et, staging)
        et.write_bytes_atomic(staging / "encoder_int8.pte", b"\0" * 1000)

    steps.append(full_disk_on_the_pte)
    with pytest.raises(ConverterError) as failure:
        bundle_builder.build_bundle(None, None, tmp_path, out, bundle_builder.ConvertOptions(progress=False))
    message = str(failure.value)
    assert message == (f"{out}: cannot write encoder_int8.pte (no space left on the device); nothing was "
                       f"published at {out} and the partial bundle was removed")
    assert list((tmp_path / "out").iterdir()) == []  # no bundle, no staging folder


def test_convert_into_a_read_only_folder_fails_before_any_work(tmp_path: Path, monkeypatch, fake_conversion) -> None:
    from malm_edge.converters import bundle_builder as bb

    bundle_builder, steps = fake_conversion
    out = tmp_path / "bundle"
    monkeypatch.setattr(bb.tempfile, "mkdtemp", _raise(OSError(errno.EROFS, "Read-only file system",
                                                                str(tmp_path / ".bundle.staging-x"))))
    steps.append(lambda staging: pytest.fail("work started in a read-only folder"))
    with pytest.raises(ConverterError) as failure:
        bundle_builder.build_bundle(None, None, tmp_path, out, bundle_builder.ConvertOptions(progress=False))
    _one_line(str(failure.value), out, "read-only file system")


def test_convert_sign_signs_before_publishing(tmp_path: Path, monkeypatch, fake_conversion) -> None:
    """--sign: the signature is written in the staging folder; a failed signature publishes nothing
    (never an unsigned bundle where a signed one was asked for)."""
    from malm_edge.edge import signing
    from malm_edge.edge.bundle import read_bundle

    bundle_builder, _ = fake_conversion
    signing.generate_keypair(tmp_path / "k.pem", tmp_path / "k.pem.pub")
    out = tmp_path / "out" / "bundle"
    options = bundle_builder.ConvertOptions(progress=False, sign_key=tmp_path / "k.pem")
    bundle_builder.build_bundle(None, None, tmp_path, out, options)
    read_bundle(out, require_signature=tmp_path / "k.pem.pub")
    real_write_text = Path.write_text

    def full_disk(self, *args, **kwargs):
        if self.name == f".{signing.SIGNATURE_FILE}.tmp":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    second = tmp_path / "out" / "second"
    with pytest.raises(ConverterError) as failure:
        bundle_builder.build_bundle(None, None, tmp_path, second, options)
    assert str(failure.value).startswith(f"{second}: cannot write .manifest.sig.tmp (no space left on the device)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bundle"]  # nothing else, no staging
