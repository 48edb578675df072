"""Image processor: tiling equal to transformers' GotOcr2 image processor on a sweep of sizes, identical pixels,
mode conversion, EXIF, numpy, PDF pages, multi-page, and clear errors for bad files."""
from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pymupdf
import pytest
import torch
from PIL import Image

from got import processor as P
from got.processor import CLIP_MEAN, CLIP_STD, ImageProcessor, choose_grid, load_image, load_images, load_pdf

hf = pytest.importorskip("transformers.models.got_ocr2.image_processing_pil_got_ocr2")  # the slow (PIL) class: no torchvision


def _sizes() -> list[tuple[int, int]]:
    rng = random.Random(0)
    sizes = [(rng.randint(8, 6000), rng.randint(8, 6000)) for _ in range(150)]
    sizes += [(rng.randint(100, 3000), rng.randint(10, 300)) for _ in range(30)]  # long lines / receipts
    sizes += [(w, h) for w in (512, 1024, 2048, 3072) for h in (512, 1024, 2048, 3072)]  # exact ratios: ties
    sizes += [(800, 600), (600, 800), (1, 5000), (5000, 1), (1000, 1000), (1500, 1000), (1024, 256), (725, 1024)]
    sizes += [(int(1024 * r), 1024) for r in (1.25, 0.8, 2.5, 0.4, 1.5, 0.75)]  # half-way between grids
    return sizes


SIZES = _sizes()


def test_sweep_grid_and_tile_count_match_transformers():
    assert len(SIZES) >= 200
    for min_t, max_t, tile in [(1, 6, 1024), (1, 12, 1024), (2, 6, 1024), (1, 6, 64)]:
        ref = hf.GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                          min_patches=min_t, max_patches=max_t)
        ours = ImageProcessor(tile)
        for w, h in SIZES:
            grid = choose_grid(w, h, tile, min_t, max_t)
            assert grid == hf.get_optimal_tiled_canvas((h, w), (tile, tile), min_t, max_t), (w, h, min_t, max_t)
            assert ours.num_tiles(w, h, crop=True, min_tiles=min_t, max_tiles=max_t) == \
                ref.get_number_of_image_patches(h, w, {}), (w, h)


def test_reference_examples():
    assert choose_grid(800, 600, 1024) == (3, 2)  # + thumbnail = 7 tiles = 1792 image tokens
    assert ImageProcessor(1024).num_tiles(800, 600, crop=True) * 256 == 1792
    assert choose_grid(1000, 1000, 1024) == (1, 1) and ImageProcessor().num_tiles(1000, 1000, crop=True) == 1


@pytest.mark.parametrize("w, h", [(130, 90), (90, 130), (300, 40), (64, 64), (200, 200), (33, 250), (190, 129)])
def test_pixels_match_transformers_after_the_same_resize(w, h):
    rng = np.random.default_rng(w * h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    tile = 64
    ref = hf.GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True, max_patches=6)
    expected = ref(im, return_tensors="pt")["pixel_values"]
    got = ImageProcessor(tile)(im, crop=True, max_tiles=6)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 1e-2
    plain = hf.GotOcr2ImageProcessorPil(size={"height": tile, "width": tile})(im, return_tensors="pt")["pixel_values"]
    assert (ImageProcessor(tile)(im) - plain).abs().max().item() < 1e-2


