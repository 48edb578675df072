"""`got eval`: score a GOT checkpoint and OCR-1.0 peers (Tesseract, PP-OCR via RapidOCR) on the same records.

    got eval --model runs/stage3/model --data fox_en.json --peer tesseract --peer rapidocr --out eval/fox_en

DATA is GOT-format JSON (a list of records, or JSON lines) — `got data render` output or a benchmark the user
converted (docs/evaluation.md shows Fox). Each record's own query is what the model is asked (box, colour,
multi-crop and multi-page queries included); `--mode plain|format` rewrites just the plain/format part of every
query. Peers read the same image (the box region for box queries; all pages for multi-page records) with their
own layout analysis. Everything is scored by got.metrics against the record's answer; formatted answers are
also scored per part (text / math / tables).

Writes OUT/samples.jsonl (one line per record: query, answer, each system's prediction, seconds and metrics),
OUT/summary.json and OUT/summary.md (one table row per system, per data set, and the sample-weighted average).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence


from got import metrics as M
from got.prompts import Query, build_query
from got.peers import PEERS, Peer, make_peer

TABLE_COLUMNS = [("edit_distance", "edit dist ↓"), ("f1", "F1 ↑"), ("precision", "precision ↑"),
                 ("recall", "recall ↑"), ("bleu", "BLEU ↑"), ("meteor", "METEOR ↑"), ("cer", "CER ↓"),
                 ("wer", "WER ↓"), ("word_acc", "word acc ↑")]
PART_COLUMNS = [("edit_distance", "edit dist ↓"), ("f1", "F1 ↑"), ("bleu", "BLEU ↑"), ("meteor", "METEOR ↑"),
                ("cer", "CER ↓")]



# ---------------------------------------------------------------------------------------------------- data sets
@dataclass
class EvalSample:
    index: int                 # position in its data file
    dataset: str
    images: list[str]          # one path, or the pages of a multi-page record
    query: str                 # what the model is asked (after --mode)
    answer: str                # ground truth
    box: list[int] | None = None   # GOT's 0-1000 grid, from a box query
    crop: bool = False

    @property
    def formatted(self) -> bool:
        return "OCR with format" in self.query


def set_mode(query: str, mode: str | None) -> str:
    """--mode: rewrite the plain/format part of a GOT query, keeping its box / colour / crop / multi-page part;
    any other query (a benchmark's own wording, e.g. Fox's) becomes GOT's plain or format query."""
    if mode in (None, "auto"):
        return query
    parsed = Query.parse(query)
    return build_query(mode) if parsed.raw is not None else parsed.with_mode(mode).text()


def load_dataset(path: str | Path, image_root: str | Path | None = None, mode: str | None = None,
                 limit: int | None = None) -> list[EvalSample]:
    """GOT-format records (JSON list or JSON lines) -> samples, all checked before any model runs: a bad record
    or a missing image stops here with one line naming the file, the record and the problem."""
    from got.prompts import IMAGE_PLACEHOLDER, parse_record

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of GOT records (or a .jsonl file with one per line)")
    if not records:
        raise ValueError(f"{path}: holds no records")
    root = Path(image_root) if image_root is not None else path.parent
    samples = []
    for i, record in enumerate(records[:limit] if limit else records):
        where = f"{path}: record {i}"
        try:
            images, turns = parse_record(record, root)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if not images:
            raise ValueError(f"{where}: has no image to read")
        for im in images:
            if not Path(im).is_file():
                raise FileNotFoundError(f"{where}: image {im} not found (relative paths are read from "
                                        f"{'--image-root' if image_root is not None else 'the data file folder'} {root})")
        human = turns[0]["value"]
        query = human.split(IMAGE_PLACEHOLDER, 1)[1].removeprefix("\n") if IMAGE_PLACEHOLDER in human else human
        query = set_mode(query, mode)
        q = Query.parse(query)
        samples.append(EvalSample(index=i, dataset=path.stem, images=images, query=query, answer=turns[1]["value"],
                                  box=list(q.box) if q.box else None, crop=q.crop))
    return samples


