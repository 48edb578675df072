"""The learning curve of a line model's reading: the CER of the tower's CTC head on held-out lines, checkpoint by
checkpoint, against samples seen. It shows when a run leaves the plateau (docs/default_model.md, "Recipe") without
waiting for the decoder, which reads much later. Run it beside `got train` with --watch: each new checkpoint is
scored before `output.keep_last` deletes it; the figures go to RUN/ctc_curve.tsv (kept across calls).

    python scripts/ctc_curve.py runs/default_stage1 --watch
    python scripts/ctc_curve.py runs/a runs/b --plot curves.png          # the curves side by side
    python scripts/ctc_curve.py runs/default_stage1 runs/default_stage2 --chain --plot docs/samples/recipe_ctc.png
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from PIL import Image

from got.checkpoint import load_model
from got.metrics import cer
from got.processor import ImageProcessor


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def _last_step(run: Path) -> int:
    return max((int(p.name.split("-")[1]) for p in run.glob("checkpoints/step-*")), default=0)


def held_out(path: Path, n: int, image_size) -> tuple[torch.Tensor, list[str]]:
    rows = json.loads(path.read_text())[:n]
    proc = ImageProcessor(image_size)
    pixels = torch.stack([proc.preprocess(Image.open(path.parent / r["image"]).convert("RGB")) for r in rows])
    return pixels, [r["conversations"][1]["value"] for r in rows]


def score_new(run: Path, lines: Path, n: int) -> list[tuple[int, float]]:
    """Score the checkpoints of `run` not yet in its ctc_curve.tsv; returns every (samples, CER) scored so far."""
    table = run / "ctc_curve.tsv"
    rows = [tuple(map(float, line.split("\t"))) for line in table.read_text().splitlines()[1:]] if table.exists() else []
    batch = int(_config(run)["train"]["global_batch_size"])
    done = {int(r[0]) for r in rows}
    data = None
    for ck in sorted(run.glob("checkpoints/step-*/model")):
        step = int(ck.parent.name.split("-")[1])
        if step in done or not (ck / "model.safetensors").exists():
            continue
        model = load_model(ck).eval()
        if data is None:
            data = held_out(lines, n, model.config.vision.image_size)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            reads = [text for text, _ in model.vision_tower.ctc_read(data[0])]
        error = sum(cer(p, t) * len(t) for p, t in zip(reads, data[1])) / sum(len(t) for t in data[1])
        rows.append((step, step * batch, error))
        print(f"{run}: step {step} ({step * batch:,} samples): CTC CER {error:.4f}", flush=True)
    rows.sort()
    table.write_text("step\tsamples\tcer\n" + "".join(f"{int(s)}\t{int(x)}\t{e:.4f}\n" for s, x, e in rows))
    return [(int(x), e) for _, x, e in rows]


def plot(curves: dict[str, list[tuple[int, float]]], out: Path, chain: bool = False) -> None:
    """One curve per run; with `chain`, each run's samples count on from the previous run's last (stages)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    offset = 0
    for name, points in curves.items():
        ax.plot([offset + x for x, _ in points], [max(e, 1e-4) for _, e in points], marker=".", label=name)
        if chain and points:
            offset += points[-1][0]
    ax.set(xlabel="samples seen", ylabel="CTC CER, held-out lines", yscale="log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories of `got train` (a model with a CTC head)")
    ap.add_argument("--lines", type=Path, default=Path("eval/held_out/lines.json"), help="GOT-format line set")
    ap.add_argument("-n", type=int, default=100, help="first N lines of the set")
    ap.add_argument("--watch", action="store_true", help="keep scoring new checkpoints until the runs stop changing")
    ap.add_argument("--every", type=float, default=120, help="seconds between looks with --watch")
    ap.add_argument("--plot", type=Path, help="draw the curves to this PNG")
    ap.add_argument("--chain", action="store_true", help="the runs are consecutive stages: plot them end to end")
    a = ap.parse_args()
    for run in a.runs:
        if not (run / "config.yaml").exists():
            raise SystemExit(f"{run}: not a run directory of `got train` (no config.yaml)")
    if not a.lines.exists():
        raise SystemExit(f"{a.lines}: no such line set (python benchmarks/held_out.py --out eval/held_out)")
    torch.set_num_threads(1)  # beside a training run: one core's worth
    while True:
        finished = all(_last_step(run) >= _config(run)["train"]["max_steps"] for run in a.runs)
        curves = {str(run): score_new(run, a.lines, a.n) for run in a.runs}  # the last checkpoint too
        if not a.watch or finished:
            break
        time.sleep(a.every)
    if a.plot:
        plot(curves, a.plot, a.chain)


if __name__ == "__main__":
    main()
