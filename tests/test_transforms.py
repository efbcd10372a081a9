"""Image loading and transforms against a direct numpy implementation of the contract."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from malm_edge.training.data.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    ImageError,
    ImageTooLargeError,
    MissingImageError,
    Preprocessing,
    TrainTransform,
    UnreadableImageError,
    eval_transform,
    load_rgb,
)


def _random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")


def _reference(image: Image.Image, input_size: int, resize_size: int) -> np.ndarray:
    """The common.md contract written out directly: (3, S, S) float64."""
    w, h = image.size
    short, long = min(w, h), max(w, h)
    new_long = int(round(long * resize_size / short))
    new_size = (resize_size, new_long) if w <= h else (new_long, resize_size)
    resized = np.asarray(image.resize(new_size, Image.Resampling.BICUBIC), dtype=np.float64)
    rh, rw = resized.shape[:2]
    left, top = int(round((rw - input_size) / 2.0)), int(round((rh - input_size) / 2.0))
    crop = resized[top : top + input_size, left : left + input_size] / 255.0
    normalised = (crop - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    return normalised.transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("width", "height", "input_size", "resize_size"),
    [(97, 61, 32, 40), (61, 97, 32, 32), (50, 50, 50, 50), (640, 480, 224, 256), (33, 200, 16, 17)],
)
def test_eval_transform_matches_numpy_reference(width, height, input_size, resize_size):
    image = _random_image(width, height)
    prep = Preprocessing(input_size=input_size, resize_size=resize_size)
    got = eval_transform(image, prep)
    assert got.shape == (3, input_size, input_size) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), _reference(image, input_size, resize_size), atol=1e-5)


def test_eval_transform_channel_order_and_layout():
    image = _random_image(40, 30)
    base = eval_transform(image, Preprocessing(input_size=24)).numpy()
    nhwc_bgr = eval_transform(image, Preprocessing(input_size=24, channel_order="BGR", layout="NHWC"))
    assert nhwc_bgr.shape == (24, 24, 3)
    np.testing.assert_array_equal(nhwc_bgr.numpy(), base.transpose(1, 2, 0)[..., ::-1])


def test_preprocessing_roundtrip_and_validation():
    prep = Preprocessing(input_size=192, resize_size=220)
    record = json.loads(json.dumps(prep.to_dict()))
    assert Preprocessing.from_dict(record) == prep
    assert record["interpolation"] == "bicubic" and record["layout"] == "NCHW"
    assert Preprocessing(input_size=64).resize_size == 64
    with pytest.raises(ValueError, match="resize_size"):
        Preprocessing(input_size=64, resize_size=32)
    with pytest.raises(ValueError, match="crop"):
        Preprocessing(crop="random")
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({**record, "extra": 1})


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_load_rgb_modes(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    loaded = np.asarray(load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png")))
    assert loaded[0, 0].tolist() == [200, 0, 0] and loaded[3, 0].tolist() == [255, 255, 255]

    grey16 = Image.fromarray(np.array([[65535, 25700]], dtype=np.uint16))
    assert np.asarray(load_rgb(_save(grey16, tmp_path / "g16.png"))).tolist() == [[[255] * 3, [100] * 3]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 0, 0, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1
    loaded = np.asarray(load_rgb(_save(palette, tmp_path / "p.png", transparency=1)))
    assert loaded.tolist() == [[[10, 20, 30], [255, 255, 255]]]

    for mode in ("L", "CMYK", "1"):
        suffix = "jpg" if mode == "CMYK" else "png"
        image = load_rgb(_save(Image.new(mode, (5, 3)), tmp_path / f"{mode}.{suffix}"))
        assert image.mode == "RGB" and image.size == (5, 3)


def test_load_rgb_exif_first_frame_and_file_object(tmp_path):
    image = _random_image(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(image, tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(path).size == (10, 30)
    with open(path, "rb") as handle:
        assert load_rgb(handle).size == (10, 30)

    frames = [Image.new("RGB", (4, 4), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert load_rgb(gif).getpixel((0, 0)) == (255, 0, 0)
    # A GIF with a .jpg name is read for what it is.
    fake_jpg = tmp_path / "actually_gif.jpg"
    fake_jpg.write_bytes(gif.read_bytes())
    assert load_rgb(fake_jpg).getpixel((0, 0)) == (255, 0, 0)


def test_load_rgb_errors(tmp_path, monkeypatch):
    with pytest.raises(MissingImageError, match="nope.jpg"):
        load_rgb(tmp_path / "nope.jpg")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    with pytest.raises(UnreadableImageError, match="text.jpg: not a readable image"):
        load_rgb(text)
    buffer = io.BytesIO()
    _random_image(64, 64).save(buffer, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UnreadableImageError, match="truncated.jpg"):
        load_rgb(truncated)
    bomb = _save(_random_image(40, 40), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError):
        load_rgb(bomb)
    assert issubclass(MissingImageError, ImageError) and issubclass(ImageTooLargeError, ImageError)


def test_train_transform_is_seeded_and_shaped():
    image = _random_image(80, 60)
    prep = Preprocessing(input_size=32)

    def run(generator):
        return TrainTransform(prep, generator=generator)(image)

    first = run(torch.Generator().manual_seed(3))
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, run(torch.Generator().manual_seed(3)))
    assert not torch.equal(first, run(torch.Generator().manual_seed(4)))
    from_numpy = run(np.random.default_rng(3))
    assert torch.equal(from_numpy, run(np.random.default_rng(3)))
    torch.manual_seed(0)
    global_a = run(None)
    torch.manual_seed(0)
    assert torch.equal(global_a, run(None))
    pickle.dumps(TrainTransform(prep))  # DataLoader workers need to pickle it


def test_train_transform_without_randomness_is_eval_and_flips():
    image = _random_image(48, 48)
    prep = Preprocessing(input_size=24)
    expected = eval_transform(image, prep)
    plain = TrainTransform(prep, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, jitter=0.0)
    assert torch.allclose(plain(image), expected, atol=1e-6)
    generator = torch.Generator().manual_seed(0)
    flipping = TrainTransform(prep, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, generator=generator)
    outputs = [flipping(image) for _ in range(16)]
    flipped = [torch.allclose(o, expected.flip(-1), atol=1e-6) for o in outputs]
    unflipped = [torch.allclose(o, expected, atol=1e-6) for o in outputs]
    assert all(a or b for a, b in zip(flipped, unflipped)) and any(flipped) and any(unflipped)


def test_train_transform_crop_and_jitter_stay_in_range():
    image = Image.new("RGB", (90, 40), (255, 255, 255))
    prep = Preprocessing(input_size=16)
    out = TrainTransform(prep, jitter=0.3, generator=torch.Generator().manual_seed(1))(image)
    max_value = (1.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert (out.amax(dim=(1, 2)).numpy() <= max_value + 1e-5).all()
    with pytest.raises(ValueError):
        TrainTransform(prep, scale=(0.0, 1.0))


def test_real_photos_load_and_transform(real_photos):
    prep = Preprocessing(input_size=224)
    train = TrainTransform(prep, generator=torch.Generator().manual_seed(0))
    for path in real_photos:
        image = load_rgb(path)
        tensor = eval_transform(image, prep)
        assert tensor.shape == (3, 224, 224) and torch.isfinite(tensor).all()
        np.testing.assert_allclose(tensor.numpy(), _reference(image, 224, 224), atol=1e-5)
    assert train(load_rgb(real_photos[0])).shape == (3, 224, 224)
