"""Train the bundled byte-level BPE (`got/assets/got_bpe.tiktoken`, exactly 16384 ranks) offline.

Why our own BPE: the released Qwen ranks file cannot be downloaded here, and a 151k vocabulary is wasteful
for the small models we train on CPU. The corpus is built from installed packages only (wordfreq word
lists, Faker sentences, generated LaTeX / tables / **kern / SMILES, and Python stdlib source), so the
result is deterministic for a given environment. Pre-tokenisation uses Qwen's split regex, the same one
tiktoken applies at encode time, so the learned merges fit how text is split later.

    python scripts/train_tokenizer.py                 # writes got/assets/got_bpe.tiktoken
    python scripts/train_tokenizer.py --out x.tiktoken --corpus-mb 4 --ranks 16384
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from got.tokenizer import DEFAULT_RANKS_FILE, PAT_STR, GOTTokenizer, write_ranks_file  # noqa: E402

# share of the corpus (by characters) per source
MIX = {"en": 0.30, "zh": 0.22, "ja": 0.04, "ko": 0.03, "latex": 0.12, "table": 0.08, "code": 0.10,
       "kern": 0.04, "smiles": 0.04, "misc": 0.03}


# ---- text sources ------------------------------------------------------------------------------------
def _wordfreq_sentences(rng: random.Random, lang: str, joiner: str, punct: str):
    import wordfreq

    words = wordfreq.top_n_list(lang, 30000)
    # flatter than Zipf, so rarer words get merges too
    cum_weights = list(itertools.accumulate((r + 10) ** -0.5 for r in range(len(words))))
    while True:
        n = rng.randint(4, 25)
        ws = rng.choices(words, cum_weights=cum_weights, k=n)
        if lang == "en":
            ws[0] = ws[0].capitalize()
        yield joiner.join(ws) + rng.choice(punct)


def _faker_text(rng: random.Random, locale: str):
    from faker import Faker

    fake = Faker(locale)
    fake.seed_instance(rng.randrange(2**31))
    while True:
        kind = rng.random()
        if kind < 0.6:
            yield fake.paragraph(nb_sentences=rng.randint(2, 6))
        elif kind < 0.8:
            yield f"{fake.name()}, {fake.address()}\n{fake.phone_number()} {fake.email()}"
        else:
            yield f"{fake.company()} {fake.date()} {fake.url()} {rng.randint(0, 10**rng.randint(1, 7))}"


def _mix_stream(rng, *streams):
    while True:
        yield next(rng.choice(streams))


GREEK = r"\alpha \beta \gamma \delta \epsilon \theta \lambda \mu \pi \sigma \phi \omega \Omega \Delta \Sigma".split()
SYMS = list("abcdefghijklmnopqrstuvwxyzABCDEFGHXYZ") + GREEK


def _latex(rng: random.Random):
    def atom(d=0):
        r = rng.random()
        s = rng.choice(SYMS)
        if d > 2 or r < 0.35:
            return s + (f"_{{{rng.randint(0, 9)}}}" if rng.random() < 0.3 else "") + (f"^{{{rng.randint(2, 4)}}}" if rng.random() < 0.2 else "")
        if r < 0.5:
            return rf"\frac{{{expr(d + 1)}}}{{{expr(d + 1)}}}"
        if r < 0.6:
            return rf"\sqrt{{{expr(d + 1)}}}"
        if r < 0.7:
            return rf"\left( {expr(d + 1)} \right)"
        if r < 0.78:
            return rf"\sum_{{i=1}}^{{n}} {expr(d + 1)}"
        if r < 0.84:
            return rf"\int_{{0}}^{{\infty}} {expr(d + 1)} \, d {rng.choice('xtsu')}"
        if r < 0.9:
            return rf"\mathbf{{{s}}}" if rng.random() < 0.5 else rf"\mathrm{{{s}}}"
        return rng.choice([r"\sin", r"\cos", r"\log", r"\exp", r"\lim_{x \to 0}"]) + f" {atom(d + 1)}"

    def expr(d=0):
        op = rng.choice(["+", "-", "=", r"\cdot", r"\leq", r"\times", ",", ""])
        return f" {op} ".join(atom(d) for _ in range(rng.randint(1, 4)))

    while True:
        r = rng.random()
        if r < 0.5:
            yield rf"\[ {expr()} \]"
        elif r < 0.8:
            yield rf"The value \( {expr()} \) satisfies \( {expr()} \)."
        else:
            rows = " \\\\\n".join(f"{expr(2)} & = {expr(2)}" for _ in range(rng.randint(2, 4)))
            yield f"\\begin{{aligned}}\n{rows}\n\\end{{aligned}}"


def _table(rng: random.Random, words):
    while True:
        cols, rows = rng.randint(2, 6), rng.randint(2, 8)
        cell = lambda: rng.choice([next(words).split(" ")[0].strip(".,"), str(rng.randint(0, 9999)),
                                   f"{rng.uniform(-100, 100):.{rng.randint(1, 3)}f}", f"{rng.randint(0, 100)}%"])
        body = [[cell() for _ in range(cols)] for _ in range(rows)]
        if rng.random() < 0.5:  # markdown
            lines = ["| " + " | ".join(body[0]) + " |", "|" + "---|" * cols]
            lines += ["| " + " | ".join(r) + " |" for r in body[1:]]
            yield "\n".join(lines)
        else:  # LaTeX tabular (GOT's table target)
            spec = "|" + "|".join(rng.choice("lcr") for _ in range(cols)) + "|"
            lines = [f"\\begin{{tabular}}{{{spec}}}", "\\hline"]
            lines += [" & ".join(r) + " \\\\ \\hline" for r in body]
            yield "\n".join(lines + ["\\end{tabular}"])


def _kern(rng: random.Random):
    pitches = "CDEFGABcdefgab"
    while True:
        spines = rng.randint(1, 2)
        head = ["\t".join(["**kern"] * spines), "\t".join([rng.choice(["*clefG2", "*clefF4"])] * spines),
                "\t".join([rng.choice(["*k[]", "*k[f#]", "*k[b-]", "*k[f#c#]", "*k[b-e-a-]"])] * spines),
                "\t".join([rng.choice(["*M4/4", "*M3/4", "*M2/4", "*M6/8"])] * spines)]
        lines = list(head)
        for m in range(1, rng.randint(2, 6)):
            lines.append("\t".join([f"={m}"] * spines))
            for _ in range(rng.randint(2, 6)):
                def note():
                    p = rng.choice(pitches) * rng.choice([1, 1, 2])
                    return f"{rng.choice(['1', '2', '4', '8', '16', '4.', '8.'])}{p}{rng.choice(['', '', '#', '-', 'n'])}{rng.choice(['', '', 'L', 'J', ';'])}"
                lines.append("\t".join(note() if rng.random() > 0.1 else f"{rng.choice('248')}r" for _ in range(spines)))
        lines.append("\t".join(["=="] * spines))
        lines.append("\t".join(["*-"] * spines))
        yield "\n".join(lines)


def _smiles(rng: random.Random):
    known = ["CC(=O)OC1=CC=CC=C1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "C1=CC=C(C=C1)O", "CCO", "O=C=O",
             "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O", "C1CCCCC1", "c1ccccc1", "N[C@@H](C)C(=O)O", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
             "CC(=O)NC1=CC=C(C=C1)O", "C1=CC2=C(C=C1)C=CC=C2", "Cl/C=C/Cl", "[Na+].[Cl-]", "CC#N", "FC(F)(F)C(=O)O"]
    atoms = ["C", "C", "C", "N", "O", "c", "n", "S", "F", "Cl", "Br", "[C@H]", "[C@@H]", "[NH3+]", "[O-]"]
    while True:
        if rng.random() < 0.3:
            yield rng.choice(known)
            continue
        s, ring = [], 1
        for _ in range(rng.randint(3, 25)):
            r = rng.random()
            if r < 0.12:
                s.append(f"({rng.choice(atoms)}{rng.choice(['', '=O', 'C', 'O'])})")
            elif r < 0.2:
                s.append(f"{rng.choice(atoms)}{ring}")
                ring = ring % 9 + 1
            else:
                s.append(rng.choice(["", "", "=", "#"]) + rng.choice(atoms))
        yield "".join(s)


def _code(rng: random.Random):
    import argparse as m1, json.decoder as m2, textwrap as m3, dataclasses as m4, string as m5, heapq as m6, csv as m7, fractions as m8

    blocks = []
    for mod in (m1, m2, m3, m4, m5, m6, m7, m8):
        src = inspect.getsource(mod)
        blocks += [b for b in src.split("\n\n") if b.strip()]
    snippets = ["for (int i = 0; i < n; ++i) {\n    sum += a[i] * b[i];\n}", "const x = arr.map((v) => v * 2).filter(Boolean);",
                "SELECT name, COUNT(*) FROM users WHERE age > 18 GROUP BY name;", "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
                "def f(x: int) -> int:\n    return x ** 2 + 1", "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
                "{'title': 'Sales', 'x': ['Q1', 'Q2', 'Q3'], 'y': [12.5, 30.1, 27.0]}", "<div class=\"row\"><span>text</span></div>"]
    while True:
        yield rng.choice(blocks) if rng.random() < 0.8 else rng.choice(snippets)


def _misc(rng: random.Random):
    emoji = "😀😂🥲😍🤔👍🙏🔥✨🎉❤️🇨🇳🇺🇸👩‍💻"
    while True:
        r = rng.random()
        if r < 0.3:
            yield " ".join(str(rng.randint(0, 10**rng.randint(1, 9))) for _ in range(rng.randint(1, 8)))
        elif r < 0.5:
            yield "".join(rng.choice(emoji) for _ in range(rng.randint(1, 6)))
        elif r < 0.6:  # GOT's own prompt text, so the chat template encodes compactly
            yield rng.choice(["system\nYou should follow the instructions carefully and explain your answers in detail.",
                              "user\n", "assistant\n", "OCR: ", "OCR with format: ", "OCR with format upon the patch reference: ",
                              "OCR upon the patch reference: ", "OCR with format across multi pages: ", "[red] OCR: ", "[green] OCR with format: "])
        elif r < 0.7:
            yield "\n".join(" " * rng.randint(0, 8) + "-" * rng.randint(0, 20) for _ in range(3))
        else:
            yield "".join(rng.choice("，。、；：？！“”‘’（）《》【】…—·") for _ in range(rng.randint(1, 10)))


def build_corpus(total_chars: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    sub = lambda: random.Random(rng.randrange(2**31))
    en_words = _wordfreq_sentences(sub(), "en", " ", ".,;:?!")
    streams = {
        "en": _mix_stream(sub(), en_words, _faker_text(sub(), "en_US")),
        "zh": _mix_stream(sub(), _wordfreq_sentences(sub(), "zh", "", "。，；：？！"), _faker_text(sub(), "zh_CN")),
        "ja": _mix_stream(sub(), _wordfreq_sentences(sub(), "ja", "", "。、"), _faker_text(sub(), "ja_JP")),
        "ko": _mix_stream(sub(), _wordfreq_sentences(sub(), "ko", " ", ".,?"), _faker_text(sub(), "ko_KR")),
        "latex": _latex(sub()), "table": _table(sub(), en_words), "code": _code(sub()), "kern": _kern(sub()),
        "smiles": _smiles(sub()), "misc": _misc(sub()),
    }
    docs = []
    for name, share in MIX.items():
        budget = int(total_chars * share)
        while budget > 0:
            d = next(streams[name])
            docs.append(d)
            budget -= len(d)
    random.Random(seed).shuffle(docs)
    return docs


# ---- training and conversion ---------------------------------------------------------------------
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode, the alphabet `tokenizers`' ByteLevel uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def train_ranks(docs: list[str], num_ranks: int) -> dict[bytes, int]:
    """Train a byte-level BPE with `tokenizers`, then turn its merges into tiktoken ranks:
    the 256 bytes get ranks 0..255 and merge i gets rank 256+i (tiktoken merges lowest rank first,
    which is the BPE merge order)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    # ask for a few extra so that any duplicate byte strings can be dropped and still leave exactly num_ranks
    trainer = trainers.BpeTrainer(vocab_size=num_ranks + 64, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(docs, trainer, length=len(docs))
    import json

    merges = json.loads(tok.to_str())["model"]["merges"]
    dec = _byte_decoder()
    to_bytes = lambda s: bytes(dec[c] for c in s)
    ranks = {bytes([b]): b for b in range(256)}
    for m in merges:
        a, b = m.split(" ") if isinstance(m, str) else m
        token = to_bytes(a) + to_bytes(b)
        if token not in ranks:
            ranks[token] = len(ranks)
        if len(ranks) == num_ranks:
            break
    if len(ranks) != num_ranks:
        raise ValueError(f"corpus too small: only {len(ranks)} ranks learned, {num_ranks} wanted")
    return ranks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_RANKS_FILE))
    p.add_argument("--ranks", type=int, default=16384, help="number of BPE ranks (256 bytes + merges)")
    p.add_argument("--corpus-mb", type=float, default=4.0, help="corpus size in millions of characters")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    t0 = time.time()
    docs = build_corpus(int(args.corpus_mb * 1e6), args.seed)
    chars = sum(map(len, docs))
    print(f"corpus: {len(docs)} documents, {chars / 1e6:.2f} M chars, {sum(len(d.encode()) for d in docs) / 1e6:.2f} MB "
          f"({time.time() - t0:.1f} s)")
    t1 = time.time()
    ranks = train_ranks(docs, args.ranks)
    print(f"trained {len(ranks)} ranks in {time.time() - t1:.1f} s")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_ranks_file(ranks, out)
    tok = GOTTokenizer.from_ranks_file(out)
    n_tok = sum(len(tok.encode_ordinary(d)) for d in docs[:2000])
    n_chr = sum(len(d) for d in docs[:2000])
    bad = sum(tok.decode(tok.encode_ordinary(d)) != d for d in docs)
    print(f"wrote {out} (sha256 {hashlib.sha256(out.read_bytes()).hexdigest()[:16]}), vocab with specials {tok.vocab_size}, "
          f"{n_chr / n_tok:.2f} chars/token on the corpus, round-trip failures: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
