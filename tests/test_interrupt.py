"""Ctrl-C / SIGTERM during training (issue 18, item 2): a checkpoint at the step it was interrupted,
a message that says how to continue, exit code 130, and a resume that ends bit-identical to a run
never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from malm_edge.cli.root import app
from malm_edge.training.harness import checkpoint as ckpt
from malm_edge.training.harness.loop import TrainingInterrupted


def _micro(epochs: int = 2):
    from malm_edge.training.presets import get_preset

    model_cfg, train_cfg = get_preset("micro")
    # Pair-level epochs: every image of the fixture's recipes, so that an epoch has 5 steps to stop in.
    train_cfg.epochs, train_cfg.batch_size, train_cfg.epoch_unit = epochs, 16, "pair"
    return model_cfg, train_cfg


def _last(run: Path) -> dict:
    return json.loads((run / "checkpoints" / "last.json").read_text())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_model_state(ckpt.resolve_checkpoint(run, "last"))


def _signal_at_step(monkeypatch: pytest.MonkeyPatch, at_step: int, signum: int = signal.SIGINT) -> None:
    """Make the teacher's step send `signum` to this process during step `at_step` (1-based)."""
    from malm_edge.training.harness import teacher

    real_step, calls = teacher.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_step:
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(teacher, "train_step", step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_checkpoints_the_current_step_and_resume_is_exact(
    tiny_synthfood: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    from malm_edge.training.harness.teacher import train_teacher

    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train_teacher(straight, data_dir=tiny_synthfood, model_cfg=_micro()[0], train_cfg=_micro()[1], progress=False)
    with monkeypatch.context() as patch:
        _signal_at_step(patch, 4, signum)
        with pytest.raises(TrainingInterrupted) as caught:
            train_teacher(stopped, data_dir=tiny_synthfood, model_cfg=_micro()[0], train_cfg=_micro()[1],
                          progress=False)
    assert caught.value.exit_code == 130
    message = str(caught.value)
    assert f"interrupted ({signal.Signals(signum).name}) at step 4 of 10" in message
    assert f"malm-edge train --resume {stopped}" in message
    assert _last(stopped)["global_step"] == 4 and _last(stopped)["step_in_epoch"] == 4  # mid-epoch, not lost
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    train_teacher(stopped, resume=True, progress=False)
    expected, resumed = _weights(straight), _weights(stopped)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


def test_cli_exits_130_with_how_to_continue(tiny_synthfood: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    _signal_at_step(monkeypatch, 2)
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_synthfood), "--preset", "micro", "--epochs", "1",
                                      "--batch-size", "16", "--epoch-unit", "pair", "--out", str(run)])
    assert result.exit_code == 130, result.output
    assert "interrupted (SIGINT) at step 2 of 5" in result.output
    assert f"--resume {run}" in result.output and "error:" not in result.output
    assert _last(run)["global_step"] == 2


@pytest.mark.slow
def test_real_ctrl_c_on_the_command(tiny_synthfood: Path, tmp_path: Path) -> None:
    """A real SIGINT to a real `malm-edge train` process whose stderr is a pipe (plain progress lines)."""
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "malm_edge", "train", "--data", str(tiny_synthfood), "--preset", "micro",
         "--epochs", "2", "--batch-size", "16", "--epoch-unit", "pair", "--out", str(run)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and not any("epoch 1/2: 3/10" in l for l in lines):
        time.sleep(0.05)
    assert process.poll() is None, "".join(lines)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    reader.join(timeout=10)
    stderr = "".join(lines)
    step = _last(run)["global_step"]
    assert 3 <= step < 10
    assert f"interrupted (SIGINT) at step {step} of 10" in stderr, stderr
    assert "Traceback" not in stderr


def test_signal_notice_bypasses_logging_and_the_stderr_buffer(capfd, monkeypatch) -> None:
    """The handler may run inside a write to sys.stderr's buffer: it must not log (re-entering it)."""
    from malm_edge.training.harness import loop

    def no_logging(*args, **kwargs):
        raise AssertionError("the signal handler logged")

    monkeypatch.setattr(loop.log, "warning", no_logging)
    with loop.stop_on_signals(loop.StopRequest()) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name == "SIGINT"
    assert "WARNING malm_edge.training.harness.loop: SIGINT: saving a checkpoint" in capfd.readouterr().err
