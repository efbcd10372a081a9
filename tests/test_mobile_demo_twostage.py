"""The PWA (mobile_demo/app/js/twostage.js) on table versions 3 and 2, in headless Chromium, against edge/.

On the shared two-stage test table (tests/edge_bundle_fixture.py, table version 3: rows 3 and 10
repeat rows 1 and 2, a 40-row prefilter over 200 rows) the page's JavaScript returns the same rows
in the same order as edge/twostage.py for table rows (ties), blends and random queries, scores
within 1e-5; a photo searched through the page ranks as `malm-edge search` does on that bundle;
copies of the bundle whose table is rewritten as version 2, or whose version 3 entry predates
`query_bits` (the Hamming prefilter), are still read and searched alike; a bad `query_bits` is
refused with edge's message.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from edge_bundle_fixture import get_bundle, rewrite_as_table_v2
from test_mobile_demo import (  # noqa: F401 - `browser` is a fixture
    _shared_photos,
    assert_same_ranking,
    browser,
    edge_search,
    open_ready,
    search_photo,
)
from test_native_twostage import K, parity_queries

from malm_edge.edge.bundle import BundleError, read_bundle
from malm_edge.edge.demo_server import make_server
from malm_edge.edge.table import open_bundle_table, search_topk

pytestmark = pytest.mark.browser

BROWSER_SEARCH = """async ([queries, k]) => {
  const { makeTable, searchTopK } = await import('./js/topk.js');
  const manifest = await (await fetch('bundle/manifest.json')).json();
  const get = async (file) => (await (await fetch('bundle/' + file)).arrayBuffer());
  const t = manifest.table;
  const scales = t.scales_file ? await get(t.scales_file) : null;
  const table = makeTable(t, await get(t.file), scales, await get(t.codes_file));
  return queries.map((q) => searchTopK(table, Float32Array.from(q), k));
}"""


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return get_bundle(tmp_path_factory, targets=("onnx",), table_format="twostage")


def _serve(bundle: Path) -> Iterator[str]:
    server = make_server(bundle, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server_url(bundle_dir: Path) -> Iterator[str]:
    yield from _serve(bundle_dir)


@pytest.fixture(scope="module")
def v2_bundle_dir(bundle_dir: Path, tmp_path_factory) -> Path:
    """A copy of the shared bundle whose table is rewritten as table version 2 (same rows, ties kept)."""
    return rewrite_as_table_v2(bundle_dir, tmp_path_factory.mktemp("edge_bundle_v2") / "bundle")


@pytest.fixture(scope="module")
def v2_server_url(v2_bundle_dir: Path) -> Iterator[str]:
    yield from _serve(v2_bundle_dir)


def _with_table_edit(bundle: Path, out: Path, edit) -> Path:  # noqa: ANN001
    copy = Path(shutil.copytree(bundle, out))
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text())
    edit(data["table"])
    manifest.write_text(json.dumps(data))
    return copy


@pytest.fixture(scope="module")
def hamming_bundle_dir(bundle_dir: Path, tmp_path_factory) -> Path:
    """A copy of the shared bundle as written before `query_bits`: its v3 table keeps the Hamming prefilter."""
    return _with_table_edit(bundle_dir, tmp_path_factory.mktemp("edge_bundle_hamming") / "bundle",
                            lambda table: table.pop("query_bits"))


@pytest.fixture(scope="module")
def hamming_server_url(hamming_bundle_dir: Path) -> Iterator[str]:
    yield from _serve(hamming_bundle_dir)


def assert_page_ranks_like_edge(browser, server_url: str, bundle_dir: Path, version: int) -> None:  # noqa: ANN001
    """The whole page, loaded from `server_url`, returns edge's rows (ties included) and scores."""
    table = open_bundle_table(read_bundle(bundle_dir))
    assert table.version == version
    queries = parity_queries(bundle_dir)
    expected_rows, expected_scores = search_topk(table, queries, k=K)
    context = browser.new_context()
    page = context.new_page()
    open_ready(page, server_url)
    found = page.evaluate(BROWSER_SEARCH, [queries.tolist(), K])
    context.close()
    for q, hits in enumerate(found):
        assert hits["rows"] == expected_rows[q].tolist(), f"query {q}"
        np.testing.assert_allclose(hits["scores"], expected_scores[q], atol=1e-5)


def test_page_two_stage_search_returns_edge_rows_ties_included(browser, server_url, bundle_dir) -> None:
    assert_page_ranks_like_edge(browser, server_url, bundle_dir, version=3)


