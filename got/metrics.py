"""OCR metrics as GOT / Fox report them, with the public script's faults fixed.

Page metrics (docs/got_facts.md §6): normalized edit distance = Levenshtein(pred, gt) / max(len); precision / recall / F1
over token SETS (whitespace tokens, or jieba words when either side holds Chinese); sentence BLEU-4 and METEOR.
The public GOT script calls `precision(reference, hypothesis)` with pred and gt swapped, so its precision and
recall trade places; here precision = |pred ∩ gt| / |pred| and recall = |pred ∩ gt| / |gt|.

METEOR runs offline: nltk's `meteor_score` normally matches exact words, Porter stems and WordNet synonyms, and
the last needs the WordNet download. We hand it a WordNet stand-in with no synonyms, so METEOR here is
exact + stem matching (same fragmentation penalty and alpha/beta/gamma as nltk). Scores can be a little lower than
with WordNet on prose; OCR output rarely differs from its reference by a synonym.

Also: CER / WER (edits / reference length, summed over a corpus), scene-text word accuracy after the
36-character normalization of the OCR scaling-law study, and a weighted average by sample count across data
sets. For formatted output (`OCR with format:`), `split_format` cuts Mathpix-style markdown into math, tables and
the remaining text so each part is scored on its own.

Empty text. The GOT / Fox scripts divide by max(len) (edit distance) and by set sizes (F1), so they crash or
return None on empty strings; here every metric is defined, per sample, as "nothing to read, nothing read is
perfect; one side empty is all wrong" (tokens: whitespace-only text has none):

    pred / truth        edit_distance  precision recall f1  bleu  meteor  cer / wer  word_acc
    both empty          0              1         1      1   1     1       0          1
    pred empty          1              0         0      0   0     0       1          0
    truth empty         1              0         0      0   0     0       1 (capped) 0

Corpus forms: edit distance, F1, precision, recall, BLEU, METEOR and word accuracy are means over samples (as
GOT reports), so an empty sample counts with the values above; CER / WER are total edits / total reference
length, where an empty truth's prediction counts as insertions (`corpus_error_rates`), never as perfect.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping, Sequence

from rapidfuzz.distance import Levenshtein

PAGE_METRICS = ("edit_distance", "f1", "precision", "recall", "bleu", "meteor", "cer", "wer", "word_acc")
FORMAT_PARTS = ("text", "math", "table")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NOT_ALNUM36 = re.compile(r"[^0-9a-z]")


# ----------------------------------------------------------------------------------------------------- tokens
def has_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def _jieba():
    import jieba  # imported lazily: building its prefix dictionary costs ~1 s

    jieba.setLogLevel(60)
    return jieba


def tokenize(text: str, chinese: bool | None = None) -> list[str]:
    """Whitespace tokens, or jieba words (whitespace dropped) when `chinese` (default: text holds CJK)."""
    if chinese is None:
        chinese = has_chinese(text)
    if not chinese:
        return text.split()
    return [w for w in _jieba().lcut(text) if w.strip()]


def tokenize_pair(pred: str, gt: str) -> tuple[list[str], list[str]]:
    """Both sides tokenized the same way: jieba if EITHER holds Chinese (as the GOT/Fox script does)."""
    chinese = has_chinese(pred) or has_chinese(gt)
    return tokenize(pred, chinese), tokenize(gt, chinese)


# ----------------------------------------------------------------------------------------------- edit distance
def edit_distance(pred: str | Sequence[str], gt: str | Sequence[str]) -> int:
    """Levenshtein distance (unit costs) over characters, or over tokens when given lists."""
    return Levenshtein.distance(pred, gt)


def normalized_edit_distance(pred: str, gt: str) -> float:
    """Levenshtein / max(len(pred), len(gt)) in [0, 1]; two empty strings are identical (0)."""
    longest = max(len(pred), len(gt))
    return Levenshtein.distance(pred, gt) / longest if longest else 0.0


def _error_rate(edits: int, ref_len: int, hyp_len: int) -> float:
    """edits / ref_len; with nothing to read (ref_len 0) any output is all error, capped at 1, and none is 0."""
    if ref_len:
        return edits / ref_len
    return 0.0 if hyp_len == 0 else 1.0


def cer(pred: str, gt: str) -> float:
    """Character error rate: character edits / len(gt) (can exceed 1 when pred is much longer)."""
    return _error_rate(Levenshtein.distance(pred, gt), len(gt), len(pred))


def wer(pred: str, gt: str) -> float:
    """Word error rate: token edits / number of gt tokens (jieba words for Chinese)."""
    p, g = tokenize_pair(pred, gt)
    return _error_rate(Levenshtein.distance(p, g), len(g), len(p))


def corpus_error_rates(preds: Sequence[str], gts: Sequence[str]) -> dict[str, float]:
    """Corpus CER / WER: total edits / total reference length, so long pages weigh more (the usual definition).

    Empty inputs follow the per-sample rule (`cer`, `wer`), so a one-sample corpus scores what its sample does:
    - an empty truth adds 0 to the reference length, and its prediction's characters / words to the edits (all
      insertions): it is never free. ["hello", "abc"] vs ["hello", ""] -> CER (0 + 3) / (5 + 0) = 0.6.
    - an empty prediction against a non-empty truth adds the truth's length to both (all deletions).
    - when the whole corpus has nothing to read (every truth empty), the rate is 1.0 if anything was predicted
      (capped, as per sample) and 0.0 if nothing was; an empty corpus is 0.0.
    """
    ce = cn = we = wn = 0
    for pred, gt in zip(preds, gts, strict=True):
        ce += Levenshtein.distance(pred, gt)
        cn += len(gt)
        p, g = tokenize_pair(pred, gt)
        we += Levenshtein.distance(p, g)
        wn += len(g)
    # with cn == 0 every edit is an insertion, so `ce` is also the predicted length
    return {"cer": _error_rate(ce, cn, ce), "wer": _error_rate(we, wn, we)}


# -------------------------------------------------------------------------------------------- token-set P/R/F1
def precision_recall_f1(pred_tokens: Iterable[str], gt_tokens: Iterable[str]) -> tuple[float, float, float]:
    """Over token SETS: precision = |pred ∩ gt| / |pred|, recall = |pred ∩ gt| / |gt|, F1 their harmonic mean.

    Both empty scores 1 (nothing to read, nothing read); one side empty scores 0.
    """
    p_set, g_set = set(pred_tokens), set(gt_tokens)
    if not p_set and not g_set:
        return 1.0, 1.0, 1.0
    if not p_set or not g_set:
        return 0.0, 0.0, 0.0
    hit = len(p_set & g_set)
    precision, recall = hit / len(p_set), hit / len(g_set)
    f1 = 2 * precision * recall / (precision + recall) if hit else 0.0
    return precision, recall, f1


# ---------------------------------------------------------------------------------------------- BLEU / METEOR
def bleu(pred_tokens: Sequence[str], gt_tokens: Sequence[str]) -> float:
    """Sentence BLEU-4, uniform weights, no smoothing: nltk's default, which GOT / Fox numbers use.

    Without smoothing a text shorter than 4 tokens scores 0 unless both are empty (then 1).
    """
    from nltk.translate.bleu_score import sentence_bleu

    if not pred_tokens and not gt_tokens:
        return 1.0
    if not pred_tokens or not gt_tokens:
        return 0.0
    with warnings.catch_warnings():  # nltk warns on every zero n-gram overlap; the value (0) is what we want
        warnings.simplefilter("ignore")
        score = float(sentence_bleu([list(gt_tokens)], list(pred_tokens)))
    return score if score > 1e-9 else 0.0  # nltk returns ~1e-155 rather than 0 when an n-gram order has no hit


class _NoSynonyms:
    """WordNet stand-in for nltk's METEOR: no synonyms, so only exact and stem matches align (offline)."""

    @staticmethod
    def synsets(word: str) -> list:
        return []


