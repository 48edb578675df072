"""PP-OCR-style augmentations, applied after an engine has rendered a sample (`--augment bda,tia=0.3`).

- paper:     the page is laid on a paper-like background (tint, blotches, grain, vignette) by multiplying.
- tia:       TIA fiducial warp: the image is cut into vertical strips whose corner points are moved at random
             (PIL MESH transform); border points only move outwards, so no ink is cut off.
- bda:       base data augmentation: small rotation, perspective, motion blur, Gaussian noise, JPEG re-encoding,
             each with its own probability.
- copypaste: text instances pasted onto a paper canvas: a line slice plus 1-4 more rendered lines, stacked top to
             bottom; the target lists their texts in that order (applies to plain-engine line slices only).

Everything is drawn from the `random.Random` given (numpy generators are seeded from it), so a seed still
reproduces every byte. Samples whose prompt holds coordinates (box queries: `meta["fixed_geometry"]`) get
only photometric changes (paper, blur, noise, JPEG) -- a rotation would move the text out of the box.
"""
from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from data_engines.base import Sample

AUGMENTS = ("paper", "tia", "bda", "copypaste")


def parse_augment(spec: str | dict[str, float] | None) -> dict[str, float]:
    """"bda,tia=0.3" -> {"bda": 1.0, "tia": 0.3}: the probability that each augmentation is applied."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            name, _, p = part.strip().partition("=")
            items.append((name.strip(), p.strip() or "1"))
    out = {}
    for name, p in items:
        if name not in AUGMENTS:
            raise ValueError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTS)} (NAME[=PROB],...)")
        try:
            prob = float(p)
        except ValueError:
            raise ValueError(f"augmentation {name}: probability must be a number in [0, 1], got {p!r}") from None
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"augmentation {name}: probability must be in [0, 1], got {prob}")
        out[name] = prob
    return out


def _np_rng(rng: random.Random) -> np.random.Generator:
    return np.random.default_rng(rng.getrandbits(64))


def _background(img: Image.Image) -> tuple[int, ...]:
    """Fill colour for uncovered areas: the median of the four corner pixels."""
    w, h = img.size
    corners = [img.getpixel(p) for p in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1))]
    return tuple(int(np.median([c[i] for c in corners])) for i in range(len(corners[0])))


# ---------------------------------------------------------------------------------------------- paper

def paper_texture(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A sheet of paper: tinted, with low-frequency blotches, fine grain and a soft vignette."""
    w, h = size
    g = _np_rng(rng)
    base = np.array([rng.uniform(228, 252), rng.uniform(222, 250), rng.uniform(205, 248)], dtype=np.float32)
    small = g.standard_normal((max(2, h // 96), max(2, w // 96)), dtype=np.float32) * rng.uniform(2, 8)
    blotch = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)
    grain = g.standard_normal((128, 128), dtype=np.float32) * rng.uniform(1, 5)
    grain = np.tile(grain, (h // 128 + 1, w // 128 + 1))[:h, :w]
    yy, xx = np.ogrid[-1:1:complex(0, h), -1:1:complex(0, w)]
    vignette = (1 - rng.uniform(0, 0.08) * (xx ** 2 + yy ** 2)).astype(np.float32)
    sheet = (base[None, None, :] + (blotch + grain)[..., None]) * vignette[..., None]
    return Image.fromarray(np.clip(sheet, 0, 255).astype(np.uint8), "RGB")


def on_paper(img: Image.Image, rng: random.Random) -> Image.Image:
    """Multiply the image onto paper: white becomes the sheet, ink stays ink."""
    return ImageChops.multiply(img.convert("RGB"), paper_texture(img.size, rng))


# ---------------------------------------------------------------------------------------------- TIA

def tia_warp(img: Image.Image, rng: random.Random, strength: float | None = None) -> Image.Image:
    """TIA distortion: move the fiducial points on the strip borders (top and bottom edges) and warp each strip.
    Interior points move both ways; points on the image border only outwards, so all content stays in view."""
    w, h = img.size
    n = max(2, min(8, round(w / max(h, 1) * 2)))  # text lines (wide) get more strips than pages
    t = min(h, w / n) * (strength if strength is not None else rng.uniform(0.05, 0.2))
    xs = [w * i / n for i in range(n + 1)]

    def point(x: float, y_edge: float, i: int) -> tuple[float, float]:
        dx = rng.uniform(-t, 0) if i == 0 else rng.uniform(0, t) if i == n else rng.uniform(-t / 2, t / 2)
        dy = rng.uniform(-t, 0) if y_edge == 0 else rng.uniform(0, t)
        return x + dx, y_edge + dy

    top = [point(x, 0, i) for i, x in enumerate(xs)]
    bottom = [point(x, h, i) for i, x in enumerate(xs)]
    mesh = [((round(xs[i]), 0, round(xs[i + 1]), h), (*top[i], *bottom[i], *bottom[i + 1], *top[i + 1]))
            for i in range(n)]
    return img.transform((w, h), Image.Transform.MESH, mesh, Image.BICUBIC, fillcolor=_background(img))


# ---------------------------------------------------------------------------------------------- BDA

def rotate(img: Image.Image, rng: random.Random, max_degrees: float = 4.0) -> Image.Image:
    return img.rotate(rng.uniform(-max_degrees, max_degrees), Image.BICUBIC, expand=True, fillcolor=_background(img))


def perspective(img: Image.Image, rng: random.Random, strength: float = 0.06) -> Image.Image:
    """Keystone: the image corners come from points moved outwards by up to `strength` of the size (no cropping)."""
    w, h = img.size
    s = rng.uniform(0.01, strength)
    src = [(-rng.uniform(0, s) * w, -rng.uniform(0, s) * h), (w + rng.uniform(0, s) * w, -rng.uniform(0, s) * h),
           (w + rng.uniform(0, s) * w, h + rng.uniform(0, s) * h), (-rng.uniform(0, s) * w, h + rng.uniform(0, s) * h)]
    dst = [(0, 0), (w, 0), (w, h), (0, h)]
    a = []
    for (x, y), (u, v) in zip(dst, src):  # output (x, y) samples input (u, v)
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(a, dtype=np.float64), np.array([c for p in src for c in p], dtype=np.float64))
    return img.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.BICUBIC, fillcolor=_background(img))


def motion_blur(img: Image.Image, rng: random.Random) -> Image.Image:
    """Average of k copies shifted along a random direction (a line kernel)."""
    k = rng.choice([3, 3, 5])
    angle = rng.uniform(0, np.pi)
    a = np.asarray(img.convert("RGB"), dtype=np.uint16)
    r = k // 2
    padded = np.pad(a, ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = a.shape[:2]
    acc = np.zeros_like(a)
    for i in range(-r, r + 1):
        dx, dy = round(i * np.cos(angle)), round(i * np.sin(angle))
        acc += padded[r + dy:r + dy + h, r + dx:r + dx + w]
    return Image.fromarray((acc // k).astype(np.uint8), "RGB")


def gaussian_noise(img: Image.Image, rng: random.Random) -> Image.Image:
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    a = a + _np_rng(rng).standard_normal(a.shape, dtype=np.float32) * rng.uniform(2, 10)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=rng.randint(35, 90))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def bda(img: Image.Image, rng: random.Random, geometric: bool = True) -> tuple[Image.Image, list[str]]:
    """PP-OCR's BDA: each operation with its own probability; returns the image and the names applied."""
    done = []
    ops = [("rotate", 0.4, rotate), ("perspective", 0.3, perspective)] if geometric else []
    ops += [("motion_blur", 0.25, motion_blur), ("noise", 0.35, gaussian_noise), ("jpeg", 0.4, jpeg)]
    for name, p, fn in ops:
        if rng.random() < p:
            img = fn(img, rng)
            done.append(name)
    return img, done


# ---------------------------------------------------------------------------------------------- CopyPaste

def copy_paste(sample: Sample, rng: random.Random) -> Sample:
    """Paste the sample's text line and 1-4 more rendered lines onto one paper canvas, top to bottom."""
    from data_engines.plain import render_line

    lang = sample.meta.get("lang", "en")
    instances = [(sample.images[0], sample.conversations[-1]["value"])]
    instances += [render_line(rng, lang) for _ in range(rng.randint(1, 4))]
    rng.shuffle(instances)
    margin = rng.randint(8, 40)
    width = max(im.width for im, _ in instances) + 2 * margin + rng.randint(0, 200)
    gaps = [rng.randint(4, 30) for _ in instances]
    height = sum(im.height for im, _ in instances) + sum(gaps) + 2 * margin
    canvas = paper_texture((width, height), rng)
    y = margin
    for (im, _), gap in zip(instances, gaps):
        x = rng.randint(margin, width - margin - im.width)
        dark_on_light = np.asarray(im.convert("L")).mean() > 127
        if dark_on_light:  # ink only, like a cut-out instance
            region = canvas.crop((x, y, x + im.width, y + im.height))
            canvas.paste(ImageChops.multiply(region, im.convert("RGB")), (x, y))
        else:  # light text on a dark band: paste the band
            canvas.paste(im.convert("RGB"), (x, y))
        y += im.height + gap
    conv = [dict(sample.conversations[0]), {"from": "gpt", "value": "\n".join(t for _, t in instances)}]
    return Sample([canvas], conv, {**sample.meta, "layout": "copypaste", "n_lines": len(instances)})


# ---------------------------------------------------------------------------------------------- all together

class Augmenter:
    """Apply the augmentations of a spec ("paper=0.5,tia=0.2,bda") to rendered samples."""

    def __init__(self, spec: str | dict[str, float] | None):
        self.probs = parse_augment(spec)

    def __bool__(self) -> bool:
        return bool(self.probs)

    def __call__(self, sample: Sample, rng: random.Random) -> Sample:
        p = self.probs
        applied: list[str] = []
        if p.get("copypaste") and sample.meta.get("layout") == "line" and rng.random() < p["copypaste"]:
            sample = copy_paste(sample, rng)
            applied.append("copypaste")
        geometric = not sample.meta.get("fixed_geometry")
        images = []
        for img in sample.images:
            if p.get("paper") and rng.random() < p["paper"]:
                img = on_paper(img, rng)
                applied.append("paper")
            if p.get("tia") and geometric and rng.random() < p["tia"]:
                img = tia_warp(img, rng)
                applied.append("tia")
            if p.get("bda") and rng.random() < p["bda"]:
                img, done = bda(img, rng, geometric)
                applied += done
            images.append(img.convert("RGB"))
        meta: dict[str, Any] = dict(sample.meta)
        if applied:
            meta["augment"] = applied
        return Sample(images, sample.conversations, meta)
