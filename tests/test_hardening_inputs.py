"""Hardening (issue 17): the bad-input corpus as a test suite. Each case names its expected clear
error or counted skip; none may crash (a traceback) or pass silently. Cases are built here, cheaply:
a PNG header that claims 30000x30000 pixels stands in for the real file. docs/hardening.md counts
them."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from malm_edge.cli.root import app
from malm_edge.edge.preprocess import ImageError, check_image_file, load_rgb
from malm_edge.training.data.canonical import DatasetError, check_dataset, inspect_image, load_recipes
from malm_edge.training.data.epicurious import CSV_NAME, import_epicurious
from malm_edge.training.data.limits import MAX_CELL_CHARS, MAX_ITEMS, MAX_LINE_CHARS, MAX_RECORD_BYTES
from malm_edge.training.data.recipe1m import Recipe1MOptions, import_recipe1m

EPI_HEADER = ["", "Title", "Ingredients", "Instructions", "Image_Name", "Cleaned_Ingredients"]


def _record(**fields) -> dict:
    base = {"id": "r", "title": "Soup", "ingredients": ["water"], "instructions": ["Boil."], "images": [],
            "partition": "train"}
    return {**base, **fields}


def _line(**fields) -> bytes:
    return json.dumps(_record(**fields)).encode()


# ----------------------------------------------------------------------------- recipes.jsonl lines

LINE_CASES = {
    "not_json": (b"{not json", "malformed JSON"),
    "deep_nesting": (b"[" * 100_000, "nested too deeply"),
    "not_utf8": (b'{"id": "\xff"}', "not valid UTF-8"),
    "null": (b"null", "expected a JSON object"),
    "a_list": (b"[1, 2]", "expected a JSON object"),
    "missing_fields": (b'{"id": "x"}', "missing fields"),
    "bool_id": (_line(id=True), "'id' must be a non-empty string"),
    "empty_id": (_line(id=""), "'id' must be a non-empty string"),
    "int_title": (_line(title=5), "'title' must be a string"),
    "ingredients_not_list": (_line(ingredients="salt"), "'ingredients' must be a list of strings"),
    "ingredient_int": (_line(ingredients=["salt", 3]), "'ingredients'[1] must be a string"),
    "empty_image_path": (_line(images=[" "]), "'images' holds an empty path"),
    "unknown_partition": (_line(partition="dev"), "unknown partition 'dev'"),
    "class_object": (_line(**{"class": {"a": 1}}), "'class' must be a string or null"),
    "no_title_no_ingredients": (_line(title="", ingredients=[]), "neither a title nor ingredients"),
    "whitespace_only_text": (_line(title="  \t ", ingredients=["   "]), "neither a title nor ingredients"),
    "nul_in_title": (_line(title="So\x00up"), "NUL or other control character"),
    "control_char_in_step": (_line(instructions=["Boil\x1b[2J."]), "'instructions[0]' holds a NUL"),
    "title_too_long": (_line(title="t" * 1_001), "'title' is 1001 characters, over the limit"),
    "line_too_long": (_line(ingredients=["x" * (MAX_LINE_CHARS + 1)]), "'ingredients'[0] is 10001 characters"),
    "too_many_ingredients": (_line(ingredients=["a"] * 200_000), f"over the limit of {MAX_ITEMS}"),
    "record_over_byte_limit": (_line(instructions=["y" * 9_000] * 500), f"over the limit of {MAX_RECORD_BYTES}"),
    "image_dotdot": (_line(images=["../outside.jpg"]), "leaves the dataset's images folder"),
    "image_nested_dotdot": (_line(images=["a/../../x.jpg"]), "leaves the dataset's images folder"),
    "image_backslash_dotdot": (_line(images=["..\\x.jpg"]), "leaves the dataset's images folder"),
}


def _dataset(folder: Path, lines: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipes.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return folder


@pytest.mark.parametrize("case", sorted(LINE_CASES))
def test_bad_line_is_counted_by_check_and_stops_strict_readers(tmp_path: Path, case: str) -> None:
    raw, expected = LINE_CASES[case]
    folder = _dataset(tmp_path / "ds", [_line(id="good"), raw])
    report = check_dataset(folder, check_images=False)
    assert (report.n_recipes, report.n_bad_lines) == (1, 1), report.problems
    file, line, message = report.problems[0]
    assert line == 2 and expected in message, message
    with pytest.raises(DatasetError, match=r"recipes\.jsonl:2: "):  # training reads strictly
        load_recipes(folder)


def test_duplicate_id_is_counted(tmp_path: Path) -> None:
    folder = _dataset(tmp_path / "ds", [_line(id="a"), _line(id="a")])
    report = check_dataset(folder, check_images=False)
    assert report.n_bad_lines == 1 and "duplicate id 'a' (first on line 1)" in report.problems[0][2]


# ----------------------------------------------------------------------------- images: one rule everywhere


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height (no pixel data): enough for the size check."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = struct.pack(">I", 2) + b"IDAT" + b"\x78\x9c" + struct.pack(">I", zlib.crc32(b"IDAT\x78\x9c"))
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


def _psd(width: int = 4, height: int = 4) -> bytes:
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    return header + bytes(4) + bytes(4) + bytes(4) + struct.pack(">H", 0) + bytes(3 * width * height)


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    import io

    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _make_image(folder: Path, case: str) -> Path:
    path = folder / f"{case}.jpg"
    if case == "folder":
        path.mkdir()
    elif case == "not_an_image":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG at all")
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "truncated_jpeg":
        data = _jpeg()
        path.write_bytes(data[: len(data) // 2])
    elif case == "tiff":
        Image.new("RGB", (8, 8)).save(path, format="TIFF")
    elif case == "psd":
        path.write_bytes(_psd())
    elif case == "bomb_30000":
        path.write_bytes(_png_header(30_000, 30_000))
    elif case == "png_12000":
        path.write_bytes(_png_header(12_000, 12_000))
    elif case == "png_9000":  # 81M pixels: under PIL's own 89M warning, over the project's 64M
        path.write_bytes(_png_header(9_000, 9_000))
    elif case == "zero_width":
        path.write_bytes(_png_header(0, 10))
    return path


IMAGE_CASES = {
    "missing": "missing",
    "folder": "a folder, not an image file",
    "not_an_image": "unreadable",
    "empty_file": "unreadable",
    "truncated_jpeg": "truncated",
    "tiff": "unsupported image format (TIFF)",
    "psd": "unsupported image format (PSD)",
    "bomb_30000": "too large",
    "png_12000": "too large",
    "png_9000": "too large",
    "zero_width": "unreadable",
}


@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_bad_image_same_verdict_in_check_training_and_search(tmp_path: Path, case: str) -> None:
    images = tmp_path / "images"
    images.mkdir()
    path = _make_image(images, case) if case != "missing" else images / "missing.jpg"
    image_format, reason = inspect_image(path)  # data check and both importers
    assert reason is not None and IMAGE_CASES[case] in reason, reason
    with pytest.raises(ImageError):  # search (and the PWA's server-side twin)
        check_image_file(path)
    with pytest.raises(ImageError):  # training's decoder (RecipeImageDataset skips and counts these)
        load_rgb(path)
    folder = _dataset(tmp_path / "ds", [_line(id="a", images=[str(path)])])
    report = check_dataset(folder)  # the default check decodes
    assert report.n_missing_images + report.n_unreadable_images == 1
    assert IMAGE_CASES[case] in report.problems[0][2]


def test_good_images_pass_everywhere_including_a_gif_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_bytes(_jpeg())
    Image.new("P", (12, 10)).save(tmp_path / "gif.jpg", format="GIF")
    for name, expected in (("photo.jpg", "JPEG"), ("gif.jpg", "GIF")):
        assert inspect_image(tmp_path / name) == (expected, None)
        assert check_image_file(tmp_path / name) == expected
        assert load_rgb(tmp_path / name).mode == "RGB"


def test_check_without_decoding_says_so(tmp_path: Path) -> None:
    (tmp_path / "t.jpg").write_bytes(_jpeg()[:300])
    folder = _dataset(tmp_path / "ds", [_line(id="a", images=["../t.jpg".replace("../", str(tmp_path) + "/")])])
    result = CliRunner().invoke(app, ["data", "check", str(folder), "--images", "verify"])
    assert "images were not decoded (check: verify)" in result.output and "--images decode" in result.output
    result = CliRunner().invoke(app, ["data", "check", str(folder)])
    assert result.exit_code == 1 and "truncated" in result.output.lower()


# ----------------------------------------------------------------------------- Recipe1M


def _r1m(root: Path, layer1: list | str, layer2: list | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "layer1.json").write_text(layer1 if isinstance(layer1, str) else json.dumps(layer1))
    (root / "layer2.json").write_text(json.dumps(layer2 or []))
    return root


def _r1m_record(index: int, **fields) -> dict:
    base = {"id": f"id{index:04d}", "title": f"Dish {index}", "partition": "train",
            "ingredients": [{"text": "salt"}], "instructions": [{"text": "Mix."}]}
    return {**base, **fields}


R1M_ERRORS = {
    "title_int": ({"title": 3}, "record 0 (id 'id0000'): 'title' must be a string, got int"),
    "missing_partition": ({"partition": None}, "'partition' must be a string, got NoneType"),
    "empty_id": ({"id": ""}, "empty 'id'"),
    "unknown_partition": ({"partition": "dev"}, "unknown partition 'dev'"),
    "ingredients_strings": ({"ingredients": ["salt"]}, "'ingredients' must be a list of {text} objects"),
}


@pytest.mark.parametrize("case", sorted(R1M_ERRORS))
def test_recipe1m_bad_record_strict_names_it_and_skip_bad_counts_it(tmp_path: Path, case: str) -> None:
    fields, expected = R1M_ERRORS[case]
    records = [_r1m_record(0, **fields)] + [_r1m_record(i) for i in range(1, 40)]
    root = _r1m(tmp_path / "r1m", records)
    with pytest.raises(DatasetError) as error:
        import_recipe1m(root, tmp_path / "strict")
    assert expected in str(error.value) and not (tmp_path / "strict").exists()
    summary = import_recipe1m(root, tmp_path / "lenient", Recipe1MOptions(skip_bad=True))
    assert summary["n_recipes"] == 39 and summary["counts"]["skipped_bad_record"] == 1
    assert expected in summary["problems"][0]
    assert len(load_recipes(tmp_path / "lenient")) == 39


def test_recipe1m_missing_title_key_and_empty_title(tmp_path: Path) -> None:
    record = _r1m_record(0)
    del record["title"]
    with pytest.raises(DatasetError, match="missing 'title'"):
        import_recipe1m(_r1m(tmp_path / "a", [record]), tmp_path / "out")
    # An empty title is not malformed: kept when there are ingredients, dropped (counted) when not.
    summary = import_recipe1m(_r1m(tmp_path / "b", [_r1m_record(0, title=""),
                                                    _r1m_record(1, title=" ", ingredients=[{"text": "  "}])]),
                              tmp_path / "out2")
    assert summary["n_recipes"] == 1 and summary["counts"]["dropped_no_title_or_ingredients"] == 1


def test_recipe1m_text_limits_are_applied_and_counted(tmp_path: Path) -> None:
    records = [
        _r1m_record(0, title="Nul\x00 soup"),
        _r1m_record(1, ingredients=[{"text": "a"}] * 200_000),
        _r1m_record(2, instructions=[{"text": "z" * (MAX_LINE_CHARS + 5)}]),
    ]
    summary = import_recipe1m(_r1m(tmp_path / "r1m", records), tmp_path / "out")
    counts = summary["counts"]
    assert counts["fixed_control_chars_removed"] == 1
    assert counts["fixed_list_truncated"] == 1 and counts["fixed_text_truncated"] == 1
    by_id = {r.id: r for r in load_recipes(tmp_path / "out")}  # and the result passes the strict reader
    assert by_id["id0000"].title == "Nul soup" and len(by_id["id0001"].ingredients) == MAX_ITEMS


def test_recipe1m_image_ids_that_leave_the_folder(tmp_path: Path) -> None:
    layer2 = [{"id": "id0000", "images": [{"id": "../../etc/passwd"}]}]
    root = _r1m(tmp_path / "r1m", [_r1m_record(i) for i in range(40)], layer2)
    with pytest.raises(DatasetError, match="bad image id '../../etc/passwd'"):
        import_recipe1m(root, tmp_path / "out")
    summary = import_recipe1m(root, tmp_path / "out", Recipe1MOptions(skip_bad=True))
    assert summary["counts"]["skipped_bad_record"] == 1 and summary["n_recipes"] == 40


def test_recipe1m_skip_bad_thresholds(tmp_path: Path) -> None:
    all_bad = _r1m(tmp_path / "bad", [_r1m_record(i, title=1) for i in range(5)])
    with pytest.raises(DatasetError, match="no recipe kept .5 malformed records skipped.; nothing written"):
        import_recipe1m(all_bad, tmp_path / "out", Recipe1MOptions(skip_bad=True))
    many_bad = _r1m(tmp_path / "many", [_r1m_record(i, title=1 if i % 3 == 0 else f"D{i}") for i in range(30)])
    with pytest.raises(DatasetError, match="10 of 30 records are malformed, over the --max-bad 0.05"):
        import_recipe1m(many_bad, tmp_path / "out", Recipe1MOptions(skip_bad=True))
    summary = import_recipe1m(many_bad, tmp_path / "out", Recipe1MOptions(skip_bad=True, max_bad_fraction=0.5))
    assert summary["n_recipes"] == 20
    assert not (tmp_path / "out" / ".recipes.tmp").exists()


def test_recipe1m_cli_skip_bad_and_the_decode_hint(tmp_path: Path) -> None:
    root = _r1m(tmp_path / "r1m", [_r1m_record(0, title=1)] + [_r1m_record(i) for i in range(1, 40)])
    runner = CliRunner()
    strict = runner.invoke(app, ["data", "import", "recipe1m", str(root), "--out", str(tmp_path / "a")])
    assert strict.exit_code == 1 and "'title' must be a string" in strict.output
    lenient = runner.invoke(app, ["data", "import", "recipe1m", str(root), "--out", str(tmp_path / "b"),
                                  "--skip-bad"])
    assert lenient.exit_code == 0, lenient.output
    assert "skipped_bad_record: 1" in lenient.output and "malm-edge data check" in lenient.output


# ----------------------------------------------------------------------------- Epicurious


def _kaggle(folder: Path, rows: list[list[str]], photos: dict[str, bytes | None] | None = None,
            raw_csv: str | None = None) -> Path:
    images = folder / "Food Images"
    images.mkdir(parents=True)
    for name, data in (photos or {}).items():
        if data is None:
            (images / f"{name}.jpg").mkdir()
        else:
            (images / f"{name}.jpg").write_bytes(data)
    with open(folder / CSV_NAME, "w", encoding="utf-8", newline="") as handle:
        if raw_csv is not None:
            handle.write(raw_csv)
        else:
            writer = csv.writer(handle)
            writer.writerow(EPI_HEADER)
            writer.writerows(rows)
    return folder


def _epi_row(index: int, name: str | None = None, **cells) -> list[str]:
    row = {"Title": f"Dish {index}", "Ingredients": "['salt']", "Instructions": "Mix.",
           "Image_Name": name or f"dish-{index}", "Cleaned_Ingredients": "['salt']", **cells}
    return [str(index), row["Title"], row["Ingredients"], row["Instructions"], row["Image_Name"],
            row["Cleaned_Ingredients"]]


def _good_photos(n: int) -> dict[str, bytes]:
    data = _jpeg((16, 12))
    return {f"dish-{i}": data for i in range(n)}


@pytest.mark.parametrize(
    ("image_name", "expected"),
    [("../secret", "not a plain file name"), ("/etc/passwd", "not a plain file name"),
     ("sub/dish", "not a plain file name"), ("..", "not a plain file name")],
)
def test_epicurious_image_names_that_leave_the_folder_are_skipped_and_counted(tmp_path: Path, image_name: str,
                                                                              expected: str) -> None:
    (tmp_path / "secret.jpg").write_bytes(_jpeg((8, 8)))  # the file outside exists: still refused
    src = _kaggle(tmp_path / "kaggle", [_epi_row(0), _epi_row(1, name=image_name)], _good_photos(1))
    report = import_epicurious(src, tmp_path / "out")
    assert report.n_recipes == 1 and report.skipped == {"bad_image": 1}
    assert any(expected in p for p in report.problems)


def test_epicurious_bad_photos_are_skipped_and_counted(tmp_path: Path) -> None:
    jpeg = _jpeg()
    photos = {**_good_photos(1), "dish-1": jpeg[: len(jpeg) // 2], "dish-2": None, "dish-3": _psd(),
              "dish-4": _png_header(30_000, 30_000)}
    src = _kaggle(tmp_path / "kaggle", [_epi_row(i) for i in range(5)], photos)
    report = import_epicurious(src, tmp_path / "out")
    assert report.n_recipes == 1 and report.skipped == {"bad_image": 4}
    problems = "\n".join(report.problems)
    for expected in ("truncated", "is a folder", "unsupported image format (PSD)", "too large"):
        assert expected in problems


def test_epicurious_text_limits_and_blank_rows(tmp_path: Path) -> None:
    rows = [_epi_row(0, Title="Nul\x00 Pie"), _epi_row(1, Title="   ", Ingredients="['  ']", Instructions=" \n "),
            _epi_row(2, Instructions="\n".join(["step"] * (MAX_ITEMS + 10)))]
    src = _kaggle(tmp_path / "kaggle", rows, _good_photos(3))
    report = import_epicurious(src, tmp_path / "out")
    assert report.skipped == {"no_text": 1}
    assert report.fixed.get("control chars removed") == 1 and report.fixed.get("list truncated") == 1
    assert len(load_recipes(tmp_path / "out")) == 2


@pytest.mark.parametrize(
    ("raw_row", "expected"),
    [
        ('1,Short,"[\'a\']",Mix.,dish-1\n', "row has 5 fields where the header has 6"),
        ('1,"Open quote,[],Mix.,dish-1,[]\n2,Next,[],Mix.,dish-2,[]\n', "a quote left open?"),
        ('1,Long,"[\'' + "a" * (MAX_CELL_CHARS + 1) + '\']",Mix.,dish-1,[]\n', "over the limit of"),
        ('one,Bad index,"[\'a\']",Mix.,dish-1,[]\n', "row index 'one' is not an integer"),
        ('0,Again,"[\'a\']",Mix.,dish-1,[]\n', "duplicate row index 0"),
    ],
)
def test_epicurious_malformed_rows_strict_and_skip_bad(tmp_path: Path, raw_row: str, expected: str) -> None:
    good = "".join(f'{i},Dish {i},"[\'salt\']",Mix.,dish-{i % 3},[]\n' for i in (0, 3, 4, 5, 6, 7, 8, 9, 10,
                                                                            11, 12, 13, 14, 15, 16, 17, 18,
                                                                            19, 20, 21, 22, 23))
    src = _kaggle(tmp_path / "kaggle", [], _good_photos(3), raw_csv=",".join(EPI_HEADER) + "\n" + good + raw_row)
    with pytest.raises(DatasetError, match=expected):
        import_epicurious(src, tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    report = import_epicurious(src, tmp_path / "lenient", skip_bad=True)
    assert report.skipped.get("malformed_row") == 1 and report.n_recipes == 22
    assert any(expected in p for p in report.problems)


def test_epicurious_skip_bad_fails_when_nothing_is_kept(tmp_path: Path) -> None:
    raw = ",".join(EPI_HEADER) + "\n" + "1,Short,x\n2,Short,y\n"
    src = _kaggle(tmp_path / "kaggle", [], {}, raw_csv=raw)
    with pytest.raises(DatasetError, match="no recipe kept .2 malformed rows skipped.; nothing written"):
        import_epicurious(src, tmp_path / "out", skip_bad=True)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- training and search


def test_training_refuses_an_escaping_image_path_by_line(tmp_path: Path) -> None:
    from malm_edge.training.data.dataset import RecipeImageDataset

    folder = _dataset(tmp_path / "ds", [_line(id="a", images=["ok.jpg"]), _line(id="b", images=["../../x.jpg"])])
    with pytest.raises(DatasetError, match=r"recipes\.jsonl:2: image path '../../x.jpg' leaves"):
        RecipeImageDataset(folder, "train", tokenizer=None, transform=None)


def test_search_names_a_photo_in_an_unsupported_format(tmp_path: Path) -> None:
    from malm_edge.edge.preprocess import UnsupportedImageError, preprocess_image

    path = tmp_path / "layers.jpg"
    path.write_bytes(_psd())
    with pytest.raises(UnsupportedImageError, match=r"layers\.jpg: unsupported image format \(PSD\)"):
        preprocess_image(path)
