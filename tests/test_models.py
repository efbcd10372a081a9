"""MALM teacher modules: shapes, masks, padding, gradients, EMA, ablations, presets (micro sizes)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from malm_edge.training.configs import config_hash, from_dict, to_dict
from malm_edge.training.models.config import ABLATIONS, MalmConfig
from malm_edge.training.presets import TEACHER_PRESETS, get_preset
from malm_edge.training.schedule import TrainConfig

PRESETS = tuple(TEACHER_PRESETS)
from malm_edge.training.models.losses import candidate_nce
from malm_edge.training.models.malm import MALM, create_model, iter_loss_names
from malm_edge.training.models.matching import TwoLevelMatching, cross_pairs
from malm_edge.training.models.recipe_encoder import RecipeEncoder
from malm_edge.training.models.vit import VisionTransformer, resize_positional_embedding

VOCAB = 50


def micro(**overrides) -> MalmConfig:
    config, _ = get_preset("micro", vocab_size=VOCAB, **overrides)
    return config


def make_recipe_batch(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random recipe batch following the data contract (pad id 0, masks True = real token)."""
    g = torch.Generator().manual_seed(seed)

    def component(shape: tuple[int, ...], min_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        *lead, length = shape
        lengths = torch.randint(min_len, length + 1, (*lead, 1), generator=g)
        mask = torch.arange(length) < lengths
        ids = torch.randint(1, VOCAB, shape, generator=g) * mask
        return ids, mask

    title, title_mask = component((batch, 15), 1)
    ingredients, ingredients_mask = component((batch, 20, 15), 1)
    instructions, instructions_mask = component((batch, 20, 20), 1)
    lines = torch.randint(1, 8, (batch, 2), generator=g)  # recipes use only their first few lines
    ingredients_mask &= (torch.arange(20) < lines[:, :1])[..., None]
    instructions_mask &= (torch.arange(20) < lines[:, 1:])[..., None]
    return {
        "title": title,
        "title_mask": title_mask,
        "ingredients": ingredients * ingredients_mask,
        "ingredients_mask": ingredients_mask,
        "instructions": instructions * instructions_mask,
        "instructions_mask": instructions_mask,
    }


def images(config: MalmConfig, batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(seed))


# ---- ViT -------------------------------------------------------------------------------------------


def test_vit_shapes_and_mask_fraction() -> None:
    config = micro()
    vit = VisionTransformer(config)
    out = vit(images(config, 4), mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    patches = config.num_patches
    assert out["tokens"].shape == (4, 1 + patches, config.vit_width)
    assert out["pooled"].shape == (4, config.vit_output_dim)
    assert out["mask"].shape == (4, patches) and out["mask"].dtype == torch.bool
    assert out["mask"].sum(1).tolist() == [round(0.75 * patches)] * 4
    assert not torch.equal(out["mask"][0], out["mask"][1])  # a random mask per image
    masked_tokens = out["tokens"][:, 1:][out["mask"]]  # (n, W)
    assert torch.equal(masked_tokens, vit.mask_token.expand_as(masked_tokens))


def test_vit_encodes_only_visible_patches() -> None:
    config = micro()
    vit = VisionTransformer(config).eval()
    pixels = images(config, 2)
    clean = vit(pixels, mask_ratio=0.5, generator=torch.Generator().manual_seed(7))
    mask = clean["mask"]  # (B, P)
    grid, size = config.grid_size, config.patch_size
    pixel_mask = mask.reshape(2, grid, grid).repeat_interleave(size, 1).repeat_interleave(size, 2)  # (B, S, S)
    poisoned = pixels.masked_fill(pixel_mask.unsqueeze(1), float("nan"))
    out = vit(poisoned, mask_ratio=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(out["mask"], mask)
    assert torch.isfinite(out["tokens"]).all() and torch.isfinite(out["pooled"]).all()
    torch.testing.assert_close(out["tokens"], clean["tokens"])
    torch.testing.assert_close(out["pooled"], clean["pooled"])


def test_vit_without_mask_sees_every_patch() -> None:
    config = micro()
    vit = VisionTransformer(config).eval()
    pixels = images(config, 2)
    out = vit(pixels)
    assert not out["mask"].any()
    changed = pixels.clone()
    changed[:, :, : config.patch_size, : config.patch_size] += 1.0  # first patch only
    assert not torch.allclose(vit(changed)["pooled"], out["pooled"])


def test_resize_positional_embedding() -> None:
    pos = torch.randn(1 + 14 * 14, 8)
    resized = resize_positional_embedding(pos, 8)
    assert resized.shape == (1 + 64, 8)
    assert torch.equal(resized[0], pos[0])
    assert resize_positional_embedding(pos, 14) is pos
    with pytest.raises(ValueError, match="square"):
        resize_positional_embedding(torch.randn(11, 8), 3)


def test_vit_rejects_wrong_image_size() -> None:
    config = micro()
    with pytest.raises(ValueError, match="64x64"):
        VisionTransformer(config)(torch.zeros(1, 3, 32, 32))


# ---- recipe encoder --------------------------------------------------------------------------------


def test_recipe_encoder_shapes_and_mask() -> None:
    config = micro()
    encoder = RecipeEncoder(config).eval()
    batch = make_recipe_batch(5)
    out = encoder(batch)
    assert out["embedding"].shape == (5, config.embed_dim)
    torch.testing.assert_close(out["embedding"].norm(dim=-1), torch.ones(5))
    assert out["tokens"].shape == (5, 15 + 20 + 20, config.recipe_width)
    want_mask = torch.cat(
        [batch["title_mask"], batch["ingredients_mask"].any(-1), batch["instructions_mask"].any(-1)], dim=1
    )
    assert torch.equal(out["tokens_mask"], want_mask)
    assert out["tokens"][~out["tokens_mask"]].abs().sum() == 0


def test_recipe_encoder_padding_invariance() -> None:
    encoder = RecipeEncoder(micro()).eval()
    batch = make_recipe_batch(4, seed=1)
    noisy = dict(batch)
    g = torch.Generator().manual_seed(9)
    for key in ("title", "ingredients", "instructions"):
        mask = batch[f"{key}_mask"]
        junk = torch.randint(1, VOCAB, mask.shape, generator=g)
        noisy[key] = torch.where(mask, batch[key], junk)
    assert not torch.equal(noisy["ingredients"], batch["ingredients"])
    with torch.no_grad():
        clean_out, noisy_out = encoder(batch), encoder(noisy)
    torch.testing.assert_close(noisy_out["embedding"], clean_out["embedding"])
    torch.testing.assert_close(noisy_out["tokens"], clean_out["tokens"])


def test_recipe_encoder_empty_components_are_finite() -> None:
    encoder = RecipeEncoder(micro())
    batch = make_recipe_batch(4, seed=2)
    batch["ingredients_mask"][0] = False  # no ingredients
    batch["instructions_mask"][1] = False  # no instructions
    batch["title_mask"][1] = False  # and no title
    for key in ("title_mask", "ingredients_mask", "instructions_mask"):
        batch[key][2] = False  # an entirely empty recipe
    batch["instructions_mask"][:] = False  # and no instructions anywhere in the batch
    for key in ("title", "ingredients", "instructions"):
        batch[key] = batch[key] * batch[f"{key}_mask"]
    out = encoder(batch)
    assert torch.isfinite(out["embedding"]).all() and torch.isfinite(out["tokens"]).all()
    assert not out["tokens_mask"][2].any()
    out["embedding"].sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_recipe_encoder_rejects_too_long_sequences() -> None:
    encoder = RecipeEncoder(micro(max_tokens=10))
    with pytest.raises(ValueError, match="positional table"):
        encoder(make_recipe_batch(2))


# ---- matching --------------------------------------------------------------------------------------


def test_matching_shapes_and_attention() -> None:
    config = micro()
    matching = TwoLevelMatching(config)
    batch, patches, tokens = 3, config.num_patches, 11
    image_tokens = torch.randn(batch, 1 + patches, config.match_width)
    recipe_tokens = torch.randn(batch, tokens, config.recipe_width)
    recipe_mask = torch.arange(tokens) < torch.tensor([[11], [4], [0]])  # last recipe entirely empty
    out = matching(image_tokens, recipe_tokens, recipe_mask)
    m = config.match_width
    assert out["image_att"].shape == (batch, 1 + patches, m)
    assert out["attention"].shape == (batch, 1 + patches, tokens)
    assert out["recipe_att"].shape == (batch, tokens, m)
    assert out["image_global"].shape == (batch, m) and out["recipe_global"].shape == (batch, m)
    assert out["recipe_local"].shape == (batch, patches, m)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(batch, 1 + patches))
    assert out["attention"][1, :, 4:].abs().sum() == 0  # padded recipe tokens get no attention
    want_local = torch.einsum("ps,sm->pm", out["attention"][0, 1:], out["recipe_att"][0])
    torch.testing.assert_close(out["recipe_local"][0], want_local)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_cross_pairs_pick_the_hardest_negatives_of_other_recipes() -> None:
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.7, 0.9, 0.6, 0.2], [0.3, 0.2, 0.9, 0.4], [0.0, 0.1, 0.2, 0.9]])
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # rows 0 and 1 are two photos of one recipe
    pairs = cross_pairs(similarity, 2, same | torch.eye(4, dtype=torch.bool))
    assert pairs.negatives == 2
    # true pairs, then image i with its 2 hardest recipes, then recipe j with its 2 hardest images
    assert pairs.image_index[:4].tolist() == pairs.recipe_index[:4].tolist() == [0, 1, 2, 3]
    assert pairs.recipe_index[4:12].view(4, 2).tolist()[0] == [3, 2]  # recipe 1 is image 0's own recipe
    assert pairs.recipe_index[4:12].view(4, 2).tolist()[2] == [3, 0]
    assert pairs.image_index[12:].view(4, 2).tolist()[3] == [0, 2]  # column 3: 0.5, 0.4
    assert pairs.valid[0].all() and pairs.valid[1].all()
    # k = B-1 with duplicates: the leftover candidate is the excluded duplicate and is marked invalid
    everything = cross_pairs(similarity, 10, same)
    assert everything.negatives == 3 and everything.image_index.numel() == 4 * 7
    assert everything.valid[0].sum(1).tolist() == [2, 2, 3, 3]
    scores = torch.arange(28.0)
    image_anchor, recipe_anchor = everything.anchor_scores(scores)  # (B, 1+k) each
    assert image_anchor[:, 0].tolist() == [0, 1, 2, 3] and image_anchor[1, 1:].tolist() == [7, 8, 9]
    assert recipe_anchor[0, 1:].tolist() == [16, 17, 18]
    assert everything.anchor_scores(torch.zeros(28, 5))[0].shape == (5, 4, 4)  # (P, B, 1+k)


