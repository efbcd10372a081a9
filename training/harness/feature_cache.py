"""Per-(item, augmentation) results of a frozen network, computed once and served after.

When every item cycles through K fixed augmentations (LoopSpec.augmentations, EpochSampler), what a
frozen network makes of an augmented image is the same every K epochs: distillation caches the
frozen teacher's image embeddings, and the `lite` teacher caches its frozen trunk's feature grids
(MobileCLIP's dataset reinforcement). After K epochs the frozen network is hardly run at all (only for
the few items an epoch's whole-batch cut left out so far). With `slot_paths`, each augmentation slot is
kept in its own file (atomically, safetensors, with its fill mask), written once its epoch is over and
read back by the next run with the same key: the seeds of a study and the rows of an ablation compute
it once, an interrupted run keeps the slots it finished, and a run with more augmentations reuses the
slots a run with fewer made (slot j's augmentation depends only on the augmentation seed and j).
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
        slot_paths: Where slot j is kept between runs, `slot_paths(j)` (None: in memory only).
    """

    def __init__(
        self,
        n_items: int,
        augmentations: int,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        slot_paths: Callable[[int], Path] | None = None,
    ) -> None:
        self.enabled = augmentations > 0
        slots = max(augmentations, 1) if self.enabled else 0
        self.results = torch.zeros(n_items if self.enabled else 0, slots, *shape, dtype=dtype)  # (N, K, ...)
        self.filled = torch.zeros(n_items if self.enabled else 0, slots, dtype=torch.bool)  # (N, K)
        self.slot_paths = slot_paths if self.enabled else None
        self.saved = [False] * slots
        if self.slot_paths is not None:
            for slot in range(slots):
                self._load(slot)

    def _load(self, slot: int) -> None:
        path = self.slot_paths(slot)
        if not path.is_file():
            return
        try:
            saved = load_file(str(path))
            results, filled = saved["results"], saved["filled"]
        except Exception as error:  # noqa: BLE001 - a bad cache file is recomputed, never fatal
            log.warning("ignoring unreadable feature cache %s (%s)", path, error)
            return
        expected = self.results[:, slot]  # (N, ...)
        fits = results.dtype == expected.dtype and filled.shape == self.filled[:, slot].shape
        if results.shape != expected.shape or not fits:
            log.warning("ignoring feature cache %s: shape %s, expected %s", path, tuple(results.shape),
                        tuple(expected.shape))
            return
        self.results[:, slot], self.filled[:, slot], self.saved[slot] = results, filled.bool(), True
        log.info("read %d cached results from %s", int(self.filled[:, slot].sum()), path)

    def save(self, slots: int | None = None) -> None:
        """Write each of the first `slots` slots (default: all) that gained results since it was last
        written or read to its file, atomically."""
        if self.slot_paths is None:
            return
        last = len(self.saved) if slots is None else min(slots, len(self.saved))
        for slot in range(last):
            if self.saved[slot] or not self.filled[:, slot].any():
                continue
            path = self.slot_paths(slot)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            os.close(fd)
            tensors = {"results": self.results[:, slot].contiguous(), "filled": self.filled[:, slot].to(torch.uint8)}
            save_file(tensors, tmp)
            os.replace(tmp, path)
            self.saved[slot] = True
            log.info("cached %d results in %s", int(self.filled[:, slot].sum()), path)

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
            self.saved[slot] = False  # the file, if any, lacks these
        return self.results[items, slot].to(device=images.device, dtype=torch.float32)