def test_page_still_searches_a_version_2_table_like_edge(browser, v2_server_url, v2_bundle_dir) -> None:
    assert read_bundle(v2_bundle_dir).manifest.table.scales_file == "table.scales.f32"
    assert_page_ranks_like_edge(browser, v2_server_url, v2_bundle_dir, version=2)


def test_photo_search_in_the_page_matches_edge(browser, server_url, bundle_dir) -> None:
    context = browser.new_context()
    page = context.new_page()
    open_ready(page, server_url)
    for photo in _shared_photos()[:3]:
        assert_same_ranking(search_photo(page, photo), edge_search(photo, bundle_dir, "tiny_fp32_onnx"))
    context.close()


def test_page_searches_a_version_3_table_without_query_bits_like_edge(browser, hamming_server_url,
                                                                     hamming_bundle_dir) -> None:
    assert open_bundle_table(read_bundle(hamming_bundle_dir)).query_bits == 1
    assert_page_ranks_like_edge(browser, hamming_server_url, hamming_bundle_dir, version=3)


MAKE_TABLE = """async (edit) => {
  const { makeTwoStageTable } = await import('./js/twostage.js');
  const { bundleFiles, chooseEncoder } = await import('./js/bundle.js');
  const manifest = await (await fetch('bundle/manifest.json')).json();
  const t = { ...manifest.table, ...edit };
  const get = async (file) => (await (await fetch('bundle/' + file)).arrayBuffer());
  try {
    bundleFiles({ ...manifest, table: t }, chooseEncoder(manifest));
    makeTwoStageTable(t, await get(t.file), null, await get(t.codes_file));
    return 'accepted';
  } catch (err) {
    return err.message.replace(/^.*manifest[.]json: /, '');
  }
}"""


@pytest.mark.parametrize("edit", [{"query_bits": 5}, {"query_bits": 0}, {"query_bits": "4"}, {"query_bits": True},
                                  {"query_bits": 2.5}, {"query_bits": 4, "version": 1, "dtype": "int8"}],
                         ids=["range", "zero", "str", "bool", "float", "version-1"])
def test_page_refuses_a_bad_query_bits_like_edge(browser, server_url, bundle_dir, tmp_path, edit: dict) -> None:
    tampered = _with_table_edit(bundle_dir, tmp_path / "bundle", lambda table: table.update(edit))
    with pytest.raises(BundleError) as caught:
        read_bundle(tampered)
    context = browser.new_context()
    page = context.new_page()
    open_ready(page, server_url)
    message = page.evaluate(MAKE_TABLE, edit)
    context.close()
    assert str(caught.value).endswith(": " + message), (message, str(caught.value))

SEARCH_TABLE = """async ([entry, values, codes, queries, k]) => {
  const { makeTwoStageTable, searchTwoStage } = await import('./js/twostage.js');
  const table = makeTwoStageTable(entry, Uint8Array.from(values).buffer, null, Uint8Array.from(codes).buffer);
  return queries.map((q) => searchTwoStage(table, Float32Array.from(q), k).rows);
}"""


@pytest.mark.parametrize("dim,query_bits", [(70, 4), (128, 3), (128, 1)])
def test_page_searches_multi_word_tables_like_edge(browser, server_url, tmp_path, dim: int, query_bits: int) -> None:
    """Codes of 2 words (the phone's 65..128 dims) and a partial last word, weighted and Hamming."""
    from malm_edge.edge.twostage import read_twostage_table, search_twostage, write_twostage_table

    rng = np.random.default_rng(dim + query_bits)
    rows = rng.standard_normal((8, dim))[rng.integers(0, 8, 600)] + 0.5 * rng.standard_normal((600, dim))
    rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    rows[[10, 400]] = rows[7]  # ties
    entry = write_twostage_table(tmp_path, rows, candidates=40, query_bits=query_bits)
    queries = np.concatenate([rows[[7, 3]], rng.standard_normal((10, dim))]).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    expected, _ = search_twostage(read_twostage_table(tmp_path, entry), queries, k=K)
    values = list((tmp_path / entry.file).read_bytes())
    codes = list((tmp_path / entry.codes_file).read_bytes())
    context = browser.new_context()
    page = context.new_page()
    open_ready(page, server_url)
    found = page.evaluate(SEARCH_TABLE, [entry.to_dict(), values, codes, queries.tolist(), K])
    context.close()
    assert found == expected.tolist()
    assert expected[0, :3].tolist() == [7, 10, 400]
