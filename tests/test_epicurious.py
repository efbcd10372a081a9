"""Epicurious importer: the shared Kaggle copy (split, bad rows, GIF/PNG named .jpg, unpaired photos)
and a tiny hand-made copy carrying each quirk of the full dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from malm_edge.cli import data as data_cli
from malm_edge.training.data.canonical import DatasetError, check_dataset, load_recipes, resolve_image_path
from malm_edge.training.data.epicurious import CSV_NAME, import_epicurious, normalise_title, slug_title

HEADER = ["", "Title", "Ingredients", "Instructions", "Image_Name", "Cleaned_Ingredients"]
METHOD = ("Preheat the oven to 350°F and butter a large baking dish, then whisk the eggs with the milk, "
          "sugar and vanilla until smooth and pour the custard over the bread cubes. Bake until set.")


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_cli.app, name="data")
    return app


def _kaggle(folder: Path, rows: list[list[str]], photos: dict[str, str]) -> Path:
    """A Kaggle-layout folder: the CSV (rows after the header) and `Food Images/<name>.jpg` in `photos`' formats."""
    images = folder / "Food Images"
    images.mkdir(parents=True)
    for name, image_format in photos.items():
        if image_format == "PSD":
            (images / f"{name}.jpg").write_bytes(b"8BPS\x00\x01" + bytes(40))  # a Photoshop header
        else:
            mode = "P" if image_format == "GIF" else "RGB"
            Image.new(mode, (27, 17), 90).save(images / f"{name}.jpg", format=image_format)
    with open(folder / CSV_NAME, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return folder


@pytest.fixture
def quirky(tmp_path: Path) -> Path:
    rows = [
        ["0", "Apple Pie", "['6 apples', '1 crust']", "Peel the apples.\nBake.", "apple-pie-123", "['6 apples']"],
        ["1", "Mystery", "['salt']", "Season.", "#NAME?", "['salt']"],
        ["2", "", "['']", "", "empty-row-photo", "['']"],
        ["3", "Bread Pudding", f"['{METHOD}']", "", "bread-pudding", "['bread', 'eggs', 'milk']"],
        ["4", "Layered Dip", "['beans', 'cheese']", "Layer.", "layered-dip-psd", "['beans']"],
        ["5", "Green Salad", "['lettuce']", "Toss.", "green-salad-png", "['lettuce']"],
        ["6", "", "['rice', 'water']", "Cook.", "plain-rice-42", "['rice']"],
        ["7", "Lost Photo", "['pepper']", "Grind.", "not-on-disk", "['pepper']"],
    ]
    photos = {"apple-pie-123": "JPEG", "empty-row-photo": "JPEG", "bread-pudding": "GIF",
              "layered-dip-psd": "PSD", "green-salad-png": "PNG", "plain-rice-42": "JPEG",
              "hazelnut-cookies-109469": "JPEG", "-burnt-carrots-and-parsnips-56390131": "JPEG"}
    return _kaggle(tmp_path / "kaggle", rows, photos)


def test_slug_title() -> None:
    assert slug_title("hazelnut-cookies-109469") == "Hazelnut Cookies"
    assert slug_title("-burnt-carrots-and-parsnips-56390131") == "Burnt Carrots And Parsnips"
    assert slug_title("cured-egg-yolks") == "Cured Egg Yolks"
    assert normalise_title("Crème  Brûlée!") == normalise_title("crème brûlée")


def test_shared_copy_with_split_file(epicurious_dir: Path, tmp_path: Path) -> None:
    report = import_epicurious(epicurious_dir, tmp_path / "ds", split_file=epicurious_dir / "split.json")
    split = json.loads((epicurious_dir / "split.json").read_text())
    partition_of = {index: name for name, indices in split.items() for index in indices}
    recipes = load_recipes(tmp_path / "ds")
    assert report.n_rows == 1602 and len(recipes) == report.n_recipes == 1600
    assert report.partitions == {"train": 1300, "val": 300, "test": 0}
    for recipe in recipes:
        assert recipe.partition == partition_of[int(recipe.id.removeprefix("epicurious-"))]
        assert recipe.title and len(recipe.images) == 1
    # The two `#NAME?` rows are skipped and named by CSV line.
    assert report.skipped == {"bad_image": 2}
    assert all("#NAME?" in p and p.endswith("skipped") for p in report.problems)
    assert {p.split(":")[1] for p in report.problems} == {"2675", "2769"}
    # GIF and PNG files named .jpg are kept and read for what they are.
    assert report.image_formats == {"GIF": 1, "JPEG": 1597, "PNG": 2}
    by_id = {r.id: r for r in recipes}
    assert {"epicurious-75", "epicurious-3307", "epicurious-6597"} <= set(by_id)
    with Image.open(resolve_image_path(tmp_path / "ds", by_id["epicurious-75"].images[0])) as image:
        assert image.format == "GIF"
    assert check_dataset(tmp_path / "ds").ok


def test_unpaired_photos_become_title_only_train_recipes(epicurious_dir: Path, tmp_path: Path) -> None:
    report = import_epicurious(epicurious_dir, tmp_path / "ds", epicurious_dir / "split.json", add_unpaired=True)
    recipes = load_recipes(tmp_path / "ds")
    unpaired = [r for r in recipes if r.id.startswith("epicurious-photo-")]
    assert len(unpaired) == report.n_unpaired and 5400 < len(unpaired) <= 5500
    assert all(r.partition == "train" and not r.ingredients and not r.instructions for r in unpaired)
    titles = {r.id: r.title for r in unpaired}
    assert titles["epicurious-photo-pulled-pork-56389611"] == "Pulled Pork"
    assert all(title == slug_title(rid.removeprefix("epicurious-photo-")) for rid, title in titles.items())
    held_out = {normalise_title(r.title) for r in recipes if r.partition != "train"}
    assert not held_out & {normalise_title(t) for t in titles.values()}  # no val recipe leaks into train
    assert report.skipped["unpaired_photo"] == 5500 - len(unpaired)
    assert report.partitions["val"] == 300


def test_default_split_is_fixed_and_keeps_titles_together(epicurious_dir: Path, tmp_path: Path) -> None:
    first = import_epicurious(epicurious_dir, tmp_path / "a")
    import_epicurious(epicurious_dir, tmp_path / "b")
    recipes = load_recipes(tmp_path / "a")
    assert recipes == load_recipes(tmp_path / "b")
    assert all(first.partitions[p] > 0 for p in ("train", "val", "test"))
    assert 0.7 < first.partitions["train"] / first.n_recipes < 0.9
    partition_of_title: dict[str, set[str]] = {}
    for recipe in recipes:
        partition_of_title.setdefault(normalise_title(recipe.title), set()).add(recipe.partition)
    assert all(len(parts) == 1 for parts in partition_of_title.values())


def test_quirky_rows_are_fixed_or_skipped_and_reported(quirky: Path, tmp_path: Path) -> None:
    report = import_epicurious(quirky, tmp_path / "ds", add_unpaired=True)
    by_id = {r.id: r for r in load_recipes(tmp_path / "ds")}
    assert set(by_id) == {"epicurious-0", "epicurious-3", "epicurious-5", "epicurious-6",
                          "epicurious-photo-hazelnut-cookies-109469",
                          "epicurious-photo--burnt-carrots-and-parsnips-56390131"}
    assert by_id["epicurious-0"].instructions == ["Peel the apples.", "Bake."]
    pudding = by_id["epicurious-3"]  # method text sat in Ingredients; Cleaned_Ingredients gives the list
    assert pudding.instructions == [METHOD] and pudding.ingredients == ["bread", "eggs", "milk"]
    assert by_id["epicurious-6"].title == "Plain Rice"  # no title: taken from the image name
    assert by_id["epicurious-photo--burnt-carrots-and-parsnips-56390131"].title == "Burnt Carrots And Parsnips"
    assert report.skipped == {"bad_image": 3, "no_text": 1}
    assert report.fixed == {"method text in Ingredients moved to instructions": 1, "no title": 1}
    problems = "\n".join(report.problems)
    csv_path = quirky / CSV_NAME
    assert f"{csv_path}:4: row index 1: no image name ('#NAME?'); skipped" in problems
    assert f"{csv_path}:5: row index 2 has no title, ingredients or instructions; skipped" in problems
    # Row 0 spans lines 2-3 (a newline inside Instructions), so row index 3 starts on line 6.
    assert f"{csv_path}:6: row index 3: method text" in problems
    assert "unsupported image format (PSD)" in problems or "layered-dip-psd.jpg' is unreadable" in problems
    assert "'not-on-disk.jpg' is missing" in problems
    assert report.image_formats == {"GIF": 1, "JPEG": 4, "PNG": 1}


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ('{"train": [0], "dev": [5]}', "unknown partition 'dev'"),
        ('{"train": [0, 5], "val": [5]}', "row index 5 is in both 'train' and 'val'"),
        ('{"train": ["0"]}', "must be a list of integer row indices"),
        ('{"train": [0', r"split\.json:1: malformed JSON"),
    ],
)
def test_bad_split_file_is_rejected(quirky: Path, tmp_path: Path, split: str, expected: str) -> None:
    (tmp_path / "split.json").write_text(split)
    with pytest.raises(DatasetError, match=expected):
        import_epicurious(quirky, tmp_path / "ds", split_file=tmp_path / "split.json")
    assert not (tmp_path / "ds").exists()


