"""Engine 10, multi-crop: large pages (2000-4000 px on the long side) for the patch-reference query
(`OCR with format upon the patch reference: `). At inference such an image is cut into 1024-px tiles plus a
thumbnail, so the text is set at a size that stays legible in the tiles but would be lost in one 1024-px view.
Target: the page in markdown (title `#`, headings `##`, one paragraph per line) in reading order.
"""
from __future__ import annotations

import math
import random

from data_engines import text as T
from data_engines.base import Sample
from data_engines.plain import conversation, draw_page, layout_page, lines_text, random_style

# (name, width range, height range): posters / spreads that are wide, scrolls that are tall, big pages
SHAPES = [("wide", (2400, 4000), (900, 1800)), ("tall", (1000, 1800), (2400, 4000)),
          ("page", (2000, 3000), (2600, 4000))]


class MultiCropEngine:
    """lang: "en" | "zh" | None (both); max_chars: text budget of one page (the answer must fit the
    stage-3 context of 8192 tokens next to up to 7 x 256 image tokens)."""
    name = "multi_crop"

    def __init__(self, lang: str | None = None, max_chars: dict[str, int] | None = None):
        T.check_choice("multi_crop", "lang", lang, T.LANGS)
        self.lang = lang
        self.max_chars = {"en": 9000, "zh": 3000, **(max_chars or {})}

    def render(self, rng: random.Random) -> Sample:
        from got.prompts import build_query

        lang = self.lang or rng.choice(T.LANGS)
        _, ws, hs = rng.choice(SHAPES)
        size = (rng.randint(*ws), rng.randint(*hs))
        budget = round(self.max_chars[lang] * rng.uniform(0.5, 1.0))
        # font size that fills the page with about `budget` characters (a glyph ~0.55 em wide for Latin, 1 em CJK)
        area = size[0] * size[1] * 0.7
        fs = math.sqrt(area / (budget * 1.45 * (0.55 if lang == "en" else 1.0)))
        fs = max(20, min(round(fs * rng.uniform(0.9, 1.15)), 64))
        columns = rng.choice([2, 3, 4]) if size[0] > 2 * size[1] else None
        style = random_style(rng, lang, size, font_size=fs, columns=columns)
        page = layout_page(rng, style, size, max_chars=budget)
        return Sample([draw_page(page)], conversation(build_query("format", multi_crop=True), lines_text(page.lines, True)),
                      {"lang": lang, "n_lines": len(page.lines), "size": list(size)})
