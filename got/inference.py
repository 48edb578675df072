"""Chat inference: every GOT prompt mode from Python (`GOT`) and the shell (`got chat`).

    model = GOT.from_pretrained("runs/stage3")                  # bf16 where the CPU has it, CUDA bf16
    model.chat("page.png")                                      # plain OCR -> str
    model.chat("page.png", mode="format", box=(10, 10, 400, 200))
    model.chat("paper.pdf", pages="1-3")                        # one answer per page -> list[str]
    model.chat("paper.pdf", pages="1-3", multi_page=True)      # one multi-page prompt -> str
    for piece in model.chat("page.png", stream=True): print(piece, end="")
    model.chat_batch(["a.png", "b.jpg", {"image": "c.png", "color": "red"}])

Why batching is safe: prompts are LEFT-padded and the decoder gets position ids from the attention mask,
so a prompt's tokens see exactly what they would see alone; greedy decoding then gives the same text in a
batch of 8 as one by one (tests/test_inference.py checks it with mixed tile counts).

Generation follows the original GOT: greedy, `no_repeat_ngram_size=20` for single-image prompts (plain,
format, box, color, multi-crop; not multi-page), stop at `<|im_end|>` which is stripped with surrounding
whitespace. On top of that `got.generation.RepetitionGuard` ends a sequence stuck in a loop, the failure GOT
users hit most, instead of burning all 4096 new tokens on it.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from got.checks import MAX_BATCH_SIZE, MAX_NEW_TOKENS, MAX_TILES
from got.processor import Pages, image_pages, is_pdf, open_pdf, parse_pages  # noqa: F401  (parse_pages: public here)
from got.prompts import Query, build_query

if TYPE_CHECKING:
    from transformers.generation.stopping_criteria import StoppingCriteria
    from transformers.generation.streamers import BaseStreamer

ImageLike = str | os.PathLike | Image.Image | np.ndarray | bytes
IMAGE_SUFFIXES = {  # known image types; anything else PIL cannot open is 'unsupported'
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
MIN_CTC_CONFIDENCE = 0.4  # mean per-character probability under which a crop's CTC read is taken for no text
PAGE_WORKERS = 4  # a line model on CPU reads this many pages at once at most (GOT.map_pages), one per core
LINE_TOKENS = 128  # a line crop's answer: 1024 px hold ~130 characters, ~40 BPE tokens; a runaway stops here
CHAT_OPTIONS = ("mode", "box", "color", "crop", "max_tiles", "pages", "multi_page")  # the fields of a Query


def as_query(query: Query | None, options: dict) -> Query:
    """A Query, from `query` or from its fields given as keywords (not both)."""
    unknown = set(options) - set(CHAT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}; allowed: {', '.join(CHAT_OPTIONS)}")
    if query is not None and options:
        raise TypeError("give a Query or its fields as keywords, not both")
    return query if query is not None else Query(**options)


# ---- one request, one answer ---------------------------------------------------------------------------------
@dataclass
class Prompt:
    """One generation request: token ids, image tiles/pages, and where it came from (for reports)."""
    source: str                       # file path, or "<PIL image #3>" etc.
    mode: str                         # plain / format, with +box +color +crop +multi-page
    input_ids: list[int]
    pixel_values: torch.Tensor        # (tiles or pages, 3, S, S)
    multi_page: bool = False
    page: int | None = None           # 1-based page of a PDF answered page by page
    seconds: float = 0.0              # time spent loading / preprocessing
    index: int = 0                    # position of the input in the caller's list
    segments: list | None = None      # line route: one got.layout.Segment per row of pixel_values
    ctc: dict = field(default_factory=dict)  # line route: row -> (text, confidence) already read by the CTC head

    def parts(self) -> list["Prompt"]:
        """A line-route page as one single-line prompt per segment (the same ids, one crop each)."""
        return [Prompt(self.source, self.mode, self.input_ids, self.pixel_values[i:i + 1], page=self.page,
                       index=self.index) for i in range(len(self.segments or ()))]

    def model_rows(self) -> list[int]:
        """The segments the model reads: all but those known without it (dot leaders, got.layout)."""
        return [i for i, g in enumerate(self.segments or ()) if g.text is None]


def left_padded(prompts: Sequence[Prompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, pixel_values) of a batch, LEFT-padded so every prompt ends at the last column."""
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p.input_ids):] = torch.tensor(p.input_ids)
        mask[b, width - len(p.input_ids):] = 1
    return ids, mask, torch.cat([p.pixel_values for p in prompts])


@dataclass
class Answer:
    source: str
    mode: str
    text: str
    tokens: int                       # generated tokens, stop token excluded
    seconds: float                    # preprocessing + this prompt's share of its batch's generation time
    finish: str                       # "stop" (<|im_end|>), "length" (max_new_tokens), "repetition" (guard)
    page: int | None = None
    index: int = 0

    def record(self) -> dict:
        """The JSON line `got chat --out` writes."""
        r = {"path": self.source, "mode": self.mode, "text": self.text, "seconds": round(self.seconds, 3),
             "tokens": self.tokens, "finish": self.finish}
        if self.page is not None:
            r["page"] = self.page
        return r


