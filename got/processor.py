"""Images in, pixel tensors out: loading (files, bytes, numpy, PDF pages), guards, GOT's resize + CLIP
normalisation, multi-crop tiling and multi-page stacking.

What the released model expects (docs/got_facts.md §4): every tile / page resized to S x S (1024 for the base
model) bicubic, aspect ratio NOT kept, /255, CLIP mean/std. Multi-crop is InternVL-style dynamic tiling
(GOT's code: at most 6 tiles) with a whole-image thumbnail LAST; the grid choice is identical to
transformers' `GotOcr2ImageProcessor`, which the tests check on a sweep of image sizes.

Every bad input becomes ONE ValueError / FileNotFoundError naming the file and the problem.
"""
from __future__ import annotations

import io
import os
import re
import struct
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Decompression-bomb guard, checked from the header before any pixel is decoded. PIL's own error level
# (2x its warning level); a 300 dpi A0 scan (~140 Mpx) still passes.
MAX_PIXELS = 178_956_970

ImageSource = Union[str, os.PathLike, bytes, bytearray, io.IOBase, Image.Image, np.ndarray]


# ---- loading -----------------------------------------------------------------------------------------------------
def _name(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    return getattr(src, "name", None) or f"<{type(src).__name__}>"


def is_pdf(src: Any) -> bool:
    """By suffix or by the %PDF- signature (a scan saved without a suffix is still a PDF)."""
    if isinstance(src, (str, os.PathLike)):
        if str(src).lower().endswith(".pdf"):
            return True
        try:
            with open(src, "rb") as f:
                return f.read(5) == b"%PDF-"
        except OSError:
            return False
    return isinstance(src, (bytes, bytearray)) and bytes(src[:5]) == b"%PDF-"


class Frame(os.PathLike):
    """Page `index` (0-based) of a multi-page image file (a multi-frame TIFF): a path that `load_image` reads
    that frame of, lazily."""

    def __init__(self, path: str | os.PathLike, index: int):
        self.path, self.index = path, int(index)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return f"{self.path} page {self.index + 1}"

    def __repr__(self) -> str:
        return f"Frame({str(self.path)!r}, {self.index})"


class Pages(list):
    """The pages of a multi-page image file as a document (a list of `Frame`, read one at a time), named
    after the file: what `image_pages` returns and `GOT.chat` / `got chat` answer page by page, like a PDF."""

    def __init__(self, frames: Iterable[Frame], name: str):
        super().__init__(frames)
        self.name = name


def frame_count(src: Any) -> int:
    """How many pages a multi-page image file (TIFF) holds, from its headers; 1 for any other input, and for a file
    that cannot be read (load_image says what is wrong with it)."""
    if not isinstance(src, (str, os.PathLike)) or isinstance(src, Frame) or is_pdf(src):
        return 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(src) as im:
                return int(getattr(im, "n_frames", 1)) if im.format == "TIFF" else 1
    except Exception:  # unreadable: not ours to report here
        return 1


def image_pages(src: str | os.PathLike) -> Pages:
    """Every page of a multi-page TIFF (one `Frame` each, nothing decoded yet); [src] for a one-page image."""
    n = frame_count(src)
    return Pages([Frame(src, i) for i in range(n)] if n > 1 else [src], str(src))


def _check_pixels(w: int, h: int, name: str) -> None:
    if w * h > MAX_PIXELS:
        raise ValueError(f"{name}: image is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the {MAX_PIXELS / 1e6:.0f} Mpx limit "
                         "(decompression-bomb guard; raise got.processor.MAX_PIXELS if the file is trusted)")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on WHITE (paper), not black; 16-bit and float
    grayscale are scaled to 8 bits instead of being clipped to white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info) \
            or (im.mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _from_numpy(a: np.ndarray) -> Image.Image:
    """HWC (or HW) array -> PIL. uint8 as is; uint16 scaled by 1/257; floats taken as 0..1 (or 0..255 if larger)."""
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"numpy image of shape {a.shape} looks channel-first; pass HWC (height, width, channels)")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or 0 in a.shape:
        raise ValueError(f"numpy image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError("numpy image contains NaN or inf")
        a = np.clip(np.rint(a * 255.0 if a.max(initial=0) <= 1.0 else a), 0, 255).astype(np.uint8)
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if a.min(initial=0) < 0 or a.max(initial=0) > 255:
            raise ValueError(f"numpy image of dtype {a.dtype} has values outside 0..255")
        a = a.astype(np.uint8)
    _check_pixels(a.shape[1], a.shape[0], "numpy image")
    mode = "L" if a.ndim == 2 else "RGB" if a.shape[-1] == 3 else "RGBA"
    return Image.fromarray(np.ascontiguousarray(a), mode)


def load_image(src: ImageSource) -> Image.Image:
    """Anything PIL opens (path, bytes, file object, PIL image, numpy HWC array; a one-page PDF too) ->
    an RGB image, EXIF orientation applied. Corrupt, empty, truncated or huge files raise ValueError
    naming the file."""
    if isinstance(src, Image.Image):
        _check_pixels(*src.size, "PIL image")
        return to_rgb(ImageOps.exif_transpose(src))
    if isinstance(src, np.ndarray):
        return to_rgb(_from_numpy(src))
    if isinstance(src, torch.Tensor):
        raise ValueError("pass images as PIL, numpy HWC or a file, not a torch tensor (it would already be normalised)")
    name = _name(src)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: image file not found")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file (0 bytes)")
    elif isinstance(src, (bytes, bytearray)):
        if not src:
            raise ValueError("empty image bytes (0 bytes)")
    if is_pdf(src):
        pages = load_pdf(src)
        if len(pages) != 1:
            raise ValueError(f"{name}: PDF with {len(pages)} pages; use load_pdf(...) / pages=... for multi-page input")
        return pages[0]
    fp = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else src
    frame = src.index if isinstance(src, Frame) else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own guard below is the rule
            with Image.open(os.fspath(src) if frame is not None else fp) as im:
                pages = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
                if frame is not None:
                    if not 0 <= frame < pages:
                        raise ValueError(f"{src.path}: page {frame + 1} requested but the file has {pages} page(s)")
                    im.seek(frame)
                elif pages > 1:  # never only page 1 of it without a word
                    raise ValueError(f"{name}: TIFF with {pages} pages; read them with got.processor.image_pages / "
                                     "load_images (got chat answers each page)")
                _check_pixels(*im.size, name)
                im.load()
                return to_rgb(ImageOps.exif_transpose(im))
    except Image.DecompressionBombError as e:  # PIL's own check fires first at 2x its MAX_IMAGE_PIXELS
        raise ValueError(f"{name}: {e} (decompression-bomb guard; raise PIL.Image.MAX_IMAGE_PIXELS and "
                         "got.processor.MAX_PIXELS if the file is trusted)") from None
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image PIL can read (unknown or corrupt format)") from None
    except (OSError, SyntaxError, struct.error, EOFError) as e:  # PIL's decoders raise these on bad data
        raise ValueError(f"{name}: truncated or corrupt image ({e})") from None