def test_cross_pair_matching_learns_a_planted_correspondence() -> None:
    """ψ/ψ' trained on decoded true and false pairs learn to tell them apart (loss far below ln(1+k))."""
    torch.manual_seed(0)
    config = micro()
    matching = TwoLevelMatching(config)
    batch, tokens, patches, width = 16, 6, 4, config.recipe_width
    mixing = torch.randn(width, config.match_width) / width**0.5  # image features = recipe content, mixed
    optimizer = torch.optim.Adam(matching.parameters(), lr=1e-3)
    for _ in range(120):
        recipe_tokens = torch.randn(batch, tokens, width)  # fresh content every step: no memorising
        image_tokens = torch.cat([recipe_tokens.mean(1, keepdim=True), recipe_tokens[:, :patches]], 1) @ mixing
        pairs = cross_pairs(torch.randn(batch, batch), 3)
        valid = torch.ones(len(pairs.recipe_index), tokens, dtype=torch.bool)
        out = matching(image_tokens[pairs.image_index], recipe_tokens[pairs.recipe_index], valid)
        similarity = torch.nn.functional.cosine_similarity(out["image_global"], out["recipe_global"], dim=-1)
        loss = candidate_nce(*pairs.anchor_scores(similarity), 0.1, pairs.valid)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * math.log(4)


