"""Samples per second per core of every data engine (one process = one core), as a markdown table.

    python benchmarks/engines_speed.py [--seconds 5] [--engines plain,pdf]

`render` is the engine alone (what the on-the-fly stream costs a dataloader worker); `+png` adds PNG encoding
at the level `got data render` writes (what an offline render costs per core). Plain pages are also split by
language and layout, since the 30 pages/s/core target is about full pages.
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_engines.base import ENGINES, get_engine  # noqa: E402
from data_engines.cli import PNG_LEVEL  # noqa: E402

VARIANTS = [  # (row label, engine, options)
    ("plain: page, en", "plain", {"lang": "en", "layout": "page"}),
    ("plain: page, zh", "plain", {"lang": "zh", "layout": "page"}),
    ("plain: line slice", "plain", {"layout": "line"}),
    ("pdf: page", "pdf", {"layout": "page"}),
]


def measure(engine, seconds: float, warmup: int = 3) -> dict[str, float]:
    """Warm up (fonts, glyph caches, imports), then render for `seconds` on one core."""
    for i in range(warmup):
        engine.render(random.Random(f"warm:{i}"))
    times, png_times, pixels, n = [], [], [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        t0 = time.perf_counter()
        sample = engine.render(random.Random(n))
        t1 = time.perf_counter()
        for im in sample.images:
            im.save(io.BytesIO(), "PNG", compress_level=PNG_LEVEL)
        t2 = time.perf_counter()
        times.append(t1 - t0)
        png_times.append(t2 - t1)
        pixels.append(sum(im.width * im.height for im in sample.images))
        n += 1
    render_s = statistics.fmean(times)
    return {"n": n, "render_per_s": 1 / render_s, "with_png_per_s": 1 / (render_s + statistics.fmean(png_times)),
            "ms": 1000 * render_s, "mpix": statistics.fmean(pixels) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed rendering per row")
    ap.add_argument("--engines", default=",".join(ENGINES))
    args = ap.parse_args()
    wanted = args.engines.split(",")
    rows = [(name, name, {}) for name in ENGINES if name in wanted]
    rows += [v for v in VARIANTS if v[1] in wanted]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}; {args.seconds:.0f} s per row, single process\n")
    print("| engine | samples/s/core (render) | samples/s/core (+png) | ms/sample | Mpx/sample |")
    print("|---|---:|---:|---:|---:|")
    for label, name, options in rows:
        try:
            engine = get_engine(name, **options)
            r = measure(engine, args.seconds)
        except Exception as e:  # an engine that cannot run here is reported, not fatal for the others
            print(f"| {label} | n/a ({type(e).__name__}: {e}) | | | |")
            continue
        print(f"| {label} | {r['render_per_s']:.1f} | {r['with_png_per_s']:.1f} | {r['ms']:.1f} | {r['mpix']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