def _pages_phrase(n_pages: int) -> str:
    return f"the document has {n_pages} page{'s' if n_pages != 1 else ''} (pages count from 1)"


def parse_pages(pages: str | int | Iterable[int] | None, n_pages: int, source: str) -> list[int]:
    """THE page-range parser: '1-3,5,8-' / 2 / [1, 2] / None (all) -> sorted, distinct 1-based page numbers, checked
    against the document's `n_pages` before anything is built (`1-999999999` of a 3-page PDF is refused in one
    line, not expanded into a billion-entry list)."""
    if n_pages == 0:
        raise ValueError(f"{source}: the document has no pages")
    if pages is None:
        return list(range(1, n_pages + 1))
    if isinstance(pages, (int, np.integer)) and not isinstance(pages, bool):
        pages = [int(pages)]
    if isinstance(pages, str):
        wanted: set[int] = set()
        for part in pages.replace(" ", "").split(","):
            m = re.fullmatch(r"(\d+)?-(\d+)?|(\d+)", part)
            if not m or part == "-":
                raise ValueError(f"{source}: bad page range {pages!r}; use e.g. 1-3,5 or 4- (pages count from 1)")
            huge = 10**18  # a number of more digits than any page count: never converted whole
            first, last = (int(g) if len(g) < 19 else huge
                           for g in (m.group(3) or m.group(1) or "1", m.group(3) or m.group(2) or str(n_pages)))
            if first < 1 or last > n_pages:
                raise ValueError(f"{source}: page {part} requested but {_pages_phrase(n_pages)}")
            if first > last:
                raise ValueError(f"{source}: page range {part} runs backwards; write it as {last}-{first}")
            wanted.update(range(first, last + 1))  # at most n_pages numbers
        return sorted(wanted)
    try:
        wanted_list = [int(p) for p in pages]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{source}: pages must be '1-3,5', a page number or a list of them, got {pages!r}") from None
    bad = [p for p in wanted_list if not 1 <= p <= n_pages]
    if bad or not wanted_list:
        raise ValueError(f"{source}: page {bad[0] if bad else pages} requested but {_pages_phrase(n_pages)}")
    return sorted({int(p) for p in wanted_list})


