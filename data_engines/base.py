"""One interface for every data engine: `render(rng) -> Sample`.

A Sample holds the rendered images and a GOT-format conversation whose answer is exactly what was drawn.
Engines are pure functions of the `random.Random` they are given, so a seed reproduces images byte for byte.
"""
from __future__ import annotations

import importlib
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


@dataclass
class Sample:
    images: list[Image.Image]
    conversations: list[dict[str, str]]  # [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": ...}]
    meta: dict[str, Any] = field(default_factory=dict)  # engine-specific ground truth (e.g. chart values)

    def to_record(self, image_paths: list[str]) -> dict[str, Any]:
        """GOT json record; one image is stored as a string, several as a list (multi-page)."""
        image: str | list[str] = image_paths[0] if len(image_paths) == 1 else list(image_paths)
        return {"image": image, "conversations": self.conversations}


class Engine(Protocol):
    name: str

    def render(self, rng: random.Random) -> Sample: ...


# CLI order (issue 4): name -> "module:Class"
ENGINES: dict[str, str] = {
    "plain": "data_engines.plain:PlainEngine",
    "pdf": "data_engines.pdf:PdfEngine",
    "formula": "data_engines.formula:FormulaEngine",
    "table": "data_engines.table:TableEngine",
    "molecule": "data_engines.molecule:MoleculeEngine",
    "music": "data_engines.music:MusicEngine",
    "geometry": "data_engines.geometry:GeometryEngine",
    "chart": "data_engines.chart:ChartEngine",
    "fine_grained": "data_engines.fine_grained:FineGrainedEngine",
    "multi_crop": "data_engines.multi_crop:MultiCropEngine",
    "multi_page": "data_engines.multi_page:MultiPageEngine",
}


def get_engine(name: str, **options: Any) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown data engine {name!r}; choose from {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
