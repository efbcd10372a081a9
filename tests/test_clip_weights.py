"""Loading CLIP vision weights (training/models/clip_weights.py) from randomly initialised state dicts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from malm_edge.training.models.clip_weights import (
    ClipWeightsError,
    _is_torchscript_archive,
    load_clip_vision_weights,
    read_clip_state_dict,
)
from malm_edge.training.models.malm import create_model
from malm_edge.training.models.vit import VisionTransformer
from malm_edge.training.presets import get_preset


def clip_vit_b16_state_dict(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors under the exact OpenAI CLIP ViT-B/16 `visual.*` names and shapes, plus text keys."""
    width, layers, tokens = 768, 12, 197

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).half()

    state = {
        "visual.conv1.weight": rand(width, 3, 16, 16),
        "visual.class_embedding": rand(width),
        "visual.positional_embedding": rand(tokens, width),
        "visual.ln_pre.weight": rand(width),
        "visual.ln_pre.bias": rand(width),
        "visual.ln_post.weight": rand(width),
        "visual.ln_post.bias": rand(width),
        "visual.proj": rand(width, 512),
    }
    for i in range(layers):
        block = f"visual.transformer.resblocks.{i}."
        state.update(
            {
                block + "ln_1.weight": rand(width),
                block + "ln_1.bias": rand(width),
                block + "attn.in_proj_weight": rand(3 * width, width),
                block + "attn.in_proj_bias": rand(3 * width),
                block + "attn.out_proj.weight": rand(width, width),
                block + "attn.out_proj.bias": rand(width),
                block + "ln_2.weight": rand(width),
                block + "ln_2.bias": rand(width),
                block + "mlp.c_fc.weight": rand(4 * width, width),
                block + "mlp.c_fc.bias": rand(4 * width),
                block + "mlp.c_proj.weight": rand(width, 4 * width),
                block + "mlp.c_proj.bias": rand(width),
            }
        )
    # text tower and top-level keys a CLIP checkpoint also holds; the loader must ignore them
    state.update(
        {
            "positional_embedding": rand(77, 512),
            "text_projection": rand(512, 512),
            "logit_scale": torch.tensor(4.6052),
            "token_embedding.weight": rand(100, 512),
            "transformer.resblocks.0.attn.in_proj_weight": rand(1536, 512),
            "ln_final.weight": rand(512),
        }
    )
    return state


def test_loads_clip_vit_b16_from_pt_and_safetensors(tmp_path: Path) -> None:
    state = clip_vit_b16_state_dict(torch.Generator().manual_seed(0))
    pt_path, st_path = tmp_path / "ViT-B-16.pt", tmp_path / "open_clip_model.safetensors"
    torch.save({f"module.{k}": v for k, v in state.items()}, pt_path)  # DDP-style prefix
    save_file(state, str(st_path))
    config, _ = get_preset("base")
    vit = VisionTransformer(config)
    for path in (pt_path, st_path):
        with torch.no_grad():
            for p in vit.parameters():
                p.zero_()
        report = load_clip_vision_weights(vit, path)
        assert len(report.loaded) == 8 + 12 * 12
        assert report.missing == [] and report.resized == []
        assert "text_projection" in report.ignored or "module.text_projection" in report.ignored
        model_state = vit.state_dict()
        for key in ("conv1.weight", "positional_embedding", "proj", "transformer.resblocks.11.mlp.c_proj.weight"):
            torch.testing.assert_close(model_state[key], state[f"visual.{key}"].float())
        torch.testing.assert_close(
            model_state["transformer.resblocks.3.attn.in_proj_weight"],
            state["visual.transformer.resblocks.3.attn.in_proj_weight"].float(),
        )
        assert vit.mask_token.abs().sum() == 0  # MALM's own token is left alone


