"""Image transforms for training and evaluation (PIL + numpy, no torchvision).

Decoding and the deterministic preprocessing contract live once, in edge/preprocess.py (the lower,
torch-free layer): `load_rgb` (step 1), then `eval_transform` = resize the shorter side, centre crop,
/255, (x - mean) / std, channel order and layout, exactly what the phone runs.

`TrainTransform` is a random-resized crop (area fraction and log-uniform aspect ratio, as is standard
for ViT training), a horizontal flip and a mild colour jitter, then the same normalisation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from malm_edge.edge.bundle import CLIP_MEAN, CLIP_STD, Preprocessing
from malm_edge.edge.preprocess import (
    RESAMPLING,
    ImageError,
    ImageTooLargeError,
    MissingImageError,
    UnreadableImageError,
    load_rgb,
    normalize,
    normalize_pixels,
    resize_and_crop,
    to_rgb,
)

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "EvalTransform", "ImageError", "ImageTooLargeError", "MissingImageError",
    "Preprocessing", "TrainTransform", "UnreadableImageError", "eval_transform", "load_rgb", "to_rgb",
]


# ----------------------------------------------------------------------------- evaluation


def eval_transform(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """The deterministic evaluation/edge preprocessing of an RGB image (steps 2-6).

    Args:
        image: An RGB image, as `load_rgb` returns.
        prep: The preprocessing to apply.

    Returns:
        float32 (3, input_size, input_size) for NCHW (HWC for NHWC).
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    return torch.from_numpy(normalize(resize_and_crop(image, prep), prep))


class EvalTransform:
    """`eval_transform` bound to a `Preprocessing` (a picklable callable for DataLoader workers)."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return eval_transform(image, self.prep)


# ----------------------------------------------------------------------------- training

RandomSource = torch.Generator | np.random.Generator | None


def _uniform(rng: RandomSource, low: float, high: float) -> float:
    if isinstance(rng, np.random.Generator):
        return float(rng.uniform(low, high))
    # torch's global RNG (rng None) is re-seeded per DataLoader worker, numpy's is not.
    return low + (high - low) * float(torch.rand((), generator=rng))


def random_resized_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: RandomSource = None,
    attempts: int = 10,
) -> tuple[int, int, int, int]:
    """A random crop box covering a `scale` fraction of the area with aspect (w/h) in `ratio`.

    Falls back to the largest centred box with aspect clamped to `ratio` when no draw fits.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(rng, *scale)
        aspect = math.exp(_uniform(rng, log_low, log_high))
        crop_w = int(round(math.sqrt(target * aspect)))
        crop_h = int(round(math.sqrt(target / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(_uniform(rng, 0, width - crop_w + 1))
            top = int(_uniform(rng, 0, height - crop_h + 1))
            return left, top, min(left + crop_w, width), min(top + crop_h, height)
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def color_jitter(pixels: np.ndarray, strength: float, rng: RandomSource = None) -> np.ndarray:
    """Random brightness, contrast and saturation, each a factor in [1 - strength, 1 + strength].

    Args:
        pixels: (H, W, 3) float32 RGB in [0, 1].

    Returns:
        (H, W, 3) float32 in [0, 1].
    """
    luma_weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    brightness, contrast, saturation = (_uniform(rng, 1 - strength, 1 + strength) for _ in range(3))
    pixels = pixels * np.float32(brightness)
    mean_luma = np.float32((pixels @ luma_weights).mean())
    pixels = (pixels - mean_luma) * np.float32(contrast) + mean_luma
    grey = (pixels @ luma_weights)[..., None]  # (H, W, 1)
    pixels = (pixels - grey) * np.float32(saturation) + grey
    return np.clip(pixels, 0.0, 1.0).astype(np.float32, copy=False)


class TrainTransform:
    """Random-resized crop, horizontal flip and mild colour jitter, then normalisation.

    Args:
        prep: Output size, normalisation, channel order and layout.
        scale: Range of the crop's area as a fraction of the image.
        ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: Flip horizontally with probability 0.5.
        jitter: Colour-jitter strength (0 disables it).
        generator: Random source (torch or numpy generator); None uses torch's global RNG, which
            DataLoader seeds differently in each worker.
    """

    def __init__(
        self,
        prep: Preprocessing,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        jitter: float = 0.1,
        generator: RandomSource = None,
    ) -> None:
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"bad scale {scale} or ratio {ratio}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.prep, self.scale, self.ratio = prep, scale, ratio
        self.hflip, self.jitter, self.generator = hflip, jitter, generator

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Augment one RGB image. Returns float32 (3, S, S) for NCHW."""
        if image.mode != "RGB":
            image = to_rgb(image)
        rng, size = self.generator, self.prep.input_size
        box = random_resized_box(image.width, image.height, self.scale, self.ratio, rng)
        image = image.resize((size, size), RESAMPLING[self.prep.interpolation], box=box)
        if self.hflip and _uniform(rng, 0.0, 1.0) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (S, S, 3)
        if self.jitter > 0:
            pixels = color_jitter(pixels, self.jitter, rng)
        return torch.from_numpy(normalize_pixels(pixels, self.prep))
