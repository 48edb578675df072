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
exec "$(dirname "$0")/launch.sh" 1 "${CONFIG:-configs/stage1.yaml}" "$@"
