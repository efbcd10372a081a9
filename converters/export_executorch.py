"""ExecuTorch export: torch.export -> (PT2E static int8, XNNPACK quantizer) -> XNNPACK lowering -> .pte.

Follows ExecuTorch's XNNPACK export example: the student is re-parameterised on a copy
(`prepare_for_export`), captured with `torch.export.export`, optionally quantized with PT2E
(`XNNPACKQuantizer`, symmetric per-channel int8 weights, static int8 activations, observers
calibrated on real photos; a ReLU6's output is observed after the clamp, `observe_after_clamps`),
then `to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])` and `.to_executorch()`.
Every operator left outside an XNNPACK delegate is reported by name.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from malm_edge.converters.errors import ConverterError
from malm_edge.edge.write_errors import guard_writes
from malm_edge.training.models.student import prepare_for_export

QUANTIZE_MODES = ("none", "int8")
DELEGATE_CALL = "executorch_call_delegate"
# Graph bookkeeping that is never a compute op (not "left outside the delegate").
_BOOKKEEPING = {"getitem", "executorch_call_delegate", "alloc", "delegate"}
logger = logging.getLogger(__name__)


class ExportError(ConverterError, RuntimeError):
    """An export step failed; the message names the step and the output file."""


@dataclass
class ExportReport:
    """What an export produced.

    Attributes:
        path: The written file (or .mlpackage folder).
        target: "executorch" | "onnx" | "coreml".
        quantization: "none" | "int8" | ...
        size_bytes: Size on disk.
        input_shape: Input shape (a symbolic batch is the string "batch").
        output_shape: Output shape.
        delegated_ops: Number of operator nodes inside delegates (ExecuTorch only).
        non_delegated_ops: Names of operators left to the portable CPU kernels (ExecuTorch only).
        notes: Anything else worth telling the user.
    """

    path: Path
    target: str
    quantization: str
    size_bytes: int
    input_shape: list[int | str]
    output_shape: list[int | str]
    delegated_ops: int = 0
    non_delegated_ops: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"path": str(self.path), "target": self.target, "quantization": self.quantization,
                "size_bytes": self.size_bytes, "input_shape": self.input_shape,
                "output_shape": self.output_shape, "delegated_ops": self.delegated_ops,
                "non_delegated_ops": self.non_delegated_ops, "notes": self.notes}


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, then rename it into place.

    A full or read-only disk raises `ExportError("PATH: cannot write (CAUSE)")`; the temp file is
    removed and a previous file at `path` is left as it was.
    """
    with guard_writes(path, ExportError, intact="nothing was written at that path"):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


def check_calibration(calibration: torch.Tensor | None, example_input: torch.Tensor) -> torch.Tensor:
    """Real calibration photos (N, 3, S, S) matching the example's image shape."""
    if calibration is None or len(calibration) == 0:
        raise ExportError("int8 quantization needs calibration photos (real images, not noise)")
    if tuple(calibration.shape[1:]) != tuple(example_input.shape[1:]):
        raise ExportError(f"calibration photos have shape {tuple(calibration.shape)}, the model "
                          f"input is {tuple(example_input.shape)}")
    return calibration


