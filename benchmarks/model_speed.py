"""Encoder latency and decode speed: this project's GOTModel vs transformers' GotOcr2ForConditionalGeneration.

Same random weights in both (ours saved, exported to the got_ocr2 layout, loaded by transformers), base preset,
1024 px, batch 1, a GOT prompt (256 <imgpad> + ~40 text tokens), 64 new greedy tokens, fp32 and bf16.
Each (implementation, dtype) runs in its own process so peak RSS is its own.

    python benchmarks/model_speed.py                 # both dtypes, 2 threads (takes several minutes)
    python benchmarks/model_speed.py --dtypes bf16 --repeats 1

Decode tok/s is timed per token inside generate (a stopping criterion that only records timestamps), so it
covers the KV-cached steps alone; "first token" is encoder + prefill.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
NEW_TOKENS = 64


def build_checkpoints(workdir: Path, dtypes: list[str]) -> None:
    """Random base weights -> ours/<dtype> and hf/<dtype> (the same numbers in both layouts)."""
    import torch
    from transformers.initialization import no_init_weights

    from got.checkpoint import export_hf, save_pretrained
    from got.config import load_config
    from got.modeling import GOTModel

    if all((workdir / f"hf-{d}" / "config.json").is_file() for d in dtypes):
        return
    torch.manual_seed(0)
    with no_init_weights():
        model = GOTModel(load_config("base"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias") or "norm" in name:
                p.zero_()
            else:
                p.normal_(0, 0.02)
    model.eval()
    for d in dtypes:
        m = model.to(getattr(torch, DTYPES[d]))
        save_pretrained(m, workdir / f"ours-{d}", max_shard_bytes=10**10)
        export_hf(m, workdir / f"hf-{d}", max_shard_bytes=10**10)


def prompt_ids(cfg_tokens: dict[str, int]) -> list[int]:
    """A GOT-shaped prompt: chat markers, one image block, a short query. Text ids are fixed pseudo-random."""
    import random

    rng = random.Random(0)
    text = lambda n: [rng.randrange(100, 150000) for _ in range(n)]  # noqa: E731
    return ([cfg_tokens["im_start"]] + text(20) + [cfg_tokens["im_end"], cfg_tokens["im_start"]] + text(3)
            + [cfg_tokens["img"]] + [cfg_tokens["imgpad"]] * 256 + [cfg_tokens["img_end"]] + text(6)
            + [cfg_tokens["im_end"], cfg_tokens["im_start"]] + text(3))


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, object]:
    if warmup:  # allocator, oneDNN primitive caches
        fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def worker(impl: str, dtype: str, workdir: Path, repeats: int) -> dict:
    import torch
    from transformers import StoppingCriteriaList

    torch.manual_seed(0)
    dt = getattr(torch, DTYPES[dtype])
    t0 = time.perf_counter()
    if impl == "ours":
        from got.checkpoint import load_model

        model = load_model(workdir / f"ours-{dtype}", dtype=dt)
        encode = lambda px: model.encode_images(px)  # noqa: E731
        generate = lambda ids, px, n, clock: model.generate(  # noqa: E731
            ids, px, max_new_tokens=n, min_new_tokens=n, stopping_criteria=StoppingCriteriaList([clock]))
    else:
        from transformers import GotOcr2ForConditionalGeneration

        model = GotOcr2ForConditionalGeneration.from_pretrained(workdir / f"hf-{dtype}", dtype=dt).eval()
        encode = lambda px: model.model.get_image_features(pixel_values=px.to(dt)).pooler_output  # noqa: E731
        generate = lambda ids, px, n, clock: model.generate(  # noqa: E731
            input_ids=ids, pixel_values=px.to(dt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            eos_token_id=151645, pad_token_id=151643, stopping_criteria=StoppingCriteriaList([clock]))[:, ids.shape[1]:]
    load_s = time.perf_counter() - t0
    pixels = torch.randn(1, 3, 1024, 1024)
    ids = torch.tensor([prompt_ids({"im_start": 151644, "im_end": 151645, "img": 151857, "img_end": 151858,
                                    "imgpad": 151859})])
    clock = Clock()
    with torch.inference_mode():
        enc_s, feats = timed(lambda: encode(pixels), repeats)
        t = time.perf_counter()
        new = generate(ids, pixels, NEW_TOKENS, clock)
        gen_s = time.perf_counter() - t
    steps = clock.times
    return {"impl": impl, "dtype": dtype, "load_s": load_s, "encoder_s": enc_s, "generate_s": gen_s,
            "first_token_s": steps[0] - t, "decode_tok_s": (len(steps) - 1) / (steps[-1] - steps[0]),
            "tokens": new[0].tolist(), "feature_sum": float(feats.float().abs().sum()),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "prompt_tokens": ids.shape[1]}


class Clock:
    """A stopping criterion that never stops: it timestamps every generated token, so decode speed is measured
    on the KV-cached steps alone (not as a difference of two noisy end-to-end timings)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--impls", default="ours,hf")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="where the two checkpoints go (kept and reused if given)")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "DTYPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, Path(args.workdir), args.repeats)))
        return
    dtypes = args.dtypes.split(",")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="got-bench-")
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"building random base checkpoints in {workdir} ...", flush=True)
    build_checkpoints(workdir, dtypes)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"torch {torch.__version__}, {args.threads} threads, load average at start {' '.join(load)}", flush=True)
    results = {}
    for d in dtypes:
        for impl in args.impls.split(","):
            cmd = [sys.executable, __file__, "--worker", impl, d, "--workdir", str(workdir), "--repeats",
                   str(args.repeats), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{impl} {d} failed:\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(line[7:])
            results[(impl, d)] = r
            print(f"{impl:4s} {d}: load {r['load_s']:5.1f} s | encoder {r['encoder_s']:6.2f} s | generate {NEW_TOKENS} tokens "
                  f"{r['generate_s']:6.2f} s (first token {r['first_token_s']:5.2f} s) | decode {r['decode_tok_s']:5.1f} tok/s"
                  f" | peak RSS {r['peak_rss_gb']:.2f} GiB", flush=True)
    for d in dtypes:
        a, b = results.get(("ours", d)), results.get(("hf", d))
        if a and b:
            same = "identical" if a["tokens"] == b["tokens"] else "DIFFERENT"
            print(f"{d}: encoder x{b['encoder_s'] / a['encoder_s']:.2f} faster, decode x{a['decode_tok_s'] / b['decode_tok_s']:.2f}, "
                  f"64-token generate x{b['generate_s'] / a['generate_s']:.2f}; generated tokens {same}")
    with open("/proc/loadavg") as f:
        print(f"load average at end {' '.join(f.read().split()[:3])}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
