"""`got data render`: render N samples of one or several engines to images + a GOT json list, or to
webdataset-style tar shards.

    got data render --engine plain,pdf --n 10000 --out data/docs --seed 0 --workers 8
    got data render --mix plain=0.5,formula=0.2,table=0.3 --n 1e6 --out data/mix --shards --augment paper=0.3,bda=0.5

Layout of --out:
    config.json                     the render's settings, written before the first sample: what a resume must match
    images/000/00000000.png ...     one folder per 1000 samples; multi-page samples: 00000007_0.png, 00000007_1.png
    data.json                       GOT list [{"image": "images/000/00000000.png", "conversations": [...]}, ...]
                                    (written when the render completes)
    records.jsonl                   progress log (index, engine, record, meta), in index order: what resumes
    shards/shard-000000.tar         with --shards: <key>.png (or <key>.0.png, <key>.1.png ...) + <key>.json record
    shards/shard-000000.json        index of the shard (keys, engines, failures)
    manifest.json                   configuration, counts per engine, failures (written when the render completes)

Sample i is a pure function of (seed, i, mix, augment, options): the same seed gives byte-identical files
whatever --workers is, and re-running skips what exists (only missing samples / shards are rendered). A run
killed at any point (Ctrl-C, SIGKILL) and re-run with the same command ends with the same bytes as one that
was never interrupted. Re-running with other settings into the same --out is refused (it would mix two data
sets), except a larger --n, which extends the set; --overwrite starts over.
"""
from __future__ import annotations

import argparse
import collections
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tarfile
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_engines.augment import parse_augment
from data_engines.base import ENGINES
from data_engines.mix import Mixture, parse_engines
from got.checks import check_output, parse_int  # noqa: F401  (parse_int: also this module's public name)

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
CONFIG = "config.json"
# what a render writes into --out: the only names --overwrite deletes
OUTPUTS = (CONFIG, "records.jsonl", "data.json", "manifest.json", "images", "shards")
# Python packages whose version changes what an engine draws (recorded in config.json: a resume must match them)
PACKAGES = {"*": ("Pillow", "wordfreq", "Faker"), "pdf": ("pymupdf",), "formula": ("ziamath", "resvg-py"),
            "molecule": ("rdkit",), "music": ("verovio", "resvg-py"), "chart": ("matplotlib",)}
AUGMENT_PACKAGES = ("numpy",)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
MAX_N = 10**15  # sample indices stay exact as floats (progress bar, rates); far beyond any disk


def add_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    engines = "\n".join(f"  {name:<13} {DESCRIPTIONS.get(name, '')}" for name in ENGINES)
    r = sub.add_parser("render", help="render synthetic samples with the data engines",
                       description="Render GOT-format training samples offline, reproducibly (same seed -> same bytes).",
                       epilog=f"engines (in this order):\n{engines}\n\nsee docs/engines.md for each engine's options",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--engine", help=f"comma-separated engines or 'all': {', '.join(ENGINES)}")
    r.add_argument("--mix", help="relative weights (finite, > 0) instead of equal ones: plain=0.5,formula=0.2,...")
    # numbers are read as text and checked in cli_main, so a bad value is one line naming the option
    r.add_argument("--n", required=True, help="number of samples, a positive integer (1e6 works)")
    r.add_argument("--out", required=True,
                   help="output folder (re-running the same command on it resumes; other settings are refused)")
    r.add_argument("--overwrite", action="store_true",
                   help=f"start over: first delete what an earlier render left in --out ({', '.join(OUTPUTS)})")
    r.add_argument("--seed", default="0", help="integer (default 0)")
    r.add_argument("--workers", default=str(os.cpu_count() or 1), help="processes (default: all cores)")
    r.add_argument("--shards", action="store_true", help="write webdataset-style tar shards instead of image files")
    r.add_argument("--shard-size", default=str(SHARD_SIZE), help="samples per shard (default %(default)s)")
    r.add_argument("--augment", help="PP-OCR augmentations NAME[=PROB],...: paper, tia, bda, copypaste")
    r.add_argument("--opt", action="append", default=[], metavar="ENGINE.KEY=VALUE",
                   help="engine option (YAML value), repeatable: --opt plain.lang=zh --opt multi_page.pages=[2,4]")
    parser.set_defaults(_data_parser=parser)


def cli_main(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) != "render":
        args._data_parser.print_help()
        return 2
    max_workers = 4 * (os.cpu_count() or 1)
    n = parse_int("--n", args.n, minimum=1, maximum=MAX_N)
    seed = parse_int("--seed", args.seed)
    workers = parse_int("--workers", args.workers, minimum=1, maximum=max(max_workers, 4))
    shard_size = parse_int("--shard-size", args.shard_size, minimum=1)
    # Ctrl-C must stop a render even when the launcher left SIGINT ignored (nohup, CI runners, test workers)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        manifest = render(engines=args.engine, mix=args.mix, n=n, out=args.out, seed=seed, workers=workers,
                          shards=args.shards, shard_size=shard_size, augment=args.augment,
                          options=parse_options(args.opt), overwrite=args.overwrite)
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; a second Ctrl-C while saying so is ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"got data render: interrupted; what was rendered into {args.out} is kept, "
              "rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"{manifest['samples']} samples in {args.out} ({counts}); {manifest['failed']} failed")
    return 0


