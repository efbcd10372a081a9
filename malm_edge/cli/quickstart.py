"""The quickstart's final summary (scripts/quickstart.sh), kept in Python so it can be tested.

Not a registered command: the script runs `python -m malm_edge.cli.quickstart OUT` after its last
stage. Standard library only; it reads what the stages left in OUT:

    OUT/.stages.tsv          one line per finished stage: number, name, seconds (written by the script)
    OUT/teacher, OUT/student run folders (metrics.jsonl: val metrics per epoch)
    OUT/bundle               manifest.json, report.json (R@1 / medR per compression stage)
    OUT/search.json          `malm-edge search --json` of the held-out photo
    OUT/.search-truth.txt    the title of that photo's own recipe
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

STAGES_FILE, SEARCH_FILE, TRUTH_FILE = ".stages.tsv", "search.json", ".search-truth.txt"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _last_val(run: Path) -> dict[str, Any] | None:
    """The last epoch's val image->recipe metrics of a run (with its bag size), or None."""
    path = run / "metrics.jsonl"
    last = None
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("type") == "epoch":
            last = {**record["val"]["image_to_recipe"], "bag_size": record["val"].get("bag_size")}
    return last


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def stage_lines(out: Path) -> list[str]:
    """`[2/5] training the teacher  12m46s` per finished stage, and the total."""
    path = out / STAGES_FILE
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []
    rows = [row for row in rows if len(row) == 3]
    lines = [f"  [{number}/5] {name:<34} {format_seconds(float(seconds))}" for number, name, seconds in rows]
    if rows:
        lines.append(f"  {'total':<40} {format_seconds(sum(float(row[2]) for row in rows))}")
    return lines


def retrieval_lines(out: Path) -> list[str]:
    """R@1 / medR at each stage: teacher and student runs, then every row of the bundle's report."""
    lines = []
    for label, run in (("teacher (MALM, eager)", out / "teacher"), ("student (distilled, eager)", out / "student")):
        val = _last_val(run)
        if val:
            lines.append(f"  {label:<40} R@1 {val['r1']:.3f}  medR {val['medr']:>6.1f}  "
                         f"(run val, bag {val['bag_size']})")
    for row in _read_json(out / "bundle" / "report.json") or []:
        if row.get("stage") != "exported":
            continue
        name = row["detail"].split(" ")[0]
        if row.get("r1") is None:
            lines.append(f"  {name:<40} not measured here ({row['detail'].split(' - ')[-1]})")
        else:
            lines.append(f"  {name:<40} R@1 {row['r1']:.3f}  medR {row['medr']:>6.1f}  "
                         f"(bundle val, {row['n_val']} photos)")
    return lines


def search_lines(out: Path, top: int = 5) -> list[str]:
    result = _read_json(out / SEARCH_FILE)
    if isinstance(result, list):
        result = result[0] if result else None
    if not result:
        return ["  (no search result)"]
    lines = [f"  photo: {result['photo']}  ({result.get('backend')}: {result.get('encoder')})"]
    truth = out / TRUTH_FILE
    if truth.is_file():
        lines.append(f"  its own recipe: {truth.read_text(encoding='utf-8').strip()}")
    lines += [f"  {hit['rank']:>2}. {hit['score']:.3f}  {hit['title']}" for hit in result["results"][:top]]
    return lines


def summary(out: str | Path) -> str:
    """The whole summary: stages and times, the bundle, R@1 per stage, the search, what to try next."""
    out = Path(out)
    bundle = out / "bundle"
    manifest = _read_json(bundle / "manifest.json") or {}
    encoders = [e["file"] for e in manifest.get("encoders", [])]
    rows = (manifest.get("table") or {}).get("rows", "?")
    lines = ["", "== quickstart summary ==", "stages:", *stage_lines(out),
             f"bundle: {bundle}  ({_folder_bytes(bundle) / 1e6:.1f} MB on disk: {len(encoders)} encoders, "
             f"a table of {rows} recipes, the catalog, report.md / report.png)" if bundle.is_dir() else
             f"bundle: {bundle} (missing)",
             "image->recipe R@1 at each stage (chance R@1 = 1 / bag):", *retrieval_lines(out),
             "search with a held-out photo:", *search_lines(out),
             "next:",
             "  . .venv/bin/activate   # then `malm-edge ...` works in this shell (or call .venv/bin/malm-edge)",
             f"  malm-edge demo --bundle {bundle} --host 0.0.0.0   # the phone web app (README: Try it on a phone)",
             f"  malm-edge report {bundle}   # report.md + report.png: R@1 / medR, size, latency per stage",
             f"  malm-edge search PHOTO_OR_FOLDER --bundle {bundle}",
             f"  malm-edge bench --bundle {bundle}   # latency and memory on this machine",
             f"  training curves: {out / 'teacher' / 'curves.png'}, {out / 'student' / 'curves.png'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m malm_edge.cli.quickstart OUT")
    print(summary(args[0]))


if __name__ == "__main__":
    main()
