"""Offline text for the text engines, and the layout helpers they share.

Words come from wordfreq (frequency-ranked, so common words dominate as in real text), names, places,
companies and dates from Faker (en_US / zh_CN). Everything is a pure function of the `random.Random`
passed in -- Faker is re-seeded from it on every call -- so a seed reproduces the text exactly.

Wrapping measures words (English) or characters (Chinese) once per font and caches the widths; a page
costs a few dict look-ups per word, not a FreeType call per word.
"""
from __future__ import annotations

import functools
import random
import re
from typing import Any, Callable

from PIL import ImageDraw, ImageFont

from data_engines.fonts import CJK_FAMILIES, LATIN_FAMILIES, face_index, font_path

LANGS = ("en", "zh")
BODY_FAMILIES = {"en": LATIN_FAMILIES, "zh": CJK_FAMILIES}
BOLD_FAMILY = {"sans": "sans-bold", "serif": "serif-bold", "liberation-sans": "sans-bold",
               "liberation-serif": "serif-bold", "mono": "sans-bold", "liberation-mono": "nimbus-mono-bold",
               "nimbus-roman": "nimbus-roman-bold", "nimbus-roman-italic": "nimbus-roman-bold",
               "nimbus-sans": "nimbus-sans-bold", "nimbus-mono": "nimbus-mono-bold", "urw-gothic": "nimbus-sans-bold",
               "lm-roman": "lm-roman-bold", "lm-roman-italic": "lm-roman-bold", "lm-sans": "lm-roman-bold",
               "lm-mono": "lm-roman-bold"}

# Words a reader would not expect in a document; wordfreq's web-derived lists contain a few.
_BLOCKED = frozenset("""fuck fucking fucked fucker shit shitty bitch bitches cunt dick dicks cock pussy twat slut
whore nigga nigger niggas fag faggot retard retarded porn porno sex sexy anal nude nudes penis vagina boobs tits
rape raped rapist ass asses asshole assholes bastard bastards damn damned crap motherfucker bullshit dildo horny""".split())
_BLOCKED_ZH = ("婊子", "他妈", "傻逼", "操你", "妈的", "鸡巴", "屌", "肏", "贱人", "淫", "妓")
_CJK = re.compile(r"^[\u4e00-\u9fff]+$")
_EN_SMALL = frozenset("a an the and or but of in on at to for by with from as is vs".split())


def require(module: str, pip_name: str) -> Any:
    """Import a text source or fail with one line naming the pip package."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the text engines need the Python package {pip_name!r}: pip install {pip_name} ({e})") from None


def check_choice(engine: str, key: str, value: Any, choices: Any) -> None:
    """Engine options: None (the engine draws it) or one of `choices`; anything else is one clear line."""
    if value is not None and value not in choices:
        raise ValueError(f"{engine} engine: unknown {key} {value!r}; choose from {', '.join(choices)}")


# ---------------------------------------------------------------------------------------------- word sources

@functools.lru_cache(maxsize=None)
def vocabulary(lang: str) -> tuple[list[str], list[float]]:
    """(words, cumulative weights): the top wordfreq words, weighted by a flattened Zipf law on their rank."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; choose from {', '.join(LANGS)}")
    wordfreq = require("wordfreq", "wordfreq")
    if lang == "en":
        words = [w for w in wordfreq.top_n_list("en", 25000)
                 if w.isascii() and w.isalpha() and (len(w) > 1 or w in "ai") and w not in _BLOCKED]
    else:
        words = [w for w in wordfreq.top_n_list("zh", 20000)
                 if _CJK.match(w) and not any(b in w for b in _BLOCKED_ZH)]
    cum, total = [], 0.0
    for rank in range(len(words)):
        total += 1.0 / (rank + 20) ** 0.85
        cum.append(total)
    return words, cum


@functools.lru_cache(maxsize=None)
def _faker_instance(lang: str) -> Any:
    faker = require("faker", "Faker")
    return faker.Faker("en_US" if lang == "en" else "zh_CN")


def faker(lang: str, rng: random.Random) -> Any:
    """The per-process Faker for `lang`, re-seeded from `rng` so its output is reproducible."""
    f = _faker_instance(lang)
    f.seed_instance(rng.getrandbits(32))
    return f


def words(rng: random.Random, lang: str, k: int) -> list[str]:
    vocab, cum = vocabulary(lang)
    return rng.choices(vocab, cum_weights=cum, k=k)


