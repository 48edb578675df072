"""Training samples/s, tiny preset, CPU: `got train` (DeepSpeed engine, ZeRO-0, one process) vs transformers
GotOcr2ForConditionalGeneration trained by a plain torch loop (AdamW, grad clip 1.0) on the same batches.

Both read the same rendered data through the same pipeline (got.data: json source -> encoder -> collator), so data
cost is equal; both run in a fresh process with the same thread count, alternately for --rounds rounds, and the
median steady-state rate (steps after the first --warmup) is reported.

transformers' got_ocr2 cannot express the tiny preset exactly (its last conv must output the decoder width): its
model gets net_3 256 -> 128 channels and a 128 -> 128 projector, i.e. slightly LESS work than ours.

    python benchmarks/train_speed.py                       # fp32, bf16, bf16 + packing; 2 threads
    python benchmarks/train_speed.py --precisions fp32 --steps 20 --rounds 1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def render_data(out: Path, n: int) -> Path:
    """n plain-engine line and paragraph slices (English), as PNG + GOT json."""
    import random

    from data_engines.base import get_engine

    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        engine = get_engine("plain", layout="line" if i % 2 else "paragraph", lang="en")
        sample = engine.render(random.Random(i))
        name = f"{i:04d}.png"
        sample.images[0].save(out / name)
        records.append(sample.to_record([name]))
    path = out / "train.json"
    path.write_text(json.dumps(records))
    return path


def run_ours(data: Path, work: Path, args, precision: str) -> float:
    precision, _, packing = precision.partition("+")
    out = work / f"ours-{precision}-{time.time_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions")))
    cmd = [sys.executable, "-m", "got.cli", "train", "--stage", "1", "--config", "configs/tiny_stage1.yaml",
           "--data", str(data), "--output", str(out), "model.preset=tiny", f"train.global_batch_size={args.micro}",
           f"train.micro_batch_size={args.micro}", f"train.max_steps={args.steps}", f"train.precision={precision}",
           "data.num_workers=0", f"data.max_length={args.max_length}", f"output.save_every={10**9}",
           f"data.packing={'true' if packing else 'false'}"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][args.warmup:]
    samples = sum(r["samples"] for r in rows)
    return samples / sum(r["samples"] / r["samples_per_s"] for r in rows)


def hf_worker(data: str, threads: int, micro: int, steps: int, warmup: int, max_length: int, precision: str) -> None:
    """The transformers side, in its own process: GotOcr2ForConditionalGeneration + plain AdamW loop."""
    import torch
    from transformers import GotOcr2Config, GotOcr2ForConditionalGeneration

    from got.checkpoint import hf_config_dict
    from got.config import load_config
    from got.data import Collator, JsonSource, MixedDataset, SampleEncoder, StepSampler
    from got.tokenizer import GOTTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(42)
    cfg = load_config("tiny")
    cfg.vision.out_channels = cfg.hf_decoder_config().hidden_size  # the closest shape got_ocr2 can express
    model = GotOcr2ForConditionalGeneration(GotOcr2Config(**{k: v for k, v in hf_config_dict(cfg).items()
                                                             if k != "architectures"}))
    model.train()
    tok = GOTTokenizer.default()
    enc = SampleEncoder(tok, cfg.image_size, cfg.image_token_len, max_length)
    dataset = MixedDataset([JsonSource(data)], [1.0], enc, None, seed=42)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepSampler(len(dataset), micro, 1, 1, 0, 42,
                                                                            total_steps=steps),
                                         collate_fn=Collator(tok.endoftext_id, max_length))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, counts = [], []
    t = time.perf_counter()
    for b in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=b["input_ids"], pixel_values=b["pixel_values"], attention_mask=b["attention_mask"],
                         labels=b["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        times.append(now - t)
        counts.append(b["num_samples"])
        t = now
    print(json.dumps({"samples_per_s": sum(counts[warmup:]) / sum(times[warmup:])}))


def run_hf(data: Path, args, precision: str) -> float:
    precision = precision.partition("+")[0]  # transformers' got_ocr2 does not pack: compared unpacked
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, __file__, "--hf-worker", str(data), "--threads", str(args.threads),
                        "--micro", str(args.micro), "--steps", str(args.steps), "--warmup", str(args.warmup),
                        "--max-length", str(args.max_length), "--precisions", precision],
                       cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return json.loads(p.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", default="fp32,bf16,bf16+packing",
                    help="comma list of fp32 / bf16, '+packing' packs our micro-batches (data.packing=true)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--micro", type=int, default=8, help="samples per step (one micro-batch)")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--hf-worker", metavar="DATA", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hf_worker:
        return hf_worker(args.hf_worker, args.threads, args.micro, args.steps, args.warmup, args.max_length,
                         args.precisions)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = render_data(work / "data", args.samples)
        print(f"tiny preset, {args.samples} plain line/paragraph samples, {args.micro} samples/step, {args.steps} "
              f"steps ({args.warmup} warm-up), {args.threads} threads, median of {args.rounds} alternating rounds")
        print("| precision | got train (samples/s) | transformers got_ocr2 + torch loop (samples/s) | ratio |")
        print("|---|---|---|---|")
        for precision in args.precisions.split(","):
            ours, hf = [], []
            for _ in range(args.rounds):
                ours.append(run_ours(data, work, args, precision))
                hf.append(run_hf(data, args, precision))
            o, h = statistics.median(ours), statistics.median(hf)
            print(f"| {precision} | {o:.2f} | {h:.2f} | {o / h:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
