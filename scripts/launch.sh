#!/usr/bin/env bash
# Launches `got train` on one process, every GPU of this machine (torchrun), or several nodes (deepspeed --hostfile).
#   scripts/launch.sh STAGE CONFIG [KEY=VALUE ...]      used by scripts/train_stage{1,2,3}.sh
#   GPUS=N picks the GPU count (default: all; 0 or 1 -> one plain process); HOSTFILE=hosts -> deepspeed launcher.
# Relaunching continues from the newest complete checkpoint (--resume auto); a run that has none starts fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=$1 CONFIG=$2
shift 2
ARGS=(train --stage "$STAGE" --config "$CONFIG" --resume auto "$@")
PORT=${MASTER_PORT:-29500}
if [ -n "${HOSTFILE:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --master_port "$PORT" --no_local_rank --module got.cli "${ARGS[@]}"
fi
GPUS=${GPUS:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
if [ "$GPUS" -le 1 ]; then
  exec python3 -m got.cli "${ARGS[@]}"
fi
exec torchrun --nproc_per_node "$GPUS" --master_port "$PORT" -m got.cli "${ARGS[@]}"
