"""The quickstart says where it is (issue 18, item 3): stage headers and times in the script, and a
final summary of the bundle, R@1 at each stage, the search result and the next commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

from malm_edge.cli.quickstart import summary

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "quickstart.sh"


def _epoch(i: int, r1: float, medr: float) -> str:
    return json.dumps({"type": "epoch", "epoch": i, "global_step": 10 * (i + 1),
                       "val": {"image_to_recipe": {"r1": r1, "medr": medr, "r5": 0.3, "r10": 0.5}, "bag_size": 200}})


def _fake_out(out: Path) -> Path:
    for run, r1 in (("teacher", 0.075), ("student", 0.06)):
        (out / run).mkdir(parents=True)
        (out / run / "metrics.jsonl").write_text("\n".join([_epoch(0, 0.01, 70.0), _epoch(1, r1, 7.0)]) + "\n")
    bundle = out / "bundle"
    bundle.mkdir()
    (bundle / "encoder_int8.pte").write_bytes(b"x" * 1_500_000)
    (bundle / "manifest.json").write_text(json.dumps({
        "encoders": [{"file": "encoder_int8.pte"}, {"file": "encoder_fp16.mlpackage"}], "table": {"rows": 2000}}))
    (bundle / "report.json").write_text(json.dumps([
        {"stage": "teacher", "detail": "MALM image tower (fp32, eager)", "r1": 0.08, "medr": 7.0, "n_val": 200},
        {"stage": "exported", "detail": "encoder_int8.pte (executorch, int8)", "r1": 0.055, "medr": 9.0, "n_val": 200},
        {"stage": "exported", "detail": "encoder_fp16.mlpackage (coreml, fp16) - runs on macOS only", "r1": None,
         "medr": None, "n_val": 0}]))
    (out / "search.json").write_text(json.dumps({
        "photo": "data/images/x.jpg", "backend": "onnx", "encoder": "student_int8_onnx",
        "results": [{"rank": 1, "id": "r1", "title": "Maki Platter", "score": 0.61},
                    {"rank": 2, "id": "r2", "title": "Sushi Bowl", "score": 0.58}]}))
    (out / ".search-truth.txt").write_text("Uncle Joe's Brunch Maki Platter\n")
    (out / ".stages.tsv").write_text("1\tsetting up\t62\n2\ttraining the teacher\t766\n3\tdistilling\t200\n"
                                     "4\tconverting\t90\n5\tsearching\t5\n")
    return out


def test_summary_names_the_bundle_its_size_r1_per_stage_the_search_and_next_commands(tmp_path: Path) -> None:
    out = _fake_out(tmp_path / "qs")
    text = summary(out)
    assert "[2/5] training the teacher" in text and "12m46s" in text
    assert re.search(r"total\s+18m43s", text)
    assert f"bundle: {out / 'bundle'}  (1.5 MB on disk: 2 encoders, a table of 2000 recipes" in text
    assert re.search(r"teacher \(MALM, eager\)\s+R@1 0.075\s+medR\s+7.0", text)
    assert re.search(r"student \(distilled, eager\)\s+R@1 0.060", text)
    assert re.search(r"encoder_int8.pte\s+R@1 0.055\s+medR\s+9.0", text)
    assert re.search(r"encoder_fp16.mlpackage\s+not measured here \(runs on macOS only\)", text)
    assert "1. 0.610  Maki Platter" in text and "its own recipe: Uncle Joe's Brunch Maki Platter" in text
    for command in (". .venv/bin/activate", f"malm-edge demo --bundle {out / 'bundle'}",
                    f"malm-edge report {out / 'bundle'}", ".venv/bin/malm-edge"):
        assert command in text, command


def test_summary_of_a_partial_run_does_not_fail(tmp_path: Path) -> None:
    (tmp_path / "qs").mkdir()
    text = summary(tmp_path / "qs")
    assert "bundle:" in text and "(missing)" in text and "(no search result)" in text


def test_script_announces_five_timed_stages_and_ends_with_the_summary() -> None:
    script = SCRIPT.read_text()
    assert [int(n) for n in re.findall(r"^stage (\d) ", script, flags=re.M)] == [1, 2, 3, 4, 5]
    assert script.count("stage_done") == 6  # the definition and one per stage
    assert 'echo "[$STAGE_N/5] $STAGE_NAME ..."' in script
    assert script.rstrip().endswith('python -m malm_edge.cli.quickstart "$OUT"')
    assert "rerun" in script and "130" in script  # Ctrl-C says how to continue
