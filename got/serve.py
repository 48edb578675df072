"""`got serve`: the model behind HTTP — a page to try it at `/`, GOT's own upload API (`POST /v1/ocr`) and the
OpenAI chat-completions API that vLLM, SGLang, LMDeploy and ms-swift serve vision-language models with.

    got serve                                   # the default model on http://127.0.0.1:8000
    got serve --model runs/stage3 --host 0.0.0.0 --api-key "$KEY"

Requests of all clients meet in one model worker (got/batcher.py) that decodes them as batches; answers are the
very text `got chat` gives. docs/serving.md has the routes, the batching design and what it costs, and security.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from starlette.requests import Request  # module level: FastAPI reads the routes' annotations from here

from got.checks import MAX_NEW_TOKENS, MAX_TILES, one_line, parse_int
from got.prompts import Query

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
API_KEY_ENV = "GOT_API_KEY"
OCR_FIELDS = ("file", "mode", "format", "box", "color", "crop", "max_tiles", "pages", "multi_page", "max_new_tokens",
              "stream")
ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/ocr", "/v1/chat/completions", "/v1/render", "/v1/preview",
          "/static")
MODE_WORDS = {"": "plain", "plain": "plain", "ocr": "plain", "text": "plain", "format": "format",
              "formatted": "format", "ocr with format": "format"}
GOT_QUERIES = "'OCR: ', 'OCR with format: ', '[x1, y1, x2, y2] OCR: ', '[red] OCR: ', ..."
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_RETRY_AFTER = 60  # seconds: the most a 503 asks a client to wait, however long the measured queue


@dataclass
class Settings:
    """The server's limits (the `got serve` options)."""
    max_batch: int = 16               # rows (pages) decoded together
    queue_size: int = 64              # requests waiting for the model before new ones get 503
    timeout: float = 300.0            # seconds a request may take, queue included (504 after)
    max_upload: int = 20 * 1024 * 1024  # bytes of one upload (413 over)
    api_key: str | None = None        # checked on every route but /health
    window: float = 0.005             # seconds the idle worker waits for requests sent together
    retry_after: int = 2              # least seconds a 503 asks the client to wait (more when batches are slow)