def _number(rng: random.Random, lang: str) -> str:
    r = rng.random()
    if r < 0.3:
        s = str(rng.randint(1900, 2030))
        return s + "年" if lang == "zh" and rng.random() < 0.7 else s
    if r < 0.55:
        return f"{rng.uniform(0, 100):.{rng.randint(1, 2)}f}%"
    if r < 0.8:
        return f"{rng.randint(1000, 9_999_999):,}" if lang == "en" else str(rng.randint(2, 99999))
    return f"{rng.uniform(0, 1000):.{rng.randint(1, 3)}f}"


def _entity(rng: random.Random, lang: str) -> str:
    """A name, place, company, date or number: the things that make real text not a word salad."""
    kind = rng.random()
    if kind < 0.35:
        return _number(rng, lang)
    f = faker(lang, rng)
    if kind < 0.6:
        return f.name()
    if kind < 0.75:
        return f.city()
    if kind < 0.87:
        return f.company()
    if lang == "zh":
        return f.date(pattern="%Y年%m月%d日")
    return f.date(pattern=rng.choice(["%B %d, %Y", "%Y-%m-%d", "%d %b %Y"]))


_EXTS = ("c", "h", "py", "txt", "conf", "pdf", "html", "json", "sh", "xml", "md", "log")


def _digit_name(rng: random.Random, ws: list[str]) -> str:
    """A name with digits in it: a library (libtasn1, bzip2), a constant or prefix (BZ2, MYPKIX1, LZMA2_OK), a
    call with a digit prefix (BZ2_bzRead), an encoding or architecture (ISO-8859-1, x86_64, UTF-8)."""
    caps = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(1, 5)))
    num = str(rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8, 11, 16, 32, 64, 88, 256, rng.randint(0, 999)]))
    form = rng.randrange(6)
    if form == 0:
        return rng.choice(["lib", "", ""]) + ws[0].lower() + num
    if form == 1:
        return caps + num + rng.choice(["", "", "_OK", "_" + ws[0].upper()])
    if form == 2:
        return caps + num + "_" + ws[0].lower() + "".join(w.capitalize() for w in ws[1:])
    if form == 3:
        return ws[0].lower() + num + ws[1].capitalize()
    if form == 4:
        return rng.choice(["ISO-8859-{}", "UTF-{}", "x86_{}", "IPv{}", "SHA{}", "MD{}", "X{}", "{}-bit"]).format(num)
    return caps + num + "." + rng.choice([w.capitalize() for w in ws])


def _address_or_grammar(rng: random.Random, ws: list[str]) -> str:
    """A web or mail address (as manuals print them, sometimes in angle brackets) or a piece of a grammar or code
    listing: braces, brackets, ::=, <placeholders>."""
    host = rng.choice(["www.gnu.org", "gnu.org", "example.org", "sourceware.org", "github.com", "debian.org",
                       ws[0].lower() + ".org", ws[0].lower() + ".net"])
    form = rng.randrange(6)
    if form == 0:
        url = rng.choice(["https", "https", "http", "ftp"]) + "://" + host + "/" + "/".join(w.lower() for w in ws[1:3])
        return f"<{url}/>" if rng.random() < 0.4 else url
    if form == 1:
        return "-".join(w.lower() for w in ws[:rng.randint(1, 2)]) + "@" + host
    if form == 2:
        return rng.choice(["{ ", "{"]) + ws[0] + rng.choice([" }", "}", ", ... }"])
    if form == 3:
        return ws[0].capitalize() + rng.choice([" ::= ", " ::=", " := "]) + ws[1].upper()
    if form == 4:
        return "<" + " ".join(ws[:2]) + ">"
    return ws[0] + rng.choice(["[{}]", "[{}]", "({})", "{{{}}}"]).format(rng.choice(["n", "i", "0", "1", "2", "k"]))


