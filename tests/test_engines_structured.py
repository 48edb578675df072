"""Structured data engines (formula, table, molecule, music, geometry, chart): targets match what is drawn.

Each proof reads the target back with an independent parser or the real tool (ziamath, RDKit, Verovio) and
compares it with the engine's ground truth and, where the picture allows, with the pixels or matplotlib artists.
"""
from __future__ import annotations

import ast
import io
import math
import random
import re

import numpy as np
import pytest
from PIL import Image

from data_engines.base import get_engine
from got.prompts import build_query

STRUCTURED = ["formula", "table", "molecule", "music", "geometry", "chart"]


@pytest.fixture(scope="module")
def engines():
    return {name: get_engine(name) for name in STRUCTURED}


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def target(sample) -> str:
    return sample.conversations[1]["value"]


# --------------------------------------------------------------------------------------- every engine

@pytest.mark.parametrize("name", STRUCTURED)
def test_images_saved_with_sane_sizes_and_prompt(name, engines, tmp_path):
    engine = engines[name]
    assert engine.name == name
    for seed in range(20):
        s = engine.render(random.Random(seed))
        assert len(s.images) == 1
        path = tmp_path / f"{name}_{seed}.png"
        s.images[0].save(path)
        img = Image.open(path)
        assert img.mode == "RGB"
        assert max(img.size) <= 1024 and min(img.size) >= 32, img.size
        assert np.asarray(img).std() > 5  # something is drawn
        assert s.conversations[0] == {"from": "human", "value": "<image>\n" + build_query(mode="format")}
        assert s.conversations[1]["from"] == "gpt" and target(s).strip()
        record = s.to_record([str(path)])
        assert record["image"] == str(path)


@pytest.mark.parametrize("name", STRUCTURED)
def test_same_seed_byte_identical(name, engines):
    a, b = engines[name].render(random.Random(1234)), get_engine(name).render(random.Random(1234))
    assert png_bytes(a.images[0]) == png_bytes(b.images[0])
    assert a.conversations == b.conversations
    c = engines[name].render(random.Random(1235))
    assert target(c) != target(a)


@pytest.mark.parametrize("name", STRUCTURED)
def test_max_side_option_is_honoured(name):
    engine = get_engine(name, max_side=512)
    for seed in range(5):
        assert max(engine.render(random.Random(seed)).images[0].size) <= 512


def test_missing_tool_names_the_package():
    from data_engines.structured import require

    with pytest.raises(ImportError, match="pip install not-a-real-package"):
        require("not_a_real_module_xyz", "not-a-real-package", "a test")


def test_bad_options_are_one_line_value_errors():
    with pytest.raises(ValueError, match="fmt"):
        get_engine("table", fmt="html")
    with pytest.raises(ValueError, match="target"):
        get_engine("chart", target="csv")


# --------------------------------------------------------------------------------------- formula

MATH = re.compile(r"\\\[ (.*?) \\\]|\\\( (.*?) \\\)")


def test_formula_targets_render_200():
    """200 display and 200 inline formulas, drawn exactly as the engine draws them, parse (latex2mathml, no
    unknown command left) and lay out through the engine's renderer (ziamath) without error."""
    import latex2mathml.converter

    from data_engines.formula import latex_to_svg, random_latex

    for seed in range(200):
        rng = random.Random(seed)
        for latex in (random_latex(rng, rng.randint(1, 3), rng.randint(30, 220)), random_latex(rng, 1, 50, True)):
            mathml = latex2mathml.converter.convert(latex)
            assert "\\" not in mathml.replace("\\\\", ""), (latex, mathml)  # unknown commands come back verbatim
            assert latex_to_svg(latex).startswith("<svg")