def test_cross_pair_losses_skip_same_recipe_negatives_and_need_a_negative() -> None:
    config = micro(ablation="lc_gc", matching_negatives=3)
    torch.manual_seed(0)
    model = MALM(config)
    pixels, batch = images(config, 4), make_recipe_batch(4)
    out = model(pixels, batch, epoch=0)
    # two recipes, two photos each: every anchor keeps 2 of its 3 negatives
    out_dup = model(pixels, batch, epoch=0, recipe_ids=torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(out_dup["loss_gc"]) and not torch.allclose(out["loss_gc"], out_dup["loss_gc"])
    # one recipe only: no negative is left, so the matching terms vanish
    out_same = model(pixels, batch, epoch=0, recipe_ids=torch.zeros(4, dtype=torch.long))
    assert out_same["loss_gc"].item() == 0.0 and out_same["loss_lc"].item() == 0.0
    alone = model(images(config, 1), make_recipe_batch(1), epoch=0)  # a batch of one pair
    assert alone["loss_gc"].item() == 0.0 and alone["loss_lc"].item() == 0.0


# ---- MALM ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_loss_keys_and_total(ablation: str) -> None:
    config = micro(ablation=ablation)
    model = MALM(config)
    out = model(images(config, 4), make_recipe_batch(4), epoch=3)
    losses = {k for k in out if k.startswith("loss")}
    expected = {
        "baseline": {"loss", "loss_itc"},
        "lc": {"loss", "loss_itc", "loss_lc"},
        "lc_gc": {"loss", "loss_itc", "loss_lc", "loss_gc"},
        "full": {"loss", "loss_itc", "loss_lc", "loss_gc", "loss_dist"},
    }[ablation]
    assert losses == expected == set(iter_loss_names(config))
    matching = sum(out.get(k, 0.0) for k in ("loss_lc", "loss_gc"))
    total = out["loss_itc"] + config.lambda_itm * matching + config.lambda_dist * out.get("loss_dist", 0.0)
    torch.testing.assert_close(out["loss"], total)
    assert out["margin"].item() == pytest.approx(0.195)
    assert out["image_embedding"].shape == out["recipe_embedding"].shape == (4, config.embed_dim)
    assert (model.teacher is not None) == (ablation == "full")
    assert (model.matching is not None) == (ablation != "baseline")


def test_loss_weights_apply() -> None:
    config = micro(lambda_itm=0.5, lambda_dist=2.0)
    torch.manual_seed(0)
    out = MALM(config)(images(config, 4), make_recipe_batch(4), epoch=0)
    want = out["loss_itc"] + 0.5 * (out["loss_lc"] + out["loss_gc"]) + 2.0 * out["loss_dist"]
    torch.testing.assert_close(out["loss"], want)


def test_full_mask_ratio_zero_disables_distillation() -> None:
    config = micro(mask_ratio=0.0)
    model = MALM(config)
    out = model(images(config, 4), make_recipe_batch(4), epoch=0)
    assert "loss_dist" not in out and "loss_gc" in out
    assert model.teacher is None and model.predictor is None


@pytest.mark.parametrize("negatives", [0, 2])
def test_gradient_reaches_every_trainable_parameter_and_not_the_teacher(negatives: int) -> None:
    config = micro(ablation="full", matching_negatives=negatives)
    model = MALM(config).train()
    out = model(images(config, 4), make_recipe_batch(4), epoch=0, class_ids=torch.tensor([0, 1, 0, -1]))
    out["loss"].backward()
    no_grad = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert no_grad == []
    teacher = list(model.teacher.parameters())
    assert teacher and all(not p.requires_grad and p.grad is None for p in teacher)


def test_train_mode_keeps_teacher_in_eval() -> None:
    model = MALM(micro()).train()
    assert model.training and model.recipe_encoder.training
    assert not model.teacher.training
    model.eval().train()
    assert not model.teacher.training


def test_ema_update_moves_teacher_toward_student() -> None:
    model = MALM(micro(ema_momentum=0.9))
    student = dict(model.image_encoder.named_parameters())
    with torch.no_grad():
        for p in student.values():
            p.add_(1.0)
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    model.update_ema()
    for name, p in model.teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * student[name])
    distance_before = sum((before[n] - student[n]).abs().sum() for n in before)
    distance_after = sum((p - student[n]).abs().sum() for n, p in model.teacher.named_parameters())
    assert distance_after < distance_before


