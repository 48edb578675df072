"""got.inference: the chat API and `got chat` on the tiny preset with random weights (gibberish text, so the
checks compare paths against each other: batched vs one by one, streamed vs not, numpy vs PIL, ...)."""
import functools
import json

import numpy as np
import pymupdf
import pytest
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from input_helpers import write_bad_pdfs
from got.checkpoint import save_pretrained
from got.cli import main as got_main
from got.config import load_config
from got.generation import RepetitionGuard, TextPieceStreamer
from got.inference import GOT, parse_pages
from got.modeling import GOTModel
from got.tokenizer import GOTTokenizer

NEW = 12  # new tokens per answer: enough to compare texts, cheap on 2 shared cores



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = GOTModel(load_config("tiny"))
    with torch.no_grad():  # the default init (std 0.02) answers whitespace to everything; 0.1 gives varied text
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    d = tmp_path_factory.mktemp("tiny_model")
    save_pretrained(model, d, tokenizer=GOTTokenizer.default())
    return d


@pytest.fixture(scope="module")
def got(model_dir):
    return GOT.from_pretrained(model_dir, dtype="float32", device="cpu")


def noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    noise(300, 200, 1).save(d / "a.png")
    noise(256, 256, 2).save(d / "b.jpg", quality=95)
    doc = pymupdf.open()
    for i in range(3):
        page = doc.new_page(width=200, height=260)
        page.insert_text((20, 60 + 30 * i), f"page {i + 1} text")
    doc.save(d / "doc.pdf")
    write_bad_pdfs(d)
    (d / "notes.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return d


class ForceTokens(LogitsProcessor):
    """Test double for a trained model: makes greedy decoding emit exactly `tokens`, one per step."""

    def __init__(self, tokens):
        self.tokens, self.step = tokens, 0

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.tokens[min(self.step, len(self.tokens) - 1)]] = 0
        self.step += 1
        return forced


# ---- batching ------------------------------------------------------------------------------------------------
def test_batch_equals_one_by_one_across_tile_counts_and_modes(got):
    # crop=True: 1 tile (square), 3+1, 2+1 (tall), 3x2+1 = 7 tiles; plus box, colour, format and multi-page.
    items = [
        {"image": noise(256, 256, 3), "crop": True},
        {"image": noise(768, 256, 4), "crop": True},
        {"image": noise(200, 420, 5), "crop": True},
        {"image": noise(800, 600, 6), "crop": True},
        {"image": noise(320, 240, 7), "box": [10, 20, 200, 150]},
        {"image": noise(320, 240, 8), "color": "green", "mode": "format"},
        {"image": [noise(200, 260, 9), noise(200, 260, 10)], "multi_page": True, "mode": "format"},
    ]
    tiles = [got.prepare(it["image"], **{k: v for k, v in it.items() if k != "image"})[0].pixel_values.shape[0]
             for it in items]
    assert tiles == [1, 4, 3, 7, 1, 1, 2]
    alone = [got.chat(it["image"], max_new_tokens=NEW, **{k: v for k, v in it.items() if k != "image"}) for it in items]
    batched = got.chat_batch(items, batch_size=8, max_new_tokens=NEW)
    assert batched == alone
    assert all(isinstance(t, str) and t for t in alone)
    assert len(set(alone)) > 1  # different images really gave different answers
    assert got.chat_batch(items, batch_size=3, max_new_tokens=NEW) == alone  # other groupings, same text