def test_formula_samples_target_is_what_was_rendered(engines):
    """In full samples the target's formulas are exactly the rendered ones and re-render without error; a
    single display formula re-rendered from the target reproduces the image pixel for pixel."""
    from data_engines.formula import latex_to_svg, render_latex

    kinds, exact = {"display": 0, "paragraph": 0}, 0
    for seed in range(40):
        s = engines["formula"].render(random.Random(seed))
        meta = s.meta
        kinds[meta["kind"]] += 1
        found = [a or b for a, b in MATH.findall(target(s))]
        assert found and found == meta["formulas"], seed
        assert "\\" not in MATH.sub("", target(s))  # no LaTeX outside the delimiters
        for latex in found:
            assert latex_to_svg(latex).startswith("<svg")
        if meta["kind"] == "display" and len(found) == 1:
            ink, _ = render_latex(found[0], meta["size"], meta["font"], meta["color"])
            page, pad = s.images[0], meta["pad"]
            assert page.size == (ink.width + 2 * pad, ink.height + 2 * pad)
            expected = Image.new("RGB", ink.size, page.getpixel((0, 0)))
            expected.paste(ink, (0, 0), ink)
            assert png_bytes(page.crop((pad, pad, pad + ink.width, pad + ink.height))) == png_bytes(expected)
            exact += 1
    assert min(kinds.values()) >= 10 and exact >= 5, (kinds, exact)


# --------------------------------------------------------------------------------------- table

def parse_tabular(tex: str) -> tuple[str, list[list[str]], list[str]]:
    """Independent reader: (column spec, unescaped cells, rule commands in order)."""
    m = re.fullmatch(r"\\begin\{tabular\}\{([^}]*)\}\n(.*)\n\\end\{tabular\}", tex, re.S)
    assert m, tex
    rows, rules = [], []
    for line in m.group(2).split("\n"):
        if line in (r"\hline", r"\toprule", r"\midrule", r"\bottomrule"):
            rules.append(line[1:])
            continue
        assert line.endswith(r" \\"), line
        cells = re.split(r"(?<!\\)&", line[:-3])
        out = []
        for c in cells:
            c = c.strip()
            c = re.sub(r"\\textbf\{(.*)\}", r"\1", c)
            c = re.sub(r"\\([&%$#_{}])", r"\1", c)
            out.append(c)
        rows.append(out)
    return m.group(1), rows, rules


def rule_runs(mask: np.ndarray) -> int:
    """Number of runs of consecutive True entries."""
    return int(np.sum(mask[1:] & ~mask[:-1]) + mask[0])


def test_table_latex_parses_back_and_rules_are_drawn(engines):
    for seed in range(80):
        s = engines["table"].render(random.Random(seed))
        spec, cells, rules = parse_tabular(target(s))
        assert cells == s.meta["cells"], seed
        assert spec.replace("|", "") == s.meta["aligns"]
        assert len({len(r) for r in cells}) == 1
        x0, y0, x1, y1 = s.meta["bbox"]
        dark = np.asarray(s.images[0].convert("L"))[y0 - 3:y1 + 3, x0:x1] < 140
        h_lines = dark.mean(axis=1) > 0.97  # rows inked across the whole table width
        assert rule_runs(h_lines) == len(rules), (seed, rules)
        dark_v = np.asarray(s.images[0].convert("L"))[y0:y1, x0 - 3:x1 + 3] < 140
        v_lines = dark_v.mean(axis=0) > 0.97
        assert rule_runs(v_lines) == spec.count("|"), (seed, spec)


