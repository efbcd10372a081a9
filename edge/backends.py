"""Image-encoder backends behind one interface: ONNX Runtime and CoreML, plus registered ones.

Each runtime is imported lazily inside its backend, so importing this module needs only numpy.
Nothing here imports torch.

ExecuTorch: its *pip wheel's* Python runtime (executorch 1.5.1) imports torch
(`executorch.runtime` -> `pybindings.portable_lib` loads torch first, links libtorch, and
`Method.execute` takes torch tensors), so running a .pte from Python is host-side tooling: its
backend lives in `malm_edge.converters.executorch_runtime`; host tools (`malm-edge search`,
`bench`) add it with `register_backend`, converters use it directly. On the phone ExecuTorch's C++/Swift/Kotlin
runtime runs the same .pte without torch.
"""

from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from malm_edge.edge.bundle import Bundle, EncoderEntry
from malm_edge.edge.errors import EdgeError


class BackendError(EdgeError, RuntimeError):
    """A backend is unavailable or cannot run the encoder; the message says which and why."""


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero). (N, D) -> (N, D), float64 kept, else float32."""
    embeddings = np.asarray(embeddings)
    if embeddings.dtype != np.float64:
        embeddings = embeddings.astype(np.float32, copy=False)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)  # (N, 1)
    return embeddings / np.maximum(norms, eps)


class EncoderBackend(ABC):
    """An image encoder: (N, 3, S, S) float32 pixels -> (N, D) float32 L2-normalised embeddings."""

    name: str = "base"
    encoder: str | None = None  # the manifest encoder name, set by load_backend
    _batch: int | None = None  # the model's fixed batch size, None when it takes any

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path = Path(path)
        self.threads = threads

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """Embed a batch of preprocessed images.

        Args:
            pixels: (N, 3, S, S) float32, as `preprocess_image` returns (concatenated).

        Returns:
            (N, D) float32, L2-normalised.
        """
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        if pixels.ndim != 4:
            raise BackendError(f"{self.path}: expected (N, 3, S, S) pixels, got {pixels.shape}")
        return l2_normalize(self._run(pixels))

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        """Raw encoder output for (N, 3, S, S) pixels -> (N, D): one call, or one per image when
        the model's batch is fixed at another size."""
        if self._batch is None or self._batch == len(pixels):
            return self._execute(pixels)
        return np.concatenate([self._execute(pixels[i:i + 1]) for i in range(len(pixels))])

    @abstractmethod
    def _execute(self, pixels: np.ndarray) -> np.ndarray:
        """One call of the runtime on a batch it accepts: (n, 3, S, S) -> (n, D)."""


def static_batch(shape: list) -> int | None:
    """The fixed batch size of an input shape, or None when it is symbolic."""
    first = shape[0] if shape else None
    return first if isinstance(first, int) and first > 0 else None


class OnnxBackend(EncoderBackend):
    """ONNX Runtime on CPU; `threads` sets intra_op_num_threads (None: the runtime's default)."""

    name = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path, threads)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendError("the onnx backend needs onnxruntime (pip install onnxruntime)") from err
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or 0)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                                 providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise BackendError(f"{self.path}: onnxruntime cannot load the model: {err}") from err
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._batch = static_batch(list(model_input.shape))

    def _execute(self, pixels: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_name: pixels})[0]  # (n, D)


class CoreMLBackend(EncoderBackend):
    """CoreML through coremltools' predict (macOS only); `threads` is ignored (Core ML decides)."""

    name = "coreml"

    def __init__(self, path: str | os.PathLike, threads: int | None = None,
                 input_name: str = "pixels", output_name: str | None = None) -> None:
        super().__init__(path, threads)
        if platform.system() != "Darwin":
            raise BackendError("the coreml backend runs only on macOS (coremltools cannot predict "
                               "elsewhere); use --backend onnx or executorch")
        try:
            import coremltools as ct
        except ImportError as err:
            raise BackendError("the coreml backend needs coremltools") from err
        self._model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit.ALL)
        self._input_name, self._output_name = input_name, output_name
        self._batch = 1  # predict one image at a time

    def _execute(self, pixels: np.ndarray) -> np.ndarray:
        result = self._model.predict({self._input_name: pixels})
        key = self._output_name or next(iter(result))
        return np.asarray(result[key], dtype=np.float32).reshape(1, -1)  # (1, D)


_CLASSES: dict[str, type[EncoderBackend]] = {"onnx": OnnxBackend, "coreml": CoreMLBackend}
_RUNTIME_MODULES = {"onnx": "onnxruntime", "executorch": "executorch", "coreml": "coremltools"}


def register_backend(target: str, backend_class: type[EncoderBackend]) -> None:
    """Make a backend outside edge/ (the torch-based ExecuTorch one) available for `target`."""
    _CLASSES[target] = backend_class


def _backend_class(target: str) -> type[EncoderBackend]:
    if target not in _CLASSES:
        raise BackendError(
            f"no {target} backend in the torch-free edge runtime: ExecuTorch's Python runtime imports "
            "torch, so host tools register it (malm_edge.converters.executorch_runtime); phones run "
            ".pte files with the ExecuTorch C++/Swift/Kotlin runtime")
    return _CLASSES[target]


def _runtime_available(target: str) -> bool:
    import importlib.util

    if target not in _CLASSES or (target == "coreml" and platform.system() != "Darwin"):
        return False
    return importlib.util.find_spec(_RUNTIME_MODULES[target]) is not None


def load_backend(bundle: Bundle, entry: EncoderEntry, threads: int | None = None) -> EncoderBackend:
    """Instantiate the backend for one encoder entry of a validated bundle."""
    path = bundle.encoder_path(entry)
    if entry.target == "coreml":
        backend: EncoderBackend = CoreMLBackend(path, threads, input_name=entry.input.name,
                                                output_name=entry.output.name)
    else:
        backend = _backend_class(entry.target)(path, threads)
    backend.encoder = entry.name
    return backend


def select_encoder(bundle: Bundle, preferred: str | None = None) -> EncoderEntry:
    """Pick an encoder entry.

    Args:
        bundle: A validated bundle.
        preferred: A target ("executorch" | "onnx" | "coreml") or an encoder name. None: CoreML on
            macOS when the bundle has one, else ONNX, else ExecuTorch, else CoreML, where the
            runtime is installed; within a target, the first in manifest order.

    Raises:
        BackendError: nothing matches or no runtime is available.
    """
    encoders = bundle.manifest.encoders
    if preferred is not None:
        named = [e for e in encoders if e.name == preferred]
        matches = named or [e for e in encoders if e.target == preferred]
        if not matches:
            have = ", ".join(f"{e.name} ({e.target})" for e in encoders)
            raise BackendError(f"{bundle.root}: no encoder '{preferred}' in this bundle; it has {have}")
        return matches[0]
    order = ("coreml", "onnx", "executorch") if platform.system() == "Darwin" else \
        ("onnx", "executorch", "coreml")
    for target in order:
        matches = bundle.encoders_for(target)
        if matches and _runtime_available(target):
            return matches[0]
    raise BackendError(f"{bundle.root}: no runtime installed for any encoder in the bundle "
                       f"({sorted({e.target for e in encoders})}); install onnxruntime")


def select_backend(bundle: Bundle, preferred: str | None = None,
                   threads: int | None = None) -> EncoderBackend:
    """`select_encoder` then `load_backend`."""
    return load_backend(bundle, select_encoder(bundle, preferred), threads)
