"""got.render: formatted OCR -> one standalone HTML page, checked in a real browser (headless Debian chromium)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from got.render import render_fragment, render_html, tabular_to_html

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

FORMATTED = r"""\title{Quarterly report}

## Results

The **main** finding: energy \(E = mc^2\) holds, and
- first point with \(x_i\)
- second point

\[ \sum_{i=1}^{n} i = \frac{n(n+1)}{2} \]

\begin{tabular}{|l|c|c|}
\hline
\multirow{2}{*}{Model} & \multicolumn{2}{c|}{Edit distance} \\
\cline{2-3}
 & en & zh \\
\hline
GOT & $0.035$ & 0.038 \\
R \& D & 0.1 & 0.2 \\
\hline
\end{tabular}

| tool | pages/s |
|------|---------|
| ours | 0.9 |
"""

KERN = "**kern\n*clefG2\n*M4/4\n=1\n4c\n4d\n4e\n4f\n=2\n1g\n==\n*-\n"

# Appended to a COPY of the page for the test only: reports what the browser laid out.
PROBE = """<script>
const q = s => Array.from(document.querySelectorAll(s));
const laidOut = els => els.filter(e => e.getBoundingClientRect().width > 0).length;
const r = {cells: q('td').map(e => e.textContent.trim()), cellsLaidOut: laidOut(q('td')),
  headers: q('th').map(e => e.textContent.trim()), math: q('math').length, mathLaidOut: laidOut(q('math')),
  mathNs: q('math').every(e => e.namespaceURI === 'http://www.w3.org/1998/Math/MathML'),
  blockMath: q('math[display=block]').length, fracs: q('mfrac').length, h1: q('h1').map(e => e.textContent),
  strong: q('strong').map(e => e.textContent), li: q('li').length, svgs: q('svg').length,
  svgLaidOut: laidOut(q('svg')), rowspan: q('td[rowspan]').length, colspan: q('td[colspan]').length};
const p = document.createElement('pre'); p.id = 'probe'; p.textContent = JSON.stringify(r);
document.body.appendChild(p);
</script>"""


def chromium_dom(html_path: Path, tmp_path: Path) -> str:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--dump-dom", html_path.resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed")
def test_page_renders_in_chromium(tmp_path):
    page = render_html([("page1.png", FORMATTED), ("music.png", KERN), ("mol.png", "c1ccccc1C(=O)O")])
    # Standalone: nothing to fetch (the only URLs are XML namespace names).
    urls = {u for u in re.findall(r"""(?:src|href)=["']([^"']+)""", page) if not u.startswith("#")}
    urls |= set(re.findall(r"url\((?!#)", page))
    assert not urls, urls
    assert "<script" not in page and "@import" not in page
    (tmp_path / "out.html").write_text(page, encoding="utf-8")  # the real file must at least load
    chromium_dom(tmp_path / "out.html", tmp_path)

    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page.replace("</body>", PROBE + "\n</body>"), encoding="utf-8")
    dom = chromium_dom(probe_page, tmp_path)
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    r = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))

    # LaTeX tabular: 2 + 2 + 3 + 3 cells (multirow/multicolumn became rowspan/colspan) + 2 markdown body cells.
    for cell in ["Model", "Edit distance", "en", "zh", "GOT", "0.038", "R & D", "ours", "0.9"]:
        assert cell in r["cells"], (cell, r["cells"])
    assert r["rowspan"] == 1 and r["colspan"] == 1
    assert r["headers"] == ["tool", "pages/s"]
    assert r["cellsLaidOut"] == len(r["cells"]) == 12
    # Math: \( \) x2, \[ \] x1, $..$ in the table x1 -> MathML elements the browser laid out.
    assert r["math"] == 4 and r["mathNs"] and r["mathLaidOut"] == 4
    assert r["blockMath"] == 1 and r["fracs"] == 1
    # Markdown and Mathpix LaTeX text commands.
    assert r["h1"] == ["Quarterly report"] and r["strong"] == ["main"] and r["li"] == 2
    # **kern -> verovio SVG, SMILES -> RDKit SVG, both inline and laid out.
    assert r["svgs"] >= 2 and r["svgLaidOut"] >= 2


def test_tabular_rows_cells_and_spans():
    t = tabular_to_html(r"\begin{tabular}{cc}\toprule a & b \\ \midrule \multicolumn{2}{c}{wide} \\ 1 & $x^2$ \\ \bottomrule \end{tabular}")
    rows = re.findall(r"<tr>(.*?)</tr>", t)
    assert len(rows) == 3
    assert re.findall(r"<td>(.*?)</td>", rows[0]) == ["a", "b"]
    assert '<td colspan="2">wide</td>' in rows[1]
    assert "<math" in rows[2] and "<msup>" in rows[2]


def test_fragment_escapes_html_and_keeps_bad_input_visible():
    frag = render_fragment("<img src=x onerror=alert(1)> and \\(\\frac{a}{\\)")
    assert "<img" not in frag and "&lt;img" in frag
    assert "render-error" in frag  # malformed math is shown as source, not dropped
    assert "this is not kern" in render_fragment("**kern\nthis is not kern at all\n")  # source kept, no crash
    assert render_fragment("CNN").startswith("<p>")  # a plain word that parses as SMILES stays text
    assert "<svg" in render_fragment("see <smiles>CCO</smiles>")
    assert "empty" in render_fragment("  ")