def test_full_size_resize_and_normalisation():
    im = Image.new("RGB", (300, 200), (255, 255, 255))
    x = ImageProcessor(1024).preprocess(im)
    assert x.shape == (3, 1024, 1024)
    expected = torch.tensor([(1 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-5) and torch.allclose(x[:, -1, -1], expected, atol=1e-5)


def test_tiles_are_row_major_with_thumbnail_last():
    quads = np.zeros((100, 300, 3), np.uint8)  # 3:1 image -> 3x1 grid: red | green | blue
    quads[:, :100, 0] = 255
    quads[:, 100:200, 1] = 255
    quads[:, 200:, 2] = 255
    p = ImageProcessor(32)
    tiles = p.tile(quads, max_tiles=6)
    assert len(tiles) == 4
    assert [int(np.argmax(np.asarray(t).reshape(-1, 3).mean(0))) for t in tiles[:3]] == [0, 1, 2]
    assert np.array_equal(np.asarray(tiles[3]), np.asarray(Image.fromarray(quads).resize((32, 32), Image.BICUBIC)))
    assert len(p.tile(Image.new("RGB", (30, 30)))) == 1  # one tile: no thumbnail
    assert len(p.tile(Image.new("RGB", (50, 50)))) == 5  # square but over half of 2x2 tiles: tie goes to 2x2
    assert p(quads, crop=True).shape == (4, 3, 32, 32)


# ---- loading -----------------------------------------------------------------------------------------------------
def _png(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_modes_convert_to_rgb_with_white_background():
    white, red = (255, 255, 255), (255, 0, 0)
    px = lambda im: load_image(im).getpixel((0, 0))
    assert px(Image.new("L", (4, 4), 255)) == white
    assert px(Image.new("1", (4, 4), 0)) == (0, 0, 0)
    assert px(Image.new("LA", (4, 4), (0, 0))) == white  # transparent black -> paper
    assert px(Image.new("RGBA", (4, 4), (0, 0, 0, 0))) == white
    assert px(Image.new("RGBA", (4, 4), (255, 0, 0, 255))) == red
    assert px(Image.new("CMYK", (4, 4), (0, 0, 0, 0))) == white
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert px(pal) == red
    pal_t = Image.open(io.BytesIO(_png(pal, transparency=1)))
    assert pal_t.mode == "P" and px(pal_t) == white
    i16 = Image.open(io.BytesIO(_png(Image.fromarray(np.full((4, 4), 65535, np.uint16)))))
    assert i16.mode.startswith("I") and px(i16) == white
    mid = Image.fromarray(np.full((4, 4), 32896, np.uint16))
    assert px(mid) == (128, 128, 128)
    assert px(Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")) == (128, 128, 128)
    for im in (Image.new("YCbCr", (4, 4)), Image.new("RGB", (4, 4))):
        assert load_image(im).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif)
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_numpy_bytes_and_file_objects(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[..., 0] = 255
    assert load_image(a).size == (20, 10) and load_image(a).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(a[..., 0]).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((10, 20, 4), np.uint8)).getpixel((0, 0)) == (255, 255, 255)  # transparent
    assert load_image(np.ones((10, 20, 1), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((5, 5), 65535, np.uint16)).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError, match="channel-first"):
        load_image(np.zeros((3, 10, 20), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((10, 20, 2), np.uint8))
    data = _png(Image.fromarray(a))
    assert load_image(data).getpixel((0, 0)) == (255, 0, 0)
    assert load_image(io.BytesIO(data)).size == (20, 10)
    (tmp_path / "a.png").write_bytes(data)
    assert load_image(str(tmp_path / "a.png")).size == (20, 10)
    with pytest.raises(ValueError, match="torch tensor"):
        load_image(torch.zeros(3, 4, 4))


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.png: empty file \(0 bytes\)"):
        load_image(empty)
    big = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(big[: len(big) // 2])
    with pytest.raises(ValueError, match="cut.png: truncated or corrupt"):
        load_image(cut)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match="junk.jpg: not an image"):
        load_image(junk)
    with pytest.raises(ValueError, match="empty image bytes"):
        load_image(b"")


def _bomb_png(w: int, h: int) -> bytes:
    """A tiny file whose header claims w x h pixels (decoding it would need gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(40000, 40000))
    with pytest.raises(ValueError, match=r"bomb.png: .*decompression-bomb guard"):
        load_image(bomb)
    bomb.write_bytes(_bomb_png(12000, 12000))  # 144 Mpx: under PIL's error level, over ours once lowered
    monkeypatch.setattr(P, "MAX_PIXELS", 100_000_000)
    with pytest.raises(ValueError, match=r"bomb.png: image is 12000x12000 = 144 Mpx, over the 100 Mpx limit"):
        load_image(bomb)
    monkeypatch.setattr(P, "MAX_PIXELS", 100)
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_image(Image.new("RGB", (20, 20)))


# ---- PDF and multi-page ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pdf_path(tmp_path_factory):
    doc = pymupdf.open()
    for i in range(3):
        page = doc.new_page(width=200, height=100)
        page.insert_text((20, 50), f"Page {i + 1}", fontsize=20)
    path = tmp_path_factory.mktemp("pdf") / "doc.pdf"
    doc.save(path)
    return path


def test_pdf_pages_dpi_and_ranges(pdf_path):
    pages = load_pdf(pdf_path, dpi=72)
    assert len(pages) == 3 and pages[0].size == (200, 100) and pages[0].mode == "RGB"
    assert load_pdf(pdf_path, dpi=144)[0].size == (400, 200)
    assert len(load_pdf(pdf_path, pages="2-3")) == 2 and len(load_pdf(pdf_path, pages=[1, 3])) == 2
    assert len(load_pdf(pdf_path.read_bytes(), pages=2)) == 1
    a, b = load_pdf(pdf_path, dpi=72, pages=[1, 2])
    assert np.asarray(a).min() < 128 and not np.array_equal(np.asarray(a), np.asarray(b))  # text was drawn
    with pytest.raises(ValueError, match=r"doc.pdf: page\(s\) \[5\] out of range; the PDF has 3"):
        load_pdf(pdf_path, pages=[5])
    with pytest.raises(ValueError, match="bad page range"):
        load_pdf(pdf_path, pages="x-2")
    with pytest.raises(ValueError, match="PDF with 3 pages"):
        load_image(pdf_path)


def test_bad_pdfs_fail_clearly(tmp_path):
    doc = pymupdf.open()
    doc.new_page()
    enc = tmp_path / "locked.pdf"
    doc.save(enc, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    with pytest.raises(ValueError, match="locked.pdf: PDF is encrypted"):
        load_pdf(enc)
    empty = tmp_path / "nopages.pdf"
    empty.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
                      b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
    with pytest.raises(ValueError, match="nopages.pdf: PDF has no pages"):
        load_pdf(empty)
    fake = tmp_path / "fake.pdf"
    fake.write_bytes(b"not a pdf")
    with pytest.raises(ValueError, match="fake.pdf: not a readable PDF"):
        load_pdf(fake)
    with pytest.raises(FileNotFoundError):
        load_pdf(tmp_path / "none.pdf")


def test_multi_page_is_one_sample_with_n_pages(pdf_path):
    p = ImageProcessor(32)
    ims = [Image.new("RGB", (50 + 10 * i, 40), (i * 60, 0, 0)) for i in range(3)]
    x = p(ims)
    assert x.shape == (3, 3, 32, 32)
    assert torch.equal(x[1], p.preprocess(ims[1]))
    assert p(pdf_path).shape == (3, 3, 32, 32)
    assert p(pdf_path, pages="1-2").shape == (2, 3, 32, 32)
    assert len(load_images([ims[0], pdf_path])) == 4
    with pytest.raises(ValueError, match="multi-crop works on one image"):
        p(ims, crop=True)
    with pytest.raises(ValueError, match="only applies to PDFs"):
        load_images(ims[0], pages=1)


def test_line_preset_pixels_are_fit_lines_picture_normalised():
    """A line preset normalises only the text part and writes the padding as one colour: the same values as
    normalising fit_line's padded picture pixel by pixel, for short, exact-width and too-wide crops."""
    rng = np.random.default_rng(3)
    proc = ImageProcessor((32, 512))
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    for w, h in [(40, 30), (512, 32), (3000, 20), (1, 1), (300, 64)]:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        want = (np.asarray(P.fit_line(im, 32, 512), dtype=np.float32) / 255.0 - mean) / std
        assert torch.equal(proc.preprocess(im), torch.from_numpy(np.ascontiguousarray(want.transpose(2, 0, 1))))
