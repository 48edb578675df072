"""The default model next to Tesseract and RapidOCR on the held-out rendered sets and the real-document set: CER,
page edit distance, seconds per page and peak RSS, one `got eval` subprocess per (set, system), so each system's
memory and time are its own. Figures go into docs/default_model.md and docs/benchmarks.md.

    python benchmarks/held_out.py --out eval/held_out && python benchmarks/real_docs.py --out eval/real_docs
    python benchmarks/default_model.py --sets eval/held_out/*.json eval/real_docs/data.json [--model default]

Peak RSS is the largest sum of resident memory over the `got eval` process tree (Tesseract runs in child
processes), sampled every 50 ms; pages/s is the set's size over the subprocess's wall time, model loading included.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

SYSTEMS = {"got": ["--model"], "tesseract": ["--peer", "tesseract", "--tesseract-lang", "eng"],
           "rapidocr": ["--peer", "rapidocr"]}


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def run(cmd: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    out, err = proc.communicate()
    w.join()
    return time.perf_counter() - t0, peak[0], subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def failures_png(samples_jsonl: Path, out: Path, k: int = 6) -> None:
    """The k worst-read samples of a set (by the model's CER): image, truth and answer, one row each."""
    from PIL import Image, ImageDraw

    from data_engines.fonts import load_font

    rows = [json.loads(line) for line in samples_jsonl.read_text().splitlines() if line.strip()]
    worst = sorted(rows, key=lambda r: -r["got"]["metrics"]["cer"])[:k]
    font, width = load_font("mono", 14), 1100
    tiles = []
    for r in worst:
        im = Image.open(r["image"]).convert("RGB")
        im.thumbnail((width - 20, 120))
        tile = Image.new("RGB", (width, im.height + 60), "white")
        tile.paste(im, (10, 5))
        d = ImageDraw.Draw(tile)
        d.text((10, im.height + 10), f"truth : {r['answer'][:120]}", fill=(0, 90, 0), font=font)
        d.text((10, im.height + 32), f"answer: {r['got']['pred'][:120]}  (CER {r['got']['metrics']['cer']:.2f})",
               fill=(170, 0, 0), font=font)
        tiles.append(tile)
    sheet = Image.new("RGB", (width, sum(t.height for t in tiles)), "white")
    y = 0
    for t in tiles:
        sheet.paste(t, (0, y))
        y += t.height
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", required=True, help="GOT-format data files")
    ap.add_argument("--model", default="default")
    ap.add_argument("--systems", default="got,tesseract,rapidocr")
    ap.add_argument("--limit", type=int, help="first N records of each set")
    ap.add_argument("--out", default="eval/bench")
    ap.add_argument("--failures", type=Path, help="also draw the worst-read samples of the first set to this PNG")
    a = ap.parse_args()
    rows = []
    for data in a.sets:
        name = Path(data).stem if Path(data).stem != "data" else Path(data).parent.name
        for system in a.systems.split(","):
            out = Path(a.out) / name / system
            args = [*SYSTEMS[system], a.model] if system == "got" else SYSTEMS[system]
            if system == "tesseract" and name.endswith("_zh"):  # Tesseract reads Chinese with chi_sim only
                args = ["--peer", "tesseract", "--tesseract-lang", "chi_sim+eng"]
            cmd = [sys.executable, "-m", "got.cli", "eval", "--data", data, "--out", str(out), *args,
                   *(["--limit", str(a.limit)] if a.limit else [])]
            wall, peak, p = run(cmd)
            if p.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
            e = json.loads((out / "summary.json").read_text())["systems"][system]["all"]
            rows.append({"set": name, "system": system, "n": e["n"], "cer": e["cer"], "edit_distance": e["edit_distance"],
                         "s_per_page": e["seconds_per_sample"], "pages_per_s": e["n"] / wall, "peak_rss_gb": peak / 2**30})
            r = rows[-1]
            print(f"{name:>18} {system:>9}: n {r['n']:>3}  CER {r['cer']:.4f}  ED {r['edit_distance']:.4f}  "
                  f"{r['s_per_page']:.3f} s/page  {r['pages_per_s']:.2f} pages/s (wall)  peak RSS {r['peak_rss_gb']:.2f} GB",
                  flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    if a.failures and "got" in a.systems.split(","):
        first = Path(a.sets[0]).stem if Path(a.sets[0]).stem != "data" else Path(a.sets[0]).parent.name
        failures_png(Path(a.out) / first / "got" / "samples.jsonl", a.failures)
    (Path(a.out) / "table.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| set | system | n | CER ↓ | edit dist ↓ | s/page | pages/s (wall) | peak RSS GB |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['set']} | {r['system']} | {r['n']} | {r['cer']:.4f} | {r['edit_distance']:.4f} | "
              f"{r['s_per_page']:.3f} | {r['pages_per_s']:.2f} | {r['peak_rss_gb']:.2f} |")


if __name__ == "__main__":
    main()
