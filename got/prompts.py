"""THE prompt contract: GOT's conversation template, the query of every mode, the image block, record
parsing and label masking. Training, inference and evaluation all build their token ids here, so the
prompt a model was trained on and the prompt it is asked with can never drift apart.

Released GOT ("mpt" style; docs/got_facts.md §3), no newline after `<|im_end|>`:

    <|im_start|>system\\n{SYSTEM}<|im_end|><|im_start|>user\\n<img>{<imgpad> x N}</img>\\n{QUERY}<|im_end|><|im_start|>assistant\\n
    {ANSWER}<|im_end|>

N = image_token_len x tiles (256 per 1024-px tile/page in the released model; a preset may use fewer).
Template text is encoded with specials parsed; user and answer text are encoded as plain text, so an
answer containing the characters `<img>` (HTML!) can never inject an image token.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from got.tokenizer import IM_END, IM_START, IMG_END, IMG_PAD, IMG_START

SYSTEM = "You should follow the instructions carefully and explain your answers in detail."
USER, ASSISTANT = "user", "assistant"
IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
COLORS = ("red", "green", "blue")
MODES = ("plain", "format")  # "ocr" is accepted as GOT's own name for "plain"

SYSTEM_BLOCK = f"{IM_START}system\n{SYSTEM}{IM_END}"
USER_START = f"{IM_START}{USER}\n"
ASSISTANT_START = f"{IM_START}{ASSISTANT}\n"


class PromptTooLong(ValueError):
    """The prompt (through the image block) does not fit in max_length; the sample must be skipped,
    because cutting inside the image block would break the `<imgpad>` / feature count."""


# ---- queries -----------------------------------------------------------------------------------------------------
def _normalize_box(box: Sequence[float], image_size: tuple[int, int] | None) -> list[int]:
    """Pixel box -> GOT's 0-1000 grid: int(x / width * 1000), int(y / height * 1000). Never axis-swapped:
    x is always divided by the width (image_size is PIL's (width, height))."""
    if isinstance(box, (str, bytes)) or not hasattr(box, "__len__"):
        raise ValueError(f"box must be a list [x1, y1, x2, y2] or a point [x, y] in pixels, got {box!r}")
    values = list(box)
    if len(values) not in (2, 4):
        raise ValueError(f"box needs 2 (a point) or 4 (x1, y1, x2, y2) coordinates, got {len(values)}: {values}")
    try:
        if any(isinstance(v, bool) for v in values) or not all(math.isfinite(float(v)) for v in values):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"box coordinates must be finite numbers, got {values}") from None
    if image_size is None:
        raise ValueError("a box query needs image_size=(width, height) of the image, to map pixels to 0-1000")
    w, h = image_size
    if not (w > 0 and h > 0):
        raise ValueError(f"image_size must be (width, height) > 0, got {image_size}")
    xs, ys = [float(v) for v in values[0::2]], [float(v) for v in values[1::2]]
    if any(x < 0 or x > w for x in xs) or any(y < 0 or y > h for y in ys):
        raise ValueError(f"box {values} lies outside the {w}x{h} image (x in 0..{w}, y in 0..{h})")
    if len(values) == 4 and not (xs[0] < xs[1] and ys[0] < ys[1]):
        raise ValueError(f"box {values} is inverted or empty: need x1 < x2 and y1 < y2")
    out = []
    for i, v in enumerate(values):
        out.append(int(float(v) / (w if i % 2 == 0 else h) * 1000))
    return out


def build_query(mode: str = "plain", *, box: Sequence[float] | None = None, color: str | None = None,
                image_size: tuple[int, int] | None = None, multi_crop: bool = False, multi_page: bool = False) -> str:
    """The QUERY text of every GOT mode, exactly as the original code builds it.

    mode "plain" (alias "ocr") or "format"; box in PIXELS with image_size=(width, height); color red/green/blue;
    multi_crop (the image is cut into tiles); multi_page (several pages in one image block).
    Box / colour put a prefix before the mode query: `[125, 83, 500, 500] OCR with format: `, `[red] OCR: `.
    """
    if mode == "ocr":
        mode = "plain"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose 'plain' (or 'ocr') or 'format'")
    base = "OCR with format" if mode == "format" else "OCR"
    if multi_crop and multi_page:
        raise ValueError("multi_crop and multi_page cannot be combined (GOT has no such query)")
    if (multi_crop or multi_page) and (box is not None or color is not None):
        raise ValueError("box / color queries work on a single whole image, not with multi_crop or multi_page")
    if box is not None and color is not None:
        raise ValueError("give either a box or a color, not both (GOT has no combined query)")
    if multi_crop:
        return f"{base} upon the patch reference: "
    if multi_page:
        return f"{base} across multi pages: "
    if box is not None:
        return f"{_normalize_box(box, image_size)} {base}: "
    if color is not None:
        c = str(color).strip().lower()
        if c not in COLORS:
            raise ValueError(f"unknown color {color!r}; GOT knows {', '.join(COLORS)}")
        return f"[{c}] {base}: "
    return f"{base}: "


