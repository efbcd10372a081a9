"""Photo -> top-k recipes from a bundle alone: preprocess -> encoder -> table top-k -> catalog.

The reference the phone apps are checked against. Loads once (validated bundle, memory-mapped
table, catalog connection, encoder), then searches many times.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from malm_edge.edge.backends import EncoderBackend, select_backend
from malm_edge.edge.bundle import Bundle, BundleError, read_bundle
from malm_edge.edge.catalog import Catalog, CatalogError
from malm_edge.edge.preprocess import DEFAULT_MAX_PIXELS, ImageSource, preprocess_image
from malm_edge.edge.table import DEFAULT_CHUNK_ROWS, open_bundle_table, search_topk


class Retriever:
    """Image-to-recipe search over one bundle.

    Args:
        bundle_dir: The bundle folder (validated with checksums before anything is loaded).
        backend: A target ("onnx" | "executorch" | "coreml"), an encoder name, an
            `EncoderBackend` instance, or None for the automatic choice (`select_backend`).
        threads: Encoder threads (None: the runtime's default).
        chunk_rows: Table rows scored per chunk.
        max_pixels: Larger photos are refused.
        require_signature: Trusted Ed25519 public key (PEM): refuse an unsigned or wrongly signed bundle.
    """

    def __init__(self, bundle_dir: str | os.PathLike, backend: str | EncoderBackend | None = None,
                 threads: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 require_signature: str | os.PathLike | None = None) -> None:
        self.bundle: Bundle = read_bundle(bundle_dir, require_signature=require_signature)
        self.preprocessing = self.bundle.manifest.preprocessing
        self.table = open_bundle_table(self.bundle)
        try:
            self.catalog = Catalog(self.bundle.catalog_path, expected_count=self.table.rows)
        except CatalogError as err:
            raise BundleError(str(err)) from err
        if isinstance(backend, EncoderBackend):
            self.backend = backend
        else:
            try:
                self.backend = select_backend(self.bundle, backend, threads)
            except BaseException:
                self.catalog.close()
                raise
        self.chunk_rows, self.max_pixels = chunk_rows, max_pixels
        entries = {e.name: e for e in self.bundle.manifest.encoders}
        entry = entries.get(self.backend.encoder or "")
        self.normalized_input = entry is None or entry.pixel_input == "normalized"

    @property
    def bundle_dir(self) -> Path:
        return self.bundle.root

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> "Retriever":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """(1, 3, S, S) float32 encoder input for a photo path or PIL image."""
        return preprocess_image(image, self.preprocessing, self.max_pixels, self.normalized_input)

    def embed_image(self, image: ImageSource) -> np.ndarray:
        """(D,) float32 L2-normalised embedding of one photo."""
        return self.backend.embed(self.preprocess(image))[0]

    def search_embedding(self, embedding: np.ndarray, k: int = 5) -> list[dict[str, Any]]:
        """Top-k recipes for a (D,) query embedding: [{rank, id, title, score, row}], best first."""
        rows, scores = search_topk(self.table, embedding, k, self.chunk_rows)
        recipes = self.catalog.lookup(rows.tolist())
        return [{"rank": rank, "id": recipe["id"], "title": recipe["title"],
                 "score": float(score), "row": int(row)}
                for rank, (recipe, row, score) in enumerate(zip(recipes, rows, scores), start=1)]

    def search(self, image: ImageSource, k: int = 5) -> list[dict[str, Any]]:
        """Top-k recipes for a photo: [{rank, id, title, score, row}], best first.

        Raises:
            ImageError: the photo cannot be read.
        """
        return self.search_embedding(self.embed_image(image), k)

    def search_text(self, query: str, k: int = 10) -> list[dict[str, Any]]:
        """Recipes whose title or ingredients contain every word of `query` (FTS5, bm25 order)."""
        return [{"rank": rank, "id": rid, "title": title, "row": row}
                for rank, (row, rid, title) in enumerate(self.catalog.text_search(query, k), 1)]
