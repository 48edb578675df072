"""Choose how a text-line model answers: with its decoder (GOT's way) or with the tower's CTC head, whichever reads
held-out lines better; writes `vision.ctc_answers` into the model's config.json and prints both figures.
Run by scripts/train_default.sh after the export (docs/default_model.md).

    python scripts/choose_line_reader.py got/assets/default [--lines 100]
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from data_engines.plain import render_line
from got.inference import GOT
from got.metrics import cer

SEED = 8_300_000  # not a training draw (those come from hashed "<seed>:<source>" streams)


def line_cer(model: GOT, lines: list) -> tuple[float, float]:
    t0 = time.perf_counter()
    reads = model.chat_batch([im for im, _ in lines], batch_size=16)
    errors = sum(cer(r, t) * len(t) for r, (_, t) in zip(reads, lines))
    return errors / sum(len(t) for _, t in lines), (time.perf_counter() - t0) / len(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--lines", type=int, default=100)
    a = ap.parse_args()
    rng = random.Random(SEED)
    lines = [render_line(rng, "en") for _ in range(a.lines)]
    model = GOT.from_pretrained(a.model)
    if model.model.vision_tower.ctc_head is None:
        raise SystemExit(f"{a.model}: no CTC head; the decoder answers")
    figures = {}
    for ctc in (False, True):
        model.config.vision.ctc_answers = ctc
        figures["ctc" if ctc else "decoder"] = line_cer(model, lines)
    choice = min(figures, key=lambda k: figures[k][0])
    for k, (e, s) in figures.items():
        print(f"{k:>8}: CER {e:.4f} on {a.lines} held-out lines, {s * 1000:.0f} ms/line{'  <- chosen' if k == choice else ''}")
    path = a.model / "config.json"
    cfg = json.loads(path.read_text())
    cfg["vision"]["ctc_answers"] = choice == "ctc"
    if not cfg["vision"]["ctc_answers"]:
        del cfg["vision"]["ctc_answers"]
    path.write_text(json.dumps(cfg, indent=2) + "\n")


if __name__ == "__main__":
    main()
