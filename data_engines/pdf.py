"""Engine 2, PDF pages: multi-column documents typeset with pymupdf, rendered to images.

Unlike the plain engine this goes through a real PDF: Base-14 and embedded TrueType fonts for Latin, MuPDF's
built-in CJK font for Chinese, justified text, a rule under the running header. The target is read back from
the PDF's text layer (`page.get_text("dict")`), so it is what a PDF parser would extract -- the way GOT's
document data was made -- and it is ordered by our layout: title, then column by column.

layout "page" gives the full page; "line" / "paragraph" crop one text line / one paragraph using the
text layer's boxes.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass

from PIL import Image

from data_engines import text as T
from data_engines.base import Sample
from data_engines.fine_grained import region_box
from data_engines.fonts import font_path
from data_engines.plain import Line, conversation, lines_text

LAYOUTS = ("page", "line", "paragraph")
# (regular, bold): Base-14 names, or fonts.py families embedded from their TrueType files.
LATIN = [("helv", "hebo"), ("tiro", "tibo"), ("cour", "cobo"), ("serif", "serif-bold"), ("sans", "sans-bold"),
         ("liberation-serif", "serif-bold"), ("liberation-sans", "sans-bold")]
CJK = [("china-s", "china-s"), ("china-ss", "china-ss")]
PAPER_SIZES = {"a4": (595, 842), "letter": (612, 792), "a5": (420, 595), "b5": (499, 709)}


def _pymupdf():
    try:
        import pymupdf
    except ImportError:
        raise ImportError("the pdf engine needs the Python package 'pymupdf': pip install pymupdf") from None
    return pymupdf


@functools.lru_cache(maxsize=None)
def pdf_font(name: str):
    """A pymupdf Font: built-in (Base-14, 'china-s') or a system TrueType file found through fonts.py."""
    fitz = _pymupdf()
    if name in ("helv", "hebo", "tiro", "tibo", "cour", "cobo", "china-s", "china-ss"):
        return fitz.Font(name)
    return fitz.Font(fontfile=font_path(name))


_ADVANCES: dict[str, dict[str, float]] = {}


def _length(font_name: str, size: float, s: str) -> float:
    """Width of `s` in points; per-character advances cached (pymupdf's text_length crosses SWIG per char)."""
    table = _ADVANCES.setdefault(font_name, {})
    total = 0.0
    for c in s:
        adv = table.get(c)
        if adv is None:
            adv = table[c] = pdf_font(font_name).text_length(c, 1.0)
        total += adv
    return total * size


@dataclass
class _Planned:
    text: str
    rect: tuple[float, float, float, float]  # points: x0, top, x1, bottom of the line box
    block: int
    kind: str
    column: int
    joiner: str


def _typeset(rng: random.Random, lang: str, page, size: tuple[float, float]) -> list[_Planned]:
    """Flow a title, headings and paragraphs through 1-3 columns with TextWriters; return the planned lines."""
    fitz = _pymupdf()
    w, h = size
    body_name, bold_name = rng.choice(LATIN if lang == "en" else CJK)
    fs = rng.uniform(8.5, 12.0)
    pitch = fs * rng.uniform(1.2, 1.6)
    ml = rng.uniform(36, 80)
    mr = ml if rng.random() < 0.7 else rng.uniform(36, 80)
    mt, mb = rng.uniform(36, 72), rng.uniform(36, 72)
    gutter = rng.uniform(14, 30)
    columns = rng.choices([1, 2, 3], [0.4, 0.45, 0.15])[0]
    while columns > 1 and (w - ml - mr - (columns - 1) * gutter) / columns < fs * (14 if lang == "en" else 9):
        columns -= 1
    col_w = (w - ml - mr - (columns - 1) * gutter) / columns
    justify = lang == "en" and rng.random() < 0.5
    para_gap = rng.choice([0.0, 0.5, 1.0])
    indent = fs * 2 if para_gap == 0 or rng.random() < 0.3 else 0.0
    ink = (rng.uniform(0, 0.25),) * 3
    writer = fitz.TextWriter(page.rect, color=ink)
    planned: list[_Planned] = []
    block = 0

    def put(text: str, font_name: str, size: float, x: float, base: float, kind: str, col: int, joiner: str,
            span: float | None = None) -> None:
        font = pdf_font(font_name)
        words = text.split(" ")
        if span is not None and len(words) > 1:  # justified: stretch the gaps so the line fills `span`
            gap = (span - sum(_length(font_name, size, wd) for wd in words)) / (len(words) - 1)
            x_pos = x
            for wd in words:
                writer.append((x_pos, base), wd, font=font, fontsize=size)
                x_pos += _length(font_name, size, wd) + gap
            right = x + span
        else:
            writer.append((x, base), text, font=font, fontsize=size)
            right = x + _length(font_name, size, text)
        # ink box: ascenders / CJK tops reach ~0.9 em above the baseline, descenders ~0.22 em below (the fonts'
        # ascender/descender metrics are looser and would make neighbouring lines' boxes overlap)
        planned.append(_Planned(text, (x, base - 0.95 * size, right, base + 0.26 * size), block, kind, col, joiner))

    y = mt
    if rng.random() < 0.3:  # running header with a rule under it
        hs = fs * 0.85
        put(T.heading(rng, lang, numbered=False), body_name, hs, ml, y + hs, "header", -1, "")
        page.draw_line((ml, y + hs * 1.6), (w - mr, y + hs * 1.6), color=ink, width=0.5)
        y += hs * 3
        block += 1
    page_number = rng.random() < 0.5
    foot = mb + (fs * 2.5 if page_number else 0)
    if rng.random() < 0.6:
        ts = fs * rng.uniform(1.5, 2.2)
        center = rng.random() < 0.5
        for line, joiner in T.wrap(T.heading(rng, lang), functools.partial(_length, bold_name, ts), w - ml - mr,
                                   lang)[:2]:
            x = (w - _length(bold_name, ts, line)) / 2 if center else ml
            put(line, bold_name, ts, x, y + ts, "title", -1, joiner)
            y += ts * 1.3
        y += fs * rng.uniform(1.0, 2.5)
        block += 1

    col, col_top, bottom = 0, y, h - foot
    y += fs
    hs = fs * rng.uniform(1.1, 1.35)
    last = "heading"
    while col < columns:
        if last != "heading" and rng.random() < 0.15:
            kind, name, size, step = "heading", bold_name, hs, hs * 1.35
            wrapped = T.wrap(T.heading(rng, lang), functools.partial(_length, bold_name, hs), col_w, lang)
            if y + step * len(wrapped) + pitch > bottom:
                col, y = col + 1, col_top + fs
        else:
            kind, name, size, step = "text", body_name, fs, pitch
            wrapped = T.wrap(T.paragraph(rng, lang), functools.partial(_length, body_name, fs), col_w, lang,
                             first_width=col_w - indent)
        last = kind
        for i, (line, joiner) in enumerate(wrapped):
            if y > bottom:
                col, y = col + 1, col_top + fs
            if col >= columns:
                break
            x = ml + col * (col_w + gutter) + (indent if kind == "text" and i == 0 else 0)
            stretch = justify and kind == "text" and joiner == " " and i < len(wrapped) - 1
            put(line, name, size, x, y, kind, col, joiner, span=(ml + col * (col_w + gutter) + col_w - x) if stretch else None)
            y += step
        y += pitch * para_gap if kind == "text" else pitch * 0.3
        block += 1
    if page_number:  # written last, so the text layer reads it last, like the target
        label = str(rng.randint(1, 400))
        put(label, body_name, fs * 0.9, (w - _length(body_name, fs * 0.9, label)) / 2, h - mb, "footer", -1, "")
    writer.write_text(page)
    return planned


def _clean(s: str) -> str:
    """Undo text-layer quirks of the Base-14 fonts: '-' comes back as a soft hyphen, ';' as a Greek question mark."""
    return s.replace("\xad", "-").replace("\u037e", ";")


def _text_layer_lines(page, planned: list[_Planned], scale: float) -> list[Line]:
    """Read each planned line back from the PDF's text layer (MuPDF may split a justified line into spans)."""
    extracted = []
    for block in page.get_text("dict")["blocks"]:
        for line in block.get("lines", []):
            x0, y0, x1, y1 = line["bbox"]
            extracted.append(((x0 + x1) / 2, (y0 + y1) / 2, x0, "".join(s["text"] for s in line["spans"])))
    lines = []
    for p in planned:
        x0, top, x1, bottom = p.rect
        parts = sorted((ex, t) for cx, cy, ex, t in extracted if top <= cy <= bottom and x0 - 1 <= cx <= x1 + 1)
        text = _clean(" ".join(" ".join(t.split()) for _, t in parts))
        box = (int(x0 * scale), int(top * scale), int(x1 * scale + 1), int(bottom * scale + 1))
        lines.append(Line(text, box, p.block, p.kind, p.column, p.joiner, None))
    return lines


def render_pdf_page(rng: random.Random, lang: str) -> tuple[Image.Image, list[Line]]:
    """Typeset one page and render it at a random dpi; return the image and its lines with pixel boxes."""
    fitz = _pymupdf()
    name = rng.choice(list(PAPER_SIZES))
    w, h = PAPER_SIZES[name]
    if rng.random() < 0.15:
        w, h = h, w  # landscape
    doc = fitz.open()
    page = doc.new_page(width=w, height=h)
    planned = _typeset(rng, lang, page, (w, h))
    dpi = rng.randint(110, 170)
    scale = dpi / 72
    lines = _text_layer_lines(page, planned, scale)
    pix = page.get_pixmap(dpi=dpi, alpha=False)
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    doc.close()
    return img, [l for l in lines if l.text]


class PdfEngine:
    """lang: "en" | "zh" | None (both); layout: "page" | "line" | "paragraph" | None (0.6/0.2/0.2);
    format_prob: share of pages whose target is markdown ("OCR with format: ")."""
    name = "pdf"

    def __init__(self, lang: str | None = None, layout: str | None = None, format_prob: float = 0.2):
        T.check_choice("pdf", "lang", lang, T.LANGS)
        T.check_choice("pdf", "layout", layout, LAYOUTS)
        self.lang, self.layout, self.format_prob = lang, layout, format_prob

    def render(self, rng: random.Random) -> Sample:
        from got.prompts import build_query

        lang = self.lang or rng.choice(T.LANGS)
        layout = self.layout or rng.choices(LAYOUTS, [0.6, 0.2, 0.2])[0]
        img, lines = render_pdf_page(rng, lang)
        markdown = layout != "line" and rng.random() < self.format_prob
        if layout != "page":
            body = [l for l in lines if l.kind == "text"]
            if layout == "line":
                chosen = [rng.choice(body)]
            else:
                blocks = sorted({l.block for l in body})
                block = rng.choice(blocks)
                chosen = [l for l in lines if l.block == block]
                if len({l.column for l in chosen}) > 1:  # a paragraph split over columns: keep one piece
                    col = rng.choice(sorted({l.column for l in chosen}))
                    chosen = [l for l in chosen if l.column == col]
            img, chosen = _crop(rng, img, chosen, lines)
            lines = chosen
        query = build_query("format" if markdown else "plain")
        return Sample([img], conversation(query, lines_text(lines, markdown)),
                      {"lang": lang, "layout": layout, "n_lines": len(lines)})


def _crop(rng: random.Random, img: Image.Image, chosen: list[Line], lines: list[Line]) -> tuple[Image.Image, list[Line]]:
    """Crop `chosen` with a margin that stops short of every other line's box (fine_grained.region_box)."""
    left, top, right, bottom = region_box(chosen, lines, img.size, margin=rng.randint(3, 14))
    return img.crop((left, top, right + 1, bottom + 1)), chosen
