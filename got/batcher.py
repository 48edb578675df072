"""The model worker behind `got serve`: one thread owns the model and runs the prompts of many requests together.

Why one thread: a model is not made faster by two threads calling it at once on the same cores, and a single
owner makes batching, cancellation and memory use easy to reason about. Requests (a `Job`: one prompt per page)
wait in a bounded queue. The worker decodes with continuous batching (`DecodeBatch`): between two decode steps,
waiting rows join the running batch (their prompts are read, then their KV caches are padded in) and finished,
cancelled or timed-out rows leave it, so a request that arrives while others decode starts at the next step
instead of after the whole batch. Each row keeps its own limit, stop tokens, n-gram ban and repetition guard, so
answers are the very text `GOT.chat` gives one by one (greedy; docs/serving.md). A line-route page (the default
model) is read between two steps, its crops batched inside `GOT.generate`.
"""
from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from got.decode import CACHE, ChunkedKVCache, compile_config
from got.generation import TextPieceStreamer
from got.inference import GOT, Answer, Prompt, left_padded

Emit = Callable[[str, int, object], None]  # (kind, row index, payload): "text" piece / "answer" Answer / "error" str


class QueueFull(Exception):
    """The bounded queue holds `queue_size` requests already: the caller answers 503 with Retry-After."""


@dataclass(eq=False)
class Job:
    """One request: its prompts (a page each), how long an answer may be, and where results go."""
    prompts: list[Prompt]
    max_new_tokens: int
    emit: Emit                        # called from the worker thread; must not block
    stream: bool = False
    deadline: float = float("inf")    # time.monotonic() after which its rows stop ("timeout")
    cancelled: threading.Event = field(default_factory=threading.Event)
    reason: str = ""                  # "cancelled" (client gone) or "timeout", once cancelled
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None      # when its first row entered a batch
    left: int = 0                     # rows not answered yet
    on_cancel: Callable[["Job"], None] | None = None  # set by Batcher.submit: drops its queued rows at once

    def cancel(self, reason: str = "cancelled") -> None:
        """Its rows leave the batch at the next decode step; rows still queued leave the queue now (so a
        timed-out or abandoned request never holds a queue place that a new one could have)."""
        if not self.cancelled.is_set():
            self.reason = reason
            self.cancelled.set()
            if self.on_cancel is not None:
                self.on_cancel(self)

    def stopped(self) -> bool:
        if not self.cancelled.is_set() and time.monotonic() > self.deadline:
            self.cancel("timeout")
        return self.cancelled.is_set()


@dataclass(eq=False)
class Row:
    job: Job
    k: int                            # the prompt's position in its job
    prompt: Prompt


# ---- continuous batching ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class Seq:
    """One row of a DecodeBatch: its prompt ids followed by the tokens generated so far."""
    prompt: Prompt
    limit: int                        # new tokens at most
    tag: object = None                # the caller's (the worker's Row)
    ids: list[int] = field(default_factory=list)
    finish: str | None = None         # "stop" / "length" / "repetition" once done
    seconds: float = 0.0              # this row's share of the prompt and step times it took part in
    streamer: TextPieceStreamer | None = None
    guard: Callable | None = None

    @property
    def new(self) -> list[int]:
        return self.ids[len(self.prompt.input_ids):]


