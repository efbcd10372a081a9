"""converters: training artifacts (teacher/student runs) -> edge artifacts (bundle).

Modules (flat; heavy libraries are imported inside functions):
    calibration      real photos for calibration / verification (training EvalTransform)
    index            teacher recipe embeddings in resumable shards -> edge table + catalog
    export_executorch  torch.export -> PT2E int8 (XNNPACKQuantizer) -> XNNPACK .pte
    export_onnx      torch.onnx.export (dynamo) fp32 -> ONNX Runtime QDQ int8
    export_coreml    coremltools ML Program (iOS 17, fp16; int8 / 6-bit weights) + structural check
    verify           exported file vs eager on real photos (cosine, top-10 agreement)
    evaluation       val image -> recipe retrieval helpers
    bundle_builder   `malm-edge convert`: everything above -> a verified bundle
    report           `malm-edge report`: R@1 / medR, size, latency per stage
"""