# Every query text build_query makes, read back into its parts (Query.parse).
QUERY_RE = re.compile(r"(?:\[(?P<box>\d+(?:, \d+){1,3})\] |\[(?P<color>red|green|blue)\] )?"
                      r"OCR(?P<format> with format)?(?: (?P<crop>upon the patch reference)|"
                      r" (?P<pages>across multi pages))?: ")


@dataclass(frozen=True)
class Query:
    """What is asked of an input: GOT's mode plus its fine-grained, multi-crop and multi-page options.

    The one value that training (got.data), inference (got.inference) and evaluation (got.evaluate) pass around:
    its text is built by `text` and read back by `parse`, so the multi-crop decision comes from here, never from a
    substring of a prompt. `box` is in pixels of the image, or on GOT's 0-1000 grid when `box_grid` (a parsed
    query); `pages` picks PDF pages ("1-3,5"); `max_tiles` bounds multi-crop; `raw` is a query in other words
    than GOT's (a fine-tuned model's own), asked verbatim.
    """
    mode: str = "plain"
    box: tuple[float, ...] | None = None
    color: str | None = None
    crop: bool = False
    max_tiles: int = 6
    pages: Any = None
    multi_page: bool = False
    box_grid: bool = False
    raw: str | None = None

    def __post_init__(self) -> None:
        if self.box is not None and not isinstance(self.box, (str, bytes)) and hasattr(self.box, "__len__"):
            object.__setattr__(self, "box", tuple(self.box))
        if not isinstance(self.max_tiles, int) or isinstance(self.max_tiles, bool) or self.max_tiles < 1:
            raise ValueError(f"max_tiles must be an int >= 1, got {self.max_tiles!r}")

    def text(self, image_size: tuple[int, int] | None = None, multi_page: bool | None = None) -> str:
        """The query text for an image of `image_size` (width, height): needed to map a pixel box to 0-1000."""
        multi_page = self.multi_page if multi_page is None else multi_page
        if self.raw is not None:
            return self.raw
        if self.box is not None and self.box_grid:
            base = build_query(self.mode, multi_crop=self.crop, multi_page=multi_page)
            return f"[{', '.join(str(int(v)) for v in self.box)}] {base}"
        return build_query(self.mode, box=self.box, color=self.color, image_size=image_size,
                           multi_crop=self.crop, multi_page=multi_page)

    def pixel_box(self, image_size: tuple[int, int]) -> tuple[float, ...] | None:
        """The box in pixels of an image of `image_size` (width, height)."""
        if self.box is None or not self.box_grid:
            return self.box
        return tuple(v * image_size[i % 2] / 1000 for i, v in enumerate(self.box))

    def with_mode(self, mode: str) -> "Query":
        return replace(self, mode=mode)

    @classmethod
    def parse(cls, text: str) -> "Query":
        """A query text (`[125, 83, 500, 500] OCR with format: `) -> Query (box on the grid); a text that is not
        one of GOT's queries (a benchmark's or a fine-tune's own wording) is kept as `raw`."""
        m = QUERY_RE.fullmatch(text)
        if m is None:
            return cls(raw=text)
        box = tuple(int(v) for v in m["box"].split(", ")) if m["box"] else None
        return cls(mode="format" if m["format"] else "plain", box=box, color=m["color"], crop=bool(m["crop"]),
                   multi_page=bool(m["pages"]), box_grid=box is not None)


def query_of(turns: Sequence[dict[str, str]]) -> "Query":
    """The Query of a conversation's first human turn (the text after `<image>\n`)."""
    human = _turn(turns[0])[1] if turns else ""
    return Query.parse(human.split(IMAGE_PLACEHOLDER, 1)[1].removeprefix("\n") if IMAGE_PLACEHOLDER in human else human)


