"""CoreML export (coremltools 9): ML Program for iOS 17, fp16 compute, optional weight compression.

The student is re-parameterised (`prepare_for_export`), wrapped so that the normalisation
((x / 255 - mean) / std, per channel) runs inside the model, traced at a fixed (1, 3, S, S) input
and converted with `minimum_deployment_target=ct.target.iOS17`. The app therefore feeds the
resized, centre-cropped photo as float32 RGB 0..255 in NCHW (manifest `pixel_input: "rgb_0_255"`).
A CoreML `ImageType` cannot express it: its scale is one number for all channels, CLIP's std is not.

Weight compression (`coremltools.optimize.coreml`): "int8_weights" (linear symmetric per-channel
int8, `constexpr_affine_dequantize` ops) or "palettize6" (6-bit k-means look-up tables,
`constexpr_lut_to_dense` ops). Structural verification (`inspect_mlpackage`) reads the spec and the
MIL program without loading the model, so it runs on Linux; prediction needs macOS.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from malm_edge.converters.export_executorch import ExportError, ExportReport
from malm_edge.edge.bundle import size_path
from malm_edge.edge.write_errors import guard_writes
from malm_edge.training.data.transforms import Preprocessing
from malm_edge.training.models.student import prepare_for_export

COMPRESSIONS = ("none", "int8_weights", "palettize6")
PRECISIONS = ("float16", "float32")
INPUT_NAME = "pixels"
OUTPUT_NAME = "embedding"
PIXEL_INPUT = "rgb_0_255"
# MIL op that holds compressed weights, per compression mode (iOS 17 opset).
COMPRESSED_OPS = {"int8_weights": "constexpr_affine_dequantize", "palettize6": "constexpr_lut_to_dense"}


class NormalizedInput(nn.Module):
    """(x / 255 - mean) / std inside the model, then the encoder: (1, 3, S, S) 0..255 -> (1, D)."""

    def __init__(self, encoder: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.encoder = encoder
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        # x / 255 / std - mean / std, folded into one multiply-add
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("bias", -mean_t / std_t)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.encoder(rgb * self.scale + self.bias)  # (1, D)


def compress_weights(mlmodel: Any, compression: str, weight_threshold: int = 512) -> Any:
    """Apply CoreML weight compression ("none" returns the model unchanged)."""
    import coremltools.optimize.coreml as cto

    if compression == "none":
        return mlmodel
    if compression == "int8_weights":
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                         granularity="per_channel", weight_threshold=weight_threshold)
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    if compression == "palettize6":
        op = cto.OpPalettizerConfig(nbits=6, mode="kmeans", weight_threshold=weight_threshold)
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))
    raise ExportError(f"compression={compression!r}, expected one of {COMPRESSIONS}")


def export_coreml(model: nn.Module, preprocessing: Preprocessing, out_path: str | os.PathLike, *,
                  precision: str = "float16", compression: str = "none",
                  weight_threshold: int = 512) -> ExportReport:
    """Convert a student image encoder to a CoreML `.mlpackage` (raw RGB input, see module doc).

    Args:
        model: The student (left untouched).
        preprocessing: Fixes the input size and the in-model mean/std.
        out_path: The `.mlpackage` folder to write (replaced atomically if present).
        precision: Compute precision, "float16" (default) or "float32".
        compression: "none", "int8_weights" or "palettize6".
        weight_threshold: Weights with fewer elements stay uncompressed.

    Returns:
        An `ExportReport` with quantization "fp16"/"fp32" or the compression name.
    """
    import coremltools as ct

    logging.getLogger("coremltools").setLevel(logging.WARNING)  # one INFO line per removed op otherwise

    if precision not in PRECISIONS or compression not in COMPRESSIONS:
        raise ExportError(f"precision={precision!r} / compression={compression!r}; expected "
                          f"{PRECISIONS} / {COMPRESSIONS}")
    out_path = Path(out_path)
    size = preprocessing.input_size
    wrapped = NormalizedInput(prepare_for_export(model), preprocessing.mean, preprocessing.std).eval()
    example = torch.rand(1, 3, size, size) * 255.0  # (1, 3, S, S) raw RGB
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapped, example)
        try:
            mlmodel = ct.convert(
                traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                inputs=[ct.TensorType(name=INPUT_NAME, shape=(1, 3, size, size), dtype=np.float32)],
                outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32)
            mlmodel = compress_weights(mlmodel, compression, weight_threshold)
        except Exception as error:
            raise ExportError(f"{out_path}: coremltools conversion failed: {error}") from error
        dim = int(wrapped(example).shape[-1])
    _save_atomic(mlmodel, out_path)
    quantization = compression if compression != "none" else ("fp16" if precision == "float16" else "fp32")
    return ExportReport(path=out_path, target="coreml", quantization=quantization,
                        size_bytes=size_path(out_path), input_shape=[1, 3, size, size],
                        output_shape=[1, dim], notes=[f"pixel_input={PIXEL_INPUT}"])


def _save_atomic(mlmodel: Any, out_path: Path) -> None:
    """Save into a staging folder beside out_path, then rename it into place. A full or read-only
    disk raises `ExportError("PATH: cannot write (CAUSE)")` with the staging folder removed."""
    with guard_writes(out_path, ExportError, intact="nothing was written at that path"):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
        try:
            mlmodel.save(str(staging / out_path.name))
            previous = staging / "previous"
            if out_path.exists():
                os.replace(out_path, previous)  # moved aside, deleted with staging once replaced
            try:
                os.replace(staging / out_path.name, out_path)
            except BaseException:
                if previous.exists():
                    os.replace(previous, out_path)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Structural verification (no prediction; works on Linux)
# --------------------------------------------------------------------------------------------


@dataclass
class CoreMLStructure:
    """What an `.mlpackage` declares.

    Attributes:
        inputs / outputs: name -> (shape, data type name) from the model description.
        spec_version: CoreML specification version (8 = iOS 17).
        op_types: MIL operation type -> count in the main function.
        const_dtypes: data type name -> count over `const` ops holding tensors of >= 64 values.
    """

    inputs: dict[str, tuple[list[int], str]]
    outputs: dict[str, tuple[list[int], str]]
    spec_version: int
    op_types: Counter = field(default_factory=Counter)
    const_dtypes: Counter = field(default_factory=Counter)


def _feature(description: Any) -> tuple[list[int], str]:
    from coremltools.proto import FeatureTypes_pb2

    array = description.type.multiArrayType
    dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
    return [int(d) for d in array.shape], dtype


def _tensor_dtype(value_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value_type.tensorType.dataType)


def _numel(value_type: Any) -> int:
    total = 1
    for dim in value_type.tensorType.dimensions:
        total *= int(dim.constant.size or 1)
    return total


def inspect_mlpackage(path: str | os.PathLike) -> CoreMLStructure:
    """Read an `.mlpackage`'s spec and MIL program without compiling or running it."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    structure = CoreMLStructure(
        inputs={d.name: _feature(d) for d in spec.description.input},
        outputs={d.name: _feature(d) for d in spec.description.output},
        spec_version=int(spec.specificationVersion))
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                structure.op_types[op.type] += 1
                if op.type == "const" and op.outputs and _numel(op.outputs[0].type) >= 64:
                    structure.const_dtypes[_tensor_dtype(op.outputs[0].type)] += 1
    return structure


