"""Helpers shared by the structured engines (formula, table, molecule, music, geometry, chart).

They all answer the "format" query, draw on white or paper-like backgrounds, rasterise SVG with resvg and
need offline word lists; keeping that here means each engine module holds only its own data type.
"""
from __future__ import annotations

import functools
import importlib
import io
import random
import re
from types import ModuleType

from PIL import Image

# Paper tints: pure white most of the time, else a light cream / grey / blue-ish sheet.
PAPERS = [(255, 255, 255)] * 4 + [(250, 248, 240), (246, 244, 236), (248, 248, 248), (244, 246, 250), (252, 250, 245)]
INKS = [(0, 0, 0)] * 4 + [(20, 20, 20), (35, 35, 45), (25, 30, 60)]


def require(module: str, pip_name: str, what: str) -> ModuleType:
    """Import an optional rendering tool or fail with one line naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs the Python package {pip_name!r}: pip install {pip_name} ({e})") from None


def format_conversation(target: str) -> list[dict[str, str]]:
    """GOT conversation for a formatted target (the "OCR with format: " query)."""
    from got.prompts import build_query

    return [{"from": "human", "value": "<image>\n" + build_query(mode="format")},
            {"from": "gpt", "value": target}]


def paper(rng: random.Random) -> tuple[int, int, int]:
    return rng.choice(PAPERS)


def ink(rng: random.Random) -> tuple[int, int, int]:
    return rng.choice(INKS)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % rgb


_VIEWBOX = re.compile(r'viewBox="([-\d.e]+) ([-\d.e]+) ([-\d.e]+) ([-\d.e]+)"')


def svg_to_image(svg: str, zoom: float = 1.0) -> Image.Image:
    """Rasterise an SVG with resvg (offline, deterministic) into an RGBA image with a transparent background."""
    resvg_py = require("resvg_py", "resvg-py", "SVG rasterising")
    png = resvg_py.svg_to_bytes(svg_string=svg, zoom=zoom) if zoom != 1.0 else resvg_py.svg_to_bytes(svg_string=svg)
    return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def svg_viewbox(svg: str) -> tuple[float, float, float, float]:
    m = _VIEWBOX.search(svg)
    if not m:
        raise ValueError("SVG has no viewBox")
    return tuple(float(v) for v in m.groups())  # type: ignore[return-value]


def flatten(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB over a background colour."""
    out = Image.new("RGB", img.size, background)
    out.paste(img, (0, 0), img)
    return out


@functools.lru_cache(maxsize=None)
def english_words(n: int = 5000) -> tuple[str, ...]:
    """Frequent alphabetic English words (wordfreq, offline)."""
    from wordfreq import top_n_list

    return tuple(w for w in top_n_list("en", n) if w.isalpha() and len(w) > 1)


def phrase(rng: random.Random, lo: int = 1, hi: int = 3, title: bool = True) -> str:
    words = english_words()
    out = " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
    return out[:1].upper() + out[1:] if title else out