def technical_token(rng: random.Random) -> str:
    """What manuals and reports print that prose does not: identifiers (snake_case, CONSTANTS, CamelCase, calls,
    dotted names, names with digits such as bzip2, BZ2_bzRead, x86_64), command-line options, paths, file names,
    versions, section and figure references, hex numbers, web addresses, mail addresses and grammar punctuation
    ({ }, ::=, [n]). The digit kinds teach 1 against l and 2 against Z, which the real pages confused."""
    ws = [w[:rng.randint(3, 8)] if rng.random() < 0.3 else w for w in words(rng, "en", rng.randint(2, 4))]
    kind = rng.randrange(12)
    if kind == 10:
        return _digit_name(rng, ws)
    if kind == 11:
        return _address_or_grammar(rng, ws)
    if kind == 0:
        return rng.choice(["", "", "glp_", "lib", "py_", "x"]) + "_".join(ws)
    if kind == 1:
        return "_".join(ws).upper()
    if kind == 2:
        return "".join(w.capitalize() for w in ws)
    if kind == 3:
        args = rng.choice(["", "", "x", "n, k", "self", "*args", "const char *s"])
        return ("_".join(ws) if rng.random() < 0.6 else ws[0] + "".join(w.capitalize() for w in ws[1:])) + f"({args})"
    if kind == 4:
        return ".".join(ws)
    if kind == 5:
        return "--" + "-".join(ws[:2]) if rng.random() < 0.7 else "-" + rng.choice("abcdefhlnoqrsvxyzACDEFLRSV")
    if kind == 6:
        return rng.choice(["/usr/share/doc/", "/etc/", "/usr/lib/", "~/", "./", "/var/log/"]) + "/".join(ws[:2]) \
            + ("." + rng.choice(_EXTS) if rng.random() < 0.5 else "")
    if kind == 7:
        return ws[0] + "." + rng.choice(_EXTS)
    if kind == 8:
        nums = ".".join(str(rng.randint(0, 12)) for _ in range(rng.randint(2, 3)))
        return rng.choice(["{}", "v{}", "Section {}", "§{}", "Fig. {}", "Table {}", "({})"]).format(nums)
    return "0x" + "".join(rng.choice("0123456789ABCDEF") for _ in range(rng.choice([2, 4, 8])))


def sentence(rng: random.Random, lang: str, technical: float = 0.0) -> str:
    """One sentence with punctuation, capitals, names and numbers; `technical` is the share of words replaced by
    technical tokens (identifiers, options, paths: see technical_token), English only."""
    if lang == "zh":
        return _sentence_zh(rng)
    if rng.random() < 0.15:  # Faker's own English sentences: a second word distribution
        return faker("en", rng).sentence(nb_words=rng.randint(5, 16))
    ws = words(rng, "en", rng.randint(5, 18))
    out = []
    for i, w in enumerate(ws):
        if w == "i":
            w = "I"
        if technical and rng.random() < technical:
            w = technical_token(rng)
        elif rng.random() < 0.08:
            w = _entity(rng, "en")
        if i < len(ws) - 1 and rng.random() < 0.07:
            w += rng.choice([",", ",", ",", ";", ":"])
        out.append(w)
    if len(out) > 5 and rng.random() < 0.06:  # a parenthetical
        a = rng.randrange(1, len(out) - 2)
        b = min(len(out) - 1, a + rng.randint(0, 2))
        out[a], out[b] = "(" + out[a], out[b].rstrip(",;:") + ")"
    s = " ".join(out)
    end = rng.choices([".", "?", "!"], [0.9, 0.07, 0.03])[0]
    return s[0].upper() + s[1:].rstrip(",;:") + end


def _sentence_zh(rng: random.Random) -> str:
    ws = words(rng, "zh", rng.randint(4, 14))
    out = []
    for i, w in enumerate(ws):
        if rng.random() < 0.08:
            w = _entity(rng, "zh")
        if rng.random() < 0.03:
            w = rng.choice(["“{}”", "《{}》", "（{}）"]).format(w)
        out.append(w)
        if 0 < i < len(ws) - 1 and rng.random() < 0.12:
            out.append(rng.choices(["，", "、", "；", "："], [0.75, 0.15, 0.05, 0.05])[0])
    return "".join(out) + rng.choices(["。", "？", "！"], [0.9, 0.06, 0.04])[0]


def paragraph(rng: random.Random, lang: str, n_sentences: int | None = None, technical: float = 0.0) -> str:
    n = n_sentences or rng.randint(2, 7)
    return ("" if lang == "zh" else " ").join(sentence(rng, lang, technical) for _ in range(n))


_ZH_NUM = "一二三四五六七八九十"


