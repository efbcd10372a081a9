"""Student image encoders: shapes, re-parameterisation, XNNPACK delegation, pretrained loading, FLOPs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from malm_edge.training.models.flops import count_flops, count_params_and_flops
from malm_edge.training.models.mobileone import MobileOneBlock
from malm_edge.training.models.pretrained import PretrainedWeightsError, load_torchvision_mobilenet_v3
from malm_edge.training.models.student import StudentConfig, StudentEncoder, create_student, prepare_for_export
from malm_edge.training.presets import STUDENT_PRESETS, get_student_preset

MICRO_PRESETS = ("mnv3_micro", "mobileone_micro")
# Ops allowed outside the XNNPACK delegate: delegate plumbing, layout copies and the final
# L2 normalisation (F.normalize decomposes to pow, sum, pow/sqrt, clamp, expand, div).
ALLOWED_OUTSIDE = {
    "executorch_call_delegate", "getitem",
    "dim_order_ops._to_dim_order_copy.default", "dim_order_ops._clone_dim_order.default",
    "aten.pow.Tensor_Scalar", "aten.sum.dim_IntList", "aten.sqrt.default", "aten.div.Tensor",
    "aten.clamp.default", "aten.clamp_min.default", "aten.linalg_vector_norm.default",
    "aten.expand_copy.default",
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions run fastest single-threaded (and do not fight parallel test workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _calibrate_batch_norms(model: nn.Module, image_size: int, seed: int = 0) -> nn.Module:
    """Random BN affine parameters, then running statistics measured on random batches.

    A freshly initialised deep net in eval mode (running mean 0, var 1) lets the signal vanish, so
    its embedding barely depends on the input; calibrated, non-trivial statistics make both the
    input-dependence and the BN-folding checks meaningful. Returns the model in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    batch_norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in batch_norms:
            bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=generator))
            bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=generator))
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batch
        model.train()
        model(torch.randn(4, 3, image_size, image_size, generator=generator))
    return model.eval()


def _pixels(config: StudentConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, config.image_size, config.image_size, generator=generator)


# ---------------------------------------------------------------- shapes and normalisation


@pytest.mark.parametrize("name", sorted(STUDENT_PRESETS))
def test_preset_output_is_unit_norm_embedding(name: str) -> None:
    # full-size presets at 64 px keep this fast; the layers do not depend on the input size
    config = get_student_preset(name, image_size=64)
    model = _calibrate_batch_norms(create_student(get_student_preset(name)), config.image_size)
    pixels = _pixels(config)
    pixels[1] = torch.linspace(-2, 2, config.image_size).expand(3, config.image_size, -1)  # a smooth ramp
    with torch.no_grad():
        features = model.forward_features(pixels)  # (B, C, S/32, S/32)
        embedding = model(pixels)  # (B, D)
    side = config.image_size // 32
    assert features.shape == (2, model.backbone.out_channels, side, side)
    assert embedding.shape == (2, config.embed_dim)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    assert torch.dot(embedding[0], embedding[1]) < 0.999  # depends on the input


def test_width_mult_and_input_size_are_configurable() -> None:
    narrow = create_student(get_student_preset("mnv3_micro", width_mult=0.5, image_size=96))
    wide = create_student(get_student_preset("mnv3_micro", width_mult=2.0))
    assert narrow.backbone.out_channels < wide.backbone.out_channels
    assert narrow.backbone.out_channels % 8 == 0 and wide.backbone.out_channels % 8 == 0
    with torch.no_grad():
        assert narrow.eval()(torch.randn(1, 3, 96, 96)).shape == (1, 64)
    with pytest.raises(ValueError, match="unknown student arch"):
        StudentConfig(arch="resnet50")
    with pytest.raises(ValueError, match="no fields"):
        get_student_preset("mnv3_s", depth=3)
    config = get_student_preset("mobileone_s0", embed_dim=256)
    assert StudentConfig.from_dict(config.to_dict()) == config
    assert isinstance(create_student(config), StudentEncoder) and create_student(config).embed_dim == 256


