"""Metrics against hand-computed values; the arithmetic is in the comments so a reader can check it."""

import math

import pytest

from mm1lab.eval.metrics import (
    bleu,
    character_error_rate,
    cider_d,
    counting_metrics,
    exact_match,
    levenshtein,
    majority_baseline,
    multiple_choice_accuracy,
    normalize_vqa_answer,
    ocr_metrics,
    parse_count,
    parse_yes_no,
    pope_metrics,
    ptb_tokenize,
    vqa_accuracy,
)

# ------------------------------------------------------------------------------------------------ tokenisation


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A man's dog, running!", ["a", "man", "'s", "dog", "running"]),
        ("Don't stop.", ["do", "n't", "stop"]),
        ('A "black-and-white" photo (old).', ["a", "black-and-white", "photo", "old"]),
    ],
)
def test_ptb_tokenize(text, tokens):
    assert ptb_tokenize(text) == tokens


# ------------------------------------------------------------------------------------------------ CIDEr-D


def test_cider_d_two_image_corpus_by_hand():
    # N = 2 images, ref_len = log 2. Document frequencies (from references only):
    #   "a": 2 -> idf log2 - log2 = 0;  "cat", "dog", "a cat", "a dog": 1 -> idf log2;  unseen n-grams: df 0 ->
    #   log(max(1, 0)) = 0 -> idf log2.  Write L = log 2.
    # Image 1, "a cat" vs "a cat": unigram vectors {a: 0, cat: L} -> cos 1; bigram {a cat: L} -> cos 1;
    #   no 3/4-grams -> 0; bigram lengths 1 vs 1 -> penalty 1.  10 * (1 + 1 + 0 + 0) / 4 = 5.0
    # Image 2, "a dog runs" vs "a dog":
    #   unigrams: hyp {a: 0, dog: L, runs: L} (norm L*sqrt2), ref {a: 0, dog: L} (norm L) -> L^2 / (L^2 sqrt2) = 1/sqrt2
    #   bigrams:  hyp {a dog: L, dog runs: L} (norm L*sqrt2), ref {a dog: L} -> 1/sqrt2
    #   trigram:  ref has none (norm 0) -> 0;  4-grams: none -> 0
    #   length = #bigrams: 2 vs 1 -> delta 1 -> penalty exp(-1 / (2 * 6^2)) = exp(-1/72)
    #   10 * (2 / sqrt2) * exp(-1/72) / 4 = 2.5 * sqrt2 * exp(-1/72) ~= 3.4867
    refs = {"img1": ["a cat"], "img2": ["a dog"]}
    corpus, per_item = cider_d({"img1": "A cat.", "img2": "a dog runs"}, refs)
    expected2 = 2.5 * math.sqrt(2) * math.exp(-1 / 72)
    assert per_item["img1"] == pytest.approx(5.0)
    assert per_item["img2"] == pytest.approx(expected2)
    assert corpus == pytest.approx((5.0 + expected2) / 2)
    # the identical caption beats the partial one, and a caption of the other image scores 0 (only "a" overlaps,
    # and "a" occurs in every image's references, so its idf is 0)
    assert per_item["img1"] > per_item["img2"]
    assert cider_d({"img1": "a cat", "img2": "a cat"}, refs)[1]["img2"] == pytest.approx(0.0)


def test_cider_d_averages_over_references():
    # Adding an unrelated second reference ("one bird", all its n-grams have df 1) to image 1 leaves the other
    # idfs unchanged, and the candidate scores 0 against it: (5.0 + 0) / 2 references = 2.5.
    refs = {"img1": ["a cat", "one bird"], "img2": ["a dog"]}
    _, per_item = cider_d({"img1": "a cat", "img2": "a dog"}, refs)
    assert per_item["img1"] == pytest.approx(2.5)


def test_cider_d_single_image_corpus_is_zero():
    # coco-caption edge: with N = 1, ref_len = log 1 = 0 and every df is 0 or 1 -> idf = 0 - log(1) = 0, so
    # every tf-idf weight is 0 and even a caption identical to all references scores 0.
    corpus, per_item = cider_d({0: "a cat sits"}, {0: ["a cat sits", "a cat sits"]})
    assert corpus == 0.0 and per_item == {0: 0.0}


