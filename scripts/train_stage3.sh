#!/usr/bin/env bash
# Stage 3 — post-training: encoder frozen, decoder + projector trained, 8192 tokens, lr 2e-5.
# Needs a stage-2 run (configs/stage3.yaml: model.init_from=runs/stage2).
#
#   scripts/train_stage3.sh                          all GPUs of this machine (torchrun), or one process without GPUs
#   GPUS=1 scripts/train_stage3.sh                   one GPU
#   HOSTFILE=hosts scripts/train_stage3.sh           several nodes: the deepspeed launcher reaches every host of the
#                                                    hostfile ("node1 slots=8" per line) over ssh; needs a shared disk
#   scripts/train_stage3.sh train.lr=5e-5 output.dir=runs/x    any config override (KEY=VALUE, given together)
#
# Relaunching continues from the newest complete checkpoint (--resume auto); a run that has none starts fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(train --stage 3 --config "${CONFIG:-configs/stage3.yaml}" --resume auto "$@")
PORT=${MASTER_PORT:-29500}
if [ -n "${HOSTFILE:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --master_port "$PORT" --no_local_rank --module got.cli "${ARGS[@]}"
fi
GPUS=${GPUS:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
if [ "$GPUS" -le 1 ]; then
  exec python3 -m got.cli "${ARGS[@]}"
fi
exec torchrun --nproc_per_node "$GPUS" --master_port "$PORT" -m got.cli "${ARGS[@]}"
