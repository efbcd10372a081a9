"""Image decoding and preprocessing with pillow + numpy: the one implementation of the contract.

Training's eval transform (training/data/transforms.py) calls these same functions, so the phone's
preprocessing is the training evaluation transform by construction. The contract (written into every
run config and bundle manifest, `Preprocessing`):

1. open with PIL, apply the EXIF orientation (`ImageOps.exif_transpose`), take the first frame of
   an animation, convert to RGB: transparent images (RGBA, LA, PA, P with a transparency key)
   are composited on white; CMYK, YCbCr, L and 1-bit use PIL's conversion; 16-bit greyscale
   (I;16*) is scaled to 8 bits by /257 (65535 -> 255), 32-bit "I" too when a value exceeds 255;
2. resize so the shorter side == resize_size with PIL's filter (`interpolation`, BICUBIC in bundle
   format v1), other side = int(round(long * resize_size / short)) (tiny images are upsampled by
   the same rule);
3. centre crop S x S with left = int(round((w - S) / 2.0)), top likewise;
4. float32 / 255; 5. (x - mean) / std per channel; 6. channel order and layout (RGB, CHW, batched NCHW).

Files that are not images, truncated files and images over `max_pixels` (decompression bombs,
checked from the header before any pixel is decoded) raise `ImageError` naming the file.

This module is also the one rule set for which image files the project accepts, used by data
check, both importers, training and search alike (`check_image_file`): a format every consumer
decodes, the browser demo included (`SUPPORTED_FORMATS`: no TIFF, PSD, ...), at most `max_pixels`
pixels (64M by default everywhere), and pixel data that decodes to the end (JPEGs are decoded at
1/8 scale for the check, which still reads every byte of the entropy-coded data: truncated and
corrupt files are caught at a fraction of a full decode's cost).
"""

from __future__ import annotations

import os
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from malm_edge.edge.bundle import Preprocessing
from malm_edge.edge.errors import EdgeError

DEFAULT_MAX_PIXELS = 64_000_000
# Formats every consumer decodes: pillow (training, search) and the browsers the demo targets.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP"})
ImageSource = str | os.PathLike | BinaryIO | Image.Image
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(EdgeError, ValueError):
    """An image cannot be used (not an image, truncated, too large); the message names the file."""


class MissingImageError(ImageError, FileNotFoundError):
    """The image file does not exist."""


class UnreadableImageError(ImageError):
    """The file is not an image PIL can decode, or it is truncated/corrupt."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (a decompression bomb?)."""


class UnsupportedImageError(UnreadableImageError):
    """A readable image in a format not every consumer decodes (TIFF, PSD, ...).

    Attributes:
        format: PIL's name of the format.
    """

    def __init__(self, message: str, image_format: str | None) -> None:
        super().__init__(message)
        self.format = image_format


def _name(source: ImageSource) -> str:
    if isinstance(source, Image.Image):
        return "<PIL image>"
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return str(getattr(source, "name", repr(source)))


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
            raise MissingImageError(f"{name}: file not found") from err
        except IsADirectoryError as err:
            raise UnreadableImageError(f"{name}: is a folder, not an image file") from err
        except UnidentifiedImageError as err:
            raise UnreadableImageError(f"{name}: not a readable image file") from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageTooLargeError(f"{name}: image too large (decompression bomb?): {err}") from err
        except OSError as err:
            raise UnreadableImageError(f"{name}: cannot open image: {err}") from err
    try:
        if not isinstance(source, Image.Image) and image.format not in SUPPORTED_FORMATS:
            raise UnsupportedImageError(f"{name}: unsupported image format ({image.format}); supported: "
                                        f"{', '.join(sorted(SUPPORTED_FORMATS))}", image.format)
        _check_and_decode(image, name, max_pixels)
    except ImageError:
        if not isinstance(source, Image.Image):
            image.close()
        raise
    return image


def _check_and_decode(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"{name}: {width}x{height} = {width * height} pixels exceeds the limit "
                                 f"of {max_pixels} (decompression bomb?)")
    if width == 0 or height == 0:
        raise UnreadableImageError(f"{name}: empty image ({width}x{height})")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise UnreadableImageError(f"{name}: truncated or corrupt image data: {err}") from err


