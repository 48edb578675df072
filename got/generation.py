"""What transformers' generate() is handed besides the prompt: stop rules and a streamer for our tokenizer.

Kept apart from got.inference so that a model whose CTC head answers reads without importing transformers.
"""
from __future__ import annotations

import codecs
import threading
from collections.abc import Callable, Iterable

import torch
from transformers.generation.stopping_criteria import StoppingCriteria
from transformers.generation.streamers import BaseStreamer


class RepetitionGuard(StoppingCriteria):
    """Ends each sequence whose last `window` generated tokens hold fewer than `min_unique` distinct
    `ngram`-grams per position: a loop.

    An exact loop of period p has about p / window distinct n-grams (caught up to p ~ 250 by default).
    Under `no_repeat_ngram_size=20` a loop cannot repeat exactly; the model changes a token every ~20 and
    carries on, leaving about ngram/20 + p/window (caught up to p ~ 50). Prose, tables, numbers and tables
    of contents stay above 0.6; very repetitive legitimate content (a long grid of empty cells, sheet music
    made of one repeated bar) can fall below: pass a larger window or `GOT.repetition_guard = None`.
    Decisions are per sequence, so batching does not change them. Create one guard per `generate` call.
    """

    def __init__(self, window: int = 512, ngram: int = 8, min_unique: float = 0.5):
        self.window, self.ngram, self.min_unique = window, ngram, min_unique
        self.prompt_len: int | None = None
        self.fired: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if self.prompt_len is None:  # first call: the prompt plus one new token
            self.prompt_len = input_ids.shape[1] - 1
            self.fired = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if input_ids.shape[1] - self.prompt_len < self.window:
            return done
        tail = input_ids[:, -self.window:].tolist()
        n_grams = self.window - self.ngram + 1
        for b, row in enumerate(tail):
            unique = len({tuple(row[i:i + self.ngram]) for i in range(n_grams)})
            if unique < self.min_unique * n_grams:
                done[b] = True
                self.fired[b] = True
        return done


class Abort(StoppingCriteria):
    """Stops generation when a streaming consumer goes away (breaks out of the loop)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores=None, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TextPieceStreamer(BaseStreamer):
    """transformers streamer for our tiktoken tokenizer: calls `on_text(piece)` as tokens arrive.

    Bytes go through an incremental UTF-8 decoder, so a character split over several BPE tokens is emitted
    once it is complete; leading and trailing whitespace and the stop token are held back exactly as the
    non-streamed answer strips them, so the pieces join to the very same text.
    """

    def __init__(self, tokenizer, on_text: Callable[[str], None], stop_ids: Iterable[int]):
        self.tokenizer, self.on_text, self.stop_ids = tokenizer, on_text, set(stop_ids)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._prompt_seen = self._stopped = self._started = False
        self._held = ""

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        if value.numel() != 1:
            raise ValueError("TextPieceStreamer streams one sequence at a time (batch size 1)")
        token = int(value.reshape(-1)[0])
        if self._stopped or token in self.stop_ids:
            self._stopped = True
            return
        self._emit(self._decoder.decode(self.tokenizer.id_to_bytes(token)))

    def end(self) -> None:
        self._emit(self._decoder.decode(b"", final=True))

    def _emit(self, text: str) -> None:
        text = self._held + text
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        body = text.rstrip()
        self._held = text[len(body):]
        if body:
            self.on_text(body)
