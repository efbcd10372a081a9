"""ONNX export: `torch.onnx.export(dynamo=True)` fp32, then optional ONNX Runtime QDQ static int8.

fp32: the re-parameterised student (`prepare_for_export`) is exported with the dynamo exporter,
opset 18, a symbolic batch dimension ("batch") and its weights inside the one file
(`external_data=False`, a bundle rule). If a dynamic batch cannot be exported, batch 1 is fixed.

int8: `onnxruntime.quantization.quantize_static` in QDQ format, per-channel int8 weights, int8
activations calibrated (MinMax) on the same real photos as the ExecuTorch export, after ONNX
Runtime's `quant_pre_process` (shape inference + graph optimisation), as ONNX Runtime's
quantization guide recommends.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from malm_edge.converters.export_executorch import (
    QUANTIZE_MODES,
    ExportError,
    ExportReport,
    check_calibration,
)
from malm_edge.edge.write_errors import guard_writes, write_failure_cause
from malm_edge.training.models.student import prepare_for_export

OPSET = 18
INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"
BATCH_DIM = "batch"
logger = logging.getLogger(__name__)


def _export_fp32(module: nn.Module, example_input: torch.Tensor, path: Path, dynamic: bool) -> None:
    """One `torch.onnx.export` call (dynamo), self-contained file."""
    dynamic_shapes = {"pixels": {0: torch.export.Dim(BATCH_DIM, min=1, max=1024)}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example_input,), str(path), dynamo=True, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)


def _io_shapes(path: Path) -> tuple[list[int | str], list[int | str]]:
    """Input and output shapes of an .onnx file (symbolic dims as their names)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def dims(value: object) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return dims(graph.input[0]), dims(graph.output[0])


class _PhotoReader:
    """`CalibrationDataReader` over preprocessed photos, one image per call (batch of 1)."""

    def __init__(self, photos: np.ndarray, input_name: str) -> None:
        self._items = iter([{input_name: photos[i:i + 1]} for i in range(len(photos))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_onnx_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> None:
    """QDQ static int8 (per-channel weights) of an fp32 .onnx, calibrated on real photos."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    CalibrationDataReader.register(_PhotoReader)
    with tempfile.TemporaryDirectory(prefix="malm-onnx-q-") as work:
        prepped = Path(work) / "prepped.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        except Exception as error:  # pre-processing is an optimisation; quantize the raw file
            logger.warning("quant_pre_process failed (%s); quantizing the raw export", error)
            shutil.copyfile(fp32_path, prepped)
        staged = Path(work) / "int8.onnx"
        quantize_static(str(prepped), str(staged), _PhotoReader(calibration, INPUT_NAME),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        shutil.move(staged, out_path)


def export_onnx(model: nn.Module, example_input: torch.Tensor, out_path: str | os.PathLike,
                *, quantize: str = "none", calibration: torch.Tensor | None = None,
                dynamic_batch: bool = True) -> ExportReport:
    """Export a student image encoder to ONNX (fp32, or QDQ int8 through ONNX Runtime).

    Args:
        model: The student (left untouched; a re-parameterised copy is exported).
        example_input: (1, 3, S, S) float32 normalised pixels.
        out_path: The .onnx file to write.
        quantize: "none" or "int8".
        calibration: (N, 3, S, S) preprocessed real photos; required for int8.
        dynamic_batch: Try a symbolic batch dimension first (falls back to batch 1).

    Returns:
        An `ExportReport` (notes say when the batch had to be fixed).
    """
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize={quantize!r}, expected one of {QUANTIZE_MODES}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    module, notes = prepare_for_export(model), []
    # A full or read-only disk, anywhere below (the exporter's own write, quantization, the rename):
    # one ExportError naming out_path; the work folder goes with the `with`, nothing lands at out_path.
    with guard_writes(out_path, ExportError, intact="nothing was written at that path"), \
            tempfile.TemporaryDirectory(prefix="malm-onnx-", dir=out_path.parent) as work:
        fp32 = Path(work) / "fp32.onnx"
        try:
            _export_fp32(module, example_input, fp32, dynamic_batch)
        except Exception as error:
            if write_failure_cause(error, fp32) is not None:
                raise  # the disk, not the dynamic batch: retrying with batch 1 cannot help
            if not dynamic_batch:
                raise ExportError(f"{out_path}: torch.onnx.export failed: {error}") from error
            notes.append(f"dynamic batch export failed ({type(error).__name__}); batch fixed to 1")
            _export_fp32(module, example_input, fp32, False)
        if quantize == "int8":
            photos = check_calibration(calibration, example_input).numpy().astype(np.float32)
            quantize_onnx_int8(fp32, Path(work) / "int8.onnx", photos)
            fp32 = Path(work) / "int8.onnx"
        os.replace(fp32, out_path)
    input_shape, output_shape = _io_shapes(out_path)
    return ExportReport(path=out_path, target="onnx", quantization=quantize,
                        size_bytes=out_path.stat().st_size, input_shape=input_shape,
                        output_shape=output_shape, notes=notes)
