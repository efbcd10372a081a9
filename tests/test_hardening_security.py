"""Hardening (issue 17): code never runs while reading weights, deep JSON never crashes a reader,
and the demo server serves only the files it opened and checked at start-up, with bounded
connections and timeouts."""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_bundle_fixture import get_bundle

from malm_edge.edge import demo_server
from malm_edge.edge.bundle import MANIFEST_FILE, BundleError, read_bundle, read_manifest
from malm_edge.edge.demo_server import make_server
from malm_edge.edge.safe_json import JsonFileError, load_json_file, loads
from malm_edge.training.data.canonical import DatasetError, check_dataset, read_dataset_meta
from malm_edge.training.data.epicurious import read_split_file
from malm_edge.training.data.recipe1m import import_recipe1m

DEEP = "[" * 100_000


# ----------------------------------------------------------------------------- 1: weights carry no code


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_torchscript_archive_with_code_is_refused_without_running_it(tmp_path: Path, payload: str) -> None:
    from malm_edge.training.models.clip_weights import ClipWeightsError, read_clip_state_dict

    marker = tmp_path / "pwned"
    if payload == "os.system":
        data = pickle.dumps(_RunsCode(marker), protocol=2)
    else:
        data = b"cbuiltins\neval\n(V__import__('pathlib').Path('" + str(marker).encode() + b"').touch()\ntR."
    archive = tmp_path / "ViT-B-16.pt"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("evil/data.pkl", data)
        out.writestr("evil/code/__torch__.py", "def forward(self): pass\n")
        out.writestr("evil/version", "3\n")
    with pytest.raises(ClipWeightsError) as error:
        read_clip_state_dict(archive)
    assert not marker.exists()
    message = str(error.value)
    assert str(archive) in message and "refusing to load global" in message
    assert "torch.jit.load" in message and "trust" in message  # how to convert it once, safely


# ----------------------------------------------------------------------------- 4: deep JSON


def test_safe_json_refuses_deep_nesting_and_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(JsonFileError, match=f"{path}: JSON nested too deeply"):
        load_json_file(path)
    with pytest.raises(JsonFileError, match="nested too deeply"):
        loads("[" * 70 + "]" * 70, "shallow-enough-for-json-not-for-us")
    assert loads("[[1]]", "ok") == [[1]]
    with pytest.raises(JsonFileError, match="is a folder"):
        load_json_file(tmp_path)
    with pytest.raises(JsonFileError, match="missing"):
        load_json_file(tmp_path / "absent.json")


def test_deep_layer1_is_a_clear_import_error(tmp_path: Path) -> None:
    root = tmp_path / "r1m"
    root.mkdir()
    (root / "layer1.json").write_text(DEEP)
    (root / "layer2.json").write_text("[]")
    with pytest.raises(DatasetError, match="layer1.json: JSON nested too deeply"):
        import_recipe1m(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_deep_manifest_split_file_and_dataset_json(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_FILE).write_text(DEEP)
    with pytest.raises(BundleError, match="manifest.json: not valid JSON .*nested too deeply"):
        read_manifest(tmp_path)
    split = tmp_path / "split.json"
    split.write_text(DEEP)
    with pytest.raises(DatasetError, match="split.json: JSON nested too deeply"):
        read_split_file(split)
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "dataset.json").write_text(DEEP)
    with pytest.raises(DatasetError, match="dataset.json: JSON nested too deeply"):
        read_dataset_meta(dataset)
    (dataset / "dataset.json").unlink()
    (dataset / "recipes.jsonl").write_text(DEEP + "\n")
    report = check_dataset(dataset, check_images=False)
    assert report.n_bad_lines == 1 and "nested too deeply" in report.problems[0][2]


def test_search_cli_on_a_deep_manifest_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from malm_edge.cli.root import app

    (tmp_path / MANIFEST_FILE).write_text(DEEP)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8")
    result = CliRunner().invoke(app, ["search", str(photo), "--bundle", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "nested too deeply" in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- 2: demo server


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory, targets=("onnx",))


@pytest.fixture()
def served(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    monkeypatch.setattr(demo_server.DemoRequestHandler, "timeout", 1.5)
    server = make_server(copy, "127.0.0.1", 0, max_connections=4)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, copy
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _table_file(bundle: Path) -> str:
    return read_bundle(bundle, verify_checksums=False).manifest.table.file


def test_a_file_swapped_for_a_symlink_after_start_up_is_never_read(served, tmp_path: Path) -> None:
    server, bundle = served
    name = _table_file(bundle)
    original = (bundle / name).read_bytes()
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (bundle / name).unlink()
    (bundle / name).symlink_to(secret)
    status, body = _get(server.url + f"bundle/{name}")
    assert status == 200 and body == original and b"root:x" not in body


def test_a_file_rewritten_in_place_is_refused(served) -> None:
    server, bundle = served
    name = _table_file(bundle)
    with open(bundle / name, "ab") as handle:
        handle.write(b"appended")
    status, _ = _get(server.url + f"bundle/{name}")
    assert status == 410


def test_symlinked_bundle_file_is_refused_at_start_up(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    name = _table_file(copy)
    outside = tmp_path / "table-outside.i8"
    shutil.move(copy / name, outside)
    (copy / name).symlink_to(outside)
    with pytest.raises(BundleError, match=f"{name}: a symbolic link"):
        make_server(copy, "127.0.0.1", 0)


def test_half_sent_requests_time_out_and_connections_are_bounded(served) -> None:
    server, _ = served
    host, port = server.server_address[:2]
    held = []
    for _ in range(10):  # 4 slots: the rest are answered 503 and closed at once
        conn = socket.create_connection((host, port), timeout=5)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
        held.append(conn)
    deadline = time.monotonic() + 2
    while server.refused_connections < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.refused_connections >= 6
    assert threading.active_count() < 4 + 10
    answers = []
    deadline = time.monotonic() + 5
    for conn in held:
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            answers.append(conn.recv(64))
        except TimeoutError:
            answers.append(None)
        conn.close()
    assert None not in answers  # every connection was closed by the server (timeout or 503)
    assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 6
    status, _ = _get(server.url)  # and the server still serves
    assert status == 200