def _page_numbers(pages: Any, count: int, name: str) -> list[int]:
    """1-based page selection: None (all), 3, [1, 3], range(1, 4) or "1-3,5" -> 0-based indices (a string goes
    through parse_pages; a list keeps its order)."""
    if pages is None:
        return list(range(count))
    if isinstance(pages, str):
        return [p - 1 for p in parse_pages(pages, count, name)]
    elif isinstance(pages, int):
        pages = [pages]
    pages = list(pages)
    bad = [p for p in pages if not isinstance(p, (int, np.integer)) or not 1 <= p <= count]
    if bad or not pages:
        raise ValueError(f"{name}: page(s) {bad or pages} out of range; the PDF has {count} page(s), numbered from 1")
    return [int(p) - 1 for p in pages]


def open_pdf(src: str | os.PathLike | bytes, name: str | None = None):
    """An open pymupdf document (use as a context manager); one clear line for missing, unreadable, encrypted or
    empty PDFs, naming the file."""
    import pymupdf

    name = name or _name(src)
    if isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
        raise FileNotFoundError(f"{name}: PDF file not found")
    try:
        doc = pymupdf.open(stream=bytes(src), filetype="pdf") if isinstance(src, (bytes, bytearray)) else pymupdf.open(src, filetype="pdf")
    except Exception as e:  # pymupdf raises its own FileDataError / RuntimeError types
        raise ValueError(f"{name}: not a readable PDF ({e})") from None
    problem = ("PDF is encrypted (password protected); decrypt it first" if doc.needs_pass
               else "PDF has no pages" if doc.page_count == 0 else None)
    if problem:
        doc.close()
        raise ValueError(f"{name}: {problem}")
    return doc


def load_pdf(src: str | os.PathLike | bytes, dpi: int = 144, pages: Any = None) -> list[Image.Image]:
    """Render PDF pages to RGB images with pymupdf. pages are 1-based: None (all), an int, a list or "1-3,5"."""
    import pymupdf

    name = _name(src)
    if not 18 <= dpi <= 1200:
        raise ValueError(f"dpi must be between 18 and 1200, got {dpi}")
    with open_pdf(src, name) as doc:
        out = []
        for i in _page_numbers(pages, doc.page_count, name):
            page = doc[i]
            w, h = (round(page.rect.width * dpi / 72), round(page.rect.height * dpi / 72))
            _check_pixels(w, h, f"{name} page {i + 1}")
            pix = page.get_pixmap(dpi=dpi, alpha=False, colorspace=pymupdf.csRGB)
            out.append(Image.frombytes("RGB", (pix.width, pix.height), pix.samples))
    return out


def load_images(src: ImageSource | Sequence[ImageSource], dpi: int = 144, pages: Any = None) -> list[Image.Image]:
    """One image, a list of images (pages) or a PDF -> list of RGB images."""
    if isinstance(src, (list, tuple)):
        if not src:
            raise ValueError("empty list of images")
        if pages is not None:
            raise ValueError("pages= selects pages of ONE PDF, not of a list of images")
        return [im for s in src for im in load_images(s, dpi=dpi)]
    if is_pdf(src):
        return load_pdf(src, dpi=dpi, pages=pages)
    doc = image_pages(src) if isinstance(src, (str, os.PathLike)) else [src]
    if len(doc) > 1:  # a multi-page TIFF: every page, like a PDF
        return [load_image(doc[p - 1]) for p in parse_pages(pages, len(doc), _name(src))]
    if pages is not None:
        raise ValueError(f"{_name(src)}: pages= only applies to PDFs and multi-page TIFFs")
    return [load_image(src)]


