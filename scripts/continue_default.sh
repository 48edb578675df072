#!/usr/bin/env bash
# Continue training the default model from a finished model (weights only; a fresh optimizer and schedule), on
# stage 2's mix with everything trainable (configs/default/continue.yaml), then ship it as scripts/train_default.sh
# does: bf16 export to got/assets/default and the choice of reader (decoder or CTC head). Resumable: rerun it.
#   scripts/continue_default.sh                       from the shipped model, 2600 x 16 lines (about 65 min, 2 cores)
#   FROM=runs/my_model scripts/continue_default.sh    from another model directory
#   PROFILE=gpu scripts/continue_default.sh           16x the batch
# OUT=dir puts the run dir under dir (default runs/); SHIP=0 skips the export; extra KEY=VALUE args go to the trainer.
# What the shipped continuation did and measured: docs/default_model.md ("Continued training").
set -euo pipefail
cd "$(dirname "$0")/.."
FROM=${FROM:-default}
OUT=${OUT:-runs}
SHIP=${SHIP:-1}
case "${PROFILE:-cpu}" in
  cpu) P=() ;;
  gpu) P=(train.global_batch_size=256 train.micro_batch_size=64 data.num_workers=8) ;;
  *) echo "continue_default.sh: PROFILE must be cpu or gpu (got '$PROFILE')" >&2; exit 2 ;;
esac
python3 -m got.cli train --stage 3 --config configs/default/continue.yaml --resume auto \
  model.init_from="$FROM" output.dir="$OUT/default_continue" "${P[@]}" "$@"
if [ "$SHIP" = 1 ]; then
  python3 -m got.cli convert --from "$OUT/default_continue" --to got/assets/default --dtype bfloat16
  python3 scripts/choose_line_reader.py got/assets/default
fi
