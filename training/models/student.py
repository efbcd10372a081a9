"""Compact student image encoders that land in the MALM teacher's joint embedding space.

The phone runs only the image tower (ARCHITECTURE.md); recipes are embedded offline by the teacher.
A student is a mobile CNN backbone (MobileNetV3 or MobileOne), global average pooling, an optional
hidden linear + hardswish (MobileNetV3's "efficient last stage", Howard et al. 2019, Sec. 5.1),
dropout, a linear projection to the teacher's ``embed_dim`` and L2 normalisation.

Export: :func:`prepare_for_export` returns an eval-mode copy with every BN folded into its
convolution and every MobileOne block re-parameterised, so the graph holds only conv (dense and
depthwise), relu/hardswish/hardsigmoid, mean-pooling, linear, add and mul, which ExecuTorch's XNNPACK
delegate and CoreML run natively. The final normalisation may stay outside the delegate.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.conv_layers import fuse_all_conv_bn, init_conv_weights
from malm_edge.training.models.mobilenetv3 import MobileNetV3
from malm_edge.training.models.mobileone import MobileOne, reparameterize_mobileone

# arch name -> (backbone class, variant)
ARCHITECTURES: dict[str, tuple[type[nn.Module], str]] = {
    "mobilenetv3_small": (MobileNetV3, "small"),
    "mobilenetv3_large": (MobileNetV3, "large"),
    "mobilenetv3_micro": (MobileNetV3, "micro"),
    "mobileone_s0": (MobileOne, "s0"),
    "mobileone_s1": (MobileOne, "s1"),
    "mobileone_micro": (MobileOne, "micro"),
}


@dataclass
class StudentConfig:
    """Architecture of a student image encoder.

    Attributes:
        arch: Backbone, one of ``ARCHITECTURES``.
        width_mult: Width multiplier of the backbone.
        image_size: Square input side in pixels (the backbone is fully convolutional; this fixes
            the export and benchmark shape and must match the preprocessing).
        embed_dim: Output embedding size; must equal the teacher's joint ``embed_dim``.
        dropout: Dropout before the projection (training only).
        hidden_dim: Width of the pooled linear + hardswish layer before the projection
            (1024 / 1280 in MobileNetV3-Small / Large); 0 disables it.
    """

    arch: str = "mobilenetv3_small"
    width_mult: float = 1.0
    image_size: int = 224
    embed_dim: int = 1024
    dropout: float = 0.0
    hidden_dim: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown student arch {self.arch!r}; expected one of {sorted(ARCHITECTURES)}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.embed_dim <= 0 or self.hidden_dim < 0 or self.width_mult <= 0:
            raise ValueError("embed_dim and width_mult must be positive and hidden_dim >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ValueError."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"StudentConfig has no fields {sorted(unknown)}")
        return cls(**data)


STUDENT_PRESETS: dict[str, StudentConfig] = {
    "mnv3_s": StudentConfig("mobilenetv3_small", 1.0, 224, 1024, 0.2, hidden_dim=1024),
    "mnv3_l": StudentConfig("mobilenetv3_large", 1.0, 224, 1024, 0.2, hidden_dim=1280),
    "mobileone_s0": StudentConfig("mobileone_s0", 1.0, 224, 1024, 0.1, hidden_dim=0),
    # test-sized, matching the teacher's `micro` preset (64 px, 64-d joint space)
    "mnv3_micro": StudentConfig("mobilenetv3_micro", 1.0, 64, 64, 0.0, hidden_dim=96),
    "mobileone_micro": StudentConfig("mobileone_micro", 1.0, 64, 64, 0.0, hidden_dim=0),
}


def get_student_preset(name: str, **overrides: Any) -> StudentConfig:
    """Return a copy of a named preset with fields replaced (e.g. ``embed_dim=teacher.embed_dim``).

    Raises:
        ValueError: Unknown preset or field.
    """
    if name not in STUDENT_PRESETS:
        raise ValueError(f"unknown student preset {name!r}; choose one of {sorted(STUDENT_PRESETS)}")
    unknown = set(overrides) - {f.name for f in fields(StudentConfig)}
    if unknown:
        raise ValueError(f"StudentConfig has no fields {sorted(unknown)}")
    return replace(STUDENT_PRESETS[name], **overrides)


class StudentEncoder(nn.Module):
    """Backbone -> global average pool -> [linear + hardswish] -> dropout -> linear -> L2 norm.

    Args:
        config: The student architecture.
    """

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        self.config = config
        backbone_cls, variant = ARCHITECTURES[config.arch]
        self.backbone = backbone_cls(variant, config.width_mult)
        width = self.backbone.out_channels
        if config.hidden_dim:
            self.hidden: nn.Module = nn.Sequential(nn.Linear(width, config.hidden_dim), nn.Hardswish())
            width = config.hidden_dim
        else:
            self.hidden = nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.proj = nn.Linear(width, config.embed_dim)
        init_conv_weights(self.hidden)
        nn.init.normal_(self.proj.weight, 0.0, width**-0.5)
        nn.init.zeros_(self.proj.bias)

    @property
    def embed_dim(self) -> int:
        """Output embedding size D."""
        return self.config.embed_dim

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Backbone feature map of normalised images (B, 3, S, S) -> (B, C, S / 32, S / 32)."""
        return self.backbone(pixels)

    def forward_head(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Pool and project a feature map (B, C, h, w) to embeddings (B, D), L2-normalised if asked."""
        # mean over H, W with keepdim lowers to XNNPACK global average pooling
        pooled = features.mean((2, 3), keepdim=True).flatten(1)  # (B, C)
        embedding = self.proj(self.dropout(self.hidden(pooled)))  # (B, D)
        return F.normalize(embedding, dim=-1) if normalize else embedding

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed normalised images (B, 3, S, S) into the joint space: (B, D), unit L2 norm."""
        return self.forward_head(self.forward_features(pixels))

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """open_clip-style alias of :meth:`forward` with optional normalisation, (B, D)."""
        return self.forward_head(self.forward_features(pixels), normalize)


def create_student(config: StudentConfig | str) -> StudentEncoder:
    """Build a randomly initialised student from a config or a preset name."""
    if isinstance(config, str):
        config = get_student_preset(config)
    return StudentEncoder(config)


def prepare_for_export(model: nn.Module) -> nn.Module:
    """Return an eval-mode, gradient-free COPY ready for ``torch.export`` (the input is untouched).

    Every MobileOne block is re-parameterised into one convolution and every conv + BN pair is
    folded, so no BatchNorm remains. Outputs equal the input model's eval-mode outputs to float
    rounding.

    Raises:
        RuntimeError: A BatchNorm layer that could not be folded remains (a module this function
            does not know).
    """
    exported = copy.deepcopy(model).eval()
    reparameterize_mobileone(exported)
    fuse_all_conv_bn(exported)
    leftover = [name for name, m in exported.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise RuntimeError(f"prepare_for_export could not fold batch norm at: {', '.join(leftover)}")
    return exported.requires_grad_(False)
