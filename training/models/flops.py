"""Parameter and FLOP counts of any model (students and the teacher's ViT image tower alike).

Built on ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplies and
convolutions at the aten level (so depthwise / grouped convolutions are counted by their real
kernel shape, ``2 * out_elements * in_channels_per_group * kh * kw``). Two CPU code paths it misses
are added here: ``aten._scaled_dot_product_flash_attention_for_cpu`` (what SDPA dispatches to on
CPU) and ``aten._native_multi_head_attention`` (the fused ``nn.MultiheadAttention`` fast path taken
in eval mode without grad). Elementwise ops, norms and softmax are not counted (the convention of
papers that report MACs). ``macs = flops / 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

Shape = tuple[int, ...]


def _cpu_sdpa_flops(query: Shape, key: Shape, value: Shape, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of CPU flash attention: Q K^T and A V, (B, h, T, d) x (B, h, S, d)."""
    return sdpa_flop_count(query, key, value)


def _native_mha_flops(
    query: Shape, key: Shape, value: Shape, embed_dim: int, *args: Any, out_shape: Any = None, **kwargs: Any
) -> int:
    """FLOPs of ``aten._native_multi_head_attention`` on batch-first (B, T, E) inputs.

    In-projections of q (T rows) and k, v (S rows), the two attention products and the output
    projection, 2 FLOPs per multiply-accumulate.
    """
    batch = query[0] if len(query) == 3 else 1  # unbatched inputs are (T, E)
    target_len, width = query[-2], query[-1]
    source_len = key[-2]
    in_proj = batch * (target_len + 2 * source_len) * width * width
    attention = 2 * batch * target_len * source_len * width
    out_proj = batch * target_len * width * width
    return 2 * (in_proj + attention + out_proj)


EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (optionally only trainable) parameters, shared tensors counted once."""
    unique = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in unique.values())


@torch.no_grad()
def count_flops(
    model: nn.Module,
    example: torch.Tensor,
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> int:
    """FLOPs (2 per multiply-accumulate) of one eval-mode forward pass on ``example``.

    Args:
        model: Any module; it is put in eval mode for the count and its mode restored after.
        example: The input batch.
        forward: How to call the model (default ``model(example)``), e.g. ``lambda m, x: m.encode_image(x)``.
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            if forward is None:
                model(example)
            else:
                forward(model, example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_params_and_flops(
    model: nn.Module,
    input_shape: Shape = (1, 3, 224, 224),
    forward: Callable[[nn.Module, torch.Tensor], Any] | None = None,
) -> dict[str, int]:
    """Parameters, MACs and FLOPs of a model on a random input of ``input_shape``.

    Args:
        model: Any module (student, teacher image tower, ...).
        input_shape: Shape of the example input, batch included; MACs scale with the batch size.
        forward: Optional ``(model, x) -> Any`` replacing ``model(x)``.

    Returns:
        ``{"params": int, "macs": int, "flops": int}`` with ``flops == 2 * macs``.
    """
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    example = torch.randn(input_shape, device=device, dtype=dtype)
    flops = count_flops(model, example, forward)
    return {"params": count_params(model), "macs": flops // 2, "flops": flops}
