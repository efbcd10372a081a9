"""Reading weight files from outside without running code: safetensors, or `torch.load(weights_only=True)`.

One reader for every loader of pretrained or saved weights (CLIP, torchvision, checkpoints): no
unsafe unpickling fallback, `{"state_dict": ...}` / `{"model": ...}` wrappers unwrapped, and DDP's
`module.` and torch.compile's `_orig_mod.` prefixes stripped.
"""

from __future__ import annotations

from pathlib import Path

import torch

from malm_edge.training.errors import TrainingError

WRAPPER_KEYS = ("state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


MAX_LISTED_KEYS = 20


class WeightsError(TrainingError, ValueError):
    """A weight file is missing or does not hold a state dict; the message names the file."""


class WeightsMismatchError(WeightsError):
    """A weight file does not fit the model (the message names the file and the offending keys)."""


def strip_prefix(key: str) -> str:
    """A key without DDP's `module.` and torch.compile's `_orig_mod.` prefixes (repeatedly)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with `strip_prefix` applied to every key."""
    return {strip_prefix(key): value for key, value in state_dict.items()}


def read_state_dict(path: str | Path, *, error: type[Exception] = WeightsError) -> dict[str, torch.Tensor]:
    """Read a state dict safely: `.safetensors`, else `torch.load(weights_only=True)`.

    Args:
        path: The weight file.
        error: The exception type to raise (each loader raises its own, e.g. ClipWeightsError).

    Returns:
        {key: tensor}, wrappers unwrapped, prefixes stripped, non-tensor entries dropped.

    Raises:
        `error`: The file is missing, unreadable, or does not hold a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise error(f"{path}: cannot read as a state dict ({type(exc).__name__}: {exc})") from exc
    return tensors_of(state, path, error)


def tensors_of(state: object, path: str | Path, error: type[Exception] = WeightsError) -> dict[str, torch.Tensor]:
    """The flat {key: tensor} dict inside a loaded object (see `read_state_dict`)."""
    for wrapper in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise error(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    tensors = {strip_prefix(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise error(f"{path}: holds no tensors (not a state dict)")
    return tensors


def key_listing(title: str, keys: list[str]) -> str:
    """``title (n):`` and the first ``MAX_LISTED_KEYS`` keys, one per indented line."""
    shown = keys[:MAX_LISTED_KEYS]
    more = f"\n  ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{title} ({len(keys)}):\n  " + "\n  ".join(shown) + more


def check_state_fits(
    state: dict[str, torch.Tensor], model: torch.nn.Module, source: str, what: str
) -> None:
    """Raise one error listing every unknown key, missing key and shape mismatch, if any.

    Args:
        state: The (already renamed) state dict to load with ``strict=True``.
        model: The module it must fit exactly.
        source: The file it came from (for the message).
        what: What the model is (for the message), e.g. ``"EfficientNet-Lite lite0"``.

    Raises:
        WeightsMismatchError: The keys or shapes differ.
    """
    targets = model.state_dict()
    unknown = sorted(set(state) - set(targets))
    missing = sorted(set(targets) - set(state))
    mismatched = [
        f"{key} {tuple(state[key].shape)} != {tuple(targets[key].shape)}"
        for key in sorted(set(state) & set(targets))
        if tuple(state[key].shape) != tuple(targets[key].shape)
    ]
    problems = [
        key_listing(title, keys)
        for title, keys in (
            ("shape mismatches", mismatched), ("unknown keys", unknown), ("missing keys", missing)
        )
        if keys
    ]
    if problems:
        raise WeightsMismatchError(f"{source} does not fit {what}:\n" + "\n".join(problems))