_CLAMPS = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)
_CLAMPED_PRODUCERS = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def observe_after_clamps(graph_module: torch.fx.GraphModule) -> int:
    """Move the output observer of each conv or linear that feeds a ReLU6 to after the ReLU6.

    XNNPACKQuantizer fuses only ReLU into a conv's quantized output; a ReLU6 (hardtanh) shares its
    producer's observer, so the int8 scale is set by the unclamped pre-activation, which reaches the
    thousands where batch norm with a variance near zero was folded (EfficientNet-Lite), and every
    value in 0..6 falls into a few levels (lite0: cosine to float 0.958 mean, 0.842 min). XNNPACK
    fuses the clamp into the conv or linear (its partitioner's `fused_acts`), so the observed tensor
    is the one that runs. Returns how many observers moved.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import (
        Q_ANNOTATION_KEY,
        QuantizationAnnotation,
    )

    moved = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in _CLAMPS:
            continue
        producer = node.args[0]
        if not isinstance(producer, torch.fx.Node) or producer.target not in _CLAMPED_PRODUCERS:
            continue
        annotation = producer.meta.get(Q_ANNOTATION_KEY)
        if annotation is None or annotation.output_qspec is None or len(producer.users) != 1:
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=annotation.output_qspec, _annotated=True)
        annotation.output_qspec = None
        moved += 1
    return moved


def pt2e_quantize(model: nn.Module, example_input: torch.Tensor,
                  calibration: torch.Tensor) -> torch.fx.GraphModule:
    """PT2E static int8 quantization for XNNPACK, calibrated on real photos.

    Args:
        model: An export-ready eval model (see `prepare_for_export`).
        example_input: (1, 3, S, S) example.
        calibration: (N, 3, S, S) preprocessed real photos.

    Returns:
        The converted (quantize/dequantize) graph module, runnable in eager mode.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class ClampAwareQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            observe_after_clamps(model)
            return model

    quantizer = ClampAwareQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    captured = torch.export.export(model, (example_input,), strict=False).module()
    prepared = prepare_pt2e(captured, quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), 1):
            prepared(calibration[start:start + 1])  # batch 1, as exported: (1, 3, S, S)
    return convert_pt2e(prepared)


def delegation_summary(edge_program: Any) -> tuple[int, list[str]]:
    """(operators inside XNNPACK delegates, sorted names of compute operators outside them)."""
    graph_module = edge_program.exported_program().graph_module
    outside: set[str] = set()
    delegated = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if DELEGATE_CALL in name:
            lowered = getattr(graph_module, node.args[0].target, None)
            inner = getattr(lowered, "original_module", None)
            if inner is not None:
                delegated += sum(1 for n in inner.graph.nodes if n.op == "call_function")
            continue
        if not any(word in name for word in _BOOKKEEPING):
            outside.add(name)
    return delegated, sorted(outside)


def export_executorch(model: nn.Module, example_input: torch.Tensor, out_path: str | os.PathLike,
                      *, quantize: str = "none",
                      calibration: torch.Tensor | None = None) -> ExportReport:
    """Export a student image encoder to an XNNPACK-delegated ExecuTorch program.

    Args:
        model: The student (left untouched: a re-parameterised copy is exported).
        example_input: (1, 3, S, S) float32 normalised pixels (fixes the static batch of 1).
        out_path: The .pte file to write (atomically).
        quantize: "none" (fp32) or "int8" (PT2E static, per-channel weights).
        calibration: (N, 3, S, S) preprocessed real photos; required for int8.

    Returns:
        An `ExportReport`, with every operator left outside the delegate.

    Raises:
        ExportError: Bad arguments or a failed export step.
    """
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import to_edge_transform_and_lower

    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"quantize={quantize!r}, expected one of {QUANTIZE_MODES}")
    out_path = Path(out_path)
    module: nn.Module = prepare_for_export(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if quantize == "int8":
            module = pt2e_quantize(module, example_input, check_calibration(calibration, example_input))
        try:
            program = torch.export.export(module, (example_input,), strict=False)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            delegated, outside = delegation_summary(edge)
            buffer = edge.to_executorch().buffer
        except Exception as error:  # exporter/lowering raise many types
            raise ExportError(f"{out_path}: ExecuTorch lowering failed: {error}") from error
        output = module(example_input)  # (1, D)
    write_bytes_atomic(out_path, buffer)
    if outside:
        logger.warning("%s: operators not delegated to XNNPACK: %s", out_path.name, ", ".join(outside))
    return ExportReport(path=out_path, target="executorch", quantization=quantize,
                        size_bytes=out_path.stat().st_size, input_shape=list(example_input.shape),
                        output_shape=list(output.shape), delegated_ops=delegated,
                        non_delegated_ops=outside)
