"""The model worker behind `got serve`: one thread owns the model and runs the prompts of many requests together.

Why one thread: a model is not made faster by two threads calling it at once on the same cores, and a single
owner makes batching, cancellation and memory use easy to reason about. Requests (a `Job`: one prompt per page)
wait in a bounded queue; the worker takes whatever is waiting (up to `max_batch` rows, after a short gathering
window) and decodes it as one left-padded batch, so answers are the very text `GOT.chat` gives one by one
(docs/inference.md: batching is exact). Rows of different requests may carry different `max_new_tokens`; a
per-row stopping criterion ends each at its own limit, at its deadline, or when its client went away.

What this is not: continuous batching. A request that arrives while a batch decodes waits for that batch to end
(docs/serving.md measures the cost); admitting rows between decode steps would need a step-level decode loop.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.generation.stopping_criteria import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from got.inference import GOT, Answer, Prompt, TextPieceStreamer

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


class RowControl(StoppingCriteria):
    """Per-row stops inside one batch: each row's own max_new_tokens, its deadline, its client going away."""

    def __init__(self, rows: list[Row]):
        self.rows = rows
        self.prompt_len: int | None = None
        self.why: list[str | None] = [None] * len(rows)  # "length" / "cancelled" / "timeout" once stopped here
        self.steps = 0                                    # decode steps run

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.prompt_len is None:  # first call: the prompt plus one new token
            self.prompt_len = input_ids.shape[1] - 1
        n = self.steps = input_ids.shape[1] - self.prompt_len
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for b, row in enumerate(self.rows):
            if self.why[b] is not None:
                done[b] = True
            elif row.job.stopped():
                self.why[b], done[b] = row.job.reason, True
            elif n >= row.job.max_new_tokens:
                self.why[b], done[b] = "length", True
        return done


class RowStreamer(BaseStreamer):
    """Streams every row of a batch: one TextPieceStreamer per row (same stripping rules as `got chat --stream`)."""

    def __init__(self, model: GOT, rows: list[Row]):
        self.parts = [TextPieceStreamer(model.tokenizer, self._sender(r), model.stop_ids) if r.job.stream else None
                      for r in rows]

    @staticmethod
    def _sender(row: Row) -> Callable[[str], None]:
        return lambda piece: None if row.job.cancelled.is_set() else row.job.emit("text", row.k, piece)

    def put(self, value: torch.Tensor) -> None:
        value = value.reshape(len(self.parts), -1) if value.dim() == 1 and value.numel() == len(self.parts) else value
        for b, part in enumerate(self.parts):
            if part is not None:
                part.put(value[b].reshape(-1))

    def end(self) -> None:
        for part in self.parts:
            if part is not None:
                part.end()


@dataclass
class Stats:
    """What /metrics reports about the worker (read without the lock: plain numbers)."""
    batches: int = 0
    rows: int = 0
    tokens: int = 0
    steps: int = 0                    # decode steps of all batches (a cancelled batch stops early)
    busy_seconds: float = 0.0
    last_tokens_per_second: float = 0.0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


