"""Real photos for PT2E / ONNX Runtime calibration and for export verification.

Photos come from a folder of images (sorted recursively, so the choice is deterministic) or from a
canonical dataset folder (`recipes.jsonl`): the first image of each recipe of one partition, in file
order. Unreadable files are skipped. Each photo goes through the training `EvalTransform`, which is
the edge preprocessing contract (edge/preprocess.py matches it to 1/255), so a calibrated encoder
sees exactly what the phone will feed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from malm_edge.converters.errors import ConverterError
from malm_edge.training.data.canonical import iter_records, resolve_image_path
from malm_edge.training.data.records import RECIPES_FILE
from malm_edge.training.data.transforms import (
    EvalTransform,
    ImageError,
    Preprocessing,
    load_rgb,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
logger = logging.getLogger(__name__)


class CalibrationError(ConverterError, ValueError):
    """No usable photo was found where calibration or verification images were expected."""


def is_dataset(folder: Path) -> bool:
    """True when `folder` is a canonical dataset (holds recipes.jsonl)."""
    return (Path(folder) / RECIPES_FILE).is_file()


def folder_images(folder: Path) -> Iterator[Path]:
    """Image files below `folder`, sorted by path (deterministic)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


def dataset_images(dataset_dir: Path, partition: str) -> Iterator[Path]:
    """The first image of every recipe of `partition`, in recipes.jsonl order (streamed)."""
    for recipe in iter_records(dataset_dir):
        if recipe.partition == partition and recipe.images:
            yield resolve_image_path(dataset_dir, recipe.images[0])


def image_paths(source: Path, *, partition: str = "train") -> Iterator[Path]:
    """Candidate photos from a folder of images or a dataset's `partition`."""
    source = Path(source)
    if not source.is_dir():
        raise CalibrationError(f"{source}: not a folder of images or a dataset folder")
    return dataset_images(source, partition) if is_dataset(source) else folder_images(source)


def load_pixels(paths: Iterator[Path] | list[Path], preprocessing: Preprocessing, limit: int,
                *, skip: int = 0) -> tuple[torch.Tensor, list[Path]]:
    """The first `limit` readable photos (after skipping `skip` readable ones), preprocessed.

    Returns:
        (pixels (N, 3, S, S) float32, the N paths used).
    """
    transform, tensors, used, seen = EvalTransform(preprocessing), [], [], 0
    for path in paths:
        if len(used) >= limit:
            break
        try:
            image = load_rgb(path)
        except ImageError as error:
            logger.warning("skipping %s", error)
            continue
        seen += 1
        if seen <= skip:
            continue
        tensors.append(transform(image))  # (3, S, S)
        used.append(Path(path))
    if not tensors:
        raise CalibrationError("no readable photo found (need at least one real image)")
    return torch.stack(tensors), used  # (N, 3, S, S)


def calibration_pixels(source: Path, preprocessing: Preprocessing, limit: int = 64,
                       *, partition: str = "train", skip: int = 0) -> tuple[torch.Tensor, list[Path]]:
    """Preprocessed real photos from a folder or a dataset partition (see `load_pixels`).

    Raises:
        CalibrationError: `source` is not a folder, or holds no readable photo.
    """
    try:
        return load_pixels(image_paths(source, partition=partition), preprocessing, limit, skip=skip)
    except CalibrationError as error:
        raise CalibrationError(f"{source} ({partition if is_dataset(source) else 'folder'}): "
                               f"{error}") from None


def as_preprocessing(value: object) -> Preprocessing:
    """The `Preprocessing` itself, or one rebuilt from its dict form (a run config's)."""
    return value if isinstance(value, Preprocessing) else Preprocessing.from_dict(dict(value))
