"""`malm-edge data dev-split`: a dev split carved from train, val and test left out, images in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from malm_edge.cli import data as data_cli
from malm_edge.training.data.canonical import DatasetError, load_recipes, resolve_image_path, write_dataset
from malm_edge.training.data.dev_split import carve_dev_split
from malm_edge.training.data.records import Recipe


def _source(tmp_path: Path) -> Path:
    """12 full train recipes, 8 title-only train photos, 4 val and 2 test recipes; one real image each."""
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    recipes = []
    for i in range(26):
        image = f"r{i}.jpg"
        Image.new("RGB", (8, 8), (i * 9, 0, 0)).save(source / "images" / image)
        partition = "train" if i < 20 else "val" if i < 24 else "test"
        full = i < 12 or i >= 20
        recipes.append(Recipe(f"r{i}", f"dish {i}", ["salt"] if full else [], ["stir"] if full else [],
                              [image], partition))
    write_dataset(source, recipes, {"format": "malm-edge-dataset", "version": 1, "images_root": "images"})
    return source


def test_dev_split_takes_full_text_train_recipes_and_drops_val_and_test(tmp_path: Path) -> None:
    source = _source(tmp_path)
    meta = carve_dev_split(source, tmp_path / "dev", size=5, seed=3)
    recipes = load_recipes(tmp_path / "dev")
    dev = [r for r in recipes if r.partition == "val"]
    assert len(dev) == 5 and meta["partitions"] == {"train": 15, "val": 5, "test": 0}
    assert all(r.ingredients and r.instructions for r in dev)  # val has full text, so dev does too
    assert {r.id for r in recipes} == {f"r{i}" for i in range(20)}  # val and test are not in it at all
    assert meta["dropped"] == {"val": 4, "test": 2}
    # images are read in place from the source's images_root
    assert resolve_image_path(tmp_path / "dev", dev[0].images[0]) == (source / "images" / dev[0].images[0]).resolve()
    # seeded: the same seed draws the same recipes, another seed others
    carve_dev_split(source, tmp_path / "dev_again", size=5, seed=3)
    carve_dev_split(source, tmp_path / "dev_other", size=5, seed=4)
    ids = {name: {r.id for r in load_recipes(tmp_path / name, "val")} for name in ("dev_again", "dev_other")}
    assert ids["dev_again"] == {r.id for r in dev} != ids["dev_other"]


def test_dev_split_refuses_what_would_lose_data_or_leave_nothing(tmp_path: Path) -> None:
    source = _source(tmp_path)
    before = (source / "recipes.jsonl").read_bytes()
    with pytest.raises(DatasetError, match="only 12 train recipes with photos and full text"):
        carve_dev_split(source, tmp_path / "dev", size=12)
    with pytest.raises(DatasetError, match="new folder"):
        carve_dev_split(source, source, size=2)
    carve_dev_split(source, tmp_path / "dev", size=2)
    with pytest.raises(DatasetError, match="already exists"):
        carve_dev_split(source, tmp_path / "dev", size=3)
    assert (source / "recipes.jsonl").read_bytes() == before
    assert len(load_recipes(tmp_path / "dev", "val")) == 2  # the refused second carve changed nothing


def test_dev_split_cli(tmp_path: Path) -> None:
    source = _source(tmp_path)
    app = typer.Typer()
    app.add_typer(data_cli.app, name="data")
    result = CliRunner().invoke(app, ["data", "dev-split", str(source), "--out", str(tmp_path / "dev"), "--size",
                                      "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["partitions"] == {"train": 16, "val": 4, "test": 0}
    result = CliRunner().invoke(app, ["data", "dev-split", str(tmp_path / "missing"), "--out", str(tmp_path / "d2")])
    assert result.exit_code == 1 and "missing" in result.output and "Traceback" not in result.output
