"""What weight-only int8 / int4 cost in accuracy: the default model's decoder reading held-out rendered lines in
bf16, int8 and int4 (CER, and how many lines read exactly as bf16 reads them).

The shipped default model answers with its CTC head, which quantisation does not touch; the decoder is what int8 /
int4 change, so it answers here (`vision.ctc_answers = False`, as scripts/choose_line_reader.py scores it). The
lines are drawn like choose_line_reader's (same renderer and seed), never from training draws.

    python benchmarks/quant_cer.py [--model got/assets/default] [--lines 200]
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from choose_line_reader import SEED  # noqa: E402  (the held-out draw's seed)

from data_engines.plain import render_line  # noqa: E402
from got.inference import GOT  # noqa: E402
from got.metrics import cer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the shipped default model)")
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--variants", default="bf16,int8,int4")
    a = ap.parse_args()
    rng = random.Random(SEED)
    lines = [render_line(rng, "en") for _ in range(a.lines)]
    chars = sum(len(t) for _, t in lines)
    reference = None
    for variant in a.variants.split(","):
        model = GOT.from_pretrained(a.model, dtype="bfloat16", int8=variant == "int8", int4=variant == "int4")
        model.config.vision.ctc_answers = False
        t0 = time.perf_counter()
        reads = model.chat_batch([im for im, _ in lines], batch_size=16)
        seconds = (time.perf_counter() - t0) / len(lines)
        error = sum(cer(r, t) * len(t) for r, (_, t) in zip(reads, lines)) / chars
        reference = reads if reference is None else reference
        same = sum(r == b for r, b in zip(reads, reference))
        print(f"{variant:>5}: decoder CER {error:.4f} on {len(lines)} held-out lines ({chars} characters), "
              f"{seconds * 1000:.0f} ms/line, {same}/{len(lines)} lines read as {a.variants.split(',')[0]}", flush=True)


if __name__ == "__main__":
    main()
