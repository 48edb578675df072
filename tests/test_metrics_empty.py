"""Empty prediction, empty truth, both empty (issue 13): every metric defined, per sample and corpus-wide, and the
corpus CER / WER never call an empty truth with a non-empty prediction perfect."""
import pytest

from got import metrics as M

# per sample: nothing to read and nothing read is perfect; one side empty is all wrong
PERFECT = dict(edit_distance=0.0, precision=1.0, recall=1.0, f1=1.0, bleu=1.0, meteor=1.0, cer=0.0, wer=0.0,
               word_acc=1.0)
ALL_WRONG = dict(edit_distance=1.0, precision=0.0, recall=0.0, f1=0.0, bleu=0.0, meteor=0.0, cer=1.0, wer=1.0,
                 word_acc=0.0)
CASES = [  # (pred, truth, expected page metrics)
    ("", "", PERFECT),
    ("", "the cat sat on the mat", ALL_WRONG),  # all deletions: 22 char edits / 22, 6 words / 6
    ("the cat sat on the mat", "", ALL_WRONG),  # all insertions, capped at 1 per sample
    ("", "我爱北京天安门", ALL_WRONG),  # Chinese: jieba words, same rule
    ("我爱北京天安门", "", ALL_WRONG),
]


@pytest.mark.parametrize("pred,gt,expected", CASES, ids=["both empty", "pred empty", "truth empty",
                                                         "pred empty zh", "truth empty zh"])
def test_page_metrics_of_empty_text(pred, gt, expected):
    m = M.page_metrics(pred, gt)
    assert m == pytest.approx(expected)
    assert M.cer(pred, gt) == expected["cer"] and M.wer(pred, gt) == expected["wer"]
    assert M.normalized_edit_distance(pred, gt) == expected["edit_distance"]
    # a one-sample corpus scores what its sample does, in every form
    _, summary = M.score_corpus([pred], [gt])
    assert {k: summary[k] for k in expected} == pytest.approx(expected)
    assert M.corpus_error_rates([pred], [gt]) == pytest.approx({"cer": expected["cer"], "wer": expected["wer"]})


def test_the_issue_case_empty_truth_is_not_a_perfect_corpus():
    # `got eval` reported corpus CER 0.0 / WER 0.0 here while the per-sample CER was 1.0
    assert M.corpus_error_rates(["some text"], [""]) == {"cer": 1.0, "wer": 1.0}
    _, summary = M.score_corpus(["some text", "x y"], ["", ""])
    assert summary["cer"] == 1.0 and summary["wer"] == 1.0 and summary["f1"] == 0.0 and summary["bleu"] == 0.0


def test_empty_truth_in_a_corpus_counts_its_insertions():
    # chars: (0 + 3 inserted) / (5 + 0); words: (0 + 1 inserted) / (1 + 0)
    assert M.corpus_error_rates(["hello", "abc"], ["hello", ""]) == pytest.approx({"cer": 3 / 5, "wer": 1.0})
    # the empty truth raises the rate above what the non-empty sample alone scores
    alone = M.corpus_error_rates(["helo"], ["hello"])
    both = M.corpus_error_rates(["helo", "extra words"], ["hello", ""])
    assert alone == pytest.approx({"cer": 1 / 5, "wer": 1.0})
    assert both == pytest.approx({"cer": (1 + 11) / 5, "wer": (1 + 2) / 1})


def test_empty_prediction_in_a_corpus_counts_its_deletions():
    # chars: (1 + 3 deleted) / (5 + 3); words: (1 + 1) / (1 + 1)
    assert M.corpus_error_rates(["helo", ""], ["hello", "abc"]) == pytest.approx({"cer": 4 / 8, "wer": 2 / 2})


def test_nothing_to_read_and_nothing_read():
    assert M.corpus_error_rates(["", ""], ["", ""]) == {"cer": 0.0, "wer": 0.0}
    assert M.corpus_error_rates([], []) == {"cer": 0.0, "wer": 0.0}
    per_sample, summary = M.score_corpus(["", ""], ["", ""])
    assert summary["n"] == 2 and {k: summary[k] for k in PERFECT} == pytest.approx(PERFECT)
    assert all(row == pytest.approx(PERFECT) for row in per_sample)


def test_corpus_means_count_empty_samples():
    # ED / F1 / BLEU / METEOR / word accuracy are sample means: one perfect sample and one empty-truth sample
    _, summary = M.score_corpus(["a b c d", "junk"], ["a b c d", ""])
    for key in ("f1", "precision", "recall", "bleu", "word_acc"):
        assert summary[key] == pytest.approx(0.5), key
    # METEOR of the identical sample: 4 matches in 1 chunk, penalty 0.5 * (1/4)^3; the empty-truth one scores 0
    assert summary["meteor"] == pytest.approx((1 - 0.5 / 64) / 2)
    assert summary["edit_distance"] == pytest.approx(0.5)
    assert summary["cer"] == pytest.approx(4 / 7)  # 4 inserted chars over the 7 of "a b c d"
    assert summary["wer"] == pytest.approx(1 / 4)  # 1 inserted word over 4


def test_whitespace_only_text_has_characters_but_no_words():
    # characters count for ED / CER; tokens do not exist, so the token metrics see two empty sides
    m = M.page_metrics("  ", "")
    assert m["edit_distance"] == 1.0 and m["cer"] == 1.0
    assert m["wer"] == 0.0 and m["f1"] == 1.0 and m["bleu"] == 1.0
    assert M.corpus_error_rates(["  "], [""]) == {"cer": 1.0, "wer": 0.0}


def test_non_empty_corpus_rates_unchanged():
    # the usual definition where there is something to read: total edits / total reference length
    rates = M.corpus_error_rates(["helo", "abc"], ["hello", "abc"])
    assert rates == pytest.approx({"cer": 1 / 8, "wer": 1 / 2})
    assert M.corpus_error_rates(["abcdefgh"], ["ab"])["cer"] == pytest.approx(3.0)  # may exceed 1 (not capped)
