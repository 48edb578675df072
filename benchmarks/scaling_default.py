"""Score the default model's scaling study (scripts/scaling_default.sh) and fit its laws with `got scaling fit`.

Every checkpoint of every run reads the same 200 held-out lines (benchmarks/held_out.py's `lines` set) with its
CTC head, the reader the shipped model answers with: each line image straight through the processor and the tower
(greedy CTC), without the layout route's segmentation and orientation checks, so the figure is the tower's alone. Each checkpoint becomes one flat point
`{params, tokens, compute, cer}` where params counts the vision tower + CTC head (the part that reads; the OPT
scaffold is the same in every run) and compute is measured, not estimated: FLOPs of one training forward of an
average sample (torch's FlopCounterMode) x 3 (forward + backward) x samples seen. Then:

- E(N): the last checkpoint of each run (the same budget in samples), fitted on the smaller runs and checked on the
  largest;
- E(C): the compute frontier (the best CER reached at each compute, over all runs' checkpoints), from the first
  checkpoint that reads (CER < 0.8: the plateau before it is not a power law).

    python benchmarks/scaling_default.py runs/scaling_s runs/scaling_m runs/scaling_l --out eval/scaling
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from held_out import SEEN, held_out_line  # noqa: E402

from got.checkpoint import list_checkpoints  # noqa: E402
from got.inference import GOT  # noqa: E402
from got.metrics import cer  # noqa: E402

READS = 0.8  # below this CER a checkpoint has begun to read


def train_flops_per_sample(model: GOT, tokens_per_sample: int) -> float:
    """3 x the FLOPs of one forward of a line image + a sequence of the run's average length (labels on)."""
    m = model.model.float()
    h, w = model.config.vision.image_hw
    pixels = torch.zeros(1, 3, h, w)
    n_img = model.config.image_token_len
    ids = torch.full((1, max(tokens_per_sample, n_img + 8)), model.config.endoftext_id)
    ids[0, 2:2 + n_img] = model.config.img_pad_id
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = m(input_ids=ids, pixel_values=pixels, labels=ids)
        if m.vision_tower.ctc_head is not None:
            m.vision_tower.ctc_logits(torch.zeros(1, n_img, model.config.vision.out_channels))
    del out
    return 3.0 * counter.get_total_flops()


@torch.no_grad()
def ctc_reads(model: GOT, images: list, batch: int = 50) -> list[str]:
    tower = model.model.vision_tower
    reads = []
    for i in range(0, len(images), batch):
        pixels = torch.stack([model.processor.preprocess(im) for im in images[i:i + batch]])
        reads += [text for text, _ in tower.ctc_decode(tower(pixels))]
    return reads


def score(run: Path, lines: list, out: Path) -> list[dict]:
    points = []
    flops = None
    for ckpt in tqdm(list_checkpoints(run / "checkpoints"), desc=run.name):
        state = json.loads((ckpt / "trainer_state.json").read_text())
        model = GOT.from_pretrained(ckpt / "model", dtype="float32")
        tower = model.model.vision_tower
        params = sum(p.numel() for p in tower.parameters())
        if flops is None:
            flops = train_flops_per_sample(model, round(state["tokens_total"] / state["samples_total"]))
            model = GOT.from_pretrained(ckpt / "model", dtype="float32")
        reads = ctc_reads(model, [im for im, _ in lines])
        errors = sum(cer(r, t) * len(t) for r, (_, t) in zip(reads, lines))
        point = {"name": f"{run.name}-{state['step']:04d}", "run": run.name, "step": state["step"],
                 "params": params, "tokens": state["tokens_total"], "samples": state["samples_total"],
                 "compute": flops * state["samples_total"], "cer": errors / sum(len(t) for _, t in lines)}
        (out / "points" / f"{point['name']}.json").write_text(json.dumps(point, indent=1) + "\n")
        points.append(point)
    return points


def frontier(points: list[dict]) -> list[dict]:
    """The compute frontier: points that beat every point of less compute."""
    best, keep = float("inf"), []
    for p in sorted(points, key=lambda p: p["compute"]):
        if p["cer"] < best:
            best = p["cer"]
            keep.append(p)
    return keep


def fit(points: list[dict], x: str, folder: Path, out: Path) -> None:
    if len(points) < 2:
        print(f"E({x}): {len(points)} point(s), nothing to fit")
        return
    folder.mkdir(parents=True, exist_ok=True)
    for p in points:
        (folder / f"{p['name']}.json").write_text(json.dumps(p) + "\n")
    cmd = [sys.executable, "-m", "got.cli", "scaling", "fit", *sorted(map(str, folder.glob("*.json"))),
           "--x", x, "--y", "cer", "--out", str(out / f"fit_{x}.png")]
    print("$", " ".join(cmd[1:4]), "...", " ".join(cmd[-6:]))
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("eval/scaling"))
    ap.add_argument("--lines", type=int, default=200)
    a = ap.parse_args()
    (a.out / "points").mkdir(parents=True, exist_ok=True)
    lines = [held_out_line(0, i, SEEN) for i in range(a.lines)]
    points = [p for run in a.runs for p in score(run, lines, a.out)]
    print(f"{'checkpoint':<20} {'tower params':>12} {'samples':>8} {'compute':>10} {'CER':>7}")
    for p in points:
        print(f"{p['name']:<20} {p['params']:>12,} {p['samples']:>8,} {p['compute']:>10.3g} {p['cer']:>7.4f}")
    last = {}
    for p in points:
        if p["step"] >= last.get(p["run"], {"step": -1})["step"]:
            last[p["run"]] = p
    fit(list(last.values()), "params", a.out / "by_params", a.out)
    front = [p for p in frontier(points) if p["cer"] < READS]
    fit(front, "compute", a.out / "by_compute", a.out)
    (a.out / "points.json").write_text(json.dumps(points, indent=1) + "\n")


if __name__ == "__main__":
    main()