def heading(rng: random.Random, lang: str, numbered: bool | None = None) -> str:
    """A section heading: short, title-cased (en), sometimes numbered."""
    numbered = rng.random() < 0.4 if numbered is None else numbered
    if lang == "zh":
        body = "".join(words(rng, "zh", rng.randint(2, 5)))
        if not numbered:
            return body
        i = rng.randrange(len(_ZH_NUM))
        return rng.choice([f"第{_ZH_NUM[i]}章 {body}", f"{_ZH_NUM[i]}、{body}", f"（{_ZH_NUM[i]}）{body}",
                           f"{i + 1}.{rng.randint(1, 9)} {body}"])
    if rng.random() < 0.2:
        body = faker("en", rng).catch_phrase()
    else:
        ws = words(rng, "en", rng.randint(2, 7))
        body = " ".join(w if (j and w in _EN_SMALL) else w[:1].upper() + w[1:] for j, w in enumerate(ws))
    if not numbered:
        return body
    return rng.choice([f"{rng.randint(1, 9)}. {body}", f"{rng.randint(1, 9)}.{rng.randint(1, 9)} {body}",
                       f"Chapter {rng.randint(1, 20)}: {body}", f"Section {rng.randint(1, 12)} {body}"])


_OPERATORS = ("=", "==", "!=", "<=", ">=", "->", "=>", "&", "&&", "||", "|", "#", "%", "+", "*", "<", ">", "+=")
_SIGNS = ("©", "®", "§", "°", "€", "£", "×", "…")


def print_marks(rng: random.Random, text: str) -> str:
    """English text with the marks printed documents use and generated prose rarely draws: a bullet before an
    item, an em or en dash, curly quotes and apostrophes, capitals throughout (disclaimers), an operator between
    words (code and formulas in manuals), a sign (© 2019, § 3, 20 °C)."""
    ws = text.split(" ")
    at = rng.randrange(len(ws))
    kind = rng.randrange(7)
    if kind == 0:
        return "• " + text
    if kind == 1:
        return text.upper()
    if kind == 2 and len(ws) > 1:
        dash = rng.choice(["—", "—", " — ", "–", " – "])
        return " ".join(ws[:max(1, at)]) + dash + " ".join(ws[max(1, at):])
    if kind == 3:
        ws[at] = rng.choice(["“{}”", "‘{}’", "{}’s", "{}n’t", "{}’"]).format(ws[at].strip(".,;:"))
    elif kind == 4:
        ws.insert(at, rng.choice(_OPERATORS))
    elif kind == 5:
        sign = rng.choice(_SIGNS)
        ws.insert(at, {"©": f"© {rng.randint(1985, 2024)}", "°": f"{rng.randint(-20, 400)} °C",
                       "§": f"§ {rng.randint(1, 12)}", "×": f"{rng.randint(2, 64)} × {rng.randint(2, 64)}"}.get(sign, sign))
    else:
        ws[at] = rng.choice(["“", "\"", "'", "("]) + ws[at] + rng.choice(["”", "\"", "'", ")"])
    return " ".join(ws)


def snippet(rng: random.Random, lang: str, max_units: int, technical: float = 0.0) -> str:
    """A piece of a sentence (1..max_units words, or characters for Chinese): what a text-line slice shows."""
    s = sentence(rng, lang, technical)
    if lang == "zh":
        n = rng.randint(min(2, len(s)), min(max_units, len(s)))
        start = rng.randint(0, len(s) - n)
        return s[start:start + n].strip("，、；：")
    ws = s.split(" ")
    n = rng.randint(1, min(max_units, len(ws)))
    start = rng.randint(0, len(ws) - n)
    return " ".join(ws[start:start + n])


# ---------------------------------------------------------------------------------------------- fonts and layout

@functools.lru_cache(maxsize=512)
def get_font(family: str, size: int) -> ImageFont.FreeTypeFont:
    """A cached PIL font; CJK collections open on their SC face. A missing font names its Debian package.
    BASIC layout: we place glyphs ourselves (no shaping needed for Latin / CJK) and it measures 2-4x faster."""
    path = font_path(family)
    return ImageFont.truetype(path, size=size, index=face_index(path), layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=512)
def ink_extent(font: ImageFont.FreeTypeFont) -> tuple[int, int]:
    """(top, bottom) of the ink of a line drawn at y=0 with anchor "la": covers ascenders and descenders."""
    probe = "Hgjy|([" + ("国爱" if "CJK" in (font.getname()[0] or "") else "")
    _, top, _, bottom = font.getbbox(probe, anchor="la")
    return top, bottom