def test_ema_inference_embeds_with_the_teacher_encoder() -> None:
    pixels = images(micro(), 2)
    model = MALM(micro(ema_inference=True)).eval()
    with torch.no_grad():
        same = model.encode_images(pixels)  # teacher == student at start
        for p in model.image_encoder.parameters():
            p.add_(0.5)  # the student moves; the EMA teacher has not followed yet
        torch.testing.assert_close(model.encode_images(pixels), same)
        model.config.ema_inference = False
        assert not torch.allclose(model.encode_images(pixels), same)
    baseline = MALM(micro(ablation="baseline", ema_inference=True))  # no teacher: the student embeds
    assert baseline.teacher is None and baseline.retrieval_image_encoder is baseline.image_encoder


def test_encoders_normalised_deterministic_and_unmasked() -> None:
    config = micro()
    model = MALM(config).eval()
    pixels, batch = images(config, 3), make_recipe_batch(3)
    with torch.no_grad():
        first_images, first_recipes = model.encode_images(pixels), model.encode_recipes(batch)
        torch.testing.assert_close(model.encode_images(pixels), first_images, rtol=0, atol=0)
        torch.testing.assert_close(model.encode_recipes(batch), first_recipes, rtol=0, atol=0)
    for emb in (first_images, first_recipes):
        assert emb.shape == (3, config.embed_dim)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_parameter_groups_and_freezing() -> None:
    model = MALM(micro())
    tower, other = model.image_tower_parameters(), model.other_parameters()
    tower_ids, other_ids = {id(p) for p in tower}, {id(p) for p in other}
    assert not tower_ids & other_ids
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    trainable = {id(p) for n, p in model.named_parameters() if p.requires_grad}
    assert tower_ids | other_ids == trainable and not trainable & teacher_ids
    assert id(model.image_encoder.mask_token) in other_ids
    model.freeze_image_tower(True)
    assert all(not p.requires_grad for p in tower) and model.image_encoder.mask_token.requires_grad
    model.freeze_image_tower(False)
    assert all(p.requires_grad for p in tower)