# ------------------------------------------------------------------------------------------------------ systems
class GOTSystem:
    """The model under test, asked each record's exact query; prompts are batched by got.inference."""

    name = "got"

    def __init__(self, path: str | Path, dtype: str | None = None, device: str | None = None, batch_size: int = 8,
                 max_new_tokens: int = 4096, max_tiles: int = 6):
        from got.inference import GOT

        self.path = str(path)
        self.got = GOT.from_pretrained(path, dtype=dtype, device=device)
        self.batch_size, self.max_new_tokens, self.max_tiles = batch_size, max_new_tokens, max_tiles

    def info(self) -> dict[str, Any]:
        model = self.got.model
        embed = model.config.vocab_size * model.config.embed_dim  # the input embeddings (a deferred decoder stays so)
        return {"path": self.path, "params": model.num_parameters(), "params_non_embedding": model.num_parameters() - embed,
                "image_size": self.got.config.image_size, "dtype": str(self.got.dtype).removeprefix("torch."),
                "device": str(self.got.device)}

    def _prompt(self, s: EvalSample):
        """The record's own query (a Query parsed from its text) through GOT's one input path."""
        t0 = time.perf_counter()
        query = replace(Query.parse(s.query), crop=s.crop, max_tiles=self.max_tiles, multi_page=len(s.images) > 1)
        [prompt] = self.got.prepare(s.images if len(s.images) > 1 else s.images[0], query, index=s.index)
        prompt.source, prompt.mode, prompt.seconds = s.images[0], "eval", time.perf_counter() - t0
        return prompt

    def read(self, samples: Sequence[EvalSample], progress=None) -> list[tuple[str, float]]:
        """Prepared and generated a batch at a time: a prepared page holds its tiles or line crops (a real page's
        ~60 crops: ~12 MB), so preparing a whole chunk first would hold all of them at once. A line model
        prepares and reads each page in one go, several pages at once (GOT.read_each): no core waits for a
        batch's last page between the two steps (real pages 8-10% faster than batch by batch)."""
        answers = []
        if self.got.line_model:
            for a in self.got.read_each(lambda s: [self._prompt(s)], samples, self.max_new_tokens):
                answers += a
                if progress:
                    progress(1)
            return [(a.text, a.seconds) for a in answers]
        for start in range(0, len(samples), self.batch_size):
            prompts = list(self.got.map_pages(self._prompt, samples[start:start + self.batch_size]))
            answers += self.got.generate(prompts,
                                         max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                         on_batch=(lambda done: progress(len(done))) if progress else None)
        return [(a.text, a.seconds) for a in answers]


def _score(pred: str, s: EvalSample) -> dict[str, Any]:
    m: dict[str, Any] = M.page_metrics(pred, s.answer)
    if s.formatted:
        m["parts"] = M.format_metrics(pred, s.answer)
    return m


def _summarize(rows: list[dict[str, Any]], preds: list[str], samples: list[EvalSample]) -> dict[str, Any]:
    out: dict[str, Any] = M.mean_metrics([r["metrics"] for r in rows])
    out.update(M.corpus_error_rates(preds, [s.answer for s in samples]))
    out["seconds_per_sample"] = sum(r["seconds"] for r in rows) / len(rows)
    out["errors"] = sum("error" in r for r in rows)
    fmt = [r["metrics"]["parts"] for r, s in zip(rows, samples) if s.formatted]
    if fmt:
        out["parts"] = {part: M.mean_metrics([p[part] for p in fmt]) for part in M.FORMAT_PARTS}
    return out