def test_table_markdown_option():
    engine = get_engine("table", fmt="markdown")
    for seed in range(20):
        s = engine.render(random.Random(seed))
        lines = target(s).split("\n")
        rows = [[c.strip().removeprefix("**").removesuffix("**") for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
                for i, ln in enumerate(lines) if i != 1]
        assert rows == s.meta["cells"]
        assert len(lines[1].split("|")) - 2 == len(s.meta["aligns"])


# --------------------------------------------------------------------------------------- molecule

def test_molecule_smiles_canonical_200(engines):
    from rdkit import Chem

    stereo = 0
    for seed in range(200):
        s = engines["molecule"].render(random.Random(seed))
        smi = target(s)
        mol = Chem.MolFromSmiles(smi)
        assert mol is not None, smi
        assert Chem.MolToSmiles(mol) == smi
        assert mol.GetNumHeavyAtoms() == s.meta["heavy_atoms"]
        stereo += "@" in smi
    assert stereo > 5  # wedges are exercised


def test_molecule_smiles_tag_option():
    s = get_engine("molecule", smiles_tag=True).render(random.Random(0))
    assert re.fullmatch(r"<smiles>[^<]+</smiles>", target(s))


# --------------------------------------------------------------------------------------- music

def test_music_kern_loads_in_verovio_200(engines):
    """The engine's target is `random_kern(rng)` of its rng: 200 of them load in Verovio with every note and
    measure accounted for; 20 full samples (engraved images) are checked above."""
    import verovio

    from data_engines.music import random_kern

    tk = verovio.toolkit()
    two_staff = 0
    for seed in range(200):
        kern, meta = random_kern(random.Random(seed))
        if seed < 3:
            assert target(engines["music"].render(random.Random(seed))) == kern
        assert kern.startswith("**kern") and kern.endswith("*-")
        assert tk.loadData(kern) is True
        assert tk.getPageCount() >= 1
        mei = tk.getMEI()
        assert mei.count("<note ") == meta["notes"], seed
        assert mei.count("<measure ") == meta["measures"], seed
        two_staff += len(meta["clefs"]) == 2
    assert two_staff > 30


def test_music_measures_are_full():
    from fractions import Fraction

    from data_engines.music import DURATIONS, TIMES, random_kern

    for seed in range(50):
        kern, meta = random_kern(random.Random(seed))
        length = TIMES[meta["time"]][0]
        lines = kern.split("\n")
        for spine in range(len(meta["clefs"])):
            total, seen = Fraction(0), 0
            for ln in lines[4:]:
                tok = ln.split("\t")[spine]
                if tok.startswith("="):
                    assert total in (0, length), (seed, total)
                    total, seen = Fraction(0), seen + 1
                elif tok not in (".", "*-"):
                    total += DURATIONS[re.match(r"\d+\.?", tok.split(" ")[0]).group(0)]
            assert seen == meta["measures"] + 1


# --------------------------------------------------------------------------------------- geometry

NUM = r"(-?\d+(?:\.\d+)?)"
PT = rf"\({NUM},{NUM}\)"


def parse_tikz(tex: str) -> list[dict]:
    lines = tex.split("\n")
    assert lines[0] == r"\begin{tikzpicture}" and lines[-1] == r"\end{tikzpicture}"
    shapes = []
    for ln in lines[1:-1]:
        if m := re.fullmatch(rf"\\fill {PT} circle \(1\.5pt\);", ln):
            shapes.append({"type": "point", "at": (float(m[1]), float(m[2]))})
        elif m := re.fullmatch(rf"\\node\[([a-z ]+)\] at {PT} \{{\$(\w)\$\}};", ln):
            assert shapes[-1]["at"] == (float(m[2]), float(m[3]))
            shapes[-1].update(label=m[4], anchor=m[1])
        elif m := re.fullmatch(rf"\\draw\[->\] {PT} -- {PT} node\[(\w+)\] \{{\$(\w)\$\}};", ln):
            shapes.append({"type": "arrow", "points": [(float(m[1]), float(m[2])), (float(m[3]), float(m[4]))],
                           "label": m[6], "anchor": m[5]})
        elif m := re.fullmatch(rf"\\draw(?:\[([a-z ,]+)\])? (.*);", ln):
            opts = [o.strip() for o in (m[1] or "").split(",") if o.strip()]
            style = {"color": next((o for o in opts if o in ("red", "blue")), ""),
                     "width": next((o for o in opts if o in ("thick", "very thick")), ""),
                     "dashed": "dashed" in opts}
            body = m[2]
            pts = [(float(a), float(b)) for a, b in re.findall(PT, body)]
            if c := re.fullmatch(rf"{PT} circle \({NUM}\)", body):
                shapes.append({"type": "circle", "center": pts[0], "radius": float(c[3]), **style})
            elif re.fullmatch(rf"{PT} rectangle {PT}", body):
                shapes.append({"type": "rectangle", "points": pts, **style})
            elif body.endswith(" -- cycle"):
                shapes.append({"type": "polygon", "points": pts, **style})
            else:
                assert re.fullmatch(rf"{PT} -- {PT}", body), body
                shapes.append({"type": "segment", "points": pts, **style})
        else:
            raise AssertionError(f"unparsed TikZ line {ln!r}")
    return shapes


def _outline(shape: dict) -> list[tuple[float, float]]:
    t = shape["type"]
    if t == "circle":
        (cx, cy), r = shape["center"], shape["radius"]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 90)]
    pts = shape["points"]
    if t == "rectangle":
        (ax, ay), (bx, by) = pts
        pts = [(ax, ay), (bx, ay), (bx, by), (ax, by)]
    if t in ("rectangle", "polygon"):
        pts = pts + [pts[0]]
    out = []
    for a, b in zip(pts, pts[1:]):
        out += [(a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f) for f in np.linspace(0.05, 0.95, 20)]
    return out


