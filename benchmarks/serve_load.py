"""`got serve` under load: 1, 4, 16 and 64 concurrent clients sending rendered pages to POST /v1/ocr.

    python benchmarks/serve_load.py [--models default,base] [--levels 1,4,16,64] [--requests 64] [--soak 500]
                                    [--new-tokens page] [--queue-size 32] [--threads 2] [--work /tmp/got_bench]

Per model (`default`: the shipped default model; `base`: the base preset with random seeded weights, built once
and cached in --work like benchmarks/inference_speed.py; `tiny`: a random tiny model, for a smoke run; or a model
directory) one `got serve` subprocess is started on a free localhost port, so its RSS is the server's alone. Each
level runs `clients` threads, each sending pages one after another until --requests (at least 2 per client) have
been answered, and reports pages/s, p50 / p99 latency, the queue depth seen on /health, 503s (retried after
Retry-After), errors, client-side timeouts and the server's peak RSS (VmHWM). Then:
- late arrival: the time to the first streamed text of one request sent alone, and of one sent while a batch
  of `--late-batch` requests decodes (what joining a running batch costs a late request);
- soak: --soak requests from 16 clients in tenths; RSS after each tenth (the first is the warm-up).
Whole-page answers by default (--new-tokens page: the page's own text in tokens, as a trained model answers it);
random weights do not stop on their own, so each answer runs to its limit. Results: one JSON line per row on
stdout, a markdown table on stderr. Targets: docs/serving.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402

from inference_speed import build, page_answer_tokens, page_images  # noqa: E402


def model_dir(name: str, work: Path) -> str | None:
    if name == "default":
        return None
    if name == "base":
        return str(build(work / "base")[0])
    if name == "tiny":
        d = work / "tiny"
        if not (d / "config.json").is_file():
            import torch

            from got.checkpoint import save_pretrained
            from got.config import load_config
            from got.modeling import GOTModel
            from got.tokenizer import GOTTokenizer

            torch.manual_seed(0)
            save_pretrained(GOTModel(load_config("tiny")), d, tokenizer=GOTTokenizer.default())
        return str(d)
    return name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`got serve` in a subprocess; RSS read from /proc."""

    def __init__(self, model: str | None, args):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "import sys; from got.cli import main; sys.exit(main())", "serve",
               "--port", str(self.port), "--queue-size", str(args.queue_size), "--max-batch", str(args.max_batch),
               "--timeout", str(args.timeout), "--dtype", args.dtype, "--batch-window-ms", str(args.batch_window_ms)] + (["--model", model] if model else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"got serve exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("got serve did not come up in 10 minutes")

    def status(self, key: str) -> float:
        """VmRSS / VmHWM of the server process in GB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 2**20

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def page_bytes(n: int) -> list[bytes]:
    out = []
    for im in page_images(n):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def run_level(server: ServerProcess, pages: list[bytes], clients: int, requests: int, new_tokens: int,
              client_timeout: float) -> dict:
    """`clients` threads share `requests` sends; -> throughput, latency percentiles, errors, queue depth."""
    lock, latencies, counts = threading.Lock(), [], {"ok": 0, "503": 0, "timeout": 0, "error": 0}
    left = [requests]
    depth, stop = [], threading.Event()

    def client(i: int) -> None:
        with httpx.Client(timeout=client_timeout) as h:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                try:
                    r = h.post(f"{server.url}/v1/ocr", files={"file": ("page.png", pages[i % len(pages)])},
                               data={"max_new_tokens": str(new_tokens)})
                except httpx.TimeoutException:
                    with lock:
                        counts["timeout"] += 1
                    continue
                with lock:
                    if r.status_code == 200:
                        counts["ok"] += 1
                        latencies.append(time.perf_counter() - t0)
                    elif r.status_code == 503:
                        counts["503"] += 1
                        left[0] += 1  # retried
                    else:
                        counts["error"] += 1
                if r.status_code == 503:
                    time.sleep(float(r.headers.get("retry-after", "1")))

    def sample() -> None:
        with httpx.Client(timeout=5) as h:
            while not stop.wait(0.25):
                try:
                    depth.append(h.get(f"{server.url}/health").json()["queue"])
                except httpx.HTTPError:
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")

    return {"clients": clients, "requests": counts["ok"], "seconds": round(wall, 1),
            "pages_per_s": round(counts["ok"] / wall, 4), "p50_s": round(pct(0.5), 2), "p99_s": round(pct(0.99), 2),
            "queue_max": max(depth, default=0), "queue_mean": round(statistics.fmean(depth), 1) if depth else 0,
            "http_503": counts["503"], "errors": counts["error"], "client_timeouts": counts["timeout"],
            "peak_rss_gb": round(server.status("VmHWM"), 2)}


def first_text(server: ServerProcess, page: bytes, new_tokens: int, timeout: float) -> float:
    """Seconds from sending a streamed request to its first text event."""
    t0 = time.perf_counter()
    with httpx.Client(timeout=timeout) as h, h.stream("POST", f"{server.url}/v1/ocr", files={"file": ("p.png", page)},
                                                      data={"max_new_tokens": str(new_tokens), "stream": "true"}) as r:
        for line in r.iter_lines():
            if line.startswith("event: text") or line.startswith("event: answer"):
                return time.perf_counter() - t0
    return float("nan")


def late_arrival(server: ServerProcess, pages: list[bytes], batch: int, new_tokens: int, timeout: float) -> dict:
    """First text of a request alone, and of one sent once a batch of `batch` requests has begun decoding."""
    alone = first_text(server, pages[0], new_tokens, timeout)
    decoding = threading.Event()

    def member(i: int) -> None:
        if i == 0:  # streamed: says when the batch is decoding
            with httpx.Client(timeout=timeout) as h, h.stream(
                    "POST", f"{server.url}/v1/ocr", files={"file": ("p.png", pages[0])},
                    data={"max_new_tokens": str(new_tokens), "stream": "true"}) as r:
                for line in r.iter_lines():
                    if line.startswith("event: text"):
                        decoding.set()
            decoding.set()
            return
        httpx.post(f"{server.url}/v1/ocr", files={"file": ("p.png", pages[i % len(pages)])},
                   data={"max_new_tokens": str(new_tokens)}, timeout=timeout)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(batch)]
    for t in threads:
        t.start()
    decoding.wait(timeout)
    late = first_text(server, pages[1 % len(pages)], new_tokens, timeout)
    for t in threads:
        t.join()
    return {"row": "late arrival", "batch": batch, "first_text_alone_s": round(alone, 2),
            "first_text_late_s": round(late, 2)}


def soak(server: ServerProcess, pages: list[bytes], n: int, new_tokens: int, timeout: float) -> dict:
    """n requests from 16 clients in tenths: VmRSS after each tenth (the first is the warm-up), so a climb that
    levels off (allocator high-water marks of the largest batches) reads apart from a leak (a steady climb)."""
    tenth = max(16, n // 10)
    curve, errors, timeouts, refused = [], 0, 0, 0
    for done in range(0, n, tenth):
        level = run_level(server, pages, 16, min(tenth, n - done), new_tokens, timeout)
        errors, timeouts, refused = errors + level["errors"], timeouts + level["client_timeouts"], \
            refused + level["http_503"]
        curve.append(round(server.status("VmRSS"), 3))
    return {"row": "soak", "requests": n, "rss_after_warmup_gb": curve[0], "rss_after_all_gb": curve[-1],
            "rss_after_each_tenth_gb": curve, "errors": errors, "client_timeouts": timeouts, "http_503": refused}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="default,base")
    p.add_argument("--levels", default="1,4,16,64")
    p.add_argument("--requests", type=int, default=64, help="answered requests per level (at least 2 per client)")
    p.add_argument("--soak", type=int, default=500, help="requests of the RSS soak (0: skip)")
    p.add_argument("--late-batch", type=int, default=8, help="rows decoding when the late request arrives (0: skip)")
    p.add_argument("--new-tokens", default="page", help="max_new_tokens per request; 'page': the page's text")
    p.add_argument("--queue-size", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--timeout", type=float, default=3600, help="the server's per-request timeout")
    p.add_argument("--batch-window-ms", type=float, default=5,
                   help="the server's gathering window (clients starting together arrive over ~1 s of image decoding)")
    p.add_argument("--client-timeout", type=float, default=7200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--work", default="/tmp/got_bench")
    args = p.parse_args()
    new_tokens = page_answer_tokens() if args.new_tokens == "page" else int(args.new_tokens)
    pages = page_bytes(4)
    rows = []
    for name in args.models.split(","):
        server = ServerProcess(model_dir(name, Path(args.work)), args)
        try:
            run_level(server, pages, 1, 1, new_tokens, args.client_timeout)  # warm-up
            for clients in (int(c) for c in args.levels.split(",")):
                row = {"model": name, "new_tokens": new_tokens,
                       **run_level(server, pages, clients, max(args.requests, 2 * clients), new_tokens,
                                   args.client_timeout)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            extras = ([lambda: late_arrival(server, pages, args.late_batch, new_tokens, args.client_timeout)]
                      if args.late_batch else []) + \
                     ([lambda: soak(server, pages, args.soak, new_tokens, args.client_timeout)] if args.soak else [])
            for extra in (run() for run in extras):
                rows.append({"model": name, **extra})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            server.close()
    head = "| model | clients | requests | pages/s | p50 s | p99 s | queue max / mean | 503 | errors | timeouts | peak RSS GB |"
    print(head + "\n|" + "---|" * 11, file=sys.stderr)
    for r in rows:
        if "clients" in r:
            print(f"| {r['model']} | {r['clients']} | {r['requests']} | {r['pages_per_s']} | {r['p50_s']} | "
                  f"{r['p99_s']} | {r['queue_max']} / {r['queue_mean']} | {r['http_503']} | {r['errors']} | "
                  f"{r['client_timeouts']} | {r['peak_rss_gb']} |", file=sys.stderr)
        else:
            print(f"{r['model']}: {json.dumps(r)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
