#!/usr/bin/env bash
# What only a GPU can check, in one short run (figures: docs/benchmarks.md, "On a GPU"):
#   1. CUDA bf16 inference: the default model reads the held-out lines and pages on the GPU (CER, s/page, beside
#      the CPU figures of docs/default_model.md);
#   2. training MFU of the base preset through `got train`'s DeepSpeed engine (NCCL process group), bf16;
#   3. the default recipe's GPU profile (PROFILE=gpu scripts/train_default.sh) for STEPS steps of every stage:
#      samples/s and GPU load, from which the whole profile's wall time follows;
#   4. whether that batch learns: stage 1 alone for LEARN_STEPS steps (its schedule compressed to them) at LR, then
#      the CTC head's CER on 100 held-out lines at every checkpoint (scripts/ctc_curve.py).
#   OUT=dir STEPS=40 LEARN_STEPS=500 LR=1e-3 benchmarks/gpu_profile.sh   (about 9 minutes on one H200; every part
#   has a time limit; LEARN_STEPS=0 skips part 4)
# Every part has its own time limit and log (OUT/<part>.log); a failed part does not stop the others.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_profile}
STEPS=${STEPS:-40}
LEARN_STEPS=${LEARN_STEPS:-500}
LR=${LR:-1e-3}
mkdir -p "$OUT"
part() {  # NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s"
  tr '\r' '\n' < "$OUT/$name.log" | grep -v "^\s*$\|/s\]\|s/[a-z]*\]\|Warning\|warn(" | tail -"${TAIL:-6}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'deepspeed', deepspeed.__version__, 'cuda', torch.version.cuda)" 2>&1 | tail -1

part held_out 40 python3 benchmarks/held_out.py --out "$OUT/held_out"
for set in lines pages_1col; do
  part "eval_$set" 75 python3 -m got.cli eval --model default --device cuda --data "$OUT/held_out/$set.json" \
    --out "$OUT/eval_$set"
done
part mfu_base 120 python3 benchmarks/train_mfu.py --micro 8 --json "$OUT/mfu_base.json"

nvidia-smi dmon -s u -d 2 > "$OUT/gpu_load.log" 2>&1 &
DMON=$!
TAIL=3 part recipe 200 env PROFILE=gpu OUT="$OUT/runs" SHIP=0 scripts/train_default.sh train.max_steps="$STEPS" \
  train.warmup_steps=5 output.save_every=1000 output.log_every=5
kill $DMON 2>/dev/null
for s in 1 2 3; do
  m="$OUT/runs/default_stage$s/metrics.jsonl"
  [ -f "$m" ] && python3 - "$m" "$s" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"samples_per_s"' in l]
rows = rows[1:] or rows  # the first window holds the start-up
if rows:
    print(f"stage {sys.argv[2]}: {sum(r['samples_per_s'] for r in rows) / len(rows):.0f} samples/s "
          f"({len(rows)} log windows), last loss {rows[-1].get('loss', float('nan')):.3f}")
EOF
done
awk '$1 ~ /^[0-9]+$/ {n++; s += $2} END {if (n) printf "GPU busy during the recipe: %.0f%% (mean of %d samples)\n", s / n, n}' \
  "$OUT/gpu_load.log"
if [ "$LEARN_STEPS" -gt 0 ]; then
  part learn 280 python3 -m got.cli train --stage 1 --config configs/default/stage1.yaml output.dir="$OUT/learn" \
    train.global_batch_size=256 train.micro_batch_size=64 data.num_workers=8 train.max_steps="$LEARN_STEPS" \
    train.lr="$LR" output.save_every=$((LEARN_STEPS / 5)) output.keep_last=10 output.log_every=10
  TAIL=8 part learn_ctc 90 python3 scripts/ctc_curve.py "$OUT/learn" --lines "$OUT/held_out/lines.json"
fi