class ServeError(Exception):
    """A request the server refuses: HTTP status + one clear line."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, one_line(message), headers or {}


class ClientGone(Exception):
    """The client closed the connection; its rows have left the batch."""


# ---- metrics -----------------------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics of one server (own registry, so tests can build many apps)."""

    def __init__(self, depth):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: they double the page and say nothing here
        self.registry = r = CollectorRegistry()
        self.requests = Counter("got_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("got_request_seconds", "request latency, streamed requests to their last byte",
                                 ["route"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 300))
        self.batch = Histogram("got_batch_size", "rows (pages) per decode step", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.tokens = Counter("got_generated_tokens", "tokens generated", registry=r)
        self.tokens_per_second = Gauge("got_tokens_per_second", "tokens/s of the last decode step", registry=r)
        self.pages = Counter("got_pages", "pages answered", registry=r)
        self.stopped = Counter("got_stopped_requests", "requests stopped before their answer", ["reason"], registry=r)
        self.queue = Gauge("got_queue_depth", "requests waiting for the model", registry=r)
        self.queue.set_function(depth)

    def on_batch(self, rows: int, tokens: int, seconds: float) -> None:
        self.batch.observe(rows)
        self.tokens.inc(tokens)
        self.tokens_per_second.set(tokens / seconds if seconds > 0 else 0.0)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Guard:
    """ASGI middleware: the API key on every route but /health, 503 for work routes while the queue is full (before
    the upload is read: a refused 20 MB page must cost the server nothing), and request counts / latency by route
    and status. Pure ASGI (not BaseHTTPMiddleware) so streamed answers and disconnects pass through untouched."""

    WORK = ("/v1/ocr", "/v1/chat/completions")

    def __init__(self, app, settings: Settings, metrics: Metrics, server: "Server"):
        self.app, self.settings, self.metrics, self.server = app, settings, metrics, server

    def authorized(self, scope) -> bool:
        key = self.settings.api_key
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = [headers.get("x-api-key", "")]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given.append(auth[7:].strip())
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == "got_api_key":
                given.append(value)
        if scope["path"] == "/" and scope.get("query_string"):  # the page, opened as /?key=...
            from urllib.parse import parse_qs

            given += parse_qs(scope["query_string"].decode("latin-1")).get("key", [])
        return any(g and hmac.compare_digest(g.encode(), key.encode()) for g in given)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = next((r for r in ROUTES if path == r or (r == "/static" and path.startswith("/static/"))), "other")
        t0, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.settings.api_key and path != "/health" and not self.authorized(scope):
                await _send_json(send_status, 401, error_body("missing or wrong API key: send it as "
                                                              "'Authorization: Bearer KEY'", 401),
                                 {"www-authenticate": "Bearer"})
                return
            if path in self.WORK and scope.get("method") == "POST":
                try:
                    self.server.admit()
                except ServeError as e:
                    await _send_json(send_status, e.status, error_body(e.message, e.status), e.headers)
                    return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def error_body(message: str, status: int) -> dict:
    from got.openai_shapes import error_body as shape

    return shape(message, status)


# ---- inputs ------------------------------------------------------------------------------------------------------
async def read_body(request, limit: int, what: str, shown: int | None = None) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (never held whole when too big);
    `shown` is the limit the message names (the upload limit, without the allowance for form fields)."""
    mb = (shown or limit) / 1024 / 1024
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ServeError(413, f"{what} is {int(length) / 1024 / 1024:.1f} MB, over the {mb:.3g} MB limit "
                              "(got serve --max-upload-mb)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ServeError(413, f"{what} is over the {mb:.3g} MB limit (got serve --max-upload-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def _flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise ServeError(400, f"field {name}: expected true or false, got {value!r}")


def parse_box(value: Any, name: str = "box") -> list[float] | None:
    """x1,y1,x2,y2 (or a point x,y) in pixels, as text or a list -> floats; anything else -> 400 naming the field."""
    import math

    if value is None or value == "":
        return None
    try:
        values = [float(v) for v in (value.replace(" ", "").strip("[]()").split(",") if isinstance(value, str)
                                     else value)]
    except (ValueError, TypeError):
        raise ServeError(400, f"field {name}: give pixel coordinates x1,y1,x2,y2 (or a point x,y), got {value!r}") \
            from None
    if len(values) not in (2, 4) or not all(math.isfinite(v) for v in values):
        raise ServeError(400, f"field {name}: give 4 finite numbers x1,y1,x2,y2 (or 2 for a point), got {value!r}")
    return values


def _int_field(name: str, value: Any, default: int, maximum: int) -> int:
    if value is None or value == "":
        return default
    try:
        return parse_int(f"field {name}", value, minimum=1, maximum=maximum)
    except ValueError as e:
        raise ServeError(400, str(e)) from None


def status_of(message: str) -> int:
    """The HTTP status of a refused input: 413 over a size limit, 415 not an image or PDF, else 400."""
    if "Mpx, over the" in message or "decompression-bomb" in message:
        return 413
    if any(s in message for s in ("not an image PIL can read", "unsupported file type", "not a PDF",
                                  "cannot open PDF", "unsupported input type")):
        return 415
    return 400


def _safe_name(name: str | None, default: str) -> str:
    """An upload's file name reduced to a plain base name (no directories, no odd characters)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name or "").name).strip("._")[:80]
    return base or default


class Uploads:
    """A private temporary directory per request: uploads are written nowhere else and removed afterwards."""

    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="got-serve-")
        self.root = Path(self._dir.name)

    def write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def close(self) -> None:
        self._dir.cleanup()


# ---- results -----------------------------------------------------------------------------------------------------
class InOrder:
    """A job's events in page order: text of page k+1 is held back until page k is answered, so a streamed
    document reads like `got chat --stream` (pages one after another)."""

    def __init__(self):
        self.current, self.held = 0, {}

    def add(self, kind: str, k: int, payload) -> list[tuple[str, int, Any]]:
        self.held.setdefault(k, []).append((kind, k, payload))
        out: list[tuple[str, int, Any]] = []
        while self.current in self.held:
            items = self.held.pop(self.current)
            out += items
            if not any(e[0] == "answer" for e in items):
                break  # the current page is still being answered
            self.current += 1
        return out


