"""Recipe1M importer on the shared sample: counts, image path scheme, text-only recipes, H-T filters."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from malm_edge.cli import data as data_cli
from malm_edge.training.data.canonical import DatasetError, check_dataset, load_recipes, resolve_image_path
from malm_edge.training.data.recipe1m import Recipe1MOptions, image_relpath, import_recipe1m

PATH_SCHEME = re.compile(r"^(train|val|test)/(\w)/(\w)/(\w)/(\w)/(\w+\.jpg)$")


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_cli.app, name="data")
    return app


def _layers_only(sample: Path, root: Path) -> Path:
    """A Recipe1M root with the sample's layer files and no photos."""
    root.mkdir()
    for name in ("layer1.json", "layer2.json"):
        shutil.copy(sample / name, root / name)
    return root


def test_image_relpath_uses_first_four_characters() -> None:
    assert image_relpath("val", "b7df0601d5.jpg") == "val/b/7/d/f/b7df0601d5.jpg"


def test_default_import_keeps_text_only_recipes(recipe1m_sample: Path, tmp_path: Path) -> None:
    summary = import_recipe1m(recipe1m_sample, tmp_path / "ds")
    assert summary["n_recipes"] == 1003
    assert summary["partitions"] == {"train": 703, "val": 155, "test": 145}
    assert (summary["n_images"], summary["n_text_only"]) == (50, 963)

    recipes = load_recipes(tmp_path / "ds")
    assert len(recipes) == 1003 and sum(not r.images for r in recipes) == 963
    first = next(r for r in recipes if r.id == "000018c8a5")  # a complete original record
    assert first.title == "Worlds Best Mac and Cheese" and first.ingredients[0] == "6 ounces penne"
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert Path(meta["images_root"]) == (recipe1m_sample / "images").resolve()
    for recipe in recipes:
        for image in recipe.images:
            split, a, b, c, d, name = PATH_SCHEME.match(image).groups()
            assert split == recipe.partition and name[:4] == a + b + c + d
            assert resolve_image_path(tmp_path / "ds", image).is_file()
    assert check_dataset(tmp_path / "ds").ok


def test_ht_filters_and_image_cap(recipe1m_sample: Path, tmp_path: Path) -> None:
    summary = import_recipe1m(recipe1m_sample, tmp_path / "ht", Recipe1MOptions.ht(max_images=1))
    recipes = load_recipes(tmp_path / "ht")
    assert len(recipes) == summary["n_recipes"] == 35
    assert all(len(r.images) == 1 and r.ingredients and len(r.instructions) < 20 for r in recipes)
    assert summary["counts"]["dropped_no_image"] == 963
    assert summary["counts"]["dropped_too_many_steps"] == 5
    assert summary["counts"]["images_over_cap"] == 10  # the 10 two-photo recipes lose one each

    steps = import_recipe1m(recipe1m_sample, tmp_path / "steps", Recipe1MOptions(max_steps=20))
    assert steps["counts"]["dropped_too_many_steps"] == 60
    assert all(len(r.instructions) < 20 for r in load_recipes(tmp_path / "steps"))


def test_split_folders_directly_under_root(recipe1m_sample: Path, tmp_path: Path) -> None:
    root = _layers_only(recipe1m_sample, tmp_path / "r1m")
    for split in ("train", "val", "test"):
        (root / split).symlink_to(recipe1m_sample / "images" / split)
    summary = import_recipe1m(root, tmp_path / "ds")
    assert summary["n_images"] == 50
    assert check_dataset(tmp_path / "ds").ok


def test_missing_photos_leave_text_only_recipes(recipe1m_sample: Path, tmp_path: Path) -> None:
    root = _layers_only(recipe1m_sample, tmp_path / "r1m")
    summary = import_recipe1m(root, tmp_path / "ds")
    assert (summary["n_recipes"], summary["n_images"]) == (1003, 0)
    assert summary["counts"]["missing_image_files"] == 50
    unchecked = import_recipe1m(root, tmp_path / "later", Recipe1MOptions(check_image_files=False))
    assert unchecked["n_images"] == 50
    assert check_dataset(tmp_path / "later").n_missing_images == 50


