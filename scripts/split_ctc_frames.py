"""Give a model's CTC head more frames per token (vision.ctc_frames), reading exactly as before until trained.

Each new frame starts as a copy of the token's old scores, and greedy CTC merges repeated labels, so the copy
reads the same text; training then lets the frames of one token differ, which a doubled or thin letter needs
(one 8 px token cannot hold "ll" with the blank CTC puts between them). Used before the default model's third
continued-training round (docs/default_model.md, "Continued training").

    python scripts/split_ctc_frames.py got/assets/default /tmp/default_f2 --frames 2
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from got.checkpoint import load_model, save_pretrained
from got.config import GOTConfig
from got.modeling import GOTModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--frames", type=int, default=2)
    a = ap.parse_args()
    old = load_model(a.src)
    cfg = old.config.to_dict()
    if not cfg["vision"].get("ctc_charset"):
        raise SystemExit(f"{a.src}: no CTC head (vision.ctc_charset is empty)")
    had = cfg["vision"].get("ctc_frames", 1)
    if had != 1:
        raise SystemExit(f"{a.src}: the CTC head already has {had} frames per token")
    cfg["vision"]["ctc_frames"] = a.frames
    new = GOTModel(GOTConfig.from_dict(cfg)).to(next(old.parameters()).dtype)
    sd = old.state_dict()
    for k in ("weight", "bias"):
        sd[f"vision_tower.ctc_head.{k}"] = sd[f"vision_tower.ctc_head.{k}"].repeat(a.frames, *[1] * (k == "weight"))
    new.load_state_dict(sd)
    shutil.copytree(a.src, a.dst)  # the tokenizer files travel along; config and weights are rewritten
    save_pretrained(new, a.dst)
    print(f"{a.dst}: vision.ctc_frames {a.frames}")


if __name__ == "__main__":
    main()
