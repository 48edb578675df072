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
exec "$(dirname "$0")/launch.sh" 2 "${CONFIG:-configs/stage2.yaml}" "$@"
