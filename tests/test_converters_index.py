"""converters/index.py: sharded, resumable recipe embedding; finalize into edge's table + catalog."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from run_fixtures import make_dataset, make_teacher_run
from typer.testing import CliRunner

from malm_edge.converters import index as idx
from malm_edge.edge.catalog import CATALOG_FILE, Catalog
from malm_edge.edge.table import read_table
from malm_edge.training.data.canonical import iter_records
from malm_edge.training.harness.distributed import WorldInfo

SHARD = 8
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from malm_edge.training.harness.teacher import load_teacher

    root = tmp_path_factory.mktemp("index")
    data = make_dataset(root / "data", None, n_train_photos=8, n_val_photos=8, n_text_only=20)
    run = make_teacher_run(root / "teacher", data)
    teacher = load_teacher(run)
    full = root / "full"
    result = idx.build_index(teacher, data, full, shard_size=SHARD, batch_size=8, progress=False)
    return root, data, run, teacher, full, result


def _shards(folder: Path) -> list[np.ndarray]:
    return [np.load(idx.shard_paths(folder, s)[0]) for s in idx.list_shards(folder)]


def test_every_recipe_is_embedded_including_text_only(setup):
    _, data, _, _, full, result = setup
    ids = [r.id for r in iter_records(data)]
    assert len(ids) == 36 and result.shards_total == 5 and result.computed == [0, 1, 2, 3, 4]
    shard_ids = [i for s in idx.list_shards(full)
                 for i in json.loads(idx.shard_paths(full, s)[1].read_text())]
    assert shard_ids == ids
    embeddings = np.concatenate(_shards(full))  # (36, 64)
    assert embeddings.shape == (36, 64) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)


def test_resume_after_interruption_skips_done_shards(setup):
    root, data, _, teacher, full, _ = setup
    out = root / "interrupted"

    def crash_after_two(shard: int) -> None:
        if shard == 2:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        idx.build_index(teacher, data, out, shard_size=SHARD, batch_size=8, progress=False,
                        on_shard=crash_after_two)
    assert idx.list_shards(out) == [0, 1, 2] and not list(out.glob(".*.tmp"))
    resumed = idx.build_index(teacher, data, out, shard_size=SHARD, batch_size=8, progress=False)
    assert resumed.skipped == [0, 1, 2] and resumed.computed == [3, 4]
    for a, b in zip(_shards(out), _shards(full), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_ranks_take_interleaved_shards(setup):
    root, data, _, teacher, full, _ = setup
    out = root / "ranks"
    r0 = idx.build_index(teacher, data, out, shard_size=SHARD, batch_size=8, progress=False,
                         world=WorldInfo(rank=0, world_size=2))
    r1 = idx.build_index(teacher, data, out, shard_size=SHARD, batch_size=8, progress=False,
                         world=WorldInfo(rank=1, world_size=2))
    assert r0.computed == [0, 2, 4] and r1.computed == [1, 3]
    for a, b in zip(_shards(out), _shards(full), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_other_settings_in_same_folder_are_refused(setup):
    _, data, _, teacher, full, _ = setup
    with pytest.raises(idx.IndexFolderError, match="shard_size"):
        idx.build_index(teacher, data, full, shard_size=SHARD * 2, progress=False)


@pytest.mark.parametrize("dtype", ["int8", "float16", "twostage"])
def test_finalize_streams_table_and_catalog_in_order(setup, dtype):
    root, data, _, teacher, full, _ = setup
    out = root / f"final_{dtype}"
    table_format = "twostage" if dtype == "twostage" else "exact"
    entry, count = idx.finalize(full, data, out, table_dtype="int8" if dtype == "twostage" else dtype,
                                table_format=table_format)
    assert entry.rows == count == 36 and entry.dim == 64
    assert entry.dtype == ("int8n" if dtype == "twostage" else dtype)
    exact = np.concatenate(_shards(full))
    table = read_table(out, entry).dequantize()
    atol = {"int8": 1 / 127, "float16": 1e-3, "twostage": 1 / 127}[dtype]
    np.testing.assert_allclose(table, exact, atol=atol)
    if dtype == "twostage":  # the centre is the mean row, taken over the shards in a first pass
        centre = np.asarray(entry.centre) * entry.centre_scale  # quantised to int8 codes
        np.testing.assert_allclose(centre, exact.mean(axis=0), atol=entry.centre_scale / 2 + 1e-9)
        assert idx.table_bytes_per_row(entry) == 8 + 32 + 16 + 8
    with Catalog(out / CATALOG_FILE, expected_count=36) as catalog:
        rows = catalog.lookup(range(36))
    assert [r["id"] for r in rows] == [r.id for r in iter_records(data)]
    queries = idx.teacher_image_queries(teacher, data)
    assert queries is not None and queries.shape == (8, 64)
    quality = idx.table_quality(full, out, entry, queries)
    assert quality["recall_at_10"] >= 0.8 and 0.0 <= quality["recall_at_1"] <= 1.0
    mixed = idx.table_quality(full, out, entry, idx.mixed_recipe_queries(full, 20))
    assert mixed["n_queries"] == 20 and mixed["recall_at_10"] >= 0.8


def test_finalize_writes_a_narrowed_table_whose_recall_is_against_full_width(setup, tmp_path):
    from malm_edge.converters.projection import fit_projection

    _, data, _, teacher, full, _ = setup
    exact = np.concatenate(_shards(full))  # (36, 64)
    projection = fit_projection(_shards(full), 32)
    entry, count = idx.finalize(full, data, tmp_path / "t", table_format="twostage", projection=projection)
    assert (entry.rows, entry.dim, count) == (36, 32, 36)
    assert idx.table_bytes_per_row(entry) == 8 + 28  # one 64-bit sign word + 7 magnitude bits a dim
    np.testing.assert_allclose(read_table(tmp_path / "t", entry).dequantize(), projection.apply(exact),
                               atol=1 / 127)
    queries = idx.teacher_image_queries(teacher, data)  # (8, 64): full width
    quality = idx.table_quality(full, tmp_path / "t", entry, queries, projection=projection)
    assert (quality["width"], quality["from_dim"]) == (32, 64) and 0 < quality["retained_energy"] <= 1
    assert 0.5 <= quality["recall_at_10"] <= 1.0


def test_finalize_refuses_missing_shard_and_reordered_recipes(setup, tmp_path):
    _, data, _, _, full, _ = setup
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(full, partial)
    idx.shard_paths(partial, 3)[0].unlink()
    with pytest.raises(idx.IndexFolderError, match="shard"):
        idx.finalize(partial, data, tmp_path / "t1")
    reordered = tmp_path / "data2"
    reordered.mkdir()
    lines = (data / "recipes.jsonl").read_text().splitlines()
    (reordered / "recipes.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(idx.IndexFolderError, match="rebuild the index"):
        idx.finalize(full, reordered, tmp_path / "t2")
    assert not (tmp_path / "t2" / CATALOG_FILE).exists()


def test_index_cli_json(setup):
    from malm_edge.cli import index as index_cli

    root, data, run, _, _, _ = setup
    app = typer.Typer()
    app.command("index")(index_cli.index)
    app.command("noop")(lambda: None)
    out = root / "cli"
    result = CliRunner().invoke(app, ["index", "--teacher", str(run), "--recipes", str(data),
                                      "--out", str(out), "--shard-size", "16", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["computed"] == [0, 1, 2] and summary["table"]["rows"] == 36
    assert (out / "table" / "table.i8").is_file() and (out / "table" / CATALOG_FILE).is_file()
    again = CliRunner().invoke(app, ["index", "--teacher", str(run), "--recipes", str(data),
                                     "--out", str(out), "--shard-size", "16", "--json", "--no-finalize"])
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == [0, 1, 2]
    bad = CliRunner().invoke(app, ["index", "--teacher", str(run), "--recipes", str(data),
                                   "--out", str(out), "--shard-size", "4"])
    assert bad.exit_code == 1 and "shard_size" in bad.output
    two = CliRunner().invoke(app, ["index", "--teacher", str(run), "--recipes", str(data), "--out", str(out),
                                   "--shard-size", "16", "--table", "twostage"])
    assert two.exit_code == 0, two.output
    assert "int8n (64 bytes a recipe)" in two.output and (out / "table" / "table.sign.u64").is_file()
    few = CliRunner().invoke(app, ["index", "--teacher", str(run), "--recipes", str(data), "--out", str(out),
                                   "--shard-size", "16", "--table", "twostage", "--candidates", "7",
                                   "--query-bits", "2", "--json"])
    assert few.exit_code == 0, few.output
    assert json.loads(few.stdout)["table"]["candidates"] == 7 and json.loads(few.stdout)["table"]["query_bits"] == 2
    wide = CliRunner().invoke(app, ["index", "--teacher", str(run), "--recipes", str(data), "--out", str(out),
                                    "--table", "twostage", "--query-bits", "5"])
    assert wide.exit_code == 2 and "query-bits" in wide.output


@pytest.mark.slow
def test_index_with_two_torchrun_processes(setup, tmp_path):
    _, data, run, _, full, _ = setup
    script = tmp_path / "run_index.py"
    script.write_text(
        "import sys, json\nfrom pathlib import Path\n"
        "from malm_edge.cli.index import run_index\n"
        f"s = run_index(Path({str(run)!r}), Path({str(data)!r}), Path({str(tmp_path / 'out')!r}), "
        f"shard_size={SHARD}, batch_size=8, progress=False)\n"
        "print(json.dumps({'rank': s['rank'], 'computed': s['computed']}))\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for a, b in zip(_shards(tmp_path / "out"), _shards(full), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert (tmp_path / "out" / "table" / CATALOG_FILE).is_file()
