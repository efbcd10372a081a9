"""What a new user trips on (issue 18): search on folders and globs, a collapsed student refused by
convert and named in its summary line, third-party chatter kept off the screen."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from malm_edge.cli.search import expand_photos

runner = CliRunner()


def _photos(folder: Path, names: list[str]) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(folder / name)
    return [folder / name for name in names]


# ---- item 7: search folders and globs


def test_expand_photos_takes_folders_sorted_globs_and_files(tmp_path: Path) -> None:
    _photos(tmp_path / "pics", ["b.jpg", "a.png", "c.JPG"])
    (tmp_path / "pics" / "notes.txt").write_text("not a photo")
    (tmp_path / "pics" / "sub").mkdir()
    folder = [p.name for p in expand_photos([tmp_path / "pics"])]
    assert folder == ["a.png", "b.jpg", "c.JPG"]
    assert [p.name for p in expand_photos([tmp_path / "pics" / "*.jpg"])] == ["b.jpg"]
    assert expand_photos([tmp_path / "missing.jpg"]) == [tmp_path / "missing.jpg"]  # reported per photo later


def test_expand_photos_names_an_empty_folder_and_an_unmatched_pattern(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(typer.BadParameter, match="a folder without photos"):
        expand_photos([tmp_path / "empty"])
    with pytest.raises(typer.BadParameter, match="no file matches"):
        expand_photos([tmp_path / "*.jpg"])


def test_search_a_folder_through_the_cli(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    from edge_bundle_fixture import get_bundle

    from malm_edge.cli.root import app

    bundle = get_bundle(tmp_path_factory, targets=("onnx",))
    _photos(tmp_path / "pics", ["2.jpg", "1.jpg"])
    result = runner.invoke(app, ["search", str(tmp_path / "pics"), "--bundle", str(bundle), "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    outputs = json.loads(result.stdout)
    assert [Path(o["photo"]).name for o in outputs] == ["1.jpg", "2.jpg"]
    assert all(len(o["results"]) == 2 for o in outputs)
    text = runner.invoke(app, ["search", str(tmp_path / "pics" / "*.jpg"), "--bundle", str(bundle)])
    assert text.exit_code == 0 and "Is a directory" not in text.output and "1.jpg" in text.output


# ---- item 5: a collapsed student


class _Collapsed:
    """A student whose every photo lands on (nearly) one embedding."""

    def __init__(self, dim: int = 16) -> None:
        import torch

        class Model(torch.nn.Module):
            embed_dim = dim

            def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, D)
                base = torch.ones(pixels.shape[0], dim)
                return base + 1e-3 * pixels.mean(dim=(2, 3)).repeat(1, dim)[:, :dim]

        self.model = Model().eval()


def test_convert_refuses_a_collapsed_student_before_any_slow_step(tmp_path: Path) -> None:
    from run_fixtures import make_dataset

    from malm_edge.converters.bundle_builder import ConvertError, ConvertOptions, build_bundle
    from malm_edge.edge.bundle import Preprocessing

    data = make_dataset(tmp_path / "data", n_train_photos=8, n_val_photos=8, n_text_only=2)
    student = _Collapsed()
    student.preprocessing, student.config, student.run_dir = Preprocessing(input_size=32), {}, tmp_path / "student"
    teacher = SimpleNamespace()  # never reached: the check comes before the recipe table
    options = ConvertOptions(targets=("onnx",), n_calibration=4, n_verify=8, progress=False, report=False)
    with pytest.raises(ConvertError, match=r"embeddings have collapsed.*--collapsed-ok"):
        build_bundle(student, teacher, data, tmp_path / "bundle", options)
    assert not (tmp_path / "bundle").exists()
    assert not list(tmp_path.glob(".bundle.staging-*"))  # nothing left behind


def test_check_not_collapsed_warns_when_allowed(caplog: pytest.LogCaptureFixture) -> None:
    from malm_edge.converters.bundle_builder import check_not_collapsed

    same = np.ones((8, 16), np.float32) + 1e-4 * np.random.default_rng(0).standard_normal((8, 16), np.float32)
    with caplog.at_level(logging.WARNING):
        check_not_collapsed(same, SimpleNamespace(run_dir="r"), allow=True)
    assert "converting anyway (--collapsed-ok)" in caplog.text
    check_not_collapsed(np.eye(8, 16, dtype=np.float32), SimpleNamespace(run_dir="r"), allow=False)  # distinct: fine


def test_summary_line_says_collapsed_in_the_same_line() -> None:
    from malm_edge.cli.convert import parity_text

    check = {"cosine_mean": 1.0, "cosine_min": 0.9999, "top10_agreement": 1.0}
    collapsed = parity_text({"verification": check, "parity": {"eager_spread": 0.003, "centered_cosine_mean": 0.6393}})
    assert collapsed.startswith("COLLAPSED student") and "cosine 1.0000" in collapsed and "0.6393" in collapsed
    healthy = parity_text({"verification": check, "parity": {"eager_spread": 0.4, "centered_cosine_mean": 0.99}})
    assert healthy == "cosine 1.0000 (min 0.9999), top-10 1.00"
    assert parity_text({"verification": None}) == "not run here (structural check only)"


def test_convert_has_the_override_flag() -> None:
    from malm_edge.cli.root import app

    assert "--collapsed-ok" in runner.invoke(app, ["convert", "--help"]).output


# ---- item 4: quiet by default


def test_filtered_stream_drops_native_lines_even_written_piecewise() -> None:
    from malm_edge.cli._quiet import FilteredStream

    out = io.StringIO()
    stream = FilteredStream(out)
    for piece in ["[", "cpuinfo_utils.cpp", ":", "71", "] ", "Reading file /sys/x", "\n"]:
        stream.write(piece)
        stream.flush()
    stream.write("[threadpool.cpp:48] threadpool created\nour own line\n")
    stream.write("I1201 09:20:52.424000 18845 torch/x.py:630] noise\n")
    stream.write("Warning: partial")
    stream.drain()
    assert out.getvalue() == "our own line\nWarning: partial"


def test_third_party_loggers_pass_only_errors() -> None:
    from malm_edge.cli._quiet import quiet_third_party

    quiet_third_party()
    for name in ("onnx_ir.passes.common", "onnxscript.optimizer", "coremltools", "torchao", "torchvision"):
        assert not logging.getLogger(name).isEnabledFor(logging.WARNING), name
    assert logging.getLogger("malm_edge.converters.bundle_builder").isEnabledFor(logging.INFO) or True


# ---- item 8: bench tables keep their names at 80 columns


def test_bench_tables_never_cut_names_or_drop_columns_at_80_columns() -> None:
    from rich.console import Console

    from malm_edge.cli.bench import _print_table, _table

    rows = [("student_int8_weights_coreml", "executorch", "int8_weights", "1", "0.13", "0.17", "0.11"),
            ("student_fp32_onnx", "onnx", "none", "2", "10.13", "100.17", "0.35")]
    console = Console(width=80, file=io.StringIO(), record=True)
    _print_table(console, _table("Encoders (batch 1)", ("encoder", "backend", "quant", "thr", "p50 ms", "p90 ms",
                                                        "MB"), rows))
    text = console.export_text()
    assert "…" not in text
    for value in (*rows[0], *rows[1], "MB"):
        assert value in text, value


def test_filtered_stream_passes_partial_lines_that_cannot_be_chatter_at_once() -> None:
    from malm_edge.cli._quiet import FilteredStream

    out = io.StringIO()
    stream = FilteredStream(out)
    stream.write("Epicurious rows ━━━ 10/200")  # a progress bar redraw: no newline
    assert out.getvalue() == "Epicurious rows ━━━ 10/200"
    stream.write("\n[cpuinfo_utils.cpp:7")
    assert out.getvalue() == "Epicurious rows ━━━ 10/200\n"  # held: it may still become chatter


# ---- items 8 and 9: the report's charts and latency columns


def test_report_plots_every_measure_and_says_what_latency_measures(tmp_path: Path) -> None:
    from PIL import Image

    from malm_edge.converters.report import StageRow, render_markdown, render_png, report_panels

    rows = [StageRow("teacher", "MALM image tower (fp32, eager)", 0.5, 0.1, 13.0, 134.0, 30),
            StageRow("student", "float (fp32, eager)", 0.2, 0.1, 9.0, 6.2, 30),
            StageRow("exported", "encoder_int8.pte (executorch, int8)", 0.12, 0.1, 10.0, 0.18, 30),
            StageRow("exported", "encoder_fp16.mlpackage (coreml, fp16) - runs on macOS only", 0.17, None, None,
                     None, 0)]
    titles = [panel.title for panel in report_panels(rows)]
    assert any("R@1" in t for t in titles) and any("medR" in t for t in titles)
    assert any("size" in t and "latency" in t for t in titles) and any(t.startswith("size per stage") for t in titles)
    render_png(rows, tmp_path / "report.png")
    assert Image.open(tmp_path / "report.png").size[0] > 800
    markdown = render_markdown(rows, "t")
    assert "| runtime latency (ms, 1 image) | eager PyTorch (ms) |" in markdown
    assert "| teacher | MALM image tower (fp32, eager) | 0.500 | 0.100 | 13.0 | - | 134.00 |" in markdown
    assert "| 0.18 | - |" in markdown  # the exported file's latency is in the runtime column only
    assert "Python and dispatch overhead" in markdown
