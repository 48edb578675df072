"""`got data render`: render N samples of one or several engines to images + a GOT json list, or to
webdataset-style tar shards.

    got data render --engine plain,pdf --n 10000 --out data/docs --seed 0 --workers 8
    got data render --mix plain=0.5,formula=0.2,table=0.3 --n 1e6 --out data/mix --shards --augment paper=0.3,bda=0.5

Layout of --out:
    images/000/00000000.png ...     one folder per 1000 samples; multi-page samples: 00000007_0.png, 00000007_1.png
    data.json                       GOT list [{"image": "images/000/00000000.png", "conversations": [...]}, ...]
    records.jsonl                   progress log (index, engine, record, meta): what makes re-running resume
    shards/shard-000000.tar         with --shards: <key>.png (or <key>.0.png, <key>.1.png ...) + <key>.json record
    shards/shard-000000.json        index of the shard (keys, engines, failures)
    manifest.json                   configuration, counts per engine, failures

Sample i is a pure function of (seed, i, mix, augment, options): the same seed gives byte-identical files
whatever --workers is, and re-running skips what exists (only missing samples / shards are rendered).
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

from data_engines.base import ENGINES
from data_engines.mix import Mixture, parse_engines

DESCRIPTIONS = {
    "plain": "plain-text pages (1-3 columns, headings), line and paragraph slices; en / zh",
    "pdf": "multi-column documents typeset with pymupdf; target from the PDF text layer",
    "formula": "LaTeX formulas from a grammar, display and inline; Mathpix-style markdown target",
    "table": "random tables rendered as images; LaTeX tabular target",
    "molecule": "random valid molecules drawn with RDKit; SMILES target",
    "music": "single-system Humdrum **kern drawn with Verovio; **kern target",
    "geometry": "points, lines, circles, polygons; TikZ target",
    "chart": "bar / line / pie charts with matplotlib; table / dict of the plotted values",
    "fine_grained": "page + box (0-1000 coords in the prompt) or red/green/blue frame; the region's text",
    "multi_crop": "large pages (2000-4000 px) for the patch-reference query",
    "multi_page": "2-8 short pages of one document; the pages' text in order",
}
SHARD_SIZE = 1000
PNG_LEVEL = 3  # zlib level: 3 encodes ~1.5x faster than 6 for <5% larger files


def add_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    engines = "\n".join(f"  {name:<13} {DESCRIPTIONS.get(name, '')}" for name in ENGINES)
    r = sub.add_parser("render", help="render synthetic samples with the data engines",
                       description="Render GOT-format training samples offline, reproducibly (same seed -> same bytes).",
                       epilog=f"engines (in this order):\n{engines}\n\nsee docs/engines.md for each engine's options",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--engine", help=f"comma-separated engines or 'all': {', '.join(ENGINES)}")
    r.add_argument("--mix", help="relative weights instead of equal ones: plain=0.5,formula=0.2,...")
    r.add_argument("--n", required=True, type=lambda s: int(float(s)), help="number of samples (1e6 works)")
    r.add_argument("--out", required=True, help="output folder (re-running on it resumes)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    r.add_argument("--shards", action="store_true", help="write webdataset-style tar shards instead of image files")
    r.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="samples per shard (default %(default)s)")
    r.add_argument("--augment", help="PP-OCR augmentations NAME[=PROB],...: paper, tia, bda, copypaste")
    r.add_argument("--opt", action="append", default=[], metavar="ENGINE.KEY=VALUE",
                   help="engine option (YAML value), repeatable: --opt plain.lang=zh --opt multi_page.pages=[2,4]")
    parser.set_defaults(_data_parser=parser)


def cli_main(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "render":
        args._data_parser.print_help()
        return 2
    manifest = render(engines=args.engine, mix=args.mix, n=args.n, out=args.out, seed=args.seed,
                      workers=args.workers, shards=args.shards, shard_size=args.shard_size, augment=args.augment,
                      options=parse_options(args.opt))
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"{manifest['samples']} samples in {args.out} ({counts}); {manifest['failed']} failed")
    return 0


def parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """["plain.lang=zh", "multi_page.pages=[2,4]"] -> {"plain": {"lang": "zh"}, "multi_page": {"pages": [2, 4]}}."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        engine, dot, name = key.partition(".")
        if not (eq and dot and engine and name):
            raise ValueError(f"--opt {pair!r}: expected ENGINE.KEY=VALUE, e.g. plain.lang=zh")
        out.setdefault(engine.strip(), {})[name.strip()] = yaml.safe_load(value)
    return out


