"""The prompt contract: literal query strings for every mode, the full template, label masking, truncation,
record parsing, and that the inference prompt is exactly the prefix of the training sample."""
from __future__ import annotations

import numpy as np
import pytest

from got.prompts import (
    IGNORE_INDEX, SYSTEM, PromptTooLong, build_prompt, build_query, encode_conversation, encode_prompt, image_block,
    parse_record, render_conversation,
)
from got.tokenizer import GOTTokenizer

TOK = GOTTokenizer.default()


# ---- queries -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, expected", [
    ({}, "OCR: "),
    ({"mode": "plain"}, "OCR: "),
    ({"mode": "ocr"}, "OCR: "),
    ({"mode": "format"}, "OCR with format: "),
    ({"box": [100, 50, 400, 300], "image_size": (800, 600)}, "[125, 83, 500, 500] OCR: "),
    ({"mode": "format", "box": [100, 50, 400, 300], "image_size": (800, 600)}, "[125, 83, 500, 500] OCR with format: "),
    ({"box": [400, 300], "image_size": (800, 600)}, "[500, 500] OCR: "),
    ({"box": [0, 0, 800, 600], "image_size": (800, 600)}, "[0, 0, 1000, 1000] OCR: "),
    ({"color": "red"}, "[red] OCR: "),
    ({"color": "green"}, "[green] OCR: "),
    ({"color": "blue"}, "[blue] OCR: "),
    ({"color": "Red"}, "[red] OCR: "),
    ({"mode": "format", "color": "red"}, "[red] OCR with format: "),
    ({"mode": "format", "color": "green"}, "[green] OCR with format: "),
    ({"mode": "format", "color": "blue"}, "[blue] OCR with format: "),
    ({"mode": "format", "multi_crop": True}, "OCR with format upon the patch reference: "),
    ({"multi_crop": True}, "OCR upon the patch reference: "),
    ({"mode": "format", "multi_page": True}, "OCR with format across multi pages: "),
    ({"multi_page": True}, "OCR across multi pages: "),
])
def test_query_strings(kwargs, expected):
    assert build_query(**kwargs) == expected


def test_box_is_never_axis_swapped_and_numpy_boxes_work():
    # wide image: x is divided by the width (1000), y by the height (250)
    assert build_query(box=[250, 50, 500, 200], image_size=(1000, 250)) == "[250, 200, 500, 800] OCR: "
    # the transformers helper swaps axes for numpy inputs; ours must not
    assert build_query(box=np.array([250, 50, 500, 200]), image_size=(1000, 250)) == "[250, 200, 500, 800] OCR: "
    assert build_query(box=[np.int64(250), np.float32(50.0), 500.0, 200], image_size=(1000, 250)) == "[250, 200, 500, 800] OCR: "
    # int() truncates like the original: 1/3 * 1000 = 333.33 -> 333
    assert build_query(box=[1, 1, 2, 2], image_size=(3, 3)) == "[333, 333, 666, 666] OCR: "


@pytest.mark.parametrize("kwargs, message", [
    ({"box": [0, 0, 900, 100], "image_size": (800, 600)}, "outside the 800x600 image"),
    ({"box": [-1, 0, 10, 10], "image_size": (800, 600)}, "outside"),
    ({"box": [400, 0, 100, 100], "image_size": (800, 600)}, "inverted"),
    ({"box": [0, 300, 100, 200], "image_size": (800, 600)}, "inverted"),
    ({"box": [10, 10, 10, 50], "image_size": (800, 600)}, "empty"),
    ({"box": [1, 2, 3], "image_size": (800, 600)}, "2 .* or 4 .* got 3"),
    ({"box": [1, 2, 3, 4, 5], "image_size": (800, 600)}, "got 5"),
    ({"box": "[1, 2, 3, 4]", "image_size": (800, 600)}, "must be a list"),
    ({"box": [1, 2, float("nan"), 4], "image_size": (800, 600)}, "finite numbers"),
    ({"box": [1, 2, "x", 4], "image_size": (800, 600)}, "finite numbers"),
    ({"box": [1, 2, 3, 4]}, "needs image_size"),
    ({"box": [1, 2, 3, 4], "image_size": (0, 600)}, "image_size"),
    ({"color": "yellow"}, "unknown color 'yellow'"),
    ({"mode": "latex"}, "unknown mode"),
    ({"box": [1, 2, 3, 4], "image_size": (10, 10), "color": "red"}, "either a box or a color"),
    ({"multi_crop": True, "multi_page": True}, "cannot be combined"),
    ({"multi_crop": True, "color": "red"}, "single whole image"),
    ({"multi_page": True, "box": [1, 2, 3, 4], "image_size": (10, 10)}, "single whole image"),
])
def test_bad_queries_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_query(**kwargs)


