"""Text data engines (plain, pdf, fine_grained, multi_crop, multi_page), their text sources, augmentations and
the stream. The proof that targets match images: Tesseract reads rendered lines back (CER vs our targets)."""
from __future__ import annotations

import random
import shutil
import subprocess
import unicodedata

import numpy as np
import pytest
from PIL import Image, ImageOps
from rapidfuzz.distance import Levenshtein

from data_engines import augment as A
from data_engines import text as T
from data_engines.base import ENGINES, Sample, get_engine
from data_engines.fine_grained import FineGrainedEngine
from data_engines.multi_crop import MultiCropEngine
from data_engines.multi_page import MultiPageEngine
from data_engines.pdf import PdfEngine
from data_engines.plain import PlainEngine, draw_page, layout_page, lines_text, random_style

N_LINES = 20
TESS_LANG = {"en": "eng", "zh": "chi_sim"}


# ---------------------------------------------------------------------------------------------- Tesseract proof

_QUOTES = str.maketrans("“”‘’〈〉", "\"\"''<>")


def _norm(s: str, lang: str) -> str:
    """Compare what a reader sees: NFKC (full-width punctuation = half-width), curly quotes = straight ones,
    whitespace collapsed; Tesseract puts spaces between Chinese characters, so Chinese is compared without them."""
    s = unicodedata.normalize("NFKC", s).strip().translate(_QUOTES)
    return "".join(s.split()) if lang == "zh" else " ".join(s.split())


def _for_tesseract(img: Image.Image) -> Image.Image:
    """Tesseract's documented input: dark text on white, ~20 px x-height, a white border. Our slices come
    light-on-dark too, at 16-48 px type and with 2 px margins, which it reads poorly for its own reasons."""
    g = img.convert("L")
    if np.asarray(g).mean() < 128:
        g = ImageOps.invert(g)
    g = ImageOps.autocontrast(g).resize((max(1, round(g.width * 48 / g.height)), 48), Image.BICUBIC)
    return ImageOps.expand(g, 12, fill=255)


