"""`got serve` in-process (httpx TestClient) on the tiny preset with random weights: every route, every refusal,
the batching worker (exact answers in mixed batches, per-row limits, cancellation), and answers identical to
`GOT.chat` for the same inputs (the default model for real text)."""
from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from got.batcher import Batcher, Job
from got.inference import GOT
from got.serve import Settings, create_app
from serve_helpers import live_server, noise, pdf_bytes, png, text_page, tiny_model_dir

NEW = 8  # new tokens per answer: enough to compare texts, cheap on 2 shared cores


@pytest.fixture(scope="module")
def got(tmp_path_factory):
    return GOT.from_pretrained(tiny_model_dir(tmp_path_factory.mktemp("tiny")), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def client(got):
    with TestClient(create_app(got, Settings(window=0.02), model_id="tiny")) as c:
        yield c


def events(body: str) -> list[tuple[str, dict]]:
    """Server-sent events -> [(event, data)]."""
    out = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event", "message"), fields["data"] if fields["data"] == "[DONE]"
                    else json.loads(fields["data"])))
    return out


def ocr(client, data: bytes, name: str = "a.png", **fields):
    fields = {"max_new_tokens": str(NEW), **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/ocr", files={"file": (name, data, "application/octet-stream")}, data=fields)


def error(r) -> str:
    return r.json()["error"]["message"]


# ---- answers ---------------------------------------------------------------------------------------------------------
def test_ocr_answers_equal_got_chat(got, client):
    image = noise(300, 200, 1)
    r = ocr(client, png(image))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["file"] == "a.png" and body["mode"] == "plain"
    [a] = body["answers"]
    assert a["text"] == got.chat(image, max_new_tokens=NEW)
    assert a["tokens"] == NEW and a["finish"] == "length" and a["page"] is None and a["seconds"] > 0
    for fields, options in [({"mode": "format", "box": "10,20,200,150"}, dict(mode="format", box=(10, 20, 200, 150))),
                            ({"color": "red"}, dict(color="red")), ({"crop": "true", "max_tiles": "3"},
                                                                    dict(crop=True, max_tiles=3))]:
        [a] = ocr(client, png(image), **fields).json()["answers"]
        assert a["text"] == got.chat(image, max_new_tokens=NEW, **options), fields


def test_pdf_page_by_page_and_multi_page(got, client):
    pdf = pdf_bytes(3)
    r = ocr(client, pdf, "doc.pdf", pages="1,3")
    assert [a["page"] for a in r.json()["answers"]] == [1, 3]
    assert [a["text"] for a in r.json()["answers"]] == got.chat(pdf, pages="1,3", max_new_tokens=NEW)
    [a] = ocr(client, pdf, "doc.pdf", multi_page="true").json()["answers"]
    assert a["text"] == got.chat(pdf, multi_page=True, max_new_tokens=NEW)


def test_ocr_stream_sends_pieces_that_join_to_the_answer(got, client):
    pdf = pdf_bytes(2)
    r = ocr(client, pdf, "doc.pdf", stream="true")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = events(r.text)
    assert ev[0][0] == "start" and ev[0][1]["pages"] == [1, 2] and ev[-1][0] == "done"
    answers = [d for e, d in ev if e == "answer"]
    assert [a["text"] for a in answers] == got.chat(pdf, max_new_tokens=NEW)
    for a in answers:  # each page's pieces arrive before its answer and join to it
        assert "".join(d["text"] for e, d in ev if e == "text" and d["page"] == a["page"]) == a["text"]
    pages_in_order = [d["page"] for e, d in ev if e in ("text", "answer")]
    assert pages_in_order == sorted(pages_in_order)


def test_concurrent_clients_get_their_own_answers(got, client):
    images = [noise(200 + 30 * i, 180, 10 + i) for i in range(5)]
    out = [None] * len(images)

    def call(i):
        out[i] = ocr(client, png(images[i]), f"{i}.png").json()["answers"][0]["text"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == got.chat_batch(images, max_new_tokens=NEW, batch_size=1)


# ---- the worker ------------------------------------------------------------------------------------------------------
def collect(jobs_out: dict, key):
    def emit(kind, k, payload):
        jobs_out.setdefault(key, []).append((kind, k, payload))
    return emit


def test_worker_batches_waiting_requests_with_their_own_limits(got):
    images = [noise(220, 200, 20 + i) for i in range(4)]
    limits = [3, NEW, 5, NEW]
    got_events: dict = {}
    batcher = Batcher(got, max_batch=8, queue_size=8, window=0)
    jobs = [Job(got.prepare(im), n, collect(got_events, i)) for i, (im, n) in enumerate(zip(images, limits))]
    for job in jobs:  # all waiting before the worker starts: one batch of 4
        batcher.submit(job)
    assert batcher.depth == 4
    batcher.start()
    try:
        deadline = time.monotonic() + 120
        while len(got_events) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        batcher.close()
    assert dict(batcher.stats.batch_sizes) == {4: 1}  # admitted together
    for i, (im, n) in enumerate(zip(images, limits)):
        [(kind, _, answer)] = got_events[i]
        assert kind == "answer" and answer.tokens == n and answer.finish == "length"
        assert answer.text == got.chat(im, max_new_tokens=n)


def test_rows_join_and_leave_between_steps_with_the_answers_of_got_chat(got):
    """Continuous batching: rows admitted while others decode (different prompt lengths, so their caches are
    padded in), rows leaving at their own limits; every answer is GOT.chat's for the same input."""
    from got.batcher import DecodeBatch

    images = [noise(200 + 40 * i, 160 + 20 * i, 40 + i) for i in range(4)]
    prompts = [got.prepare(im)[0] for im in images]
    prompts[3] = got.prepare(images[3], box=(10, 10, 150, 120))[0]  # a longer prompt (the box in the query)
    limits = [24, 6, 12, 16]
    batch, done = DecodeBatch(got), {}
    joins = {0: [0], 3: [1, 2], 7: [3]}  # step -> rows admitted before it
    step = 0
    while len(done) < 4:
        if step in joins:
            batch.admit([prompts[i] for i in joins[step]], [limits[i] for i in joins[step]], joins[step])
        finished = [s for s in batch.seqs if s.finish]
        for seq in finished:
            done[seq.tag] = batch.answer(seq)
        batch.drop(finished)
        if len(batch):
            batch.step()
        step += 1
    for i, im in enumerate(images):
        options = {"box": (10, 10, 150, 120)} if i == 3 else {}
        assert done[i].text == got.chat(im, max_new_tokens=limits[i], **options), i
        assert done[i].tokens <= limits[i]
    assert batch.cache is None and len(batch) == 0


def test_compiled_batch_steps_give_the_eager_answers(got, monkeypatch):
    """`got serve --compile`: the batcher's one-token step compiled (dynamo's aot_eager backend here, the same
    capture and guards as inductor in seconds) answers as GOT.chat does, rows joining and leaving, without a
    compile per token."""
    import torch._dynamo

    import got.batcher as batcher_module
    from got.batcher import DecodeBatch
    from got.decode import compile_config

    monkeypatch.setattr(batcher_module, "compile_config", lambda: compile_config("aot_eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = GOT(got.model, got.tokenizer, compile=True)
    images = [noise(200 + 40 * i, 160, 60 + i) for i in range(3)]
    limits = [20, 8, 14]
    batch, done = DecodeBatch(compiled), {}
    batch.admit([compiled.prepare(images[0])[0]], [limits[0]], [0])
    for step in range(40):
        if step == 3:
            batch.admit([compiled.prepare(im)[0] for im in images[1:]], limits[1:], [1, 2])
        finished = [s for s in batch.seqs if s.finish]
        done.update({s.tag: batch.answer(s) for s in finished})
        batch.drop(finished)
        if len(batch):
            batch.step()
    assert sorted(done) == [0, 1, 2]
    for i, im in enumerate(images):
        assert done[i].text == got.chat(im, max_new_tokens=limits[i]), i
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 0 < frames <= 8, frames


def test_a_late_request_starts_before_the_running_batch_ends(got):
    """A request sent while another decodes gets its answer at the next steps, not after the long one."""
    order, seen = [], {}

    def emit(key):
        def f(kind, k, payload):
            seen.setdefault(key, []).append(kind)
            if kind == "answer":
                order.append(key)
        return f

    batcher = Batcher(got, max_batch=4, queue_size=4, window=0).start()
    image = noise(200, 200, 50)
    try:
        long_job = Job(got.prepare(image), 200, emit("long"), stream=True)
        batcher.submit(long_job)
        deadline = time.monotonic() + 120
        while not seen.get("long") and time.monotonic() < deadline:  # the long row is decoding
            time.sleep(0.005)
        batcher.submit(Job(got.prepare(noise(180, 220, 51)), 4, emit("late")))
        while len(order) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        batcher.close()
    assert order[0] == "late", order
    assert batcher.stats.batch_sizes[1] == 2  # admitted one by one, into one running batch


def test_queue_bound_and_cancelled_rows_leave_the_batch(got):
    from got.batcher import QueueFull

    got_events: dict = {}
    batcher = Batcher(got, max_batch=4, queue_size=2, window=0)
    image = noise(200, 200, 30)
    long_job = Job(got.prepare(image), 400, collect(got_events, "long"), stream=True)
    mate = Job(got.prepare(image), NEW, collect(got_events, "mate"))
    batcher.submit(long_job)
    batcher.submit(mate)
    with pytest.raises(QueueFull, match="queue size 2"):
        batcher.submit(Job(got.prepare(image), NEW, collect(got_events, "x")))
    batcher.start()
    try:
        deadline = time.monotonic() + 120
        while not got_events.get("long") and time.monotonic() < deadline:  # the first streamed piece
            time.sleep(0.01)
        long_job.cancel()
        while ("stopped" not in [e[0] for e in got_events.get("long", [])] or "mate" not in got_events) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        batcher.close()
    kinds = [e[0] for e in got_events["long"]]
    assert kinds[-1] == "stopped" and "answer" not in kinds
    assert batcher.stats.steps < 400  # the batch did not run to the cancelled row's limit
    [(kind, _, answer)] = got_events["mate"]
    assert kind == "answer" and answer.text == got.chat(image, max_new_tokens=NEW)


def test_a_cancelled_request_frees_its_queue_place_at_once(got):
    from got.batcher import QueueFull

    seen: dict = {}
    batcher = Batcher(got, max_batch=4, queue_size=1, window=0)  # never started: everything stays queued
    prompts = got.prepare(noise(64, 64))
    first = Job(prompts, NEW, collect(seen, "first"))
    batcher.submit(first)
    with pytest.raises(QueueFull):
        batcher.submit(Job(prompts, NEW, collect(seen, "second")))
    first.cancel("timeout")
    assert batcher.depth == 0 and seen["first"] == [("stopped", 0, "timeout")]
    batcher.submit(Job(prompts, NEW, collect(seen, "third")))
    assert batcher.depth == 1


# ---- OpenAI chat completions -------------------------------------------------------------------------------------------
def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def chat_body(url: str, text: str = "OCR: ", **extra) -> dict:
    return {"model": "tiny", "max_tokens": NEW, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}], **extra}


def test_chat_completions_equal_got_chat(got, client):
    image = noise(260, 220, 3)
    r = client.post("/v1/chat/completions", json=chat_body(data_url(png(image))))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": got.chat(image, max_new_tokens=NEW)}
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == NEW
    for text, extra, options in [("format", {}, dict(mode="format")), ("OCR with format:", {}, dict(mode="format")),
                                 ("[red] OCR: ", {}, dict(color="red")),
                                 ("plain", {"box": [5, 5, 120, 90]}, dict(box=(5, 5, 120, 90)))]:
        content = client.post("/v1/chat/completions", json=chat_body(data_url(png(image)), text, **extra)).json()
        assert content["choices"][0]["message"]["content"] == got.chat(image, max_new_tokens=NEW, **options), text


def test_chat_completions_stream_chunks(got, client):
    pdf = pdf_bytes(2)
    r = client.post("/v1/chat/completions", json=chat_body(data_url(pdf, "application/pdf"), stream=True))
    ev = [d for _, d in events(r.text)]
    assert ev[-1] == "[DONE]" and all(c["object"] == "chat.completion.chunk" for c in ev[:-1])
    assert ev[0]["choices"][0]["delta"]["role"] == "assistant" and ev[-2]["choices"][0]["finish_reason"] == "length"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in ev[:-1])
    assert text == "\n\n".join(got.chat(pdf, max_new_tokens=NEW))


def test_openai_client_against_a_live_server(got):
    openai = pytest.importorskip("openai")
    image = noise(240, 200, 4)
    with live_server(create_app(got, Settings(api_key="sekrit"), model_id="tiny")) as url:
        api = openai.OpenAI(base_url=f"{url}/v1", api_key="sekrit", max_retries=0)
        assert [m.id for m in api.models.list()] == ["tiny"]
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png(image))}},
                                                 {"type": "text", "text": "OCR: "}]}]
        done = api.chat.completions.create(model="tiny", messages=messages, max_tokens=NEW)
        assert done.choices[0].message.content == got.chat(image, max_new_tokens=NEW)
        pieces = [c.choices[0].delta.content or "" for c in
                  api.chat.completions.create(model="tiny", messages=messages, max_tokens=NEW, stream=True)]
        assert "".join(pieces) == done.choices[0].message.content
        with pytest.raises(openai.BadRequestError, match="does not fetch"):
            api.chat.completions.create(model="tiny", max_tokens=NEW, messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_client_going_away_cancels_its_request(got):
    app = create_app(got, Settings(), model_id="tiny")
    with live_server(app) as url:
        with httpx.Client(timeout=60) as h:
            with h.stream("POST", f"{url}/v1/ocr", files={"file": ("a.png", png(noise(200, 200, 5)))},
                          data={"stream": "true", "max_new_tokens": "2000"}) as r:
                for line in r.iter_lines():
                    if line.startswith("event: text"):
                        break  # decoding has begun: hang up
        stopped = app.state.server.metrics.stopped
        deadline = time.monotonic() + 60
        while stopped.labels("cancelled")._value.get() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stopped.labels("cancelled")._value.get() == 1
        assert app.state.server.batcher.stats.steps < 2000
        # not streamed: the server notices the closed connection while it waits for the answer
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/ocr", files={"file": ("b.png", png(noise(200, 200, 6)))},
                       data={"max_new_tokens": "2000"}, timeout=httpx.Timeout(60, read=1.5))
        while stopped.labels("cancelled")._value.get() < 2 and time.monotonic() < deadline + 60:
            time.sleep(0.05)
        assert stopped.labels("cancelled")._value.get() == 2
        assert app.state.server.batcher.stats.steps < 2 * 2000  # both batches stopped early


