#!/usr/bin/env bash
# The default model's scaling study in one command (docs/default_model.md, "Scaling study"): the stage-1 recipe for
# the same short budget at three tower widths (64, 96, 160: the shipped width), each resumable; then every
# checkpoint's CTC head is scored on the same held-out lines and the laws E(N) and E(C) are fitted with
# `got scaling fit` (benchmarks/scaling_default.py).
#   scripts/scaling_default.sh             train (10-20 min per size on 2 cores), score, fit
#   SIZES="l" scripts/scaling_default.sh   another width (l = 256);  OUT=dir puts the run dirs under dir (default runs/)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs}
SIZES=${SIZES:-xs s m}
for size in $SIZES; do
  case "$size" in
    xs) preset=configs/scaling/tower_xs.yaml ;;
    s) preset=configs/scaling/tower_s.yaml ;;
    m) preset=default_stage1 ;;
    l) preset=configs/scaling/tower_l.yaml ;;
    *) echo "scaling_default.sh: sizes are xs, s, m, l (got '$size')" >&2; exit 2 ;;
  esac
  python3 -m got.cli train --stage 1 --config configs/scaling/stage1.yaml --resume auto \
    model.preset="$preset" output.dir="$OUT/scaling_$size" "$@"
done
runs=(); for size in $SIZES; do runs+=("$OUT/scaling_$size"); done
python3 benchmarks/scaling_default.py "${runs[@]}" --out eval/scaling