def check_mlpackage(path: str | os.PathLike, *, input_size: int, embed_dim: int,
                    quantization: str) -> CoreMLStructure:
    """Structural check of an exported encoder; raises `ExportError` naming what is wrong.

    Checks: one float32 input `pixels` (1, 3, S, S), one float32 output `embedding` (1, D),
    iOS 17 spec (>= 8), and weights stored as the quantization says (fp16 consts for "fp16",
    `constexpr_affine_dequantize` for "int8_weights", `constexpr_lut_to_dense` for "palettize6").
    """
    found = inspect_mlpackage(path)
    expected_in = {INPUT_NAME: ([1, 3, input_size, input_size], "FLOAT32")}
    problems = []
    if found.inputs != expected_in:
        problems.append(f"inputs {found.inputs}, expected {expected_in}")
    out = found.outputs.get(OUTPUT_NAME)
    if len(found.outputs) != 1 or out is None or out[1] != "FLOAT32" or (out[0] and out[0][-1] != embed_dim):
        problems.append(f"outputs {found.outputs}, expected {OUTPUT_NAME} (1, {embed_dim}) FLOAT32")
    if found.spec_version < 8:
        problems.append(f"specification version {found.spec_version} < 8 (iOS 17)")
    if quantization in COMPRESSED_OPS and not found.op_types.get(COMPRESSED_OPS[quantization]):
        problems.append(f"no {COMPRESSED_OPS[quantization]} op for {quantization} weights")
    compressed = sorted(op for op in found.op_types if op.startswith("constexpr_"))
    if quantization == "fp16" and (found.const_dtypes.get("FLOAT32") or compressed
                                   or not found.const_dtypes.get("FLOAT16")):
        problems.append(f"weights {dict(found.const_dtypes)} {compressed}, expected plain FLOAT16 "
                        "consts for fp16")
    if problems:
        raise ExportError(f"{path}: " + "; ".join(problems))
    return found