def test_cider_d_rejects_mismatched_ids():
    with pytest.raises(ValueError, match="same ids"):
        cider_d({1: "a cat"}, {2: ["a cat"]})


# ------------------------------------------------------------------------------------------------ BLEU


def test_bleu_exact_match_is_one():
    # coco-caption's smoothing (c + 1e-15) / (g + 1e-9) leaves a perfect match 1e-9-ish short of 1
    corpus, per_item = bleu({1: "The cat sat on the mat."}, {1: ["the cat sat on the mat"]})
    assert corpus == pytest.approx(1.0, abs=1e-6) and per_item[1] == pytest.approx(1.0, abs=1e-6)


def test_bleu_by_hand():
    refs = {1: ["the cat sat on the mat"], 2: ["the cat sat on the mat"]}
    # 1: "a cat sat on the mat" (6 words, ref 6): clipped matches / n-grams
    #    1-grams 5/6 (not "a"), 2-grams 4/5 (not "a cat"), 3-grams 3/4, 4-grams 2/3; no brevity penalty
    #    BLEU-4 = (5/6 * 4/5 * 3/4 * 2/3)^(1/4) = (1/3)^(1/4) ~= 0.7598
    # 2: "cat sat on the mat" (5 words, ref 6): all precisions 1, BP = exp(1 - 6/5) = exp(-0.2) ~= 0.8187
    # corpus: sums first -> 10/11, 8/9, 6/7, 4/5 and lengths 11 vs 12:
    #    (10*8*6*4 / (11*9*7*5))^(1/4) * exp(1 - 12/11) = (1920/3465)^(1/4) * exp(-1/11) ~= 0.7878
    corpus, per_item = bleu({1: "a cat sat on the mat", 2: "cat sat on the mat"}, refs)
    assert per_item[1] == pytest.approx((1 / 3) ** 0.25)
    assert per_item[2] == pytest.approx(math.exp(-0.2))
    assert corpus == pytest.approx((1920 / 3465) ** 0.25 * math.exp(-1 / 11))
    # BLEU-1 of item 1 is the unigram precision alone
    assert bleu({1: "a cat sat on the mat"}, {1: refs[1]}, max_n=1)[0] == pytest.approx(5 / 6)


def test_bleu_closest_reference_length_breaks_ties_to_shorter():
    # candidate has 5 words, references 6 and 4: both 1 away, coco-caption picks the shorter (4) -> no penalty.
    # Clipping uses the max count over references, so every n-gram matches (5/5, 4/4, 3/3, 2/2) -> 1.0.
    _, per_item = bleu({1: "cat sat on the mat"}, {1: ["the cat sat on the mat", "cat sat on mat"]})
    assert per_item[1] == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------------------------------------ VQA


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two.", "2"),  # period stripped, lowercased, number word -> digit
        ("the dog", "dog"),  # article dropped
        ("yes!", "yes"),  # "!" not touching a space -> replaced by a space, then split away
        ("1,000", "1000"),  # a digit,digit comma makes every punctuation mark vanish instead of becoming a space
        ("3.5", "3.5"),  # period followed by a digit is kept
        ("black/white", "black white"),
        ("  A  Red, car ", "red car"),  # ", " touches a space -> deleted
        ("dont", "don't"),  # contractions table
    ],
)
def test_normalize_vqa_answer(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # Official rule: for each of the 10 annotators, drop them and score min(matches among the other 9 / 3, 1).
        (0, 0.0),
        (1, 0.3),  # dropping the 1 match: 0; the other 9 subsets: 1/3 -> 9 * (1/3) / 10 = 0.3
        (2, 0.6),  # 2 subsets see 1 match (1/3), 8 see 2 (2/3) -> (2/3 + 16/3) / 10 = 0.6
        (3, 0.9),  # 3 subsets see 2 matches (2/3), 7 see 3 (1) -> (2 + 7) / 10 = 0.9 (not 1.0!)
        (4, 1.0),  # every subset sees >= 3 matches
    ],
)
def test_vqa_accuracy_subset_averaging(matches, expected):
    answers = ["2"] * matches + ["3"] * (10 - matches)
    assert vqa_accuracy("Two.", answers) == pytest.approx(expected)  # "Two." normalises to "2"


def test_exact_match_normalises():
    assert exact_match("The Dog.", "dog") == 1.0 and exact_match("dogs", "dog") == 0.0


