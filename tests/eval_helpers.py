"""Shared by the evaluation tests: rendered text lines and tiny GOT models trained for a few steps in-process
(plain AdamW, no DeepSpeed start-up), saved as real checkpoints with a trainer-style run log."""
from __future__ import annotations

import json
from pathlib import Path

import torch
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
    """Train a tiny GOT on every record of data_json (one full batch per step), save the model to
    run_dir/model and a trainer-style run log (metrics.jsonl, summary.json). Returns the model directory."""
    from got.checkpoint import save_pretrained
    from got.modeling import GOTModel
    from got.processor import ImageProcessor
    from got.prompts import IGNORE_INDEX, encode_conversation, parse_record
    from got.tokenizer import GOTTokenizer

    torch.manual_seed(seed)
    cfg = tiny_config(hidden)
    model, tok = GOTModel(cfg), GOTTokenizer.default()
    proc = ImageProcessor(cfg.image_size)
    pixels, seqs = [], []
    for record in json.loads(data_json.read_text()):
        images, turns = parse_record(record, data_json.parent)
        pixels.append(proc.preprocess(images[0]))
        seqs.append(encode_conversation(tok, turns, cfg.image_token_len))
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), tok.endoftext_id)
    labels = torch.full((len(seqs), width), IGNORE_INDEX)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (i, lab) in enumerate(seqs):
        ids[b, :len(i)], labels[b, :len(lab)], mask[b, :len(i)] = torch.tensor(i), torch.tensor(lab), 1
    pixel_values = torch.stack(pixels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows, tokens = [], 0
    model.train()
    for step in range(1, steps + 1):
        loss = model(ids, pixel_values, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += int(mask.sum())
        rows.append({"step": step, "loss": loss.item(), "lr": lr})
    model.eval()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "summary.json").write_text(json.dumps({"steps": steps, "tokens_total": tokens,
                                                      "model": str(run_dir / "model")}))
    save_pretrained(model, run_dir / "model", tokenizer=tok)
    return run_dir / "model"