class Batcher:
    """The model worker: `submit(job)` queues a request (QueueFull when `queue_size` are waiting already)."""

    def __init__(self, model: GOT, max_batch: int = 16, queue_size: int = 64, window: float = 0.005,
                 on_batch: Callable[[int, int, float], None] | None = None):
        self.model, self.max_batch, self.queue_size, self.window = model, max_batch, queue_size, window
        self.on_batch = on_batch          # (rows, tokens, seconds) of each batch run, for metrics
        self.stats = Stats()
        self._rows: collections.deque[Row] = collections.deque()
        self._waiting: set[Job] = set()   # jobs with a row not started yet: what the queue bound counts
        self._cond = threading.Condition()
        self._stop = False
        self._running: list[Row] = []     # the batch decoding now
        self._thread = threading.Thread(target=self._loop, name="got-serve-model", daemon=True)

    # ---- the caller's side ----------------------------------------------------------------------------------
    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stop = True
            jobs = {r.job for r in [*self._rows, *self._running]}
            self._cond.notify_all()
        for job in jobs:  # the running batch stops at its next step
            job.cancel("cancelled")
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting those whose every row is decoding)."""
        return len(self._waiting)

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
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)
                self._running = []

    def _next_batch(self) -> list[Row] | None:
        """Up to max_batch waiting rows that can share a batch (same route; multi-page prompts apart), FIFO."""
        with self._cond:
            while not self._rows and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            if self.window > 0 and len(self._rows) < self.max_batch:  # let requests sent together arrive together
                end = time.monotonic() + self.window
                while len(self._rows) < self.max_batch and (left := end - time.monotonic()) > 0:
                    self._cond.wait(left)
            for job in {r.job for r in self._rows}:  # past its deadline while queued: drops its rows
                job.stopped()
            for row in [r for r in self._rows if r.job.cancelled.is_set()]:  # cancelled as it was queued
                self._rows.remove(row)
                self._finish_row(row, None)
            if not self._rows:
                return []
            first = self._rows[0]
            if first.prompt.segments is not None:  # a line-route page: batched inside (its line crops)
                batch = [first]
            else:
                key = first.prompt.multi_page
                batch = [r for r in self._rows if r.prompt.segments is None and r.prompt.multi_page == key]
                batch = batch[:self.max_batch]
            for row in batch:
                self._rows.remove(row)
                row.job.started = row.job.started or time.monotonic()
                if not any(r.job is row.job for r in self._rows):
                    self._waiting.discard(row.job)
            self._running = batch
            return batch

    def _drop(self, job: Job) -> None:
        """A cancelled job's queued rows leave the queue (its running rows stop in RowControl)."""
        with self._cond:
            rows = [r for r in self._rows if r.job is job]
            for row in rows:
                self._rows.remove(row)
            self._waiting.discard(job)
        for row in rows:
            self._finish_row(row, None)

    def _run(self, batch: list[Row]) -> None:
        t0 = time.perf_counter()
        try:
            answers = self._generate(batch)
        except (RuntimeError, ValueError) as e:  # one failing prompt never costs its batch mates their answers
            if len(batch) > 1:
                for row in batch:
                    self._run([row])
                return
            self._finish_row(batch[0], None, error=f"{batch[0].prompt.source}: generation failed: {e}")
            return
        seconds = time.perf_counter() - t0
        tokens = sum(a.tokens for a in answers if a is not None)
        s = self.stats
        s.batches, s.rows, s.tokens, s.busy_seconds = s.batches + 1, s.rows + len(batch), s.tokens + tokens, \
            s.busy_seconds + seconds
        s.last_tokens_per_second = tokens / seconds if seconds > 0 else 0.0
        s.batch_sizes[len(batch)] += 1
        if self.on_batch:
            self.on_batch(len(batch), tokens, seconds)
        for row, answer in zip(batch, answers):
            self._finish_row(row, answer)

    def _generate(self, batch: list[Row]) -> list[Answer | None]:
        model = self.model
        if batch[0].prompt.segments is not None:  # the line route (GOT.generate reads the page's crops in batches)
            row = batch[0]
            if row.job.stopped():
                return [None]
            if row.job.stream:
                return [model.generate_streaming(row.prompt, lambda s: row.job.emit("text", row.k, s),
                                                 row.job.max_new_tokens)]
            return model.generate([row.prompt], max_new_tokens=row.job.max_new_tokens, batch_size=1)
        control = RowControl(batch)
        streamer = RowStreamer(model, batch) if any(r.job.stream for r in batch) else None
        limit = max(r.job.max_new_tokens for r in batch)
        answers = model._generate_batch([r.prompt for r in batch], limit, streamer=streamer, extra_stops=[control])
        self.stats.steps += control.steps
        out: list[Answer | None] = []
        for b, (row, answer) in enumerate(zip(batch, answers)):
            why = control.why[b]
            if why in ("cancelled", "timeout"):
                out.append(None)
            else:
                if why == "length" and answer.tokens >= row.job.max_new_tokens:
                    answer.finish = "length"
                out.append(answer)
        return out

    def _finish_row(self, row: Row, answer: Answer | None, error: str | None = None) -> None:
        """Hand a row's result to its job; rows of a cancelled job report nothing (its caller has gone)."""
        with self._cond:
            row.job.left -= 1
            if not any(r.job is row.job for r in self._rows):
                self._waiting.discard(row.job)
        if error is not None:
            row.job.emit("error", row.k, error)
        elif answer is not None and not row.job.cancelled.is_set():
            row.job.emit("answer", row.k, answer)
        elif row.job.cancelled.is_set():
            row.job.emit("stopped", row.k, row.job.reason)
