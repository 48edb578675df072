"""Tokenizer: released id arithmetic (bundled 16384-rank BPE and a Qwen-sized ranks file), exact round trips,
save/load, bad files, and the training script's determinism."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from got.tokenizer import DEFAULT_RANKS_FILE, SPECIAL_TOKENS, GOTTokenizer, write_ranks_file

ROOT = Path(__file__).resolve().parents[1]
TOK = GOTTokenizer.default()


@pytest.fixture(scope="module")
def tok() -> GOTTokenizer:
    return TOK


@pytest.fixture(scope="module")
def qwen_sized(tmp_path_factory) -> Path:
    """A generated ranks file with Qwen's 151643 entries: 256 bytes + distinct 3-byte strings (no download)."""
    ranks = {bytes([b]): b for b in range(256)}
    for i in range(151643 - 256):
        ranks[(i + 1).to_bytes(3, "big")] = len(ranks)
    path = tmp_path_factory.mktemp("qwen") / "qwen.tiktoken"
    write_ranks_file(ranks, path)
    return path


def test_bundled_ids(tok):
    assert tok.num_ranks == 16384
    assert (tok.endoftext_id, tok.im_start_id, tok.im_end_id) == (16384, 16385, 16386)
    assert (tok.img_start_id, tok.img_end_id, tok.img_pad_id) == (16598, 16599, 16600)
    assert tok.vocab_size == len(tok) == 16601
    assert tok.pad_token_id == tok.bos_token_id == tok.eos_token_id == 16384
    assert tok.token_to_id("<|extra_0|>") == 16387 and tok.token_to_id("<|extra_204|>") == 16591
    assert [tok.token_to_id(t) for t in ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")] == list(range(16592, 16598))
    assert len(SPECIAL_TOKENS) == 217


def test_qwen_sized_ranks_give_released_ids(qwen_sized, tmp_path):
    t = GOTTokenizer.from_ranks_file(qwen_sized)
    assert (t.endoftext_id, t.im_start_id, t.im_end_id) == (151643, 151644, 151645)
    assert (t.img_start_id, t.img_end_id, t.img_pad_id) == (151857, 151858, 151859)
    assert t.vocab_size == 151860
    assert t.token_to_id("<ref>") == 151851
    assert t.encode("<img><imgpad></img>") == [151857, 151859, 151858]
    t.save(tmp_path)  # keeps the recognisable file name
    assert (tmp_path / "qwen.tiktoken").read_bytes() == qwen_sized.read_bytes()
    assert GOTTokenizer.from_dir(tmp_path).img_pad_id == 151859


def test_specials_parsed_in_encode_but_not_in_encode_ordinary(tok):
    ids = tok.encode("<|im_start|>user\n<img><imgpad><imgpad></img>\nOCR: <|im_end|>")
    assert ids[0] == tok.im_start_id and ids[-1] == tok.im_end_id
    assert ids.count(tok.img_pad_id) == 2 and tok.img_start_id in ids and tok.img_end_id in ids
    plain = tok.encode_ordinary("<img><imgpad>")
    assert all(i < tok.num_ranks for i in plain) and tok.decode(plain) == "<img><imgpad>"
    assert tok.decode(ids, skip_special_tokens=True) == "user\n\nOCR: "
    assert tok.decode([tok.im_end_id]) == "<|im_end|>"


def test_digits_split_one_by_one_like_qwen(tok):
    assert len(tok.encode("2024")) == 4


def test_common_text_is_compact(tok):
    assert len(tok.encode("The quick brown fox jumps over the lazy dog.")) <= 14
    assert len(tok.encode("我们今天去北京大学看看。")) <= 8
    assert len(tok.encode(r"\frac{a}{b} + \sqrt{x}")) <= 14


WORDS = ["hello", "world", "Größe", "naïve", "我们", "北京大学", "日本語の文章", "カタカナ", "한국어", "문장입니다",
         "😀", "👩‍💻", "🇨🇳", "❤️", " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u3000", "\u00a0", "\\frac{a}{b}", "|---|",
         "**kern", "C1=CC=CC=C1", "def f(x):", "<imgpad>", "<|im_end|>", "'s", "123", "1.5e-3"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=30).map("".join))
def test_round_trip_mixed_scripts(text):
    tok = TOK
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_ordinary(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_round_trip_any_unicode(text):
    tok = TOK
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_save_and_from_dir(tok, tmp_path):
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert cfg["ranks_file"] == "got_bpe.tiktoken" and cfg["special_tokens"] == list(SPECIAL_TOKENS)
    assert cfg["vocab_size"] == 16601
    back = GOTTokenizer.from_dir(tmp_path)
    text = "OCR with format: 北京 \\frac{1}{2}"
    assert back.encode(text) == tok.encode(text) and back.vocab_size == tok.vocab_size


def test_from_dir_without_config_finds_the_single_ranks_file(tmp_path):
    (tmp_path / "qwen.tiktoken").write_bytes(DEFAULT_RANKS_FILE.read_bytes())
    assert GOTTokenizer.from_dir(tmp_path).num_ranks == 16384


def test_bad_tokenizer_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        GOTTokenizer.from_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        GOTTokenizer.from_ranks_file(tmp_path / "nope.tiktoken")
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("QQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=r"bad.tiktoken:2"):
        GOTTokenizer.from_ranks_file(bad)
    partial = tmp_path / "partial.tiktoken"
    write_ranks_file({bytes([b]): b for b in range(200)}, partial)
    with pytest.raises(ValueError, match="all 256 single bytes"):
        GOTTokenizer.from_ranks_file(partial)
    gaps = tmp_path / "gaps.tiktoken"
    write_ranks_file({**{bytes([b]): b for b in range(256)}, b"ab": 300}, gaps)
    with pytest.raises(ValueError, match="without gaps"):
        GOTTokenizer.from_ranks_file(gaps)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"ranks_file": "gaps.tiktoken", "special_tokens": ["<x>"]}))
    with pytest.raises(ValueError, match="special tokens differ"):
        GOTTokenizer.from_dir(tmp_path)


def test_training_script_is_deterministic_and_exact(tmp_path):
    spec = importlib.util.spec_from_file_location("train_tokenizer", ROOT / "scripts" / "train_tokenizer.py")
    tt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tt)
    docs = tt.build_corpus(60_000, seed=3)
    assert docs == tt.build_corpus(60_000, seed=3)
    joined = "".join(docs)
    assert any("\u4e00" <= c <= "\u9fff" for c in joined) and "\\frac" in joined and "**kern" in joined
    a, b = tt.train_ranks(docs, 700), tt.train_ranks(docs, 700)
    assert a == b and len(a) == 700 and sorted(a.values()) == list(range(700))
    write_ranks_file(a, tmp_path / "small.tiktoken")
    t = GOTTokenizer.from_ranks_file(tmp_path / "small.tiktoken")
    assert t.img_pad_id == 700 + 216
    assert all(t.decode(t.encode_ordinary(d)) == d for d in docs)