def evaluate(samples: list[EvalSample], systems: list, out_dir: str | Path, chunk: int = 32,
             progress: bool = True) -> dict[str, Any]:
    """Run every system on the samples (chunk by chunk, so a long run writes results as it goes), score them,
    write samples.jsonl / summary.json / summary.md to out_dir and return the summary."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {sys_.name: [] for sys_ in systems}
    preds: dict[str, list[str]] = {sys_.name: [] for sys_ in systems}
    # one tick per answer of one system, so a slow model on big pages still shows movement batch by batch
    bar = tqdm(total=len(samples) * len(systems), desc="got eval", unit="answer", disable=not progress,
               file=sys.stderr)
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as jsonl:
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            results = {}
            for system in systems:
                bar.set_postfix_str(system.name)
                try:
                    results[system.name] = [(t, sec, None) for t, sec in system.read(part, bar.update)]
                except RuntimeError:  # a peer choking on one image must not sink the chunk: retry one by one,
                    if not isinstance(system, Peer):  # log and count the failures (the model's errors propagate)
                        raise
                    results[system.name] = []
                    for s in part:
                        try:
                            (t, sec), = system.read([s], bar.update)
                            results[system.name].append((t, sec, None))
                        except RuntimeError as e:
                            tqdm.write(f"got eval: {system.name} failed on {s.images[0]}: {e}", file=sys.stderr)
                            results[system.name].append(("", 0.0, str(e)))
                            bar.update(1)
            for i, s in enumerate(part):
                line: dict[str, Any] = {"dataset": s.dataset, "index": s.index,
                                        "image": s.images[0] if len(s.images) == 1 else s.images,
                                        "query": s.query, "answer": s.answer}
                for system in systems:
                    text, sec, err = results[system.name][i]
                    row = {"pred": text, "seconds": round(sec, 4), "metrics": _score(text, s)}
                    if err:
                        row["error"] = err
                    line[system.name] = row
                    rows[system.name].append(row)
                    preds[system.name].append(text)
                jsonl.write(json.dumps(line, ensure_ascii=False) + "\n")
            jsonl.flush()
    bar.close()

    datasets = list(dict.fromkeys(s.dataset for s in samples))
    summary: dict[str, Any] = {"systems": {}, "data": [{"name": d, "n": sum(s.dataset == d for s in samples)}
                                                       for d in datasets]}
    for system in systems:
        per = {}
        for d in datasets:
            idx = [i for i, s in enumerate(samples) if s.dataset == d]
            per[d] = _summarize([rows[system.name][i] for i in idx], [preds[system.name][i] for i in idx],
                                [samples[i] for i in idx])
        entry: dict[str, Any] = {"datasets": per, "all": _weighted(per) if len(per) > 1 else per[datasets[0]]}
        summary["systems"][system.name] = entry
    return summary


def _weighted(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Across data sets: every metric averaged with weights = sample counts (as scene-text benchmarks report)."""
    out: dict[str, Any] = {"n": sum(v["n"] for v in per.values())}
    keys = [k for k, v in next(iter(per.values())).items() if isinstance(v, (int, float)) and k != "n"]
    for key in keys:
        have = {d: (v[key], v["n"]) for d, v in per.items() if key in v}
        out[key] = M.weighted_average(have) if key != "errors" else sum(v[0] for v in have.values())
    parts = [v["parts"] for v in per.values() if "parts" in v]
    if parts:
        out["parts"] = {}
        for part in M.FORMAT_PARTS:
            subs = [p[part] for p in parts if p[part]["n"]]
            out["parts"][part] = {"n": sum(p["n"] for p in subs)}
            for key in M.PAGE_METRICS:
                if subs:
                    out["parts"][part][key] = M.weighted_average({str(i): (p[key], p["n"]) for i, p in enumerate(subs)})
    return out


# ----------------------------------------------------------------------------------------------------- reports
def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown_summary(summary: dict[str, Any]) -> str:
    lines = ["# got eval", ""]
    model = summary.get("model")
    if model:
        lines.append(f"Model `{model['path']}`: {model['params'] / 1e6:.2f}M parameters, {model['image_size']} px, "
                     f"{model['dtype']} on {model['device']}.")
    lines.append("Data: " + ", ".join(f"`{d['name']}` ({d['n']})" for d in summary["data"])
                 + f"; mode {summary.get('mode', 'auto')}. Metrics: docs/evaluation.md.")
    lines.append("")
    names = list(summary["systems"])
    header = "| system | n | " + " | ".join(t for _, t in TABLE_COLUMNS) + " | s/sample |"
    rule = "|" + "---|" * (len(TABLE_COLUMNS) + 3)
    sections = [("all", "All data" + (" (average weighted by sample count)" if len(summary["data"]) > 1 else ""))]
    if len(summary["data"]) > 1:
        sections += [(d["name"], f"Data set `{d['name']}`") for d in summary["data"]]
    for key, title in sections:
        lines += [f"## {title}", "", header, rule]
        for name in names:
            e = summary["systems"][name]["all" if key == "all" else "datasets"]
            e = e if key == "all" else e[key]
            lines.append(f"| {name} | {e['n']} | " + " | ".join(_fmt(e.get(k, "")) for k, _ in TABLE_COLUMNS)
                         + f" | {e['seconds_per_sample']:.3f} |")
        lines.append("")
    if any("parts" in summary["systems"][n]["all"] for n in names):
        lines += ["## Formatted output by part", "",
                  "| system | part | n | " + " | ".join(t for _, t in PART_COLUMNS) + " |",
                  "|" + "---|" * (len(PART_COLUMNS) + 3)]
        for name in names:
            for part, e in summary["systems"][name]["all"].get("parts", {}).items():
                lines.append(f"| {name} | {part} | {e['n']} | " + " | ".join(_fmt(e.get(k, "")) for k, _ in PART_COLUMNS)
                             + " |")
        lines.append("")
    return "\n".join(lines)


