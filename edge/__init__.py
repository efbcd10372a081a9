"""malm_edge.edge: the torch-free on-device runtime and every on-device format.

Modules (import them directly; nothing is imported here so `import malm_edge.edge` stays cheap):
bundle (manifest v1, validating reader), table (int8/float16 table, exact top-k), catalog (SQLite +
FTS5), preprocess (pillow + numpy), backends (ONNX Runtime, CoreML; others registered by host
tools), retriever (photo -> top-k recipes), bench (latency and memory). Imports neither torch,
training nor converters. ExecuTorch's Python runtime imports torch, so its backend lives in
malm_edge.converters.executorch_runtime and host tools register it.
"""
