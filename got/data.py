"""Training data: every source is map-style and indexed, so a run is a pure function of (seed, step).

Sources (all mixed by weight into one epoch of `data.samples_per_epoch` samples):
- `json`:   GOT-format list (`{"image", "conversations"}`) or ms-swift `{"messages", "images"}`; .json or .jsonl;
            image paths relative to `image_root` (default: the file's folder).
- `shards`: webdataset tar shards (`got data render --shards`): members grouped by key, `<key>.json` holds the record.
- `engine`: an on-the-fly data engine; draw t is sample t of `got data render` (data_engines.mix) with the same
            seed, options and augment, so it is the same image on every rank, worker and resume.

Why indexed and not an iterable stream: exact resume. The data position is the global step; the sampler
recomputes the epoch permutation and continues in the middle, whatever the number of workers or ranks.

A bad sample (unreadable image, prompt longer than max_length, `<image>` count not matching the images) becomes
a `Skip(origin, reason)`: the collator drops it, the trainer counts and logs it by path. Nothing is substituted,
so a batch can be smaller than asked; a batch with nothing left runs a zero-loss step (see trainer).
"""
from __future__ import annotations

import bisect
import glob
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from got.processor import GOTProcessor, load_image
from got.prompts import PromptTooLong, parse_record

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class Example:
    """One encoded sample: right-padding happens in `collate`."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None  # (tiles, 3, S, S)
    origin: str


@dataclass
class Skip:
    """A sample that could not be used, with where it came from and why."""

    origin: str
    reason: str


# ---- encoding ----------------------------------------------------------------------------------------------------
class SampleEncoder:
    """(images, turns) -> Example through the one input path (`GOTProcessor.conversation`): tiles as the
    conversation's Query says (multi-crop only for a multi-crop query, at most `max_tiles`), label mask."""

    def __init__(self, tokenizer, image_size: int, image_token_len: int, max_length: int, max_tiles: int = 6):
        self.processor = GOTProcessor(tokenizer, image_size, image_token_len)
        self.image_token_len = image_token_len
        self.max_length = max_length
        self.max_tiles = max_tiles

    def __call__(self, images: Sequence[Any], turns: list[dict[str, str]], origin: str) -> Example | Skip:
        try:
            pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
            pixel_values, input_ids, labels = self.processor.conversation(pil, turns, self.max_tiles)
            n_tiles = 0 if pixel_values is None else pixel_values.shape[0]
            if len(input_ids) > self.max_length:  # a cut answer would teach the model to stop mid-page: skip it
                raise PromptTooLong(f"{len(input_ids)} tokens ({n_tiles} tile(s) x {self.image_token_len} image "
                                    f"tokens) > max_length {self.max_length}")
        except PromptTooLong as e:
            return Skip(origin, f"too long: {e}")
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # unreadable / truncated / not an image
            return Skip(origin, f"{type(e).__name__}: {e}")
        return Example(list(input_ids), list(labels), pixel_values, origin)


# ---- sources -----------------------------------------------------------------------------------------------------
class JsonSource:
    """GOT json / ms-swift messages records in a .json list or .jsonl file."""

    def __init__(self, path: str | Path, image_root: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: data file not found")
        self.image_root = Path(image_root) if image_root else self.path.parent
        text = self.path.read_text(encoding="utf-8")
        try:
            if self.path.suffix == ".jsonl":
                self.records = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                self.records = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path}: not valid JSON: {e}") from None
        if not isinstance(self.records, list) or not self.records:
            raise ValueError(f"{self.path}: expected a non-empty JSON list of records")
        self.name = str(self.path)

    def __len__(self) -> int:
        return len(self.records)

    def get(self, i: int, encoder: SampleEncoder) -> Example | Skip:
        origin = f"{self.path}[{i}]"
        try:
            image_paths, turns = parse_record(self.records[i], self.image_root)
        except (ValueError, KeyError, TypeError) as e:
            return Skip(origin, f"bad record: {e}")
        if image_paths:
            origin += " " + ",".join(str(p) for p in image_paths)
        return encoder(image_paths, turns, origin)


