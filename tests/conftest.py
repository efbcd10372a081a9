"""Shared pytest fixtures: the real data in ../shared/datasets (skipped cleanly where absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"


def _shared(sub: str) -> Path:
    path = SHARED_DATASETS / sub
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/datasets is not beside the checkout)")
    return path


@pytest.fixture
def recipe1m_sample() -> Path:
    """Real Recipe1M-format records: layer1.json, layer2.json, images/<split>/a/b/c/d/<id>.jpg."""
    return _shared("recipe1m_sample")


@pytest.fixture
def epicurious_dir() -> Path:
    """The Epicurious (Kaggle) CSV, split.json and `Food Images/`."""
    return _shared("epicurious")


@pytest.fixture
def real_photos() -> list[Path]:
    """Real food photos of varied sizes (phone photos and Recipe1M validation photos)."""
    root = _shared("photos")
    photos = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        pytest.skip(f"no photos under {root}")
    return photos


@pytest.fixture(scope="session")
def tiny_synthfood(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small SynthFood dataset (60 recipes x 2 renders at 64 px), generated once per session."""
    from malm_edge.training.data.synthfood.generate import generate_synthfood

    out = tmp_path_factory.mktemp("synthfood") / "data"
    generate_synthfood(out, n_recipes=60, images_per_recipe=2, image_size=64, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def micro_teacher_run(tiny_synthfood: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `micro` MALM teacher trained for one short epoch on `tiny_synthfood`."""
    from malm_edge.training.harness.teacher import train_teacher
    from malm_edge.training.presets import get_preset

    model_cfg, train_cfg = get_preset("micro")
    train_cfg.epochs, train_cfg.batch_size = 1, 16
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_teacher(run, data_dir=tiny_synthfood, model_cfg=model_cfg, train_cfg=train_cfg, progress=False)
    return run


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: tests are tiny, and 2 threads on a shared 2-core runner
    can be several times slower than 1 (subprocess tests set OMP_NUM_THREADS=1 themselves)."""
    try:
        import torch
    except ImportError:  # the edge runtime's torch-free tests still run
        return
    torch.set_num_threads(1)