def test_decode_attention_equals_sdpa():
    """One query per row (decoding): the plain-matmul path equals transformers' SDPA, with grouped-query heads,
    a left-padding bool mask, an additive mask and no mask; longer queries go to SDPA itself."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from got.decode import decode_attention

    torch.manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    key, value = torch.randn(3, 2, 9, 8), torch.randn(3, 2, 9, 8)
    pad = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    pad[1, ..., :4] = False
    for q_len in (1, 4):
        query = torch.randn(3, 4, q_len, 8)
        masks = [None] if q_len > 1 else [None, pad, torch.randn(3, 1, 1, 9)]
        for mask in masks:
            want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
            got_, _ = decode_attention(module, query, key, value, mask, scaling=0.3)
            assert got_.shape == want.shape == (3, q_len, 4, 8)
            assert torch.allclose(got_, want, atol=1e-5)


@pytest.mark.parametrize("batch", ["left-padded pair", "single"])
def test_cpu_generation_paths_give_transformers_tokens(got, monkeypatch, batch):
    """GOT on CPU runs decode_attention over a ChunkedKVCache. Alone (no padding: transformers would drop the mask)
    and in a left-padded batch, with the cache growing over several chunk boundaries, it gives the tokens of
    transformers' own SDPA + DynamicCache."""
    import got.inference as inf
    from got.decode import CACHE, ChunkedKVCache, ChunkedKVLayer

    assert got.model.decoder.config._attn_implementation == "got_decode"
    prompts = got.prepare(noise(256, 256, 21)) + got.prepare(noise(768, 256, 22), crop=True)
    prompts = prompts if batch == "left-padded pair" else prompts[:1]
    ids, mask, pixels = inf.left_padded(prompts, got.tokenizer.endoftext_id)
    monkeypatch.setattr(ChunkedKVLayer, "CHUNK", 8)  # the prompt fills 6-9 chunks, decoding crosses 3 more
    runs = {}
    for attn, cache in [("sdpa", None), ("got_decode", ChunkedKVCache)]:
        got.model.decoder.set_attn_implementation(attn)
        kw = {CACHE: cache()} if cache else {}
        with torch.inference_mode():
            runs[attn] = got.model.generate(ids, pixels, attention_mask=mask, max_new_tokens=24, min_new_tokens=24,
                                            **kw).tolist()
    got.model.decoder.set_attn_implementation("got_decode")
    assert runs["got_decode"] == runs["sdpa"]
    assert len(runs["sdpa"][0]) == 24 and len(set(runs["sdpa"][0])) > 3


def test_cpu_generation_paths_on_the_stage1_opt_decoder(tmp_path, monkeypatch):
    """A stage-1 checkpoint (OPT decoder) chats through the same CPU decode path, with SDPA + DynamicCache's text."""
    import got.decode
    from got.decode import ChunkedKVLayer
    from transformers.cache_utils import DynamicCache

    torch.manual_seed(0)
    model = GOTModel(load_config("tiny_stage1"))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.1)
    save_pretrained(model, tmp_path, tokenizer=GOTTokenizer.default())
    opt = GOT.from_pretrained(tmp_path, dtype="float32", device="cpu")
    assert type(opt.model.decoder).__name__ == "OPTForCausalLM"
    assert opt.model.decoder.config._attn_implementation == "got_decode"
    monkeypatch.setattr(ChunkedKVLayer, "CHUNK", 8)
    items = [noise(256, 256, 23), {"image": noise(768, 256, 24), "crop": True}]
    fast = opt.chat_batch(items, max_new_tokens=NEW)
    opt.model.decoder.set_attn_implementation("sdpa")
    monkeypatch.setattr(got.decode, "ChunkedKVCache", DynamicCache)  # what GOT._generate_batch takes at each call
    assert opt.chat_batch(items, max_new_tokens=NEW) == fast


def test_stop_string_stripped_and_streaming_matches(got, monkeypatch):
    tok = got.tokenizer
    hello = tok.encode_ordinary("  Hello wörld 中文\n")
    zh_bytes = [tok.enc.encode_single_token(bytes([b])) for b in "中".encode()]  # one char split over 3 tokens
    forced = hello + zh_bytes + tok.encode_ordinary(" \n") + [tok.im_end_id]
    img = noise(256, 256, 11)
    monkeypatch.setitem(got.generation, "logits_processor", LogitsProcessorList([ForceTokens(forced)]))
    [ans] = got.generate(got.prepare(img), max_new_tokens=40)
    monkeypatch.setitem(got.generation, "logits_processor", LogitsProcessorList([ForceTokens(forced)]))
    pieces = list(got.chat(img, max_new_tokens=40, stream=True))
    assert ans.text == "Hello wörld 中文\n中"  # <|im_end|> gone, outer whitespace stripped like GOT
    assert ans.finish == "stop" and ans.tokens == len(forced) - 1
    assert "".join(pieces) == ans.text
    assert all("\ufffd" not in p for p in pieces)  # the split character arrived whole
    # On the random model (no stop token) too: the stream joins to the non-streamed answer.
    img2 = noise(320, 200, 12)
    assert "".join(got.chat(img2, max_new_tokens=NEW, stream=True)) == got.chat(img2, max_new_tokens=NEW)


def test_stream_consumer_can_stop_early(got, monkeypatch):
    class Steps(LogitsProcessor):  # counts generation steps
        n = 0

        def __call__(self, input_ids, scores):
            Steps.n += 1
            return scores

    monkeypatch.setitem(got.generation, "logits_processor", LogitsProcessorList([Steps()]))
    monkeypatch.setattr(got, "repetition_guard", None)  # random weights loop; only the consumer may stop this one
    stream = got.chat(noise(256, 256, 13), max_new_tokens=200, stream=True)
    first = next(stream)
    stream.close()  # worker thread is told to stop and joined; the model stays usable
    assert first and 1 <= Steps.n <= 20, Steps.n  # stopped within a few steps of the consumer, not after 200
    assert isinstance(got.chat(noise(256, 256, 13), max_new_tokens=4), str)


