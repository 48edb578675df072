"""Shared by the evaluation tests: rendered text lines and tiny GOT models trained for a few steps by `got train`
(real run directories: checkpoints, metrics.jsonl, summary.json)."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from data_engines.fonts import load_font

LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Invoice number 48213 due on 12 March 2024",
    "Optical character recognition turns pixels into text",
    "Please send the report to the finance team",
    "Temperature rose to 31 degrees by noon today",
    "All models were trained for three epochs",
    "Revenue grew by 14 percent in the second quarter",
    "The library opens at nine in the morning",
    "Call 555 0142 to book a table for two",
    "Every sample is rendered with a known ground truth",
]
FAMILIES = ["sans", "serif", "liberation-sans", "liberation-serif"]
CJK_FAMILIES = ["cjk-sans", "cjk-serif"]


def render_line(text: str, family: str, size: int = 30) -> Image.Image:
    font = load_font(family, size)
    left, top, right, bottom = font.getbbox(text)
    margin = size // 2
    im = Image.new("RGB", (right - left + 2 * margin, bottom - top + 2 * margin), "white")
    ImageDraw.Draw(im).text((margin - left, margin - top), text, fill="black", font=font)
    return im


def write_line_set(folder: Path, lines: list[str] = LINES, name: str = "lines") -> Path:
    """PNG per line + a GOT-format JSON list next to them (relative image paths)."""
    from got.metrics import has_chinese

    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, text in enumerate(lines):
        families = CJK_FAMILIES if has_chinese(text) else FAMILIES
        render_line(text, families[i % len(families)]).save(folder / f"{name}{i}.png")
        records.append({"image": f"{name}{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": text}]})
    path = folder / f"{name}.json"
    path.write_text(json.dumps(records, ensure_ascii=False))
    return path


def tiny_config(hidden: int = 128):
    """The tiny preset with the decoder width changed (heads of 32 dims), for model-size sweeps."""
    from got.config import GOTConfig, load_config

    d = load_config("tiny").to_dict()
    d["decoder"].update(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_attention_heads=hidden // 32,
                        num_key_value_heads=hidden // 32)
    return GOTConfig.from_dict(d)


def train_tiny(data_json: Path, run_dir: Path, hidden: int = 128, steps: int = 6, lr: float = 3e-3, seed: int = 0):
    """`got train` (stage 2 recipe, DeepSpeed ZeRO-0, fp32) of a fresh tiny GOT with this decoder width on every
    record of data_json, one full batch per step at a constant lr. Returns run_dir/model, the newest export."""
    from train_helpers import got_train

    run_dir.mkdir(parents=True, exist_ok=True)
    preset = run_dir / "preset.json"
    preset.write_text(json.dumps(tiny_config(hidden).to_dict()))
    n = len(json.loads(data_json.read_text()))
    got_train(["--stage", "2", "--config", "configs/tiny_stage2.yaml", "--data", str(data_json),
               "--output", str(run_dir), f"model.preset={preset}", "model.encoder_from=null",
               f"train.max_steps={steps}", f"train.global_batch_size={n}", f"train.micro_batch_size={n}",
               f"train.lr={lr}", "train.warmup_steps=0", "train.min_lr_ratio=1.0", f"train.seed={seed}",
               "data.max_length=256", f"output.save_every={steps}", "output.keep_last=1"])
    return run_dir / "model"
