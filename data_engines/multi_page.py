"""Engine 11, multi-page: 2-8 short pages of one document (same fonts, margins, columns) for the query
`OCR with format across multi pages: `. Each page stays under ~650 answer tokens, as in GOT's stage-3 data.
Target: the pages' markdown in page order, separated by a blank line (what the pages show, concatenated).
"""
from __future__ import annotations

import random

from data_engines import text as T
from data_engines.base import Sample
from data_engines.plain import conversation, draw_page, layout_page, lines_text, page_size, random_style

# characters per page that stay under ~650 Qwen tokens (~4 chars/token English, ~1.2 chars/token Chinese)
PAGE_CHARS = {"en": (600, 2200), "zh": (200, 700)}


class MultiPageEngine:
    """lang: "en" | "zh" | None (both); pages: (min, max) pages per sample."""
    name = "multi_page"

    def __init__(self, lang: str | None = None, pages: tuple[int, int] = (2, 8)):
        T.check_choice("multi_page", "lang", lang, T.LANGS)
        if not 1 <= pages[0] <= pages[1]:
            raise ValueError(f"multi_page engine: pages must be (min, max) with 1 <= min <= max, got {pages}")
        self.lang, self.pages = lang, tuple(pages)

    def render(self, rng: random.Random) -> Sample:
        from got.prompts import build_query

        lang = self.lang or rng.choice(T.LANGS)
        n = rng.randint(*self.pages)
        size = page_size(rng)
        style = random_style(rng, lang, size, columns=rng.choice([1, 1, 2]))
        first = rng.randint(1, 300)
        images, texts = [], []
        for i in range(n):
            page = layout_page(rng, style, size, title=i == 0 and rng.random() < 0.7,
                               max_chars=rng.randint(*PAGE_CHARS[lang]), page_no=first + i)
            images.append(draw_page(page))
            texts.append(lines_text(page.lines, markdown=True))
        return Sample(images, conversation(build_query("format", multi_page=True), "\n\n".join(texts)),
                      {"lang": lang, "pages": n})