# ---- prompt strings and ids --------------------------------------------------------------------------------------
def image_block(num_image_tokens: int) -> str:
    """`<img>` + `<imgpad>` x num_image_tokens + `</img>`: every tile / page goes in this one block."""
    if not isinstance(num_image_tokens, int) or isinstance(num_image_tokens, bool) or num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be a positive int, got {num_image_tokens!r}")
    return IMG_START + IMG_PAD * num_image_tokens + IMG_END


def build_prompt(query: str, num_image_tokens: int) -> str:
    """The inference prompt as text, ending in `<|im_start|>assistant\\n`."""
    return render_conversation([{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{query}"}], num_image_tokens)


def encode_prompt(tokenizer, query: str, num_image_tokens: int) -> list[int]:
    """Token ids of the inference prompt: the very ids `encode_conversation` gives the first round."""
    ids, _ = _encode(tokenizer, [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{query}"}], num_image_tokens)
    return ids


def render_conversation(turns: Sequence[dict[str, str]], num_image_tokens: int) -> str:
    """A conversation as the text the model sees (training text when it ends with an answer,
    the inference prompt when it ends with a human turn)."""
    parts, _ = _segments(turns, num_image_tokens)
    return "".join(text for text, _, _ in parts)


def encode_conversation(tokenizer, turns: Sequence[dict[str, str]], num_image_tokens: int,
                        max_length: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for training. turns are GOT conversation dicts (`{"from": "human"|"gpt",
    "value": ...}`; `{"role", "content"}` also accepted) with one `<image>` in a human turn when
    num_image_tokens > 0. Labels: -100 for everything through each `<|im_start|>assistant\\n`; the answer
    and its `<|im_end|>` are supervised, round by round.

    Longer than max_length: answers are cut at max_length, but never the image block or the first
    round's prompt; then `PromptTooLong` is raised (the trainer counts and skips the sample)."""
    ids, labels = _encode(tokenizer, turns, num_image_tokens)
    if max_length is not None and len(ids) > max_length:
        first_answer = next((i for i, lab in enumerate(labels) if lab != IGNORE_INDEX), len(ids))
        if first_answer >= max_length:
            raise PromptTooLong(f"prompt of {first_answer} tokens (image block of {num_image_tokens}) leaves no room "
                                f"for an answer within max_length {max_length} (sample has {len(ids)} tokens)")
        ids, labels = ids[:max_length], labels[:max_length]
    return ids, labels


def _turn(t: dict[str, str]) -> tuple[str, str]:
    if not isinstance(t, dict):
        raise ValueError(f"a turn must be a dict with from/value (or role/content), got {type(t).__name__}")
    role = t.get("from", t.get("role"))
    text = t.get("value", t.get("content"))
    role = {"user": "human", "assistant": "gpt"}.get(role, role)
    if role not in ("human", "gpt") or not isinstance(text, str):
        raise ValueError(f"bad turn {t!r}: need from 'human'/'gpt' (or role 'user'/'assistant') and a text value")
    return role, text


def _segments(turns: Sequence[dict[str, str]], num_image_tokens: int) -> tuple[list[tuple[str, bool, bool]], int]:
    """The conversation as (text, is_template, supervised) pieces. Template pieces hold the special tokens."""
    if not turns:
        raise ValueError("empty conversation")
    roles = [_turn(t) for t in turns]
    for i, (role, _) in enumerate(roles):
        if role != ("human" if i % 2 == 0 else "gpt"):
            raise ValueError(f"turn {i} is from {role!r}: turns must alternate human, gpt, human, ... starting with human")
    n_placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in roles)
    in_answers = sum(text.count(IMAGE_PLACEHOLDER) for role, text in roles if role == "gpt")
    if in_answers:
        raise ValueError(f"{IMAGE_PLACEHOLDER} appears in an answer; it belongs in the human turn")
    if num_image_tokens and n_placeholders != 1:
        raise ValueError(f"conversation has {n_placeholders} {IMAGE_PLACEHOLDER} placeholders; exactly 1 is needed "
                         "for the image block (all tiles/pages share it)")
    if not num_image_tokens and n_placeholders:
        raise ValueError(f"conversation has {n_placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but no image tokens")
    parts: list[tuple[str, bool, bool]] = [(SYSTEM_BLOCK, True, False)]
    for role, text in roles:
        if role == "human":
            parts.append((USER_START, True, False))
            if IMAGE_PLACEHOLDER in text:
                before, after = text.split(IMAGE_PLACEHOLDER)
                parts += [(before, False, False), (image_block(num_image_tokens), True, False), (after, False, False)]
            else:
                parts.append((text, False, False))
            parts.append((IM_END + ASSISTANT_START, True, False))
        else:
            parts += [(text, False, True), (IM_END, True, True)]
    return [p for p in parts if p[0]], n_placeholders


def _encode(tokenizer, turns: Sequence[dict[str, str]], num_image_tokens: int) -> tuple[list[int], list[int]]:
    parts, _ = _segments(turns, num_image_tokens)
    ids: list[int] = []
    labels: list[int] = []
    for text, is_template, supervised in parts:
        piece = tokenizer.encode(text) if is_template else tokenizer.encode_ordinary(text)
        ids += piece
        labels += piece if supervised else [IGNORE_INDEX] * len(piece)
    return ids, labels


# ---- records -----------------------------------------------------------------------------------------------------
_SWIFT_IMAGE = re.compile(re.escape(IMAGE_PLACEHOLDER) + r"\s*")


def parse_record(record: dict[str, Any], image_root: str | Path | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """A training record -> (image paths, GOT-format turns). Accepts

    - GOT json: `{"image": "a.png" | ["p1.png", "p2.png"], "conversations": [{"from": "human", "value": "<image>\\nOCR: "}, {"from": "gpt", ...}]}`
    - ms-swift: `{"messages": [{"role": "user", "content": "<image>OCR: "}, {"role": "assistant", ...}], "images": [...]}`.
      ms-swift's GOT template turns `<image>` into the image block plus "\\n"; we normalise `<image>` or
      `<image>` + any whitespace to `<image>\\n`, so both spellings give the released prompt. Several images with as many
      adjacent `<image>` tags (multi-page) become one block, as GOT puts all pages in one `<img>...</img>`.

    Relative image paths are joined to image_root. A wrong `<image>` count raises ValueError.
    """
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        images = record.get("image", record.get("images"))
        turns = [dict(zip(("from", "value"), _turn(t))) for t in record["conversations"]]
    elif "messages" in record:
        images = record.get("images", record.get("image"))
        msgs = list(record["messages"])
        if msgs and isinstance(msgs[0], dict) and msgs[0].get("role") == "system":
            if str(msgs[0].get("content", "")).strip() != SYSTEM:
                raise ValueError("custom system messages are not supported: GOT's weights were trained with the fixed "
                                 f"system text {SYSTEM!r}")
            msgs = msgs[1:]
        turns = []
        for t in msgs:
            role, text = _turn(t)
            if role == "human":
                text = _SWIFT_IMAGE.sub(IMAGE_PLACEHOLDER + "\n", text)
            turns.append({"from": role, "value": text})
    else:
        raise ValueError("record has neither 'conversations' (GOT json) nor 'messages' (ms-swift)")

    if images is None or images == []:
        paths: list[str] = []
    else:
        items = images if isinstance(images, (list, tuple)) else [images]
        paths = []
        for im in items:
            if isinstance(im, dict):
                im = im.get("path")
            if not isinstance(im, str) or not im:
                raise ValueError(f"image entries must be file paths, got {im!r}")
            p = Path(im)
            paths.append(str(p if p.is_absolute() or image_root is None else Path(image_root) / p))

    n_tags = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in turns)
    if len(paths) > 1 and n_tags == len(paths):
        # one tag per page (ms-swift style) -> one block, if the tags sit together
        for t in turns:
            if IMAGE_PLACEHOLDER in t["value"]:
                merged = re.sub(f"(?:{re.escape(IMAGE_PLACEHOLDER)}\\n?){{{len(paths)}}}", IMAGE_PLACEHOLDER + "\n", t["value"])
                if merged.count(IMAGE_PLACEHOLDER) == 1:
                    t["value"] = merged
                    n_tags = 1
                break
    if paths and n_tags != 1:
        raise ValueError(f"record has {n_tags} {IMAGE_PLACEHOLDER} placeholders for {len(paths)} image(s); "
                         f"expected one (or one per page, side by side)")
    if not paths and n_tags:
        raise ValueError(f"record has {n_tags} {IMAGE_PLACEHOLDER} placeholder(s) but no image")
    if not turns or _turn(turns[-1])[0] != "gpt":
        raise ValueError("record must end with an answer (from 'gpt' / role 'assistant')")
    _segments(turns, 1 if paths else 0)  # validates roles and placeholder position
    return paths, turns
