"""Image loading and transforms for training and evaluation (PIL + numpy, no torchvision).

`eval_transform` is the preprocessing contract shared with `edge/` (which must match it to 1/255):

1. `load_rgb`: PIL open, `ImageOps.exif_transpose`, first frame, convert to 8-bit RGB (RGBA, LA and
   palette transparency composited on white; 16-bit grey scaled by 1/257; CMYK/L/1/... by PIL),
2. resize so the shorter side is `resize_size` (PIL BICUBIC; the other side is
   `int(round(long * resize_size / short))`),
3. centre crop `input_size` x `input_size` at left = `int(round((w - s) / 2.0))`, top likewise,
4. float32 / 255, 5. (x - mean) / std per channel, 6. CHW (NCHW batched), RGB.

`TrainTransform` is a random-resized crop (area fraction and log-uniform aspect ratio, as is standard
for ViT training), a horizontal flip and a mild colour jitter, then steps 4-6.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
CROPS = ("center",)
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
_WHITE = (255, 255, 255)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image file cannot be used; the message names the file."""


class MissingImageError(ImageError, FileNotFoundError):
    """The image file does not exist."""


class UnreadableImageError(ImageError):
    """The file is not an image PIL can decode, or it is truncated/corrupt."""


class ImageTooLargeError(ImageError):
    """The image exceeds PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`)."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a photo into the model's input tensor (saved in runs and bundles).

    Attributes:
        input_size: Side of the square model input, in pixels.
        resize_size: Shorter side after resizing, before the centre crop (None: `input_size`).
        mean: Per-channel mean subtracted after scaling to [0, 1] (RGB order).
        std: Per-channel std divided by (RGB order).
        interpolation: "bicubic" or "bilinear" (PIL's).
        crop: Crop rule; only "center".
        channel_order: "RGB" or "BGR" channel order of the output.
        layout: "NCHW" or "NHWC" (unbatched: CHW or HWC).
    """

    input_size: int = 224
    resize_size: int | None = None
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    crop: str = "center"
    channel_order: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.resize_size is None:
            object.__setattr__(self, "resize_size", self.input_size)
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        self._validate()

    def _validate(self) -> None:
        if self.input_size < 1 or self.resize_size < self.input_size:
            raise ValueError(
                f"need 1 <= input_size <= resize_size, got {self.input_size}, {self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values (std > 0), got {self.mean}, {self.std}")
        for name, allowed in (
            ("interpolation", tuple(INTERPOLATIONS)),
            ("crop", CROPS),
            ("channel_order", CHANNEL_ORDERS),
            ("layout", LAYOUTS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def crop_ratio(self) -> float:
        """input_size / resize_size (1.0 means no border is cut beyond the square)."""
        return self.input_size / self.resize_size

    def to_dict(self) -> dict:
        """JSON-ready dict (lists for mean and std)."""
        record = asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        return record

    @classmethod
    def from_dict(cls, record: dict) -> "Preprocessing":
        """Inverse of `to_dict`; unknown keys are an error (a newer format should not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = set(record) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        return cls(**record)


# ----------------------------------------------------------------------------- loading


def _name(source: str | Path | BinaryIO) -> str:
    return str(source) if isinstance(source, (str, Path)) else getattr(source, "name", repr(source))


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    # I;16 is 16-bit by definition; 32-bit "I" is taken as 8-bit data unless it exceeds 255.
    sixteen_bit = image.mode != "I" or values.max(initial=0) > 255
    scale = 257.0 if sixteen_bit else 1.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency composited on white, 16-bit grey scaled to 8 bits."""
    if image.mode in _SIXTEEN_BIT_MODES:
        image = _sixteen_bit_to_l(image)
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(source: str | Path | BinaryIO) -> Image.Image:
    """Open a photo as an upright 8-bit RGB image (step 1 of the preprocessing contract).

    Args:
        source: A path or a binary file object.

    Returns:
        The first frame, EXIF orientation applied, in mode RGB.

    Raises:
        MissingImageError: No such file.
        UnreadableImageError: Not an image, or truncated/corrupt.
        ImageTooLargeError: Over PIL's decompression-bomb limit.
    """
    name = _name(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.seek(0)  # first frame of an animation
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb(upright)
    except FileNotFoundError:
        raise MissingImageError(f"{name}: image file not found") from None
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{name}: {error}") from None
    except UnidentifiedImageError:
        raise UnreadableImageError(f"{name}: not an image (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # truncated or corrupt data
        raise UnreadableImageError(f"{name}: cannot decode image ({error})") from None


# ----------------------------------------------------------------------------- evaluation


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to `resize_size` (step 2)."""
    if width <= height:
        return resize_size, int(round(height * resize_size / width))
    return int(round(width * resize_size / height)), resize_size


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the centred `size` x `size` crop (step 3)."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def normalise(pixels: np.ndarray, prep: Preprocessing) -> torch.Tensor:
    """Steps 5-6 on (H, W, 3) float32 RGB in [0, 1]: normalise, reorder channels and lay out.

    Returns:
        float32 (3, H, W) for NCHW, (H, W, 3) for NHWC.
    """
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    pixels = (pixels - mean) / std  # (H, W, 3)
    if prep.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    if prep.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)  # (3, H, W)
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def to_tensor(image: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Steps 4-6 on an RGB image: scale to [0, 1], then `normalise`."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (H, W, 3) RGB
    return normalise(pixels, prep)


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
    size = resized_size(image.width, image.height, prep.resize_size)
    if size != image.size:
        image = image.resize(size, INTERPOLATIONS[prep.interpolation])
    image = image.crop(center_crop_box(image.width, image.height, prep.input_size))
    return to_tensor(image, prep)


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
        image = image.resize((size, size), INTERPOLATIONS[self.prep.interpolation], box=box)
        if self.hflip and _uniform(rng, 0.0, 1.0) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)  # (S, S, 3)
        if self.jitter > 0:
            pixels = color_jitter(pixels, self.jitter, rng)
        return normalise(pixels, self.prep)