# ---- the other routes -----------------------------------------------------------------------------------------------
def test_health_models_metrics_page_and_assets(client):
    assert client.get("/health").json() == {"status": "ok", "model": "tiny", "queue": 0}
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    ocr(client, png(noise(100, 100)))
    metrics = client.get("/metrics").text
    for name in ("got_requests_total{", "got_queue_depth", "got_batch_size_bucket", "got_tokens_per_second",
                 "got_request_seconds_bucket", 'status="200"'):
        assert name in metrics, name
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="overlay">' in page.text and "tiny" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # every asset from this server
    for asset, kind in [("app.js", "javascript"), ("app.css", "css"), ("render.css", "css")]:
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
        assert "https://" not in r.text
    assert client.get("/static/nope.js").status_code == 404


def test_render_and_preview(client):
    html = client.post("/v1/render", json={"text": r"\begin{tabular}{|c|c|}\hline a & b \\ \hline\end{tabular} "
                                                   r"and \(x^2\)"}).json()["html"]
    assert "<table" in html and "<math" in html
    r = client.post("/v1/preview", files={"file": ("doc.pdf", pdf_bytes(2))}, data={"page": "2"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"


# ---- refusals: one clear line each ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, status, words", [
    ("json", 415, "multipart/form-data"), ("no file", 400, "field 'file'"), ("unknown field", 400, "unknown field"),
    ("bad box", 400, "field box"), ("bad mode", 400, "field mode"), ("bad tiles", 400, "max_tiles"),
    ("bad flag", 400, "field crop"), ("text file", 415, "notes.txt"), ("broken png", 415, "broken.png"),
    ("pages of an image", 400, "single image"), ("bad pages", 400, "doc.pdf"), ("box and crop", 400, "crop"),
    ("empty", 400, "empty upload"), ("bad tokens", 400, "max_new_tokens"),
])
def test_ocr_refusals(client, case, status, words):
    image = png(noise(64, 64))
    r = {
        "json": lambda: client.post("/v1/ocr", json={"file": "x"}),
        "no file": lambda: client.post("/v1/ocr", files={"mode": (None, "plain")}),
        "unknown field": lambda: ocr(client, image, colour="red"),
        "bad box": lambda: ocr(client, image, box="1,2,three"),
        "bad mode": lambda: ocr(client, image, mode="poetry"),
        "bad tiles": lambda: ocr(client, image, max_tiles="0"),
        "bad flag": lambda: ocr(client, image, crop="maybe"),
        "text file": lambda: ocr(client, b"not an image at all", "notes.txt"),
        "broken png": lambda: ocr(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png"),
        "pages of an image": lambda: ocr(client, image, pages="2"),
        "bad pages": lambda: ocr(client, pdf_bytes(2), "doc.pdf", pages="5"),
        "box and crop": lambda: ocr(client, image, box="1,1,20,20", crop="true"),
        "empty": lambda: ocr(client, b""),
        "bad tokens": lambda: ocr(client, image, max_new_tokens="-3"),
    }[case]()
    assert r.status_code == status, r.text
    message = error(r)
    assert words in message and "\n" not in message and "Traceback" not in message
    assert "got-serve-" not in message  # the temp dir is never shown


@pytest.mark.parametrize("case, status, words", [
    ("remote url", 400, "does not fetch"), ("bad base64", 400, "base64"), ("not an image", 415, "text/plain"),
    ("no image", 400, "no image_url"), ("bad query", 400, "neither a mode word"), ("not json", 400, "not valid JSON"),
    ("no messages", 400, "messages"), ("two images", 400, "2 images"), ("bad color", 400, "color"),
])
def test_chat_refusals(client, case, status, words):
    url = data_url(png(noise(64, 64)))
    body = {
        "remote url": chat_body("https://example.com/page.png"), "bad base64": chat_body("data:image/png;base64,@@@"),
        "not an image": chat_body("data:text/plain;base64,aGk="), "bad query": chat_body(url, "write me a poem"),
        "no image": {"messages": [{"role": "user", "content": "OCR: "}]}, "no messages": {"model": "tiny"},
        "two images": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}] * 2}]},
        "bad color": chat_body(url, color="purple"),
    }.get(case)
    r = client.post("/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}) \
        if case == "not json" else client.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert words in error(r) and "\n" not in error(r)


def test_limits_413_503_504_and_api_key(got, monkeypatch):
    image = png(noise(300, 200))
    with TestClient(create_app(got, Settings(max_upload=1000))) as c:
        r = ocr(c, image)
        assert r.status_code == 413 and "MB limit" in error(r)
        r = c.post("/v1/chat/completions", json=chat_body(data_url(image)))
        assert r.status_code == 413
    monkeypatch.setattr("got.processor.MAX_PIXELS", 100 * 100)
    with TestClient(create_app(got, Settings())) as c:
        r = ocr(c, image)
        assert r.status_code == 413 and "Mpx" in error(r)
    monkeypatch.undo()
    with TestClient(create_app(got, Settings(queue_size=0, retry_after=7))) as c:
        prepared = []
        monkeypatch.setattr(got, "prepare", lambda *a, **k: prepared.append(1) or [])
        r = ocr(c, image)
        assert r.status_code == 503 and r.headers["retry-after"] == "7" and "busy" in error(r)
        assert not prepared  # refused before the page is prepared: retrying clients cost the model nothing
    monkeypatch.undo()
    with TestClient(create_app(got, Settings(timeout=0.3))) as c:
        r = ocr(c, image, max_new_tokens=100000)
        assert r.status_code == 504 and "--timeout" in error(r)
    with TestClient(create_app(got, Settings(api_key="k3y"))) as c:
        assert c.get("/health").status_code == 200
        for path in ("/", "/metrics", "/v1/models", "/static/app.js"):
            assert c.get(path).status_code == 401, path
        assert ocr(c, image).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer k3y"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "k3y"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/?key=k3y").status_code == 200  # the page sets a same-site cookie for its own calls
        assert c.get("/static/app.js").status_code == 200
    assert c.get("/nowhere").status_code in (401, 404)


