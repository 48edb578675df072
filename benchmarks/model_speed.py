"""Encoder latency and decode speed: this project's GOTModel vs transformers' GotOcr2ForConditionalGeneration.

Same random weights in both (ours saved, exported to the got_ocr2 layout, loaded by transformers), base preset,
1024 px, batch 1, a GOT prompt (256 <imgpad> + ~40 text tokens), 64 new greedy tokens, fp32 and bf16.
Timings: both implementations in one process per dtype, measured alternately (median of --rounds), so load
from other jobs on a shared machine hits both alike. Peak RSS: each implementation alone in its own process.

    python benchmarks/model_speed.py                 # both dtypes, 2 threads (takes several minutes)
    python benchmarks/model_speed.py --dtypes bf16 --rounds 1 --threads 1

Decode tok/s is timed per token inside generate (a stopping criterion that only records timestamps), so it
covers the KV-cached steps alone; "first token" is encoder + prefill. Ours runs as `got.inference.GOT` does on
CPU: decoder attention for single-token steps as plain matmuls (`use_decode_attention`), the prompt through SDPA,
and the KV cache written in place (`ChunkedKVCache`).
"""
from __future__ import annotations

import argparse
import json
import os
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


def load(impl: str, dtype: str, workdir: Path):
    """(encode(pixels), generate(ids, pixels, n, clock) -> new ids) for one implementation."""
    import torch
    from transformers import StoppingCriteriaList

    dt = getattr(torch, DTYPES[dtype])
    if impl == "ours":
        from got.checkpoint import load_model
        from got.decode import ChunkedKVCache, use_decode_attention

        model = load_model(workdir / f"ours-{dtype}", dtype=dt)
        use_decode_attention(model.decoder)  # as `GOT` runs it on CPU
        encode = lambda px: model.encode_images(px)  # noqa: E731
        generate = lambda ids, px, n, clock: model.generate(  # noqa: E731
            ids, px, max_new_tokens=n, min_new_tokens=n, stopping_criteria=StoppingCriteriaList([clock]),
            past_key_values=ChunkedKVCache())
    else:
        from transformers import GotOcr2ForConditionalGeneration

        model = GotOcr2ForConditionalGeneration.from_pretrained(workdir / f"hf-{dtype}", dtype=dt).eval()
        encode = lambda px: model.model.get_image_features(pixel_values=px.to(dt)).pooler_output  # noqa: E731
        generate = lambda ids, px, n, clock: model.generate(  # noqa: E731
            input_ids=ids, pixel_values=px.to(dt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
            eos_token_id=151645, pad_token_id=151643, stopping_criteria=StoppingCriteriaList([clock]))[:, ids.shape[1]:]
    return encode, generate


def inputs():
    import torch

    torch.manual_seed(0)
    ids = torch.tensor([prompt_ids({"im_start": 151644, "im_end": 151645, "img": 151857, "img_end": 151858,
                                    "imgpad": 151859})])
    return ids, torch.randn(1, 3, 1024, 1024)


def time_worker(dtype: str, workdir: Path, rounds: int) -> dict:
    """Both implementations in one process, measured alternately, so a shared, busy machine slows both alike."""
    import statistics

    import torch

    impls = {impl: load(impl, dtype, workdir) for impl in ("ours", "hf")}
    ids, pixels = inputs()
    runs: dict[str, dict[str, list]] = {i: {"encoder_s": [], "generate_s": [], "first_token_s": [], "decode_tok_s": []}
                                        for i in impls}
    tokens = {}
    with torch.inference_mode():
        for encode, _ in impls.values():
            encode(pixels)  # warm-up: allocator, oneDNN primitive caches
        for _ in range(rounds):
            for impl, (encode, _) in impls.items():
                t = time.perf_counter()
                encode(pixels)
                runs[impl]["encoder_s"].append(time.perf_counter() - t)
            for impl, (_, generate) in impls.items():
                clock = Clock()
                t = time.perf_counter()
                tokens[impl] = generate(ids, pixels, NEW_TOKENS, clock)[0].tolist()
                runs[impl]["generate_s"].append(time.perf_counter() - t)
                runs[impl]["first_token_s"].append(clock.times[0] - t)
                runs[impl]["decode_tok_s"].append((len(clock.times) - 1) / (clock.times[-1] - clock.times[0]))
    out = {impl: {k: statistics.median(v) for k, v in r.items()} for impl, r in runs.items()}
    out["same_tokens"] = tokens["ours"] == tokens["hf"]
    return out


def rss_worker(impl: str, dtype: str, workdir: Path) -> dict:
    """Peak RSS of one implementation alone: load, encode, generate 8 tokens."""
    from inference_speed import peak_rss_gb  # one VmHWM reader for both scripts; this folder is on sys.path
    import torch

    encode, generate = load(impl, dtype, workdir)
    ids, pixels = inputs()
    with torch.inference_mode():
        encode(pixels)
        generate(ids, pixels, 8, Clock())
    return {"peak_rss_gb": peak_rss_gb()}


class Clock:
    """A stopping criterion that never stops: it timestamps every generated token, so decode speed is measured
    on the KV-cached steps alone (not as a difference of two noisy end-to-end timings)."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def run(args, *worker_args) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--workdir", str(args.workdir), "--rounds",
           str(args.rounds), "--worker", *worker_args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"worker {worker_args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=2, help="alternating measurements per implementation (median)")
    ap.add_argument("--workdir", default=None, help="where the checkpoints go (kept and reused if given)")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        kind, *rest = args.worker
        result = time_worker(rest[0], Path(args.workdir), args.rounds) if kind == "time" else \
            rss_worker(rest[1], rest[0], Path(args.workdir))
        print("RESULT " + json.dumps(result))
        return
    dtypes = args.dtypes.split(",")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="got-bench-")
    args.workdir = Path(args.workdir or tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"building random base checkpoints in {args.workdir} ...", flush=True)
    build_checkpoints(args.workdir, dtypes)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, load average at start {loadavg()}",
          flush=True)
    for d in dtypes:
        t = run(args, "time", d)
        print(f"{d} timings: {json.dumps({k: v for k, v in t.items()})}", flush=True)
        rss = {impl: run(args, "rss", d, impl)["peak_rss_gb"] for impl in ("ours", "hf")}
        for impl in ("ours", "hf"):
            r = t[impl]
            print(f"{impl:4s} {d}: encoder {r['encoder_s']:6.2f} s | generate {NEW_TOKENS} tokens {r['generate_s']:6.2f} s "
                  f"(first token {r['first_token_s']:5.2f} s) | decode {r['decode_tok_s']:5.1f} tok/s | "
                  f"peak RSS {rss[impl]:.2f} GiB", flush=True)
        a, b = t["ours"], t["hf"]
        print(f"{d}: encoder x{b['encoder_s'] / a['encoder_s']:.2f} faster, decode x{a['decode_tok_s'] / b['decode_tok_s']:.2f}, "
              f"{NEW_TOKENS}-token generate x{b['generate_s'] / a['generate_s']:.2f}, peak RSS x{rss['ours'] / rss['hf']:.2f}; "
              f"generated tokens {'identical' if t['same_tokens'] else 'DIFFERENT'}  (load average now {loadavg()})",
              flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