# ------------------------------------------------------------------------------------------ argument checks

# parse_int (the integer check) and check_output (the output-folder check) are got.checks', shared by every command


def check_finite(option: str, value: Any) -> None:
    """Refuse NaN / infinity anywhere inside an option value (they would also make manifest.json invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{option}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(f"{option}.{k}", v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_finite(option, v)


def parse_options(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """["plain.lang=zh", "multi_page.pages=[2,4]"] -> {"plain": {"lang": "zh"}, "multi_page": {"pages": [2, 4]}}."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        engine, dot, name = key.partition(".")
        if not (eq and dot and engine and name):
            raise ValueError(f"--opt {pair!r}: expected ENGINE.KEY=VALUE, e.g. plain.lang=zh")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--opt {pair!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
        check_finite(f"--opt {engine.strip()}.{name.strip()}", parsed)
        out.setdefault(engine.strip(), {})[name.strip()] = parsed
    return out


# ---------------------------------------------------------------------------------------------- workers

_MIX: Mixture | None = None


def _init_worker(mixture: Mixture, parent: int | None = None) -> None:
    global _MIX
    _MIX = mixture
    if parent is not None:  # a pool worker
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no worker tracebacks
        if sys.platform.startswith("linux"):  # and die with the parent, even on SIGKILL (no orphan keeps writing)
            try:
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            except (OSError, AttributeError):
                pass
            if os.getppid() != parent:
                os._exit(1)
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by _pool while forking


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
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _versions(weights: dict[str, float], augment: dict[str, float]) -> dict[str, str]:
    """Versions of this project and of the packages that draw these engines' samples."""
    from importlib import metadata

    import got

    names = set(PACKAGES["*"]) | {p for e in weights for p in PACKAGES.get(e, ())}
    if augment:
        names |= set(AUGMENT_PACKAGES)
    out = {"got": got.__version__}
    for name in sorted(names, key=str.lower):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value


def _differences(old: dict, new: dict, skip: Iterable[str]) -> list[str]:
    """'seed (0 there, 1 now)', 'versions.Pillow (12.0 there, 13.0 now)', ... for keys whose values differ."""
    out = []
    for key in [k for k in new if k not in skip] + [k for k in old if k not in new and k not in skip]:
        a, b = old.get(key), new.get(key)
        if key == "versions" and isinstance(a, dict) and isinstance(b, dict):  # packages both renders used
            a, b = ({k: v for k, v in d.items() if k in a and k in b} for d in (a, b))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{k} ({_show(a.get(k, 'none'))} there, {_show(b.get(k, 'none'))} now)"
                    for k in list(b) + [k for k in a if k not in b] if a.get(k) != b.get(k)]
        else:
            out.append(f"{key} ({_show(a)} there, {_show(b)} now)")
    return out


def _leftovers(out: Path) -> list[str]:
    return [name for name in OUTPUTS if (out / name).exists()]


def _check_config(out: Path, config: dict, overwrite: bool = False) -> None:
    """The one resume check: --out holds nothing, or a render of the same settings (--n may grow: samples are
    independent of n). Anything else would mix two data sets, so it is refused, unless `overwrite`, which deletes
    the earlier render first. The settings are then recorded in config.json, before the first sample."""
    if overwrite:
        for name in OUTPUTS:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    else:
        source, old, legacy = out / CONFIG, None, False
        if not source.is_file() and (out / "manifest.json").is_file():
            source, legacy = out / "manifest.json", True  # rendered before config.json existed
        if source.is_file():
            try:
                old = json.loads(source.read_text(encoding="utf-8"))
                old = old.get("config") if legacy else old
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = None
            if not isinstance(old, dict):
                raise ValueError(f"--out {out}: {source.name} is unreadable, so resuming could mix data sets; "
                                 "use another --out, or add --overwrite to start over")
        elif _leftovers(out):
            raise ValueError(f"--out {out} holds a render whose settings were not recorded "
                             f"({', '.join(_leftovers(out))}); use another --out, or add --overwrite to start over")
        if old is not None:
            problems = _differences(old, config, skip=("n", "versions") if legacy else ("n",))
            if problems:
                problems[0] = "a different " + problems[0]
            old_n = old.get("n")
            if isinstance(old_n, int) and config["n"] < old_n:
                problems.append(f"--n {old_n} (--n {config['n']} would leave samples {config['n']}-{old_n - 1} "
                                "behind)")
            if problems:
                raise ValueError(f"--out {out} was rendered with {'; '.join(problems)}: rerun with the same settings "
                                 "to resume, use another --out, or add --overwrite to start over")
    for name in (CONFIG, "records.jsonl", "data.json", "manifest.json"):  # torn temporaries of a killed run
        (out / f"{name}.tmp").unlink(missing_ok=True)
    _write_json(out / CONFIG, config)