def test_full_queue_refuses_before_the_upload_is_read(got, monkeypatch):
    """A 503 costs the server nothing: the Guard answers it before one byte of the body is received, and its
    Retry-After is the measured wait for the queue ahead (seconds per batch x batches waiting), not a constant."""
    import asyncio

    app = create_app(got, Settings(queue_size=0, retry_after=3, max_batch=16))
    sent, reads = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": False}

    async def send(message):
        sent.append(message)

    for path in ("/v1/ocr", "/v1/chat/completions"):
        sent.clear()
        scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"1000")],
                 "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 80),
                 "client": ("127.0.0.1", 5), "http_version": "1.1", "app": app}
        asyncio.run(app(scope, receive, send))
        head = sent[0]
        assert head["status"] == 503 and dict(head["headers"])[b"retry-after"] == b"3", path
        assert b"busy" in sent[1]["body"]
    assert not reads
    server = app.state.server
    server.batcher.stats.rows, server.batcher.stats.busy_seconds = 32, 48.0  # 1.5 s per answered row measured
    monkeypatch.setattr(Batcher, "depth", property(lambda self: 20))  # 20 waiting: 30 s of the worker's time
    assert server.retry_headers() == {"retry-after": "30"}
    monkeypatch.setattr(Batcher, "depth", property(lambda self: 10_000))
    assert server.retry_headers() == {"retry-after": "60"}  # capped: a client is never told to wait for ages
    server.close()


