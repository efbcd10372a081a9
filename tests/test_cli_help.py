"""Help and error text (issue 18, item 6), through CliRunner as a person sees it."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from malm_edge.cli.root import app

runner = CliRunner()
COMMANDS = [["train"], ["distill"], ["eval"], ["index"], ["convert"], ["report"], ["search"], ["bench"], ["demo"],
            ["keygen"], ["sign"],
            ["data", "check"], ["data", "synth"], ["data", "import", "recipe1m"], ["data", "import", "epicurious"]]


def _flat(text: str) -> str:
    """Help text without rich's box drawing and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_flags_show_no_value_type(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    assert "list[" not in result.output


def test_json_flag_reads_as_a_flag() -> None:
    help_text = _flat(runner.invoke(app, ["search", "--help"]).output)
    assert re.search(r"--json Print JSON", help_text), help_text
    assert "<path>..." in help_text  # the photos argument


def test_train_schedule_options_say_what_they_are_and_the_preset_defaults() -> None:
    help_text = _flat(runner.invoke(app, ["train", "--help"]).output)
    assert "(default: the preset's: micro 30, tiny 20, small 120, lite 10, base 120)" in help_text
    assert "(default: the preset's: micro 32, tiny 64, small 128, lite 64, base 128)" in help_text
    assert "DataLoader worker" in help_text
    assert "(default: the preset's: micro 0, tiny 1, small 4, lite 0, base 4)" in help_text
    assert "sample order and masks. (default: 0)" in help_text


def test_help_defaults_are_the_preset_registry() -> None:
    from malm_edge.training.presets import TEACHER_PRESETS

    help_text = _flat(runner.invoke(app, ["train", "--help"]).output)
    epochs = ", ".join(f"{name} {preset.train.epochs}" for name, preset in TEACHER_PRESETS.items())
    assert f"(default: the preset's: {epochs})" in help_text
    distill_help = _flat(runner.invoke(app, ["distill", "--help"]).output)
    lrs = ", ".join(f"{name} {preset.distill.lr}" for name, preset in TEACHER_PRESETS.items())
    assert lrs in distill_help


def test_data_check_has_one_way_to_skip_images() -> None:
    help_text = _flat(runner.invoke(app, ["data", "check", "--help"]).output)
    assert "--no-images" not in help_text and "--images" in help_text


def test_errors_carry_no_pydantic_prefix() -> None:
    result = runner.invoke(app, ["train", "--preset", "foo"])
    assert result.exit_code == 2
    assert "Value error" not in result.output
    assert "'foo' is not one of 'micro', 'tiny', 'small', 'lite', 'base'" in _flat(result.output)


def test_convert_and_builder_agree_on_collapse() -> None:
    from malm_edge.cli import convert
    from malm_edge.converters.bundle_builder import COLLAPSED_SPREAD

    assert convert.COLLAPSED_SPREAD == COLLAPSED_SPREAD
