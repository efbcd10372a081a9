"""Student image encoders vs the teacher's image tower: params, MACs and single-image CPU latency.

Every model is timed in the same process, interleaved run by run (so machine load drifts hit all
models alike), eager PyTorch, ``torch.set_num_threads(1)``, batch 1, ``torch.inference_mode``.
Students are timed in their deployed form (``prepare_for_export``: BN folded, MobileOne
re-parameterised); ``params_train`` is the trainable model's size. The teacher's image tower is
the MALM inference path ``normalize(image_head(ViT(x)["pooled"]))`` at the preset's image size,
built without the recipe tower. Prints a markdown table, then one JSON object.

    python benchmarks/bench_students.py [--students mnv3_s mnv3_l mobileone_s0]
        [--teachers tiny base] [--student-sizes 64 224] [--embed-dim 128] [--runs 30] [--warmup 5] [--json out.json]

`--student-sizes` builds each student at each input side (default: the preset's own); distilled
students take the teacher's input side (64 px for `tiny`), phone deployments often 224.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from malm_edge.training.models.flops import count_flops, count_params
from malm_edge.training.models.student import create_student, prepare_for_export
from malm_edge.training.presets import STUDENT_PRESETS, get_student_preset


class TeacherImageTower(nn.Module):
    """MALM's image inference path (malm.MALM.encode_images) without the recipe tower."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from malm_edge.training.models.vit import VisionTransformer

        self.image_encoder = VisionTransformer(config)
        self.image_head = nn.Linear(config.vit_output_dim, config.embed_dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.image_encoder(pixels)["pooled"]  # (B, vit_output_dim)
        return F.normalize(self.image_head(pooled), dim=-1)  # (B, E)


def build_models(
    students: list[str], teachers: list[str], student_sizes: list[int] | None = None, embed_dim: int | None = None
) -> list[dict[str, Any]]:
    """One record per model: name, kind, module (eval), image size, params (deployed and train)."""
    records = []
    for name in teachers:
        try:
            from malm_edge.training.presets import get_preset
        except ImportError:
            print(f"teacher config not available; skipping teacher {name}")
            continue
        config, _ = get_preset(name)
        tower = TeacherImageTower(config).eval()
        records.append({"name": f"teacher_{name}", "kind": "teacher", "module": tower,
                        "image_size": config.image_size, "params_train": count_params(tower)})
    for name in students:
        for size in student_sizes or [None]:
            overrides = {"image_size": size} if size else {}
            if embed_dim:
                overrides["embed_dim"] = embed_dim
            student = create_student(get_student_preset(name, **overrides))
            deployed = prepare_for_export(student)
            records.append({"name": name if size is None else f"{name}@{size}", "kind": "student", "module": deployed,
                            "image_size": student.config.image_size, "params_train": count_params(student)})
    for record in records:
        record["params"] = count_params(record["module"])
        size = record["image_size"]
        record["macs"] = count_flops(record["module"], torch.randn(1, 3, size, size)) // 2
    return records


@torch.inference_mode()
def time_models(records: list[dict[str, Any]], runs: int, warmup: int) -> None:
    """Median and p90 single-image latency (ms), runs interleaved across models; fills records."""
    inputs = [torch.randn(1, 3, r["image_size"], r["image_size"]) for r in records]
    for _ in range(warmup):
        for record, pixels in zip(records, inputs):
            record["module"](pixels)
    samples: list[list[float]] = [[] for _ in records]
    for _ in range(runs):
        for index, (record, pixels) in enumerate(zip(records, inputs)):
            start = time.perf_counter()
            record["module"](pixels)
            samples[index].append((time.perf_counter() - start) * 1e3)
    for record, times in zip(records, samples):
        record["latency_ms_median"] = statistics.median(times)
        record["latency_ms_p90"] = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]


def add_ratios(records: list[dict[str, Any]]) -> str | None:
    """Ratios against the largest teacher: params, MACs and speed-up. Returns its name."""
    teachers = [r for r in records if r["kind"] == "teacher"]
    if not teachers:
        return None
    reference = max(teachers, key=lambda r: r["macs"])
    for record in records:
        record["params_ratio"] = record["params"] / reference["params"]
        record["macs_ratio"] = record["macs"] / reference["macs"]
        record["speedup"] = reference["latency_ms_median"] / record["latency_ms_median"]
    return reference["name"]


def markdown_table(records: list[dict[str, Any]], reference: str | None) -> str:
    """The results as a markdown table."""
    header = "| model | input | params (M) | params train (M) | MACs (G) | latency median (ms) | p90 (ms) |"
    rule = "|---|---|---|---|---|---|---|"
    if reference:
        header += f" params / {reference} | MACs / {reference} | speed-up vs {reference} |"
        rule += "---|---|---|"
    lines = [header, rule]
    for r in records:
        line = (f"| {r['name']} | {r['image_size']} | {r['params'] / 1e6:.2f} | {r['params_train'] / 1e6:.2f} "
                f"| {r['macs'] / 1e9:.3f} | {r['latency_ms_median']:.2f} | {r['latency_ms_p90']:.2f} |")
        if reference:
            line += f" {r['params_ratio']:.3f} | {r['macs_ratio']:.4f} | {r['speedup']:.1f}x |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", nargs="*", default=["mnv3_s", "mnv3_l", "mobileone_s0"],
                        choices=sorted(STUDENT_PRESETS))
    parser.add_argument("--teachers", nargs="*", default=["tiny", "base"])
    parser.add_argument("--student-sizes", nargs="*", type=int, default=None, help="input sides to build students at")
    parser.add_argument("--embed-dim", type=int, default=None, help="student output width (distilled: the teacher's)")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    records = build_models(args.students, args.teachers, args.student_sizes, args.embed_dim)
    time_models(records, args.runs, args.warmup)
    reference = add_ratios(records)
    print(markdown_table(records, reference))
    result = {
        "torch": torch.__version__, "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
        "machine": platform.processor() or platform.machine(), "reference": reference,
        "models": [{k: v for k, v in r.items() if k != "module"} for r in records],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
