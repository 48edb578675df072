"""Engine 3: math formulas from a LaTeX grammar, rendered with ziamath (pure Python, offline OpenType math).

Two kinds of sample, both in Mathpix-style markdown:
- display: one to three stacked formulas, target `\\[ latex \\]` per line;
- paragraph: English or Chinese text with inline formulas `\\( latex \\)`, sometimes a display formula
  between paragraphs (its own line `\\[ latex \\]`).
The LaTeX is generated in one canonical spelling (braces on every script, single spaces between tokens) so
the model learns one way to write each drawing. ziamath was chosen over matplotlib mathtext because it lays
out matrices, \\left/\\right and big operators the way TeX does, from a real OpenType MATH font.
"""
from __future__ import annotations

import functools
import random

from PIL import Image, ImageDraw

from data_engines import text
from data_engines.base import Sample
from data_engines.fonts import CJK_FAMILIES, LATIN_FAMILIES, load_font
from data_engines.structured import (format_conversation, hex_color, ink, paper, require, svg_to_image,
                                     svg_viewbox)

# Math fonts: ziamath's bundled STIX Two Math and Debian's DejaVu Math TeX Gyre (fonts-dejavu-extra / -core).
MATH_FONTS = {"stix": None, "dejavu": "/usr/share/fonts/truetype/dejavu/DejaVuMathTeXGyre.ttf"}

LATIN = list("abcdefghkmnpqrstuvwxyz") + list("ABCFGHKLMNPRSTUVXY")
GREEK = [r"\alpha", r"\beta", r"\gamma", r"\delta", r"\epsilon", r"\varepsilon", r"\zeta", r"\eta", r"\theta",
         r"\kappa", r"\lambda", r"\mu", r"\nu", r"\xi", r"\pi", r"\rho", r"\sigma", r"\tau", r"\phi", r"\varphi",
         r"\chi", r"\psi", r"\omega", r"\Gamma", r"\Delta", r"\Theta", r"\Lambda", r"\Sigma", r"\Phi", r"\Psi",
         r"\Omega"]
FUNCS = [r"\sin", r"\cos", r"\tan", r"\log", r"\ln", r"\exp", r"\sinh", r"\cosh", r"\arctan", r"\det"]
BINOPS = ["+", "-", "+", "-", r"\pm", r"\times", r"\cdot"]
RELATIONS = ["=", "=", "=", r"\leq", r"\geq", "<", ">", r"\neq", r"\approx", r"\equiv", r"\sim", r"\propto"]
ACCENTS = [r"\hat", r"\bar", r"\vec", r"\tilde", r"\dot"]
BRACKETS = [(r"\left(", r"\right)"), (r"\left[", r"\right]"), (r"\left|", r"\right|"), (r"\left\{", r"\right\}")]
MATRICES = ["pmatrix", "bmatrix", "vmatrix", "matrix"]
SETS = [r"\mathbb{R}", r"\mathbb{N}", r"\mathbb{Z}", r"\mathbb{C}", r"\mathbb{Q}"]