# ---- generation helpers ----------------------------------------------------------------------------------------
def _repetition_guard():
    """GOT.repetition_guard's default: a fresh got.generation.RepetitionGuard (imported on first generation)."""
    from got.generation import RepetitionGuard

    return RepetitionGuard()


def _use_decode_attention(decoder) -> None:
    from got.decode import use_decode_attention

    use_decode_attention(decoder)


class _Stopped(Exception):
    """A line-route stream whose consumer has stopped reading."""


def _bf16_cpu() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 / AMX)? Emulated bf16 is slower than fp32."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        try:
            if getattr(torch.cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            pass
    return False


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    lib = ctypes.CDLL(name) if name and sys.platform.startswith("linux") else None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None


def _trim_memory() -> None:
    """Give the memory freed so far back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    if _libc() is not None:
        _libc().malloc_trim(0)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None / "auto": bf16 on CUDA and on CPUs with native bf16, else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if _bf16_cpu() else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16") from None


# parse_pages: THE page-range parser is got.processor.parse_pages (imported above; this module's name for it stays)


def _source_name(item, index: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, Pages):  # the pages of a multi-page TIFF: named after the file
        return item.name
    return f"<{type(item).__name__} #{index}>"


# ---- the API -----------------------------------------------------------------------------------------------------
class GOT:
    """A loaded model + tokenizer + image processor, with GOT's chat modes on top."""

    def __init__(self, model, tokenizer, dtype: torch.dtype | None = None, compile: bool = False):
        from got.processor import GOTProcessor

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.device = model.device
        self.dtype = dtype or model.dtype
        # CPU bf16: autocast catches any fp32 leftovers.
        self.autocast = self.device.type == "cpu" and self.dtype == torch.bfloat16
        if self.device.type == "cpu":  # see decode_attention and ChunkedKVLayer
            model.on_decoder(_use_decode_attention)
        # CPU: the one-token decode step compiled by inductor (got.decode.compile_config); off: eager
        self.compile = compile and self.device.type == "cpu"
        self.inputs = GOTProcessor(tokenizer, self.config.image_size, self.config.image_token_len)
        self.processor = self.inputs.image
        # A text-line preset (non-square input) reads pages through got.layout, line by line (docs/default_model.md)
        self.line_model = self.config.vision.reads_lines
        self.line_batch = 32  # line crops generated together (a page's segments; short prompts, short answers)
        # a crop at most 3/4 as wide (for its height) as the input: ~75 characters, within the 128 tokens' reach
        self.max_aspect = 0.75 * self.processor.line_hw[1] / self.processor.line_hw[0] if self.line_model else None
        self.stop_ids = [tokenizer.im_end_id, tokenizer.endoftext_id]
        # Passed to transformers' generate(); single-image prompts add no_repeat_ngram_size (GOT's 20).
        self.generation: dict = {"do_sample": False, "num_beams": 1}
        self.no_repeat_ngram_size = 20
        # A factory so every generate() call gets a fresh guard; None switches the guard off.
        self.repetition_guard: Callable[[], StoppingCriteria] | None = _repetition_guard
        self.max_positions = int(self.config.decoder.get("max_position_embeddings", 1 << 30))

    # ---- loading ----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, dtype: str | torch.dtype | None = None,
                        device: str | torch.device | None = None, int8: bool = False, int4: bool = False,
                        compile: bool = False) -> "GOT":
        """Load a model: None or "default" (the shipped default model), a model / checkpoint / training run
        directory, or a repo id in the local Hugging Face cache (got.checkpoint.resolve_model_dir).

        dtype None/"auto": bf16 on CUDA and on CPUs with native bf16, else fp32. int8 / int4 (CPU): the
        decoder's Linear layers get weight-only int8 / int4 weights (got.quantize), computing in `dtype`; the
        vision tower and projector keep `dtype`. compile (CPU): the one-token decode step is compiled by inductor
        on first use (tens of seconds, cached on disk under TORCHINDUCTOR_CACHE_DIR); a failed compile runs eager.
        """
        from got.checkpoint import load_pretrained, resolve_model_dir

        path = resolve_model_dir(path)
        missing = [] if (path / "config.json").is_file() else ["config.json"]
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")) \
                and not any(path.glob("*.safetensors.index.json")):
            missing.append("weights (model.safetensors)")
        if missing:
            raise FileNotFoundError(f"{path}: model directory is missing {' and '.join(missing)}")
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = resolve_dtype(dtype, device)
        if int8 and int4:
            raise ValueError("choose one of int8 and int4")
        if (int8 or int4) and device.type != "cpu":
            raise ValueError("weight-only int8 / int4 runs on CPU only; drop --int8 / --int4 or use --device cpu")
        # a model whose CTC head answers loads its decoder (and transformers) only if something asks for it
        model, tokenizer = load_pretrained(path, dtype=dtype, device=device, lazy_decoder=True)
        if int8 or int4:
            from got.quantize import quantize_weights

            model.on_decoder(functools.partial(quantize_weights, bits=8 if int8 else 4))
        return cls(model, tokenizer, dtype=dtype, compile=compile)

    # ---- inputs -> prompts -----------------------------------------------------------------------------------
    def prepare(self, item: ImageLike | Sequence[ImageLike], query: Query | None = None, *, index: int = 0,
                **options) -> list[Prompt]:
        """Turn one input into its prompt(s): one for an image or a multi-page prompt, one per page when a
        PDF (or a list of images) is answered page by page. `query` (or its fields as keywords: mode, box,
        color, crop, max_tiles, pages, multi_page) says what is asked. Raises ValueError / FileNotFoundError
        naming the input and the problem."""
        return list(self.iter_prompts(item, query, index=index, **options))

    def iter_prompts(self, item, query: Query | None = None, *, index: int = 0, **options) -> Iterator[Prompt]:
        """Lazy `prepare`: a 300-page PDF answered page by page holds one page in memory at a time."""
        from got.processor import load_image, load_pdf

        source = _source_name(item, index)
        t0 = time.perf_counter()
        try:
            q = as_query(query, options)
            build_query(q.mode)  # an unknown mode fails here, before any file is read
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None
        if q.crop and q.multi_page:
            raise ValueError(f"{source}: crop (multi-crop) and multi_page cannot be combined")
        if (q.box is not None or q.color is not None) and (q.crop or q.multi_page):
            raise ValueError(f"{source}: box / color prompts take one whole image; drop crop / multi_page")
        if isinstance(item, (list, tuple)):  # a document given as images
            if not item:
                raise ValueError(f"{source}: empty list of pages")
            wanted = parse_pages(q.pages, len(item), source)
            loaders = [(p, functools.partial(self._load_image, item[p - 1], source, load_image)) for p in wanted]
        elif is_pdf(item):
            wanted = parse_pages(q.pages, self._pdf_page_count(item, source), source)
            loaders = [(p, functools.partial(self._load_pdf_page, item, p, source, load_pdf)) for p in wanted]
        else:
            if q.pages not in (None, 1, "1", [1]):
                raise ValueError(f"{source}: pages={q.pages!r} given but this input is a single image")
            loaders = [(None, functools.partial(self._load_image, item, source, load_image))]
        label = q.mode + ("+box" if q.box is not None else "") + ("+color" if q.color is not None else "") \
            + ("+crop" if q.crop else "") + ("+multi-page" if q.multi_page and len(loaders) > 1 else "")
        if self.line_model:
            refused = [what for what, on in (("format", q.mode == "format"), ("color", q.color is not None),
                                             ("crop", q.crop), ("multi_page", q.multi_page and len(loaders) > 1)) if on]
            if refused:
                raise ValueError(f"{source}: this model reads text lines (plain OCR, optionally inside a box); "
                                 f"it does not take {', '.join(refused)}")
            for page, load in loaders:
                t0 = t0 if page is None else time.perf_counter()
                yield self._line_prompt(source, label, load(), q, page, t0, index)
                _trim_memory()  # what laying the page out freed, back to the OS before the next page
            return
        if q.multi_page and len(loaders) > 1:
            yield self._prompt(source, label, [load() for _, load in loaders], q, None, t0, index)
            return
        if q.multi_page:  # a one-page document: the single-image prompt the model knows, still one answer
            loaders = [(None, loaders[0][1])]
        for page, load in loaders:
            t0 = t0 if page is None else time.perf_counter()
            yield self._prompt(source, label, [load()], q, page, t0, index)

    def _line_prompt(self, source, label, image, query: Query, page, t0, index) -> Prompt:
        """The line route: the page (or the box of it) cut into line segments in reading order, one crop each."""
        from got.layout import line_segments

        where = source if page is None else f"{source} page {page}"
        box = query.pixel_box(image.size)
        if box is not None:
            build_query("plain", box=box, image_size=image.size)  # the same box checks as a page model
            x0, y0, x1, y1 = box if len(box) == 4 else (*box, *box)
            box = (max(0, x0), max(0, y0), min(image.width, x1), min(image.height, y1))
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                raise ValueError(f"{where}: box {list(box)} holds no pixels of the {image.width}x{image.height} image")
            segments = line_segments(image, box, self.max_aspect)
            pixels, probed = self._crops(image, segments), {}
        else:
            image, segments, pixels, probed = self._upright(image)
        prompt = self._prompt(source, label, [image.crop(segments[0].box) if segments else image], Query(), page,
                              t0, index)
        prompt.pixel_values = prompt.pixel_values[:0] if pixels is None else pixels
        prompt.segments, prompt.multi_page, prompt.ctc = segments, False, probed
        return prompt

    def _crops(self, image: Image.Image, segments: list) -> torch.Tensor | None:
        """The segments' crops as model input (None for none)."""
        crops = [image.crop(g.box) for g in segments]
        return self.inputs.pixels(crops, Query()).to(self.dtype) if crops else None

    @torch.inference_mode()
    def _upright(self, image: Image.Image, probe: int = 8) -> tuple[Image.Image, list, torch.Tensor | None, dict]:
        """(page, its line segments, their crops as model input, the CTC reads of the probed segments: row -> (text,
        confidence)), the page turned back if it was turned by 90, 180 or 270 degrees (PP-OCR's direction
        classifier, done with the tower's CTC head): the first `probe` line crops are read as the page stands and,
        unless that read is confident, the page is turned each way and laid out again; the most confident turn wins
        if it beats the page as it stands by 0.08 over at least 20 characters (a word or two cannot tell). The
        probe's reads are the page's first reads (the tower reads a crop the same alone or in a batch). Without a
        CTC head the page is kept as it is."""
        from got.layout import line_segments

        def read(page: Image.Image, turned: bool) -> tuple[float, int, Image.Image, list, torch.Tensor | None, dict]:
            # a turned page's layout is mostly nonsense (one crop per letter column: 500-600 on a real page), so
            # only its probe rows are cropped: 8 crops, not 0.5 GB of them
            segments = line_segments(page, max_aspect=self.max_aspect)
            rows = [i for i, g in enumerate(segments) if g.text is None][:probe] if tower.ctc_head is not None else []
            pixels = self._crops(page, [segments[i] for i in rows] if turned else segments)
            if not rows:
                return 0.0, 0, page, segments, pixels, {}
            with self._autocast():
                reads = tower.ctc_read((pixels if turned else pixels[rows]).to(self.device))
            chars = sum(len(t) for t, _ in reads)
            score = sum(conf * len(t) for t, conf in reads) / chars if chars else 0.0
            return score, chars, page, segments, pixels, dict(zip(rows, reads))

        tower = self.model.vision_tower
        score, _, *standing = read(image, False)
        if score >= 0.9 or tower.ctc_head is None:
            return tuple(standing)
        turns = [read(image.rotate(angle, expand=True), True) for angle in (180, 90, 270)]
        best_score, chars, page, segments, _, probed = max(turns, key=lambda r: r[0] if r[1] >= 20 else -1.0)
        if chars >= 20 and best_score > score + 0.08:
            return page, segments, self._crops(page, segments), probed
        return tuple(standing)

    def _prompt(self, source, label, images, query: Query, page, t0, index) -> Prompt:
        """One prompt through the one input path (got.processor.GOTProcessor)."""
        try:
            pixels, ids = self.inputs.prompt(images, query)
        except ValueError as e:
            raise ValueError(f"{source}{'' if page is None else f' page {page}'}: {e}") from None
        if len(ids) >= self.max_positions:
            raise ValueError(f"{source}: the prompt needs {len(ids)} tokens ({pixels.shape[0]} tiles/pages) but the "
                             f"model takes at most {self.max_positions}; use fewer pages or --max-tiles")
        return Prompt(source=source, mode=label, input_ids=ids, pixel_values=pixels.to(self.dtype),
                      multi_page=len(images) > 1, page=page, seconds=time.perf_counter() - t0, index=index)

    @staticmethod
    def _load_image(item, source: str, load_image) -> Image.Image:
        if not isinstance(item, (str, os.PathLike, Image.Image, np.ndarray, bytes, bytearray)):
            raise ValueError(f"{source}: unsupported input type {type(item).__name__}; give a path, PIL image, "
                             f"numpy HWC array, image/PDF bytes or a list of pages")
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            raise ValueError(f"{source}: is a directory, not an image or PDF")
        try:
            return load_image(item)
        except ValueError as e:
            suffix = Path(item).suffix.lower() if isinstance(item, (str, os.PathLike)) else ""
            if suffix and suffix not in IMAGE_SUFFIXES and "not an image PIL can read" in str(e):
                raise ValueError(f"{source}: unsupported file type {suffix!r}; give an image or a PDF") from None
            raise ValueError(e if str(e).startswith(source) else f"{source}: {e}") from None
        except FileNotFoundError as e:
            raise FileNotFoundError(e if str(e).startswith(source) else f"{source}: {e}") from None
        except OSError as e:  # permissions, I/O errors
            raise ValueError(f"{source}: cannot read ({e})") from None

    @staticmethod
    def _pdf_page_count(item, source: str) -> int:
        with open_pdf(item, source) as doc:
            return doc.page_count

    @staticmethod
    def _load_pdf_page(item, page: int, source: str, load_pdf) -> Image.Image:
        try:
            return load_pdf(item, pages=[page])[0]
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(e if str(e).startswith(source) else f"{source} page {page}: {e}") from None

    # ---- generation ------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 4096, batch_size: int = 8,
                 on_batch: Callable[[list[Answer]], None] | None = None) -> list[Answer]:
        """Answers in the order of `prompts`. Batches group prompts of equal generation settings and similar
        length (less padding); results do not depend on the grouping."""
        answers: list[Answer | None] = [None] * len(prompts)
        lines = [i for i, p in enumerate(prompts) if p.segments is not None]
        for i, answer in zip(lines, self.map_pages(lambda i: self._read_lines(prompts[i], max_new_tokens), lines)):
            answers[i] = answer
            if on_batch:
                on_batch([answer])
        order = sorted((i for i, p in enumerate(prompts) if p.segments is None),
                       key=lambda i: (prompts[i].multi_page, len(prompts[i].input_ids)))
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and stop - start < batch_size \
                    and prompts[order[stop]].multi_page == prompts[order[start]].multi_page:
                stop += 1
            idx = order[start:stop]
            done = self._generate_batch([prompts[i] for i in idx], max_new_tokens)
            for i, a in zip(idx, done):
                answers[i] = a
            if on_batch:
                on_batch(done)
            start = stop
        return answers  # type: ignore[return-value]

    def map_pages(self, fn: Callable, items: Sequence) -> Iterator:
        """fn(item) for each item, yielded in order. A line model on CPU works on PAGE_WORKERS pages at once
        (one per core, threads with one torch thread each): a page's small ops use two cores worse than two
        pages use one each (real pages 1.3x, docs/default_model.md). Other models, one item at a time (their
        batches use the cores)."""
        workers = min(PAGE_WORKERS, torch.get_num_threads(), len(items))
        if not self.line_model or self.device.type != "cpu" or self.compile:
            yield from map(fn, items)
            return

        def page(item):
            try:
                return fn(item)
            finally:  # glibc keeps what a page freed, in one arena per thread: real pages' peak RSS 1.07 -> 0.92 GB
                _trim_memory()

        if workers < 2:
            yield from map(page, items)
            return
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the pool's fresh threads start with one torch thread each
        try:
            with ThreadPoolExecutor(workers) as pool:
                yield from pool.map(page, items)
        finally:
            torch.set_num_threads(threads)

    def read_each(self, prepare: Callable[[Any], list[Prompt]], items: Sequence,
                  max_new_tokens: int) -> Iterator[list[Answer]]:
        """A line model's way through many inputs (got eval, chat_batch): each item prepared and read in one go,
        several at once (map_pages), so no core waits for a batch's slowest page between the two steps."""
        return self.map_pages(lambda item: self.generate(prepare(item), max_new_tokens=max_new_tokens), items)

    def _read_lines(self, prompt: Prompt, max_new_tokens: int) -> Answer:
        """A line-route page: segments the CTC head sees no text in are dropped (specks, noise, pictures), the
        rest are read in batches (by the decoder, or by the CTC head where the model's config says it reads
        better: vision.ctc_answers) and joined in reading order."""
        from got.layout import join_segments

        t0 = time.perf_counter()
        reads = self._ctc_reads(prompt.pixel_values, prompt.model_rows(), prompt.ctc)
        if reads is not None and self.config.vision.ctc_answers:
            return Answer(prompt.source, prompt.mode, join_segments(prompt.segments, reads), 0,
                          prompt.seconds + time.perf_counter() - t0, "stop", prompt.page, prompt.index)
        parts, texts = prompt.parts(), [""] * len(prompt.segments)
        keep = prompt.model_rows() if reads is None else [i for i, t in enumerate(reads) if t]
        max_new = min(max_new_tokens, LINE_TOKENS)
        answers = self.generate([parts[i] for i in keep], max_new, self.line_batch) if keep else []
        for i, a in zip(keep, answers):
            texts[i] = a.text
        finish = next((a.finish for a in answers if a.finish != "stop"), "stop")
        return Answer(prompt.source, prompt.mode, join_segments(prompt.segments, texts),
                      sum(a.tokens for a in answers), prompt.seconds + time.perf_counter() - t0, finish,
                      prompt.page, prompt.index)

    @torch.inference_mode()
    def _ctc_reads(self, pixels: torch.Tensor, rows: Sequence[int], known: dict | None = None) -> list[str] | None:
        """The tower's CTC reading of each crop in `rows` ("" for the others; None without a CTC head); `known`:
        rows already read (row -> (text, confidence)). A read below MIN_CTC_CONFIDENCE (noise, specks, pictures)
        is no text."""
        tower = self.model.vision_tower
        if tower.ctc_head is None:
            return None
        known = dict(known or {})
        todo = [i for i in rows if i not in known]
        if todo:
            with self._autocast():
                known.update(zip(todo, tower.ctc_read(pixels[todo].to(self.device))))
        out = [""] * len(pixels)
        for i in rows:
            text, conf = known[i]
            out[i] = text.strip() if conf >= MIN_CTC_CONFIDENCE else ""
        return out

    def _has_text(self, prompt: Prompt) -> list[bool]:
        """Per segment: does the model read it (not known without it, a dot leader) and does the tower's CTC head
        see any character in it (always, without a CTC head)?"""
        rows = prompt.model_rows()
        reads, read = self._ctc_reads(prompt.pixel_values, rows, prompt.ctc), set(rows)
        return [i in read and (reads is None or bool(reads[i])) for i in range(len(prompt.segments))]

    def _autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else nullcontext()

    @torch.inference_mode()
    def _generate_batch(self, batch: list[Prompt], max_new_tokens: int, streamer: BaseStreamer | None = None,
                        extra_stops: Sequence[StoppingCriteria] = ()) -> list[Answer]:
        t0 = time.perf_counter()
        pad = self.tokenizer.endoftext_id
        ids, mask, pixels = left_padded(batch, pad)
        pixels = pixels.to(self.device)
        guard = self.repetition_guard() if self.repetition_guard else None
        from transformers.generation.stopping_criteria import StoppingCriteriaList

        from got.decode import CACHE, ChunkedKVCache, compile_config

        criteria = StoppingCriteriaList([c for c in [guard, *extra_stops] if c is not None])
        kwargs = dict(self.generation)
        if not batch[0].multi_page and self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        max_new = max(1, min(max_new_tokens, self.max_positions - ids.shape[1]))
        if self.device.type == "cpu":
            kwargs[CACHE] = ChunkedKVCache()
            if self.compile:
                kwargs["compile_config"] = compile_config()
        with self._autocast():
            out = self.model.generate(ids.to(self.device), pixels, attention_mask=mask.to(self.device),
                                      max_new_tokens=max_new, eos_token_id=self.stop_ids, pad_token_id=pad,
                                      stopping_criteria=criteria, streamer=streamer, **kwargs)
        share = (time.perf_counter() - t0) / len(batch)
        answers = []
        for b, (p, row) in enumerate(zip(batch, out.tolist())):
            stop_at = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            tokens = row if stop_at is None else row[:stop_at]
            if stop_at is not None and row[stop_at] == self.tokenizer.im_end_id:
                finish = "stop"
            elif guard is not None and guard.fired is not None and bool(guard.fired[b]):
                finish = "repetition"
            else:
                finish = "stop" if stop_at is not None else "length"
            answers.append(Answer(source=p.source, mode=p.mode, text=self.tokenizer.decode(tokens).strip(),
                                  tokens=len(tokens), seconds=p.seconds + share, finish=finish, page=p.page,
                                  index=p.index))
        return answers

    def stream(self, prompt: Prompt, max_new_tokens: int = 4096) -> Iterator[str]:
        """Text pieces of one prompt's answer as they are generated (generation runs in a worker thread).
        A line-route page streams line by line."""
        pieces: queue.Queue = queue.Queue()
        abort = threading.Event()
        end = object()

        def work():
            try:
                if prompt.segments is None:
                    from got.generation import Abort, TextPieceStreamer

                    streamer = TextPieceStreamer(self.tokenizer, pieces.put, self.stop_ids)
                    self._generate_batch([prompt], max_new_tokens, streamer=streamer, extra_stops=[Abort(abort)])
                else:
                    def put(piece: str) -> None:
                        if abort.is_set():  # the consumer stopped: no further chunks
                            raise _Stopped
                        pieces.put(piece)
                    self.generate_streaming(prompt, put, max_new_tokens)
                pieces.put(end)
            except _Stopped:
                pass
            except BaseException as e:  # re-raised in the consumer's thread
                pieces.put(e)

        worker = threading.Thread(target=work, name="got-stream", daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not end:
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            abort.set()
            worker.join()

    def generate_streaming(self, prompt: Prompt, on_text: Callable[[str], None], max_new_tokens: int = 4096,
                           chunk: int = 16) -> Answer:
        """One prompt's Answer, calling `on_text(piece)` as text arrives (in this thread); a line-route page
        calls it once per `chunk` segments read."""
        if prompt.segments is None:
            from got.generation import TextPieceStreamer

            streamer = TextPieceStreamer(self.tokenizer, on_text, self.stop_ids)
            return self._generate_batch([prompt], max_new_tokens, streamer=streamer)[0]
        from got.layout import join_segments

        if self.config.vision.ctc_answers:
            answer = self._read_lines(prompt, max_new_tokens)
            if answer.text:
                on_text(answer.text)
            return answer
        t0, parts = time.perf_counter(), prompt.parts()
        keep = [i for i, ok in enumerate(self._has_text(prompt)) if ok]
        texts, answers, shown = [""] * len(parts), [], ""
        for start in range(0, len(keep), chunk):
            idx = keep[start:start + chunk]
            answers += self.generate([parts[j] for j in idx], min(max_new_tokens, LINE_TOKENS), chunk)
            for j, a in zip(idx, answers[-len(idx):]):
                texts[j] = a.text
            text = join_segments(prompt.segments, texts)
            if text != shown:
                on_text(text[len(shown):])  # segments arrive in reading order: the text only grows
                shown = text
        finish = next((a.finish for a in answers if a.finish != "stop"), "stop")
        return Answer(prompt.source, prompt.mode, shown, sum(a.tokens for a in answers),
                      prompt.seconds + time.perf_counter() - t0, finish, prompt.page, prompt.index)

    # ---- chat ---------------------------------------------------------------------------------------------------
    def chat(self, image: ImageLike | Sequence[ImageLike], query: Query | None = None, *, max_new_tokens: int = 4096,
             stream: bool = False, **options) -> str | list[str] | Iterator[str]:
        """OCR one input. `query` (or its fields as keywords): mode "plain" or "format"; box (x1, y1, x2, y2) in
        pixels of the image, or color red/green/blue for fine-grained OCR; crop for multi-crop (up to max_tiles
        tiles + a thumbnail).

        A PDF (path or bytes) or a list of images is a document: `pages` picks pages ("1-3,5", 2, [1, 2];
        default all); it is answered page by page (-> list[str]) unless multi_page=True (-> one str from
        one multi-page prompt). stream=True returns an iterator of text pieces instead (pages of a
        page-by-page document follow each other, separated by a blank line).
        """
        prompts = self.prepare(image, query, **options)
        single = len(prompts) == 1 and prompts[0].page is None
        if stream:
            return self._stream_all(prompts, max_new_tokens)
        texts = [a.text for a in self.generate(prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))]
        return texts[0] if single else texts

    def _stream_all(self, prompts: list[Prompt], max_new_tokens: int) -> Iterator[str]:
        for i, p in enumerate(prompts):
            if i:
                yield "\n\n"
            yield from self.stream(p, max_new_tokens)

    def chat_batch(self, items: Sequence[ImageLike | Sequence[ImageLike] | dict], query: Query | None = None, *,
                   batch_size: int = 8, max_new_tokens: int = 4096, **options) -> list[str | list[str]]:
        """Many inputs at once, batched; `chat_batch(xs, q)[i] == chat(xs[i], q)` (same text).

        An item may be a dict `{"image": x, "box": [...], ...}` overriding fields of the batch-wide query
        (mode, box, color, crop, max_tiles, pages, multi_page) for that input.
        """
        try:
            base = as_query(query, options)
        except TypeError as e:
            raise TypeError(f"chat_batch(): {e}") from None

        def prepare(i: int) -> list[Prompt]:
            item, q = items[i], base
            if isinstance(item, dict):
                item = dict(item)
                if "image" not in item:
                    raise ValueError(f"item #{i}: a dict item needs an 'image' key")
                image = item.pop("image")
                bad = set(item) - set(CHAT_OPTIONS)
                if bad:
                    raise ValueError(f"item #{i}: unknown options {sorted(bad)}; allowed: {', '.join(CHAT_OPTIONS)}")
                q, item = replace(base, **item), image
            return self.prepare(item, q, index=i)

        def shaped(ps: list[Prompt] | list[Answer], texts: list[str]) -> str | list[str]:
            return texts[0] if len(ps) == 1 and ps[0].page is None else texts

        if self.line_model:
            return [shaped(a, [x.text for x in a]) for a in self.read_each(prepare, range(len(items)), max_new_tokens)]
        per_item = [prepare(i) for i in range(len(items))]
        texts = iter(a.text for a in self.generate([p for ps in per_item for p in ps], max_new_tokens=max_new_tokens,
                                                   batch_size=batch_size))
        return [shaped(ps, [next(texts) for _ in ps]) for ps in per_item]