# ---- template ----------------------------------------------------------------------------------------------------
def test_inference_prompt_literal():
    assert SYSTEM == "You should follow the instructions carefully and explain your answers in detail."
    assert build_prompt("OCR: ", 2) == (
        "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail.<|im_end|>"
        "<|im_start|>user\n<img><imgpad><imgpad></img>\nOCR: <|im_end|><|im_start|>assistant\n")
    assert image_block(3) == "<img><imgpad><imgpad><imgpad></img>"
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="positive int"):
            image_block(bad)


def test_training_text_literal():
    turns = [{"from": "human", "value": "<image>\nOCR with format: "}, {"from": "gpt", "value": "# Title"}]
    assert render_conversation(turns, 1) == (
        "<|im_start|>system\nYou should follow the instructions carefully and explain your answers in detail.<|im_end|>"
        "<|im_start|>user\n<img><imgpad></img>\nOCR with format: <|im_end|><|im_start|>assistant\n# Title<|im_end|>")


ALL_QUERIES = [
    build_query(), build_query("format"), build_query(box=[10, 20, 30, 40], image_size=(100, 80)),
    build_query("format", box=[10, 20], image_size=(100, 80)), build_query(color="red"), build_query("format", color="blue"),
    build_query(multi_crop=True), build_query("format", multi_crop=True), build_query("format", multi_page=True),
    build_query(multi_page=True),
]


@pytest.mark.parametrize("query", ALL_QUERIES)
@pytest.mark.parametrize("n_tokens", [16, 256 * 7])  # tiny preset tile; base model 6 tiles + thumbnail
def test_inference_prompt_is_prefix_of_training_sample(query, n_tokens):
    answer = "\n\\begin{tabular}{|l|} 北京 \\\\ \\end{tabular}\n"
    turns = [{"from": "human", "value": "<image>\n" + query}, {"from": "gpt", "value": answer}]
    prompt_ids = encode_prompt(TOK, query, n_tokens)
    ids, labels = encode_conversation(TOK, turns, n_tokens, max_length=100_000)
    assert ids[:len(prompt_ids)] == prompt_ids
    assert render_conversation(turns, n_tokens).startswith(build_prompt(query, n_tokens))
    assert prompt_ids == TOK.encode(build_prompt(query, n_tokens))  # piecewise encoding == whole-string encoding
    assert labels[:len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert TOK.decode(ids[len(prompt_ids):]) == answer + "<|im_end|>"
    assert prompt_ids.count(TOK.img_pad_id) == n_tokens
    start = prompt_ids.index(TOK.img_start_id)
    assert prompt_ids[start + 1 + n_tokens] == TOK.img_end_id


def test_label_masking_multi_turn():
    turns = [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "first"},
             {"from": "human", "value": "OCR with format: "}, {"from": "gpt", "value": "second"}]
    ids, labels = encode_conversation(TOK, turns, 4)
    assert len(ids) == len(labels)
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    spans.append(cur)
    assert [TOK.decode(s) for s in spans] == ["first<|im_end|>", "second<|im_end|>"]
    assert ids[-1] == labels[-1] == TOK.im_end_id
    text = TOK.decode(ids)
    assert text.endswith("first<|im_end|><|im_start|>user\nOCR with format: <|im_end|><|im_start|>assistant\nsecond<|im_end|>")
    assert ids.count(TOK.img_pad_id) == 4 and ids.count(TOK.img_start_id) == 1


def test_answer_text_never_becomes_special_tokens():
    answer = 'HTML <img src="a.png"> and <imgpad> and <|im_end|> are just text'
    ids, labels = encode_conversation(TOK, [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": answer}], 8)
    assert ids.count(TOK.img_pad_id) == 8 and ids.count(TOK.img_start_id) == 1
    assert ids.count(TOK.im_end_id) == 3  # system, user, answer: none from the answer text


def test_role_content_turns_accepted():
    a = encode_conversation(TOK, [{"role": "user", "content": "<image>\nOCR: "}, {"role": "assistant", "content": "x"}], 2)
    b = encode_conversation(TOK, [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "x"}], 2)
    assert a == b


def test_truncation_never_cuts_the_image_block():
    turns = [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "word " * 200}]
    prompt_len = len(encode_prompt(TOK, "OCR: ", 64))
    ids, labels = encode_conversation(TOK, turns, 64, max_length=prompt_len + 10)
    assert len(ids) == len(labels) == prompt_len + 10
    assert sum(lab != IGNORE_INDEX for lab in labels) == 10
    with pytest.raises(PromptTooLong, match=f"prompt of {prompt_len} tokens .*image block of 64.*max_length 50"):
        encode_conversation(TOK, turns, 64, max_length=50)
    with pytest.raises(PromptTooLong):  # prompt fits exactly, but no answer token would be left
        encode_conversation(TOK, turns, 64, max_length=prompt_len)
    assert issubclass(PromptTooLong, ValueError)


