#!/usr/bin/env bash
# Set up a fresh machine and run the whole pipeline on the built-in SynthFood data, in 5 stages:
#   [1/5] set up .venv   [2/5] train the tiny MALM teacher   [3/5] distil a MobileNetV3 student
#   [4/5] convert to ExecuTorch, CoreML and ONNX with the recipe table and catalog
#   [5/5] search a held-out photo with the bundle alone; then a summary and the next commands.
#   bash scripts/quickstart.sh [OUT]      (default OUT: runs/quickstart; about 20 minutes on 2 idle cores)
# Rerunning continues where it stopped (an interrupted stage resumes from its last checkpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}
mkdir -p "$OUT"
STAGES="$OUT/.stages.tsv"
: > "$STAGES"
trap 'rc=$?; if [ $rc -eq 130 ]; then echo; echo "quickstart interrupted; rerun \`bash scripts/quickstart.sh $OUT\` to continue where it stopped"; fi' EXIT

fmt() { if [ "$1" -ge 60 ]; then printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); else printf '%ds' "$1"; fi; }
stage() { STAGE_N=$1; STAGE_NAME=$2; STAGE_START=$SECONDS; echo; echo "[$STAGE_N/5] $STAGE_NAME ..."; }
stage_done() {
  local took=$((SECONDS - STAGE_START))
  printf '%s\t%s\t%s\n' "$STAGE_N" "$STAGE_NAME" "$took" >> "$STAGES"
  echo "[$STAGE_N/5] $STAGE_NAME: done in $(fmt $took)"
}

stage 1 "setting up the virtual environment (.venv, about 1.9 GB)"
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
if ! python -c "import malm_edge, executorch, onnxruntime, coremltools" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e '.[export]'
fi
stage_done

stage 2 "training the MALM teacher (tiny preset; SynthFood is generated on first use)"
[ -f "$OUT/teacher/checkpoints/last.json" ] && TRAIN=(--resume "$OUT/teacher") || TRAIN=(--out "$OUT/teacher")
malm-edge train "${TRAIN[@]}"
stage_done

stage 3 "distilling the student (MobileNetV3-S)"
[ -f "$OUT/student/checkpoints/last.json" ] && DISTILL=(--resume "$OUT/student") || DISTILL=(--teacher "$OUT/teacher" --arch mnv3_s --out "$OUT/student")
malm-edge distill "${DISTILL[@]}"
malm-edge eval "$OUT/student"
stage_done

stage 4 "converting to ExecuTorch, CoreML and ONNX (int8 + float) with the recipe table and catalog"
malm-edge convert "$OUT/student" --target all --quantize int8 --out "$OUT/bundle" --overwrite
stage_done

stage 5 "searching a held-out photo with the bundle alone"
PHOTO=$(python - "$OUT/teacher/config.json" "$OUT/.search-truth.txt" <<'PY'
import json, sys
from pathlib import Path
from malm_edge.training.data.canonical import load_recipes, resolve_image_path
data = Path(json.load(open(sys.argv[1]))["data"])
recipe = next((r for r in load_recipes(data, partition="test") if r.images), None)
if recipe is None:
    sys.exit(f"{data}: no test recipe with a photo to search with")
Path(sys.argv[2]).write_text(recipe.title + "\n", encoding="utf-8")
print(resolve_image_path(data, recipe.images[0]))
print(f"searching with a held-out photo of: {recipe.title}", file=sys.stderr)
PY
)
malm-edge search "$PHOTO" --bundle "$OUT/bundle" --top-k 5 --json > "$OUT/search.json"
stage_done

python -m malm_edge.cli.quickstart "$OUT"
