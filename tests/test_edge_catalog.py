"""edge/catalog.py: SQLite catalog rows in table order, lookup, FTS5 word search with safe escaping."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import pytest

from malm_edge.edge.catalog import Catalog, CatalogError, fts_query, write_catalog


@dataclass
class _Recipe:  # shaped like training's Recipe: attributes, `images` list
    id: str
    title: str
    ingredients: list[str]
    instructions: list[str]
    images: list[str] = field(default_factory=list)


def _records():
    yield {"id": "a", "title": "Chicken curry", "ingredients": ["chicken", "curry paste"],
           "instructions": ["Fry.", "Simmer."], "image": "img/a.jpg"}
    yield _Recipe("b", "Tomato soup", ["tomato", "basil"], ["Blend."], images=["b1.jpg", "b2.jpg"])
    yield {"id": "c", "title": 'Grandma\'s "best" pie', "ingredients": ["apple", "butter"],
           "instructions": ["Bake."]}
    yield {"id": "d", "title": "Crème brûlée", "ingredients": ["cream", "sugar"], "instructions": []}


def test_rows_follow_record_order_and_lookup_round_trips(tmp_path) -> None:
    path = tmp_path / "catalog.sqlite"
    assert write_catalog(path, _records(), chunk_size=3) == 4
    with Catalog(path, expected_count=4) as catalog:
        got = catalog.lookup([3, 0, 1])
        assert [r["id"] for r in got] == ["d", "a", "b"]
        assert [r["row"] for r in got] == [3, 0, 1]
        assert got[1]["ingredients"] == ["chicken", "curry paste"]
        assert got[1]["instructions"] == ["Fry.", "Simmer."] and got[1]["image"] == "img/a.jpg"
        assert got[2]["image"] == "b1.jpg"  # first of `images`
        assert catalog.lookup([2])[0]["image"] is None
        with pytest.raises(CatalogError, match="no recipe at rows \\[7\\]"):
            catalog.lookup([7])
    assert not list(tmp_path.glob(".*.tmp"))


def test_text_search_title_and_ingredients(tmp_path) -> None:
    path = tmp_path / "catalog.sqlite"
    write_catalog(path, _records())
    with Catalog(path) as catalog:
        assert catalog.text_search("curry") == [(0, "a", "Chicken curry")]
        assert catalog.text_search("BASIL") == [(1, "b", "Tomato soup")]  # ingredient, any case
        assert catalog.text_search("apple pie") == [(2, "c", 'Grandma\'s "best" pie')]
        assert catalog.text_search("apple soup") == []  # every word required
        assert catalog.text_search("crème") == [(3, "d", "Crème brûlée")]
        assert catalog.text_search("   ") == []


@pytest.mark.parametrize("hostile", ['"', "pie\"", "title:pie", "NEAR(a b)", "pie*", "a OR", "AND",
                                     "-pie", "(", "pie'; DROP TABLE recipes; --", "^pie", "{title}"])
def test_text_search_is_safe_for_any_user_text(tmp_path, hostile) -> None:
    path = tmp_path / "catalog.sqlite"
    write_catalog(path, _records())
    with Catalog(path) as catalog:
        catalog.text_search(hostile)  # must not raise an FTS5 syntax error
        assert catalog.count == 4


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('best "pie" NEAR') == '"best" "pie" "NEAR"'
    assert fts_query("!!") is None


def test_duplicate_ids_fail_and_leave_no_file(tmp_path) -> None:
    path = tmp_path / "catalog.sqlite"
    records = [{"id": "x", "title": "A", "ingredients": [], "instructions": []}] * 2
    with pytest.raises(CatalogError, match="unique"):
        write_catalog(path, records)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_reader_checks_count_and_schema(tmp_path) -> None:
    path = tmp_path / "catalog.sqlite"
    write_catalog(path, _records())
    with pytest.raises(CatalogError, match="holds 4 recipes, expected 5"):
        Catalog(path, expected_count=5)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(CatalogError, match="not a malm-edge catalog"):
        Catalog(other)


def test_streams_a_generator_in_chunks(tmp_path) -> None:
    def many():
        for i in range(2500):
            yield {"id": f"r{i}", "title": f"dish {i}", "ingredients": ["salt"], "instructions": []}

    path = tmp_path / "catalog.sqlite"
    assert write_catalog(path, many(), chunk_size=1000) == 2500
    with Catalog(path, expected_count=2500) as catalog:
        assert catalog.lookup([2499])[0]["id"] == "r2499"
        assert len(catalog.text_search("salt", limit=7)) == 7


def test_lookup_of_more_rows_than_sqlite_binds_at_once(tmp_path) -> None:
    """A user ranking the whole catalog (search --top-k N) looks up every row in one call."""
    rows = 40_000
    path = tmp_path / "catalog.sqlite"
    recipes = ({"id": f"r{i}", "title": f"dish {i}", "ingredients": [], "instructions": []} for i in range(rows))
    assert write_catalog(path, recipes) == rows
    order = list(range(rows - 1, -1, -1))
    with Catalog(path, expected_count=rows) as catalog:
        found = catalog.lookup(order)
    assert [hit["row"] for hit in found] == order and found[0]["id"] == f"r{rows - 1}"
