"""Load the vision tower of a local OpenAI-CLIP or open_clip checkpoint into our VisionTransformer.

MALM initialises its image encoder from CLIP ViT-B/16 (arXiv 2305.11327, Sec 4.3). Accepted files:

- OpenAI CLIP `.pt` (a TorchScript archive, e.g. ViT-B-16.pt): its tensors are read from the zip
  by `torchscript_tensors.read_torchscript_tensors`, a restricted unpickler that runs none of the
  archive's code (`torch.jit.load` would run its `__setstate__` while loading, before any check).
  An archive that needs more than tensors to load is refused, with how to convert it once in a
  trusted environment.
- A state dict saved with `torch.save` (`.pt`, `.pth`, `.bin`), possibly wrapped as
  `{"state_dict": ...}` (open_clip training checkpoints): read with `torch.load(weights_only=True)`,
  with no unsafe fallback.
- `.safetensors` (open_clip / hub exports).

Keys are `visual.*` in both CLIP families; `module.` and `_orig_mod.` prefixes are stripped, text-tower
keys are ignored. A checkpoint whose positional grid differs from the model's is bicubically resampled.
Any other shape mismatch raises `ClipWeightsError` listing every mismatched key with both shapes;
missing keys (other than MALM's own `mask_token`) are listed in the same error.

OpenAI weights were trained with QuickGELU (MalmConfig.quick_gelu=True, as in `base`); open_clip's
LAION ViT-B-16 weights use plain GELU (set quick_gelu=False).
"""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from malm_edge.training.errors import TrainingError
from malm_edge.training.models import weights
from malm_edge.training.models.torchscript_tensors import TorchScriptReadError, read_torchscript_tensors
from malm_edge.training.models.vit import VisionTransformer, resize_positional_embedding

logger = logging.getLogger(__name__)

VISUAL_PREFIX = "visual."
# Parameters MALM adds to CLIP's ViT; a CLIP checkpoint never has them.
MALM_ONLY_KEYS = frozenset({"mask_token"})


class ClipWeightsError(TrainingError, ValueError):
    """A checkpoint that cannot be loaded into the ViT (unreadable, missing or mis-shaped keys)."""


@dataclass
class LoadReport:
    """What `load_clip_vision_weights` did.

    Attributes:
        loaded: Model keys filled from the checkpoint.
        missing: Model keys the checkpoint lacks (left at their initialisation).
        ignored: Checkpoint keys not used (text tower, logit_scale, ...).
        resized: Keys resampled to the model's grid (positional embedding).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)


def _is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives are zip files holding a `code/` folder (plain torch.save zips do not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def read_clip_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint into a flat {key: tensor} dict (TorchScript tensors only, or `weights.read_state_dict`).

    Raises:
        ClipWeightsError: The file is missing or not a readable state dict.
    """
    path = Path(path)
    if not (path.is_file() and _is_torchscript_archive(path)):
        return weights.read_state_dict(path, error=ClipWeightsError)
    try:
        state = read_torchscript_tensors(path)
    except TorchScriptReadError as error:
        raise ClipWeightsError(
            f"{path}: TorchScript archive not read ({error}); its code is never run here. Convert it once, "
            "in an environment you trust, to a plain state dict: python -c \"import sys, torch; "
            "torch.save(torch.jit.load(sys.argv[1], map_location='cpu').state_dict(), sys.argv[2])\" "
            f"{path} clip_state_dict.pt"
        ) from None
    return weights.tensors_of(state, path, ClipWeightsError)


def map_clip_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map `visual.*` keys to VisionTransformer keys.

    Returns:
        (mapped state, ignored checkpoint keys).
    """
    mapped: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for raw_key, value in state.items():
        key = weights.strip_prefix(raw_key)
        if key.startswith(VISUAL_PREFIX):
            mapped[key[len(VISUAL_PREFIX) :]] = value
        else:
            ignored.append(raw_key)
    return mapped, ignored


def load_clip_vision_weights(model: VisionTransformer, path: str | Path) -> LoadReport:
    """Copy a CLIP checkpoint's vision tower into `model` in place.

    Args:
        model: The ViT to fill (its config decides the target shapes).
        path: `.pt` (TorchScript or torch.save), `.pth`, `.bin` or `.safetensors`.

    Returns:
        A LoadReport.

    Raises:
        ClipWeightsError: Unreadable file, no `visual.*` keys, mismatched shapes or missing keys.
    """
    mapped, ignored = map_clip_keys(read_clip_state_dict(path))
    if not mapped:
        raise ClipWeightsError(f"{path}: no `visual.*` keys; is this a CLIP checkpoint?")
    target = model.state_dict()
    report = LoadReport(ignored=ignored + [VISUAL_PREFIX + k for k in mapped if k not in target])
    pos_key = "positional_embedding"
    if pos_key in mapped and mapped[pos_key].shape != target[pos_key].shape:
        if mapped[pos_key].shape[1:] == target[pos_key].shape[1:]:
            mapped[pos_key] = resize_positional_embedding(mapped[pos_key], int(model.num_patches**0.5))
            report.resized.append(pos_key)
    mismatched = [
        f"  visual.{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in mapped and mapped[k].shape != target[k].shape
    ]
    report.missing = [k for k in target if k not in mapped and k not in MALM_ONLY_KEYS]
    if mismatched or report.missing:
        lines = [f"{path}: cannot load into a ViT of width {model.width}, {model.num_patches} patches"]
        if mismatched:
            lines += [f"{len(mismatched)} mismatched shapes:"] + mismatched
        if report.missing:
            lines += [f"{len(report.missing)} missing keys:"] + [f"  visual.{k}" for k in report.missing]
        raise ClipWeightsError("\n".join(lines))
    with torch.no_grad():
        for key, value in target.items():
            if key in mapped:
                value.copy_(mapped[key].to(value.dtype))
                report.loaded.append(key)
    logger.info("loaded %d CLIP vision tensors from %s (%d ignored)", len(report.loaded), path, len(report.ignored))
    return report