def _micro_clip_state(config, width: int | None = None, grid: int | None = None) -> dict[str, torch.Tensor]:
    """A `visual.*` state dict for a micro ViT, optionally with another width or positional grid."""
    vit = VisionTransformer(config)
    state = {f"visual.{k}": v.clone() for k, v in vit.state_dict().items() if k != "mask_token"}
    if grid is not None:
        state["visual.positional_embedding"] = torch.randn(1 + grid * grid, config.vit_width)
    if width is not None:
        state["visual.conv1.weight"] = torch.randn(width, 3, config.patch_size, config.patch_size)
        state["visual.ln_pre.weight"] = torch.randn(width)
    return state


def test_wrong_shapes_and_missing_keys_are_listed(tmp_path: Path) -> None:
    config, _ = get_preset("micro")
    state = _micro_clip_state(config, width=32)
    del state["visual.ln_post.bias"]
    path = tmp_path / "wrong.bin"
    torch.save(state, path)
    with pytest.raises(ClipWeightsError) as error:
        load_clip_vision_weights(VisionTransformer(config), path)
    message = str(error.value)
    assert "visual.conv1.weight: checkpoint (32, 3, 8, 8) vs model (64, 3, 8, 8)" in message
    assert "visual.ln_pre.weight: checkpoint (32,) vs model (64,)" in message
    assert "missing keys" in message and "visual.ln_post.bias" in message
    assert str(path) in message


def test_positional_grid_is_interpolated(tmp_path: Path) -> None:
    config, _ = get_preset("micro")
    state = _micro_clip_state(config, grid=14)
    path = tmp_path / "grid14.safetensors"
    save_file(state, str(path))
    vit = VisionTransformer(config)
    report = load_clip_vision_weights(vit, path)
    assert report.resized == ["positional_embedding"]
    assert vit.positional_embedding.shape == (1 + config.num_patches, config.vit_width)
    torch.testing.assert_close(vit.positional_embedding[0], state["visual.positional_embedding"][0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_archive_and_wrapped_state_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = get_preset("micro")
    source = VisionTransformer(config).eval()

    class Clip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = source

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.visual.proj  # trivial: only the archive's state dict matters here

    example = torch.randn(1, 3, config.image_size, config.image_size)
    traced = torch.jit.trace(Clip().eval(), torch.randn(2, config.vit_width))
    jit_path = tmp_path / "clip_jit.pt"
    traced.save(str(jit_path))
    assert _is_torchscript_archive(jit_path)
    wrapped_path = tmp_path / "epoch_3.pt"
    wrapped = {f"_orig_mod.module.visual.{k}": v for k, v in source.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": wrapped}, wrapped_path)
    # The archive's tensors are read from the zip; its TorchScript is never loaded (it could run code).
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: pytest.fail("torch.jit.load was called"))
    for path in (jit_path, wrapped_path):
        target = VisionTransformer(config).eval()
        load_clip_vision_weights(target, path)
        with torch.no_grad():
            torch.testing.assert_close(target(example)["pooled"], source(example)["pooled"])


def test_unreadable_and_non_clip_files(tmp_path: Path) -> None:
    config, _ = get_preset("micro")
    vit = VisionTransformer(config)
    with pytest.raises(ClipWeightsError, match="no such file"):
        load_clip_vision_weights(vit, tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipWeightsError, match="cannot read"):
        read_clip_state_dict(garbage)
    text_only = tmp_path / "text.safetensors"
    save_file({"token_embedding.weight": torch.zeros(4, 4)}, str(text_only))
    with pytest.raises(ClipWeightsError, match="visual"):
        load_clip_vision_weights(vit, text_only)


def test_create_model_loads_clip_weights_into_student_and_teacher(tmp_path: Path) -> None:
    config, _ = get_preset("micro")
    path = tmp_path / "clip.safetensors"
    state = _micro_clip_state(config)
    save_file(state, str(path))
    config.clip_weights = str(path)
    model, _ = create_model(config)
    assert model.load_clip(path).missing == []
    torch.testing.assert_close(model.image_encoder.conv1.weight, state["visual.conv1.weight"])
    torch.testing.assert_close(model.teacher.conv1.weight, state["visual.conv1.weight"])
    skipped, _ = create_model(config, load_clip_weights=False)
    assert not torch.equal(skipped.image_encoder.conv1.weight, state["visual.conv1.weight"])
