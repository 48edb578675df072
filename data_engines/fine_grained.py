"""Engine 9, fine-grained OCR: a page plus a region, named either by a box in the prompt (GOT's 0-1000 grid,
`[x1, y1, x2, y2] OCR: `) or by a red / green / blue frame drawn on the image (`[red] OCR: `).
The target is the text of the region only: whole lines, in reading order.

Regions are what a reader points at: one line, a run of lines, or a paragraph (within one column). The box
hugs the lines' ink with a margin that stays clear of every other line, so no other text is inside it.
"""
from __future__ import annotations

import random

from PIL import ImageDraw

from data_engines import text as T
from data_engines.base import Sample
from data_engines.plain import Line, conversation, draw_page, layout_page, lines_text, page_size, random_style

COLORS = {"red": (255, 0, 0), "green": (0, 176, 0), "blue": (0, 0, 255)}
MODES = ("box", "color")


def pick_region(rng: random.Random, lines: list[Line]) -> list[Line]:
    """A paragraph, a run of 1-6 consecutive lines, or a single line, all in one column."""
    body = [i for i, l in enumerate(lines) if l.kind in ("text", "heading", "title")]
    start = rng.choice(body)
    col = lines[start].column
    kind = rng.choices(["line", "run", "paragraph"], [0.3, 0.4, 0.3])[0]
    if kind == "line":
        return [lines[start]]
    if kind == "paragraph":
        return [l for l in lines if l.block == lines[start].block and l.column == col]
    run = [lines[start]]
    for l in lines[start + 1:start + rng.randint(1, 6)]:
        if l.column != col:
            break
        run.append(l)
    return run


def region_box(region: list[Line], lines: list[Line], size: tuple[int, int], margin: int) -> tuple[int, int, int, int]:
    """Union of the region's ink boxes grown by up to `margin` px, stopping half-way to any other line."""
    x0, y0 = min(l.box[0] for l in region), min(l.box[1] for l in region)
    x1, y1 = max(l.box[2] for l in region), max(l.box[3] for l in region)
    left, top, right, bottom = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    for o in lines:
        if o in region:
            continue
        ox0, oy0, ox1, oy1 = o.box
        if ox1 <= left or ox0 >= right or oy1 <= top or oy0 >= bottom:
            continue
        if ox1 <= x0:
            left = max(left, (ox1 + x0) // 2)
        elif ox0 >= x1:
            right = min(right, (ox0 + x1 + 1) // 2)
        elif oy0 + oy1 < y0 + y1:
            top = max(top, (oy1 + y0) // 2)
        else:
            bottom = min(bottom, (oy0 + y1 + 1) // 2)
    w, h = size
    return max(0, left), max(0, top), min(w - 1, right), min(h - 1, bottom)


class FineGrainedEngine:
    """lang: "en" | "zh" | None (both); mode: "box" | "color" | None (half each)."""
    name = "fine_grained"

    def __init__(self, lang: str | None = None, mode: str | None = None):
        T.check_choice("fine_grained", "lang", lang, T.LANGS)
        if mode is not None and mode not in MODES:
            raise ValueError(f"fine_grained engine: unknown mode {mode!r}; choose from {', '.join(MODES)}")
        self.lang, self.mode = lang, mode

    def render(self, rng: random.Random) -> Sample:
        from got.prompts import build_query

        lang = self.lang or rng.choice(T.LANGS)
        mode = self.mode or rng.choice(MODES)
        size = page_size(rng)
        # colour frames sit in the gap between lines, so give them a little more leading
        style = random_style(rng, lang, size, leading=(1.2, 1.75) if mode == "box" else (1.6, 2.0))
        page = layout_page(rng, style, size)
        img = draw_page(page)
        region = pick_region(rng, page.lines)
        meta = {"lang": lang, "mode": mode, "n_lines": len(region)}
        if mode == "box":
            box = region_box(region, page.lines, size, margin=rng.randint(0, 6))
            query = build_query("plain", box=list(box), image_size=size)
            meta.update(box=list(box), fixed_geometry=True)  # the prompt holds coordinates: no warping augments
        else:
            color = rng.choice(list(COLORS))
            width = rng.randint(2, 4)
            box = region_box(region, page.lines, size, margin=width + rng.randint(2, 8))
            room = min(min(l.box[1] for l in region) - box[1], box[3] - max(l.box[3] for l in region),
                       min(l.box[0] for l in region) - box[0], box[2] - max(l.box[2] for l in region))
            width = max(1, min(width, room))  # the frame never covers the region's own ink
            ImageDraw.Draw(img).rectangle(box, outline=COLORS[color], width=width)
            query = build_query("plain", color=color)
            meta.update(box=list(box), color=color)
        return Sample([img], conversation(query, lines_text(region)), meta)
