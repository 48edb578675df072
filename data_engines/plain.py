"""Engine 1, plain text: full pages (1-3 columns, title, headings, paragraphs, running header, page number)
and line / paragraph slices, in English and Chinese.

The layout is computed first (every line with its text, font and pixel box), then drawn with one
pass of cached glyph masks (text.draw_text), then turned into the target in reading order (title, then column by column,
header first and page number last). Fine-grained, multi-crop and multi-page engines reuse the same layout.

Targets: "OCR: " -> the drawn lines joined by "\\n", blocks separated by a blank line.
         "OCR with format: " -> markdown: `#`/`##` headings, each paragraph on one line, blank line between blocks.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

from data_engines import text as T
from data_engines.base import Sample

LAYOUTS = ("page", "line", "paragraph", "page_line")


@dataclass
class Line:
    text: str
    box: tuple[int, int, int, int]  # ink box in pixels (x0, y0, x1, y1)
    block: int  # index of the title / heading / paragraph this line belongs to
    kind: str  # "header" | "title" | "heading" | "text" | "footer"
    column: int  # -1 for lines spanning the page (header, title, footer)
    joiner: str  # rejoins this line to the next line of its block in markdown ("" or " ")
    font: ImageFont.FreeTypeFont = field(repr=False)
    origin: tuple[int, int] = (0, 0)  # where draw_text puts it (anchor "la")
    fill: tuple[int, int, int] = (0, 0, 0)


@dataclass
class Style:
    """What stays fixed across the pages of one document."""
    lang: str
    family: str
    size: int
    leading: float  # line pitch / font size
    columns: int
    margins: tuple[int, int, int, int]  # left, top, right, bottom
    gutter: int
    para_gap: float  # extra space between paragraphs, in lines
    indent: int  # first-line indent in px
    ink: tuple[int, int, int]
    paper: tuple[int, int, int]
    heading_family: str
    heading_ink: tuple[int, int, int]
    header: bool
    page_number: bool
    technical: float = 0.0  # share of words that are identifiers, options, paths (text.technical_token)


@dataclass
class Page:
    size: tuple[int, int]
    style: Style
    lines: list[Line]


def random_style(rng: random.Random, lang: str, size: tuple[int, int], font_size: int | None = None,
                 columns: int | None = None, leading: tuple[float, float] = (1.2, 1.75)) -> Style:
    w, h = size
    family = rng.choice(T.BODY_FAMILIES[lang])
    fs = font_size or max(12, round(w * rng.uniform(0.012, 0.021)))
    ml = round(w * rng.uniform(0.04, 0.11))
    mr = ml if rng.random() < 0.7 else round(w * rng.uniform(0.04, 0.11))
    mt, mb = round(h * rng.uniform(0.03, 0.08)), round(h * rng.uniform(0.03, 0.08))
    gutter = round(w * rng.uniform(0.025, 0.05))
    if columns is None:
        columns = rng.choices([1, 2, 3], [0.5, 0.35, 0.15])[0]
    min_col = fs * (16 if lang == "en" else 10)
    while columns > 1 and (w - ml - mr - (columns - 1) * gutter) / columns < min_col:
        columns -= 1
    para_gap = rng.choice([0.0, 0.4, 0.8, 1.0])
    indent = fs * 2 if para_gap == 0 or rng.random() < 0.3 else 0
    dark = rng.randint(0, 60)
    ink = (dark, dark, dark) if rng.random() < 0.8 else (dark, dark, min(255, dark + 50))
    paper = (255, 255, 255) if rng.random() < 0.6 else tuple(rng.randint(238, 255) for _ in range(3))
    heading_family = T.BOLD_FAMILY.get(family, family) if rng.random() < 0.8 else family
    heading_ink = ink if rng.random() < 0.7 else rng.choice([(20, 40, 120), (120, 20, 20), (10, 80, 60)])
    return Style(lang, family, fs, rng.uniform(*leading), columns, (ml, mt, mr, mb), gutter, para_gap, indent,
                 ink, paper, heading_family, heading_ink, rng.random() < 0.25, rng.random() < 0.35)


def _blocks(rng: random.Random, lang: str, technical: float = 0.0):
    """Endless stream of (kind, level, text): paragraphs with a heading now and then."""
    last = "heading"
    while True:
        if last != "heading" and rng.random() < 0.15:
            last = "heading"
            yield "heading", 2, T.heading(rng, lang)
        else:
            last = "text"
            yield "text", 0, T.paragraph(rng, lang, technical=technical)


def layout_page(rng: random.Random, style: Style, size: tuple[int, int], *, title: bool | None = None,
                max_chars: int | None = None, page_no: int | None = None) -> Page:
    """Flow title, headings and paragraphs through the columns until the page (or max_chars) is full."""
    w, h = size
    lang, fs = style.lang, style.size
    ml, mt, mr, mb = style.margins
    lines: list[Line] = []
    block = 0
    body = T.get_font(style.family, fs)
    top_b, bot_b = T.ink_extent(body)
    pitch = max(round(fs * style.leading), bot_b - top_b + 2)
    y, bottom = mt, h - mb

    def put(text: str, font, x: float, y: float, kind: str, column: int, joiner: str, fill) -> None:
        top, bot = T.ink_extent(font)
        x, y = round(x), round(y)
        box = (x, y + top, x + round(T.text_width(font, text)), y + bot)
        lines.append(Line(text, box, block, kind, column, joiner, font, (x, y), fill))

    if style.header:  # running header: small, above the text, separated by a rule-sized gap
        hf = T.get_font(style.family, max(10, round(fs * 0.8)))
        put(T.heading(rng, lang, numbered=False), hf, ml, y, "header", -1, "", style.ink)
        y += round(fs * 2.2)
        block += 1
    bottom_limit = bottom
    if style.page_number:
        bottom_limit -= round(fs * 2.2)
    if title if title is not None else rng.random() < 0.5:
        tsize = round(fs * rng.uniform(1.4, 2.2))
        tf = T.get_font(style.heading_family, tsize)
        wrapped = T.wrap(T.heading(rng, lang), tf, w - ml - mr, lang)[:2]
        center = rng.random() < 0.5
        ttop, tbot = T.ink_extent(tf)
        for text, joiner in wrapped:
            x = (w - T.text_width(tf, text)) / 2 if center else ml
            put(text, tf, x, y, "title", -1, joiner, style.heading_ink)
            y += max(round(tsize * 1.25), tbot - ttop + 2)
        y += round(fs * rng.uniform(1.0, 2.5))
        block += 1

    col_w = (w - ml - mr - (style.columns - 1) * style.gutter) / style.columns
    col, col_top, n_chars = 0, y, 0
    hsize = round(fs * rng.uniform(1.1, 1.4))
    hf = T.get_font(style.heading_family, hsize)
    htop, hbot = T.ink_extent(hf)
    hpitch = max(round(hsize * 1.3), hbot - htop + 2)
    for kind, _, content in _blocks(rng, lang, style.technical):
        if col >= style.columns or (max_chars is not None and n_chars >= max_chars):
            break
        if kind == "heading":
            if max_chars is not None and n_chars + len(content) + 40 > max_chars:
                break  # a heading needs text under it
            font, step, fill, ink_bot = hf, hpitch, style.heading_ink, hbot
            wrapped = T.wrap(content, hf, col_w, lang)
            if y + step * len(wrapped) + pitch + bot_b > bottom_limit:  # no heading at a column's foot
                col, y = col + 1, col_top
        else:
            font, step, fill, ink_bot = body, pitch, style.ink, bot_b
            wrapped = T.wrap(content, body, col_w, lang, first_width=col_w - style.indent)
        if max_chars is not None:  # cut the block at a line boundary so the page stays under budget
            total, keep = n_chars, 0
            while keep < len(wrapped) and (keep == 0 or total + len(wrapped[keep][0]) <= max_chars):
                total += len(wrapped[keep][0])
                keep += 1
            wrapped = wrapped[:keep]
        for i, (line, joiner) in enumerate(wrapped):
            if y + ink_bot > bottom_limit:  # column full: continue at the top of the next one
                col, y = col + 1, col_top
            if col >= style.columns:
                break
            x = ml + col * (col_w + style.gutter) + (style.indent if kind == "text" and i == 0 else 0)
            put(line, font, x, y, kind, col, joiner, fill)
            n_chars += len(line)
            y += step
        y += round(pitch * style.para_gap) if kind == "text" else round(pitch * 0.3)
        block += 1
    if style.page_number:
        nf = T.get_font(style.family, max(10, round(fs * 0.85)))
        label = str(page_no if page_no is not None else rng.randint(1, 400))
        put(label, nf, (w - T.text_width(nf, label)) / 2, h - mb - round(fs * 1.2), "footer", -1, "", style.ink)
    return Page(size, style, lines)


def draw_page(page: Page, image: Image.Image | None = None) -> Image.Image:
    img = image or Image.new("RGB", page.size, page.style.paper)
    draw = ImageDraw.Draw(img)
    for line in page.lines:
        T.draw_text(draw, line.origin, line.text, line.font, line.fill)
    return img


def lines_text(lines: list[Line], markdown: bool = False) -> str:
    """Target text of some lines in the order given: blocks separated by a blank line."""
    blocks: list[list[Line]] = []
    for line in lines:
        if blocks and blocks[-1][-1].block == line.block:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    out = []
    for blk in blocks:
        if not markdown:
            out.append("\n".join(l.text for l in blk))
            continue
        joined = T.join_lines([(l.text, l.joiner) for l in blk])
        prefix = {"title": "# ", "heading": "## "}.get(blk[0].kind, "")
        out.append(prefix + joined)
    return "\n\n".join(out)


def conversation(query: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\n" + query}, {"from": "gpt", "value": answer}]


def page_size(rng: random.Random) -> tuple[int, int]:
    """Document-like sizes: portrait mostly (A4/Letter-ish), some landscape and square-ish."""
    w = rng.randint(800, 1400)
    aspect = rng.choices([rng.uniform(1.25, 1.5), rng.uniform(0.65, 0.8), rng.uniform(0.9, 1.1)], [0.75, 0.15, 0.1])[0]
    return w, round(w * aspect)


class PlainEngine:
    """Plain-text pages and slices.

    lang: "en" | "zh" | None (both, evenly); layout: "page" | "line" | "paragraph" | None (0.5/0.25/0.25), or
    "page_line" (a line of a page cut the way got.layout cuts pages for a text-line model; never drawn by None);
    format_prob: share of pages / paragraphs whose target is markdown with the "OCR with format: " query;
    max_units: the longest line slice in words (characters for Chinese; default 12 / 24): short slices are the
    easy start of a curriculum;
    technical: share of English words replaced by identifiers, options, paths, versions (manuals, code docs);
    bold: share of line slices (line, page_line) set in the bold face of their family;
    marks: share of English line slices (line) given a printed document's marks: bullets, dashes, curly quotes,
    capitals throughout, operators, signs (text.print_marks).
    """
    name = "plain"

    def __init__(self, lang: str | None = None, layout: str | None = None, format_prob: float = 0.2,
                 max_units: int | None = None, technical: float = 0.0, bold: float = 0.0, marks: float = 0.0):
        T.check_choice("plain", "lang", lang, T.LANGS)
        T.check_choice("plain", "layout", layout, LAYOUTS)
        if max_units is not None and (isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 1):
            raise ValueError(f"plain: max_units must be a whole number >= 1, got {max_units!r}")
        for key, share in (("technical", technical), ("bold", bold), ("marks", marks)):
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                raise ValueError(f"plain: {key} must be a share between 0 and 1, got {share!r}")
        self.lang, self.layout, self.format_prob, self.max_units = lang, layout, format_prob, max_units
        self.technical, self.bold, self.marks = float(technical), float(bold), float(marks)

    def render(self, rng: random.Random) -> Sample:
        from got.prompts import build_query

        lang = self.lang or rng.choice(T.LANGS)
        layout = self.layout or rng.choices(LAYOUTS[:3], [0.5, 0.25, 0.25])[0]
        if layout in ("line", "page_line"):
            img, text = render_line(rng, lang, max_units=self.max_units, technical=self.technical, bold=self.bold,
                                    marks=self.marks) \
                if layout == "line" else render_page_line(rng, lang, technical=self.technical, bold=self.bold)
            return Sample([img], conversation(build_query("plain"), text), {"lang": lang, "layout": layout})
        markdown = rng.random() < self.format_prob
        if layout == "page":
            size = page_size(rng)
            style = random_style(rng, lang, size)
            style.technical = self.technical
            page = layout_page(rng, style, size)
            img = draw_page(page)
            lines = page.lines
        else:
            img, lines = render_paragraph(rng, lang, technical=self.technical)
        query = build_query("format" if markdown else "plain")
        return Sample([img], conversation(query, lines_text(lines, markdown)),
                      {"lang": lang, "layout": layout, "n_lines": len(lines)})


def _slice_colors(rng: random.Random) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(ink, paper) for a slice: dark on light mostly, sometimes light on dark, never low-contrast."""
    dark = tuple(rng.randint(0, 70) for _ in range(3))
    light = tuple(rng.randint(215, 255) for _ in range(3))
    return (light, dark) if rng.random() < 0.1 else (dark, light)


