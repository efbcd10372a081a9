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
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[export]'

[ -f "$OUT/teacher/checkpoints/last.json" ] && TRAIN=(--resume "$OUT/teacher") || TRAIN=(--out "$OUT/teacher")
malm-edge train "${TRAIN[@]}"
[ -f "$OUT/student/checkpoints/last.json" ] && DISTILL=(--resume "$OUT/student") || DISTILL=(--teacher "$OUT/teacher" --arch mnv3_s --out "$OUT/student")
malm-edge distill "${DISTILL[@]}"
malm-edge eval "$OUT/student"
malm-edge convert "$OUT/student" --target all --quantize int8 --out "$OUT/bundle" --overwrite

DATA=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['data'])" "$OUT/teacher/config.json")
PHOTO=$(python -c "
import json, sys
for line in open(sys.argv[1] + '/recipes.jsonl'):
    recipe = json.loads(line)
    if recipe['partition'] == 'test' and recipe['images']:
        print(sys.argv[1] + '/' + recipe['images'][0]); print(recipe['title'], file=sys.stderr); break
" "$DATA")
malm-edge search "$PHOTO" --bundle "$OUT/bundle" --top-k 5
echo "bundle: $OUT/bundle  (try it in a browser: malm-edge demo --bundle $OUT/bundle)"
