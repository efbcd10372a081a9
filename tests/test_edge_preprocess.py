"""edge/preprocess.py: parity with torch references on real photos, odd modes accepted, bad files refused."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from malm_edge.edge.bundle import Preprocessing
from malm_edge.edge.preprocess import ImageError, preprocess_image

PRE = Preprocessing(input_size=32, resize_size=36)
MEAN = np.asarray(PRE.mean, np.float32).reshape(1, 3, 1, 1)
STD = np.asarray(PRE.std, np.float32).reshape(1, 3, 1, 1)


def _pixels01(batch: np.ndarray) -> np.ndarray:
    """Undo mean/std: (1, 3, S, S) normalised -> 0..1 pixel space."""
    return batch * STD + MEAN


def _torch_reference(path: Path, input_size: int, resize_size: int) -> "np.ndarray":
    """Independent reference: PIL for decode/resize/crop, torch for scaling and normalisation."""
    import torch
    from PIL import ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
    width, height = image.size
    short = min(width, height)
    new_w, new_h = (int(round(width * resize_size / short)), int(round(height * resize_size / short)))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0  # (3, H, W)
    top, left = int(round((new_h - input_size) / 2.0)), int(round((new_w - input_size) / 2.0))
    return x[:, top:top + input_size, left:left + input_size].unsqueeze(0).numpy()  # (1, 3, S, S)


def test_parity_with_a_torch_reference_on_real_photos(real_photos) -> None:
    pre = Preprocessing(input_size=224, resize_size=256)
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    worst = 0.0
    for photo in real_photos:
        ours = preprocess_image(photo, pre)
        assert ours.shape == (1, 3, 224, 224) and ours.dtype == np.float32
        reference = _torch_reference(photo, 224, 256)
        worst = max(worst, float(np.abs(ours * std + mean - reference).max()))
    print(f"max |edge - torch reference| over {len(real_photos)} photos: {worst:.2e} (0..1 space)")
    assert worst <= 1.0 / 255.0


def test_parity_with_the_training_eval_transform(real_photos) -> None:
    transforms = pytest.importorskip("malm_edge.training.data.transforms")
    train_pre = transforms.Preprocessing(input_size=224, resize_size=256)
    pre = Preprocessing(**train_pre.to_dict())
    std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
    for photo in real_photos[::3]:
        expected = transforms.eval_transform(transforms.load_rgb(photo), train_pre).numpy()
        ours = preprocess_image(photo, pre)[0]
        assert np.abs((ours - expected) * std).max() <= 1.0 / 255.0, photo


def test_unnormalized_output_is_the_cropped_rgb(real_photos) -> None:
    """pixel_input "rgb_0_255" encoders get the same crop, before scale and mean/std."""
    raw = preprocess_image(real_photos[0], PRE, normalized=False)
    assert raw.shape == (1, 3, 32, 32) and raw.min() >= 0 and raw.max() <= 255
    np.testing.assert_allclose((raw / 255.0 - MEAN) / STD, preprocess_image(real_photos[0], PRE),
                               atol=1e-5)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _solid(color, size=(40, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def test_exif_orientation_is_applied(tmp_path) -> None:
    gradient = np.zeros((30, 60, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 60, dtype=np.uint8)
    upright = Image.fromarray(gradient)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers rotate 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    path = _save(stored, tmp_path / "rotated.png", exif=exif.tobytes())
    np.testing.assert_array_equal(preprocess_image(path, PRE), preprocess_image(upright, PRE))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_composited_on_white(tmp_path, mode) -> None:
    clear = _solid((0, 0, 0, 0) if mode == "RGBA" else (0, 0), mode=mode)
    out = preprocess_image(_save(clear, tmp_path / f"clear_{mode}.png"), PRE)
    np.testing.assert_allclose(_pixels01(out), 1.0, atol=1e-6)  # fully transparent -> white
    opaque = _solid((200, 10, 10, 255) if mode == "RGBA" else (90, 255), mode=mode)
    expected = _solid((200, 10, 10) if mode == "RGBA" else (90, 90, 90))
    np.testing.assert_array_equal(preprocess_image(_save(opaque, tmp_path / "o.png"), PRE),
                                  preprocess_image(expected, PRE))


def test_palette_with_transparency_and_animated_gif_first_frame(tmp_path) -> None:
    red, blue = _solid((255, 0, 0)), _solid((0, 0, 255))
    path = tmp_path / "anim.gif"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(path) as gif:
        assert gif.n_frames == 2
    np.testing.assert_allclose(_pixels01(preprocess_image(path, PRE))[0, :, 0, 0], [1, 0, 0], atol=1e-6)
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    transparent = _save(palette, tmp_path / "clear.gif", transparency=0)
    np.testing.assert_allclose(_pixels01(preprocess_image(transparent, PRE)), 1.0, atol=1e-6)


def test_cmyk_greyscale_and_one_bit(tmp_path) -> None:
    cmyk = _solid((0, 255, 255, 0), mode="CMYK")  # an opened image: TIFF files are refused (one format rule)
    np.testing.assert_allclose(_pixels01(preprocess_image(cmyk, PRE))[0, :, 5, 5], [1, 0, 0], atol=1e-6)
    grey = _save(_solid(128, mode="L"), tmp_path / "grey.png")
    np.testing.assert_allclose(_pixels01(preprocess_image(grey, PRE)), 128 / 255, atol=1e-6)
    bits = _save(_solid(1, mode="1"), tmp_path / "bits.png")
    np.testing.assert_allclose(_pixels01(preprocess_image(bits, PRE)), 1.0, atol=1e-6)


def test_sixteen_bit_png_scaled_to_eight_bits(tmp_path) -> None:
    values = np.full((30, 40), 65535, np.uint16)
    values[:, 20:] = 257 * 100
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    left = _pixels01(preprocess_image(path, Preprocessing(input_size=30, resize_size=30)))
    np.testing.assert_allclose(left[0, :, :, 0], 1.0, atol=1e-6)
    np.testing.assert_allclose(left[0, :, :, -1], 100 / 255, atol=1e-6)


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (5, 40)])
def test_very_small_images_are_upsampled(tmp_path, size) -> None:
    path = _save(_solid((10, 200, 30), size=size), tmp_path / "tiny.png")
    out = preprocess_image(path, PRE)
    assert out.shape == (1, 3, 32, 32) and np.isfinite(out).all()
    np.testing.assert_allclose(_pixels01(out)[0, :, 16, 16], np.array([10, 200, 30]) / 255, atol=1e-6)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "kind, content, message",
    [
        ("truncated", lambda: _jpeg_bytes()[:4000], "truncated or corrupt"),
        ("text", lambda: b"this is a recipe, not a photo\n" * 10, "not a readable image"),
        ("empty", lambda: b"", "not a readable image"),
        ("html", lambda: b"<html><body>404</body></html>", "not a readable image"),
    ],
)
def test_bad_files_rejected_naming_the_file(tmp_path, kind, content, message) -> None:
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(content())
    with pytest.raises(ImageError, match=message) as caught:
        preprocess_image(path, PRE)
    assert str(path) in str(caught.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ImageError, match="missing.jpg: file not found"):
        preprocess_image(tmp_path / "missing.jpg", PRE)


def test_decompression_bomb_refused_before_decoding(tmp_path) -> None:
    path = _save(Image.new("1", (9000, 9000)), tmp_path / "bomb.png")  # 81 Mpx, ~10 KB on disk
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match="exceeds the limit of 64000000") as caught:
        preprocess_image(path, PRE)
    assert str(path) in str(caught.value)
    small = _save(_solid((1, 2, 3), size=(100, 100)), tmp_path / "small.png")
    with pytest.raises(ImageError, match="10000 pixels exceeds the limit of 5000"):
        preprocess_image(small, PRE, max_pixels=5000)
