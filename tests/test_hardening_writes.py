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

from malm_edge.cli import app
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
