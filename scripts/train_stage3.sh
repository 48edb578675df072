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
exec "$(dirname "$0")/launch.sh" 3 "${CONFIG:-configs/stage3.yaml}" "$@"