def check_image_file(source: str | os.PathLike, *, decode: bool = True,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """The one acceptance rule for an image file (data check, importers, training, search).

    Args:
        source: The image file.
        decode: Decode the pixel data to the end (JPEG at 1/8 scale, see the module doc); False
            only reads the header (format and size).
        max_pixels: Larger images are refused from the header.

    Returns:
        PIL's name of the real format (a PNG named .jpg is "PNG").

    Raises:
        MissingImageError, UnsupportedImageError, ImageTooLargeError, UnreadableImageError.
    """
    name = _name(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except FileNotFoundError as err:
        raise MissingImageError(f"{name}: file not found") from err
    except IsADirectoryError as err:
        raise UnreadableImageError(f"{name}: is a folder, not an image file") from err
    except UnidentifiedImageError as err:
        raise UnreadableImageError(f"{name}: not a readable image file") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"{name}: image too large (decompression bomb?): {err}") from err
    except OSError as err:
        raise UnreadableImageError(f"{name}: cannot open image: {err}") from err
    with image:
        image_format = image.format
        if image_format not in SUPPORTED_FORMATS:
            raise UnsupportedImageError(f"{name}: unsupported image format ({image_format})", image_format)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(f"{name}: {width}x{height} = {width * height} pixels exceeds the "
                                     f"limit of {max_pixels} (decompression bomb?)")
        if width == 0 or height == 0:
            raise UnreadableImageError(f"{name}: empty image ({width}x{height})")
        if decode:
            try:
                if image_format in ("JPEG", "MPO"):
                    image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
                image.load()
            except (OSError, SyntaxError, ValueError, EOFError) as err:
                raise UnreadableImageError(f"{name}: truncated or corrupt image data: {err}") from err
    return image_format


def _wide_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) greyscale -> 8-bit L: /257 so 65535 -> 255. 32-bit "I" is taken
    as 8-bit data unless a value exceeds 255."""
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
    """Open, EXIF-orient and convert an image to RGB (step 1 of the contract).

    Args:
        source: A path, a binary file object or an opened PIL image.
        max_pixels: Larger images are refused from the header, before decoding.

    Raises:
        MissingImageError: No such file.
        UnreadableImageError: Not an image, or truncated/corrupt.
        ImageTooLargeError: Over `max_pixels` (or PIL's own decompression-bomb limit).
    """
    image = _open(source, max_pixels)
    try:
        oriented = ImageOps.exif_transpose(image)  # a copy, so the file can be closed
        return to_rgb(oriented if oriented is not None else image)
    except (OSError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"{_name(source)}: cannot decode image: {err}") from err
    finally:
        if not isinstance(source, Image.Image):
            image.close()


def resize_shorter_side(image: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio (step 2); no-op at that size."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(round(height * size / width)))
    else:
        new_size = (int(round(width * size / height)), size)
    return image if new_size == image.size else image.resize(new_size, RESAMPLING[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Centre crop size x size with left = int(round((w - size) / 2.0)) (step 3)."""
    width, height = image.size
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def normalize_pixels(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Steps 5-6 on (H, W, 3) float32 RGB in [0, 1]: mean/std, channel order and layout.

    Returns:
        float32 (3, H, W) for NCHW, (H, W, 3) for NHWC, contiguous.
    """
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    pixels = (pixels - mean) / std  # (H, W, 3)
    if pre.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    if pre.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)  # (3, H, W)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def normalize(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Steps 4-6 on an RGB image: (3, S, S) float32 for NCHW (see `normalize_pixels`)."""
    # Divide by 255 (not multiply by 1/255): the rounding every stage of the project shares.
    pixels = np.asarray(image, dtype=np.float32) / np.float32(1.0 / pre.scale)  # (S, S, 3)
    return normalize_pixels(pixels, pre)


def resize_and_crop(image: Image.Image, pre: Preprocessing) -> Image.Image:
    """Steps 2-3 on an RGB image: the `input_size` square the encoder sees."""
    return center_crop(resize_shorter_side(image, pre.resize_size, pre.interpolation), pre.input_size)


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
    cropped = resize_and_crop(load_rgb(source, max_pixels), pre)
    if not normalized:
        raw = np.asarray(cropped, dtype=np.float32)  # (S, S, 3) 0..255
        return np.ascontiguousarray(raw.transpose(2, 0, 1)[None])  # (1, 3, S, S)
    return normalize(cropped, pre)[None]  # (1, 3, S, S)
