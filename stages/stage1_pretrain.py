"""Stage 1 — pre-train the vision tower (paper §4.1).

ViTDet-B encoder + OPT-125M decoder (projector 1024 -> 768), every parameter trained, 4096 tokens, lr 1e-4, on plain
text: pages and line/paragraph slices (+ scene text). OPT is only a cheap scaffold that teaches the encoder to read;
stage 2 keeps the encoder and drops it. Settings: configs/stage1.yaml (paper), configs/tiny_stage1.yaml (CPU).
"""
from __future__ import annotations

from typing import Any

from stages import fresh_model


def build(cfg: dict[str, Any]):
    if cfg["model"]["init_from"]:  # continue an interrupted / earlier pre-training from its weights
        from got.checkpoint import load_pretrained

        return load_pretrained(cfg["model"]["init_from"])
    return fresh_model(cfg)
