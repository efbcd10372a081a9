"""edge/ runtime: torch-free import and search, backends agree, Retriever, `search` and `bench` CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import typer
from edge_bundle_fixture import EMBED_DIM, ROWS, get_bundle
from typer.testing import CliRunner

from malm_edge.cli.bench import bench
from malm_edge.cli.search import search
from malm_edge.converters.executorch_runtime import ExecuTorchBackend, register_executorch_backend
from malm_edge.edge.backends import BackendError, OnnxBackend, select_backend
from malm_edge.edge.bench import run_bench
from malm_edge.edge.bundle import read_bundle
from malm_edge.edge.retriever import Retriever
from malm_edge.edge.table import search_topk

register_executorch_backend()  # host-side: the edge runtime itself has only torch-free backends

_BLOCKED_RUN = textwrap.dedent(
    """
    import importlib.abc, json, pkgutil, sys

    class Block(importlib.abc.MetaPathFinder):
        BLOCKED = ("torch", "malm_edge.training", "malm_edge.converters")

        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in self.BLOCKED):
                raise ImportError(f"blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import malm_edge.edge
    modules = [m.name for m in pkgutil.iter_modules(malm_edge.edge.__path__)]
    for name in modules:
        __import__(f"malm_edge.edge.{name}")
    import malm_edge.cli.search, malm_edge.cli.bench
    from malm_edge.edge.backends import BackendError
    from malm_edge.edge.retriever import Retriever

    bundle, photo = sys.argv[1], sys.argv[2]
    with Retriever(bundle, backend="onnx", threads=1) as retriever:
        hits = retriever.search(photo, k=5)
    try:
        Retriever(bundle, backend="executorch")
        executorch = "loaded"
    except BackendError as err:
        executorch = str(err)
    print(json.dumps({"modules": modules, "hits": hits, "executorch": executorch,
                      "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
    """
)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory)


@pytest.fixture
def photo(real_photos) -> Path:
    return real_photos[0]


def test_edge_imports_and_searches_without_torch(bundle_dir, photo) -> None:
    done = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, str(bundle_dir), str(photo)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"bundle", "table", "catalog", "preprocess", "backends", "retriever", "bench"} <= set(
        report["modules"])
    assert not report["torch_loaded"]
    assert [hit["rank"] for hit in report["hits"]] == [1, 2, 3, 4, 5]
    with Retriever(bundle_dir, backend="onnx") as retriever:  # same answer with torch around
        assert report["hits"] == retriever.search(photo, k=5)
    # The ExecuTorch pip runtime imports torch: without torch its backend fails with a clear error.
    assert "torch" in report["executorch"] and "executorch" in report["executorch"]


def test_executorch_and_onnx_agree_on_real_photos(bundle_dir, real_photos) -> None:
    onnx = Retriever(bundle_dir, backend="onnx")
    executorch = Retriever(bundle_dir, backend="executorch")
    assert isinstance(onnx.backend, OnnxBackend) and isinstance(executorch.backend, ExecuTorchBackend)
    for photo in real_photos[::4]:
        a, b = onnx.search(photo, k=5), executorch.search(photo, k=5)
        assert [hit["id"] for hit in a] == [hit["id"] for hit in b], photo
        np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-3)
        np.testing.assert_allclose(onnx.embed_image(photo), executorch.embed_image(photo), atol=1e-4)


def test_batched_onnx_equals_one_by_one(bundle_dir, real_photos) -> None:
    with Retriever(bundle_dir, backend="onnx") as retriever:
        pixels = np.concatenate([retriever.preprocess(p) for p in real_photos[:4]])  # (4, 3, S, S)
        batched = retriever.backend.embed(pixels)
        assert batched.shape == (4, EMBED_DIM)
        np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
        singles = np.stack([retriever.embed_image(p) for p in real_photos[:4]])
        np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_retriever_search_matches_a_naive_pipeline(bundle_dir, photo) -> None:
    with Retriever(bundle_dir, backend="onnx") as retriever:
        hits = retriever.search(photo, k=7)
        dense = retriever.table.dequantize()  # (N, D)
        scores = dense @ retriever.embed_image(photo)
        order = sorted(range(ROWS), key=lambda i: (-scores[i], i))[:7]
        assert [hit["row"] for hit in hits] == order
        assert [hit["id"] for hit in hits] == [f"r{row:05d}" for row in order]
        assert set(hits[0]) == {"rank", "id", "title", "score", "row"}
        text = retriever.search_text("chicken", k=500)
        expected = [row for row, recipe in enumerate(retriever.catalog.lookup(range(ROWS)))
                    if "chicken" in recipe["title"].lower() + " ".join(recipe["ingredients"])]
        assert expected and sorted(t["row"] for t in text) == expected
        assert [t["rank"] for t in text] == list(range(1, len(expected) + 1))


def test_backend_selection(bundle_dir) -> None:
    bundle = read_bundle(bundle_dir)
    assert select_backend(bundle).name == "onnx"  # default off macOS
    assert select_backend(bundle, "tiny_fp32_executorch").name == "executorch"  # by encoder name
    with pytest.raises(BackendError, match="no encoder 'coreml' in this bundle"):
        select_backend(bundle, "coreml")


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("search")(search)
    app.command("bench")(bench)
    return app


def test_search_json_schema(bundle_dir, real_photos) -> None:
    runner = CliRunner()
    one = runner.invoke(_cli(), ["search", str(real_photos[0]), "--bundle", str(bundle_dir),
                                 "--top-k", "3", "--json", "--backend", "onnx"])
    assert one.exit_code == 0, one.output
    payload = json.loads(one.stdout)
    assert payload["bundle"] == str(bundle_dir) and payload["backend"] == "onnx"
    assert [r["rank"] for r in payload["results"]] == [1, 2, 3]
    for result in payload["results"]:
        assert set(result) == {"rank", "id", "title", "score"}
        assert isinstance(result["score"], float) and isinstance(result["id"], str)
    several = runner.invoke(_cli(), ["search", str(real_photos[0]), str(real_photos[1]),
                                     "--bundle", str(bundle_dir), "--json", "--backend", "executorch"])
    assert several.exit_code == 0, several.output
    listed = json.loads(several.stdout)
    assert isinstance(listed, list) and len(listed) == 2
    assert [r["id"] for r in listed[0]["results"][:3]] == [r["id"] for r in payload["results"]]
    np.testing.assert_allclose([r["score"] for r in listed[0]["results"][:3]],
                               [r["score"] for r in payload["results"]], atol=1e-5)
    assert all(entry["backend"] == "executorch" and len(entry["results"]) == 5 for entry in listed)


def test_search_cli_reports_bad_photos(bundle_dir, real_photos, tmp_path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    runner = CliRunner()
    single = runner.invoke(_cli(), ["search", str(bad), "--bundle", str(bundle_dir), "--json"])
    assert single.exit_code == 1
    assert single.stdout == "" and f"error: {bad}: not a readable image file" in single.stderr
    mixed = runner.invoke(_cli(), ["search", str(real_photos[0]), str(bad), "--bundle",
                                   str(bundle_dir), "--json"])
    assert mixed.exit_code == 1 and str(bad) in mixed.stderr
    listed = json.loads(mixed.stdout)
    assert len(listed[0]["results"]) == 5 and "error" not in listed[0]
    assert listed[1]["results"] == [] and str(bad) in listed[1]["error"]
    text = runner.invoke(_cli(), ["search", str(real_photos[0]), "--bundle", str(bundle_dir)])
    assert text.exit_code == 0 and " 1. " in text.stdout
    broken = runner.invoke(_cli(), ["search", str(real_photos[0]), "--bundle", str(tmp_path)])
    assert broken.exit_code == 1 and "is not a malm-edge bundle" in broken.stderr


def test_bench_report_and_cli(bundle_dir) -> None:
    report = run_bench(bundle_dir, threads=[1], synthetic_rows=(3000,), repeats=2)
    assert {e["backend"] for e in report["encoders"]} == {"onnx", "executorch"}
    assert [s["rows"] for s in report["search"]] == [ROWS, 3000]
    for row in report["encoders"] + report["search"] + report["end_to_end"] + [report["preprocess"]]:
        assert 0 < row["median_ms"] <= row["p90_ms"]
    assert report["files"]["table.i8"] == ROWS * EMBED_DIM and report["peak_rss_mb"] > 0
    assert {"recall_at_1", "recall_at_10"} <= set(report["search"][0])  # from convert's provenance, if any
    result = CliRunner().invoke(_cli(), ["bench", "--bundle", str(bundle_dir), "--rows", "0",
                                         "--threads", "1", "--repeats", "2", "--backend", "onnx",
                                         "--json"])
    assert result.exit_code == 0, result.output
    parsed = json.loads(result.stdout)
    assert parsed["search"][0]["rows"] == ROWS and len(parsed["search"]) == 1
    assert [e["backend"] for e in parsed["encoders"]] == ["onnx"]
    table = CliRunner().invoke(_cli(), ["bench", "--bundle", str(bundle_dir), "--rows", "0",
                                        "--threads", "1", "--repeats", "2"])
    assert table.exit_code == 0 and "Table top-k search" in table.stdout


def test_search_topk_on_the_bundle_table_uses_int8_scales(bundle_dir) -> None:
    with Retriever(bundle_dir, backend="onnx") as retriever:
        query = retriever.table.dequantize()[17]
        indices, _ = search_topk(retriever.table, query / np.linalg.norm(query), k=1)
        assert indices.tolist() == [17]
