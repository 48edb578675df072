#!/usr/bin/env bash
# Stage 1 — pre-train the vision tower: ViTDet-B + OPT-125M, all parameters, 4096 tokens, lr 1e-4.
#
#   scripts/train_stage1.sh                          all GPUs of this machine (torchrun), or one process without GPUs
#   GPUS=1 scripts/train_stage1.sh                   one GPU
#   HOSTFILE=hosts scripts/train_stage1.sh           several nodes: the deepspeed launcher reaches every host of the
#                                                    hostfile ("node1 slots=8" per line) over ssh; needs a shared disk
#   scripts/train_stage1.sh train.lr=5e-5 output.dir=runs/x    any config override (KEY=VALUE, given together)
#
# Relaunching continues from the newest complete checkpoint (--resume auto); a run that has none starts fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(train --stage 1 --config "${CONFIG:-configs/stage1.yaml}" --resume auto "$@")
PORT=${MASTER_PORT:-29500}
if [ -n "${HOSTFILE:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --master_port "$PORT" --no_local_rank --module got.cli "${ARGS[@]}"
fi
GPUS=${GPUS:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
if [ "$GPUS" -le 1 ]; then
  exec python3 -m got.cli "${ARGS[@]}"
fi
exec torchrun --nproc_per_node "$GPUS" --master_port "$PORT" -m got.cli "${ARGS[@]}"