def render_line(rng: random.Random, lang: str, size: tuple[int, int] = (16, 48), family: str | None = None,
                max_units: int | None = None, technical: float = 0.0, bold: float = 0.0,
                marks: float = 0.0) -> tuple[Image.Image, str]:
    """One text line cropped with a small random margin (a PP-OCR recognition-style slice); `family` fixes the
    font (held-out evaluation sets use fonts no training mix draws); `marks`: the share given text.print_marks."""
    family = family or rng.choice(T.BODY_FAMILIES[lang])
    if bold and rng.random() < bold:
        family = T.BOLD_FAMILY.get(family, family)
    font = T.get_font(family, rng.randint(*size))
    text = T.snippet(rng, lang, max_units or (12 if lang == "en" else 24), technical)
    if marks and lang == "en" and rng.random() < marks:
        text = T.print_marks(rng, text)
    top, bot = T.ink_extent(font)
    pad_x, pad_y = rng.randint(2, font.size), rng.randint(2, max(3, font.size // 3))
    w = round(T.text_width(font, text)) + 2 * pad_x
    ink, paper = _slice_colors(rng)
    img = Image.new("RGB", (w, bot - top + 2 * pad_y), paper)
    T.draw_text(ImageDraw.Draw(img), (pad_x, pad_y - top), text, font, ink)
    return img, text


def render_page_line(rng: random.Random, lang: str, technical: float = 0.0, bold: float = 0.0) -> tuple[Image.Image, str]:
    """One line of a laid-out page (body text, heading, title, running header or page number, in the page's small
    print), cut with the margins got.layout.line_segments leaves (jittered): what a line model sees of a page."""
    size = page_size(rng)
    style = random_style(rng, lang, size)
    style.technical = technical
    if bold and rng.random() < bold:
        style.family = T.BOLD_FAMILY.get(style.family, style.family)
    page = layout_page(rng, style, size, max_chars=rng.randint(80, 600))
    line = rng.choice(page.lines)
    x0, y0, x1, y1 = line.box
    h = y1 - y0
    box = (max(0, round(x0 - h * rng.uniform(0.2, 0.8))), max(0, round(y0 - h * rng.uniform(0.05, 0.3))),
           min(size[0], round(x1 + h * rng.uniform(0.2, 0.8))), min(size[1], round(y1 + h * rng.uniform(0.05, 0.3))))
    img = Image.new("RGB", (box[2] - box[0], box[3] - box[1]), style.paper)
    T.draw_text(ImageDraw.Draw(img), (line.origin[0] - box[0], line.origin[1] - box[1]), line.text, line.font, line.fill)
    return img, line.text


def render_paragraph(rng: random.Random, lang: str, family: str | None = None,
                     technical: float = 0.0) -> tuple[Image.Image, list[Line]]:
    """A paragraph (optionally under a heading) set in a narrow box and cropped: a paragraph slice."""
    fs = rng.randint(14, 30)
    width = rng.randint(fs * (14 if lang == "en" else 9), fs * (40 if lang == "en" else 30))
    style = random_style(rng, lang, (width, 10 ** 5), font_size=fs, columns=1)
    style.technical = technical
    if family:
        style.family = style.heading_family = family
    ink, paper = _slice_colors(rng)
    pad = rng.randint(4, 2 * fs)
    style.margins, style.header, style.page_number = (pad, pad, pad, pad), False, False
    style.ink, style.paper, style.heading_ink, style.indent = ink, paper, ink, style.indent if rng.random() < 0.3 else 0
    page = layout_page(rng, style, (width, 10 ** 5), title=rng.random() < 0.2,
                       max_chars=rng.randint(60, 600) if lang == "en" else rng.randint(20, 200))
    height = max(l.box[3] for l in page.lines) + pad
    img = Image.new("RGB", (width, height), paper)
    return draw_page(Page((width, height), style, page.lines), img), page.lines
