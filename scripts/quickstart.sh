#!/usr/bin/env bash
# Set up a fresh machine and run the whole pipeline on the built-in SynthFood data:
# train the tiny MALM teacher -> distil a MobileNetV3 student -> convert to ExecuTorch, CoreML and
# ONNX with the recipe table and catalog -> search a held-out photo with the bundle alone.
#   bash scripts/quickstart.sh [OUT]      (default OUT: runs/quickstart; about 20 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/quickstart}

[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
if ! python -c "import malm_edge, executorch, onnxruntime, coremltools" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -e '.[export]'
fi

[ -f "$OUT/teacher/checkpoints/last.json" ] && TRAIN=(--resume "$OUT/teacher") || TRAIN=(--out "$OUT/teacher")
malm-edge train "${TRAIN[@]}"
[ -f "$OUT/student/checkpoints/last.json" ] && DISTILL=(--resume "$OUT/student") || DISTILL=(--teacher "$OUT/teacher" --arch mnv3_s --out "$OUT/student")
malm-edge distill "${DISTILL[@]}"
malm-edge eval "$OUT/student"
malm-edge convert "$OUT/student" --target all --quantize int8 --out "$OUT/bundle" --overwrite

PHOTO=$(python - "$OUT/teacher/config.json" <<'PY'
import json, sys
from pathlib import Path
from malm_edge.training.data.canonical import load_recipes, resolve_image_path
data = Path(json.load(open(sys.argv[1]))["data"])
recipe = next((r for r in load_recipes(data, partition="test") if r.images), None)
if recipe is None:
    sys.exit(f"{data}: no test recipe with a photo to search with")
print(resolve_image_path(data, recipe.images[0]))
print(f"searching with a held-out photo of: {recipe.title}", file=sys.stderr)
PY
)
malm-edge search "$PHOTO" --bundle "$OUT/bundle" --top-k 5
echo "bundle: $OUT/bundle  (try it in a browser: malm-edge demo --bundle $OUT/bundle)"