def test_uploads_leave_no_files(got, client, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ocr(client, png(noise(80, 80)))
    ocr(client, b"garbage", "x.bin")
    assert list(tmp_path.iterdir()) == []


# ---- the default model: real text, the same as got chat ----------------------------------------------------------------
def test_default_model_answers_as_got_chat():
    model = GOT.from_pretrained(None, device="cpu")
    page = text_page(["The quick brown fox", "jumps over the lazy dog"])
    with TestClient(create_app(model, Settings(), model_id="got-default")) as c:
        [whole] = ocr(c, png(page), "page.png").json()["answers"]
        [boxed] = ocr(c, png(page), "page.png", box="20,20,600,80").json()["answers"]
        streamed = events(ocr(c, png(page), "page.png", stream="true").text)
        r = c.post("/v1/chat/completions", json=chat_body(data_url(png(page)), "plain"))
    assert whole["text"] == model.chat(page) and "quick brown fox" in whole["text"] and "lazy" in whole["text"]
    assert boxed["text"] == model.chat(page, box=(20, 20, 600, 80)) and "fox" in boxed["text"]
    assert "lazy" not in boxed["text"]
    assert "".join(d["text"] for e, d in streamed if e == "text") == whole["text"]
    assert r.json()["choices"][0]["message"]["content"] == whole["text"]


def test_cli_refuses_bad_options_in_one_line(capsys):
    import socket

    from got.cli import main as got_main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv, words in [(["--port", "abc"], "--port must be an integer"),
                            (["--max-batch", "0"], "--max-batch must be >= 1"),
                            (["--timeout", "-1"], "--timeout"),
                            (["--port", str(port)], "cannot listen there")]:
            assert got_main(["serve", *argv]) == 1
            err = capsys.readouterr().err
            assert words in err and len(err.strip().splitlines()) == 1, err
