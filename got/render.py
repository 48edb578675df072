"""Formatted OCR output -> ONE standalone HTML page (no scripts, no fonts or styles fetched from anywhere).

GOT's "format" answers are Mathpix-style markdown: markdown text with `\\( \\)` / `\\[ \\]` math and LaTeX
`tabular` tables; sheet music comes back as Humdrum **kern and molecules as SMILES. The original repo renders
them with MathJax and JavaScript fetched from a CDN; here everything is converted ahead of time so the file
opens offline and anywhere:

- math -> MathML (latex2mathml), which browsers lay out natively,
- `tabular` and markdown pipe tables -> HTML tables (colspan / rowspan from \\multicolumn / \\multirow),
- markdown (headings, lists, bold, ...) -> HTML (markdown-it, raw HTML in the answer is escaped),
- **kern -> inline SVG (verovio), SMILES -> inline SVG (RDKit).

Anything that fails to convert is shown as its source text with a `render-error` class, never dropped.
"""
from __future__ import annotations

import html
import re
from collections.abc import Sequence

__all__ = ["render_html", "render_fragment", "latex_to_mathml", "tabular_to_html", "kern_to_svg", "smiles_to_svg"]

# Private-use characters delimit placeholders: markdown-it leaves them alone and OCR output never holds them.
_PH_OPEN, _PH_CLOSE = "\ue000", "\ue001"
_PH = re.compile(f"{_PH_OPEN}(\\d+){_PH_CLOSE}")

CSS = """
body { font-family: "DejaVu Serif", "Noto Serif CJK SC", Georgia, serif; max-width: 60em; margin: 2em auto;
       padding: 0 1em; line-height: 1.5; color: #111; }
section.answer { border-top: 1px solid #ccc; padding-top: .5em; margin-top: 1.5em; }
h2.source { font: 600 .85em "DejaVu Sans Mono", monospace; color: #555; }
table { border-collapse: collapse; margin: .8em 0; }
td, th { border: 1px solid #888; padding: .2em .5em; vertical-align: top; }
math[display="block"] { display: block; margin: .6em 0; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: .8em 0; } figcaption { font: .85em "DejaVu Sans Mono", monospace; color: #444; }
.render-error { background: #fff0f0; }
"""


# ---- math ------------------------------------------------------------------------------------------------
def latex_to_mathml(latex: str, display: bool = False) -> str:
    """LaTeX math -> a MathML `<math>` element; on failure the escaped source in a `render-error` span."""
    from latex2mathml.converter import convert

    try:
        return convert(latex.strip(), display="block" if display else "inline")
    except Exception:  # latex2mathml raises many kinds of errors on malformed model output
        return f'<code class="render-error math">{html.escape(latex)}</code>'


# Display math first so `\[` is not read as text. Single `$` is only read as math inside tabular
# cells (LaTeX tables write math that way); in running text a `$` is far more often a price.
_DISPLAY_MATH = re.compile(r"\\\[(.+?)\\\]|\$\$(.+?)\$\$", re.S)
_INLINE_MATH = re.compile(r"\\\((.+?)\\\)", re.S)


# ---- LaTeX tables ----------------------------------------------------------------------------------------
_TABULAR = re.compile(r"\\begin\{(tabular[x*]?|array)\}(.*?)\\end\{\1\}", re.S)
_RULES = re.compile(r"\\(hline|toprule|midrule|bottomrule|hdashline|cline\{[^}]*\}|cmidrule(\([^)]*\))?\{[^}]*\})")


def _braced(s: str, i: int) -> tuple[str, int]:
    """Content of the brace group starting at s[i] == '{' and the index after it (unbalanced -> to end)."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
    return s[i + 1:], len(s)


def _split_top(s: str, sep: str) -> list[str]:
    """Split on `sep` outside braces and not escaped (`\\&` is a literal ampersand)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c == "\\" and s.startswith(sep, i + 1) and sep != "\\\\":
            i += 1 + len(sep)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


_TEXT_CMDS = [(re.compile(r"\\textbf\{([^{}]*)\}"), r"<b>\1</b>"), (re.compile(r"\\textit\{([^{}]*)\}"), r"<i>\1</i>"),
              (re.compile(r"\\emph\{([^{}]*)\}"), r"<i>\1</i>"), (re.compile(r"\\underline\{([^{}]*)\}"), r"<u>\1</u>")]


