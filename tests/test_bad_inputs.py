"""`got chat`, `got convert`, `got eval` and `got train` against a hostile user (issue 13; `got data render` is
tests/test_bad_inputs_render.py). Every bad input in the tables: a non-zero exit, ONE stderr line naming the input
and the problem, no traceback, and every output written complete and valid (JSON lines parse; an option refused
before any work leaves nothing behind). Then the cases where bad input must not cost good input its answers:
a file name that is not UTF-8, a batch that fails, a multi-page TIFF (every page answered)."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pymupdf
import pytest
import torch
from PIL import Image

from got import checkpoint as ckpt_module
from got import evaluate as eval_module
from got import trainer as train_module
from input_helpers import write_bad_pdfs
from got.checkpoint import save_pretrained
from got.cli import main as got_main
from got.config import load_config
from got.inference import GOT
from got.modeling import GOTModel
from got.tokenizer import GOTTokenizer

pytestmark = pytest.mark.filterwarnings("ignore")  # library deprecation notices are not the CLI's messages

CHAT = ["--max-new-tokens", "2", "--device", "cpu", "--dtype", "float32"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _unwritable_folder(tmp: Path) -> Path | None:
    """A folder this process cannot create anything in: a read-only one, or /sys where root ignores modes."""
    ro = tmp / "read_only"
    ro.mkdir()
    ro.chmod(0o500)
    for folder in (ro, Path("/sys")):
        if not folder.is_dir():
            continue
        try:
            (folder / "got-probe").mkdir()
        except OSError:
            return folder
        (folder / "got-probe").rmdir()
    return None


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """The placeholders of the tables: {m} a tiny random model, {f} the bad (and good) inputs, {ro} a folder
    nothing can be written in."""
    f = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_pretrained(GOTModel(load_config("tiny")), f / "model", tokenizer=GOTTokenizer.default())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(f / "good.png")
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(f / "good2.jpg")
    png = (f / "good.png").read_bytes()
    (f / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (f / "zero.png").write_bytes(b"")
    (f / "truncated.png").write_bytes(png[: len(png) // 2])
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # 3.6 Gpx announced by a 60-byte file
    (f / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    (f / "notes.txt").write_text("not an image")
    (f / "folder.png").mkdir()
    doc = pymupdf.open()
    for i in range(3):
        doc.new_page(width=120, height=160).insert_text((20, 60), f"page {i + 1}")
    doc.save(f / "doc.pdf")
    write_bad_pdfs(f)
    (f / "fake.pdf").write_bytes(b"%PDF-1.4 but nothing else")
    frames = [Image.new("RGB", (60, 40), c) for c in ("white", "gray", "black")]
    frames[0].save(f / "three.tiff", save_all=True, append_images=frames[1:])
    (f / "taken").write_text("a file where a folder is needed")
    record = {"image": "good.png", "conversations": [{"from": "human", "value": "<image>\nOCR: "},
                                                     {"from": "gpt", "value": "x"}]}
    (f / "set.json").write_text(json.dumps([record]))
    (f / "broken.json").write_text("[{")
    (f / "gone.json").write_text(json.dumps([{**record, "image": "gone.png"}]))
    (f / "bad_yaml.yaml").write_text("train: {lr: [1, 2\n")
    (f / "bad_key.yaml").write_text("train:\n  learning_rate: 0.1\n")
    (f / "bad_value.yaml").write_text("train:\n  epochs: 1.5\n")
    ro = _unwritable_folder(f)
    return {"f": str(f), "m": str(f / "model"), "ro": str(ro) if ro else ""}


def _messages(err: str) -> list[str]:
    """stderr without progress bars ("got chat:  50%|...", redrawn with \\r): the lines a person reads."""
    return [line for line in re.split(r"[\r\n]", err)
            if line.strip() and not re.match(r"\s*got \w+:\s+\d+%\|", line)]


def _run(capsys, argv: list[str]) -> tuple[int, str, list[str]]:
    """`got ARGV` in this process: an exception escaping main() fails the test (that is the traceback case)."""
    rc = got_main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return rc, captured.out, _messages(captured.err)


def _one_line(rc: int, lines: list[str], needles: list[str]) -> str:
    assert rc == 1, lines
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _json_lines(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8")  # strict: every byte valid UTF-8
    assert text == "" or text.endswith("\n"), "a torn last line"
    return [json.loads(line) for line in text.splitlines()]


def _fill(items: list[str], paths: dict[str, str], **more: str) -> list[str]:
    return [item.format(**paths, **more) for item in items]


def _needs(paths: dict[str, str], argv: list[str]) -> None:
    if any("{ro}" in a for a in argv) and not paths["ro"]:
        pytest.skip("no folder here is unwritable for this user")


# ------------------------------------------------------------------------------------ got chat: bad input files
# (id, inputs and options, words of the one line). Each is answered by an error record in --out, nothing else.
CHAT_INPUTS = [
    ("corrupt_png", ["{f}/corrupt.png"], ["corrupt.png", "unknown or corrupt format"]),
    ("zero_byte_png", ["{f}/zero.png"], ["zero.png", "empty file (0 bytes)"]),
    ("truncated_png", ["{f}/truncated.png"], ["truncated.png", "truncated or corrupt"]),
    ("huge_header_png", ["{f}/huge.png"], ["huge.png", "3600000000 pixels", "decompression-bomb guard"]),
    ("missing_file", ["{f}/missing.png"], ["missing.png", "not found"]),
    ("folder_as_input", ["{f}/folder.png"], ["folder.png", "is a directory"]),
    ("text_file", ["{f}/notes.txt"], ["notes.txt", "unsupported file type '.txt'"]),
    ("encrypted_pdf", ["{f}/locked.pdf"], ["locked.pdf", "PDF is encrypted"]),
    ("empty_pdf", ["{f}/empty.pdf"], ["empty.pdf", "PDF has no pages"]),
    ("not_a_pdf", ["{f}/fake.pdf"], ["fake.pdf", "not a readable PDF"]),
    ("pages_past_the_end", ["{f}/doc.pdf", "--pages", "1-999999999"], ["doc.pdf", "1-999999999", "has 3 pages"]),
    ("page_zero", ["{f}/doc.pdf", "--pages", "0"], ["doc.pdf", "page 0", "has 3 pages"]),
    ("pages_backwards", ["{f}/doc.pdf", "--pages", "3-1"], ["doc.pdf", "3-1 runs backwards"]),
    ("pages_not_a_range", ["{f}/doc.pdf", "--pages", "one"], ["doc.pdf", "bad page range 'one'"]),
    ("tiff_page_past_the_end", ["{f}/three.tiff", "--pages", "2-5"], ["three.tiff", "2-5", "has 3 pages"]),
    ("negative_box", ["{f}/good.png", "--box", "-10,-10,50,50"], ["good.png", "lies outside the 80x64 image"]),
    ("box_past_the_image", ["{f}/good.png", "--box", "10,10,500,50"], ["good.png", "lies outside the 80x64 image"]),
    ("inverted_box", ["{f}/good.png", "--box", "50,50,10,10"], ["good.png", "inverted or empty"]),
]


@pytest.mark.parametrize("args,needles", [c[1:] for c in CHAT_INPUTS], ids=[c[0] for c in CHAT_INPUTS])
def test_chat_bad_input_is_one_line_and_one_error_record(paths, tmp_path, capsys, args, needles):
    out = tmp_path / "answers.jsonl"
    rc, stdout, lines = _run(capsys, ["chat", *_fill(args, paths), "--model", paths["m"], "--out", str(out), *CHAT])
    line = _one_line(rc, lines, needles)
    [record] = _json_lines(out)
    assert record["error"] in line and record["path"] == _fill(args, paths)[0] and "text" not in record
    assert stdout == ""


# ------------------------------------------------------------------------------- refused before any work starts
# (id, command line, words of the one line, whose start would be work). Placeholders: {f} inputs, {m} model,
# {ro} an unwritable folder, {t} this test's own folder (nothing may appear in it).
BEFORE_WORK = [
    # got chat: options
    ("chat_device_tpu", ["chat", "{f}/good.png", "--model", "{m}", "--device", "tpu7"], ["--device 'tpu7'", "not a device"]),
    ("chat_device_missing_gpu", ["chat", "{f}/good.png", "--model", "{m}", "--device", "cuda:99"],
     ["--device cuda:99", "CUDA"]),
    ("chat_batch_size_zero", ["chat", "{f}/good.png", "--model", "{m}", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    ("chat_batch_size_text", ["chat", "{f}/good.png", "--model", "{m}", "--batch-size", "many"],
     ["--batch-size must be an integer, got 'many'"]),
    ("chat_max_tiles_huge", ["chat", "{f}/good.png", "--model", "{m}", "--max-tiles", "100000"], ["--max-tiles must be <= 64"]),
    ("chat_max_new_tokens_negative", ["chat", "{f}/good.png", "--model", "{m}", "--max-new-tokens", "-5"],
     ["--max-new-tokens must be >= 1"]),
    ("chat_max_new_tokens_inf", ["chat", "{f}/good.png", "--model", "{m}", "--max-new-tokens", "inf"],
     ["--max-new-tokens must be a finite integer"]),
    ("chat_box_nan", ["chat", "{f}/good.png", "--model", "{m}", "--box", "nan,1,2,3"], ["--box 'nan,1,2,3'", "finite"]),
    ("chat_box_three_numbers", ["chat", "{f}/good.png", "--model", "{m}", "--box", "1,2,3"], ["--box '1,2,3'", "4 numbers"]),
    ("chat_out_is_a_folder", ["chat", "{f}/good.png", "--model", "{m}", "--out", "{t}"], ["--out {t}", "is a folder"]),
    ("chat_out_under_a_file", ["chat", "{f}/good.png", "--model", "{m}", "--out", "{f}/taken/a.jsonl"],
     ["--out {f}/taken/a.jsonl", "taken is a file, not a folder"]),
    ("chat_out_unwritable", ["chat", "{f}/good.png", "--model", "{m}", "--out", "{ro}/a.jsonl"],
     ["--out {ro}/a.jsonl", "not writable"]),
    ("chat_render_is_a_folder", ["chat", "{f}/good.png", "--model", "{m}", "--out", "{t}/a.jsonl", "--render", "{f}"],
     ["--render {f}", "is a folder"]),
    ("chat_render_unwritable", ["chat", "{f}/good.png", "--model", "{m}", "--render", "{ro}/r.html"],
     ["--render {ro}/r.html", "not writable"]),
    # got convert
    ("convert_negative_shard_size", ["convert", "--from", "{m}", "--to", "{t}/out", "--max-shard-gb", "-1"],
     ["--max-shard-gb must be > 0, got '-1'"]),
    ("convert_shard_size_exponent", ["convert", "--from", "{m}", "--to", "{t}/out", "--max-shard-gb", "-1e9"],
     ["--max-shard-gb must be > 0, got '-1e9'"]),
    ("convert_nan_shard_size", ["convert", "--from", "{m}", "--to", "{t}/out", "--max-shard-gb", "nan"],
     ["--max-shard-gb must be a finite number"]),
    ("convert_to_a_file", ["convert", "--from", "{m}", "--to", "{f}/taken"], ["--to {f}/taken", "is a file, not a folder"]),
    ("convert_to_unwritable", ["convert", "--from", "{m}", "--to", "{ro}/out"], ["--to {ro}/out", "not writable"]),
    # got eval
    ("eval_device_tpu", ["eval", "--model", "{m}", "--data", "{f}/set.json", "--out", "{t}/ev", "--device", "tpu7"],
     ["--device 'tpu7'"]),
    ("eval_batch_size_zero", ["eval", "--model", "{m}", "--data", "{f}/set.json", "--out", "{t}/ev", "--batch-size", "0"],
     ["--batch-size must be >= 1"]),
    ("eval_limit_zero", ["eval", "--model", "{m}", "--data", "{f}/set.json", "--out", "{t}/ev", "--limit", "0"],
     ["--limit must be >= 1"]),
    ("eval_max_tiles_text", ["eval", "--model", "{m}", "--data", "{f}/set.json", "--out", "{t}/ev", "--max-tiles", "six"],
     ["--max-tiles must be an integer, got 'six'"]),
    ("eval_out_is_a_file", ["eval", "--model", "{m}", "--data", "{f}/set.json", "--out", "{f}/taken"],
     ["--out {f}/taken", "is a file, not a folder"]),
    ("eval_out_unwritable", ["eval", "--model", "{m}", "--data", "{f}/set.json", "--out", "{ro}/ev"],
     ["--out {ro}/ev", "not writable"]),
    # got train: keys and values of the YAML and of KEY=VALUE overrides, outputs
    ("train_lr_not_a_number", ["train", "--stage", "finetune", "--output", "{t}/run", "train.lr=fast"],
     ["train.lr", "'fast'"]),
    ("train_lr_negative", ["train", "--stage", "finetune", "--output", "{t}/run", "train.lr=-1"], ["train.lr must be > 0"]),
    ("train_lr_nan", ["train", "--stage", "finetune", "--output", "{t}/run", "train.lr=.nan"], ["train.lr", "finite"]),
    ("train_unknown_key", ["train", "--stage", "finetune", "--output", "{t}/run", "train.lrr=1"],
     ["unknown config key 'train.lrr'"]),
    ("train_micro_batch_zero", ["train", "--stage", "finetune", "--output", "{t}/run", "train.micro_batch_size=0"],
     ["train.micro_batch_size must be >= 1"]),
    ("train_max_steps_fraction", ["train", "--stage", "finetune", "--output", "{t}/run", "train.max_steps=1.5"],
     ["train.max_steps must be a whole number"]),
    ("train_betas_one_number", ["train", "--stage", "finetune", "--output", "{t}/run", "train.betas=[0.9]"],
     ["train.betas must be two numbers"]),
    ("train_yaml_not_yaml", ["train", "--stage", "finetune", "--config", "{f}/bad_yaml.yaml", "--output", "{t}/run"],
     ["bad_yaml.yaml", "not valid YAML"]),
    ("train_yaml_unknown_key", ["train", "--stage", "finetune", "--config", "{f}/bad_key.yaml", "--output", "{t}/run"],
     ["bad_key.yaml", "unknown config key", "learning_rate"]),
    ("train_yaml_fractional_epochs", ["train", "--stage", "finetune", "--config", "{f}/bad_value.yaml", "--output",
                                      "{t}/run"], ["train.epochs must be a whole number"]),
    ("train_config_missing", ["train", "--stage", "finetune", "--config", "{f}/nope.yaml"], ["nope.yaml", "not found"]),
    ("train_data_missing", ["train", "--stage", "finetune", "--data", "{f}/nope.json", "--output", "{t}/run"],
     ["--data {f}/nope.json", "no such data file"]),
    ("train_output_is_a_file", ["train", "--stage", "finetune", "--output", "{f}/taken"],
     ["--output {f}/taken", "is a file, not a folder"]),
    ("train_output_dir_key_is_a_file", ["train", "--stage", "finetune", "output.dir={f}/taken"],
     ["output.dir {f}/taken", "is a file, not a folder"]),
    ("train_output_unwritable", ["train", "--stage", "finetune", "--output", "{ro}/run"], ["--output {ro}/run", "not writable"]),
]


@pytest.fixture
def no_work(monkeypatch):
    """Loading a model, reading a data set or starting a run fails at once: a refusal must come before."""
    def started(*args, **kwargs):
        raise AssertionError("the work started before the bad input was refused")

    monkeypatch.setattr(GOT, "from_pretrained", started)
    monkeypatch.setattr(ckpt_module, "load_model", started)
    monkeypatch.setattr(eval_module, "load_dataset", started)
    monkeypatch.setattr(train_module, "train", started)


@pytest.mark.parametrize("argv,needles", [c[1:] for c in BEFORE_WORK], ids=[c[0] for c in BEFORE_WORK])
def test_refused_before_any_work_in_one_line(paths, tmp_path, capsys, no_work, argv, needles):
    _needs(paths, argv)
    own = tmp_path / "own"
    own.mkdir()
    argv = _fill(argv, paths, t=str(own))
    rc, stdout, lines = _run(capsys, argv)
    _one_line(rc, lines, _fill(needles, paths, t=str(own)))
    assert list(own.iterdir()) == [] and stdout == ""  # nothing written


# ---------------------------------------------------------------------------- bad inputs that reach the work
def test_convert_missing_source_and_eval_bad_data_files(paths, tmp_path, capsys):
    cases = [(["convert", "--from", "{f}/nope", "--to", "{t}/out"], ["nope", "no such checkpoint"]),
             (["eval", "--model", "{m}", "--data", "{f}/nope.json", "--out", "{t}/ev"], ["nope.json: data file not found"]),
             (["eval", "--model", "{m}", "--data", "{f}/broken.json", "--out", "{t}/ev"], ["broken.json: not valid JSON"]),
             (["eval", "--model", "{m}", "--data", "{f}/gone.json", "--out", "{t}/ev"],
              ["gone.json: record 0: image", "gone.png not found"])]
    for argv, needles in cases:
        rc, _, lines = _run(capsys, _fill(argv, paths, t=str(tmp_path)))
        _one_line(rc, lines, _fill(needles, paths))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------- one bad input never costs the others their answers
def test_name_that_is_not_utf8_costs_no_answer(paths, tmp_path, capsys):
    odd = os.fsdecode(b"scan-\xff\xfe.png")
    try:
        shutil.copy(Path(paths["f"]) / "good.png", tmp_path / odd)
    except (OSError, UnicodeError):
        pytest.skip("this file system only takes UTF-8 names")
    good, bad = str(Path(paths["f"]) / "good.png"), str(tmp_path / odd)
    out, html = tmp_path / "a.jsonl", tmp_path / "a.html"
    rc, _, lines = _run(capsys, ["chat", good, bad, "--model", paths["m"], "--out", str(out), "--render", str(html), *CHAT])
    assert rc == 0, lines
    records = _json_lines(out)
    assert [r["path"] for r in records] == [good, str(tmp_path / "scan-\\xff\\xfe.png")]
    assert all("text" in r and "error" not in r for r in records)
    assert html.read_bytes().decode("utf-8").count('<section class="answer">') == 2
    rc, stdout, _ = _run(capsys, ["chat", bad, good, "--model", paths["m"], *CHAT])  # JSON lines on stdout
    assert rc == 0 and [json.loads(line)["path"] for line in stdout.splitlines()] == [records[1]["path"], good]


def test_bad_inputs_among_good_ones(paths, tmp_path, capsys):
    f = Path(paths["f"])
    out = tmp_path / "a.jsonl"
    inputs = [f / "good.png", f / "corrupt.png", f / "doc.pdf", f / "zero.png", f / "good2.jpg"]
    rc, _, lines = _run(capsys, ["chat", *map(str, inputs), "--model", paths["m"], "--pages", "2-3", "--out", str(out),
                                 "--batch-size", "2", *CHAT])
    assert rc == 1
    errors = [line for line in lines if line.startswith("got chat: error:")]
    assert len(errors) == 2 and "corrupt.png" in errors[0] and "zero.png" in errors[1]
    assert lines[-1] == "got chat: 2 of 5 inputs failed" and len(lines) == 3
    records = _json_lines(out)
    answered = sorted((Path(r["path"]).name, r.get("page")) for r in records if "text" in r)
    assert answered == [("doc.pdf", 2), ("doc.pdf", 3), ("good.png", None), ("good2.jpg", None)]
    assert sorted(Path(r["path"]).name for r in records if "error" in r) == ["corrupt.png", "zero.png"]


def test_a_failing_batch_loses_only_the_prompt_that_fails_alone(paths, tmp_path, capsys, monkeypatch):
    """Generation itself fails (out of memory, say) in a batch holding one poisoned prompt: its batch mates are
    answered again one by one; only the poisoned prompt becomes an error record."""
    f = Path(paths["f"])
    shutil.copy(f / "good.png", tmp_path / "poison.png")
    real = GOT._generate_batch

    def generate(self, batch, *args, **kwargs):
        if any("poison" in p.source for p in batch):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(self, batch, *args, **kwargs)

    monkeypatch.setattr(GOT, "_generate_batch", generate)
    out = tmp_path / "a.jsonl"
    inputs = [f / "good.png", tmp_path / "poison.png", f / "good2.jpg"]
    rc, _, lines = _run(capsys, ["chat", *map(str, inputs), "--model", paths["m"], "--out", str(out),
                                 "--batch-size", "3", *CHAT])
    assert rc == 1 and lines[-1] == "got chat: 1 of 3 inputs failed"
    [error] = [line for line in lines if line.startswith("got chat: error:")]
    assert "poison.png" in error and "out of memory" in error
    records = _json_lines(out)
    assert sorted(Path(r["path"]).name for r in records if "text" in r) == ["good.png", "good2.jpg"]
    assert [Path(r["path"]).name for r in records if "error" in r] == ["poison.png"]


def test_every_page_of_a_multi_page_tiff_is_answered(paths, tmp_path, capsys):
    tiff = str(Path(paths["f"]) / "three.tiff")
    out = tmp_path / "a.jsonl"
    rc, _, lines = _run(capsys, ["chat", tiff, "--model", paths["m"], "--out", str(out), *CHAT])
    assert rc == 0 and lines == [], lines
    assert [(r["path"], r["page"]) for r in _json_lines(out)] == [(tiff, 1), (tiff, 2), (tiff, 3)]
    rc, _, _ = _run(capsys, ["chat", tiff, "--model", paths["m"], "--out", str(out), "--pages", "2-", *CHAT])
    assert rc == 0 and [r["page"] for r in _json_lines(out)] == [2, 3]
    from got.processor import load_image, load_images

    assert [im.getpixel((0, 0)) for im in load_images(tiff)] == [(255, 255, 255), (128, 128, 128), (0, 0, 0)]
    with pytest.raises(ValueError, match="three.tiff: TIFF with 3 pages"):  # never page 1 alone without a word
        load_image(tiff)


def test_device_cuda_without_a_gpu_is_one_line(paths, capsys, no_work):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: --device cuda is valid")
    rc, _, lines = _run(capsys, ["chat", f"{paths['f']}/good.png", "--model", paths["m"], "--device", "cuda"])
    _one_line(rc, lines, ["--device cuda", "CUDA", "--device cpu"])
    rc, _, lines = _run(capsys, ["eval", "--model", paths["m"], "--data", f"{paths['f']}/set.json", "--device", "cuda"])
    _one_line(rc, lines, ["--device cuda", "CUDA"])