class DecodeBatch:
    """Greedy decoding of rows that join and leave between steps (continuous batching).

    `admit` reads new prompts (vision tower, projector, one decoder pass over their prompts) and pads their KV
    caches into the running batch's: every row stays left-padded, its positions counting its own tokens only, so
    attention sees what it sees in a batch of one. `step` appends one token to every row; `drop` takes rows out.
    Each row carries what `GOT._generate_batch` gives transformers' generate() (stop ids, its own max_new_tokens,
    GOT's no_repeat_ngram_size on its own ids, the repetition guard), so its answer is the same text.
    """

    def __init__(self, got: GOT):
        other = {k: v for k, v in got.generation.items() if k != "logits_processor"}
        if other.get("do_sample") or other.get("num_beams", 1) != 1:
            raise ValueError(f"continuous batching decodes greedily; GOT.generation asks for {other}")
        self.got, self.seqs = got, []
        # GOT(compile=True): the one-token step compiled as transformers' generate compiles it; prompts stay eager
        self.decode_step = got.model.decoder.get_compiled_call(compile_config()) if got.compile else got.model.decoder
        self.cache = None
        self.mask: torch.Tensor | None = None  # (rows, cached columns): 1 where a row has a token

    def __len__(self) -> int:
        return len(self.seqs)

    def _cache(self):
        return ChunkedKVCache() if self.got.device.type == "cpu" else DynamicCache()

    @staticmethod
    def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's filled (keys, values)."""
        n = cache.get_seq_length()
        return [(layer.keys[..., :n, :], layer.values[..., :n, :]) for layer in cache.layers]

    def _rebuild(self, kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> None:
        """A fresh cache holding `kv`, with the columns no row uses any more (leading pads of all rows) cut."""
        first = int(mask.any(0).long().argmax()) if mask.numel() else 0
        self.cache, self.mask = self._cache(), mask[:, first:]
        for i, (k, v) in enumerate(kv):
            self.cache.update(k[..., first:, :].contiguous(), v[..., first:, :].contiguous(), i)

    @torch.inference_mode()
    def admit(self, prompts: Sequence[Prompt], limits: Sequence[int], tags: Sequence[object] = (),
              streamers: Sequence[TextPieceStreamer | None] = ()) -> list[Seq]:
        """Read the prompts and join them to the batch; each gets its first token (it may finish at once)."""
        got, t0 = self.got, time.perf_counter()
        ids, mask, pixels = left_padded(prompts, got.tokenizer.endoftext_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self._cache()
        with got._autocast():
            embeds = got.model.embed(ids.to(got.device), pixels.to(got.device))
            logits = got.model.decoder(inputs_embeds=embeds, attention_mask=mask.to(got.device),
                                       position_ids=positions.to(got.device), **{CACHE: cache},
                                       use_cache=True, logits_to_keep=1).logits[:, -1]
        new = []
        for b, p in enumerate(prompts):
            limit = max(1, min(limits[b], got.max_positions - len(p.input_ids)))
            seq = Seq(p, limit, tags[b] if tags else None, list(p.input_ids),
                      streamer=streamers[b] if streamers else None,
                      guard=got.repetition_guard() if got.repetition_guard else None)
            if seq.streamer is not None:
                seq.streamer.put(torch.tensor(p.input_ids))  # a streamer skips the prompt, as in generate()
            new.append(seq)
        if self.seqs:  # pad both caches to one width on the left, rows of the new after the running
            old_kv, new_kv = self._kv(self.cache), self._kv(cache)
            width = max(self.mask.shape[1], mask.shape[1])
            pad = lambda t: torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))  # noqa: E731
            kv = [(torch.cat([pad(ko), pad(kn)]), torch.cat([pad(vo), pad(vn)]))
                  for (ko, vo), (kn, vn) in zip(old_kv, new_kv)]
            masks = torch.cat([torch.nn.functional.pad(m, (width - m.shape[1], 0)) for m in (self.mask, mask)])
            self._rebuild(kv, masks)
        else:
            self.cache, self.mask = cache, mask
        self.seqs += new
        share = (time.perf_counter() - t0) / len(new)
        for seq, token in zip(new, self._choose(new, logits)):
            seq.seconds += share
            self._append(seq, token)
        return new

    @torch.inference_mode()
    def step(self) -> int:
        """One new token for every unfinished row (finished rows must have been dropped); -> rows stepped."""
        got, t0 = self.got, time.perf_counter()
        if any(s.finish for s in self.seqs):
            raise RuntimeError("drop finished rows before the next step")
        tokens = torch.tensor([[s.ids[-1]] for s in self.seqs], device=got.device)
        positions = torch.tensor([[len(s.ids) - 1] for s in self.seqs], device=got.device)
        self.mask = torch.cat([self.mask, torch.ones(len(self.seqs), 1, dtype=self.mask.dtype)], 1)
        # as generate() does: over a compileable cache the 4D mask is built here, eagerly, at the cache's capacity,
        # so a compiled step sees the same shapes until the cache grows
        inputs = got.model.decoder.prepare_inputs_for_generation(tokens, cache=self.cache, position_ids=positions,
                                                                 attention_mask=self.mask.to(got.device))
        with got._autocast():
            logits = self.decode_step(**inputs, use_cache=True).logits[:, -1]
        share = (time.perf_counter() - t0) / len(self.seqs)
        for seq, token in zip(self.seqs, self._choose(self.seqs, logits)):
            seq.seconds += share
            self._append(seq, token)
        return len(self.seqs)

    def drop(self, seqs: Sequence[Seq]) -> None:
        """Rows out of the batch (finished, cancelled, timed out): their cache rows are cut away."""
        gone = set(map(id, seqs))
        keep = [b for b, s in enumerate(self.seqs) if id(s) not in gone]
        if len(keep) == len(self.seqs):
            return
        self.seqs = [self.seqs[b] for b in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.got.device)
        self._rebuild([(k.index_select(0, index), v.index_select(0, index)) for k, v in self._kv(self.cache)],
                      self.mask[keep])

    def _choose(self, seqs: Sequence[Seq], logits: torch.Tensor) -> list[int]:
        """Greedy choice per row, after GOT's n-gram ban over that row's own ids (single-image prompts) and any
        `logits_processor` in GOT.generation, in the order generate() applies them."""
        scores = logits.float()
        n = self.got.no_repeat_ngram_size
        extra = self.got.generation.get("logits_processor") or []
        out = []
        for b, seq in enumerate(seqs):
            row, ids = scores[b:b + 1].clone(), torch.tensor([seq.ids])
            if n and not seq.prompt.multi_page:
                row = NoRepeatNGramLogitsProcessor(n)(ids, row)
            for processor in extra:
                row = processor(ids, row)
            out.append(int(row.argmax(-1)))
        return out

    def _append(self, seq: Seq, token: int) -> None:
        got = self.got
        if seq.streamer is not None:
            seq.streamer.put(torch.tensor([token]))
        if token in got.stop_ids:
            seq.finish = "stop"
        else:
            seq.ids.append(token)
            if seq.guard is not None and bool(seq.guard(torch.tensor([seq.ids]))[0]):
                seq.finish = "repetition"
            elif len(seq.new) >= seq.limit:
                seq.finish = "length"
        if seq.finish and seq.streamer is not None:
            seq.streamer.end()

    def answer(self, seq: Seq) -> Answer:
        """A finished row's Answer, as GOT._generate_batch builds it."""
        p = seq.prompt
        return Answer(source=p.source, mode=p.mode, text=self.got.tokenizer.decode(seq.new).strip(),
                      tokens=len(seq.new), seconds=p.seconds + seq.seconds, finish=seq.finish or "length",
                      page=p.page, index=p.index)


