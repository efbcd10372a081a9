"""Compact student image encoders that land in the MALM teacher's joint embedding space.

The phone runs only the image tower (docs/architecture.md); recipes are embedded offline by the teacher.
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

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.conv_layers import fuse_all_conv_bn, init_conv_weights
from malm_edge.training.models.efficientnet_lite import EfficientNetLite, load_efficientnet_lite
from malm_edge.training.models.mobilenetv3 import MobileNetV3
from malm_edge.training.models.mobileone import MobileOne, reparameterize_mobileone
from malm_edge.training.models.student_config import ARCH_NAMES, StudentConfig

# arch name (student_config.ARCH_NAMES; also the student preset's name) -> (backbone class, variant)
ARCHITECTURES: dict[str, tuple[type[nn.Module], str]] = {
    "mnv3_s": (MobileNetV3, "small"),
    "mnv3_l": (MobileNetV3, "large"),
    "mnv3_micro": (MobileNetV3, "micro"),
    "mobileone_s0": (MobileOne, "s0"),
    "mobileone_s1": (MobileOne, "s1"),
    "mobileone_micro": (MobileOne, "micro"),
    "lite0": (EfficientNetLite, "lite0"),
}
if set(ARCHITECTURES) != set(ARCH_NAMES):
    raise ImportError("student ARCHITECTURES and student_config.ARCH_NAMES disagree")


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


def create_student(config: StudentConfig, *, load_pretrained: bool = False) -> StudentEncoder:
    """Build a student (named configs: presets.get_student_preset).

    Args:
        config: The architecture.
        load_pretrained: Start the backbone from its ImageNet weights when `config.pretrained` (pass
            False when a trained checkpoint is loaded next).
    """
    student = StudentEncoder(config)
    if load_pretrained and config.pretrained:
        load_efficientnet_lite(student)
    return student


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
