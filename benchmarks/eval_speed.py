"""Evaluation speed: page metrics per second, and the OCR-1.0 peers' pages/s and accuracy on rendered pages.

    python benchmarks/eval_speed.py --pages 6

Pages come from the plain engine (1024-px-class pages, en and zh). Metrics are timed on (page, page with 3% of
characters changed) pairs. Peers read each page once, one at a time (RapidOCR uses all cores inside onnxruntime;
Tesseract one OpenMP thread per process, which `got eval` runs one per core).
"""
from __future__ import annotations

import argparse
import random
import time

from data_engines.base import get_engine
from got import metrics as M
from got.peers import RapidOCRPeer, TesseractPeer, _tidy


def corrupt(text: str, rate: float, rng: random.Random) -> str:
    chars = list(text)
    for i in rng.sample(range(len(chars)), int(rate * len(chars))):
        chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz的一是了")
    return "".join(chars)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=6, help="pages per language for the peers")
    ap.add_argument("--metric-pairs", type=int, default=50)
    args = ap.parse_args()
    rng = random.Random(0)
    for lang in ("en", "zh"):
        engine = get_engine("plain", layout="page", lang=lang)
        samples = [engine.render(random.Random(1000 + i)) for i in range(args.pages)]
        texts = [s.conversations[1]["value"] for s in samples]
        pairs = [(corrupt(t, 0.03, rng), t) for t in (texts * (args.metric_pairs // len(texts) + 1))[:args.metric_pairs]]
        M.page_metrics(*pairs[0])  # jieba dictionary, nltk imports
        t0 = time.perf_counter()
        for p, g in pairs:
            M.page_metrics(p, g)
        dt = time.perf_counter() - t0
        t0 = time.perf_counter()
        for p, g in pairs:
            M.normalized_edit_distance(p, g)
        dt_ed = time.perf_counter() - t0
        chars = sum(len(g) for _, g in pairs) / len(pairs)
        print(f"metrics {lang}: page_metrics {len(pairs) / dt:.1f} pages/s, edit distance alone "
              f"{len(pairs) / dt_ed:.0f} pages/s ({chars:.0f} chars/page)")
        for peer in (TesseractPeer(), RapidOCRPeer()):
            peer.read_image(samples[0].images[0])  # warm-up: model load
            t0 = time.perf_counter()
            preds = [_tidy(peer.read_image(s.images[0])) for s in samples]
            dt = time.perf_counter() - t0
            rates = M.corpus_error_rates(preds, texts)
            ed = sum(M.normalized_edit_distance(p, g) for p, g in zip(preds, texts)) / len(texts)
            print(f"peer {peer.name:9s} {lang}: {len(samples) / dt:.2f} pages/s ({dt / len(samples):.2f} s/page), "
                  f"CER {rates['cer']:.4f}, edit distance {ed:.4f}")


if __name__ == "__main__":
    main()
