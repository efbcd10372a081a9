"""The canonical dataset reader: every kind of bad line named by file:line, images, paths, `data check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from malm_edge.cli import data as data_cli
from malm_edge.training.data.canonical import (
    DatasetError,
    check_dataset,
    iter_records,
    load_recipes,
    resolve_image_path,
    write_dataset,
)
from malm_edge.training.data.records import Recipe

GOOD = {"id": "r1", "title": "Tomato soup", "ingredients": ["2 tomatoes"], "instructions": ["Boil."],
        "images": [], "partition": "train"}


def _record(**changes) -> dict:
    record = {**GOOD, **changes}
    return {k: v for k, v in record.items() if v is not ...}


def _write(folder: Path, lines: list[str | bytes | dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = b"".join(
        (line if isinstance(line, bytes) else (json.dumps(line) if isinstance(line, dict) else line).encode()) + b"\n"
        for line in lines
    )
    (folder / "recipes.jsonl").write_bytes(raw)
    return folder


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(data_cli.app, name="data")
    return app


BAD_LINES = {
    "malformed JSON": ('{"id": "x", "title": ', "malformed JSON"),
    "not an object": ("[1, 2, 3]", "expected a JSON object, got list"),
    "missing field": (_record(id="x", partition=...), "missing field 'partition'"),
    "missing fields": (_record(id="x", images=..., instructions=...), "missing fields 'instructions', 'images'"),
    "ingredients not a list": (_record(id="x", ingredients="2 tomatoes"), "'ingredients' must be a list of strings"),
    "instruction not a string": (_record(id="x", instructions=["Boil.", 3]), "'instructions'[1] must be a string"),
    "images not strings": (_record(id="x", images=[{"path": "a.jpg"}]), "'images'[0] must be a string"),
    "empty image path": (_record(id="x", images=[" "]), "'images' holds an empty path"),
    "title not a string": (_record(id="x", title=None), "'title' must be a string"),
    "empty id": (_record(id=""), "'id' must be a non-empty string"),
    "unknown partition": (_record(id="x", partition="dev"), "unknown partition 'dev'"),
    "no title nor ingredients": (_record(id="x", title=" ", ingredients=[]), "neither a title nor ingredients"),
    "invalid utf-8": (b'{"id": "x", "title": "\xff"}', "not valid UTF-8"),
}


@pytest.mark.parametrize("name", list(BAD_LINES))
def test_bad_line_is_named_by_file_and_line(tmp_path: Path, name: str) -> None:
    bad, expected = BAD_LINES[name]
    folder = _write(tmp_path / "ds", [GOOD, bad, _record(id="r3")])
    with pytest.raises(DatasetError) as caught:
        list(iter_records(folder))
    message = str(caught.value)
    assert message.startswith(f"{folder / 'recipes.jsonl'}:2: "), message
    assert expected in message

    report = check_dataset(folder, check_images=False)  # lenient: the bad line is skipped and counted
    assert (report.n_recipes, report.n_bad_lines, report.ok) == (2, 1, False)
    assert report.problems[0][1] == 2 and expected in report.problems[0][2]


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ds", [GOOD, _record(id="r2"), _record(title="Other soup")])
    with pytest.raises(DatasetError, match=r"recipes\.jsonl:3: duplicate id 'r1' \(first on line 1\)"):
        load_recipes(folder)
    skipped = []
    kept = list(iter_records(folder, strict=False, on_problem=skipped.append))
    assert [r.id for r in kept] == ["r1", "r2"]
    assert [(p.line, "duplicate id" in p.message) for p in skipped] == [(3, True)]


def test_valid_file_round_trips_and_filters_by_partition(tmp_path: Path) -> None:
    recipes = [
        Recipe("a", "Soup", ["water"], ["Boil."], [], "train"),
        Recipe("b", "Cake", ["flour", "eggs"], ["Mix.", "Bake."], ["b.jpg"], "val", class_name="dessert"),
    ]
    write_dataset(tmp_path / "ds", recipes, None)
    with open(tmp_path / "ds" / "recipes.jsonl", "a", encoding="utf-8") as handle:
        handle.write("\n   \n")  # blank lines carry nothing and are not errors
    assert load_recipes(tmp_path / "ds") == recipes
    assert [r.id for r in load_recipes(tmp_path / "ds", partition="val")] == ["b"]
    with pytest.raises(DatasetError, match="unknown partition 'dev'"):
        load_recipes(tmp_path / "ds", partition="dev")


def test_missing_folder_or_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset folder does not exist"):
        check_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"recipes\.jsonl: missing"):
        load_recipes(tmp_path / "empty")


def test_write_dataset_leaves_nothing_when_the_source_fails(tmp_path: Path) -> None:
    def broken():
        yield Recipe("a", "Soup", ["water"], ["Boil."])
        raise DatasetError("layer1.json: record 1: bad")

    with pytest.raises(DatasetError):
        write_dataset(tmp_path / "out", broken(), {"images_root": "/x"})
    assert not (tmp_path / "out").exists()


def _images_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    Image.new("RGB", (12, 10), (200, 40, 40)).save(folder / "good.jpg")
    Image.new("P", (12, 10)).save(folder / "gif_named.jpg", format="GIF")  # read for what it is
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all")
    Image.new("RGB", (12, 10)).save(folder / "scan.tif", format="TIFF")  # PIL reads it, phones don't
    return _write(folder, [
        _record(id="a", images=["good.jpg", "gif_named.jpg"]),
        _record(id="b", images=["missing.jpg"]),
        _record(id="c", images=["corrupt.jpg"], partition="val"),
        _record(id="d", images=["scan.tif"], partition="test"),
    ])


def test_missing_and_unreadable_images_are_reported_by_line(tmp_path: Path) -> None:
    folder = _images_dataset(tmp_path / "ds")
    report = check_dataset(folder)
    assert (report.n_recipes, report.n_images, report.n_missing_images, report.n_unreadable_images) == (4, 5, 1, 2)
    assert report.partitions == {"train": 2, "val": 1, "test": 1}
    lines = {line: message for _, line, message in report.problems}
    assert set(lines) == {2, 3, 4}
    assert "'missing.jpg' is missing" in lines[2]
    assert "unreadable" in lines[3]
    assert "unsupported image format (TIFF)" in lines[4]
    assert check_dataset(folder, check_images=False).ok
    assert check_dataset(folder, check_images="exists").n_missing_images == 1


def test_truncated_jpeg_is_caught_by_decode(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    folder.mkdir()
    Image.effect_noise((64, 64), 60).convert("RGB").save(folder / "full.jpg", quality=95)
    raw = (folder / "full.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(raw[: len(raw) // 2])
    _write(folder, [_record(images=["cut.jpg"])])
    report = check_dataset(folder, check_images="decode")
    assert report.n_unreadable_images == 1 and report.problems[0][1] == 1


def test_resolve_image_path_rules(tmp_path: Path) -> None:
    folder = _write(tmp_path / "ds", [GOOD])
    assert resolve_image_path(folder, "a/b.jpg") == folder / "a/b.jpg"
    assert resolve_image_path(folder, "/abs/b.jpg") == Path("/abs/b.jpg")
    assert resolve_image_path(folder, "b.jpg", images_root=tmp_path / "elsewhere") == tmp_path / "elsewhere/b.jpg"
    (folder / "dataset.json").write_text(json.dumps({"images_root": str(tmp_path / "photos")}))
    assert resolve_image_path(folder, "x/y.jpg") == tmp_path / "photos/x/y.jpg"
    (folder / "dataset.json").write_text(json.dumps({"images_root": "../rel"}))
    assert resolve_image_path(folder, "y.jpg") == folder / "../rel/y.jpg"
    (folder / "dataset.json").write_text("{oops")
    with pytest.raises(DatasetError, match=r"dataset\.json:1: malformed JSON"):
        resolve_image_path(folder, "y.jpg")


def test_check_command_json_and_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = _images_dataset(tmp_path / "ds")
    result = runner.invoke(_cli(), ["data", "check", str(folder), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["n_missing_images"] == 1 and report["n_unreadable_images"] == 2
    assert {p["line"] for p in report["problems"]} == {2, 3, 4}

    result = runner.invoke(_cli(), ["data", "check", str(folder), "--no-images"])
    assert result.exit_code == 0, result.output
    assert "4 recipes (train 2, val 1, test 1)" in result.stdout and "ok" in result.stdout

    _write(tmp_path / "bad", [GOOD, "{nope"])
    result = runner.invoke(_cli(), ["data", "check", str(tmp_path / "bad")])
    assert result.exit_code == 1
    assert f"{tmp_path / 'bad' / 'recipes.jsonl'}:2: malformed JSON" in result.stdout

    result = runner.invoke(_cli(), ["data", "check", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_synth_command_passes_its_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    calls = []

    def fake_generate(out_dir, **kwargs):
        calls.append((out_dir, kwargs))
        if (Path(out_dir) / "recipes.jsonl").exists() and not kwargs["overwrite"]:
            raise FileExistsError(f"{out_dir / 'recipes.jsonl'} exists")
        (Path(out_dir)).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "recipes.jsonl").write_text("")
        return {"n_recipes": kwargs["n_recipes"], "images_per_second": 1234.5, "partitions": {"train": 8}}

    fake = types.ModuleType("malm_edge.training.data.synthfood.generate")
    fake.generate_synthfood = fake_generate
    monkeypatch.setitem(sys.modules, "malm_edge.training.data.synthfood.generate", fake)
    args = ["data", "synth", "--out", str(tmp_path / "sf"), "--recipes", "10", "--images-per-recipe", "2",
            "--size", "64", "--seed", "7", "--workers", "2"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert calls == [(tmp_path / "sf", dict(n_recipes=10, images_per_recipe=2, image_size=64, seed=7, workers=2,
                                            progress=True, overwrite=False))]
    assert "n_recipes: 10" in result.stdout and "images_per_second: 1234.5" in result.stdout
    assert "partitions: train 8" in result.stdout
    again = CliRunner().invoke(_cli(), args)
    assert again.exit_code == 1 and "--overwrite" in again.stderr and "Traceback" not in again.output
    assert CliRunner().invoke(_cli(), [*args, "--overwrite"]).exit_code == 0