def test_streamer_holds_back_whitespace():
    tok = GOTTokenizer.default()
    out = []
    s = TextPieceStreamer(tok, out.append, [tok.im_end_id])
    s.put(torch.tensor([[1, 2, 3]]))  # the prompt: ignored
    for t in tok.encode_ordinary("\n  a b  \n") + [tok.im_end_id] + tok.encode_ordinary("never"):
        s.put(torch.tensor([t]))
    s.end()
    assert "".join(out) == "a b"


def test_repetition_guard():
    rng = np.random.default_rng(0)
    prompt = [7] * 600  # the prompt's <imgpad> run must not count
    loop = prompt + [1, 2, 3, 4, 5] * 200
    varied = prompt + rng.integers(100, 16000, 1000).tolist()
    # A loop under no_repeat_ngram_size=20: one token changed every 20, the rest repeats (period 30).
    line = rng.integers(100, 16000, 30).tolist()
    near = prompt + [t if i % 20 else int(rng.integers(100, 16000)) for i, t in enumerate(line * 40)][:1000]
    guard = RepetitionGuard()  # window 512: it can only fire once 512 tokens were generated
    rows = lambda n: torch.tensor([loop[:n], varied[:n], near[:n]])  # noqa: E731
    assert guard(rows(601), None).tolist() == [False] * 3  # first call: learns the prompt length
    assert guard(rows(600 + 511), None).tolist() == [False] * 3
    assert guard(rows(600 + 512), None).tolist() == [True, False, True]
    assert guard(rows(1600), None).tolist() == [True, False, True]
    assert guard.fired.tolist() == [True, False, True]


def test_guard_ends_a_runaway_loop(got, monkeypatch):
    tok = got.tokenizer
    monkeypatch.setitem(got.generation, "logits_processor",
                        LogitsProcessorList([ForceTokens(tok.encode_ordinary(" la") * 200)]))
    monkeypatch.setattr(got, "repetition_guard", functools.partial(RepetitionGuard, window=32, ngram=4))
    [ans] = got.generate(got.prepare(noise(256, 256, 14)), max_new_tokens=100)
    assert ans.finish == "repetition" and ans.tokens == 32 and ans.text == "la" + " la" * 31


# ---- inputs ------------------------------------------------------------------------------------------------------
def test_input_types_give_the_same_answer(got, files):
    path = files / "a.png"
    pil = Image.open(path)
    ref = got.chat(str(path), max_new_tokens=NEW)
    assert got.chat(path, max_new_tokens=NEW) == ref
    assert got.chat(pil, max_new_tokens=NEW) == ref
    assert got.chat(np.asarray(pil.convert("RGB")), max_new_tokens=NEW) == ref
    assert got.chat(path.read_bytes(), max_new_tokens=NEW) == ref


def test_pdf_pages_and_multi_page(got, files):
    pdf = files / "doc.pdf"
    per_page = got.chat(pdf, max_new_tokens=NEW)
    assert isinstance(per_page, list) and len(per_page) == 3
    assert got.chat(pdf, pages="2-3", max_new_tokens=NEW) == per_page[1:]
    assert got.chat(pdf.read_bytes(), pages=[1], max_new_tokens=NEW) == per_page[:1]
    [p] = got.prepare(pdf, pages="1-2", multi_page=True, mode="format")
    assert p.pixel_values.shape[0] == 2 and p.mode == "format+multi-page"
    assert p.input_ids.count(got.tokenizer.img_pad_id) == 2 * got.config.image_token_len
    assert "across multi pages" in got.tokenizer.decode(p.input_ids)
    assert isinstance(got.chat(pdf, pages="1-2", multi_page=True, mode="format", max_new_tokens=NEW), str)
    assert parse_pages("1-2,3,2-", 4, "x") == [1, 2, 3, 4]


def test_prompts_follow_the_contract(got):
    img = noise(400, 200, 15)
    text = lambda **kw: got.tokenizer.decode(got.prepare(img, **kw)[0].input_ids)  # noqa: E731
    assert text().endswith("\nOCR: <|im_end|><|im_start|>assistant\n")
    assert "[25, 100, 500, 500] OCR with format: " in text(mode="format", box=[10, 20, 200, 100])
    assert "[red] OCR: " in text(color="red")
    assert "OCR upon the patch reference: " in text(crop=True)