# ---- tiling ------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """(cols, rows) with min <= cols*rows <= max, sorted by tile count (stable, cols-major: transformers' order)."""
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles]
    return tuple(sorted(grids, key=lambda g: g[0] * g[1]))


def choose_grid(width: int, height: int, tile_size: int, min_tiles: int = 1, max_tiles: int = 6) -> tuple[int, int]:
    """InternVL / GOT dynamic tiling: the grid whose cols/rows is closest to width/height; on a tie the
    later (bigger) grid wins if the image area exceeds half the grid's pixel area."""
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got min_tiles={min_tiles}, max_tiles={max_tiles}")
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for c, r in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - c / r)
        if diff < best_diff:
            best, best_diff = (c, r), diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * c * r:
            best = (c, r)
    return best


class ImageProcessor:
    """GOT's image pipeline for one model size: `image_size` is the tile side S (1024 base, smaller presets less),
    or (height, width) for a text-line preset."""

    def __init__(self, image_size: int | Sequence[int] = 1024, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD):
        if isinstance(image_size, int):
            self.image_size, self.line_hw = int(image_size), None
        else:
            h, w = (int(v) for v in image_size)
            self.image_size, self.line_hw = (h if h == w else (h, w)), (None if h == w else (h, w))
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)

    def preprocess(self, image: ImageSource) -> torch.Tensor:
        """One image -> (3, S, S) float32: bicubic resize to S x S (aspect not kept), /255, CLIP mean/std.

        A (height, width) processor keeps the aspect instead, as line recognisers do: the image is scaled to the
        height (narrowed only when it would not fit the width) and padded on the right with its own background,
        so short words are not stretched across the whole input."""
        im = load_image(image)
        if self.line_hw is not None:
            return self._line(im)
        if im.size != (self.image_size, self.image_size):
            im = im.resize((self.image_size, self.image_size), Image.BICUBIC)
        return torch.from_numpy(np.ascontiguousarray(self._normalise(np.asarray(im)).transpose(2, 0, 1)))

    def _normalise(self, a: np.ndarray) -> np.ndarray:
        """uint8 (..., 3) -> float32 (x / 255 - mean) / std."""
        return (a.astype(np.float32) / 255.0 - self.mean) / self.std

    def _line(self, im: Image.Image) -> torch.Tensor:
        """fit_line's picture, normalised: the text part pixel by pixel, the padding as one colour (the same
        values; a real page's ~60 crops are ~60% padding, which was 11% of reading a page)."""
        h, width = self.line_hw
        im, fill = _line_scaled(im, h, width)
        out = np.empty((3, h, width), dtype=np.float32)
        out[:, :, :im.width] = self._normalise(np.asarray(im)).transpose(2, 0, 1)
        if im.width < width:
            out[:, :, im.width:] = self._normalise(np.asarray(fill, dtype=np.uint8)).reshape(3, 1, 1)
        return torch.from_numpy(out)

    def tile(self, image: ImageSource, min_tiles: int = 1, max_tiles: int = 6) -> list[Image.Image]:
        """Multi-crop: resize to (S*cols, S*rows), cut row-major, then the whole-image thumbnail LAST
        (only when there is more than one tile)."""
        im = load_image(image)
        s = self._square("multi-crop")
        cols, rows = choose_grid(im.width, im.height, s, min_tiles, max_tiles)
        big = im.resize((s * cols, s * rows), Image.BICUBIC)
        tiles = [big.crop((c * s, r * s, (c + 1) * s, (r + 1) * s)) for r in range(rows) for c in range(cols)]
        if len(tiles) > 1:
            tiles.append(im.resize((s, s), Image.BICUBIC))
        return tiles

    def num_tiles(self, width: int, height: int, crop: bool = False, min_tiles: int = 1, max_tiles: int = 6) -> int:
        """How many (S x S) inputs an image of this size becomes, without touching pixels."""
        if not crop:
            return 1
        c, r = choose_grid(width, height, self._square("multi-crop"), min_tiles, max_tiles)
        return c * r + (1 if c * r > 1 else 0)

    def __call__(self, images: ImageSource | Sequence[ImageSource], crop: bool = False, min_tiles: int = 1,
                 max_tiles: int = 6, dpi: int = 144, pages: Any = None) -> torch.Tensor:
        """-> (N, 3, S, S). One image: N = 1, or the tiles + thumbnail with crop=True. Several images or a
        multi-page PDF: N = pages (multi-page; each page resized whole, crop not allowed)."""
        ims = load_images(images, dpi=dpi, pages=pages)
        if crop:
            if len(ims) != 1:
                raise ValueError(f"multi-crop works on one image; got {len(ims)} (use multi-page for several)")
            ims = self.tile(ims[0], min_tiles, max_tiles)
        return torch.stack([self.preprocess(im) for im in ims])

    def _square(self, what: str) -> int:
        if self.line_hw is not None:
            raise ValueError(f"{what} needs square tiles; this model reads {self.line_hw[0]}x{self.line_hw[1]} "
                             "text lines (read pages through the layout route, docs/default_model.md)")
        return self.image_size

    def __repr__(self) -> str:
        return f"ImageProcessor(image_size={self.image_size})"