def test_det_ingrs_replace_raw_lines(recipe1m_sample: Path, tmp_path: Path) -> None:
    root = _layers_only(recipe1m_sample, tmp_path / "r1m")
    det = [{"id": "000018c8a5", "ingredients": [{"text": "penne"}, {"text": "x"}, {"text": "cheddar"}],
            "valid": [True, False, True]}]
    with pytest.raises(DatasetError, match=r"det_ingrs\.json: missing"):
        import_recipe1m(root, tmp_path / "ds", Recipe1MOptions(use_det_ingrs=True))
    (root / "det_ingrs.json").write_text(json.dumps(det))
    summary = import_recipe1m(root, tmp_path / "ds", Recipe1MOptions(use_det_ingrs=True))
    by_id = {r.id: r for r in load_recipes(tmp_path / "ds")}
    assert by_id["000018c8a5"].ingredients == ["penne", "cheddar"]
    assert summary["counts"]["no_det_ingrs"] == 1002  # the others keep their raw lines


@pytest.mark.parametrize(
    ("layer1", "expected"),
    [
        ('[{"id": "a", ', r"layer1\.json:1: malformed JSON"),
        ('{"id": "a"}', "expected a JSON list"),
        ('[{"id": "a", "partition": "train", "ingredients": [], "instructions": []}]', r"record 0 .*'title'"),
        ('[{"id": "a", "title": "t", "partition": "dev", "ingredients": [], "instructions": []}]',
         "unknown partition 'dev'"),
        ('[{"id": "a", "title": "t", "partition": "val", "ingredients": ["salt"], "instructions": []}]',
         "'ingredients' must be a list of {text} objects"),
        ('[{"id": "a", "title": "t", "partition": "val", "ingredients": [], "instructions": []},'
         ' {"id": "a", "title": "t", "partition": "val", "ingredients": [], "instructions": []}]',
         "record 1: duplicate id 'a'"),
    ],
)
def test_bad_layer1_is_rejected_and_nothing_written(tmp_path: Path, layer1: str, expected: str) -> None:
    root = tmp_path / "r1m"
    root.mkdir()
    (root / "layer1.json").write_text(layer1)
    (root / "layer2.json").write_text("[]")
    with pytest.raises(DatasetError, match=expected):
        import_recipe1m(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_layer2_and_bad_image_ids(tmp_path: Path) -> None:
    root = tmp_path / "r1m"
    root.mkdir()
    (root / "layer1.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"layer2\.json: missing"):
        import_recipe1m(root, tmp_path / "out")
    (root / "layer2.json").write_text('[{"id": "a", "images": [{"id": "../../etc/passwd"}]}]')
    with pytest.raises(DatasetError, match="bad image id"):
        import_recipe1m(root, tmp_path / "out")


def test_import_command(recipe1m_sample: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ds"
    args = ["data", "import", "recipe1m", str(recipe1m_sample), "--out", str(out), "--ht-filters", "--json"]
    result = runner.invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_recipes"] == 35
    again = runner.invoke(_cli(), args)
    assert again.exit_code == 1 and "already exists" in again.stderr
    result = runner.invoke(_cli(), ["data", "import", "recipe1m", str(tmp_path / "nope"), "--out", str(out)])
    assert result.exit_code == 1 and "does not exist" in result.stderr and "Traceback" not in result.output


def _write_pickles(path: Path, *objects: object) -> None:
    import pickle

    with path.open("wb") as handle:
        for obj in objects:
            pickle.dump(obj, handle, protocol=2)  # as im2recipe's Python 2 scripts wrote it


def test_semantic_classes_are_read_from_classes1m(recipe1m_sample: Path, tmp_path: Path) -> None:
    """Defect 7: classes1M.pkl was ignored, so TFood's semantic term had no classes on Recipe1M."""
    root = _layers_only(recipe1m_sample, tmp_path / "r1m")
    ids = [record["id"] for record in json.loads((root / "layer1.json").read_text())[:3]]
    _write_pickles(root / "classes1M.pkl", {ids[0]: 2, ids[1]: 0, ids[2]: 1}, {0: "background", 1: "pizza", 2: "pie"})
    summary = import_recipe1m(root, tmp_path / "ds")
    classes = {r.id: r.class_name for r in load_recipes(tmp_path / "ds")}
    assert (classes[ids[0]], classes[ids[1]], classes[ids[2]]) == ("pie", None, "pizza")
    assert summary["counts"]["with_class"] == 2


def test_classes_file_with_anything_but_builtins_is_refused(recipe1m_sample: Path, tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            import os

            return (os.getcwd, ())

    root = _layers_only(recipe1m_sample, tmp_path / "r1m")
    _write_pickles(root / "classes1M.pkl", {"x": Payload()}, {0: "background"})
    with pytest.raises(DatasetError, match="only plain builtins"):
        import_recipe1m(root, tmp_path / "ds")
    assert not (tmp_path / "ds" / "recipes.jsonl").exists()
