"""Check an exported encoder against the eager student on real photos, through the real runtime.

For N preprocessed real photos: the cosine similarity of each exported embedding to the eager
one (mean and min), and the top-10 agreement over the recipe table, i.e. the mean over photos of
|top10(export) ∩ top10(eager)| / 10, both searched with edge's `search_topk` on the same table.
Random tensors are not enough (quantization error depends on real activation ranges).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from malm_edge.converters.executorch_runtime import ExecuTorchBackend
from malm_edge.edge.backends import (
    CoreMLBackend,
    EncoderBackend,
    OnnxBackend,
    l2_normalize,
)
from malm_edge.edge.bundle import Verification
from malm_edge.edge.table import EmbeddingTable, search_topk
from malm_edge.edge.twostage import TwoStageTable

TOP_K = 10


def eager_embeddings(model: nn.Module, pixels: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """(N, D) float32 embeddings of (N, 3, S, S) pixels from an eager model in eval mode."""
    model.eval()
    with torch.no_grad():
        parts = [model(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
    return l2_normalize(torch.cat(parts).float().numpy())


def open_backend(path: str | os.PathLike, target: str) -> EncoderBackend:
    """The edge runtime backend for an exported file ("onnx", "executorch", "coreml")."""
    if target == "coreml":

        return CoreMLBackend(path, output_name="embedding")
    return {"onnx": OnnxBackend, "executorch": ExecuTorchBackend}[target](path)


def topk_agreement(table: EmbeddingTable | TwoStageTable, reference: np.ndarray, candidate: np.ndarray,
                   k: int = TOP_K) -> float:
    """Mean over queries of |top-k(candidate) ∩ top-k(reference)| / k over `table`."""
    ref_rows, _ = search_topk(table, reference, k)  # (N, k)
    cand_rows, _ = search_topk(table, candidate, k)  # (N, k)
    k_eff = max(ref_rows.shape[1], 1)
    overlaps = [len(set(a.tolist()) & set(b.tolist())) / k_eff for a, b in zip(ref_rows, cand_rows)]
    return float(np.mean(overlaps)) if overlaps else 0.0


def compare(reference: np.ndarray, candidate: np.ndarray,
            table: EmbeddingTable | TwoStageTable | None) -> Verification:
    """`Verification` from (N, D) eager and exported embeddings (L2-normalised)."""
    cosines = np.sum(l2_normalize(reference) * l2_normalize(candidate), axis=1)  # (N,)
    agreement = topk_agreement(table, reference, candidate) if table is not None and table.rows else 1.0
    return Verification(cosine_mean=float(cosines.mean()), cosine_min=float(cosines.min()),
                        top10_agreement=agreement, n_photos=int(len(cosines)))


def parity_details(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Diagnostics that stay informative when the eager embeddings barely vary between photos.

    A collapsed or barely trained encoder maps every photo near one direction, so the plain
    cosine is ~1 whatever the export does. `centered_cosine_mean` compares the embeddings after
    removing the eager mean embedding (the part that tells photos apart); `eager_spread` is
    1 - mean pairwise cosine of the eager embeddings (near 0: parity numbers say little).
    """
    reference, candidate = l2_normalize(reference), l2_normalize(candidate)  # (N, D)
    centre = reference.mean(axis=0, keepdims=True)  # (1, D)
    centred = np.sum(l2_normalize(reference - centre) * l2_normalize(candidate - centre), axis=1)
    n = len(reference)
    pairwise = (reference @ reference.T)[np.triu_indices(n, 1)] if n > 1 else np.ones(1)
    return {"centered_cosine_mean": float(centred.mean()), "eager_spread": float(1.0 - pairwise.mean())}


def run_backend(backend: EncoderBackend, pixels: np.ndarray) -> np.ndarray:
    """(N, D) embeddings through a runtime, one photo at a time (as on the phone)."""
    return np.concatenate([backend.embed(pixels[i:i + 1]) for i in range(len(pixels))])


def verify_export(path: str | os.PathLike, target: str, reference: np.ndarray, pixels: np.ndarray,
                  table: EmbeddingTable | TwoStageTable | None = None) -> tuple[Verification, np.ndarray]:
    """Run an exported encoder on real photos and compare with the eager embeddings.

    Args:
        path: The exported file (.pte, .onnx, .mlpackage).
        target: Its runtime ("executorch" | "onnx" | "coreml").
        reference: (N, D) eager embeddings of the same photos.
        pixels: (N, 3, S, S) float32 input as the file expects it (normalised, or 0..255 RGB
            for a "rgb_0_255" encoder).
        table: The recipe table for top-10 agreement (None: agreement reported as 1.0).

    Returns:
        (Verification, (N, D) exported embeddings).
    """
    backend = open_backend(Path(path), target)
    exported = run_backend(backend, np.ascontiguousarray(pixels, dtype=np.float32))
    return compare(reference, exported, table), exported


def single_image_latency_ms(backend: EncoderBackend, pixels: np.ndarray, repeats: int = 10) -> float:
    """Median wall time (ms) of one (1, 3, S, S) embed after one warm-up call."""
    one = np.ascontiguousarray(pixels[:1], dtype=np.float32)
    backend.embed(one)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.embed(one)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))