def meteor(pred_tokens: Sequence[str], gt_tokens: Sequence[str]) -> float:
    """METEOR (alpha 0.9, beta 3, gamma 0.5, lower-cased) with exact + Porter-stem matching; no WordNet."""
    from nltk.translate.meteor_score import meteor_score

    if not pred_tokens and not gt_tokens:
        return 1.0
    return float(meteor_score([list(gt_tokens)], list(pred_tokens), wordnet=_NoSynonyms()))


# --------------------------------------------------------------------------------------------------- scene text
def normalize_word(text: str) -> str:
    """Scene-text normalization (36 characters): lower-case, then delete everything outside 0-9a-z."""
    return _NOT_ALNUM36.sub("", text.lower())


def word_correct(pred: str, gt: str) -> bool:
    """Scene-text exact match after the 36-character normalization. A ground truth with nothing left after it
    (Chinese, symbols) is compared with whitespace removed instead, so it is not trivially right."""
    g = normalize_word(gt)
    if g:
        return normalize_word(pred) == g
    return "".join(pred.split()) == "".join(gt.split())


def word_accuracy(preds: Sequence[str], gts: Sequence[str]) -> float:
    """Fraction of samples whose normalized prediction equals the normalized ground truth."""
    if not gts:
        raise ValueError("word_accuracy: no samples")
    return sum(word_correct(p, g) for p, g in zip(preds, gts, strict=True)) / len(gts)


