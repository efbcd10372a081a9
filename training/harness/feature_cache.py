"""Per-(item, augmentation) results of a frozen network, computed once and served after.

When every item cycles through K fixed augmentations (LoopSpec.augmentations, EpochSampler), what a
frozen network makes of an augmented image is the same every K epochs: distillation caches the
frozen teacher's image embeddings, and the `lite` teacher caches its frozen trunk's feature grids
(MobileCLIP's dataset reinforcement, in memory). After K epochs the frozen network is not run at all.
"""

from __future__ import annotations

from typing import Callable

import torch


class AugmentationCache:
    """Results per (item, augmentation slot), filled lazily.

    Args:
        n_items: Items of the training set.
        augmentations: K fixed augmentations per item (0: fresh augmentations, nothing is cached).
        shape: Shape of one result, e.g. (D,) for an embedding or (C, g, g) for a feature grid.
        dtype: Storage dtype (float16 halves the memory of large grids).
    """

    def __init__(
        self, n_items: int, augmentations: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
    ) -> None:
        self.enabled = augmentations > 0
        slots = max(augmentations, 1) if self.enabled else 0
        self.results = torch.zeros(n_items if self.enabled else 0, slots, *shape, dtype=dtype)  # (N, K, ...)
        self.filled = torch.zeros(n_items if self.enabled else 0, slots, dtype=torch.bool)  # (N, K)

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
        return self.results[items, slot].to(device=images.device, dtype=torch.float32)