# ---------------------------------------------------------------------------------------------- workers

_MIX: Mixture | None = None


def _init_worker(mixture: Mixture) -> None:
    global _MIX
    _MIX = mixture


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=PNG_LEVEL)
    return buf.getvalue()


def image_names(index: int, count: int) -> list[str]:
    stem = f"images/{index // 1000:03d}/{index:08d}"
    return [f"{stem}.png"] if count == 1 else [f"{stem}_{p}.png" for p in range(count)]


def _render_to_files(job: tuple[int, str]) -> tuple[int, str, dict | None, dict | str]:
    """Render sample `index` and write its images under `out`; returns (index, engine, record, meta | error)."""
    index, out = job
    name = _MIX.engine_at(index)
    try:
        name, sample = _MIX.render(index)
    except Exception as e:  # counted and reported; the sample is left missing, never replaced by another
        return index, name, None, f"{type(e).__name__}: {e}"
    names = image_names(index, len(sample.images))
    for rel, img in zip(names, sample.images):
        path = Path(out) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(_png(img))
        os.replace(tmp, path)
    return index, name, sample.to_record(names), _jsonable(sample.meta)


def _render_to_bytes(index: int) -> tuple[int, str, dict | None, list[bytes] | str]:
    name = _MIX.engine_at(index)
    try:
        name, sample = _MIX.render(index)
    except Exception as e:
        return index, name, None, f"{type(e).__name__}: {e}"
    key = f"{index:08d}"
    names = [f"{key}.png"] if len(sample.images) == 1 else [f"{key}.{p}.png" for p in range(len(sample.images))]
    return index, name, sample.to_record(names), [_png(im) for im in sample.images]


def _jsonable(meta: dict) -> dict:
    return json.loads(json.dumps(meta, default=str, ensure_ascii=False))


# ---------------------------------------------------------------------------------------------- driver

def _write_json(path: Path, obj: Any, indent: int | None = 1) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=indent) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _check_config(out: Path, config: dict) -> None:
    """Resuming into a folder rendered with another seed / mix / augment / options would mix two datasets."""
    path = out / "manifest.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    except json.JSONDecodeError:
        return
    diff = [k for k in config if k != "n" and old.get(k) != config[k]]
    if diff:
        raise ValueError(f"{out} was rendered with a different {', '.join(diff)} "
                         f"({'; '.join(f'{k}: {old.get(k)!r} -> {config[k]!r}' for k in diff)}); "
                         "use another --out, or the same settings to resume")


def _pool(workers: int, mixture: Mixture):
    if workers <= 1:
        _init_worker(mixture)
        return None
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(
        workers, initializer=_init_worker, initargs=(mixture,))


