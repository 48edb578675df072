"""On-the-fly data: a torch IterableDataset that renders samples inside the DataLoader workers, unbounded.

Element i of the global stream is sample i of `got data render` with the same engines / mix / seed / augment /
options (data_engines.mix), so a streamed run and a pre-rendered one see the same data. The global stream is dealt
round-robin over (rank, worker): consumer c of C = world_size * num_workers renders i = start + c, c + C, ...
Nothing is repeated or skipped across workers and ranks, and `start` resumes after `start` samples.

    from data_engines.stream import EngineStream
    stream = EngineStream("plain,pdf", seed=0, augment="paper=0.3,bda=0.5")
    loader = torch.utils.data.DataLoader(stream, batch_size=8, num_workers=4, collate_fn=list)
    for batch in loader:  # list of {"images": [PIL.Image, ...], "conversations": [...], "engine", "index", "meta"}
        ...

Pass `transform` to turn each item into tensors inside the worker (tokenize, preprocess) so that only tensors
cross the process boundary. An engine failing on one index is logged and that index is skipped (never
replaced by another sample).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterator

import torch

from data_engines.mix import Mixture, parse_engines

log = logging.getLogger(__name__)


class EngineStream(torch.utils.data.IterableDataset):
    def __init__(self, engines: str | list[str] | None = None, *, mix: str | dict[str, float] | None = None,
                 seed: int = 0, augment: str | dict[str, float] | None = None,
                 options: dict[str, dict[str, Any]] | None = None, transform: Callable[[dict], Any] | None = None,
                 start: int = 0, rank: int | None = None, world_size: int | None = None, limit: int | None = None):
        """engines/mix as for `got data render`; rank/world_size default to torch.distributed (or RANK/WORLD_SIZE);
        limit: stop after that many global indices (None: unbounded)."""
        super().__init__()
        self.mixture = Mixture(parse_engines(engines, mix), seed, augment, options)
        self.transform, self.start, self.limit = transform, start, limit
        self.rank, self.world_size = rank, world_size

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is not None and self.world_size is not None:
            return self.rank, self.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))

    def indices(self) -> Iterator[int]:
        """The global indices this (rank, worker) renders."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = self._rank_world()
        consumers = world * workers
        i = self.start + rank * workers + worker
        while self.limit is None or i < self.start + self.limit:
            yield i
            i += consumers

    def __iter__(self) -> Iterator[Any]:
        for i in self.indices():
            try:
                name, sample = self.mixture.render(i)
            except Exception as e:  # noqa: BLE001 -- one bad draw must not kill a training run
                log.warning("data engine stream: sample %d (%s) failed and is skipped: %s: %s",
                            i, self.mixture.engine_at(i), type(e).__name__, e)
                continue
            item = {"images": sample.images, "conversations": sample.conversations, "engine": name, "index": i,
                    "meta": sample.meta}
            yield self.transform(item) if self.transform is not None else item