class ShardSource:
    """webdataset tar shards, read by random access: members are indexed once (offset, size) per key."""

    def __init__(self, pattern: str):
        self.files = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not self.files or not all(Path(f).is_file() for f in self.files):
            raise FileNotFoundError(f"{pattern}: no tar shards found")
        self.items: list[tuple[int, str, dict[str, tuple[int, int]]]] = []  # (file index, key, {ext: (offset, size)})
        for fi, f in enumerate(self.files):
            groups: dict[str, dict[str, tuple[int, int]]] = {}
            try:
                with tarfile.open(f) as tar:
                    for m in tar:
                        if m.isfile():
                            base = m.name.rsplit("/", 1)[-1]
                            key, _, ext = base.partition(".")
                            prefix = m.name[: len(m.name) - len(base)]
                            groups.setdefault(prefix + key, {})[ext] = (m.offset_data, m.size)
            except tarfile.TarError as e:
                raise ValueError(f"{f}: not a readable tar shard: {e}") from None
            self.items += [(fi, key, g) for key, g in groups.items() if "json" in g]
        if not self.items:
            raise ValueError(f"{pattern}: the shards hold no <key>.json records")
        self.name = pattern

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, fi: int, span: tuple[int, int]) -> bytes:
        with open(self.files[fi], "rb") as fh:
            fh.seek(span[0])
            return fh.read(span[1])

    def get(self, i: int, encoder: SampleEncoder) -> Example | Skip:
        fi, key, members = self.items[i]
        origin = f"{self.files[fi]}:{key}"
        try:
            record = json.loads(self._read(fi, members["json"]))
            # Images are the members named in the record (by extension or file name), else every image member.
            names = record.get("image") or record.get("images") or []
            names = [names] if isinstance(names, str) else list(names)
            exts = [n.rsplit("/", 1)[-1].partition(".")[2] if "." in n else n for n in names]
            if not exts or any(e not in members for e in exts):
                exts = sorted(e for e in members if "." + e.rsplit(".", 1)[-1] in IMAGE_EXTS)
            record = dict(record, image=[f"{key}.{e}" for e in exts])
            record.pop("images", None)
            paths, turns = parse_record(record, ".")
            images = [Image.open(io.BytesIO(self._read(fi, members[e]))) for e in exts]
            for im in images:
                im.load()
        except (ValueError, KeyError, TypeError, OSError) as e:
            return Skip(origin, f"{type(e).__name__}: {e}")
        return encoder([im.convert("RGB") for im in images], turns, origin)


class EngineSource:
    """An infinite on-the-fly data engine. Draw t is sample t of `got data render` with the same engine, seed,
    options and augment (data_engines.mix), so a streamed run sees exactly what a pre-rendered one would."""

    def __init__(self, name: str, seed: str, options: dict[str, Any] | None = None, augment: str | None = None):
        from data_engines.mix import Mixture

        self.mixture = Mixture({name: 1.0}, seed, augment, {name: dict(options)} if options else None)
        self.name = name

    def __len__(self) -> int:  # infinite: never sets the epoch size
        return 0

    def get(self, t: int, encoder: SampleEncoder) -> Example | Skip:
        origin = f"engine:{self.name}#{t}"
        try:
            _, sample = self.mixture.render(t)
            paths = [f"<{i}>" for i in range(len(sample.images))]
            _, turns = parse_record(sample.to_record(paths), None)
        except Exception as e:  # noqa: BLE001 -- one failing draw (font, layout, RDKit ...) is skipped, not fatal
            return Skip(origin, f"render failed: {type(e).__name__}: {e}")
        return encoder(sample.images, turns, origin)


def build_source(spec: dict[str, Any], seed: int, index: int = 0):
    """A `data.sources` entry -> source. Keys: one of json / shards / engine; weight; json: image_root;
    engine: options, augment (e.g. "paper=0.3,bda=0.5"), seed (default "<train.seed>:<position in the list>")."""
    kinds = [k for k in ("json", "shards", "engine") if k in spec]
    if len(kinds) != 1:
        raise ValueError(f"data source {spec}: needs exactly one of json:, shards:, engine:")
    allowed = {"json": {"image_root"}, "shards": set(), "engine": {"options", "augment", "seed"}}[kinds[0]]
    unknown = set(spec) - {kinds[0], "weight"} - allowed
    if unknown:
        raise ValueError(f"data source {spec}: unknown keys {sorted(unknown)} (a {kinds[0]} source takes "
                         f"{sorted(allowed | {'weight'})})")
    if kinds[0] == "json":
        return JsonSource(spec["json"], spec.get("image_root"))
    if kinds[0] == "shards":
        return ShardSource(spec["shards"])
    return EngineSource(spec["engine"], str(spec.get("seed", f"{seed}:{index}")), spec.get("options"),
                        spec.get("augment"))


# ---- the mix -----------------------------------------------------------------------------------------------------
def _perm(n: int, *seed: int) -> np.ndarray:
    return np.random.default_rng(list(seed)).permutation(n)