# ------------------------------------------------------------------------------------------------ counting


@pytest.mark.parametrize(
    ("text", "count"),
    [("There are three circles.", 3), ("I count 12 apples, not 13", 12), ("1,000", 1000), ("None.", 0),
     ("No circles", None), ("lots", None)],
)  # fmt: skip
def test_parse_count(text, count):
    assert parse_count(text) == count


def test_counting_metrics_by_hand():
    # parsed [3, 4, None] vs truths [3, 5, 2]: accuracy 1/3; MAE (0 + 1 + |0 - 2|) / 3 = 1.0; unparsed 1/3
    out = counting_metrics(["3", "four", "I don't know"], [3, 5, 2])
    assert out == pytest.approx({"accuracy": 1 / 3, "mae": 1.0, "unparsed": 1 / 3})


# ------------------------------------------------------------------------------------------------ OCR


@pytest.mark.parametrize(
    ("prediction", "reference", "cer"),
    [
        ("kitten", "sitting", 3 / 7),  # k->s, e->i, +g: 3 edits over 7 reference characters
        ("abc", "abc", 0.0),
        ("", "abc", 1.0),  # 3 insertions / 3
        ("xxxxx", "ab", 2.5),  # 2 substitutions + 3 deletions = 5 edits / 2: CER can exceed 1
        ("hello\nworld", "hello  world", 0.0),  # whitespace runs collapse before comparing
    ],
)
def test_character_error_rate(prediction, reference, cer):
    assert character_error_rate(prediction, reference) == pytest.approx(cer)


def test_levenshtein_is_symmetric_and_ocr_metrics_micro_average():
    assert levenshtein("kitten", "sitting") == levenshtein("sitting", "kitten") == 3
    # "Hello" vs "hello": 1 edit (case-sensitive); "wrld" vs "world": 1 edit -> CER (1 + 1) / (5 + 5) = 0.2
    assert ocr_metrics(["Hello", "wrld"], ["hello", "world"]) == pytest.approx({"exact_match": 0.0, "cer": 0.2})
    assert ocr_metrics(["Hello", "wrld"], ["hello", "world"], ignore_case=True) == pytest.approx(
        {"exact_match": 0.5, "cer": 0.1}
    )
    with pytest.raises(ValueError, match="empty"):
        character_error_rate("a", " ")


# ------------------------------------------------------------------------------------------------ POPE


def test_parse_yes_no_takes_first_whole_word():
    assert parse_yes_no("Yes, there is no cat") == "yes"
    assert parse_yes_no("Nothing suggests it; no.") == "no"  # "nothing" is not the word "no"
    assert parse_yes_no("Not sure") is None


def test_pope_metrics_by_hand():
    preds = ["Yes, there is a dog.", "yes", "No.", "Yes", "no", "No, there isn't.", "I cannot tell"]
    labels = ["yes", "yes", "yes", "no", "no", "no", "no"]
    # parsed: yes yes no | yes no no None  ->  TP 2, FN 1, FP 1, TN 2, 1 unparsed (label "no", counted wrong)
    # accuracy (2 + 2) / 7; precision 2 / (2 + 1); recall 2 / 3; F1 2PR / (P + R) = 2/3; yes_ratio 3 / 7
    expected = {"accuracy": 4 / 7, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 3 / 7,
                "unparsed": 1 / 7}  # fmt: skip
    assert pope_metrics(preds, labels) == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ choice, baseline


def test_multiple_choice_accuracy():
    options = [["cat", "dog", "bird"]] * 5
    # "B" -> B, "(A) cat" -> A, "answer is C" -> C, "dog" matches option B's text;
    # "A cat is shown" is not a leading letter + punctuation and matches no option text -> unparsed, wrong. 4/5
    preds = ["B", "(A) cat", "The answer is C.", "dog", "A cat is shown"]
    assert multiple_choice_accuracy(preds, ["B", "A", "C", "B", "A"], options) == pytest.approx(4 / 5)


def test_majority_baseline():
    assert majority_baseline(["yes", "Yes.", "no"]) == ("yes", pytest.approx(2 / 3))
    assert majority_baseline(["no", "yes"]) == ("no", 0.5)  # tie -> first seen
    assert majority_baseline(["yes", "Yes", "no"], normalize=False) == ("yes", pytest.approx(1 / 3))