def write_reports(summary: dict[str, Any], out_dir: str | Path) -> str:
    out_dir = Path(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = markdown_summary(summary)
    (out_dir / "summary.md").write_text(md, encoding="utf-8")
    return md


# ---------------------------------------------------------------------------------------------------------- CLI
def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (config.json + model.safetensors + tokenizer); omit to score "
                                   "peers only")
    p.add_argument("--data", required=True, action="append", metavar="DATA.json",
                   help="GOT-format records (.json list or .jsonl); repeat for several data sets")
    p.add_argument("--image-root", help="folder that relative image paths start from (default: the data file's)")
    p.add_argument("--mode", choices=["auto", "plain", "format"], default="auto",
                   help="auto: ask each record's own query; plain/format: GOT queries switch to that mode (box, "
                        "colour, crop kept), other queries become 'OCR: ' / 'OCR with format: '")
    p.add_argument("--peer", action="append", choices=PEERS, default=[],
                   help="also run an OCR-1.0 peer on the same records (repeatable)")
    p.add_argument("--tesseract-lang", default="eng+chi_sim", help="Tesseract languages (default eng+chi_sim)")
    # numbers are read as text and checked in cli_main (got.checks.parse_int), so a bad one is one line naming it
    p.add_argument("--batch-size", default="8", help="prompts the model generates together (default 8)")
    p.add_argument("--limit", help="only the first N records of each data file")
    p.add_argument("--max-new-tokens", default="4096", help="answer length limit in tokens (default 4096)")
    p.add_argument("--max-tiles", default="6", help="tile limit for multi-crop queries (default 6)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", default="eval", help="output folder (default ./eval)")


def cli_main(args: argparse.Namespace) -> int:
    from got.checks import MAX_BATCH_SIZE, MAX_NEW_TOKENS, MAX_TILES, check_device, check_output, parse_int

    # every option checked before any data is read or model loaded: one line naming the option
    args.batch_size = parse_int("--batch-size", args.batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    args.max_new_tokens = parse_int("--max-new-tokens", args.max_new_tokens, minimum=1, maximum=MAX_NEW_TOKENS)
    args.max_tiles = parse_int("--max-tiles", args.max_tiles, minimum=1, maximum=MAX_TILES)
    args.limit = None if args.limit is None else parse_int("--limit", args.limit, minimum=1)
    args.device = check_device("--device", args.device)
    check_output("--out", args.out, "dir")
    if not args.model and not args.peer:
        raise ValueError("nothing to evaluate: give --model and/or --peer")
    names = [Path(d).stem for d in args.data]
    if len(set(names)) != len(names):
        raise ValueError(f"data files must have distinct names (they label the results): {', '.join(args.data)}")
    samples = [s for d in args.data for s in load_dataset(d, args.image_root, args.mode, args.limit)]
    systems: list = [make_peer(p, args.tesseract_lang) for p in dict.fromkeys(args.peer)]  # fail fast on a missing peer
    if args.model:
        systems.insert(0, GOTSystem(args.model, dtype=args.dtype, device=args.device, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, max_tiles=args.max_tiles))
    summary = {"model": systems[0].info() if args.model else None, "mode": args.mode,
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               **evaluate(samples, systems, args.out, chunk=4 * args.batch_size)}
    for d, path in zip(summary["data"], args.data):
        d["path"] = str(path)
    print(write_reports(summary, args.out))
    print(f"got eval: wrote {Path(args.out) / 'samples.jsonl'}, summary.json and summary.md", file=sys.stderr)
    return 0
