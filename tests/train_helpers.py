"""Shared by the training tests: small rendered data sets and a way to launch `got train` like a user does."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

from got.trainer import free_port

REPO = Path(__file__).resolve().parent.parent


def render_lines(out: Path, n: int, max_chars: int = 24, seed: int = 0, lang: str = "en") -> list[dict]:
    """n plain-engine line slices with short targets, saved as PNG; returns GOT-format records."""
    from data_engines.base import get_engine

    engine = get_engine("plain", layout="line", lang=lang)
    out.mkdir(parents=True, exist_ok=True)
    records, seen, k = [], set(), seed * 10_000
    while len(records) < n:
        sample = engine.render(random.Random(k))
        k += 1
        target = sample.conversations[1]["value"]
        if len(target) > max_chars or target in seen:
            continue
        seen.add(target)
        name = f"line{len(records):03d}.png"
        sample.images[0].save(out / name)
        records.append(sample.to_record([name]))
    return records


def bad_records(out: Path) -> list[dict]:
    """One of each fault the trainer must skip and count: unreadable image, missing image, too long, wrong <image>."""
    (out / "broken.png").write_bytes(b"this is not a png")
    ok = {"from": "human", "value": "<image>\nOCR: "}
    return [
        {"image": "broken.png", "conversations": [ok, {"from": "gpt", "value": "x"}]},
        {"image": "missing.png", "conversations": [ok, {"from": "gpt", "value": "x"}]},
        {"image": "line000.png", "conversations": [ok, {"from": "gpt", "value": "word " * 3000}]},
        {"image": "line000.png", "conversations": [{"from": "human", "value": "<image><image>\nOCR: "},
                                                    {"from": "gpt", "value": "x"}]},
    ]


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1))
    return path


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
             TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                 str(Path.home() / ".cache" / "torch_extensions")),
             PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    e.update(extra)
    return e


def got_train(args: list[str], nproc: int = 1, check: bool = True, timeout: int = 240, **extra_env: str):
    """`got train ...` as one plain process, or under `torchrun --nproc_per_node nproc` (gloo on CPU)."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "got.cli", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), "-m", "got.cli", "train", *args]
    p = subprocess.run(cmd, cwd=REPO, env=env(**extra_env), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))