class Grammar:
    """Random LaTeX math, depth-limited. Every method returns one canonical LaTeX string."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def letter(self) -> str:
        r = self.rng.random()
        return self.rng.choice(GREEK) if r < 0.3 else self.rng.choice(LATIN)

    def number(self) -> str:
        r = self.rng.random()
        if r < 0.6:
            return str(self.rng.randint(1, 9))
        if r < 0.85:
            return str(self.rng.randint(10, 999))
        return f"{self.rng.randint(0, 9)}.{self.rng.randint(1, 99)}"

    def index(self) -> str:
        return self.rng.choice(["i", "j", "k", "n", "m", "0", "1", "2", "t", "i j", "n+1", "k-1", "x"])

    def symbol(self) -> str:
        return self.letter() if self.rng.random() < 0.85 else self.rng.choice([r"\pi", r"\infty", r"\hbar", r"\ell"])

    def leaf(self, number: bool = True) -> str:
        return self.number() if number and self.rng.random() < 0.35 else self.symbol()

    def script(self, base: str, d: int) -> str:
        r = self.rng.random()
        if r < 0.4:
            return f"{base}^{{{self.small(d)}}}"
        if r < 0.75:
            return f"{base}_{{{self.index()}}}"
        return f"{base}_{{{self.index()}}}^{{{self.small(d)}}}"

    def small(self, d: int) -> str:
        """Exponents and limits: short."""
        r = self.rng.random()
        if r < 0.4 or d <= 0:
            return self.rng.choice([self.number(), self.letter(), "2", "2", "n", "-1", r"\prime"])
        return self.expr(d - 1, max_terms=2)

    def factor(self, d: int, number: bool = True) -> str:
        """One factor; `number=False` inside a product after the first factor, so "2 3" (drawn "23") never occurs."""
        rng = self.rng
        if d <= 0:
            if number and rng.random() < 0.3:
                return self.number()
            return self.script(self.letter(), 0) if rng.random() < 0.3 else self.symbol()
        kind = rng.choices(
            ["leaf", "script", "frac", "sqrt", "brackets", "func", "bigop", "accent", "integral", "lim", "partial",
             "binom", "call"],
            weights=[14, 14, 8, 4, 6, 5, 4, 3, 3, 2, 2, 1, 4])[0]
        if kind == "leaf":
            return self.leaf(number)
        if kind == "script":
            return self.script(self.letter(), d - 1)
        if kind == "frac":
            return rf"\frac{{{self.expr(d - 1)}}}{{{self.expr(d - 1)}}}"
        if kind == "sqrt":
            root = rf"[{rng.choice(['3', '4', 'n'])}]" if rng.random() < 0.25 else ""
            return rf"\sqrt{root}{{{self.expr(d - 1)}}}"
        if kind == "brackets":
            left, right = rng.choice(BRACKETS)
            inner = f"{left} {self.expr(d - 1)} {right}"
            return f"{inner}^{{{self.small(0)}}}" if rng.random() < 0.3 else inner
        if kind == "func":
            f = rng.choice(FUNCS)
            if f == r"\log" and rng.random() < 0.3:
                f = rf"\log_{{{rng.choice(['2', '10', 'a'])}}}"
            if rng.random() < 0.5:
                return f"{f} {self.letter()}"
            return rf"{f} \left( {self.expr(d - 1)} \right)"
        if kind == "bigop":
            op = rng.choice([r"\sum", r"\sum", r"\prod", r"\bigcup", r"\bigcap"])
            i = rng.choice(["i", "j", "k", "n"])
            lo, hi = rng.choice(["0", "1"]), rng.choice(["n", "N", r"\infty", "m"])
            return rf"{op}_{{{i}={lo}}}^{{{hi}}} {self.term(d - 1)}"
        if kind == "accent":
            return rf"{rng.choice(ACCENTS)}{{{self.letter()}}}"
        if kind == "integral":
            op = rng.choice([r"\int", r"\int", r"\oint", r"\iint"])
            var = rng.choice(["x", "t", "s", "u", r"\theta"])
            lims = rf"_{{{self.small(0)}}}^{{{self.small(0)}}}" if op == r"\int" and rng.random() < 0.7 else ""
            return rf"{op}{lims} {self.term(d - 1)} \, d {var}"
        if kind == "lim":
            var = rng.choice(["x", "n", "t", "h"])
            to = rng.choice(["0", r"\infty", "a", "1"])
            return rf"\lim_{{{var} \to {to}}} {self.factor(d - 1)}"
        if kind == "partial":
            n = rng.choice(["", "", "^{2}"])
            f, x = rng.choice(["f", "u", "y", r"\phi"]), rng.choice(["x", "t", "y"])
            return rf"\frac{{\partial{n} {f}}}{{\partial {x}{n}}}"
        if kind == "binom":
            return rf"\binom{{{self.letter()}}}{{{self.leaf()}}}"
        # call: f(x), g(x, y)
        args = ", ".join(self.letter() for _ in range(rng.randint(1, 2)))
        f = rng.choice(["f", "g", "h", "F", r"\phi", "P"])
        return rf"{f} \left( {args} \right)"

    def term(self, d: int) -> str:
        n = self.rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
        if self.rng.random() < 0.15:
            return r" \cdot ".join(self.factor(d) for _ in range(n))
        return " ".join(self.factor(d, number=i == 0) for i in range(n))

    def expr(self, d: int, max_terms: int = 3) -> str:
        out = self.term(d)
        for _ in range(self.rng.randint(0, max_terms - 1)):
            out += f" {self.rng.choice(BINOPS)} {self.term(d)}"
        return out

    def matrix(self) -> str:
        rng = self.rng
        rows, cols = rng.randint(2, 4), rng.randint(2, 4)
        cell = (lambda: self.factor(0)) if rng.random() < 0.5 else (lambda: self.leaf())
        body = r" \\ ".join(" & ".join(cell() for _ in range(cols)) for _ in range(rows))
        env = rng.choice(MATRICES)
        return rf"\begin{{{env}}} {body} \end{{{env}}}"

    def inline(self) -> str:
        """Short formulas for running text: a symbol, a small expression or a small relation."""
        rng = self.rng
        r = rng.random()
        if r < 0.35:
            return self.factor(rng.randint(0, 1))
        if r < 0.55:
            return self.expr(0, max_terms=2)
        return f"{self.expr(0, max_terms=2)} {rng.choice(RELATIONS)} {self.expr(rng.randint(0, 1), max_terms=2)}"

    def formula(self, depth: int) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.12:  # matrix equation
            lhs = rng.choice(["A", "B", "M", r"\Sigma", self.letter()])
            rhs = self.matrix()
            if rng.random() < 0.3:
                rhs += f" {rng.choice(['+', '-'])} {self.matrix()}"
            return f"{lhs} = {rhs}"
        if r < 0.2:  # set membership / quantifiers
            q, v, dom = rng.choice([r"\forall", r"\exists"]), self.letter(), rng.choice(SETS)
            return rf"{q} {v} \in {dom} , {self.expr(max(0, depth - 1))} {rng.choice(RELATIONS)} {self.expr(max(0, depth - 1))}"
        if r < 0.4:  # a bare expression
            return self.expr(depth)
        out = f"{self.expr(depth)} {rng.choice(RELATIONS)} {self.expr(depth)}"
        if rng.random() < 0.15:
            out += f" {rng.choice(RELATIONS)} {self.expr(max(0, depth - 1))}"
        return out


def random_latex(rng: random.Random, depth: int = 2, max_len: int = 200, inline: bool = False) -> str:
    """One random formula (canonical LaTeX, no delimiters) of at most `max_len` characters when that can be had
    in a few draws (the shortest draw otherwise). Length is bounded because ziamath's layout time grows fast
    with nesting, and because real formulas are short."""
    g = Grammar(rng)
    best = None
    for _ in range(12):
        latex = g.inline() if inline else g.formula(depth)
        if len(latex) <= max_len:
            return latex
        best = latex if best is None or len(latex) < len(best) else best
    return best


def _ziamath():
    return require("ziamath", "ziamath", "the formula engine")


@functools.lru_cache(maxsize=None)
def math_font(name: str) -> str | None:
    path = MATH_FONTS[name]
    if path is not None:
        import os

        if not os.path.isfile(path):
            raise FileNotFoundError(f"math font {path} not found: install the Debian package fonts-dejavu-core")
    return path


def latex_to_svg(latex: str, size: float = 24.0, font: str = "stix", color: str = "#000000",
                 inline: bool = False) -> str:
    """LaTeX -> SVG through ziamath; raises ValueError on LaTeX it cannot parse."""
    zm = _ziamath()
    try:
        return zm.Latex(latex, size=size, font=math_font(font), color=color, inline=inline, margin=0).svg()
    except Exception as e:  # latex2mathml / ziamath raise many types
        raise ValueError(f"cannot render LaTeX {latex!r}: {type(e).__name__}: {e}") from None


def render_latex(latex: str, size: float = 24.0, font: str = "stix", color: str = "#000000",
                 inline: bool = False) -> tuple[Image.Image, int]:
    """LaTeX -> (RGBA image, baseline row from the top)."""
    svg = latex_to_svg(latex, size, font, color, inline)
    _, miny, _, _ = svg_viewbox(svg)
    return svg_to_image(svg), round(-miny)


class FormulaEngine:
    """Display formulas and paragraphs with inline math; target in Mathpix markdown."""

    name = "formula"

    def __init__(self, display_prob: float = 0.5, chinese_prob: float = 0.3, max_side: int = 1024,
                 max_depth: int = 3):
        _ziamath()
        self.display_prob, self.chinese_prob, self.max_side, self.max_depth = display_prob, chinese_prob, max_side, max_depth

    def render(self, rng: random.Random) -> Sample:
        if rng.random() < self.display_prob:
            return self._display(rng)
        return self._paragraph(rng)

    # -- display: formulas alone, centred --------------------------------------------------------
    def _fitting_formula(self, rng: random.Random, size: float, font: str, color: str, max_w: int, depth: int,
                         max_len: int, inline: bool = False) -> tuple[str, Image.Image, int]:
        """Draw formulas until one fits `max_w` (shallower and shorter each retry, so this always ends)."""
        for attempt in range(6):
            latex = random_latex(rng, max(0, depth - attempt // 2), max(8, max_len >> attempt), inline)
            img, base = render_latex(latex, size, font, color, inline)
            if img.width <= max_w and img.height <= self.max_side // 2:
                return latex, img, base
        latex = Grammar(rng).letter()
        img, base = render_latex(latex, size, font, color, inline)
        return latex, img, base

    def _display(self, rng: random.Random) -> Sample:
        size = rng.uniform(20, 40)
        font = rng.choice(list(MATH_FONTS))
        color, bg = ink(rng), paper(rng)
        pad = rng.randint(8, 48)
        gap = rng.randint(int(size * 0.6), int(size * 1.5))
        n = rng.choices([1, 2, 3], weights=[6, 2, 1])[0]
        formulas, images = [], []
        for _ in range(n):
            latex, img, _ = self._fitting_formula(rng, size, font, hex_color(color), self.max_side - 2 * pad,
                                                  rng.randint(1, self.max_depth), rng.randint(30, 220))
            if images and sum(im.height + gap for im in images) + img.height + 2 * pad > self.max_side:
                break
            formulas.append(latex)
            images.append(img)
        w = max(im.width for im in images) + 2 * pad
        h = sum(im.height for im in images) + gap * (len(images) - 1) + 2 * pad
        page = Image.new("RGB", (w, h), bg)
        y = pad
        for im in images:
            page.paste(im, ((w - im.width) // 2, y), im)
            y += im.height + gap
        target = "\n".join(rf"\[ {f} \]" for f in formulas)
        return Sample([page], format_conversation(target),
                      {"kind": "display", "formulas": formulas, "size": size, "font": font,
                       "color": hex_color(color), "pad": pad, "gap": gap})

    # -- paragraphs with inline math --------------------------------------------------------------
    def _paragraph(self, rng: random.Random) -> Sample:
        lang = "zh" if rng.random() < self.chinese_prob else "en"
        family = rng.choice(CJK_FAMILIES if lang == "zh" else LATIN_FAMILIES)
        size = rng.randint(18, 30)
        font = load_font(family, size)
        math = rng.choice(list(MATH_FONTS))
        color, bg = ink(rng), paper(rng)
        hcolor = hex_color(color)
        width = rng.randint(min(480, self.max_side), self.max_side)
        margin = rng.randint(16, 64)
        line_h = int(size * rng.uniform(1.5, 2.0))
        space = font.getlength(" ")
        text_w = width - 2 * margin
        ascent = font.getmetrics()[0]

        # Lay out blocks as drawing ops until the page is full; blocks that do not fit are not drawn nor targeted.
        ops: list[tuple] = []  # ("text", x, y, str) | ("img", x, y, Image)
        blocks: list[str] = []
        formulas: list[str] = []
        y = margin
        for b in range(rng.randint(1, 5)):
            if b and rng.random() < 0.35:  # display formula between paragraphs
                latex, img, _ = self._fitting_formula(rng, size * 1.15, math, hcolor, text_w,
                                                      rng.randint(1, self.max_depth), rng.randint(30, 150))
                top = y + line_h // 3
                if top + img.height + margin > self.max_side:
                    break
                ops.append(("img", margin + (text_w - img.width) // 2, top, img))
                y = top + img.height + line_h // 3
                blocks.append(rf"\[ {latex} \]")
                formulas.append(latex)
                continue
            tokens: list[tuple] = []  # ("w", word, width) | ("m", latex, img, baseline)
            gaps = []  # token positions between words, where a formula may go
            for _ in range(rng.randint(1, 4)):
                words = _sentence(rng, lang)
                for k, word in enumerate(words):
                    # Chinese wraps at any character; formulas go between words in both languages.
                    for piece in (word if lang == "zh" else [word]):
                        tokens.append(("w", piece, font.getlength(piece)))
                    if k < len(words) - 1:
                        gaps.append(len(tokens))
            # every paragraph carries 1..n inline formulas, inserted back to front so positions stay valid
            chosen = sorted({rng.choice(gaps)} | {g for g in gaps if rng.random() < 0.07}, reverse=True)
            for g in chosen:
                latex, img, base = self._fitting_formula(rng, size, math, hcolor, text_w, 1, 50, inline=True)
                tokens.insert(g, ("m", latex, img, base))
            lines, cur, cur_w = [], [], 0.0
            for tok in tokens:
                tw = tok[2] if tok[0] == "w" else tok[2].width
                sep = space if cur and (lang == "en" or tok[0] == "m" or cur[-1][0] == "m") else 0
                if cur and cur_w + sep + tw > text_w:
                    lines.append(cur)
                    cur, cur_w, sep = [], 0.0, 0
                cur.append(tok)
                cur_w += sep + tw
            if cur:
                lines.append(cur)
            # line height grows for tall inline formulas
            heights = [max([line_h] + [t[2].height + line_h - size for t in ln if t[0] == "m"]) for ln in lines]
            if y + sum(heights) + margin > self.max_side:
                break
            parts: list[str] = []
            for ln, lh in zip(lines, heights):
                base_y = y + (lh - line_h) + ascent + (line_h - size) // 2  # text baseline
                x = float(margin)
                prev = None
                for tok in ln:
                    if prev is not None and (lang == "en" or tok[0] == "m" or prev[0] == "m"):
                        x += space
                    if tok[0] == "w":
                        ops.append(("text", x, base_y - ascent, tok[1]))
                        x += tok[2]
                        parts.append(tok[1])
                    else:
                        ops.append(("img", round(x), base_y - tok[3], tok[2]))
                        x += tok[2].width
                        parts.append(rf"\( {tok[1]} \)")
                        formulas.append(tok[1])
                    prev = tok
                y += lh
            blocks.append(_join(parts, lang))
            y += line_h // 2
        if not blocks:  # first paragraph taller than a page: fall back to a display sample
            return self._display(rng)
        height = min(self.max_side, y - line_h // 2 + margin)
        page = Image.new("RGB", (width, height), bg)
        draw = ImageDraw.Draw(page)
        for op in ops:
            if op[0] == "text":
                draw.text((op[1], op[2]), op[3], font=font, fill=color)
            else:
                page.paste(op[3], (op[1], op[2]), op[3])
        return Sample([page], format_conversation("\n".join(blocks)),
                      {"kind": "paragraph", "lang": lang, "formulas": formulas, "font": family, "size": size,
                       "math_font": math})


def _sentence(rng: random.Random, lang: str) -> list[str]:
    """A sentence as a word list, punctuation attached: inline formulas go between words."""
    if lang == "en":
        return text.sentence(rng, "en").split(" ")
    ws = text.words(rng, "zh", rng.randint(4, 14))
    ws = [w + "，" if 0 < i < len(ws) - 1 and rng.random() < 0.12 else w for i, w in enumerate(ws)]
    return ws[:-1] + [ws[-1] + "。"]


def _join(parts: list[str], lang: str) -> str:
    """Reading-order text of one paragraph: words joined by spaces (English), characters run together
    (Chinese); an inline formula always has a space on each side."""
    if lang == "en":
        return " ".join(parts)
    out = ""
    for p in parts:
        if out and (p.startswith(r"\(") or out.endswith(r"\)")):
            out += " "
        out += p
    return out