def test_rows_missing_from_split_file_are_skipped(quirky: Path, tmp_path: Path) -> None:
    (tmp_path / "split.json").write_text('{"train": [0, 6], "test": [3]}')
    report = import_epicurious(quirky, tmp_path / "ds", split_file=tmp_path / "split.json")
    assert {r.id: r.partition for r in load_recipes(tmp_path / "ds")} == {
        "epicurious-0": "train", "epicurious-3": "test", "epicurious-6": "train"}
    assert report.skipped["not_in_split_file"] == 1  # row 5 (the PNG salad)
    assert report.image_formats == {"GIF": 1, "JPEG": 2}


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        (["", "Title", "Ingredients", "Image_Name"], ["0", "t", "['a']", "x"], "missing column.*Instructions"),
        (HEADER, ["zero", "t", "['a']", "Mix.", "x", "[]"], "row index 'zero' is not an integer"),
        (HEADER, ["0", "t", "['a']", "Mix.", "x", "[]", "extra"], "row has 7 fields"),
    ],
)
def test_malformed_csv_is_rejected(tmp_path: Path, header: list[str], row: list[str], expected: str) -> None:
    folder = tmp_path / "kaggle"
    (folder / "Food Images").mkdir(parents=True)
    with open(folder / CSV_NAME, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, row])
    with pytest.raises(DatasetError, match=expected):
        import_epicurious(folder, tmp_path / "ds")


def test_import_command(quirky: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "ds"
    result = runner.invoke(_cli(), ["data", "import", "epicurious", str(quirky), "--out", str(out), "--add-unpaired"])
    assert result.exit_code == 0, result.output
    assert "wrote 6 recipes" in result.stdout and "no image name" in result.stdout
    result = runner.invoke(_cli(), ["data", "import", "epicurious", str(tmp_path / "nope"), "--out", str(out)])
    assert result.exit_code == 1 and "does not exist" in result.stderr and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(_cli(), ["data", "import", "epicurious", str(tmp_path / "empty"), "--out", str(out)])
    assert result.exit_code == 1 and "expected" in result.stderr