# ---- the worker ---------------------------------------------------------------------------------------------------
@functools.cache
def _glibc():
    """The C library when it is glibc (malloc_trim / mallopt), else None. Cached: find_library runs ldconfig, and
    release_memory is called every time the worker goes idle."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_malloc_arenas(n: int = 2) -> None:
    """At most `n` glibc malloc arenas for the threads started after this (the server's preparation threads).

    glibc gives each new thread its own arena, up to 8 per core; pages prepared in one thread and freed in another
    leave every arena partly used, and a server's RSS creeps up over hundreds of requests (docs/serving.md)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-8, n)  # M_ARENA_MAX


def release_memory() -> None:
    """Give freed heap pages back to the system (glibc's malloc_trim); called when the worker goes idle."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@dataclass
class Stats:
    """What /metrics and Retry-After read about the worker (read without the lock: plain numbers)."""
    batches: int = 0                  # groups of rows admitted together (and line-route pages read)
    rows: int = 0                     # rows answered or stopped
    tokens: int = 0
    steps: int = 0                    # decode steps run
    busy_seconds: float = 0.0
    last_tokens_per_second: float = 0.0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # rows per admitted group


class Batcher:
    """The model worker: `submit(job)` queues a request (QueueFull when `queue_size` are waiting already)."""

    def __init__(self, model: GOT, max_batch: int = 16, queue_size: int = 64, window: float = 0.005,
                 on_batch: Callable[[int, int, float], None] | None = None):
        self.model, self.max_batch, self.queue_size, self.window = model, max_batch, queue_size, window
        self.on_batch = on_batch          # (rows, tokens, seconds) of each decode step or line-route page
        self.stats = Stats()
        self._rows: collections.deque[Row] = collections.deque()
        self._waiting: set[Job] = set()   # jobs with a row not started yet: what the queue bound counts
        self._cond = threading.Condition()
        self._stop = False
        self._batch = DecodeBatch(model)  # the rows decoding now
        self._thread = threading.Thread(target=self._loop, name="got-serve-model", daemon=True)

    # ---- the caller's side ----------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            jobs = {r.job for r in self._rows} | {s.tag.job for s in self._batch.seqs}
            self._cond.notify_all()
        for job in jobs:  # running rows stop at the next step
            job.cancel("cancelled")
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting those whose every row is decoding)."""
        return len(self._waiting)

    def seconds_per_row(self) -> float:
        """Measured worker time per answered row (rows decode together, so this is 1 / throughput)."""
        st = self.stats
        return st.busy_seconds / st.rows if st.rows else 0.0

    def submit(self, job: Job) -> None:
        if not job.prompts:
            raise ValueError("a job needs at least one prompt")
        with self._cond:
            if self._stop:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already (queue size {self.queue_size})")
            job.left = len(job.prompts)
            job.on_cancel = self._drop
            self._waiting.add(job)
            self._rows.extend(Row(job, k, p) for k, p in enumerate(job.prompts))
            self._cond.notify_all()

    # ---- the worker ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        """Between two decode steps: stop the rows whose job ended, read a line-route page or admit waiting rows
        into the free places, then step the batch once."""
        while True:
            rows = self._take()
            if rows is None:
                return
            t0 = time.perf_counter()
            try:
                if rows and rows[0].prompt.segments is not None:
                    self._read_page(rows[0])
                elif rows:
                    self._admit(rows)
                if len(self._batch):
                    self._step()
            finally:
                self.stats.busy_seconds += time.perf_counter() - t0

    def _take(self) -> list[Row] | None:
        """Rows to start now: a line-route page alone, or waiting decoder rows for the batch's free places."""
        batch = self._batch
        with self._cond:
            if not self._rows and not len(batch) and not self._stop:
                release_memory()  # idle: what the last requests freed goes back to the system
            while not self._rows and not len(batch) and not self._stop:
                self._cond.wait()
            stopping = self._stop
        if stopping:  # close(): running rows end as "stopped" (their jobs were cancelled)
            seqs = list(batch.seqs)
            batch.drop(seqs)
            for seq in seqs:
                self._finish_row(seq.tag, None)
            return None
        with self._cond:
            if not len(batch) and self.window > 0 and len(self._rows) < self.max_batch:
                end = time.monotonic() + self.window  # an idle worker lets requests sent together arrive together
                while len(self._rows) < self.max_batch and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            for job in {r.job for r in self._rows}:  # past its deadline while queued: drops its rows
                job.stopped()
            rows = []
            if self._rows and self._rows[0].prompt.segments is not None:
                rows = [self._rows[0]]
            elif self._rows:
                free = self.max_batch - len(batch)
                rows = [r for r in self._rows if r.prompt.segments is None][:max(0, free)]
            for row in rows:
                self._rows.remove(row)
                row.job.started = row.job.started or time.monotonic()
                if not any(r.job is row.job for r in self._rows):
                    self._waiting.discard(row.job)
        stopped = [s for s in batch.seqs if s.tag.job.stopped()]  # cancelled or timed out: leave the batch
        batch.drop(stopped)
        for seq in stopped:
            self._finish_row(seq.tag, None)
        return rows

    def _drop(self, job: Job) -> None:
        """A cancelled job's queued rows leave the queue (its running rows leave the batch at the next step)."""
        with self._cond:
            rows = [r for r in self._rows if r.job is job]
            for row in rows:
                self._rows.remove(row)
            self._waiting.discard(job)
        for row in rows:
            self._finish_row(row, None)

    def _admit(self, rows: list[Row]) -> None:
        model, batch = self.model, self._batch
        streamers = [TextPieceStreamer(model.tokenizer, self._sender(r), model.stop_ids) if r.job.stream else None
                     for r in rows]
        try:
            seqs = batch.admit([r.prompt for r in rows], [r.job.max_new_tokens for r in rows], rows, streamers)
        except (RuntimeError, ValueError) as e:  # one failing prompt never costs its mates their answers
            if len(rows) > 1:
                for row in rows:
                    self._admit([row])
                return
            self._finish_row(rows[0], None, error=f"{rows[0].prompt.source}: generation failed: {e}")
            return
        self.stats.batches += 1
        self.stats.batch_sizes[len(rows)] += 1
        self.stats.tokens += len(seqs)
        self._retire([s for s in seqs if s.finish])

    def _step(self) -> None:
        t0 = time.perf_counter()
        try:
            n = self._batch.step()
        except (RuntimeError, ValueError) as e:
            seqs = list(self._batch.seqs)
            self._batch.drop(seqs)
            for seq in seqs:
                self._finish_row(seq.tag, None, error=f"{seq.prompt.source}: generation failed: {e}")
            return
        seconds = time.perf_counter() - t0
        st = self.stats
        st.steps, st.tokens = st.steps + 1, st.tokens + n
        st.last_tokens_per_second = n / seconds if seconds > 0 else 0.0
        if self.on_batch:
            self.on_batch(n, n, seconds)
        self._retire([s for s in self._batch.seqs if s.finish])

    def _retire(self, seqs: list[Seq]) -> None:
        self._batch.drop(seqs)
        for seq in seqs:
            self._finish_row(seq.tag, self._batch.answer(seq))

    def _read_page(self, row: Row) -> None:
        """A line-route page: read between two decode steps (GOT.generate batches its crops)."""
        model, t0 = self.model, time.perf_counter()
        try:
            if row.job.stopped():
                answer = None
            elif row.job.stream:
                answer = model.generate_streaming(row.prompt, self._sender(row), row.job.max_new_tokens)
            else:
                [answer] = model.generate([row.prompt], max_new_tokens=row.job.max_new_tokens, batch_size=1)
        except (RuntimeError, ValueError) as e:
            self._finish_row(row, None, error=f"{row.prompt.source}: generation failed: {e}")
            return
        seconds = time.perf_counter() - t0
        tokens = answer.tokens if answer is not None else 0
        self.stats.batches += 1
        self.stats.batch_sizes[1] += 1
        self.stats.tokens += tokens
        if self.on_batch:
            self.on_batch(1, tokens, seconds)
        self._finish_row(row, answer)

    @staticmethod
    def _sender(row: Row) -> Callable[[str], None]:
        return lambda piece: None if row.job.cancelled.is_set() else row.job.emit("text", row.k, piece)

    def _finish_row(self, row: Row, answer: Answer | None, error: str | None = None) -> None:
        """Hand a row's result to its job; rows of a cancelled job report nothing (its caller has gone)."""
        with self._cond:
            row.job.left -= 1
            self.stats.rows += 1
            if not any(r.job is row.job for r in self._rows):
                self._waiting.discard(row.job)
        if error is not None:
            row.job.emit("error", row.k, error)
        elif answer is not None and not row.job.cancelled.is_set():
            row.job.emit("answer", row.k, answer)
        elif row.job.cancelled.is_set():
            row.job.emit("stopped", row.k, row.job.reason)
