"""GOT's tokenizer: a tiktoken byte-level BPE plus GOT's special tokens, appended in the released order.

Why tiktoken and not a transformers tokenizer: the released GOT tokenizer IS Qwen's tiktoken file
(`qwen.tiktoken`, base64 token + rank per line) and Qwen's remote-code wrapper, which we never trust.
Reading the same ranks file with the same split regex and appending the same specials in the same order
reproduces the released ids exactly (`<|endoftext|>` 151643 ... `<imgpad>` 151859, vocab 151860).

The Qwen file cannot be fetched offline, so our own models default to a bundled BPE of exactly 16384
ranks (`got/assets/got_bpe.tiktoken`, trained by `scripts/train_tokenizer.py` on English, Chinese,
Japanese, Korean, LaTeX, tables, **kern, SMILES and code). With it the specials start at 16384 and the
vocabulary is 16601.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import shutil
from pathlib import Path

import tiktoken

# Qwen's split regex (tokenization_qwen.py). Digits are split one by one, which suits OCR of numbers.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
IMG_START, IMG_END, IMG_PAD = "<img>", "</img>", "<imgpad>"
# Released order: the three chat tokens, 205 reserved extras, then GOT's grounding / image tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    (ENDOFTEXT, IM_START, IM_END)
    + tuple(f"<|extra_{i}|>" for i in range(205))
    + ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", IMG_START, IMG_END, IMG_PAD)
)

DEFAULT_RANKS_FILE = Path(__file__).parent / "assets" / "got_bpe.tiktoken"
CONFIG_FILE = "tokenizer_config.json"


@functools.lru_cache(maxsize=4)
def _read_ranks(path: str, mtime: float) -> dict[bytes, int]:
    """Parse a `.tiktoken` file (cached: the 151k-line Qwen file takes ~0.3 s to read)."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: not a tiktoken ranks line (base64 token, space, rank): {e}") from None
    if not ranks:
        raise ValueError(f"{path}: empty tiktoken ranks file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps or duplicates")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{path}: byte-level BPE must contain all 256 single bytes; {len(missing)} missing")
    return ranks


class GOTTokenizer:
    """tiktoken BPE + GOT specials. Special-token text in `encode` input is parsed as the special token
    (the prompt template contains `<img>`, `<imgpad>`, ...); use `encode_ordinary` for untrusted text."""

    def __init__(self, mergeable_ranks: dict[bytes, int], name: str = "got_bpe", ranks_path: str | None = None):
        n = len(mergeable_ranks)
        self.special_tokens: dict[str, int] = {tok: n + i for i, tok in enumerate(SPECIAL_TOKENS)}
        self.name = name
        self.ranks_path = ranks_path
        self.num_ranks = n
        self.enc = tiktoken.Encoding(
            name, pat_str=PAT_STR, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens,
            explicit_n_vocab=n + len(SPECIAL_TOKENS),
        )
        self.endoftext_id = self.special_tokens[ENDOFTEXT]
        self.im_start_id = self.special_tokens[IM_START]
        self.im_end_id = self.special_tokens[IM_END]
        self.img_start_id = self.special_tokens[IMG_START]
        self.img_end_id = self.special_tokens[IMG_END]
        self.img_pad_id = self.special_tokens[IMG_PAD]

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_ranks_file(cls, path: str | os.PathLike, name: str | None = None) -> "GOTTokenizer":
        """Any Qwen-format ranks file, e.g. the released `qwen.tiktoken` (-> GOT's released ids)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tiktoken ranks file not found")
        ranks = _read_ranks(str(path.resolve()), path.stat().st_mtime)
        return cls(ranks, name=name or path.stem, ranks_path=str(path))

    @classmethod
    def default(cls) -> "GOTTokenizer":
        """The bundled 16384-rank BPE used by this project's own models (vocab 16601)."""
        return cls.from_ranks_file(DEFAULT_RANKS_FILE, name="got_bpe")

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> "GOTTokenizer":
        """Load from a checkpoint directory written by `save`, or from a released GOT directory
        (which holds `qwen.tiktoken`)."""
        directory = Path(directory)
        cfg_path = directory / CONFIG_FILE
        if cfg_path.is_file():
            cfg = json.loads(cfg_path.read_text())
            if "ranks_file" in cfg:
                specials = cfg.get("special_tokens")
                if specials is not None and tuple(specials) != SPECIAL_TOKENS:
                    raise ValueError(f"{cfg_path}: special tokens differ from GOT's released list")
                return cls.from_ranks_file(directory / cfg["ranks_file"], name=cfg.get("name"))
        found = sorted(directory.glob("*.tiktoken"))
        if len(found) == 1:
            return cls.from_ranks_file(found[0])
        if not found:
            raise FileNotFoundError(f"{directory}: no tokenizer (expected {CONFIG_FILE} or one *.tiktoken file)")
        raise ValueError(f"{directory}: several *.tiktoken files and no {CONFIG_FILE} saying which one to use")

    def save(self, directory: str | os.PathLike) -> None:
        """Write the ranks file (same name as the source, so `qwen.tiktoken` stays recognisable) and a
        small `tokenizer_config.json` naming it and listing the specials."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ranks_name = Path(self.ranks_path).name if self.ranks_path else f"{self.name}.tiktoken"
        target = directory / ranks_name
        if self.ranks_path and Path(self.ranks_path).is_file():
            if Path(self.ranks_path).resolve() != target.resolve():
                shutil.copyfile(self.ranks_path, target)
        else:
            write_ranks_file(self.enc._mergeable_ranks, target)
        cfg = {
            "tokenizer_class": "GOTTokenizer",
            "name": self.name,
            "ranks_file": ranks_name,
            "pat_str": PAT_STR,
            "special_tokens": list(SPECIAL_TOKENS),
            "vocab_size": self.vocab_size,
            "pad_token": ENDOFTEXT, "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    # ---- encode / decode -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def __len__(self) -> int:
        return self.enc.n_vocab

    @property
    def pad_token_id(self) -> int:
        return self.endoftext_id

    bos_token_id = eos_token_id = pad_token_id

    def encode(self, text: str) -> list[int]:
        """Encode with special-token text (`<|im_start|>`, `<imgpad>`, ...) parsed as specials."""
        return self.enc.encode(text, allowed_special="all")

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode with special-token text treated as plain text (for answers and user text)."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i < self.num_ranks]
        return self.enc.decode(ids)

    def token_to_id(self, token: str) -> int:
        """Id of a special token by its text, e.g. `token_to_id("<imgpad>")`."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise ValueError(f"{token!r} is not a special token of this tokenizer") from None

    def id_to_bytes(self, i: int) -> bytes:
        return self.enc.decode_single_token_bytes(int(i))

    def __repr__(self) -> str:
        return f"GOTTokenizer(name={self.name!r}, ranks={self.num_ranks}, vocab_size={self.vocab_size})"


def write_ranks_file(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write ranks in tiktoken's format, ordered by rank."""
    with open(path, "w", encoding="ascii") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
