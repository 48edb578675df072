"""Every metric against values worked out by hand (the arithmetic is in the comments)."""
import pytest

from got import metrics as M


def test_normalized_edit_distance():
    # kitten -> sitting: k->s, e->i, +g = 3 edits; max len 7
    assert M.normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert M.normalized_edit_distance("abc", "abc") == 0.0
    assert M.normalized_edit_distance("", "") == 0.0
    assert M.normalized_edit_distance("", "abcd") == 1.0
    # symmetric, and the denominator is the LONGER string: "ab" vs "abcd" = 2 inserts / 4
    assert M.normalized_edit_distance("ab", "abcd") == M.normalized_edit_distance("abcd", "ab") == 0.5


def test_precision_recall_not_swapped():
    # pred {the, cat, sat}, gt {the, cat, sat, down}: all 3 predicted tokens are right -> precision 1;
    # 3 of 4 gt tokens were found -> recall 3/4; F1 = 2*1*0.75/1.75 = 6/7. (The public GOT script reports 0.75 / 1.)
    p, r, f = M.precision_recall_f1("the cat sat".split(), "the cat sat down".split())
    assert (p, r, f) == pytest.approx((1.0, 0.75, 6 / 7))
    # sets, not bags: "a a a b" vs "a c" -> pred {a, b}, gt {a, c}: 1/2, 1/2, 1/2
    assert M.precision_recall_f1("a a a b".split(), "a c".split()) == pytest.approx((0.5, 0.5, 0.5))
    assert M.precision_recall_f1([], []) == (1.0, 1.0, 1.0)
    assert M.precision_recall_f1([], ["x"]) == (0.0, 0.0, 0.0)
    assert M.precision_recall_f1(["y"], ["x"]) == (0.0, 0.0, 0.0)


def test_chinese_uses_jieba_words():
    pred, gt = M.tokenize_pair("我爱北京", "我爱天安门")
    assert pred == ["我", "爱", "北京"] and gt == ["我", "爱", "天安门"]
    # whitespace never becomes a token (jieba.lcut alone would return ' ')
    assert M.tokenize("北京 天安门") == ["北京", "天安门"]
    m = M.page_metrics("我爱北京", "我爱天安门")
    # chars: 北京 -> 天安门 = 2 substitutions + 1 insertion = 3 edits, max len 5 -> 0.6
    assert m["edit_distance"] == pytest.approx(0.6)
    assert m["cer"] == pytest.approx(3 / 5)
    # words {我,爱,北京} vs {我,爱,天安门}: 2/3 each way
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # WER over jieba words: 1 substitution / 3 words
    assert m["wer"] == pytest.approx(1 / 3)
    # METEOR: 2 matches in 1 chunk; P = R = 2/3 -> Fmean = 2/3; penalty 0.5*(1/2)^3 = 1/16 -> 2/3 * 15/16 = 0.625
    assert m["meteor"] == pytest.approx(0.625)
    # no 3- or 4-gram in common -> unsmoothed BLEU-4 is 0
    assert m["bleu"] == 0.0


def test_bleu():
    assert M.bleu("the cat sat on the mat".split(), "the cat sat on the mat".split()) == pytest.approx(1.0)
    # a b c d e vs a b c d f: p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2, equal length -> BP 1;
    # geometric mean = (4/5 * 3/4 * 2/3 * 1/2)^(1/4) = (1/5)^(1/4)
    assert M.bleu("a b c d e".split(), "a b c d f".split()) == pytest.approx(0.2 ** 0.25)
    # brevity penalty: hyp "a b c d" (4) vs ref "a b c d e" (5): all p_n = 1, BP = exp(1 - 5/4)
    assert M.bleu("a b c d".split(), "a b c d e".split()) == pytest.approx(2.718281828459045 ** (1 - 5 / 4))
    assert M.bleu([], []) == 1.0 and M.bleu([], ["a"]) == 0.0