def weighted_average(scores: Mapping[str, tuple[float, int]]) -> float:
    """Average of per-data-set scores weighted by sample count: {name: (score, n)} -> sum(score*n) / sum(n)."""
    total = sum(n for _, n in scores.values())
    if total <= 0:
        raise ValueError("weighted_average: the data sets hold no samples")
    return sum(score * n for score, n in scores.values()) / total


# ---------------------------------------------------------------------------------------------- per sample
def page_metrics(pred: str, gt: str) -> dict[str, float]:
    """Every page metric for one (prediction, ground truth) pair."""
    p_tok, g_tok = tokenize_pair(pred, gt)
    precision, recall, f1 = precision_recall_f1(p_tok, g_tok)
    return {
        "edit_distance": normalized_edit_distance(pred, gt),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "bleu": bleu(p_tok, g_tok),
        "meteor": meteor(p_tok, g_tok),
        "cer": cer(pred, gt),
        "wer": _error_rate(Levenshtein.distance(p_tok, g_tok), len(g_tok), len(p_tok)),
        "word_acc": float(word_correct(pred, gt)),
    }


# --------------------------------------------------------------------------------------------- formatted output
_MATH = re.compile(
    r"\\\((?P<inline>.*?)(?<!\\)\\\)"  # \( ... \)
    r"|\\\[(?P<display>.*?)(?<!\\)\\\]"  # \[ ... \]
    r"|\$\$(?P<dollars>.+?)\$\$",  # $$ ... $$
    re.S,
)
_TABULAR = re.compile(r"\\begin\{tabular\}.*?(?:\\end\{tabular\}|\Z)", re.S)
_MD_TABLE = re.compile(r"(?:^[ \t]*\|.*\|[ \t]*(?:\n|\Z)){2,}", re.M)  # >= 2 consecutive |...| lines
_MD_RULE = re.compile(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)*\|?[ \t]*$", re.M)


def split_format(text: str) -> dict[str, str]:
    """Split Mathpix-style markdown into {"text", "math", "table"}.

    table: LaTeX `tabular` environments and markdown pipe tables (a `|---|` rule line required), whole.
    math:  the insides of \\( \\), \\[ \\] and $$ $$ outside tables, one per line.
    text:  what is left, with each removed span replaced by a space and runs of blanks collapsed.
    """
    tables: list[str] = []

    def take_table(m: re.Match) -> str:
        tables.append(m.group(0).strip())
        return " "

    rest = _TABULAR.sub(take_table, text)
    rest = _MD_TABLE.sub(lambda m: take_table(m) if _MD_RULE.search(m.group(0)) else m.group(0), rest)
    maths: list[str] = []

    def take_math(m: re.Match) -> str:
        maths.append(next(g for g in m.groups() if g is not None).strip())
        return " "

    rest = _MATH.sub(take_math, rest)
    rest = re.sub(r"[ \t]+", " ", rest)
    rest = "\n".join(line.strip() for line in rest.splitlines())
    return {"text": re.sub(r"\n{3,}", "\n\n", rest).strip(), "math": "\n".join(maths), "table": "\n".join(tables)}


def format_metrics(pred: str, gt: str) -> dict[str, dict[str, float] | None]:
    """Page metrics per part of formatted output; a part absent from BOTH sides is None (not scored)."""
    p, g = split_format(pred), split_format(gt)
    return {part: page_metrics(p[part], g[part]) if (p[part] or g[part]) else None for part in FORMAT_PARTS}


# ------------------------------------------------------------------------------------------------- aggregation
def mean_metrics(rows: Sequence[Mapping[str, float] | None]) -> dict[str, float]:
    """Per-key mean over the rows that exist (None rows = part absent); {"n": count} included."""
    rows = [r for r in rows if r is not None]
    out: dict[str, float] = {"n": len(rows)}
    for key in PAGE_METRICS:
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = sum(values) / len(values)
    return out


def score_corpus(preds: Sequence[str], gts: Sequence[str], formatted: bool = False) -> tuple[list[dict], dict]:
    """Per-sample metrics and a summary. Summary: sample means (as GOT reports), except CER / WER, which are
    corpus rates (total edits / total reference length). With `formatted`, also per-part summaries."""
    if len(preds) != len(gts):
        raise ValueError(f"score_corpus: {len(preds)} predictions for {len(gts)} ground truths")
    per_sample = [page_metrics(p, g) for p, g in zip(preds, gts)]
    summary = mean_metrics(per_sample)
    if preds:
        summary.update(corpus_error_rates(preds, gts))
    if formatted:
        parts = [format_metrics(p, g) for p, g in zip(preds, gts)]
        for row, part in zip(per_sample, parts):
            row["parts"] = part
        summary["parts"] = {name: mean_metrics([p[name] for p in parts]) for name in FORMAT_PARTS}
    return per_sample, summary
