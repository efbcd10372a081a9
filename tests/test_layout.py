"""The package rules (docs/architecture.md), checked statically: a lazy import inside a function
escapes an import-time check, so every module's source is read and every import in it collected."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import malm_edge
from malm_edge.cli.distill import Arch, Schedule
from malm_edge.cli.train import Preset
from malm_edge.training.presets import STUDENT_PRESETS, TEACHER_PRESETS

ROOT = Path(malm_edge.__file__).resolve().parent.parent
EDGE, TRAINING, CONVERTERS = ROOT / "edge", ROOT / "training", ROOT / "converters"


def imports_of(path: Path) -> set[str]:
    """Every module name a file imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def offenders(folder: Path, forbidden: tuple[str, ...], *, skip: Path | None = None) -> list[str]:
    """`file: module` for each import under `folder` of a module in (or under) `forbidden`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        if skip is not None and skip in path.parents:
            continue
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(folder)}: {name}")
    return found


def test_no_edge_module_imports_torch_training_or_converters() -> None:
    assert offenders(EDGE, ("torch", "malm_edge.training", "malm_edge.converters")) == []


@pytest.mark.parametrize("library", ["models", "data"])
def test_models_and_data_never_import_the_harness(library: str) -> None:
    assert offenders(TRAINING / library, ("malm_edge.training.harness",)) == []


def test_training_library_imports_neither_harness_nor_converters() -> None:
    harness = TRAINING / "harness"
    assert offenders(TRAINING, ("malm_edge.training.harness",), skip=harness) == []
    assert offenders(TRAINING, ("malm_edge.converters", "malm_edge.cli")) == []


def test_the_scanner_sees_lazy_imports(tmp_path: Path) -> None:
    (tmp_path / "lazy.py").write_text(
        "def f():\n    import torch.nn\n    from malm_edge.training.harness import loop\n"
    )
    assert offenders(tmp_path, ("torch", "malm_edge.training.harness")) == [
        "lazy.py: malm_edge.training.harness",
        "lazy.py: torch.nn",
    ]


def test_cli_choices_are_the_preset_registry() -> None:
    assert [p.value for p in Preset] == list(TEACHER_PRESETS)
    assert [s.value for s in Schedule] == list(TEACHER_PRESETS)
    assert sorted(a.value for a in Arch) == sorted(STUDENT_PRESETS)


def test_each_student_preset_is_named_after_its_arch() -> None:
    assert {name: config.arch for name, config in STUDENT_PRESETS.items()} == {name: name for name in STUDENT_PRESETS}


@pytest.mark.parametrize(
    "package, base_name", [("edge", "EdgeError"), ("training", "TrainingError"), ("converters", "ConverterError")]
)
def test_every_error_a_package_raises_for_people_has_its_base(package: str, base_name: str) -> None:
    """The CLI prints these as one line (cli/_errors.py matches the three bases by name)."""
    import importlib
    import inspect

    from malm_edge.cli._errors import USER_ERROR_BASES

    assert base_name in USER_ERROR_BASES
    base = importlib.import_module(f"malm_edge.{package}.errors").__dict__[base_name]
    folder = ROOT / package
    for path in sorted(folder.rglob("*.py")):
        module_name = ".".join(("malm_edge", package, *path.relative_to(folder).with_suffix("").parts))
        if module_name.endswith("__init__"):
            continue
        module = importlib.import_module(module_name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module_name and name.endswith("Error"):
                assert issubclass(cls, base), f"{module_name}.{name} does not derive from {base_name}"