def answer_record(a) -> dict:
    return {"text": a.text, "tokens": a.tokens, "finish": a.finish, "seconds": round(a.seconds, 3), "page": a.page}


class Server:
    """The model, its worker and the routes' shared logic (prepare an upload, submit it, follow its events)."""

    def __init__(self, model, settings: Settings, model_id: str):
        from got.batcher import Batcher

        self.model, self.settings, self.model_id = model, settings, model_id
        self.created = int(time.time())
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher = Batcher(model, settings.max_batch, settings.queue_size, settings.window,
                               on_batch=self.metrics.on_batch).start()

    async def prepare(self, data: bytes, name: str, query: Query) -> list:
        """Prompts of an upload, made in a thread (image decoding must not block the event loop)."""
        from starlette.concurrency import run_in_threadpool

        uploads = Uploads()
        try:
            path = uploads.write(name, data)
            try:
                prompts = await run_in_threadpool(self.model.prepare, path, query)
            except (ValueError, FileNotFoundError, TypeError) as e:
                message = str(e).replace(str(path), name).replace(str(uploads.root) + os.sep, "")
                raise ServeError(status_of(message), message) from None
        finally:
            uploads.close()
        for p in prompts:
            p.source = name
        return prompts

    def admit(self) -> None:
        """503 before any work when the queue is full: receiving and preparing a page (upload, decoding, layout)
        costs about what reading it does, so a refused request must not pay it (64 clients retrying would starve
        the model). The Guard asks before the body is read; the routes ask again just before preparing."""
        if self.batcher.depth >= self.batcher.queue_size:
            self.metrics.stopped.labels("queue_full").inc()
            raise ServeError(503, f"server busy: {self.batcher.depth} requests are waiting already "
                                  f"(queue size {self.batcher.queue_size}); retry later", self.retry_headers())

    def retry_headers(self) -> dict[str, str]:
        """Retry-After = the measured time the queue ahead needs (worker seconds per answered row x requests
        waiting), at least `settings.retry_after`: clients told the truth come back when there is room, not every
        2 s."""
        b = self.batcher
        wait = b.seconds_per_row() * b.depth
        return {"retry-after": str(max(self.settings.retry_after, min(MAX_RETRY_AFTER, math.ceil(wait))))}

    def submit(self, prompts: list, max_new_tokens: int, stream: bool):
        """Queue a job; -> (job, asyncio queue of its events). 503 when the queue is full."""
        from got.batcher import Job, QueueFull

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, k: int, payload) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, k, payload))
            except RuntimeError:  # the loop has closed (server shutting down): nobody to tell
                pass

        job = Job(prompts, max_new_tokens, emit, stream=stream, deadline=time.monotonic() + self.settings.timeout)
        try:
            self.batcher.submit(job)
        except QueueFull as e:
            self.metrics.stopped.labels("queue_full").inc()
            raise ServeError(503, f"server busy: {e}; retry later", self.retry_headers()) from None
        return job, events

    async def follow(self, job, events: asyncio.Queue, request, poll_disconnect: bool) -> AsyncIterator[tuple]:
        """The job's events in page order ("text", k, piece) / ("answer", k, Answer) until every page is answered.
        Raises ServeError 504 past the timeout, ClientGone when the client left; either way the job is cancelled."""
        order, answered, n = InOrder(), 0, len(job.prompts)
        finished = False
        try:
            while answered < n:
                left = job.deadline - time.monotonic()
                if left <= 0:
                    job.cancel("timeout")
                    raise ServeError(504, f"request took longer than the {self.settings.timeout:g} s limit "
                                          "(got serve --timeout)")
                try:
                    kind, k, payload = await asyncio.wait_for(events.get(), min(left, 0.25))
                except asyncio.TimeoutError:
                    if poll_disconnect and await request.is_disconnected():
                        raise ClientGone from None
                    continue
                if kind == "error":
                    job.cancel("error")
                    raise ServeError(500, payload)
                if kind == "stopped":
                    if payload == "timeout":
                        raise ServeError(504, f"request took longer than the {self.settings.timeout:g} s limit "
                                              "(got serve --timeout)")
                    raise ClientGone
                for event in order.add(kind, k, payload):
                    if event[0] == "answer":
                        answered += 1
                        self.metrics.pages.inc()
                    yield event
            finished = True
        finally:
            if not finished:
                reason = job.reason or "cancelled"
                job.cancel(reason)
                self.metrics.stopped.labels(reason).inc()

    def close(self) -> None:
        self.batcher.close()