def fit_line(im: Image.Image, height: int, width: int) -> Image.Image:
    """A text-line crop -> exactly (width x height): scaled to the height keeping the aspect (narrowed if too
    wide), padded on the right with the median colour of the image's border (the paper, for text lines)."""
    im, fill = _line_scaled(im, height, width)
    if im.width == width:
        return im
    out = Image.new("RGB", (width, height), fill)
    out.paste(im, (0, 0))
    return out


def _line_scaled(im: Image.Image, height: int, width: int) -> tuple[Image.Image, tuple[int, int, int]]:
    """fit_line's two halves: the crop scaled to the height (narrowed to fit), and the padding colour."""
    w = max(1, min(width, round(im.width * height / max(1, im.height))))
    im = im.resize((w, height), Image.BICUBIC)
    if w == width:
        return im, (0, 0, 0)
    a = np.asarray(im)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    return im, tuple(int(v) for v in np.median(border, axis=0))


class GOTProcessor:
    """THE input path: images (one, or the pages of a document) + a `Query` -> pixel tiles + token ids.

    Training (`got.data.SampleEncoder`, with the answer turns), inference (`got.inference.GOT`) and evaluation
    (`got.evaluate.GOTSystem`, through GOT) all call it, so the tiles a query gets (multi-crop only when the Query
    says crop, one tile per page otherwise) and its `<imgpad>` count cannot differ between them."""

    def __init__(self, tokenizer, image_size: int | Sequence[int], image_token_len: int):
        self.tokenizer = tokenizer
        self.image = ImageProcessor(image_size=image_size)
        self.image_token_len = image_token_len

    def pixels(self, images: Sequence[Image.Image], query) -> torch.Tensor:
        """(tiles, 3, H, W): the multi-crop tiles (+ thumbnail) of one image when `query.crop`, else one per image."""
        if query.crop and len(images) == 1:
            return self.image(images[0], crop=True, max_tiles=query.max_tiles)
        return torch.stack([self.image.preprocess(im) for im in images])

    def prompt(self, images: Sequence[Image.Image], query) -> tuple[torch.Tensor, list[int]]:
        """Inference: (pixel_values, prompt ids ending in `<|im_start|>assistant\\n`)."""
        from got.prompts import encode_prompt

        pixels = self.pixels(images, query)
        text = query.text(images[0].size, multi_page=len(images) > 1)
        return pixels, encode_prompt(self.tokenizer, text, self.image_token_len * pixels.shape[0])

    def conversation(self, images: Sequence[Image.Image], turns,
                     max_tiles: int = 6) -> tuple[torch.Tensor | None, list[int], list[int]]:
        """Training: (pixel_values or None, input_ids, labels); the Query is read from the first human turn."""
        from dataclasses import replace

        from got.prompts import encode_conversation, query_of

        query = replace(query_of(turns), max_tiles=max_tiles)
        pixels = self.pixels(images, query) if images else None
        n = 0 if pixels is None else pixels.shape[0]
        return (pixels, *encode_conversation(self.tokenizer, turns, n * self.image_token_len))
