"""Build the held-out rendered evaluation sets of the default model (docs/default_model.md): seeds no training mix
draws, and for each kind a second set in fonts no training mix uses (data_engines.fonts.HELD_OUT_FAMILIES).

    python benchmarks/held_out.py --out eval/held_out
    got eval --model default --data eval/held_out/lines.json --peer tesseract --peer rapidocr

Sets (GOT-format JSON with PNGs): lines / lines_unseen (200 each), paragraphs / paragraphs_unseen (100 each),
pages_1col / pages_2col (15 each, half of them in unseen fonts): English, printed, plain OCR; and lines_zh (50
Chinese lines, the stretch goal: the default model was trained on English only).
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tqdm import tqdm

from data_engines.fonts import HELD_OUT_FAMILIES
from data_engines.plain import draw_page, layout_page, lines_text, page_size, random_style, render_line, render_paragraph

SEED = 9_100_000  # training mixtures draw from hashed "<seed>:<source>" streams, never from these integers
SEEN = ["serif", "liberation-sans", "nimbus-roman"]


def record(name: str, text: str, meta: dict) -> dict:
    return {"image": name, "conversations": [{"from": "human", "value": "<image>\nOCR: "},
                                             {"from": "gpt", "value": text}], "source": meta}


def page(rng: random.Random, columns: int, family: str):
    size = page_size(rng)
    style = random_style(rng, "en", size, columns=columns)
    style.family = style.heading_family = family
    p = layout_page(rng, style, size)
    return draw_page(p), lines_text(p.lines), style.columns


def held_out_line(k: int, i: int, families: list[str], lang: str = "en"):
    """Line i of set k of the plan below: (image, text), the same whoever asks (benchmarks/scaling_default.py)."""
    return render_line(random.Random(SEED + 1000 * k + i), lang, family=families[i % len(families)])


def build(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plan = [("lines", 200, SEEN), ("lines_unseen", 200, HELD_OUT_FAMILIES),
            ("paragraphs", 100, SEEN), ("paragraphs_unseen", 100, HELD_OUT_FAMILIES),
            ("pages_1col", 15, SEEN + HELD_OUT_FAMILIES), ("pages_2col", 15, SEEN + HELD_OUT_FAMILIES),
            ("lines_zh", 50, ["cjk-sans", "cjk-serif"])]
    for k, (name, n, families) in enumerate(plan):
        records = []
        for i in tqdm(range(n), desc=name):
            rng = random.Random(SEED + 1000 * k + i)
            family = families[i % len(families)]
            if name.startswith("lines"):
                image, text = held_out_line(k, i, families, "zh" if name == "lines_zh" else "en")
            elif name.startswith("paragraphs"):
                image, lines = render_paragraph(rng, "en", family=family)
                text = lines_text(lines)
            else:
                columns = 1 if name == "pages_1col" else 2
                image, text, got_columns = page(rng, columns, family)
                while got_columns != columns:  # a narrow page cannot hold two columns: draw another
                    image, text, got_columns = page(rng, columns, family)
            file = f"{name}_{i:03d}.png"
            image.save(out / file)
            records.append(record(file, text, {"family": family, "seed": SEED + 1000 * k + i}))
        (out / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"held_out: {', '.join(f'{n} ({c})' for n, c, _ in plan)} -> {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="eval/held_out")
    build(Path(ap.parse_args().out))


if __name__ == "__main__":
    main()
