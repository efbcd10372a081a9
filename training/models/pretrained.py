"""Load ImageNet-pretrained MobileNetV3 weights from a LOCAL torchvision-layout state dict.

Nothing is downloaded. The file is a torchvision ``mobilenet_v3_small`` / ``mobilenet_v3_large``
state dict (``.pth`` / ``.pt`` read with ``torch.load(weights_only=True)``, or ``.safetensors``),
with torchvision's key names::

    features.0.0.weight               stem conv            -> backbone.stem.conv.weight
    features.0.1.{weight,bias,...}    stem BN              -> backbone.stem.bn.*
    features.i.block.j.0 / .1         conv / BN of the j-th -> backbone.blocks.{i-1}.{expand|depthwise|project}
                                      layer of bneck i         .conv / .bn
    features.i.block.j.fc1 / .fc2     squeeze-excite        -> backbone.blocks.{i-1}.se.fc1 / .fc2
    features.{n+1}.0 / .1             last 1x1 conv / BN   -> backbone.head.conv / .bn
    classifier.0                      pooled 1x1 "conv NBN" -> hidden.0 (when the student has hidden_dim)
    classifier.3                      ImageNet classifier  -> ignored

The j index inside a bneck counts only the layers that exist (no expansion conv when the expanded
width equals the input width, no SE where the table has none), so the map is built from the model.
torchvision's weights expect ImageNet mean/std; the student is fine-tuned under this project's
CLIP-normalised preprocessing by distillation, which absorbs the shift.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from malm_edge.training.errors import TrainingError
from malm_edge.training.models.conv_layers import ConvBNAct
from malm_edge.training.models.mobilenetv3 import MobileNetV3
from malm_edge.training.models.weights import key_listing, read_state_dict

_IGNORED_PREFIXES = ("classifier.3.",)


class PretrainedWeightsError(TrainingError, ValueError):
    """A pretrained weight file does not fit the model (names the file and the offending keys)."""


def _conv_bn_pairs(torchvision_path: str, ours: str) -> dict[str, str]:
    return {f"{torchvision_path}.0": f"{ours}.conv", f"{torchvision_path}.1": f"{ours}.bn"}


def torchvision_module_map(backbone: MobileNetV3, prefix: str = "") -> dict[str, str]:
    """Map torchvision MobileNetV3 module paths to this backbone's module paths.

    Args:
        backbone: The target backbone.
        prefix: Prefix of the backbone inside the model being loaded (``"backbone."`` for a student).

    Returns:
        ``{"features.1.block.0.0": "backbone.blocks.0.depthwise.conv", ...}`` (module paths, no
        parameter names).
    """
    mapping = _conv_bn_pairs("features.0", f"{prefix}stem")
    for index, block in enumerate(backbone.blocks):
        layer = 0
        for name in ("expand", "depthwise", "se", "project"):
            part = getattr(block, name)
            if part is None:
                continue
            source, target = f"features.{index + 1}.block.{layer}", f"{prefix}blocks.{index}.{name}"
            if isinstance(part, ConvBNAct):
                mapping.update(_conv_bn_pairs(source, target))
            else:
                mapping.update({f"{source}.fc1": f"{target}.fc1", f"{source}.fc2": f"{target}.fc2"})
            layer += 1
    mapping.update(_conv_bn_pairs(f"features.{len(backbone.blocks) + 1}", f"{prefix}head"))
    return mapping


def _resolve_target(model: nn.Module) -> tuple[MobileNetV3, str, bool]:
    """(backbone, its prefix in the model, whether the model has a loadable hidden layer)."""
    if isinstance(model, MobileNetV3):
        return model, "", False
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, MobileNetV3):
        raise PretrainedWeightsError(
            f"torchvision MobileNetV3 weights need a MobileNetV3 backbone, got {type(backbone or model).__name__}"
        )
    hidden = getattr(model, "hidden", None)
    return backbone, "backbone.", isinstance(hidden, nn.Sequential)


def map_torchvision_state_dict(
    state: dict[str, torch.Tensor], model: nn.Module, source: str = "<state dict>"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a torchvision MobileNetV3 state dict to ``model``'s keys, checking names and shapes.

    Args:
        state: torchvision-layout state dict.
        model: A :class:`MobileNetV3` or a student encoder with a MobileNetV3 ``backbone``.
        source: Name of the origin for error messages (the file path).

    Returns:
        ``(mapped_state, ignored_source_keys)``.

    Raises:
        PretrainedWeightsError: Listing unknown keys, shape mismatches and model keys left unset.
    """
    backbone, prefix, has_hidden = _resolve_target(model)
    modules = torchvision_module_map(backbone, prefix)
    if has_hidden:
        modules["classifier.0"] = "hidden.0"
    targets = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    ignored, unknown, mismatched = [], [], []
    mismatched_targets: set[str] = set()
    for key, value in state.items():
        module_path, _, param = key.rpartition(".")
        if key.startswith(_IGNORED_PREFIXES) or (key.startswith("classifier.0.") and not has_hidden):
            ignored.append(key)
        elif module_path not in modules or f"{modules[module_path]}.{param}" not in targets:
            unknown.append(key)
        else:
            ours = f"{modules[module_path]}.{param}"
            if tuple(value.shape) != tuple(targets[ours].shape):
                mismatched.append(f"{key} {tuple(value.shape)} -> {ours} {tuple(targets[ours].shape)}")
                mismatched_targets.add(ours)
            else:
                mapped[ours] = value
    covered = set(modules.values())
    expected = {key for key in targets if key.rpartition(".")[0] in covered}
    missing = sorted(expected - set(mapped) - mismatched_targets)
    problems = [
        key_listing(title, items)
        for title, items in (
            ("shape mismatches", mismatched), ("unknown keys", unknown), ("model keys not in file", missing)
        )
        if items
    ]
    if problems:
        raise PretrainedWeightsError(
            f"{source} does not fit {type(model).__name__} (MobileNetV3 {backbone.variant}; a different "
            "variant or width_mult?):\n" + "\n".join(problems)
        )
    return mapped, ignored


def load_torchvision_mobilenet_v3(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load a local torchvision MobileNetV3 state dict into ``model`` in place.

    Args:
        model: A :class:`MobileNetV3` or a student encoder with a MobileNetV3 ``backbone`` (whose
            ``hidden`` layer, when present, receives ``classifier.0``).
        path: ``.pth``/``.pt`` (loaded with ``weights_only=True``) or ``.safetensors`` file.

    Returns:
        ``{"loaded": [model keys set], "ignored": [file keys skipped, e.g. classifier.3.*]}``.

    Raises:
        PretrainedWeightsError: Unreadable file, or keys/shapes that do not fit (all listed).
    """
    state = read_state_dict(path, error=PretrainedWeightsError)
    mapped, ignored = map_torchvision_state_dict(state, model, source=str(path))
    result = model.load_state_dict(mapped, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above; keep the invariant loud
        raise PretrainedWeightsError(f"{path}: unexpected keys {result.unexpected_keys}")
    return {"loaded": sorted(mapped), "ignored": sorted(ignored)}