@pytest.mark.parametrize("turns, n, message", [
    ([{"from": "human", "value": "OCR: "}, {"from": "gpt", "value": "x"}], 4, "0 <image> placeholders"),
    ([{"from": "human", "value": "<image><image>OCR: "}, {"from": "gpt", "value": "x"}], 4, "2 <image> placeholders"),
    ([{"from": "human", "value": "<image>OCR: "}, {"from": "gpt", "value": "x"}], 0, "no image tokens"),
    ([{"from": "human", "value": "<image>OCR: "}, {"from": "gpt", "value": "<image>"}], 4, "in an answer"),
    ([{"from": "gpt", "value": "x"}], 4, "alternate"),
    ([{"from": "human", "value": "<image>"}, {"from": "human", "value": "x"}], 4, "alternate"),
    ([{"from": "robot", "value": "x"}], 4, "bad turn"),
    ([], 4, "empty conversation"),
])
def test_bad_conversations_fail_clearly(turns, n, message):
    with pytest.raises(ValueError, match=message):
        encode_conversation(TOK, turns, n)


# ---- records -----------------------------------------------------------------------------------------------------
def test_parse_got_json_record(tmp_path):
    rec = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "hi"}]}
    paths, turns = parse_record(rec, tmp_path)
    assert paths == [str(tmp_path / "a.png")]
    assert turns == rec["conversations"]
    multi = {"image": ["p1.png", "/abs/p2.png"],
             "conversations": [{"from": "human", "value": "<image>\nOCR with format across multi pages: "}, {"from": "gpt", "value": "x"}]}
    paths, _ = parse_record(multi, tmp_path)
    assert paths == [str(tmp_path / "p1.png"), "/abs/p2.png"]
    assert parse_record(rec)[0] == ["a.png"]


def test_parse_ms_swift_record_gives_the_released_prompt():
    rec = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "<image>OCR: "},
                        {"role": "assistant", "content": "hi"}], "images": ["a.png"]}
    paths, turns = parse_record(rec)
    assert paths == ["a.png"] and turns == [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "hi"}]
    rec["messages"][1]["content"] = "<image>\nOCR: "
    assert parse_record(rec)[1][0]["value"] == "<image>\nOCR: "
    # multi-page: one tag per page side by side -> one image block
    pages = {"messages": [{"role": "user", "content": "<image><image><image>OCR with format across multi pages: "},
                          {"role": "assistant", "content": "x"}], "images": [{"path": "1.png"}, "2.png", "3.png"]}
    paths, turns = parse_record(pages)
    assert paths == ["1.png", "2.png", "3.png"]
    assert turns[0]["value"] == "<image>\nOCR with format across multi pages: "


@pytest.mark.parametrize("record, message", [
    ({"image": ["a.png", "b.png"], "conversations": [{"from": "human", "value": "<image>OCR <image> x <image>"}, {"from": "gpt", "value": "x"}]}, "3 <image> placeholders for 2"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "OCR: "}, {"from": "gpt", "value": "x"}]}, "0 <image> placeholders for 1"),
    ({"conversations": [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "x"}]}, "but no image"),
    ({"messages": [{"role": "user", "content": "<image><image>x"}, {"role": "assistant", "content": "y"}], "images": ["a", "b", "c"]}, "2 <image> placeholders for 3"),
    ({"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nOCR: "}]}, "must end with an answer"),
    ({"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}], "images": ["a"]}, "custom system"),
    ({"image": 3, "conversations": [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "x"}]}, "file paths"),
    ({"text": "x"}, "neither 'conversations'"),
    ([1, 2], "JSON object"),
])
def test_bad_records_fail_clearly(record, message):
    with pytest.raises(ValueError, match=message):
        parse_record(record)


def test_record_round_trip_through_the_encoder(tmp_path):
    rec = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\n[125, 83, 500, 500] OCR: "},
                                                {"from": "gpt", "value": "Hello"}]}
    _, turns = parse_record(rec, tmp_path)
    ids, labels = encode_conversation(TOK, turns, 16, max_length=1000)
    prompt = encode_prompt(TOK, build_query(box=[100, 50, 400, 300], image_size=(800, 600)), 16)
    assert ids[:len(prompt)] == prompt and TOK.decode([i for i in labels if i != IGNORE_INDEX]) == "Hello<|im_end|>"