def _cell_html(tex: str) -> str:
    """One table cell: math to MathML, a few text commands to tags, everything else escaped."""
    out, pos = [], 0
    for m in re.finditer(r"\\\((.+?)\\\)|(?<!\\)\$(.+?)(?<!\\)\$", tex, re.S):
        out.append(_cell_text(tex[pos:m.start()]))
        out.append(latex_to_mathml(m.group(1) or m.group(2)))
        pos = m.end()
    out.append(_cell_text(tex[pos:]))
    return "".join(out).strip()


def _cell_text(tex: str) -> str:
    s = html.escape(tex)
    for pattern, repl in _TEXT_CMDS:
        s = pattern.sub(repl, s)
    s = re.sub(r"\\([&%$#_{}])", r"\1", s.replace("\\&amp;", "&amp;"))
    return s.replace("~", "\u00a0")


def tabular_to_html(tabular: str) -> str:
    """`\\begin{tabular}{spec} ... \\end{tabular}` (or just its body) -> an HTML `<table>`.

    Rows split on `\\\\`, cells on `&`; `\\multicolumn{n}{..}{x}` -> colspan, `\\multirow{n}{..}{x}` -> rowspan
    (LaTeX leaves empty cells under a multirow; they are dropped so the HTML grid lines up).
    """
    m = _TABULAR.search(tabular)
    body = m.group(2) if m else tabular
    body = body.lstrip()
    if body.startswith("{"):  # column spec
        _, end = _braced(body, 0)
        body = body[end:]
    body = _RULES.sub("", body)
    rows_html: list[str] = []
    covered: dict[int, int] = {}  # column -> rows still covered by a multirow above
    for row in _split_top(body, "\\\\"):
        row = re.sub(r"^\s*\[[^\]]*\]", "", row)  # `\\[2pt]` spacing
        if not row.strip():
            continue
        cells, col = [], 0
        for raw in _split_top(row, "&"):
            raw = raw.strip()
            if covered.get(col, 0) > 0 and not raw:  # the empty placeholder under a multirow
                col += 1
                continue
            attrs, span = "", 1
            mc = re.match(r"\\multicolumn\s*\{(\d+)\}\s*", raw)
            if mc:
                span = int(mc.group(1))
                rest = raw[mc.end():]
                if rest.startswith("{"):
                    rest = rest[_braced(rest, 0)[1]:].lstrip()  # column spec
                raw = _braced(rest, 0)[0] if rest.startswith("{") else rest
                attrs += f' colspan="{span}"'
            mr = re.match(r"\\multirow\s*\{(\d+)\}\s*", raw)
            if mr:
                n = int(mr.group(1))
                rest = raw[mr.end():]
                if rest.startswith("{"):
                    rest = rest[_braced(rest, 0)[1]:].lstrip()  # width, usually *
                raw = _braced(rest, 0)[0] if rest.startswith("{") else rest
                if n > 1:
                    attrs += f' rowspan="{n}"'
                    for c in range(col, col + span):
                        covered[c] = n  # decremented below, once per row including this one
            cells.append(f"<td{attrs}>{_cell_html(raw)}</td>")
            col += span
        covered = {c: k - 1 for c, k in covered.items() if k > 1}
        rows_html.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>\n" + "\n".join(rows_html) + "\n</table>"


# ---- sheet music and molecules -------------------------------------------------------------------------------
def kern_to_svg(kern: str) -> str:
    """Humdrum **kern -> inline SVG, one per engraved page (verovio)."""
    import verovio

    verovio.enableLog(verovio.LOG_OFF)
    tk = verovio.toolkit()
    tk.setOptions({"inputFrom": "humdrum", "adjustPageHeight": True, "scale": 40, "header": "none", "footer": "none"})
    if not tk.loadData(kern) or tk.getPageCount() == 0:
        raise ValueError("verovio could not read the **kern data")
    return "\n".join(tk.renderToSVG(p) for p in range(1, tk.getPageCount() + 1))