# ---- CLI -----------------------------------------------------------------------------------------------------------
def _parse_box(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").strip("[]()").split(",")]
    except ValueError:
        raise ValueError(f"--box {text!r}: give pixel coordinates x1,y1,x2,y2 (or a point x,y)") from None
    if len(values) not in (2, 4):
        raise ValueError(f"--box {text!r}: give 4 numbers x1,y1,x2,y2 (or 2 for a point)")
    if not np.isfinite(values).all():  # NaN or infinity
        raise ValueError(f"--box {text!r}: coordinates must be finite numbers")
    return values


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_PDF",
                   help="image files and/or PDFs (a multi-page TIFF is answered page by page, like a PDF)")
    p.add_argument("--model", help="model directory, training run, or cached hub id (default: the shipped default model)")
    p.add_argument("--format", action="store_true", help="formatted output (markdown / LaTeX / kern / SMILES)")
    p.add_argument("--box", help="fine-grained OCR of a region: x1,y1,x2,y2 in pixels")
    p.add_argument("--color", choices=["red", "green", "blue"], help="fine-grained OCR inside a coloured frame")
    p.add_argument("--crop", action="store_true", help="multi-crop: cut large images into tiles + a thumbnail")
    # numbers are read as text and checked in cli_main (got.checks.parse_int), so a bad one is one line naming it
    p.add_argument("--max-tiles", default="6", help=f"tile limit for --crop, 1-{MAX_TILES} (default 6, as GOT)")
    p.add_argument("--multi-page", action="store_true", help="all pages of a PDF in ONE prompt (default: per page)")
    p.add_argument("--pages", help="pages of a PDF or multi-page TIFF, e.g. 1-3,5 or 4- (default: all)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated (batch size 1)")
    p.add_argument("--render", metavar="HTML", help="also write all answers as one standalone HTML page")
    p.add_argument("--out", metavar="JSONL", help="write one JSON line per answer here (default: stdout)")
    p.add_argument("--batch-size", default="8", help="prompts generated together (default 8)")
    p.add_argument("--max-new-tokens", default="4096", help="answer length limit in tokens (default 4096)")
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """How the model is loaded: the options `got chat` and `got serve` share (read by `model_from_args`)."""
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bf16 on CUDA and CPUs with native bf16, else fp32")
    p.add_argument("--int8", action="store_true", help="CPU: weight-only int8 for the decoder's Linear layers")
    p.add_argument("--int4", action="store_true", help="CPU: weight-only int4 (groups of 32) for the decoder's Linear layers")
    p.add_argument("--compile", action="store_true",
                   help="CPU: compile the one-token decode step (inductor; first use takes tens of seconds, then "
                        "cached under TORCHINDUCTOR_CACHE_DIR)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def model_from_args(args: argparse.Namespace, device) -> GOT:
    """`args.model` loaded as `add_model_options` asked (device already checked by the caller)."""
    return GOT.from_pretrained(args.model, dtype=args.dtype, device=device, int8=args.int8, int4=args.int4,
                               compile=args.compile)


def cli_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from got.checks import check_device, check_output, one_line, parse_int, printable

    # every option checked before the model loads or any input is read: one line naming the option
    batch_size = parse_int("--batch-size", args.batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    max_tiles = parse_int("--max-tiles", args.max_tiles, minimum=1, maximum=MAX_TILES)
    max_new_tokens = parse_int("--max-new-tokens", args.max_new_tokens, minimum=1, maximum=MAX_NEW_TOKENS)
    device = check_device("--device", args.device)
    for option, path in (("--out", args.out), ("--render", args.render)):
        if path:
            check_output(option, path, "file")
    query = Query(mode="format" if args.format else "plain", box=_parse_box(args.box), color=args.color,
                  crop=args.crop, max_tiles=max_tiles, pages=args.pages, multi_page=args.multi_page)
    model = model_from_args(args, device)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    records_to_stdout = out is None and not args.stream
    bar = tqdm(total=len(args.inputs), unit="file", desc="got chat", disable=args.stream, file=sys.stderr)
    failed: set[int] = set()  # inputs with an error (one bad input never costs the others their answers)
    rendered: list[tuple[str, str]] = []
    remaining = [0] * len(args.inputs)  # prompts of each input not answered yet
    answered: set[tuple[int, int | None]] = set()  # (input, page) of the prompts answered
    counted: set[int] = set()

    def tick(i: int) -> None:
        if i not in counted:
            counted.add(i)
            bar.update(1)

    def write(record: dict) -> None:
        # a file name that is not UTF-8 (Python keeps its bytes as lone surrogates) is written with backslash
        # escapes, so every line is valid UTF-8 JSON and no name can cost an answer
        record = {**record, "path": printable(record["path"])}
        line = json.dumps(record, ensure_ascii=False)
        if out is not None:
            out.write(line + "\n")
            out.flush()
        elif records_to_stdout:
            tqdm.write(line, file=sys.stdout)

    def report_error(i: int, source: str, e: Exception, page: int | None = None) -> None:
        failed.add(i)
        where = source if page is None else f"{source} page {page}"
        msg = one_line(str(e) if str(e).startswith(source) else f"{where}: {e}")
        tqdm.write(f"got chat: error: {msg}", file=sys.stderr)
        write({"path": source, "mode": query.mode, **({} if page is None else {"page": page}), "error": msg})

    def done(i: int, page: int | None) -> None:
        answered.add((i, page))
        remaining[i] -= 1
        if remaining[i] == 0:
            tick(i)

    def finish(answers: list[Answer]) -> None:
        for a in answers:
            write(a.record())
            rendered.append((printable(a.source) + ("" if a.page is None else f" (page {a.page})"), a.text))
            done(a.index, a.page)

    def generate(batch: list[Prompt]) -> None:
        if not args.stream:
            model.generate(batch, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=finish)
            return
        for p in batch:
            if len(args.inputs) > 1 or p.page is not None:
                print(f"==> {printable(p.source)}{'' if p.page is None else f' (page {p.page})'} <==", flush=True)
            finish([model.generate_streaming(p, lambda s: print(s, end="", flush=True), max_new_tokens)])
            print(flush=True)

    def run(batch: list[Prompt]) -> None:
        """Generate a batch; should it fail, its unanswered prompts again one by one, so only a prompt that fails
        alone is lost (reported as an error line), never its batch mates."""
        try:
            generate(batch)
        except (RuntimeError, ValueError) as e:
            left = [p for p in batch if (p.index, p.page) not in answered]
            if len(batch) > 1:
                for p in left:
                    run([p])
                return
            for p in left:
                report_error(p.index, p.source, e, p.page)
                done(p.index, p.page)

    pending: list[Prompt] = []
    for i, path in enumerate(args.inputs):
        try:
            pdf = is_pdf(path)
            pages = None if pdf else image_pages(path)  # a multi-page TIFF is a document, like a PDF
            item = pages if pages is not None and len(pages) > 1 else path
            q = query if pdf or item is pages else replace(query, pages=None)  # --pages: documents only
            for prompt in model.iter_prompts(item, q, index=i):
                remaining[i] += 1
                pending.append(prompt)
                if len(pending) >= batch_size:
                    run(pending)
                    pending = []
        except (ValueError, FileNotFoundError, OSError) as e:
            report_error(i, path, e)
            tick(i)
    if pending:
        run(pending)
    bar.close()
    if out is not None:
        out.close()
    if args.render:
        from got.render import render_html

        Path(args.render).parent.mkdir(parents=True, exist_ok=True)
        Path(args.render).write_text(render_html(rendered, title=f"got chat: {len(rendered)} answers"), encoding="utf-8")
        print(f"got chat: wrote {printable(args.render)} ({len(rendered)} answers)", file=sys.stderr)
    if failed and len(args.inputs) > 1:  # with one input, its error line says it all
        print(f"got chat: {len(failed)} of {len(args.inputs)} inputs failed", file=sys.stderr)
    return 1 if failed else 0