@pytest.mark.parametrize("make, expected", [
    (lambda d: d / "missing.png", "missing.png: "),
    (lambda d: d / "notes.txt", "unsupported file type '.txt'"),
    (lambda d: d / "broken.png", "broken.png: "),
    (lambda d: d / "empty.pdf", "empty.pdf: PDF has no pages"),
    (lambda d: d / "locked.pdf", "locked.pdf: PDF is encrypted"),
    (lambda d: 42, "unsupported input type int"),
])
def test_bad_inputs_raise_one_clear_line(got, files, make, expected):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        got.prepare(make(files))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_bad_options_raise_one_clear_line(got, files):
    cases = [(dict(box=[10, 10, 400, 100]), "a.png: box [10, 10, 400, 100] lies outside the 300x200 image"),
             (dict(pages="5"), "pages='5' given but this input is a single image"),
             (dict(color="purple"), "unknown color 'purple'"),
             (dict(crop=True, box=[1, 1, 5, 5]), "box / color prompts take one whole image")]
    for kw, expected in cases:
        with pytest.raises(ValueError, match=None) as e:
            got.prepare(files / "a.png", **kw)
        assert expected in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="doc.pdf: page 7 requested but the document has 3 pages"):
        got.prepare(files / "doc.pdf", pages="2,7")


def test_model_directory_errors(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        GOT.from_pretrained(tmp_path / "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"partial: model directory is missing weights"):
        GOT.from_pretrained(partial)


# ---- precisions ----------------------------------------------------------------------------------------------------
def test_int8_and_bf16(model_dir):
    q = GOT.from_pretrained(model_dir, dtype="float32", int8=True)
    kinds = {type(m).__name__ for m in q.model.decoder.modules() if "Linear" in type(m).__name__}
    assert kinds == {"WeightOnlyLinear"}, kinds
    assert isinstance(q.chat(noise(256, 256, 16), max_new_tokens=6), str)
    b = GOT.from_pretrained(model_dir, dtype="bfloat16")
    assert b.model.dtype == torch.bfloat16
    images = [noise(256, 256, 17), noise(512, 256, 18)]
    assert b.chat_batch(images, max_new_tokens=6) == [b.chat(im, max_new_tokens=6) for im in images]


# ---- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_batch_with_errors(model_dir, files, tmp_path, capsys):
    out, html = tmp_path / "r.jsonl", tmp_path / "r.html"
    inputs = [files / "a.png", files / "missing.png", files / "doc.pdf", files / "locked.pdf", files / "b.jpg"]
    rc = got_main(["chat", *map(str, inputs), "--model", str(model_dir), "--format", "--pages", "1-2",
                   "--batch-size", "3", "--max-new-tokens", str(NEW), "--dtype", "float32",
                   "--out", str(out), "--render", str(html)])
    err = capsys.readouterr().err
    assert rc == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r for r in lines if "error" not in r]
    assert [(r["path"].rsplit("/", 1)[-1], r.get("page")) for r in ok] == \
        [("a.png", None), ("doc.pdf", 1), ("doc.pdf", 2), ("b.jpg", None)]
    assert all(r["mode"] == "format" and r["tokens"] > 0 and r["text"] for r in ok)
    errors = [line for line in err.splitlines() if line.startswith("got chat: error:")]
    assert len(errors) == 2 and "missing.png" in errors[0] and "locked.pdf: PDF is encrypted" in errors[1]
    assert "2 of 5 inputs failed" in err
    assert {r["path"].rsplit("/", 1)[-1] for r in lines if "error" in r} == {"missing.png", "locked.pdf"}
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count('<section class="answer">') == 4
    # The same text as the Python API gives.
    got = GOT.from_pretrained(model_dir, dtype="float32")
    assert ok[0]["text"] == got.chat(files / "a.png", mode="format", max_new_tokens=NEW)


def test_cli_stream_and_missing_model(model_dir, files, tmp_path, capsys):
    rc = got_main(["chat", str(files / "b.jpg"), "--model", str(model_dir), "--stream", "--box", "0,0,128,128",
                   "--max-new-tokens", str(NEW), "--dtype", "float32"])
    streamed = capsys.readouterr().out
    got = GOT.from_pretrained(model_dir, dtype="float32")
    assert rc == 0 and streamed == got.chat(files / "b.jpg", box=[0, 0, 128, 128], max_new_tokens=NEW) + "\n"
    rc = got_main(["chat", str(files / "b.jpg"), "--model", str(model_dir), "--color", "blue", "--int8",
                   "--max-new-tokens", "4"])  # no --out: JSON lines on stdout
    [line] = capsys.readouterr().out.splitlines()
    assert rc == 0 and json.loads(line)["mode"] == "plain+color" and json.loads(line)["tokens"] == 4
    rc = got_main(["chat", str(files / "b.jpg"), "--model", str(tmp_path / "no_model")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no_model: model directory not found" in err[0]