@pytest.fixture(scope="module")
def tesseract_reads(tmp_path_factory):
    """Render N_LINES line slices per (engine, lang), OCR each batch with ONE tesseract process (--psm 7, one line
    per image), all four batches in parallel. Returns {(engine, lang): (targets, predictions)}."""
    if shutil.which("tesseract") is None:
        pytest.fail("tesseract not found: apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim")
    root = tmp_path_factory.mktemp("tess")
    jobs = {}
    for engine_cls in (PlainEngine, PdfEngine):
        for lang in ("en", "zh"):
            engine = engine_cls(lang=lang, layout="line")
            paths, targets = [], []
            for i in range(N_LINES):
                sample = engine.render(random.Random(f"tess:{i}"))
                img = sample.images[0]
                assert img.mode == "RGB" and img.height >= 8
                path = root / f"{engine_cls.name}_{lang}_{i}.png"
                _for_tesseract(img).save(path)
                paths.append(str(path))
                targets.append(sample.conversations[1]["value"])
            listing = root / f"{engine_cls.name}_{lang}.txt"
            listing.write_text("\n".join(paths) + "\n")
            proc = subprocess.Popen(["tesseract", str(listing), "stdout", "-l", TESS_LANG[lang], "--psm", "7"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"})
            jobs[(engine_cls.name, lang)] = (proc, targets)
    out = {}
    for key, (proc, targets) in jobs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"tesseract failed for {key}: {stderr[-500:]} (is tesseract-ocr-chi-sim installed?)"
        preds = stdout.split("\f")[:N_LINES]  # one form feed after each image's text
        assert len(preds) == N_LINES, f"{key}: tesseract returned {len(preds)} pages for {N_LINES} images"
        out[key] = (targets, preds)
    return out


@pytest.mark.parametrize("engine,lang,max_cer", [("plain", "en", 0.03), ("plain", "zh", 0.05),
                                                 ("pdf", "en", 0.03), ("pdf", "zh", 0.05)])
def test_tesseract_reads_our_targets(tesseract_reads, engine, lang, max_cer):
    targets, preds = tesseract_reads[(engine, lang)]
    errors = sum(Levenshtein.distance(_norm(p, lang), _norm(t, lang)) for t, p in zip(targets, preds))
    chars = sum(len(_norm(t, lang)) for t in targets)
    cer = errors / chars
    worst = max(zip(targets, preds), key=lambda tp: Levenshtein.distance(_norm(tp[1], lang), _norm(tp[0], lang)))
    assert cer <= max_cer, f"{engine}/{lang}: CER {cer:.3f} over {chars} chars; worst: {worst[0]!r} -> {worst[1]!r}"


# ---------------------------------------------------------------------------------------------- text sources, layout

@pytest.mark.parametrize("lang", ["en", "zh"])
def test_text_is_reproducible_and_wraps_losslessly(lang):
    a = [T.paragraph(random.Random(s), lang) for s in range(20)]
    assert a == [T.paragraph(random.Random(s), lang) for s in range(20)]
    assert len(set(a)) == 20
    if lang == "zh":
        assert all(sum("\u4e00" <= c <= "\u9fff" for c in p) > 0.6 * len(p) for p in a)
    font = T.get_font("cjk-sans" if lang == "zh" else "serif", 18)
    assert font.getname()[0].endswith(" SC") if lang == "zh" else True  # the Simplified-Chinese face of Noto CJK
    for p in a:
        lines = T.wrap(p, font, 300, lang)
        assert T.join_lines(lines) == p  # soft wraps lose nothing
        for line, _ in lines:  # fits, except closing punctuation allowed to hang by one glyph
            assert T.text_width(font, line) <= 300 + (18 if lang == "zh" else 0) or " " not in line


def test_glyph_cache_draws_like_pil():
    from PIL import ImageDraw

    font = T.get_font("serif", 20)
    text = "Quick brown foxes (1998) jump; 3.5% over lazy dogs?"
    a = Image.new("RGB", (700, 40), "white")
    ImageDraw.Draw(a).text((5, 5), text, font=font, fill=(0, 0, 0), anchor="la")
    b = Image.new("RGB", (700, 40), "white")
    T.draw_text(ImageDraw.Draw(b), (5, 5), text, font, (0, 0, 0))
    diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    assert diff.mean() < 3 and (diff > 128).mean() < 0.01  # same glyphs at the same places (kerning aside)


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_page_layout_reading_order_and_boxes(lang):
    for seed in range(6):
        rng = random.Random(seed)
        size = (1100, 1500)
        page = layout_page(rng, random_style(rng, lang, size, columns=2 + seed % 2), size)
        body = [l for l in page.lines if l.kind in ("text", "heading")]
        assert body and [l.column for l in body] == sorted(l.column for l in body)  # column by column
        for l in page.lines:
            x0, y0, x1, y1 = l.box
            assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1], (l.text, l.box)
        for i, a in enumerate(page.lines):  # ink boxes never overlap: a region box can isolate any line
            for b in page.lines[i + 1:]:
                assert a.box[2] <= b.box[0] or b.box[2] <= a.box[0] or a.box[3] <= b.box[1] or b.box[3] <= a.box[1]
        img = draw_page(page)
        ink = np.asarray(img.convert("L")) < 128
        for l in body[:5]:  # every line has ink inside its box, none just outside to the right
            x0, y0, x1, y1 = l.box
            assert ink[y0:y1, x0:x1].any()
        plain, md = lines_text(page.lines), lines_text(page.lines, markdown=True)
        assert "\n".join(l.text for l in page.lines) == plain.replace("\n\n", "\n")
        assert all(l.text in plain for l in page.lines)
        assert len(md) <= len(plain) + 4 * len(page.lines)


def test_plain_engine_layouts_and_queries():
    for layout in ("page", "line", "paragraph"):
        for lang in ("en", "zh"):
            s = PlainEngine(lang=lang, layout=layout, format_prob=0.0).render(random.Random(7))
            assert s.conversations[0] == {"from": "human", "value": "<image>\nOCR: "}
            assert s.images[0].mode == "RGB" and s.conversations[1]["value"].strip()
            if layout == "line":
                assert "\n" not in s.conversations[1]["value"]
    s = PlainEngine(lang="en", layout="page", format_prob=1.0).render(random.Random(1))
    assert s.conversations[0]["value"] == "<image>\nOCR with format: "
    with pytest.raises(ValueError, match="unknown lang"):
        PlainEngine(lang="fr")


def test_pdf_target_is_the_text_layer():
    """The target is read back from the PDF; it must equal what we typeset, line for line, in layout order."""
    import pymupdf

    from data_engines.pdf import PAPER_SIZES, _text_layer_lines, _typeset

    for seed, lang in [(0, "en"), (1, "zh"), (2, "en"), (3, "zh"), (4, "en")]:
        doc = pymupdf.open()
        w, h = PAPER_SIZES["a4"]
        page = doc.new_page(width=w, height=h)
        planned = _typeset(random.Random(seed), lang, page, (w, h))
        lines = _text_layer_lines(page, planned, 2.0)
        assert [l.text for l in lines] == [p.text for p in planned]
        assert [l.column for l in lines if l.kind == "text"] == sorted(l.column for l in lines if l.kind == "text")
    s = PdfEngine(lang="en", layout="page").render(random.Random(5))
    assert s.images[0].mode == "RGB" and 800 < s.images[0].width < 2100


def test_fine_grained_box_holds_only_the_region():
    from data_engines import fine_grained as FG

    for seed in range(8):
        s = FineGrainedEngine(mode="box").render(random.Random(seed))
        img = s.images[0]
        x0, y0, x1, y1 = s.meta["box"]
        w, h = img.size
        expected = f"<image>\n[{int(x0 / w * 1000)}, {int(y0 / h * 1000)}, {int(x1 / w * 1000)}, {int(y1 / h * 1000)}] OCR: "
        assert s.conversations[0]["value"] == expected and s.meta["fixed_geometry"]
    # the box covers the region's lines and no other line's ink
    rng = random.Random(3)
    style = random_style(rng, "en", (1000, 1300))
    page = layout_page(rng, style, (1000, 1300))
    for _ in range(20):
        region = FG.pick_region(rng, page.lines)
        bx0, by0, bx1, by1 = FG.region_box(region, page.lines, (1000, 1300), margin=6)
        for l in page.lines:
            inside = bx0 <= l.box[0] and by0 <= l.box[1] and l.box[2] <= bx1 + 1 and l.box[3] <= by1 + 1
            overlap = not (l.box[2] <= bx0 or l.box[0] >= bx1 or l.box[3] <= by0 or l.box[1] >= by1)
            assert inside if l in region else not overlap, (l.text, l.box, (bx0, by0, bx1, by1))
        assert lines_text(region).count("\n") >= len(region) - 1


def test_fine_grained_colour_frame_is_drawn():
    from data_engines.fine_grained import COLORS

    for seed in range(4):
        s = FineGrainedEngine(lang="zh", mode="color").render(random.Random(seed))
        color = s.meta["color"]
        assert s.conversations[0]["value"] == f"<image>\n[{color}] OCR: "
        x0, y0, x1, y1 = s.meta["box"]
        assert s.images[0].getpixel((x0, (y0 + y1) // 2)) == COLORS[color]
        assert s.images[0].getpixel(((x0 + x1) // 2, y1)) == COLORS[color]


def test_multi_crop_and_multi_page():
    s = MultiCropEngine().render(random.Random(0))
    assert max(s.images[0].size) >= 2000
    assert s.conversations[0]["value"] == "<image>\nOCR with format upon the patch reference: "
    for seed in range(3):
        s = MultiPageEngine(lang="en" if seed % 2 else "zh").render(random.Random(seed))
        assert 2 <= len(s.images) <= 8 and len({im.size for im in s.images}) == 1
        assert s.conversations[0]["value"] == "<image>\nOCR with format across multi pages: "
        assert s.meta["pages"] == len(s.images)
    with pytest.raises(ValueError, match="pages"):
        MultiPageEngine(pages=(3, 2))


# ---------------------------------------------------------------------------------------------- every engine

@pytest.mark.parametrize("name", list(ENGINES))
def test_every_engine_saves_valid_images(name, tmp_path):
    engine = get_engine(name)
    for seed in range(2):
        s = engine.render(random.Random(seed))
        assert isinstance(s, Sample) and s.images
        assert s.conversations[0]["from"] == "human" and s.conversations[0]["value"].startswith("<image>\n")
        assert s.conversations[1]["from"] == "gpt" and s.conversations[1]["value"].strip()
        for p, im in enumerate(s.images):
            path = tmp_path / f"{name}_{seed}_{p}.png"
            im.save(path)
            back = Image.open(path)
            assert back.mode == "RGB", f"{name}: mode {back.mode}"
            assert 16 <= back.width <= 4096 and 16 <= back.height <= 4096, f"{name}: size {back.size}"
        again = engine.render(random.Random(seed))  # same rng -> same bytes
        assert again.conversations == s.conversations
        assert [im.tobytes() for im in again.images] == [im.tobytes() for im in s.images]


# ---------------------------------------------------------------------------------------------- augmentations

def test_augmentations_reproducible_and_safe():
    s = PlainEngine(lang="en", layout="line").render(random.Random(2))
    img = s.images[0]
    for fn in (A.on_paper, A.tia_warp, A.rotate, A.perspective, A.motion_blur, A.gaussian_noise, A.jpeg):
        a, b = fn(img, random.Random(1)), fn(img, random.Random(1))
        assert a.mode == "RGB" and a.tobytes() == b.tobytes(), fn.__name__
    # TIA moves border points only outwards: the text's ink is never pushed out of the image
    ink = (np.asarray(img.convert("L")) < 100).sum()
    for seed in range(5):
        warped = np.asarray(A.tia_warp(img, random.Random(seed), strength=0.3).convert("L")) < 100
        assert warped.sum() > 0.6 * ink
    aug = A.Augmenter("paper,tia,bda")
    assert aug(s, random.Random(0)).images[0].tobytes() == aug(s, random.Random(0)).images[0].tobytes()
    box = FineGrainedEngine(mode="box").render(random.Random(0))
    out = A.Augmenter("tia,bda").__call__(box, random.Random(4))
    assert out.images[0].size == box.images[0].size  # box prompts: no rotation / warp
    assert not set(out.meta.get("augment", [])) & {"tia", "rotate", "perspective"}
    cp = A.copy_paste(s, random.Random(3))
    texts = cp.conversations[1]["value"].split("\n")
    assert s.conversations[1]["value"] in texts and len(texts) == cp.meta["n_lines"] >= 2
    with pytest.raises(ValueError, match="unknown augmentation"):
        A.parse_augment("blur")
    assert A.parse_augment("bda,tia=0.25") == {"bda": 1.0, "tia": 0.25}


def test_missing_font_names_the_debian_package(monkeypatch, tmp_path):
    from data_engines import fonts

    monkeypatch.setattr(fonts, "FONT_ROOTS", [tmp_path])
    fonts.font_path.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="fonts-noto-cjk"):
            fonts.font_path("cjk-sans")
    finally:
        fonts.font_path.cache_clear()


def test_missing_pymupdf_names_the_pip_package(monkeypatch):
    import sys

    from data_engines import pdf

    monkeypatch.setitem(sys.modules, "pymupdf", None)
    with pytest.raises(ImportError, match="pip install pymupdf"):
        pdf._pymupdf()


# ---------------------------------------------------------------------------------------------- stream

def test_stream_workers_share_the_global_stream():
    import torch

    from data_engines.mix import Mixture, parse_engines
    from data_engines.stream import EngineStream

    opts = {"plain": {"layout": "line"}, "fine_grained": {"lang": "en"}}
    stream = EngineStream("plain,fine_grained", seed=5, options=opts, limit=8)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    items = list(loader)
    assert sorted(it["index"] for it in items) == list(range(8))  # every index once across the workers
    ref = Mixture(parse_engines("plain,fine_grained"), 5, None, opts)
    for it in items[:3]:  # element i of the stream is sample i of `got data render`
        name, sample = ref.render(it["index"])
        assert it["engine"] == name and it["conversations"] == sample.conversations
        assert it["images"][0].tobytes() == sample.images[0].tobytes()
    ranks = [list(EngineStream("plain", seed=0, rank=r, world_size=2, limit=6).indices()) for r in range(2)]
    assert ranks == [[0, 2, 4], [1, 3, 5]]


def test_print_marks_on_line_slices():
    """marks= gives English line slices a printed document's marks (bullets, dashes, curly quotes, capitals,
    operators, signs); off by default, when it draws nothing from the stream (existing seeds do not change)."""
    plain = PlainEngine(lang="en", layout="line").render(random.Random(9)).conversations[1]["value"]
    assert plain == PlainEngine(lang="en", layout="line", marks=0.0).render(random.Random(9)).conversations[1]["value"]
    engine = PlainEngine(lang="en", layout="line", marks=1.0)
    texts = [engine.render(random.Random(f"marks:{i}")).conversations[1]["value"] for i in range(70)]
    marked = [t for t in texts if any(c in t for c in "•—–“”‘’©®§°€£×…=&|#%+*<>\"'()") or (t.isupper() and len(t) > 3)]
    assert len(marked) >= 60, texts
    assert any(t.startswith("• ") for t in texts) and any("—" in t or "–" in t for t in texts)
    assert any("’" in t for t in texts) and any(t.isupper() for t in texts)
    with pytest.raises(ValueError, match="marks must be a share"):
        PlainEngine(marks=-0.1)


def test_technical_text_and_bold_lines(tmp_path):
    """technical= puts identifiers, options and paths into the text (what manuals print); bold= sets line slices
    in a bold face. Both are off by default and then draw nothing from the stream, so existing seeds (and the
    held-out sets built from them) do not change. Tesseract reads the technical lines back."""
    rng = random.Random(3)
    tokens = [T.technical_token(rng) for _ in range(200)]
    assert sum("_" in t for t in tokens) > 20 and any(t.startswith("--") for t in tokens)
    assert any(t.startswith("/") for t in tokens) and any(t.endswith(")") for t in tokens)
    assert T.sentence(random.Random(5), "en") == T.sentence(random.Random(5), "en", technical=0.0)
    plain = PlainEngine(lang="en", layout="line").render(random.Random(9)).conversations[1]["value"]
    assert plain == PlainEngine(lang="en", layout="line", technical=0.0, bold=0.0).render(
        random.Random(9)).conversations[1]["value"]
    engine = PlainEngine(lang="en", layout="page_line", technical=0.3, bold=1.0)
    samples = [engine.render(random.Random(f"tech:{i}")) for i in range(N_LINES)]
    assert sum(any(c in s.conversations[1]["value"] for c in "_/()") for s in samples) >= N_LINES // 3
    with pytest.raises(ValueError, match="technical must be a share"):
        PlainEngine(technical=2)
    if not shutil.which("tesseract"):
        pytest.skip("tesseract is not installed")
    errors = chars = 0
    for i, s in enumerate(samples):
        path = tmp_path / f"{i}.png"
        _for_tesseract(s.images[0]).save(path)
        out = subprocess.run(["tesseract", str(path), "stdout", "--psm", "7"], capture_output=True, text=True,
                             env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"}).stdout
        truth = _norm(s.conversations[1]["value"], "en")
        errors += Levenshtein.distance(_norm(out, "en"), truth)
        chars += len(truth)
    print(f"technical lines: Tesseract CER {errors / chars:.4f} over {chars} chars")
    assert errors / chars <= 0.05, f"technical lines: Tesseract CER {errors / chars:.3f}"
