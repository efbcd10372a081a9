"""Image preprocessing with pillow + numpy, exactly the training evaluation transform.

The contract (also written into every bundle manifest, `Preprocessing`):

1. open with PIL, apply the EXIF orientation (`ImageOps.exif_transpose`), take the first frame of
   an animation, convert to RGB: transparent images (RGBA, LA, PA, P with a transparency key)
   are composited on white; CMYK, YCbCr, L and 1-bit use PIL's conversion; 16-bit greyscale
   (I;16*) is scaled to 8 bits by /257 (65535 -> 255), 32-bit "I" too when a value exceeds 255;
2. resize so the shorter side == resize_size with PIL BICUBIC, other side =
   int(round(long * resize_size / short)) (tiny images are upsampled by the same rule);
3. centre crop S x S with left = int(round((w - S) / 2.0)), top likewise;
4. float32 * scale (1/255); 5. (x - mean) / std per channel; 6. CHW, batched NCHW, RGB.

Files that are not images, truncated files and images over `max_pixels` (decompression bombs,
checked from the header before any pixel is decoded) raise `ImageError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from malm_edge.edge.bundle import Preprocessing

DEFAULT_MAX_PIXELS = 64_000_000
ImageSource = str | os.PathLike | Image.Image
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(ValueError):
    """An image cannot be used (not an image, truncated, too large); the message names the file."""


def _name(source: ImageSource) -> str:
    return str(source) if not isinstance(source, Image.Image) else "<PIL image>"


def _open(source: ImageSource, max_pixels: int) -> Image.Image:
    """Open lazily, refuse oversized images from the header, then decode frame 0."""
    name = _name(source)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source)
        except FileNotFoundError as err:
            raise ImageError(f"{name}: file not found") from err
        except UnidentifiedImageError as err:
            raise ImageError(f"{name}: not a readable image file") from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(f"{name}: image too large (decompression bomb?): {err}") from err
        except OSError as err:
            raise ImageError(f"{name}: cannot open image: {err}") from err
    try:
        _check_and_decode(image, name, max_pixels)
    except ImageError:
        if not isinstance(source, Image.Image):
            image.close()
        raise
    return image


def _check_and_decode(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit "
                         f"of {max_pixels} (decompression bomb?)")
    if width == 0 or height == 0:
        raise ImageError(f"{name}: empty image ({width}x{height})")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"{name}: truncated or corrupt image data: {err}") from err


def _wide_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale -> 8-bit L: /257 so 65535 -> 255. 32-bit "I" is taken
    as 8-bit data unless a value exceeds 255 (as training/data/transforms.py does)."""
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    sixteen_bit = image.mode != "I" or values.max(initial=0) > 255
    scale = 257.0 if sixteen_bit else 1.0
    return Image.fromarray(np.clip(np.rint(values / scale), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Step 1's colour handling: any PIL mode -> 8-bit RGB, transparency composited on white."""
    if image.mode in _WIDE_INT_MODES:
        image = _wide_to_l(image)
    elif image.mode == "F":
        eight = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        image = Image.fromarray(eight, mode="L")
    transparent = image.mode in _TRANSPARENT_MODES or (
        image.mode == "P" and "transparency" in image.info)
    if transparent:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def load_rgb(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, EXIF-orient and convert an image to RGB (step 1 of the contract)."""
    image = _open(source, max_pixels)
    try:
        oriented = ImageOps.exif_transpose(image)  # a copy, so the file can be closed
        return to_rgb(oriented if oriented is not None else image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"{_name(source)}: cannot decode image: {err}") from err
    finally:
        if not isinstance(source, Image.Image):
            image.close()


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (PIL BICUBIC), keeping the aspect ratio (step 2)."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(round(height * size / width)))
    else:
        new_size = (int(round(width * size / height)), size)
    return image.resize(new_size, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop size x size with left = int(round((w - size) / 2.0)) (step 3)."""
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Steps 4-6: (1, 3, S, S) float32 NCHW RGB, scaled and mean/std normalised."""
    # Divide by 255 (not multiply by 1/255) to match the training transform bit for bit.
    pixels = np.asarray(image, dtype=np.float32) / np.float32(1.0 / pre.scale)  # (S, S, 3)
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    pixels = (pixels - mean) / std  # (S, S, 3)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])  # (1, 3, S, S)


def preprocess_image(source: ImageSource, pre: Preprocessing | None = None,
                     max_pixels: int = DEFAULT_MAX_PIXELS, normalized: bool = True) -> np.ndarray:
    """Photo -> encoder input per the manifest's preprocessing.

    Args:
        source: A path or an already opened PIL image.
        pre: The bundle's `Preprocessing` (default: 224, CLIP mean/std).
        max_pixels: Larger images are refused before decoding.
        normalized: False stops after the crop: float32 RGB 0..255 (for encoders whose
            `pixel_input` is "rgb_0_255", normalising inside the model).

    Returns:
        (1, 3, S, S) float32.

    Raises:
        ImageError: the file is missing, not an image, truncated or too large.
    """
    pre = pre or Preprocessing()
    rgb = load_rgb(source, max_pixels)
    cropped = center_crop(resize_shorter_side(rgb, pre.resize_size), pre.input_size)
    if not normalized:
        raw = np.asarray(cropped, dtype=np.float32)  # (S, S, 3) 0..255
        return np.ascontiguousarray(raw.transpose(2, 0, 1)[None])  # (1, 3, S, S)
    return normalize(cropped, pre)