def test_meteor_offline_exact_and_stem():
    # METEOR must not need the WordNet download: make sure it is really absent here, then score.
    import nltk

    with pytest.raises(LookupError):
        nltk.data.find("corpora/wordnet")
    # cats ~ cat through the Porter stem: 3 matches, 1 chunk, P = R = 1; penalty 0.5*(1/3)^3 = 1/54
    assert M.meteor("the cats sat".split(), "the cat sat".split()) == pytest.approx(1 - 1 / 54)
    # same words, scrambled: alignment (0->2), (1->0), (2->1) is 2 chunks; penalty 0.5*(2/3)^3 = 4/27
    assert M.meteor("sat the cat".split(), "the cat sat".split()) == pytest.approx(1 - 4 / 27)
    # partial: hyp "the dog sat" vs ref "the cat sat": 2 matches in 2 chunks, P = R = 2/3 -> Fmean 2/3;
    # penalty 0.5*(2/2)^3 = 0.5 -> 1/3
    assert M.meteor("the dog sat".split(), "the cat sat".split()) == pytest.approx(1 / 3)
    # case-insensitive, as nltk lower-cases
    assert M.meteor(["The"], ["the"]) == pytest.approx(1 - 0.5)  # 1 match, 1 chunk: penalty 0.5*1^3


def test_cer_wer():
    assert M.cer("helo", "hello") == pytest.approx(1 / 5)
    assert M.cer("", "") == 0.0 and M.cer("x", "") == 1.0
    # CER may exceed 1 when the prediction rambles: 6 inserts over 2 chars
    assert M.cer("abcdefgh", "ab") == pytest.approx(3.0)
    # WER: "the cat sat" vs "the bat sat down": 1 substitution + 1 insertion over 4 gt words
    assert M.wer("the cat sat", "the bat sat down") == pytest.approx(2 / 4)
    # corpus rates sum edits and lengths: (1 + 0) char edits / (5 + 3) chars; (1 + 0) words / (1 + 1) words
    rates = M.corpus_error_rates(["helo", "abc"], ["hello", "abc"])
    assert rates["cer"] == pytest.approx(1 / 8) and rates["wer"] == pytest.approx(1 / 2)


def test_scene_word_accuracy():
    assert M.normalize_word("Hello, World!") == "helloworld"
    assert M.normalize_word("CAFÉ-42") == "caf42"  # É is outside 0-9a-z
    preds = ["HELLO!", "w0rld", "Text", "街道"]
    gts = ["hello", "world", "t-e-x-t", "街道"]
    # hello == hello; w0rld != world; text == text; Chinese (nothing left after normalization) compared raw -> equal
    assert M.word_accuracy(preds, gts) == pytest.approx(3 / 4)
    assert M.word_correct("街", "街道") is False  # an empty normalization does not make it right


def test_weighted_average_by_sample_count():
    # IIIT5k 3000 @ 0.9 and CUTE80 288 @ 0.5 -> (2700 + 144) / 3288
    assert M.weighted_average({"IIIT5k": (0.9, 3000), "CUTE80": (0.5, 288)}) == pytest.approx(2844 / 3288)
    with pytest.raises(ValueError):
        M.weighted_average({"x": (1.0, 0)})


def test_split_format():
    doc = ("Intro \\(x^2\\) and\n\\[E=mc^2\\]\n"
           "\\begin{tabular}{cc} a & b \\\\ \\end{tabular}\n"
           "| h1 | h2 |\n|---|---|\n| 1 | 2 |\n"
           "then $$y$$ end. A | pipe | in text stays.")
    parts = M.split_format(doc)
    assert parts["math"] == "x^2\nE=mc^2\ny"
    assert parts["table"] == "\\begin{tabular}{cc} a & b \\\\ \\end{tabular}\n| h1 | h2 |\n|---|---|\n| 1 | 2 |"
    assert parts["text"] == "Intro and\n\nthen end. A | pipe | in text stays."
    # escaped delimiters \\) inside math do not end it early
    assert M.split_format("\\(a\\\\)b\\)")["math"] == "a\\\\)b"


def test_format_metrics_and_corpus():
    gt = "Area \\(\\pi r^2\\) of a circle."
    pred = "Area \\(\\pi r^3\\) of a circle."
    parts = M.format_metrics(pred, gt)
    assert parts["table"] is None  # neither side has a table: not scored
    assert parts["text"]["edit_distance"] == 0.0
    # math "\pi r^3" vs "\pi r^2": 1 edit over 7 chars
    assert parts["math"]["edit_distance"] == pytest.approx(1 / 7)
    per_sample, summary = M.score_corpus([pred, "x"], [gt, "y"], formatted=True)
    assert summary["n"] == 2 and summary["parts"]["math"]["n"] == 1 and summary["parts"]["table"]["n"] == 0
    # mean of per-sample ED: (1/30 + 1) / 2
    assert summary["edit_distance"] == pytest.approx((1 / len(gt) + 1.0) / 2)
    assert per_sample[0]["parts"]["math"]["edit_distance"] == pytest.approx(1 / 7)
    with pytest.raises(ValueError):
        M.score_corpus(["a"], [])