def test_geometry_tikz_parses_back_and_is_drawn_there(engines):
    for seed in range(80):
        s = engines["geometry"].render(random.Random(seed))
        shapes = parse_tikz(target(s))
        meta = [{k: v for k, v in m.items()} for m in s.meta["shapes"]]
        for m in meta:  # meta holds tuples/lists; compare as tuples
            if "points" in m:
                m["points"] = [tuple(p) for p in m["points"]]
            for k in ("at", "center"):
                if k in m:
                    m[k] = tuple(m[k])
            if m["type"] == "arrow":
                for k in ("width", "color", "dashed"):
                    m.pop(k)
        assert shapes == meta, seed
        ink = np.asarray(s.images[0].convert("L"))
        bg = np.median(ink)
        scale, (ox, oy) = s.meta["px_per_unit"], s.meta["origin_px"]
        for shape in shapes:
            if shape["type"] == "point":
                continue
            hits = []
            for x, y in _outline(shape):
                px, py = round(ox + x * scale), round(oy - y * scale)
                win = ink[max(0, py - 2):py + 3, max(0, px - 2):px + 3]
                hits.append(win.size > 0 and win.min() < bg - 60)
            need = 0.3 if shape.get("dashed") else 0.97
            assert np.mean(hits) >= need, (seed, shape, np.mean(hits))


# --------------------------------------------------------------------------------------- chart

def parse_markdown_chart(t: str) -> tuple[list[str], dict[str, list[float]]]:
    table = t.split("\n\n")[-1].split("\n")
    header = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    return [r[0] for r in rows], {name: [float(r[i + 1]) for r in rows] for i, name in enumerate(header[1:])}


@pytest.mark.parametrize("fmt,n", [("markdown", 24), ("dict", 8)])
def test_chart_target_values_are_the_plotted_values(fmt, n):
    engine = get_engine("chart", target=fmt)
    kinds = set()
    for seed in range(n):
        s = engine.render(random.Random(seed))
        meta = s.meta
        kinds.add(meta["kind"])
        if fmt == "markdown":
            cats, series = parse_markdown_chart(target(s))
        else:
            d = ast.literal_eval(target(s))
            cats, series = d["categories"], d["series"]
            assert d["title"] == meta["title"]
        assert cats == meta["categories"]
        assert series == meta["series"]
        ax = engine.fig.axes[0]  # the artists of this very sample
        values = [v for vs in series.values() for v in vs]
        if meta["kind"] == "bar":
            assert [p.get_height() for p in ax.patches] == pytest.approx(values)
        elif meta["kind"] == "barh":
            assert [p.get_width() for p in ax.patches] == pytest.approx(values)
        elif meta["kind"] == "line":
            assert [float(y) for ln in ax.lines for y in ln.get_ydata()] == pytest.approx(values)
        else:
            angles = [abs(w.theta2 - w.theta1) for w in ax.patches]
            assert angles == pytest.approx([360 * v / sum(values) for v in values])
            assert sum(values) == pytest.approx(100)
        if meta["annotated"] and meta["kind"] != "pie":
            drawn = {t.get_text() for t in ax.texts}
            assert {f"{v:.{meta['decimals']}f}" for v in values} <= drawn
    if fmt == "markdown":
        assert kinds == {"bar", "barh", "line", "pie"}
