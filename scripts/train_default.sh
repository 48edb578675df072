#!/usr/bin/env bash
# The default model's recipe in one command: stage 1 -> 2 -> 3, then one round of continued training with everything
# trainable (configs/default/continue.yaml from stage 3's weights; each step resumable: rerun to continue), then the
# bf16 export that ships in the package (got/assets/default). What it is and how it was measured: docs/default_model.md.
#   scripts/train_default.sh                          CPU profile (2 cores, about 2.5 to 3 hours)
#   PROFILE=gpu scripts/train_default.sh              the same recipe, 16x the batch (and so the samples)
#   PROFILE=smoke OUT=/tmp/d scripts/train_default.sh  two steps of every step, nothing shipped (the tests run it)
# OUT=dir puts the run dirs under dir (default runs/); SHIP=0 skips the export; extra KEY=VALUE args go to every step.
# STAGE1=dir skips stage 1: stage 2 takes its vision tower from dir (a finished stage 1: a run dir or a model dir,
# e.g. the committed checkpoints/default_stage1, a weights-only warm start that saves the CPU profile ~85 min).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-cpu}
OUT=${OUT:-runs}
case "$PROFILE" in
  cpu)   P=(); SHIP=${SHIP:-1} ;;
  gpu)   P=(train.global_batch_size=256 train.micro_batch_size=64 data.num_workers=8); SHIP=${SHIP:-1} ;;
  smoke) P=(train.max_steps=2 train.global_batch_size=2 train.micro_batch_size=2 train.warmup_steps=1
            data.num_workers=0 output.save_every=2 output.log_every=1); SHIP=${SHIP:-0} ;;
  *) echo "train_default.sh: PROFILE must be cpu, gpu or smoke (got '$PROFILE')" >&2; exit 2 ;;
esac
train() {  # STAGE CONFIG RUN_NAME, then overrides
  local stage=$1 config=$2 run=$3; shift 3
  python3 -m got.cli train --stage "$stage" --config "configs/default/$config.yaml" --resume auto \
    output.dir="$OUT/$run" "$@" "${P[@]}" "${EXTRA[@]}"
}
EXTRA=("$@")
if [ -n "${STAGE1:-}" ]; then
  echo "train_default.sh: stage 1 skipped, its vision tower from $STAGE1" >&2
else
  train 1 stage1 default_stage1
fi
train 2 stage2 default_stage2 model.encoder_from="${STAGE1:-$OUT/default_stage1}"
train 3 stage3 default_stage3 model.init_from="$OUT/default_stage2"
# continued training, as the shipped model's rounds: the tower, CTC head, projector and decoder on the line mix,
# a fresh optimizer at the rate of the rounds that started from a model of this accuracy
train 3 continue default_continue model.init_from="$OUT/default_stage3" train.lr=5.0e-4 train.max_steps=2400 train.seed=8181
if [ "$SHIP" = 1 ]; then
  python3 -m got.cli convert --from "$OUT/default_continue" --to got/assets/default --dtype bfloat16
  python3 scripts/choose_line_reader.py got/assets/default  # decoder or CTC head: whichever reads better
fi
