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

Then the decode table (ours only, bf16 unless a variant says fp32): tok/s at each of --batches for each of
--variants (eager, compiled = the one-token step compiled by inductor as `GOT(compile=True)` runs it, int8 / int4 =
weight-only, their compiled forms, `fp32` forms such as eager-fp32, compiled-fp32, and `batcher` forms such as
batcher-compiled-fp32: the same steps through got.batcher's own decode loop, without generate()), for each of --models (the base preset's random weights, the shipped default model). One
process per cell: the first generate pays the compile (reported as "compile s": its first decode step minus a
steady one), the second is timed; peak RSS is the process's VmHWM; "tokens" says whether the greedy tokens equal
the eager cell's of the same model and batch. The compile cache goes to TORCHINDUCTOR_CACHE_DIR (set it to keep
compiled code between runs; by default a fresh temporary directory, so the compile time is the cold one).

    python benchmarks/model_speed.py --decode-only --models tiny --variants eager,compiled --tokens 8   # a check
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

from transformers import StoppingCriteriaList

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
        from got.decode import CACHE, ChunkedKVCache, use_decode_attention

        model = load_model(workdir / f"ours-{dtype}", dtype=dt)
        use_decode_attention(model.decoder)  # as `GOT` runs it on CPU
        encode = lambda px: model.encode_images(px)  # noqa: E731
        generate = lambda ids, px, n, clock: model.generate(  # noqa: E731
            ids, px, max_new_tokens=n, min_new_tokens=n, stopping_criteria=StoppingCriteriaList([clock]),
            **{CACHE: ChunkedKVCache()})
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