def test_fixed_temperature_is_a_buffer() -> None:
    model = MALM(micro(learnable_temperature=False, temperature=0.05))
    assert "logit_scale" not in dict(model.named_parameters())
    assert model.temperature.item() == pytest.approx(0.05)


def test_micro_model_overfits_a_small_batch() -> None:
    torch.manual_seed(0)
    config = micro()
    model = MALM(config).train()
    pixels, batch = images(config, 8, seed=3), make_recipe_batch(8, seed=3)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(50):
        out = model(pixels, batch, epoch=0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        model.update_ema()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    model.eval()
    with torch.no_grad():
        similarity = model.encode_images(pixels) @ model.encode_recipes(batch).t()  # (8, 8)
    assert (similarity.argmax(1) == torch.arange(8)).float().mean() >= 0.75


# ---- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_json(name: str) -> None:
    model_config, train_config = get_preset(name)
    assert isinstance(train_config, TrainConfig)
    restored = from_dict(MalmConfig, json.loads(json.dumps(to_dict(model_config))))
    assert restored == model_config
    assert from_dict(TrainConfig, json.loads(json.dumps(to_dict(train_config)))) == train_config
    assert config_hash(restored) == config_hash(model_config)


def test_base_preset_is_the_paper_setup() -> None:
    model, train = get_preset("base")
    vit = (model.image_size, model.patch_size, model.vit_width, model.vit_layers, model.vit_heads)
    assert vit == (224, 16, 768, 12, 12)
    assert (model.recipe_width, model.sentence_layers, model.recipe_heads, model.match_width) == (512, 2, 4, 768)
    assert (model.matching_layers, model.matching_heads, model.predictor_layers, model.predictor_heads) == (4, 4, 2, 2)
    assert model.mask_ratio == 0.75 and model.ablation == "full"
    schedule = (train.lr, train.image_lr, train.freeze_image_epochs, train.batch_size, train.epochs)
    assert schedule == (1e-5, 1e-6, 20, 128, 120)


def test_config_validation_and_overrides() -> None:
    assert config_hash(micro()) != config_hash(micro(mask_ratio=0.25))
    assert micro(ablation="baseline").effective_mask_ratio == 0.0
    with pytest.raises(ValueError, match="ablation"):
        micro(ablation="everything")
    with pytest.raises(ValueError, match="multiple of patch_size"):
        micro(image_size=60)
    with pytest.raises(ValueError, match="mask_ratio"):
        micro(mask_ratio=1.0)
    with pytest.raises(ValueError, match="matching_negatives"):
        micro(matching_negatives=-1)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown MalmConfig fields"):
        get_preset("micro", depth=3)
    with pytest.raises(ValueError, match="no fields"):
        from_dict(MalmConfig, {"bogus": 1})


def test_config_methods_and_hash_ignore_clip_path() -> None:
    model_config, train_config = get_preset("tiny")
    assert MalmConfig.from_dict(model_config.to_dict()) == model_config
    assert TrainConfig.from_dict(train_config.to_dict()) == train_config
    with_path = MalmConfig.from_dict({**model_config.to_dict(), "clip_weights": "/somewhere/ViT-B-16.pt"})
    assert config_hash(with_path) == config_hash(model_config)


def test_create_model_returns_preprocessing() -> None:
    config = micro()
    model, preprocessing = create_model(config)
    assert isinstance(model, MALM)
    size = preprocessing["input_size"] if isinstance(preprocessing, dict) else preprocessing.input_size
    assert size == config.image_size
    none, same = create_model(config, build=False)
    assert none is None and same == preprocessing


# ---- issue 13: MALM as the paper means it --------------------------------------------------------


def _captured(model: MALM) -> dict[str, list]:
    """Record the student passes, ψ's outputs and T's inputs of the next forward."""
    seen: dict[str, list] = {"student": [], "match": [], "predictor": []}
    model.image_encoder.register_forward_hook(lambda m, args, out: seen["student"].append(out))
    model.matching.register_forward_hook(lambda m, args, out: seen["match"].append(out))
    if model.predictor is not None:
        model.predictor.register_forward_hook(lambda m, args, out: seen["predictor"].append(args[0]))
    return seen


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "micro"])
def test_every_malm_preset_decodes_cross_negatives_by_default(name: str) -> None:
    """Defect 1: with k = 0, ψ decodes each true pair together and wins the contrast on pair identity."""
    assert get_preset(name)[0].matching_negatives >= (2 if name == "lite" else 4)  # lite: k = 2 by its step cost
    assert MalmConfig().matching_negatives >= 4 and get_preset("micro")[0].matching_negatives >= 1


