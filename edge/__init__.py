"""malm_edge.edge: the torch-free on-device runtime and every on-device format.

Modules (import them directly; nothing is imported here so `import malm_edge.edge` stays cheap):
bundle (manifest v1, validating reader), table (int8/float16 table, exact top-k), catalog (SQLite +
FTS5), preprocess (pillow + numpy), backends (ONNX Runtime, ExecuTorch, CoreML), retriever
(photo -> top-k recipes), bench (latency and memory). Imports neither torch, training nor
converters (the ExecuTorch backend alone needs torch, because the executorch pip runtime does).
"""
