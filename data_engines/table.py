"""Engine 4: random tables drawn with PIL; target a LaTeX tabular (default) or a markdown table.

The target encodes everything drawn that a tabular can say: the cell texts (LaTeX-escaped), bold header
cells (`\\textbf{}`), column alignment (l/c/r), vertical rules (`|` in the column spec) and horizontal rules
(`\\hline`, or booktabs `\\toprule/\\midrule/\\bottomrule` drawn thick/thin/thick). Cells are never merged.
Markdown (`fmt="markdown"`) keeps cells and alignment only, so rules are not drawn for it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from data_engines import text
from data_engines.base import Sample
from data_engines.fonts import CJK_FAMILIES, LATIN_FAMILIES, load_font
from data_engines.structured import format_conversation, ink, paper

BOLD = {"sans": "sans-bold", "serif": "serif-bold", "liberation-sans": "sans-bold", "liberation-serif": "serif-bold"}
LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
# horizontal rule styles: (rule above header, rule below header, between body rows, below last row)
RULES = {
    "grid": ("hline", "hline", "hline", "hline"),
    "header": ("hline", "hline", None, "hline"),
    "booktabs": ("toprule", "midrule", None, "bottomrule"),
    "minimal": (None, "hline", None, None),
}
VRULES = ["none", "all", "outer", "inner", "first"]


def latex_escape(s: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in s)


def tabular(cells: list[list[str]], aligns: list[str], vrules: list[bool], hrules: list[str | None],
            bold_header: bool) -> str:
    """LaTeX tabular. `vrules[i]`: a rule left of column i (len = cols + 1); `hrules[i]`: rule above row i
    (len = rows + 1), "hline" / "toprule" / "midrule" / "bottomrule" / None."""
    spec = "".join(("|" if vrules[i] else "") + a for i, a in enumerate(aligns)) + ("|" if vrules[-1] else "")
    lines = [rf"\begin{{tabular}}{{{spec}}}"]
    for i, row in enumerate(cells):
        if hrules[i]:
            lines.append("\\" + hrules[i])
        esc = [latex_escape(c) for c in row]
        if i == 0 and bold_header:
            esc = [rf"\textbf{{{c}}}" if c else c for c in esc]
        lines.append(" & ".join(esc) + r" \\")
    if hrules[-1]:
        lines.append("\\" + hrules[-1])
    lines.append(r"\end{tabular}")
    return "\n".join(lines)


def markdown_table(cells: list[list[str]], aligns: list[str], bold_header: bool) -> str:
    sep = {"l": ":---", "c": ":---:", "r": "---:"}
    rows = [[c.replace("|", r"\|") for c in row] for row in cells]
    if bold_header:
        rows[0] = [f"**{c}**" if c else c for c in rows[0]]
    rows = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([rows[0], "| " + " | ".join(sep[a] for a in aligns) + " |"] + rows[1:])


@dataclass
class Column:
    kind: str  # text | int | float | percent | money | year | name
    decimals: int = 0


def _cell(rng: random.Random, col: Column, lang: str) -> str:
    if rng.random() < 0.03:
        return rng.choice(["", "-", "N/A"])
    k = col.kind
    if k == "text":
        return "".join(text.words(rng, lang, rng.randint(1, 2))) if lang == "zh" else \
            _capitalize(" ".join(text.words(rng, lang, rng.randint(1, 3))))
    if k == "name":
        return text.faker(lang, rng).name()
    if k == "int":
        v = rng.randint(-50, 100000) if rng.random() < 0.2 else rng.randint(0, 5000)
        return f"{v:,}" if col.decimals > 1 else str(v)  # thousands separators in 2 of 3 int columns
    if k == "float":
        return f"{rng.uniform(-100, 1000):.{col.decimals}f}"
    if k == "percent":
        return f"{rng.uniform(0, 100):.{col.decimals}f}%"
    if k == "money":
        return f"${rng.uniform(0, 100000):,.2f}"
    return str(rng.randint(1950, 2030))


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _header(rng: random.Random, col: Column, lang: str) -> str:
    if lang == "zh":
        return "".join(text.words(rng, "zh", rng.randint(1, 2)))
    h = " ".join(text.words(rng, "en", rng.randint(1, 2))).title()
    return h + {"percent": " (%)", "money": " ($)"}.get(col.kind, "") if rng.random() < 0.3 else h


class TableEngine:
    """Random tables: 2-7 columns, 2-14 body rows, typed columns, varied rules, fonts and padding."""

    name = "table"

    def __init__(self, fmt: str = "latex", chinese_prob: float = 0.25, max_side: int = 1024):
        if fmt not in ("latex", "markdown"):
            raise ValueError(f"table fmt must be 'latex' or 'markdown', got {fmt!r}")
        self.fmt, self.chinese_prob, self.max_side = fmt, chinese_prob, max_side

    def render(self, rng: random.Random) -> Sample:
        lang = "zh" if rng.random() < self.chinese_prob else "en"
        family = rng.choice(CJK_FAMILIES if lang == "zh" else LATIN_FAMILIES)
        size = rng.randint(14, 26)
        font = load_font(family, size)
        bold_header = family in BOLD and rng.random() < 0.5
        hfont = load_font(BOLD[family], size) if bold_header else font
        fg, bg = ink(rng), paper(rng)

        n_cols, n_rows = rng.randint(2, 7), rng.randint(2, 14)  # body rows; the header is one more
        cols = [Column("text" if rng.random() < 0.8 else "name")] + [
            Column(rng.choices(["text", "int", "float", "percent", "money", "year"], [3, 3, 3, 2, 1, 1])[0],
                   rng.randint(1, 3)) for _ in range(n_cols - 1)]
        cells = [[_header(rng, c, lang) for c in cols]] + [[_cell(rng, c, lang) for c in cols] for _ in range(n_rows)]
        aligns = [rng.choice("lc") if c.kind in ("text", "name") else rng.choice("rrc") for c in cols]

        pad_x, pad_y = rng.randint(6, 18), rng.randint(3, 10)
        margin = rng.randint(10, 50)

        def width(c: str, f) -> int:
            return int(f.getlength(c)) + 1

        # Fit the page: drop trailing columns (keeping two), then shrink the font, then drop trailing rows;
        # meta and target follow what is kept.
        while True:
            col_w = [max(width(r[j], hfont if i == 0 else font) for i, r in enumerate(cells)) + 2 * pad_x
                     for j in range(len(cols))]
            if sum(col_w) + 2 * margin <= self.max_side or (len(cols) <= 2 and size <= 8):
                break
            if len(cols) > 2:
                cols, aligns, cells = cols[:-1], aligns[:-1], [r[:-1] for r in cells]
            else:
                size -= 2
                font = load_font(family, size)
                hfont = load_font(BOLD[family], size) if bold_header else font
        asc, desc = font.getmetrics()
        row_h = asc + desc + 2 * pad_y
        max_rows = max(2, (self.max_side - 2 * margin - 4) // row_h)
        cells = cells[:max_rows]

        if self.fmt == "markdown":
            vstyle, hstyle = "none", "minimal"
        else:
            vstyle, hstyle = rng.choice(VRULES), rng.choice(list(RULES))
        n_c, n_r = len(cols), len(cells)
        vrules = [vstyle in ("all", "outer"), *[vstyle in ("all", "inner") or (vstyle == "first" and j == 1)
                                                for j in range(1, n_c)], vstyle in ("all", "outer")]
        top, below_header, between, bottom = RULES[hstyle]
        hrules = [top, below_header] + [between] * (n_r - 2) + [bottom]
        heavy = {"toprule": 2, "bottomrule": 2}

        w = sum(col_w) + 2 * margin
        h = n_r * row_h + 2 * margin
        img = Image.new("RGB", (w, h), bg)
        draw = ImageDraw.Draw(img)
        xs = [margin]
        for cw in col_w:
            xs.append(xs[-1] + cw)
        ys = [margin + i * row_h for i in range(n_r + 1)]
        for i, row in enumerate(cells):
            f = hfont if i == 0 else font
            for j, c in enumerate(row):
                cw = width(c, f)
                a = aligns[j]
                x = xs[j] + pad_x if a == "l" else xs[j + 1] - pad_x - cw if a == "r" else (xs[j] + xs[j + 1] - cw) // 2
                draw.text((x, ys[i] + pad_y), c, font=f, fill=fg)
        for i, r in enumerate(hrules):
            if r:
                lw = heavy.get(r, 1)
                draw.rectangle([xs[0], ys[i] - lw // 2, xs[-1] - 1, ys[i] - lw // 2 + lw - 1], fill=fg)
        for j, v in enumerate(vrules):
            if v:
                x = min(xs[j], xs[-1] - 1)
                draw.line([(x, ys[0]), (x, ys[-1] - 1)], fill=fg, width=1)

        target = tabular(cells, aligns, vrules, hrules, bold_header) if self.fmt == "latex" else \
            markdown_table(cells, aligns, bold_header)
        meta = {"cells": cells, "aligns": "".join(aligns), "vrules": vrules, "hrules": hrules,
                "bold_header": bold_header, "lang": lang, "font": family, "size": size,
                "bbox": [xs[0], ys[0], xs[-1], ys[-1]]}
        return Sample([img], format_conversation(target), meta)
