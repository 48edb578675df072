"""Which engine renders sample i, and from which seed: the one rule shared by `got data render` (data_engines.cli)
and the on-the-fly stream (data_engines.stream), so sample i is the same image whichever renders it, on any
number of workers or ranks.

- engine of sample i: a golden-ratio (Weyl) sequence u_i = frac(offset(seed) + i * phi) read against the
  cumulative weights. Any run of consecutive indices hits every engine within +-1 of its share: weights are
  respected at every n, and extending n (resume with a larger --n) never changes earlier samples.
- content of sample i: `engine.render(random.Random(f"{seed}:{i}"))`; augmentations draw from their own
  `random.Random(f"{seed}:{i}:augment")`, so switching them on does not change what the engine drew.
"""
from __future__ import annotations

import bisect
import hashlib
import math
import random
from typing import Any

from data_engines.augment import Augmenter, parse_augment
from data_engines.base import ENGINES, Sample, get_engine

_PHI64 = 0x9E3779B97F4A7C15  # 2^64 / golden ratio


def parse_engines(engines: str | list[str] | None, mix: str | dict[str, float] | None = None) -> dict[str, float]:
    """--engine / --mix -> {engine: weight} in ENGINES order, weights summing to 1.

    engines: "plain,pdf" or "all" (equal weights); mix: "plain=0.5,formula=0.2" (relative weights: finite, > 0,
    each engine once). With both, the mix must name exactly the engines given."""
    names: list[str] | None = None
    if engines:
        names = [e.strip() for e in (engines.split(",") if isinstance(engines, str) else engines) if e.strip()]
        if names == ["all"]:
            names = list(ENGINES)
        for name in names:
            if name not in ENGINES:
                raise ValueError(f"unknown data engine {name!r}; choose from {', '.join(ENGINES)} (or 'all')")
    weights: dict[str, float] = {}
    if mix:
        items = mix.items() if isinstance(mix, dict) else (p.partition("=")[::2] for p in str(mix).split(",") if p.strip())
        for name, w in items:
            name = name.strip()
            if name not in ENGINES:
                raise ValueError(f"--mix: unknown data engine {name!r}; choose from {', '.join(ENGINES)}")
            if name in weights:
                raise ValueError(f"--mix: {name} is given twice")
            try:
                weight = float(w.strip() if isinstance(w, str) else w)
            except (TypeError, ValueError):
                raise ValueError(f"--mix: weight of {name} must be a number (NAME=WEIGHT,...), got {w!r}") from None
            if not (math.isfinite(weight) and weight > 0):  # inf would turn the others' shares into 0 and NaN
                raise ValueError(f"--mix: weight of {name} must be a finite number > 0, got {w!r}")
            weights[name] = weight
        if names is not None and set(names) != set(weights):
            raise ValueError(f"--mix names {', '.join(sorted(weights))} but --engine names {', '.join(sorted(names))}; "
                             "give one of them, or the same engines in both")
    elif names:
        weights = {n: 1.0 for n in names}
    else:
        raise ValueError(f"name the engines: --engine NAME[,NAME...] or --mix NAME=W,...; engines: {', '.join(ENGINES)}")
    total = sum(weights.values())
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"--mix: the weights must sum to a finite number > 0, got {total}")
    return {n: weights[n] / total for n in ENGINES if weights.get(n, 0) > 0}


class Mixture:
    """Renders sample i of a (weights, seed, augment, options) configuration. Picklable; engines are built lazily
    in the process that renders (one copy per worker)."""

    def __init__(self, weights: dict[str, float], seed: int = 0, augment: str | dict[str, float] | None = None,
                 options: dict[str, dict[str, Any]] | None = None):
        if not weights:
            raise ValueError("Mixture needs at least one engine with a positive weight")
        self.weights = dict(weights)
        self.seed = seed
        self.augment = parse_augment(augment)  # validated here, so a typo fails before any rendering
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        for name in self.options:
            if name not in self.weights:
                raise ValueError(f"options given for engine {name!r}, which is not being rendered "
                                 f"({', '.join(self.weights)})")
        self.names = list(self.weights)
        total, self.cum = 0.0, []
        for n in self.names:
            total += self.weights[n]
            self.cum.append(total / sum(self.weights.values()))
        self.cum[-1] = 1.0
        self.offset = int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "big")
        self._engines: dict[str, Any] = {}
        self._augmenter: Augmenter | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_engines": {}, "_augmenter": None}

    def engine_at(self, index: int) -> str:
        u = ((self.offset + index * _PHI64) % (1 << 64)) / float(1 << 64)
        return self.names[min(bisect.bisect_right(self.cum, u), len(self.names) - 1)]

    def engine(self, name: str) -> Any:
        if name not in self._engines:
            self._engines[name] = get_engine(name, **self.options.get(name, {}))
        return self._engines[name]

    def render(self, index: int) -> tuple[str, Sample]:
        name = self.engine_at(index)
        sample = self.engine(name).render(random.Random(f"{self.seed}:{index}"))
        if self.augment:
            if self._augmenter is None:
                self._augmenter = Augmenter(self.augment)
            sample = self._augmenter(sample, random.Random(f"{self.seed}:{index}:augment"))
        check_sample(sample, name)
        return name, sample


def check_sample(sample: Sample, engine: str) -> None:
    """An engine's output must be a GOT sample: >= 1 non-empty image, a human turn with <image>, a non-empty answer."""
    if not isinstance(sample, Sample) or not sample.images:
        raise RuntimeError(f"engine {engine} returned no images")
    for im in sample.images:
        if not hasattr(im, "size") or im.size[0] < 1 or im.size[1] < 1:
            raise RuntimeError(f"engine {engine} returned an empty image")
    conv = sample.conversations
    if (len(conv) < 2 or conv[0].get("from") != "human" or "<image>" not in conv[0].get("value", "")
            or conv[-1].get("from") != "gpt" or not conv[-1].get("value", "").strip()):
        raise RuntimeError(f"engine {engine} returned a malformed conversation: {conv!r:.200}")