def smiles_to_svg(smiles: str, size: tuple[int, int] = (360, 260)) -> str:
    """SMILES -> inline SVG 2D depiction (RDKit); ValueError when RDKit cannot parse it."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem.Draw import rdMolDraw2D

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise ValueError(f"not a valid SMILES: {smiles[:60]!r}")
    drawer = rdMolDraw2D.MolDraw2DSVG(*size)
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, mol)
    drawer.FinishDrawing()
    return re.sub(r"^<\?xml[^>]*\?>\s*", "", drawer.GetDrawingText())


_SMILES_TAG = re.compile(r"<smiles>(.*?)</smiles>", re.S)
_SMILES_CHARS = re.compile(r"^[A-Za-z0-9@+\-\[\]()=#$:/\\%.*]+$")


def _looks_like_smiles(text: str) -> bool:
    """A whole answer that is one SMILES string (no spaces, SMILES characters only, parses, >= 2 atoms, and
    some bond/ring/branch syntax so plain words such as "CNN" or "NO" are left as text)."""
    if not (2 <= len(text) <= 2000 and _SMILES_CHARS.match(text) and re.search(r"[=#()\[\]0-9@/\\]", text)):
        return False
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(text)
    return mol is not None and mol.GetNumAtoms() >= 2


def _figure(svg: str, caption: str, kind: str) -> str:
    return f'<figure class="{kind}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _error_block(source: str, why: str) -> str:
    return f'<pre class="render-error" title="{html.escape(why)}">{html.escape(source)}</pre>'


# ---- markdown ------------------------------------------------------------------------------------------------
_LATEX_HEADINGS = [(re.compile(r"\\title\{([^{}]*)\}"), "# "), (re.compile(r"\\section\*?\{([^{}]*)\}"), "## "),
                   (re.compile(r"\\subsection\*?\{([^{}]*)\}"), "### "),
                   (re.compile(r"\\subsubsection\*?\{([^{}]*)\}"), "#### ")]


def _markdown(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # pragma: no cover - markdown-it-py comes with transformers (typer -> rich)
        return "\n".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table").enable("strikethrough")
    return md.render(text)


def render_fragment(text: str) -> str:
    """One OCR answer -> an HTML fragment (no <html> wrapper)."""
    stripped = text.strip()
    if not stripped:
        return '<p class="empty"><i>(empty answer)</i></p>'
    if "**kern" in stripped.split("\n", 1)[0] or stripped.startswith("**kern"):
        try:
            source = f"<details><summary>**kern</summary><pre>{html.escape(stripped)}</pre></details>"
            return f'<figure class="music">{kern_to_svg(stripped)}<figcaption>{source}</figcaption></figure>'
        except Exception as e:
            return _error_block(stripped, f"sheet music: {e}")
    if _looks_like_smiles(stripped):
        return _figure(smiles_to_svg(stripped), stripped, "molecule")

    blocks: list[str] = []

    def hold(fragment: str, block: bool) -> str:
        blocks.append(fragment)
        mark = f"{_PH_OPEN}{len(blocks) - 1}{_PH_CLOSE}"
        return f"\n\n{mark}\n\n" if block else mark

    def smiles(m: re.Match) -> str:
        try:
            return hold(_figure(smiles_to_svg(m.group(1)), m.group(1).strip(), "molecule"), True)
        except ValueError as e:
            return hold(_error_block(m.group(1), str(e)), True)

    s = _SMILES_TAG.sub(smiles, text)
    s = _TABULAR.sub(lambda m: hold(tabular_to_html(m.group(0)), True), s)
    s = re.sub(r"\\begin\{table\}(\[[^\]]*\])?|\\end\{table\}|\\centering|\\caption\{([^{}]*)\}", lambda m: m.group(2) or "", s)
    s = _DISPLAY_MATH.sub(lambda m: hold(latex_to_mathml(m.group(1) or m.group(2), display=True), True), s)
    s = _INLINE_MATH.sub(lambda m: hold(latex_to_mathml(m.group(1)), False), s)
    for pattern, prefix in _LATEX_HEADINGS:
        s = pattern.sub(lambda m, p=prefix: f"\n\n{p}{m.group(1)}\n\n", s)
    for pattern, repl in [(r"\\textbf\{([^{}]*)\}", r"**\1**"), (r"\\textit\{([^{}]*)\}", r"*\1*"),
                          (r"\\emph\{([^{}]*)\}", r"*\1*")]:
        s = re.sub(pattern, repl, s)
    out = _markdown(s)
    # Block placeholders alone in a paragraph replace the paragraph (a <table> may not sit inside <p>).
    out = re.sub(f"<p>{_PH_OPEN}(\\d+){_PH_CLOSE}</p>", lambda m: blocks[int(m.group(1))], out)
    return _PH.sub(lambda m: blocks[int(m.group(1))], out)


def render_html(texts: Sequence[str | tuple[str, str]], title: str = "GOT OCR") -> str:
    """Answers (plain strings, or (source, text) pairs to head each one) -> a complete standalone HTML page."""
    sections = []
    for item in texts:
        source, text = item if isinstance(item, tuple) else (None, item)
        head = f'<h2 class="source">{html.escape(str(source))}</h2>\n' if source is not None else ""
        sections.append(f'<section class="answer">\n{head}{render_fragment(text)}\n</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections) + "\n</body>\n</html>\n"
    )
