"""Model FLOPs utilisation of one training step, the way `got train` runs it (DeepSpeed engine + TokenLoss).

Default: the base preset (1024 px ViTDet-B + 24-layer Qwen2, vocab 151860) as in stage 2, bf16, one image and
--text-tokens supervised answer tokens per sample. FLOPs are COUNTED (torch.utils.flop_counter on one forward +
backward of the same batch: matmuls, convolutions and attention), not estimated; MFU = FLOPs / step time / peak.

    python benchmarks/train_mfu.py                                    # on a GPU (peak looked up from its name)
    python benchmarks/train_mfu.py --preset tiny --peak-tflops 0.458  # CPU check (this machine: 458 GFLOP/s bf16)
    torchrun --nproc_per_node 8 benchmarks/train_mfu.py --zero 2      # per-GPU MFU with ZeRO-2 over 8 GPUs
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment
PEAKS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="base")
    ap.add_argument("--micro", type=int, default=4, help="samples per GPU per step")
    ap.add_argument("--text-tokens", type=int, default=1024, help="answer tokens per sample (all supervised)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--peak-tflops", type=float, help="device peak; default: looked up from the GPU name")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    from got.trainer import TokenLoss, init_distributed, param_groups

    rank, world, _ = init_distributed()
    import deepspeed
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from got.config import load_config
    from got.modeling import GOTModel

    torch.manual_seed(0)
    cfg = load_config(args.preset)
    model = GOTModel(cfg)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    ds = {"train_micro_batch_size_per_gpu": args.micro, "gradient_accumulation_steps": 1,
          "train_batch_size": args.micro * world, "gradient_clipping": 1.0, "zero_optimization": {"stage": args.zero},
          "bf16": {"enabled": args.precision == "bf16"}, "steps_per_print": 10**9, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=TokenLoss(model), model_parameters=param_groups(model, 0.0),
                                      optimizer=lambda g: torch.optim.AdamW(g, lr=1e-5), config=ds)
    dev = engine.device

    # one GOT sample shape: system + <img> + 256 x <imgpad> + </img> + query, then the answer (supervised)
    prompt = [cfg.im_start_id] + [100 + i for i in range(20)] + [cfg.img_start_id] + \
        [cfg.img_pad_id] * cfg.image_token_len + [cfg.img_end_id] + [200, 201, cfg.im_end_id, cfg.im_start_id, 300]
    g = torch.Generator().manual_seed(0)
    answer = torch.randint(0, min(cfg.vocab_size, 16000), (args.micro, args.text_tokens), generator=g)
    ids = torch.cat([torch.tensor(prompt).expand(args.micro, -1), answer], 1)
    labels = ids.clone()
    labels[:, :len(prompt)] = -100
    batch = {"input_ids": ids.to(dev), "labels": labels.to(dev),
             "pixel_values": torch.randn(args.micro, 3, cfg.image_size, cfg.image_size, generator=g).to(dev),
             "attention_mask": torch.ones_like(ids).to(dev)}

    def step():
        loss = engine(**batch)
        engine.backward(loss / (labels[:, 1:] != -100).sum())
        engine.step()

    with FlopCounterMode(display=False) as counter:  # one forward + backward, counted (then a real step)
        loss = engine(**batch)
        engine.backward(loss / (labels[:, 1:] != -100).sum())
    engine.step()
    flops = counter.get_total_flops()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / args.steps

    peak = args.peak_tflops
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if peak is None:
        peak = next((v for k, v in PEAKS.items() if k in name), None)
        if peak is None:
            raise ValueError(f"unknown peak for device {name!r}: pass --peak-tflops")
    result = {"device": name, "preset": args.preset, "precision": args.precision, "zero": args.zero, "world": world,
              "micro": args.micro, "tokens_per_sample": ids.shape[1], "step_s": dt, "flops_per_step": flops,
              "tflops_per_s": flops / dt / 1e12, "peak_tflops": peak, "mfu": flops / dt / 1e12 / peak,
              "samples_per_s": args.micro * world / dt, "tokens_per_s": ids.numel() * world / dt,
              "gradient_checkpointing": args.gradient_checkpointing}
    if rank == 0:
        print(json.dumps(result, indent=1))
        print(f"MFU {100 * result['mfu']:.1f}%  ({result['tflops_per_s']:.1f} of {peak:g} TFLOP/s per device; "
              f"{dt * 1e3:.0f} ms/step, {result['samples_per_s']:.1f} samples/s)")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
