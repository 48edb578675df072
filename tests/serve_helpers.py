"""Shared by the `got serve` tests: a tiny random model, test images, a forced-answer double, a live server."""
from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pymupdf
import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessor

from data_engines.fonts import load_font


def tiny_model_dir(d: Path) -> Path:
    """The tiny preset with random weights (std 0.1: varied text, no early stop), saved as a model directory."""
    from got.checkpoint import save_pretrained
    from got.config import load_config
    from got.modeling import GOTModel
    from got.tokenizer import GOTTokenizer

    torch.manual_seed(0)
    model = GOTModel(load_config("tiny"))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    save_pretrained(model, d, tokenizer=GOTTokenizer.default())
    return d


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def text_page(lines: list[str], size: tuple[int, int] = (900, 300), font_size: int = 28) -> Image.Image:
    """A white page with `lines` of black text, one above the other."""
    im = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(im), load_font("sans", font_size)
    for i, line in enumerate(lines):
        draw.text((40, 40 + i * int(font_size * 2.2)), line, fill="black", font=font)
    return im


def pdf_bytes(pages: int = 3) -> bytes:
    doc = pymupdf.open()
    for i in range(pages):
        page = doc.new_page(width=200, height=260)
        page.insert_text((20, 60 + 30 * i), f"page {i + 1} text")
    return doc.tobytes()


class ForceText(LogitsProcessor):
    """Test double for a trained model: greedy decoding writes exactly `text`, then <|im_end|>. Stateless (the
    step is counted from the prompt's closing `<|im_start|>assistant\\n`), so it works in any batch, any call."""

    def __init__(self, tokenizer, text: str):
        self.tokens = tokenizer.encode(text) + [tokenizer.im_end_id]
        self.start_id = tokenizer.im_start_id
        self.suffix = len(tokenizer.encode("<|im_start|>assistant\n"))

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        for b, row in enumerate(input_ids.tolist()):
            start = len(row) - 1 - row[::-1].index(self.start_id)
            step = len(row) - start - self.suffix
            forced[b, self.tokens[min(max(step, 0), len(self.tokens) - 1)]] = 0
        return forced


@contextmanager
def live_server(app):
    """The app under uvicorn on a free localhost port, in a thread: yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