def _pool(workers: int, mixture: Mixture):
    if workers <= 1:
        _init_worker(mixture)
        return None
    # SIGINT stays blocked while forking, so no worker can take a Ctrl-C before it ignores it (_init_worker)
    mask = getattr(signal, "pthread_sigmask", None)
    if mask:
        mask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(
            workers, initializer=_init_worker, initargs=(mixture, os.getpid()))
    finally:
        if mask:
            mask(signal.SIG_UNBLOCK, {signal.SIGINT})


_END = object()


def _in_order(pool, func, jobs: Iterable, window: int) -> Iterator:
    """func(job) for each job, in job order, with at most `window` jobs submitted and not yet consumed: jobs are
    drawn lazily (never a list of n), and only results that finish ahead of their turn are held."""
    jobs = iter(jobs)
    if pool is None:
        yield from map(func, jobs)
        return
    pending: collections.deque = collections.deque()
    while True:
        while len(pending) < window:
            job = next(jobs, _END)
            if job is _END:
                break
            pending.append(pool.apply_async(func, (job,)))
        if not pending:
            return
        yield pending.popleft().get()


def render(engines: str | list[str] | None = None, mix: str | dict | None = None, *, n: int, out: str | Path,
           seed: int = 0, workers: int = 1, shards: bool = False, shard_size: int = SHARD_SIZE,
           augment: str | dict | None = None, options: dict[str, dict[str, Any]] | None = None,
           progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Render samples 0..n-1 into `out` (resuming); returns the manifest. Raises ValueError on bad arguments,
    including a resume with other settings (unless `overwrite`, which starts over)."""
    from tqdm import tqdm

    n = parse_int("--n", n, minimum=1, maximum=MAX_N)
    seed = parse_int("--seed", seed)
    workers = parse_int("--workers", workers, minimum=1)
    shard_size = parse_int("--shard-size", shard_size, minimum=1)
    weights = parse_engines(engines, mix)
    try:
        augment = parse_augment(augment)
    except ValueError as e:
        raise ValueError(f"--augment: {e}") from None
    for engine, opts in (options or {}).items():
        check_finite(f"--opt {engine}", opts)
    mixture = Mixture(weights, seed, augment, options)
    for name in weights:  # fail now, in one line, if an engine cannot be built (missing font, package, option)
        try:
            mixture.engine(name)
        except TypeError as e:
            raise ValueError(f"engine {name}: bad option: {e}") from None
        except ImportError as e:
            raise ValueError(f"engine {name}: {e}") from None
    out = Path(out)
    check_output("--out", out, "dir", create=True)  # a writable folder, made now: one line before any work
    config = {"n": n, "seed": seed, "weights": weights, "augment": mixture.augment or None, "options": options or {},
              "format": "shards" if shards else "images", **({"shard_size": shard_size} if shards else {}),
              "versions": _versions(weights, mixture.augment)}
    config = json.loads(json.dumps(config, ensure_ascii=False, allow_nan=False))  # as it reads back from disk
    _check_config(out, config, overwrite)
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


# ---------------------------------------------------------------------------------------------- records.jsonl

def _log_entry(line: bytes, out: Path) -> dict | None:
    """A complete records.jsonl line whose images are all on disk -> its entry; anything else -> None."""
    if not line.endswith(b"\n"):
        return None  # torn by a kill
    try:
        entry = json.loads(line)
        index, image = entry["index"], entry["record"]["image"]
        images = [image] if isinstance(image, str) else list(image)
        if isinstance(index, int) and index >= 0 and images and all((out / p).is_file() for p in images):
            return entry
    except (ValueError, KeyError, TypeError, OSError):
        pass
    return None


def _sorted_log(path: Path, out: Path) -> array:
    """Make records.jsonl canonical: complete lines of samples whose images exist, one per index, in index order
    (what an uninterrupted render writes). Rewritten only when it is not already so; returns the indices."""
    indices, offsets, canonical = array("q"), array("q"), True
    if not path.is_file():
        return indices
    with open(path, "rb") as f:
        offset = 0
        for line in f:
            entry = _log_entry(line, out)
            if entry is None or (indices and entry["index"] <= indices[-1]):
                canonical = False
            if entry is not None:
                indices.append(entry["index"])
                offsets.append(offset)
            offset += len(line)
        if canonical:
            return indices
        order = sorted(range(len(indices)), key=indices.__getitem__)
        kept = array("q")
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "wb") as w:
            for k in order:
                if kept and kept[-1] == indices[k]:
                    continue  # the same sample logged twice
                f.seek(offsets[k])
                w.write(f.readline())
                kept.append(indices[k])
    os.replace(tmp, path)
    return kept


def _missing(done: array, n: int) -> Iterator[int]:
    """0..n-1 minus the sorted `done`, lazily."""
    j = 0
    for i in range(n):
        while j < len(done) and done[j] < i:
            j += 1
        if j < len(done) and done[j] == i:
            continue
        yield i


def _write_data_json(log_path: Path, out: Path, n: int) -> Counter:
    """data.json streamed from the (sorted) log, byte for byte what json.dumps(list) would write."""
    counts: Counter = Counter()
    tmp = out / "data.json.tmp"
    with open(log_path, "rb") as log, open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for line in log:
            entry = json.loads(line)
            if entry["index"] >= n:
                continue
            f.write((", " if counts else "") + json.dumps(entry["record"], ensure_ascii=False))
            counts[entry["engine"]] += 1
        f.write("]\n")
    os.replace(tmp, out / "data.json")
    return counts


def _render_images(mixture, out, n, workers, shard_size, failures, tqdm, progress) -> Counter:
    log_path = out / "records.jsonl"
    done = _sorted_log(log_path, out)
    last = done[-1] if done else -1
    below = sum(1 for i in done if i < n)
    log_path.touch()
    pool = _pool(workers, mixture)
    jobs = ((i, str(out)) for i in _missing(done, n))
    results = _in_order(pool, _render_to_files, jobs, window=4 * workers)
    bar = tqdm(total=n, initial=below, desc="render", unit="sample", disable=not progress, dynamic_ncols=True)
    unsorted = False
    try:
        with open(log_path, "ab") as log:
            for index, name, record, extra in results:
                if record is None:
                    failures.append({"index": index, "engine": name, "error": extra})
                    bar.set_postfix(failed=len(failures))
                else:
                    entry = {"index": index, "engine": name, "record": record, "meta": extra}
                    log.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
                    log.flush()
                    unsorted |= index < last  # filled a hole (deleted image, earlier failure): sort at the end
                bar.update()
    finally:  # also on Ctrl-C: the log holds what is done, and the next run resumes from it
        bar.close()
        if pool:
            pool.terminate()
    if unsorted:
        _sorted_log(log_path, out)
    return _write_data_json(log_path, out, n)


# ---------------------------------------------------------------------------------------------- shards

def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata: the same samples give a byte-identical tar
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _shard_done(shard_dir: Path, s: int, n: int, shard_size: int) -> dict | None:
    index_path = shard_dir / f"shard-{s:06d}.json"
    if not ((shard_dir / f"shard-{s:06d}.tar").is_file() and index_path.is_file()):
        return None
    try:
        info = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(info, dict) and info.get("indices") == [s * shard_size, min(n, (s + 1) * shard_size)]:
        return info
    return None


def _render_shards(mixture, out, n, workers, shard_size, failures, tqdm, progress) -> Counter:
    shard_dir = out / "shards"
    shard_dir.mkdir(exist_ok=True)
    n_shards = (n + shard_size - 1) // shard_size
    counts: Counter = Counter()
    bar = tqdm(total=n, desc="render", unit="sample", disable=not progress, dynamic_ncols=True)

    def todo() -> Iterator[int]:  # shard by shard, lazily: finished shards are counted as they are passed
        for s in range(n_shards):
            info = _shard_done(shard_dir, s, n, shard_size)
            if info is not None:
                counts.update(info["counts"])
                failures.extend(info["failures"])
                bar.update(min(n, (s + 1) * shard_size) - s * shard_size)
                continue
            yield from range(s * shard_size, min(n, (s + 1) * shard_size))

    pool = _pool(workers, mixture)
    results = _in_order(pool, _render_to_bytes, todo(), window=4 * workers)
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
