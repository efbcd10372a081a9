"""Distillation: losses against naive references, a frozen teacher, end to end `distill` + `eval`."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from malm_edge.cli.root import app
from malm_edge.training.harness.feature_cache import AugmentationCache
from malm_edge.training.harness.student import FrozenTeacher
from malm_edge.training.models.losses import feature_distillation_loss, similarity_kl_loss
from malm_edge.training.schedule import DistillConfig

runner = CliRunner()


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape), dim=-1)


def test_feature_losses_match_naive_loops() -> None:
    student, teacher = _unit(5, 8), _unit(5, 8)
    cosine = sum(1 - float(student[i] @ teacher[i]) for i in range(5)) / 5
    squared = sum(float(((student[i] - teacher[i]) ** 2).sum()) for i in range(5)) / 5
    assert float(feature_distillation_loss(student, teacher, "cosine")) == pytest.approx(cosine, abs=1e-6)
    assert float(feature_distillation_loss(student, teacher, "mse")) == pytest.approx(squared, abs=1e-6)
    with pytest.raises(ValueError):
        feature_distillation_loss(student, teacher, "l1")


def test_similarity_kl_matches_naive_loop() -> None:
    student, teacher, candidates, tau = _unit(4, 6), _unit(4, 6), _unit(9, 6), 0.1
    total = 0.0
    for i in range(4):
        s = [math.exp(float(student[i] @ c) / tau) for c in candidates]
        t = [math.exp(float(teacher[i] @ c) / tau) for c in candidates]
        p = [x / sum(s) for x in s]
        q = [x / sum(t) for x in t]
        total += sum(qj * math.log(qj / pj) for pj, qj in zip(p, q))
    assert float(similarity_kl_loss(student, teacher, candidates, tau)) == pytest.approx(total / 4, rel=1e-4)
    assert float(similarity_kl_loss(teacher, teacher, candidates, tau)) == pytest.approx(0.0, abs=1e-6)


def test_distill_config_rejects_unknown_losses() -> None:
    with pytest.raises(ValueError, match="losses"):
        DistillConfig(losses=("feature", "l2"))
    assert DistillConfig.from_dict(DistillConfig(losses=("triplet",)).to_dict()).losses == ("triplet",)


def test_teacher_cache_computes_each_augmentation_once() -> None:
    class CountingTeacher:
        calls = 0

        def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
            CountingTeacher.calls += len(pixels)
            return F.normalize(pixels.flatten(1)[:, :4], dim=-1)

    cache, teacher, images = AugmentationCache(10, 2, (4,)), CountingTeacher(), torch.randn(3, 3, 2, 2)
    items = torch.tensor([1, 4, 7])
    first = cache.lookup(teacher.encode_images, images, items, slot=0)
    again = cache.lookup(teacher.encode_images, torch.zeros_like(images), items, slot=0)  # served from the cache
    assert torch.equal(first, again) and CountingTeacher.calls == 3
    cache.lookup(teacher.encode_images, images, items, slot=1)
    assert CountingTeacher.calls == 6


def test_frozen_teacher_stays_in_eval_and_gets_no_gradient(micro_teacher_run: Path) -> None:
    from malm_edge.training.harness.teacher import load_teacher
    from malm_edge.training.models.student import create_student
    from malm_edge.training.presets import get_student_preset

    frozen = FrozenTeacher(load_teacher(micro_teacher_run), torch.device("cpu"))
    frozen.model.train()  # a careless caller; encode_* puts it back in eval
    student = create_student(get_student_preset("mnv3_micro", embed_dim=64, image_size=64)).train()
    pixels = torch.randn(4, 3, 64, 64)
    target = frozen.encode_images(pixels)
    assert not frozen.model.training
    feature_distillation_loss(student(pixels), target).backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.model.parameters())
    assert any(p.grad is not None for p in student.parameters())


@pytest.mark.slow
def test_distill_then_eval_end_to_end(micro_teacher_run: Path, tiny_synthfood: Path, tmp_path: Path) -> None:
    teacher = shutil.copytree(micro_teacher_run, tmp_path / "old" / "teacher")
    run = tmp_path / "old" / "student"
    args = ["distill", "--teacher", str(teacher), "--arch", "mnv3_micro", "--preset", "micro"]
    result = runner.invoke(app, [*args, "--epochs", "2", "--batch-size", "16", "--out", str(run), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["epochs_done"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "student" and config["student"]["embed_dim"] == 64
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert steps and {"loss_feature", "loss_kl", "loss_triplet"} <= set(steps[0])

    (tmp_path / "old").rename(tmp_path / "moved")  # runs travel together, e.g. from a GPU box
    result = runner.invoke(app, ["eval", str(tmp_path / "moved" / "student"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) >= {"teacher", "student", "retention"}
    assert report["teacher"]["bag_size"] == report["student"]["bag_size"]
    teacher_r1 = report["teacher"]["image_to_recipe"]["r1"]
    assert report["retention"] == pytest.approx(report["student"]["image_to_recipe"]["r1"] / teacher_r1)


def test_distill_requires_a_teacher(tmp_path: Path) -> None:
    result = runner.invoke(app, ["distill", "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and "--teacher" in result.output


def test_distill_rejects_unknown_loss_terms(micro_teacher_run: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["distill", "--teacher", str(micro_teacher_run), "--losses", "feature,l2", "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 2 and "l2" in result.output
    assert not (tmp_path / "s").exists()
