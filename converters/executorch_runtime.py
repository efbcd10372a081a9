"""Run a .pte from Python: the ExecuTorch backend of the edge runtime interface, host-side only.

ExecuTorch's pip runtime imports torch (see malm_edge.edge.backends), so this backend lives with the
converters, not in the torch-free edge/. `register_executorch_backend()` adds it to edge's backend
registry for host tools (`malm-edge search`, `bench`); `convert`'s verification uses the class directly.
"""

from __future__ import annotations

import os

import numpy as np

from malm_edge.edge.backends import (
    BackendError,
    EncoderBackend,
    register_backend,
    static_batch,
)


class ExecuTorchBackend(EncoderBackend):
    """ExecuTorch's Python runtime (`executorch.runtime`), XNNPACK delegate included.

    Imports torch (the executorch pip runtime does). `threads` resizes ExecuTorch's shared
    threadpool (process-wide: the last backend created wins).
    """

    name = "executorch"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        super().__init__(path, threads)
        try:
            import torch
            from executorch.runtime import Runtime, Verification
        except ImportError as err:
            raise BackendError("the executorch backend needs the executorch pip package, whose "
                               f"Python runtime also imports torch ({err})") from err
        self._torch = torch
        runtime = Runtime.get()
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        try:
            program = runtime.load_program(self.path, verification=Verification.InternalConsistency)
            self._method = program.load_method("forward")
        except Exception as err:  # the pybindings raise RuntimeError/ValueError variously
            raise BackendError(f"{self.path}: executorch cannot load method 'forward': {err}") from err
        sizes = list(self._method.metadata.input_tensor_meta(0).sizes())
        self._batch = static_batch(sizes)

    def _execute(self, pixels: np.ndarray) -> np.ndarray:
        outputs = self._method.execute([self._torch.from_numpy(pixels)])
        return outputs[0].detach().cpu().numpy()  # (n, D)


def register_executorch_backend() -> None:
    """Let edge's `select_backend` / `Retriever` open the bundle's .pte encoders in this process."""
    register_backend("executorch", ExecuTorchBackend)