class MixedDataset(torch.utils.data.Dataset):
    """Index (epoch, j) -> sample. Each epoch gives source s a share n_s = N * w_s / sum(w) of the N samples.

    The k-th draw of source s in epoch e is draw t = e * n_s + k of an endless stream: a finite source walks a fresh
    permutation each pass (so a weight below its size still visits everything over epochs), an engine renders t.
    """

    def __init__(self, sources: list, weights: list[float], encoder: SampleEncoder, samples_per_epoch: int | None,
                 seed: int = 0):
        if not sources:
            raise ValueError("data.sources is empty: give at least one json / shards / engine source")
        if any(w <= 0 for w in weights):
            raise ValueError(f"data source weights must be > 0, got {weights}")
        finite = sum(len(s) for s in sources)
        if samples_per_epoch is None:
            if any(len(s) == 0 for s in sources):
                raise ValueError("data.samples_per_epoch must be set when an on-the-fly engine is a source")
            samples_per_epoch = finite
        self.sources, self.encoder, self.seed, self.size = sources, encoder, seed, int(samples_per_epoch)
        total = sum(weights)
        counts = [int(self.size * w / total) for w in weights]
        counts[int(np.argmax(weights))] += self.size - sum(counts)
        self.counts = counts
        self.offsets = np.cumsum([0] + counts).tolist()
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.size

    def locate(self, epoch: int, j: int) -> tuple[int, int]:
        """(source index, index inside the source) of sample j of an epoch."""
        s = bisect.bisect_right(self.offsets, j) - 1
        t = epoch * self.counts[s] + (j - self.offsets[s])
        n = len(self.sources[s])
        if n == 0:
            return s, t
        p, q = divmod(t, n)
        if (s, p) not in self._perms:
            self._perms = {k: v for k, v in self._perms.items() if k[0] != s}  # keep one pass per source
            self._perms[(s, p)] = _perm(n, self.seed, s, p)
        return s, int(self._perms[(s, p)][q])

    def __getitem__(self, index: tuple[int, int]) -> Example | Skip:
        s, i = self.locate(*index)
        return self.sources[s].get(i, self.encoder)


class StepSampler:
    """Micro-batches of (epoch, j) for one rank, from a global step on; world-size independent stream.

    Step i of an epoch takes order[i*G:(i+1)*G] (G = global batch); inside it, micro-batch a of rank r takes
    positions (a*world + r)*micro ... + micro. The remainder N % G of an epoch is dropped.
    """

    def __init__(self, size: int, micro: int, accum: int, world: int, rank: int, seed: int, start_step: int = 0,
                 total_steps: int | None = None):
        self.size, self.micro, self.accum, self.world, self.rank, self.seed = size, micro, accum, world, rank, seed
        self.global_batch = micro * accum * world
        self.steps_per_epoch = size // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch of {size} samples is smaller than one global batch of {self.global_batch}")
        self.start_step, self.total_steps = start_step, total_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            epoch, i = divmod(step, self.steps_per_epoch)
            order = _perm(self.size, self.seed, 10**6 + epoch)
            base = i * self.global_batch
            for a in range(self.accum):
                lo = base + (a * self.world + self.rank) * self.micro
                yield [(epoch, int(j)) for j in order[lo:lo + self.micro]]
            step += 1

    def __len__(self) -> int:
        return ((self.total_steps or 0) - self.start_step) * self.accum


# ---- batching ----------------------------------------------------------------------------------------------------
class Collator:
    """Right-padded batch (labels -100 on padding) with ONE pixel_values tensor for all tiles, in sample order.

    With `pack=True` the samples of a micro-batch are packed first-fit into rows of at most `max_length` tokens;
    positions restart per sample and attention_mask is None, so the decoder (Qwen2) keeps samples apart.
    """

    def __init__(self, pad_id: int, max_length: int, pack: bool = False):
        self.pad_id, self.max_length, self.pack = pad_id, max_length, pack

    def __call__(self, items: list[Example | Skip]) -> dict[str, Any]:
        examples = [x for x in items if isinstance(x, Example)]
        skipped = [(x.origin, x.reason) for x in items if isinstance(x, Skip)]
        batch: dict[str, Any] = {"skipped": skipped, "num_samples": len(examples)}
        if not examples:
            return batch
        rows = self._pack(examples) if self.pack else [[e] for e in examples]
        width = max(sum(len(e.input_ids) for e in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            c = 0
            for e in row:
                n = len(e.input_ids)
                ids[r, c:c + n] = torch.tensor(e.input_ids)
                labels[r, c:c + n] = torch.tensor(e.labels)
                mask[r, c:c + n] = 1
                pos[r, c:c + n] = torch.arange(n)
                c += n
        pixels = [e.pixel_values for row in rows for e in row if e.pixel_values is not None]
        batch.update(input_ids=ids, labels=labels, pixel_values=torch.cat(pixels) if pixels else None,
                     num_tokens=int(mask.sum()))
        if self.pack:
            # pad tail: positions keep counting so it reads as one more "sample" that is fully masked in the loss
            for r in range(len(rows)):
                n = int(mask[r].sum())
                pos[r, n:] = torch.arange(width - n)
            batch.update(attention_mask=None, position_ids=pos)
        else:
            batch.update(attention_mask=mask)
        return batch

    def _pack(self, examples: list[Example]) -> list[list[Example]]:
        rows: list[list[Example]] = []
        room: list[int] = []
        for e in sorted(examples, key=lambda e: -len(e.input_ids)):  # first-fit decreasing
            n = len(e.input_ids)
            r = next((k for k, free in enumerate(room) if free >= n), None)
            if r is None:
                rows.append([e])
                room.append(self.max_length - n)
            else:
                rows[r].append(e)
                room[r] -= n
        return rows