def render(engines: str | list[str] | None = None, mix: str | dict | None = None, *, n: int, out: str | Path,
           seed: int = 0, workers: int = 1, shards: bool = False, shard_size: int = SHARD_SIZE,
           augment: str | dict | None = None, options: dict[str, dict[str, Any]] | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Render samples 0..n-1 into `out` (resuming); returns the manifest. Raises ValueError on bad arguments."""
    from tqdm import tqdm

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    weights = parse_engines(engines, mix)
    mixture = Mixture(weights, seed, augment, options)
    for name in weights:  # fail now, in one line, if an engine cannot be built (missing font, package, option)
        try:
            mixture.engine(name)
        except TypeError as e:
            raise ValueError(f"engine {name}: bad option: {e}") from None
        except ImportError as e:
            raise ValueError(f"engine {name}: {e}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"n": n, "seed": seed, "weights": weights, "augment": mixture.augment or None, "options": options or {},
              "format": "shards" if shards else "images", **({"shard_size": shard_size} if shards else {})}
    _check_config(out, config)
    failures: list[dict[str, Any]] = []
    run = _render_shards if shards else _render_images
    counts = run(mixture, out, n, workers, shard_size, failures, tqdm, progress)
    manifest = {"config": config, "samples": sum(counts.values()), "counts": {k: counts[k] for k in ENGINES if k in counts},
                "failed": len(failures), "failures": failures[:20]}
    _write_json(out / "manifest.json", manifest)
    if failures:
        print(f"got data render: {len(failures)} sample(s) failed and were left out "
              f"(first: #{failures[0]['index']} {failures[0]['engine']}: {failures[0]['error']}); see {out}/manifest.json",
              file=sys.stderr)
    return manifest


def _read_log(path: Path, out: Path) -> dict[int, dict]:
    """records.jsonl -> {index: entry} for samples whose images are all on disk (a torn last line is ignored)."""
    done: dict[int, dict] = {}
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        image = entry["record"]["image"]
        if all((out / p).is_file() for p in ([image] if isinstance(image, str) else image)):
            done[entry["index"]] = entry
    return done


def _render_images(mixture, out, n, workers, shard_size, failures, tqdm, progress) -> Counter:
    log_path = out / "records.jsonl"
    done = _read_log(log_path, out)
    todo = [i for i in range(n) if i not in done]
    pool = _pool(workers, mixture)
    jobs = ((i, str(out)) for i in todo)
    results = pool.imap_unordered(_render_to_files, jobs, chunksize=4) if pool else map(_render_to_files, jobs)
    bar = tqdm(total=n, initial=n - len(todo), desc="render", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            for index, name, record, extra in results:
                if record is None:
                    failures.append({"index": index, "engine": name, "error": extra})
                    bar.set_postfix(failed=len(failures))
                else:
                    entry = {"index": index, "engine": name, "record": record, "meta": extra}
                    log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    log.flush()
                    done[index] = entry
                bar.update()
    finally:  # also on Ctrl-C: what is done is listed, and the next run resumes from it
        bar.close()
        if pool:
            pool.terminate()
        ordered = [done[i] for i in sorted(done) if i < n]
        _write_json(out / "data.json", [e["record"] for e in ordered], indent=None)
    return Counter(e["engine"] for e in ordered)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata: the same samples give a byte-identical tar
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _render_shards(mixture, out, n, workers, shard_size, failures, tqdm, progress) -> Counter:
    shard_dir = out / "shards"
    shard_dir.mkdir(exist_ok=True)
    n_shards = (n + shard_size - 1) // shard_size
    counts: Counter = Counter()
    todo_shards = []
    for s in range(n_shards):
        index_path = shard_dir / f"shard-{s:06d}.json"
        if (shard_dir / f"shard-{s:06d}.tar").is_file() and index_path.is_file():
            info = json.loads(index_path.read_text(encoding="utf-8"))
            if info.get("indices") == [s * shard_size, min(n, (s + 1) * shard_size)]:
                counts.update(info["counts"])
                failures.extend(info["failures"])
                continue
        todo_shards.append(s)
    todo = [i for s in todo_shards for i in range(s * shard_size, min(n, (s + 1) * shard_size))]
    pool = _pool(workers, mixture)
    results = pool.imap(_render_to_bytes, todo, chunksize=2) if pool else map(_render_to_bytes, todo)
    bar = tqdm(total=n, initial=n - len(todo), desc="render", unit="sample", disable=not progress, dynamic_ncols=True)
    tar = None
    try:
        current = None
        for index, name, record, extra in results:
            s = index // shard_size
            if s != current:
                if tar is not None:
                    _close_shard(tar, shard_dir, current, shard_info, n, shard_size)
                current, shard_info = s, {"counts": Counter(), "failures": [], "keys": []}
                tar = tarfile.open(shard_dir / f"shard-{s:06d}.tar.tmp", "w", format=tarfile.USTAR_FORMAT)
            if record is None:
                failures.append({"index": index, "engine": name, "error": extra})
                shard_info["failures"].append(failures[-1])
                bar.set_postfix(failed=len(failures))
            else:
                names = [record["image"]] if isinstance(record["image"], str) else record["image"]
                for member, data in zip(names, extra):
                    _tar_add(tar, member, data)
                key = f"{index:08d}"
                _tar_add(tar, f"{key}.json", json.dumps(record, ensure_ascii=False).encode("utf-8"))
                shard_info["counts"][name] += 1
                shard_info["keys"].append(key)
                counts[name] += 1
            bar.update()
        if tar is not None:
            _close_shard(tar, shard_dir, current, shard_info, n, shard_size)
            tar = None
    finally:
        bar.close()
        if tar is not None:  # interrupted mid-shard: drop the partial shard, it is re-rendered next time
            tar.close()
            (shard_dir / f"shard-{current:06d}.tar.tmp").unlink(missing_ok=True)
        if pool:
            pool.terminate()
    return counts


def _close_shard(tar, shard_dir: Path, s: int, info: dict, n: int, shard_size: int) -> None:
    tar.close()
    os.replace(shard_dir / f"shard-{s:06d}.tar.tmp", shard_dir / f"shard-{s:06d}.tar")
    _write_json(shard_dir / f"shard-{s:06d}.json",
                {"indices": [s * shard_size, min(n, (s + 1) * shard_size)], "counts": dict(sorted(info["counts"].items())),
                 "failures": info["failures"], "keys": info["keys"]})