def decode_worker(model: str, variant: str, batch: int, tokens: int, workdir: Path) -> dict:
    """One cell of the decode table: load (bf16, or fp32 for an -fp32 variant), quantise if asked, generate twice
    (compile, then timed)."""
    import torch

    from got.checkpoint import load_model, resolve_model_dir
    from got.config import load_config
    from got.decode import use_decode_attention
    from got.modeling import GOTModel
    from got.quantize import quantize_weights
    from inference_speed import peak_rss_gb

    t0 = time.perf_counter()
    dtype = torch.float32 if "fp32" in variant else torch.bfloat16
    if model == "tiny":  # random weights, std 0.1 so that the tokens vary (a plumbing check, no speed claim)
        torch.manual_seed(0)
        m = GOTModel(load_config("tiny"))
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.1)
        m = m.to(dtype)
    else:
        m = load_model(workdir / "ours-bf16" if model == "base" else resolve_model_dir(model), dtype=dtype)
    m.eval()
    use_decode_attention(m.decoder)
    quant = next((b for b in (8, 4) if f"int{b}" in variant), None)
    if quant:
        quantize_weights(m.decoder, bits=quant)
    load_s = time.perf_counter() - t0
    cfg = m.config
    size = (cfg.image_size, cfg.image_size) if isinstance(cfg.image_size, int) else tuple(cfg.image_size)
    ids = [cfg.im_start_id, *range(1000, 1020), cfg.im_end_id, cfg.im_start_id, 1100, cfg.img_start_id,
           *[cfg.img_pad_id] * cfg.image_token_len, cfg.img_end_id, *range(1200, 1206), cfg.im_end_id, cfg.im_start_id]
    ids = torch.tensor([ids] * batch)
    torch.manual_seed(0)
    pixels = torch.randn(batch, 3, *size)
    if "batcher" in variant:
        runs = batcher_runs(m, variant, ids, pixels, tokens, model)
    else:
        runs = generate_runs(m, ids, pixels, tokens, dtype, compiled="compiled" in variant)
    (first, _), (times, new) = runs
    steps = [b - a for a, b in zip(times, times[1:])]
    step = sorted(steps)[len(steps) // 2]
    return {"tok_s": batch * len(steps) / (times[-1] - times[0]), "step_ms": 1000 * step, "load_s": load_s,
            "compile_s": max(0.0, (first[1] - first[0]) - step) if "compiled" in variant else 0.0,
            "peak_rss_gb": peak_rss_gb(), "tokens": new}


def generate_runs(m, ids, pixels, tokens: int, dtype, compiled: bool) -> list[tuple[list, list]]:
    """Two runs (token timestamps, new tokens) of a decode cell through transformers' generate()."""
    import torch

    from got.decode import CACHE, ChunkedKVCache, compile_config

    extra = {"compile_config": compile_config()} if compiled else {}
    cfg, runs = m.config, []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        features = m.encode_images(pixels)  # encoded once: the table is about decoding
        for _ in range(2):  # the first pays the compile
            clock = Clock()
            embeds = m.merge_image_features(ids, m.decoder.get_input_embeddings()(ids), features)
            out = m.decoder.generate(input_ids=ids, inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                     eos_token_id=cfg.im_end_id, pad_token_id=cfg.endoftext_id,
                                     stopping_criteria=StoppingCriteriaList([clock]), **{CACHE: ChunkedKVCache()},
                                     **extra)
            runs.append((clock.times, out[:, ids.shape[1]:].tolist()))
    return runs


def batcher_runs(m, variant: str, ids, pixels, tokens: int, model: str) -> list[tuple[list, list]]:
    """Two runs (token timestamps, new tokens) of a decode cell through got.batcher.DecodeBatch (the server's
    continuous-batching loop, which `got serve --compile` compiles as generate does) instead of transformers'
    generate: the same prompts and greedy tokens, the stop ids ignored so that every row makes `tokens` steps,
    without GOT's n-gram ban and repetition guard (the generate cells have neither)."""
    from got.batcher import DecodeBatch
    from got.checkpoint import resolve_model_dir
    from got.inference import GOT, Prompt
    from got.tokenizer import GOTTokenizer
    from inference_speed import qwen_sized_tokenizer

    if model == "tiny":
        raise SystemExit("batcher cells need a model with a tokenizer: base, default or a model dir")
    tokenizer = qwen_sized_tokenizer() if model == "base" else GOTTokenizer.from_dir(resolve_model_dir(model))
    got = GOT(m, tokenizer, compile="compiled" in variant)
    got.stop_ids, got.no_repeat_ngram_size, got.repetition_guard = [], 0, None
    prompts = [Prompt("bench", "plain", row, pixels[b:b + 1]) for b, row in enumerate(ids.tolist())]
    runs = []
    for _ in range(2):  # the first pays the compile
        batch, times = DecodeBatch(got), []
        batch.admit(prompts, [tokens] * len(prompts))
        times.append(time.perf_counter())
        while batch.seqs and not batch.seqs[0].finish:
            batch.step()
            times.append(time.perf_counter())
        runs.append((times, [s.new for s in batch.seqs]))
    return runs


def decode_table(args) -> None:
    """The decode table: every (model, variant, batch) in its own process, printed as it comes."""
    print(f"decode, bf16 unless the variant says fp32, {args.tokens} new tokens, {args.threads} threads (load average {loadavg()})", flush=True)
    print(f"{'model':8s} {'variant':16s} {'batch':>5s} {'tok/s':>8s} {'ms/step':>8s} {'compile s':>9s} "
          f"{'peak RSS GiB':>12s}  tokens", flush=True)
    for model in args.models.split(","):
        for batch in [int(b) for b in args.batches.split(",")]:
            eager: dict[str, list] = {}  # the eager cell's tokens per dtype: what the other variants must equal
            for variant in args.variants.split(","):
                r = run(args, "decode", model, variant, str(batch), str(args.tokens))
                dtype = "fp32" if "fp32" in variant else "bf16"
                if variant.startswith("eager"):
                    eager[dtype] = r["tokens"]
                ref = eager.get(dtype)
                same = "-" if ref is None or variant.startswith("eager") else (
                    "identical" if r["tokens"] == ref else
                    f"{sum(a == b for x, y in zip(r['tokens'], ref) for a, b in zip(x, y))}/{batch * args.tokens} equal")
                print(f"{model:8s} {variant:16s} {batch:5d} {r['tok_s']:8.1f} {r['step_ms']:8.2f} "
                      f"{r['compile_s']:9.1f} {r['peak_rss_gb']:12.2f}  {same}", flush=True)


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
    ap.add_argument("--models", default="base,default",
                    help="decode table: base (random weights), default (the shipped model), a model dir, or tiny")
    ap.add_argument("--variants", default="eager,compiled,int8,int8+compiled,int4,int4+compiled")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--tokens", type=int, default=NEW_TOKENS, help="new tokens per decode-table generate")
    ap.add_argument("--decode-only", action="store_true", help="skip the comparison with transformers")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        kind, *rest = args.worker
        if kind == "decode":
            result = decode_worker(rest[0], rest[1], int(rest[2]), int(rest[3]), Path(args.workdir))
        else:
            result = time_worker(rest[0], Path(args.workdir), args.rounds) if kind == "time" else \
                rss_worker(rest[1], rest[0], Path(args.workdir))
        print("RESULT " + json.dumps(result))
        return
    dtypes = [] if args.decode_only else args.dtypes.split(",")
    if "base" in args.models.split(",") and "bf16" not in dtypes:
        dtypes_built = dtypes + ["bf16"]
    else:
        dtypes_built = dtypes
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):  # a cold compile, unless the caller keeps a cache
        inductor_tmp = tempfile.TemporaryDirectory(prefix="got-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_tmp.name
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="got-bench-")
    args.workdir = Path(args.workdir or tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if dtypes_built:
        print(f"building random base checkpoints in {args.workdir} ...", flush=True)
        build_checkpoints(args.workdir, dtypes_built)
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
    decode_table(args)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
