#!/usr/bin/env bash
# Stage 2 — joint training: stage-1 encoder + fresh projector + Qwen decoder, all parameters, 6000 tokens.
# Needs a stage-1 run (configs/stage2.yaml: model.encoder_from=runs/stage1); a local HF Qwen2 dir for the decoder
# goes in model.decoder_from=PATH, its tokenizer in model.tokenizer=PATH.
#
#   scripts/train_stage2.sh                          all GPUs of this machine (torchrun), or one process without GPUs
#   GPUS=1 scripts/train_stage2.sh                   one GPU
#   HOSTFILE=hosts scripts/train_stage2.sh           several nodes: the deepspeed launcher reaches every host of the
#                                                    hostfile ("node1 slots=8" per line) over ssh; needs a shared disk
#   scripts/train_stage2.sh train.lr=5e-5 output.dir=runs/x    any config override (KEY=VALUE, given together)
#
# Relaunching continues from the newest complete checkpoint (--resume auto); a run that has none starts fresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(train --stage 2 --config "${CONFIG:-configs/stage2.yaml}" --resume auto "$@")
PORT=${MASTER_PORT:-29500}
if [ -n "${HOSTFILE:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --master_port "$PORT" --no_local_rank --module got.cli "${ARGS[@]}"
fi
GPUS=${GPUS:-$(python3 -c "import torch; print(torch.cuda.device_count())")}
if [ "$GPUS" -le 1 ]; then
  exec python3 -m got.cli "${ARGS[@]}"
fi
exec torchrun --nproc_per_node "$GPUS" --master_port "$PORT" -m got.cli "${ARGS[@]}"