# ---- the app -----------------------------------------------------------------------------------------------------
def sse(data: Any, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def create_app(model, settings: Settings | None = None, model_id: str = "got"):
    """The ASGI app around a loaded `GOT` (its worker thread starts now and stops with the app's lifespan)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from pydantic import ValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from got.openai_shapes import (ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChunkChoice, Delta,
                                   ModelCard, ModelList, ResponseMessage, Usage, completion_id, finish_reason, now)

    settings = settings or Settings()
    server = Server(model, settings, model_id)

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(title="got serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = server
    app.add_middleware(Guard, settings=settings, metrics=server.metrics, server=server)

    @app.exception_handler(ServeError)
    async def refused(request, e: ServeError):
        return JSONResponse(error_body(e.message, e.status), e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e):
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {e.detail}", e.status_code),
                            e.status_code)

    @app.exception_handler(Exception)
    async def crashed(request, e):  # a bug: still one JSON line for the client (the log keeps the traceback)
        return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", 500), 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e):
        return JSONResponse(error_body(_validation_message(e.errors()), 400), 400)

    # ---- pages ----
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "queue": server.batcher.depth}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(server.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request):
        page = (STATIC / "index.html").read_text(encoding="utf-8")
        line = bool(getattr(model, "line_model", False))
        page = page.replace("{{MODEL}}", model_id).replace("{{LINE_MODEL}}", "true" if line else "false")
        response = HTMLResponse(page)
        key = request.query_params.get("key")
        if settings.api_key and key:  # the page's own calls then carry the key as a cookie
            response.set_cookie("got_api_key", key, httponly=True, samesite="strict")
        return response

    @app.get("/static/{name}")
    async def static(name: str):
        if name == "render.css":
            from got.render import CSS

            return Response(CSS, media_type="text/css")
        if name not in STATIC_FILES:
            raise ServeError(404, f"/static/{name}: no such file")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/v1/models")
    async def models():
        return ModelList(data=[ModelCard(id=model_id, created=server.created)]).model_dump()

    @app.post("/v1/render")
    async def render(request: Request):
        """Formatted output -> HTML (got/render.py: MathML, tables, **kern, SMILES) for the page."""
        from got.render import render_fragment
        from starlette.concurrency import run_in_threadpool

        body = await _json_body(request, 4 * 1024 * 1024, "render request")
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise ServeError(400, "POST /v1/render takes JSON {\"text\": \"...\"}")
        return {"html": await run_in_threadpool(render_fragment, text)}

    @app.post("/v1/preview")
    async def preview(request: Request):
        """One page of an upload as the model sees it (PNG), so the page can draw boxes in the model's pixels."""
        from starlette.concurrency import run_in_threadpool

        form, data, name = await _upload(request, ("file", "page"))
        page = _int_field("page", form.get("page"), 1, 1 << 20)

        def render_page() -> bytes:
            from got.processor import is_pdf, load_image, load_pdf

            uploads = Uploads()
            try:
                path = uploads.write(name, data)
                try:
                    image = load_pdf(path, pages=[page])[0] if is_pdf(path) else load_image(path)
                except (ValueError, FileNotFoundError) as e:
                    message = str(e).replace(str(path), name)
                    raise ServeError(status_of(message), message) from None
                buf = io.BytesIO()
                image.save(buf, "PNG")
                return buf.getvalue()
            finally:
                uploads.close()

        return Response(await run_in_threadpool(render_page), media_type="image/png")

    # ---- GOT's own API ----
    @app.post("/v1/ocr")
    async def ocr(request: Request):
        form, data, name = await _upload(request, OCR_FIELDS)
        mode = (form.get("mode") or ("format" if _flag("format", form.get("format")) else "plain")).strip().lower()
        if mode not in ("plain", "format"):
            raise ServeError(400, f"field mode: expected plain or format, got {mode!r}")
        color = form.get("color") or None
        if color is not None and color not in ("red", "green", "blue"):
            raise ServeError(400, f"field color: expected red, green or blue, got {color!r}")
        try:
            query = Query(mode=mode, box=parse_box(form.get("box")), color=color, crop=_flag("crop", form.get("crop")),
                          max_tiles=_int_field("max_tiles", form.get("max_tiles"), 6, MAX_TILES),
                          pages=form.get("pages") or None, multi_page=_flag("multi_page", form.get("multi_page")))
        except ValueError as e:
            raise ServeError(400, str(e)) from None
        max_new = _int_field("max_new_tokens", form.get("max_new_tokens"), 4096, MAX_NEW_TOKENS)
        stream = _flag("stream", form.get("stream"))
        server.admit()
        prompts = await server.prepare(data, name, query)
        job, events = server.submit(prompts, max_new, stream)
        head = {"model": model_id, "file": name, "mode": prompts[0].mode}
        pages = [p.page for p in prompts]
        if not stream:
            answers = []
            try:
                async for kind, _, payload in server.follow(job, events, request, poll_disconnect=True):
                    if kind == "answer":
                        answers.append(answer_record(payload))
            except ClientGone:
                return Response(status_code=499)
            return {**head, "answers": answers}

        async def events_out():
            t0 = time.perf_counter()
            yield sse({**head, "pages": pages}, "start")
            try:
                async for kind, k, payload in server.follow(job, events, request, poll_disconnect=False):
                    if kind == "text":
                        yield sse({"page": pages[k], "text": payload}, "text")
                    else:
                        yield sse(answer_record(payload), "answer")
            except ServeError as e:
                yield sse(error_body(e.message, e.status), "error")
                return
            except ClientGone:
                return
            yield sse({"answers": len(pages), "seconds": round(time.perf_counter() - t0, 3)}, "done")

        return StreamingResponse(events_out(), media_type="text/event-stream", headers=SSE_HEADERS)

    # ---- OpenAI chat completions ----
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request, settings.max_upload * 4 // 3 + 65536, "chat request (base64 image)",
                                settings.max_upload * 4 // 3)
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as e:
            raise ServeError(400, _validation_message(e.errors())) from None
        data, media, text = _chat_inputs(req, settings.max_upload)
        query = _chat_query(req, text)
        name = "image" + {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png",
                          "image/webp": ".webp", "image/gif": ".gif", "image/tiff": ".tif",
                          "image/bmp": ".bmp"}.get(media, "")
        server.admit()
        prompts = await server.prepare(data, name, query)
        max_new = min(req.max_completion_tokens or req.max_tokens or 4096, MAX_NEW_TOKENS)
        job, events = server.submit(prompts, max_new, req.stream)
        cid, created = completion_id(), now()
        prompt_tokens = sum(len(p.input_ids) for p in prompts)
        if not req.stream:
            answers = []
            try:
                async for kind, _, payload in server.follow(job, events, request, poll_disconnect=True):
                    if kind == "answer":
                        answers.append(payload)
            except ClientGone:
                return Response(status_code=499)
            tokens = sum(a.tokens for a in answers)
            finish = "length" if any(a.finish == "length" for a in answers) else "stop"
            return ChatCompletion(
                id=cid, created=created, model=model_id,
                choices=[Choice(message=ResponseMessage(content="\n\n".join(a.text for a in answers)),
                                finish_reason=finish)],
                usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=tokens,
                            total_tokens=prompt_tokens + tokens)).model_dump()

        def chunk(delta: Delta, finish: str | None = None) -> str:
            return sse(ChatCompletionChunk(id=cid, created=created, model=model_id,
                                           choices=[ChunkChoice(delta=delta, finish_reason=finish)])
                       .model_dump_json(exclude_none=False))

        async def chunks():
            yield chunk(Delta(role="assistant", content=""))
            finishes, begun, streamed = [], set(), set()
            try:
                async for kind, k, payload in server.follow(job, events, request, poll_disconnect=False):
                    if k not in begun:  # pages follow each other, a blank line apart (as `got chat --stream`)
                        begun.add(k)
                        if k:
                            yield chunk(Delta(content="\n\n"))
                    if kind == "text":
                        streamed.add(k)
                        yield chunk(Delta(content=payload))
                        continue
                    if k not in streamed and payload.text:  # an answer that came whole
                        yield chunk(Delta(content=payload.text))
                    finishes.append(payload.finish)
            except ServeError as e:
                yield sse(error_body(e.message, e.status))
                yield sse("[DONE]")
                return
            except ClientGone:
                return
            yield chunk(Delta(), finish_reason("length" if "length" in finishes else "stop"))
            yield sse("[DONE]")

        return StreamingResponse(chunks(), media_type="text/event-stream", headers=SSE_HEADERS)

    async def _upload(request, allowed: tuple[str, ...]) -> tuple[dict, bytes, str]:
        """A multipart upload: (text fields, the file's bytes, its safe name). 415 not multipart, 413 too big."""
        from starlette.formparsers import MultiPartParser

        class InMemory(MultiPartParser):
            spool_max_size = settings.max_upload + 65536  # the body is in memory already: never spooled to disk

        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise ServeError(415, f"{request.url.path} takes multipart/form-data with the image or PDF in field "
                                  f"'file', got content-type {kind or 'none'!r}")
        body = await read_body(request, settings.max_upload + 65536, "upload", settings.max_upload)

        async def chunks():
            yield body

        try:
            form = await InMemory(request.headers, chunks(), max_files=1, max_fields=len(allowed)).parse()
        except Exception as e:  # python-multipart / Starlette: malformed body, too many parts
            raise ServeError(400, f"malformed multipart upload: {getattr(e, 'detail', e)}") from None
        unknown = sorted(set(form.keys()) - set(allowed))
        if unknown:
            raise ServeError(400, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ServeError(400, "no file: send the image or PDF as the multipart file field 'file'")
        data = await upload.read()
        await form.close()
        if len(data) > settings.max_upload:
            raise ServeError(413, f"upload is {len(data) / 1024 / 1024:.1f} MB, over the "
                                  f"{settings.max_upload / 1024 / 1024:.3g} MB limit (got serve --max-upload-mb)")
        if not data:
            raise ServeError(400, "file: empty upload (0 bytes)")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return fields, data, _safe_name(upload.filename, "upload")

    async def _json_body(request, limit: int, what: str, shown: int | None = None) -> Any:
        kind = request.headers.get("content-type", "")
        if kind and not kind.startswith("application/json"):
            raise ServeError(415, f"{request.url.path} takes application/json, got content-type {kind!r}")
        body = await read_body(request, limit, what, shown)
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ServeError(400, f"{what}: not valid JSON ({e})") from None

    return app


def _validation_message(errors: list[dict]) -> str:
    """pydantic's errors -> one line naming the first bad field."""
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"field {where}: {e.get('msg', 'invalid')}{more}"


def _chat_inputs(req, max_upload: int) -> tuple[bytes, str, str]:
    """(image bytes, media type, text) of a chat request: the image_url and text parts of its user messages."""
    images, texts = [], []
    for m in req.messages:
        if m.role != "user" or m.content is None:
            continue
        if isinstance(m.content, str):
            texts.append(m.content)
            continue
        for part in m.content:
            if part.type == "text":
                texts.append(part.text)
            else:
                images.append(part.image_url.url)
    if not images:
        raise ServeError(400, "messages: no image_url part; send the image as a data: URL "
                              "(content part {\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,...\"}})")
    if len(images) > 1:
        raise ServeError(400, f"messages: {len(images)} images given; send one image or one PDF per request")
    url = images[0]
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "a remote"
        raise ServeError(400, f"image_url: this server does not fetch URLs ({scheme!r} given); send the image inline "
                              "as a data: URL (data:image/png;base64,...)")
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise ServeError(400, "image_url: malformed data: URL (no comma before the data)")
    media = head.split(";")[0].strip().lower()
    if media and not (media.startswith("image/") or media == "application/pdf"):
        raise ServeError(415, f"image_url: media type {media!r} is not an image or a PDF")
    if len(payload) > max_upload * 4 // 3 + 4:
        raise ServeError(413, f"image_url: the image is over the {max_upload / 1024 / 1024:.3g} MB limit "
                              "(got serve --max-upload-mb)")
    if ";base64" in head:
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ServeError(400, "image_url: the data: URL's base64 does not decode") from None
    else:
        from urllib.parse import unquote_to_bytes

        data = unquote_to_bytes(payload)
    if not data:
        raise ServeError(400, "image_url: empty image (0 bytes)")
    return data, media, " ".join(t.strip() for t in texts if t.strip())


def _chat_query(req, text: str) -> Query:
    """The text part as a Query: a mode word (plain, format) or one of GOT's queries; extra fields override."""
    word = text.strip().lower().rstrip(":").strip()
    if word in MODE_WORDS:
        query = Query(mode=MODE_WORDS[word])
    else:  # GOT's queries end in ": "; a client may have trimmed the space
        query = next((q for q in map(Query.parse, (text, text.strip() + " ")) if q.raw is None), None)
        if query is None:
            raise ServeError(400, f"text part {text[:80]!r} is neither a mode word (plain, format) nor one of GOT's "
                                  f"queries ({GOT_QUERIES})")
    try:
        fields: dict[str, Any] = {}
        box = parse_box(req.box)
        if box is not None:
            fields.update(box=box, box_grid=False)
        if req.color:
            fields["color"] = req.color
        if req.crop:
            fields["crop"] = True
        if req.max_tiles != 6:
            fields["max_tiles"] = parse_int("field max_tiles", req.max_tiles, 1, MAX_TILES)
        if req.pages is not None:
            fields["pages"] = str(req.pages)
        if req.multi_page:
            fields["multi_page"] = True
        return replace(query, **fields)
    except ValueError as e:
        raise ServeError(400, str(e)) from None


# ---- CLI ---------------------------------------------------------------------------------------------------------
def add_cli(p: argparse.ArgumentParser) -> None:
    from got.inference import add_model_options

    p.add_argument("--model", help="model directory, training run, or cached hub id (default: the shipped default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", default="8000", help="port (default 8000)")
    p.add_argument("--api-key", help=f"required on every route but /health (default: ${API_KEY_ENV} if set)")
    p.add_argument("--max-batch", default="16", help="pages decoded together (default 16)")
    p.add_argument("--queue-size", default="64", help="requests waiting before new ones get 503 (default 64)")
    p.add_argument("--timeout", default="300", help="seconds a request may take, queue included (default 300)")
    p.add_argument("--max-upload-mb", default="20", help="upload size limit in MB (default 20)")
    p.add_argument("--batch-window-ms", default="5", help="how long an idle worker gathers requests (default 5)")
    add_model_options(p)


def settings_from_args(args: argparse.Namespace) -> Settings:
    from got.checks import parse_float

    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    return Settings(max_batch=parse_int("--max-batch", args.max_batch, minimum=1, maximum=4096),
                    queue_size=parse_int("--queue-size", args.queue_size, minimum=0, maximum=1 << 20),
                    timeout=parse_float("--timeout", args.timeout, minimum=0.001),
                    max_upload=int(parse_float("--max-upload-mb", args.max_upload_mb, minimum=0.001) * 1024 * 1024),
                    window=parse_float("--batch-window-ms", args.batch_window_ms, minimum=0) / 1000,
                    api_key=key)


def check_address(host: str, port: int) -> None:
    """ValueError naming --host / --port when the address cannot be bound (in use, not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host {host!r}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def cli_main(args: argparse.Namespace) -> int:
    import uvicorn

    from got.batcher import limit_malloc_arenas
    from got.checks import check_device
    from got.inference import model_from_args

    limit_malloc_arenas()  # before any thread starts
    settings = settings_from_args(args)
    port = parse_int("--port", args.port, minimum=0, maximum=65535)
    device = check_device("--device", args.device)
    check_address(args.host, port)  # before the model loads: a busy port is one line at once
    model = model_from_args(args, device)
    model_id = "got-default" if args.model in (None, "default") else Path(str(args.model).rstrip("/")).name or "got"
    if args.host not in LOOPBACK and not settings.api_key:
        print(f"got serve: warning: listening on {args.host} without an API key: anyone who reaches this address "
              f"can use the model (--api-key or ${API_KEY_ENV})", file=sys.stderr)
    app = create_app(model, settings, model_id)
    print(f"got serve: {model_id} on http://{args.host}:{port}/ (batch {settings.max_batch}, queue "
          f"{settings.queue_size}, timeout {settings.timeout:g} s)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=port, log_level="warning")
    return 0