def test_masked_patches_are_different_queries_inside_psi() -> None:
    """Defect 2: the mask token has no position, so every masked patch was the same ψ query (spread ~1e-6)."""
    config = micro(mask_ratio=0.75, matching_negatives=2)
    torch.manual_seed(0)
    model = MALM(config).train()
    seen = _captured(model)
    model(images(config, 4), make_recipe_batch(4), epoch=0)
    mask = seen["student"][0]["mask"]  # (B, P) of the masked pass
    image_att = seen["match"][0]["image_att"][:4, 1:]  # (B, P, M) of the true pairs
    recipe_local = seen["match"][0]["recipe_local"][:4]  # (B, P, M)
    for b in range(4):
        for features in (image_att[b][mask[b]], recipe_local[b][mask[b]]):  # (masked, M)
            spread = (features - features.mean(0)).norm(dim=-1).mean()
            assert spread > 1e-2 * features.norm(dim=-1).mean(), spread


def test_itc_trains_on_the_unmasked_pass_retrieval_runs() -> None:
    """Defect 3: L_itc read the masked student; retrieval runs on the full image."""
    config = micro(mask_ratio=0.75)
    torch.manual_seed(0)
    model = MALM(config).train()
    pixels, batch = images(config, 4), make_recipe_batch(4)
    out = model(pixels, batch, epoch=0)
    torch.testing.assert_close(out["image_embedding"], model.encode_images(pixels))
    model.config.itc_on_masked = True  # the ablation switch: the masked pass
    masked = model(pixels, batch, epoch=0)["image_embedding"]
    assert not torch.allclose(masked, model.encode_images(pixels), atol=1e-3)