def test_mobilenetv3_matches_paper_size() -> None:
    """Backbone parameter and MAC counts of the paper / torchvision (classifier excluded)."""
    small = create_student(get_student_preset("mnv3_s"))
    large = create_student(get_student_preset("mnv3_l"))
    # torchvision totals 2,542,856 and 5,483,032 include hidden and a 1000-way classifier
    assert sum(p.numel() for p in small.backbone.parameters()) == 2_542_856 - (576 * 1024 + 1024) - (1024 * 1000 + 1000)
    assert sum(p.numel() for p in large.backbone.parameters()) == 5_483_032 - (960 * 1280 + 1280) - (1280 * 1000 + 1000)
    # paper Table 3/4: 56M and 219M multiply-adds at 224 px
    assert 55e6 < count_params_and_flops(small)["macs"] < 58e6
    assert 210e6 < count_params_and_flops(large)["macs"] < 222e6


# ---------------------------------------------------------------- re-parameterisation


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "kernel", "stride", "groups"),
    [(8, 8, 3, 1, 8), (8, 8, 3, 2, 8), (8, 16, 1, 1, 1), (8, 8, 1, 1, 1), (3, 8, 3, 2, 1)],
)
def test_mobileone_block_reparameterization(in_channels, out_channels, kernel, stride, groups) -> None:
    block = MobileOneBlock(in_channels, out_channels, kernel, stride, groups, num_conv_branches=3)
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0.0, 0.1)
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    block.eval()
    x = torch.randn(2, in_channels, 9, 9)
    with torch.no_grad():
        before = block(x)
        block.reparameterize()
        after = block(x)
    assert block.is_reparameterized and len(block.conv_branches) == 0
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_prepare_for_export_is_equivalent(name: str) -> None:
    model = _calibrate_batch_norms(create_student(get_student_preset(name)), STUDENT_PRESETS[name].image_size)
    pixels = _pixels(model.config)
    exported = prepare_for_export(model)
    with torch.no_grad():
        before, after = model(pixels), exported(pixels)
        features_before, features_after = model.forward_features(pixels), exported.forward_features(pixels)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    scale = features_before.abs().max()
    torch.testing.assert_close(features_after / scale, features_before / scale, atol=1e-5, rtol=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in exported.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    assert not exported.training and not any(p.requires_grad for p in exported.parameters())


def test_reparameterized_mobileone_has_fewer_params_same_embedding() -> None:
    model = create_student(get_student_preset("mobileone_micro")).eval()
    exported = prepare_for_export(model)
    assert sum(p.numel() for p in exported.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(block.is_reparameterized for block in exported.modules() if isinstance(block, MobileOneBlock))


# ---------------------------------------------------------------- XNNPACK delegation


def _lower_to_xnnpack(model: nn.Module, example: torch.Tensor):
    """torch.export, then ExecuTorch edge lowering with the XNNPACK partitioner."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(torch.export.export(model, (example,)), partitioner=[XnnpackPartitioner()])


def _ops_outside_delegate(lowered) -> tuple[list[str], int]:
    """(names of the ops left outside any delegate, number of delegate calls) of a lowered program."""
    nodes = [n for n in lowered.exported_program().graph_module.graph.nodes if n.op == "call_function"]
    names = [getattr(n.target, "__name__", str(n.target)) for n in nodes]
    return names, names.count("executorch_call_delegate")


def _assert_fully_delegated(name: str, run_program: bool = False) -> None:
    config = STUDENT_PRESETS[name]
    model = prepare_for_export(create_student(get_student_preset(name)))
    example = _pixels(config, batch=1)
    lowered = _lower_to_xnnpack(model, example)
    outside, delegates = _ops_outside_delegate(lowered)
    not_allowed = sorted(set(outside) - ALLOWED_OUTSIDE)
    assert delegates >= 1
    assert not not_allowed, f"{name}: ops left outside the XNNPACK delegate: {not_allowed} (all outside: {outside})"
    if run_program:  # the lowered program runs in the ExecuTorch runtime and matches eager
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(lowered.to_executorch().buffer)
        (output,) = program.load_method("forward").execute([example])
        with torch.no_grad():
            torch.testing.assert_close(output, model(example), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MICRO_PRESETS)
def test_micro_presets_lower_fully_to_xnnpack(name: str) -> None:
    _assert_fully_delegated(name, run_program=True)


def test_delegation_check_reports_undelegated_ops() -> None:
    """Control: an op XNNPACK lacks (cumsum) is reported, so the check above can fail."""

    class WithCumsum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x)).cumsum(dim=1)

    outside, _ = _ops_outside_delegate(_lower_to_xnnpack(WithCumsum().eval(), torch.randn(1, 3, 8, 8)))
    assert "aten.cumsum.default" in set(outside) - ALLOWED_OUTSIDE


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnv3_s", "mobileone_s0", "lite0"])
def test_full_size_presets_lower_fully_to_xnnpack(name: str) -> None:
    _assert_fully_delegated(name)


# ---------------------------------------------------------------- pretrained (torchvision layout)

# torchvision's mobilenet_v3_small bnecks: (input, kernel, expanded, out, use_se), width_mult 1.
_TV_SMALL = [
    (16, 3, 16, 16, True), (16, 3, 72, 24, False), (24, 3, 88, 24, False), (24, 5, 96, 40, True),
    (40, 5, 240, 40, True), (40, 5, 240, 40, True), (40, 5, 120, 48, True), (48, 5, 144, 48, True),
    (48, 5, 288, 96, True), (96, 5, 576, 96, True), (96, 5, 576, 96, True),
]


def _tv_conv_bn(state: dict, prefix: str, out_ch: int, in_per_group: int, kernel: int, gen) -> None:
    state[f"{prefix}.0.weight"] = torch.randn(out_ch, in_per_group, kernel, kernel, generator=gen)
    state[f"{prefix}.1.weight"] = torch.rand(out_ch, generator=gen) + 0.5
    state[f"{prefix}.1.bias"] = torch.randn(out_ch, generator=gen)
    state[f"{prefix}.1.running_mean"] = torch.randn(out_ch, generator=gen)
    state[f"{prefix}.1.running_var"] = torch.rand(out_ch, generator=gen) + 0.5
    state[f"{prefix}.1.num_batches_tracked"] = torch.tensor(7)


def _torchvision_mnv3_small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under torchvision's exact mobilenet_v3_small keys and shapes."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _tv_conv_bn(state, "features.0", 16, 3, 3, gen)
    for index, (inp, kernel, exp, out, use_se) in enumerate(_TV_SMALL, start=1):
        layer = 0
        if exp != inp:
            _tv_conv_bn(state, f"features.{index}.block.{layer}", exp, inp, 1, gen)
            layer += 1
        _tv_conv_bn(state, f"features.{index}.block.{layer}", exp, 1, kernel, gen)
        layer += 1
        if use_se:
            squeeze = max(8, (exp // 4 + 4) // 8 * 8)
            state[f"features.{index}.block.{layer}.fc1.weight"] = torch.randn(squeeze, exp, 1, 1, generator=gen)
            state[f"features.{index}.block.{layer}.fc1.bias"] = torch.randn(squeeze, generator=gen)
            state[f"features.{index}.block.{layer}.fc2.weight"] = torch.randn(exp, squeeze, 1, 1, generator=gen)
            state[f"features.{index}.block.{layer}.fc2.bias"] = torch.randn(exp, generator=gen)
            layer += 1
        _tv_conv_bn(state, f"features.{index}.block.{layer}", out, exp, 1, gen)
    _tv_conv_bn(state, "features.12", 576, 96, 1, gen)
    state["classifier.0.weight"] = torch.randn(1024, 576, generator=gen)
    state["classifier.0.bias"] = torch.randn(1024, generator=gen)
    state["classifier.3.weight"] = torch.randn(1000, 1024, generator=gen)
    state["classifier.3.bias"] = torch.randn(1000, generator=gen)
    return state


def test_torchvision_key_table_matches_torchvision_param_count() -> None:
    state = _torchvision_mnv3_small_state_dict()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in state.items() if not k.endswith(buffers)) == 2_542_856
    assert state["features.1.block.1.fc1.weight"].shape == (8, 16, 1, 1)
    assert state["features.4.block.2.fc2.weight"].shape == (96, 24, 1, 1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_load_torchvision_mobilenet_v3_small(tmp_path: Path, suffix: str) -> None:
    state = _torchvision_mnv3_small_state_dict()
    path = tmp_path / f"mobilenet_v3_small{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({f"module.{k}": v for k, v in state.items()}, path)  # DDP prefix is stripped
    student = create_student(get_student_preset("mnv3_s"))
    report = load_torchvision_mobilenet_v3(student, path)

    assert report["ignored"] == ["classifier.3.bias", "classifier.3.weight"]
    assert len(report["loaded"]) == len(state) - 2
    backbone = student.backbone
    pairs = {
        "features.0.0.weight": backbone.stem.conv.weight,
        "features.0.1.running_var": backbone.stem.bn.running_var,
        "features.1.block.0.0.weight": backbone.blocks[0].depthwise.conv.weight,  # no expansion
        "features.1.block.1.fc2.bias": backbone.blocks[0].se.fc2.bias,
        "features.1.block.2.1.bias": backbone.blocks[0].project.bn.bias,
        "features.2.block.0.0.weight": backbone.blocks[1].expand.conv.weight,
        "features.2.block.2.0.weight": backbone.blocks[1].project.conv.weight,  # no SE
        "features.11.block.2.fc1.weight": backbone.blocks[10].se.fc1.weight,
        "features.11.block.3.1.running_mean": backbone.blocks[10].project.bn.running_mean,
        "features.12.0.weight": backbone.head.conv.weight,
        "classifier.0.weight": student.hidden[0].weight,
    }
    for key, tensor in pairs.items():
        torch.testing.assert_close(tensor, state[key], rtol=0, atol=0, msg=key)
    assert backbone.stem.bn.num_batches_tracked.item() == 7


def test_load_rejects_wrong_shapes_and_unknown_keys(tmp_path: Path) -> None:
    state = _torchvision_mnv3_small_state_dict()
    path = tmp_path / "small.pth"
    torch.save(state, path)
    narrow = create_student(get_student_preset("mnv3_s", width_mult=0.75))
    first_mismatch = (
        r"features\.2\.block\.0\.0\.weight \(72, 16, 1, 1\) -> "
        r"backbone\.blocks\.1\.expand\.conv\.weight \(56, 16, 1, 1\)"
    )
    with pytest.raises(PretrainedWeightsError, match=r"shape mismatches \(179\):\n  " + first_mismatch):
        load_torchvision_mobilenet_v3(narrow, path)

    torch.save({**state, "features.99.0.weight": torch.zeros(1)}, path)
    with pytest.raises(PretrainedWeightsError, match=r"unknown keys \(1\):\n  features\.99\.0\.weight"):
        load_torchvision_mobilenet_v3(create_student(get_student_preset("mnv3_s")), path)

    del state["features.3.block.1.0.weight"]
    torch.save(state, path)
    missing = r"model keys not in file \(1\):\n  backbone\.blocks\.2\.depthwise\.conv\.weight"
    with pytest.raises(PretrainedWeightsError, match=missing):
        load_torchvision_mobilenet_v3(create_student(get_student_preset("mnv3_s")), path)

    with pytest.raises(PretrainedWeightsError, match="MobileNetV3 backbone"):
        load_torchvision_mobilenet_v3(create_student(get_student_preset("mobileone_micro")), path)


# ---------------------------------------------------------------- FLOP counter


def test_flop_counter_matches_hand_count() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 16*16 outputs * 8 ch * 3*3*3 = 55,296 MACs
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # depthwise: 16*16 * 8 * 3*3 = 18,432 MACs
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),  # 80 MACs
    )
    counts = count_params_and_flops(net, (1, 3, 16, 16))
    assert counts["macs"] == 55_296 + 18_432 + 80
    assert counts["flops"] == 2 * counts["macs"]
    assert counts["params"] == (8 * 27 + 8) + (8 * 9 + 8) + (80 + 10)
    assert count_params_and_flops(net, (3, 3, 16, 16))["macs"] == 3 * counts["macs"]


def test_flop_counter_counts_attention_on_cpu() -> None:
    """The CPU paths FlopCounterMode misses: fused nn.MultiheadAttention and CPU flash SDPA."""
    batch, tokens, width, heads = 2, 10, 64, 4
    attention = nn.MultiheadAttention(width, heads, batch_first=True)
    x = torch.randn(batch, tokens, width)
    projections = 4 * batch * tokens * width * width  # q, k, v and output projections
    products = 2 * batch * tokens * tokens * width  # Q K^T and A V over all heads
    flops = count_flops(attention, x, lambda m, t: m(t, t, t, need_weights=False))
    assert flops == 2 * (projections + products)

    class Sdpa(nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return nn.functional.scaled_dot_product_attention(q, q, q)

    q = torch.randn(batch, heads, tokens, width // heads)
    assert count_flops(Sdpa(), q) == 2 * products
