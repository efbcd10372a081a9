"""Per-(item, augmentation) results of a frozen network, computed once and served after.

When every item cycles through K fixed augmentations (LoopSpec.augmentations, EpochSampler), what a
frozen network makes of an augmented image is the same every K epochs: distillation caches the
frozen teacher's image embeddings, and the `lite` teacher caches its frozen trunk's feature grids
(MobileCLIP's dataset reinforcement). After K epochs the frozen network is not run at all. With a
`path`, a complete cache is written there once (atomically, safetensors) and read back by the next run
with the same key, so the seeds of a study and the rows of an ablation compute it once.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)


class AugmentationCache:
    """Results per (item, augmentation slot), filled lazily.

    Args:
        n_items: Items of the training set.
        augmentations: K fixed augmentations per item (0: fresh augmentations, nothing is cached).
        shape: Shape of one result, e.g. (D,) for an embedding or (C, g, g) for a feature grid.
        dtype: Storage dtype (float16 halves the memory of large grids).
        path: Where a complete cache is kept between runs (None: in memory only).
    """

    def __init__(
        self,
        n_items: int,
        augmentations: int,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        path: Path | None = None,
    ) -> None:
        self.enabled = augmentations > 0
        slots = max(augmentations, 1) if self.enabled else 0
        self.results = torch.zeros(n_items if self.enabled else 0, slots, *shape, dtype=dtype)  # (N, K, ...)
        self.filled = torch.zeros(n_items if self.enabled else 0, slots, dtype=torch.bool)  # (N, K)
        self.path = path if self.enabled else None
        self.saved = False
        if self.path is not None and self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            results = load_file(str(self.path))["results"]
        except Exception as error:  # noqa: BLE001 - a bad cache file is recomputed, never fatal
            log.warning("ignoring unreadable feature cache %s (%s)", self.path, error)
            return
        if results.shape != self.results.shape or results.dtype != self.results.dtype:
            log.warning("ignoring feature cache %s: shape %s, expected %s", self.path, tuple(results.shape),
                        tuple(self.results.shape))
            return
        self.results, self.saved = results, True
        self.filled[:] = True
        log.info("read %d cached results from %s", self.filled.numel(), self.path)

    def save_if_complete(self) -> None:
        """Write the cache to `path` once every (item, slot) is filled (atomically)."""
        if self.path is None or self.saved or not bool(self.filled.all()):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".tmp")
        os.close(fd)
        save_file({"results": self.results.contiguous()}, tmp)
        os.replace(tmp, self.path)
        self.saved = True
        log.info("cached %d results in %s", self.filled.numel(), self.path)

    def lookup(
        self, compute: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, items: torch.Tensor, slot: int
    ) -> torch.Tensor:
        """Results of a batch, computing only the ones not cached yet: (B, *shape) on `images`' device."""
        if not self.enabled:
            return compute(images)
        missing = ~self.filled[items, slot]  # (B,)
        if missing.any():
            with torch.no_grad():
                fresh = compute(images[missing.to(images.device)]).cpu()  # (M, *shape)
            self.results[items[missing], slot] = fresh.to(self.results.dtype)
            self.filled[items[missing], slot] = True
            self.save_if_complete()
        return self.results[items, slot].to(device=images.device, dtype=torch.float32)