# Glyph cache: FreeType rasterises every glyph on every call (~5 us per Latin, ~15 us per CJK character);
# blitting cached glyph masks is 4-10x faster and places glyphs on the same pen positions (kerning aside).
_GLYPHS: dict[ImageFont.FreeTypeFont, dict[str, tuple[Any, int, int, float]]] = {}
_GLYPH_LIMIT = 150_000  # cached glyphs per process (~100 MB at most); cleared wholesale when exceeded
_n_glyphs = 0


def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> tuple[Any, int, int, float]:
    """(mask, dx, dy, advance) of one character, dx/dy from the pen position on the baseline."""
    try:
        return _GLYPHS[font][ch]
    except KeyError:
        pass
    global _n_glyphs
    if _n_glyphs > _GLYPH_LIMIT:
        _GLYPHS.clear()
        _n_glyphs = 0
    mask, (dx, dy) = font.getmask2(ch, "L", anchor="ls")
    g = (mask if mask.size[0] and mask.size[1] else None, dx, dy, font.getlength(ch))
    _GLYPHS.setdefault(font, {})[ch] = g
    _n_glyphs += 1
    return g


def text_width(font: ImageFont.FreeTypeFont, s: str) -> float:
    """Advance width of `s` as draw_text sets it."""
    return sum(_glyph(font, c)[3] for c in s)


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font: ImageFont.FreeTypeFont,
              fill: tuple[int, int, int]) -> None:
    """Like `draw.text(xy, text, font=font, fill=fill, anchor="la")`, from cached glyphs."""
    ink = draw._getink(fill)[0]
    blit = draw.draw.draw_bitmap
    x, base = xy[0], round(xy[1]) + font.getmetrics()[0]
    for c in text:
        mask, dx, dy, advance = _glyph(font, c)
        if mask is not None:
            blit((int(x + 0.5) + dx, base + dy), mask, ink)
        x += advance


_ZH_TOKENS = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,%:/'\-]*|\s+|.")
# Chinese punctuation that may not start a line: it hangs into the margin instead (kinsoku).
_NO_LINE_START = frozenset("，。、；：！？）》」』”’%,.;:!?)")


def wrap(text: str, font: ImageFont.FreeTypeFont | Callable[[str], float], width: float, lang: str,
         first_width: float | None = None) -> list[tuple[str, str]]:
    """Greedy line breaking; returns (line, joiner) pairs where joiner is what rejoins the line to the next one
    ("" or " "), so the paragraph's source text is always recoverable from the drawn lines.

    English breaks at spaces (a word wider than the line is cut by characters); Chinese breaks between any two
    characters, keeping Latin/number runs whole and letting closing punctuation hang. `font` is a PIL font or
    any function that measures a string (the PDF engine passes pymupdf's metrics).
    """
    measure = font if callable(font) else functools.partial(text_width, font)
    limit = first_width if first_width is not None else width
    lines: list[tuple[str, str]] = []
    if lang == "zh":
        cur, cur_w = [], 0.0
        for tok in _ZH_TOKENS.findall(text):
            w = measure(tok)
            if cur and cur_w + w > limit and not (tok in _NO_LINE_START):
                line = "".join(cur)
                stripped = line.rstrip(" ")
                lines.append((stripped, line[len(stripped):]))
                cur, cur_w, limit = [], 0.0, width
                if tok.isspace():
                    lines[-1] = (lines[-1][0], lines[-1][1] + tok)
                    continue
            cur.append(tok)
            cur_w += w
        if cur:
            lines.append(("".join(cur).rstrip(" "), ""))
        return [(l, j) for l, j in lines if l]
    space = measure(" ")
    cur, cur_w = [], 0.0
    for word in text.split(" "):
        if not word:
            continue
        w = measure(word)
        if cur and cur_w + space + w > limit:
            lines.append((" ".join(cur), " "))
            cur, cur_w, limit = [], 0.0, width
        if not cur and w > limit:  # a word longer than the line: cut it by characters
            while word and measure(word) > limit:
                k = len(word) - 1
                while k > 1 and measure(word[:k]) > limit:
                    k -= 1
                lines.append((word[:k], ""))
                word, limit = word[k:], width
            w = measure(word)
            if not word:
                continue
        cur.append(word)
        cur_w += w + (space if len(cur) > 1 else 0.0)
    if cur:
        lines.append((" ".join(cur), ""))
    return lines


def join_lines(lines: list[tuple[str, str]]) -> str:
    """Inverse of wrap: the paragraph as one line of text (markdown soft wraps)."""
    return "".join(line + (joiner if i < len(lines) - 1 else "") for i, (line, joiner) in enumerate(lines))