@pytest.mark.parametrize("negatives", [0, 3])
def test_predictor_reads_the_matched_recipe_conditioned_tokens(negatives: int) -> None:
    """Defect 4: T read the projected I_f only; Fig. 2 reconstructs from ψ's matched tokens."""
    config = micro(matching_negatives=negatives)
    assert config.predictor_input == "matched"
    torch.manual_seed(0)
    model = MALM(config).train()
    seen = _captured(model)
    out = model(images(config, 4), make_recipe_batch(4), epoch=0)
    torch.testing.assert_close(seen["predictor"][0], seen["match"][0]["image_att"][:4])
    out["loss_dist"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.matching.psi.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.recipe_encoder.parameters())
    plain = MALM(micro(matching_negatives=negatives, predictor_input="image_tokens")).train()
    seen = _captured(plain)
    plain(images(config, 4), make_recipe_batch(4), epoch=0)
    assert not torch.allclose(seen["predictor"][0], seen["match"][0]["image_att"][:4])
    with pytest.raises(ValueError, match="predictor_input"):
        micro(predictor_input="teacher")


@pytest.mark.parametrize("negatives", [0, 3])
def test_two_photos_of_one_recipe_are_never_negatives(negatives: int) -> None:
    """Defect 5: L_itc (and the true-pair InfoNCE) ignored recipe_ids."""
    config = micro(matching_negatives=negatives)
    torch.manual_seed(0)
    model = MALM(config).train()
    pixels, batch = images(config, 4), make_recipe_batch(4)
    torch.manual_seed(1)  # the same patch mask in both calls
    distinct = model(pixels, batch, epoch=0, recipe_ids=torch.arange(4))
    torch.manual_seed(1)
    paired = model(pixels, batch, epoch=0, recipe_ids=torch.tensor([0, 0, 1, 1]))
    torch.manual_seed(1)
    torch.testing.assert_close(model(pixels, batch, epoch=0)["loss"], distinct["loss"])
    for name in ("loss_itc", "loss_gc", "loss_lc"):
        assert torch.isfinite(paired[name]) and not torch.allclose(distinct[name], paired[name]), name


def test_frozen_tower_gets_no_backward_pass() -> None:
    """Defect 9: the frozen phase set the tower's rate to 0 but still back-propagated through it."""
    from malm_edge.training.harness.distributed import WorldInfo
    from malm_edge.training.harness.teacher import FrozenTower

    config = micro()
    model = MALM(config).train()
    tower = FrozenTower(model, WorldInfo(), torch.device("cpu"))
    tower.set_frozen(True)
    out = tower.ddp_model(images(config, 4), make_recipe_batch(4), epoch=0)
    out["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.image_tower_parameters())
    assert model.image_head.weight.grad is not None
    tower.set_frozen(False)
    assert all(p.requires_grad for p in model.image_tower_parameters())
