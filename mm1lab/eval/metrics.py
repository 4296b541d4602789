"""Benchmark metrics in pure Python, each matching the reference evaluator that published numbers come from.

Captioning: CIDEr-D and BLEU follow coco-caption (github.com/tylin/coco-caption, `pycocoevalcap/ciderD` as in
Vedantam et al. 2015's own port, and `pycocoevalcap/bleu`), VQA accuracy follows the official VQAv2 evaluator
(github.com/GT-Vision-Lab/VQA, `vqaEval.py`). The rest (counting, OCR, POPE, multiple choice) are small and
their parsing rules are stated in each docstring, because a parsing rule changes the number as much as the model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence

# ------------------------------------------------------------------------------------------------ tokenisation

# Tokens coco-caption's PTBTokenizer wrapper deletes after Stanford CoreNLP has split the text (parens and
# quotes are what CoreNLP writes as -LRB- / `` and friends).
_PTB_DROP = {"''", "'", "``", "`", '"', "(", ")", "[", "]", "{", "}", ".", "?", "!", ",", ":", ";", "-", "--", "..."}
_PTB_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.]\w+)*|\S")


def ptb_tokenize(text: str) -> list[str]:
    """Lowercase and split like coco-caption's PTBTokenizer (roughly), dropping punctuation tokens.

    Like CoreNLP, clitics become their own tokens ("don't" -> "do n't", "man's" -> "man 's") and hyphenated
    words or decimals stay whole. Example: "A man's dog, running!" -> ["a", "man", "'s", "dog", "running"].
    """
    text = re.sub(r"(\w)n't\b", r"\1 n't", text.lower())
    return [tok for tok in _PTB_TOKEN.findall(text) if tok not in _PTB_DROP]


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    """Counts of every n-gram (as a tuple) for n = 1..max_n."""
    return Counter(tuple(tokens[i : i + n]) for n in range(1, max_n + 1) for i in range(len(tokens) - n + 1))


def _check_ids(candidates: Mapping, references: Mapping) -> list:
    """The ids both dicts share; raises if they differ (coco-caption asserts the same)."""
    missing, extra = set(references) - set(candidates), set(candidates) - set(references)
    if missing or extra:
        raise ValueError(
            "candidates and references must have the same ids; "
            f"no candidate for {sorted(map(str, missing))[:5]}, no references for {sorted(map(str, extra))[:5]}"
        )
    empty = [key for key in references if not references[key]]
    if empty:
        raise ValueError(f"every id needs at least one reference caption; none for {empty[:5]}")
    return list(references)


# ------------------------------------------------------------------------------------------------ captioning


def cider_d(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    max_n: int = 4,
    sigma: float = 6.0,
    tokenizer: Callable[[str], list[str]] = ptb_tokenize,
) -> tuple[float, dict[Hashable, float]]:
    """CIDEr-D (Vedantam et al. 2015, "CIDEr: Consensus-based Image Description Evaluation"), coco-caption flavour.

    Per image: for n = 1..4, cosine-like similarity of TF-IDF n-gram vectors of the candidate and each reference,
    with candidate weights clipped by the reference's (min(w_c, w_r) * w_r), times a Gaussian length penalty
    exp(-delta^2 / 2 sigma^2); mean over n, mean over references, times 10. Corpus score = mean over images.

    Details copied from `pycocoevalcap/ciderD/ciderD_scorer.py` on purpose, since they move the number:
    - document frequency df(g) = number of images whose *references* contain g; IDF = log(N) - log(max(1, df))
      with N = number of images evaluated, so an n-gram in every image's references (or any n-gram when N = 1)
      has weight 0, and an n-gram absent from all references gets the full weight log(N);
    - "length" in the penalty counts the *bigrams* of a caption (a quirk of the original: words - 1).

    Returns (corpus score, {id: per-image score}).
    """
    ids = _check_ids(candidates, references)
    cand_counts = {key: _ngram_counts(tokenizer(candidates[key]), max_n) for key in ids}
    ref_counts = {key: [_ngram_counts(tokenizer(ref), max_n) for ref in references[key]] for key in ids}

    doc_freq: Counter = Counter()
    for refs in ref_counts.values():
        doc_freq.update({gram for counts in refs for gram in counts})
    log_n = math.log(len(ids))

    def tfidf(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_n - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        length = sum(tf for gram, tf in counts.items() if len(gram) == 2)  # coco-caption quirk, see docstring
        return vec, norms, length

    per_item = {}
    for key in ids:
        vec_c, norm_c, len_c = tfidf(cand_counts[key])
        total = 0.0
        for ref in ref_counts[key]:
            vec_r, norm_r, len_r = tfidf(ref)
            penalty = math.exp(-((len_c - len_r) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_c[n].items())
                if norm_c[n] != 0 and norm_r[n] != 0:  # otherwise the (zero) dot product is kept, as upstream
                    dot /= norm_c[n] * norm_r[n]
                total += dot * penalty
        per_item[key] = 10.0 * total / max_n / len(ref_counts[key])
    return sum(per_item.values()) / len(per_item), per_item


def _bleu_from_stats(correct: list[int], guess: list[int], hyp_len: int, ref_len: int) -> float:
    """Geometric mean of clipped n-gram precisions times the brevity penalty, with coco-caption's smoothing."""
    tiny, small = 1e-15, 1e-9  # coco-caption's guards against log(0) and 0/0; they make a perfect match 1 - 1e-9
    score = math.prod((c + tiny) / (g + small) for c, g in zip(correct, guess)) ** (1.0 / len(correct))
    ratio = (hyp_len + tiny) / (ref_len + small)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


def bleu(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    max_n: int = 4,
    tokenizer: Callable[[str], list[str]] = ptb_tokenize,
) -> tuple[float, dict[Hashable, float]]:
    """BLEU-max_n (Papineni et al. 2002) as coco-caption's `pycocoevalcap/bleu` computes it.

    Corpus level: clipped n-gram matches and candidate n-gram counts are summed over all images *before* the
    precisions are taken, and the brevity penalty exp(1 - r/c) uses the summed lengths, where each image's
    reference length is the one closest to its candidate's (ties -> the shorter, option "closest").
    Returns (corpus BLEU, {id: sentence-level BLEU with the same smoothing}). BLEU-1 is `max_n=1`.
    """
    ids = _check_ids(candidates, references)
    correct, guess, hyp_total, ref_total = [0] * max_n, [0] * max_n, 0, 0
    per_item = {}
    for key in ids:
        hyp = tokenizer(candidates[key])
        refs = [tokenizer(ref) for ref in references[key]]
        max_ref: Counter = Counter()  # clip each n-gram by its largest count in any single reference
        for ref in refs:
            max_ref |= _ngram_counts(ref, max_n)
        item_correct = [0] * max_n
        for gram, count in _ngram_counts(hyp, max_n).items():
            item_correct[len(gram) - 1] += min(count, max_ref[gram])
        item_guess = [max(0, len(hyp) - n) for n in range(max_n)]
        ref_len = min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]

        per_item[key] = _bleu_from_stats(item_correct, item_guess, len(hyp), ref_len)
        correct = [a + b for a, b in zip(correct, item_correct)]
        guess = [a + b for a, b in zip(guess, item_guess)]
        hyp_total, ref_total = hyp_total + len(hyp), ref_total + ref_len
    return _bleu_from_stats(correct, guess, hyp_total, ref_total), per_item


# ------------------------------------------------------------------------------------------------ VQA

_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# Upstream writes "(?!<=\d)(\.)(?!\d)"; the first group is a (no-op) lookahead, so it means "a period not
# followed by a digit": "3.5" keeps its period, "dog." and "5." lose theirs.
_PERIOD_STRIP = re.compile(r"\.(?!\d)")
_DIGIT_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
_ARTICLES = {"a", "an", "the"}
# A subset of the official table (which maps apostrophe-less spellings to the apostrophe form); its
# capitalised keys ("Im", "Ive", ...) are left out because they can never match lowercased text.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "couldve": "could've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't",
    "havent": "haven't", "hes": "he's", "hows": "how's", "isnt": "isn't", "itd": "it'd", "itll": "it'll",
    "lets": "let's", "mightnt": "mightn't", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "oclock": "o'clock", "shant": "shan't", "shes": "she's", "shouldnt": "shouldn't",
    "shouldve": "should've", "thats": "that's", "theres": "there's", "theyd": "they'd", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't", "weve": "we've",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "wheres": "where's", "whos": "who's",
    "whove": "who've", "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've", "yall": "y'all",
    "youd": "you'd", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer as the official VQAv2 evaluator does (`processPunctuation` + `processDigitArticle`).

    Punctuation in `_VQA_PUNCT` is deleted when it touches a space (or the text has a "1,000"-style number) and
    replaced by a space otherwise; periods are removed unless a digit follows; then lowercase, number words
    -> digits ("two" -> "2"), articles dropped, contractions restored ("dont" -> "don't").
    Examples: "Two." -> "2", "the dog" -> "dog", "yes!" -> "yes", "1,000" -> "1000", "3.5" -> "3.5".
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    delete = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if delete or p + " " in text or " " + p in text else " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_DIGIT_WORDS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy (Antol et al. 2015): min(#humans who gave the answer / 3, 1), averaged over the 10
    leave-one-annotator-out subsets of 9, as the official `vqaEval.py` does.

    So with 10 answers: 1 match -> 0.3, 2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0.
    Deviation: upstream normalises the ground truth only when annotators disagree; we always normalise both
    sides (as lmms-eval does), which differs only if unanimous ground truth is itself unnormalised.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer (VQAv2 has 10 per question)")
    pred = normalize_vqa_answer(prediction)
    truths = [normalize_vqa_answer(a) for a in answers]
    matches = sum(t == pred for t in truths)
    # dropping annotator i leaves `matches - (truths[i] == pred)` matching humans among the other 9
    return sum(min(1.0, (matches - (t == pred)) / 3) for t in truths) / len(truths)


def exact_match(prediction: str, target: str) -> float:
    """1.0 if prediction and target are equal after `normalize_vqa_answer`, else 0.0."""
    return float(normalize_vqa_answer(prediction) == normalize_vqa_answer(target))


# ------------------------------------------------------------------------------------------------ counting

_COUNT_WORDS = {
    word: i
    for i, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
} | {"none": 0}
_COUNT_PATTERN = re.compile(r"\d+(?:,\d{3})*|\b(?:" + "|".join(_COUNT_WORDS) + r")\b")


def parse_count(text: str) -> int | None:
    """The first integer ("3", "1,000") or number word ("three", "none", up to "twenty") in the text, else None.

    Example: "There are three circles." -> 3. "No circles" -> None (a bare "no" is not read as 0).
    """
    match = _COUNT_PATTERN.search(text.lower())
    if match is None:
        return None
    token = match.group(0)
    return _COUNT_WORDS[token] if token in _COUNT_WORDS else int(token.replace(",", ""))


def counting_metrics(predictions: Sequence[str], truths: Sequence[int]) -> dict[str, float]:
    """Counting accuracy, mean absolute error and the share of unparseable predictions.

    A prediction with no number (see `parse_count`) is wrong for accuracy and is scored as a count of 0 for
    MAE (error = |0 - truth|), so a model cannot lower its MAE by refusing to answer; `unparsed` reports how
    often that happened.
    """
    _check_lengths(predictions, truths)
    parsed = [parse_count(p) for p in predictions]
    return {
        "accuracy": sum(p == t for p, t in zip(parsed, truths)) / len(truths),
        "mae": sum(abs((p or 0) - t) for p, t in zip(parsed, truths)) / len(truths),
        "unparsed": sum(p is None for p in parsed) / len(truths),
    }


def _check_lengths(predictions: Sequence, truths: Sequence) -> None:
    """Raise if the two lists differ in length or are empty."""
    if len(predictions) != len(truths) or not truths:
        raise ValueError(f"need equally many predictions and truths (> 0); got {len(predictions)} and {len(truths)}")


# ------------------------------------------------------------------------------------------------ OCR


def levenshtein(a: str, b: str) -> int:
    """Edit distance: fewest single-character insertions, deletions and substitutions turning a into b."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _ocr_clean(text: str, ignore_case: bool) -> str:
    """Collapse runs of whitespace (line breaks in a transcription are not errors) and optionally lowercase."""
    text = " ".join(text.split())
    return text.lower() if ignore_case else text


def character_error_rate(prediction: str, reference: str, *, ignore_case: bool = False) -> float:
    """CER = levenshtein(prediction, reference) / len(reference), after whitespace collapsing; can exceed 1."""
    pred, ref = _ocr_clean(prediction, ignore_case), _ocr_clean(reference, ignore_case)
    if not ref:
        raise ValueError("character_error_rate is undefined for an empty reference; drop or fix that sample")
    return levenshtein(pred, ref) / len(ref)


def ocr_metrics(
    predictions: Sequence[str], references: Sequence[str], *, ignore_case: bool = False
) -> dict[str, float]:
    """OCR exact match (after whitespace collapsing) and corpus CER = total edits / total reference characters.

    Corpus CER is the micro average (as jiwer computes it), so long references weigh more than short ones.
    """
    _check_lengths(predictions, references)
    preds = [_ocr_clean(p, ignore_case) for p in predictions]
    refs = [_ocr_clean(r, ignore_case) for r in references]
    if not all(refs):
        raise ValueError(f"empty OCR reference at index {[i for i, r in enumerate(refs) if not r][:5]}")
    return {
        "exact_match": sum(p == r for p, r in zip(preds, refs)) / len(refs),
        "cer": sum(levenshtein(p, r) for p, r in zip(preds, refs)) / sum(len(r) for r in refs),
    }


# ------------------------------------------------------------------------------------------------ POPE


def parse_yes_no(text: str) -> str | None:
    """Read a yes/no answer: whichever of the whole words "yes" / "no" comes first (case-insensitive), else None."""
    match = re.search(r"\b(yes|no)\b", text.lower())
    return match.group(1) if match else None


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE (Li et al. 2023) object-hallucination metrics with "yes" as the positive class.

    Returns accuracy, precision, recall, F1, yes_ratio (share of predictions parsed as "yes") and unparsed.
    Predictions are free text read with `parse_yes_no`; one with neither word is wrong for accuracy and is
    not a "yes" (so it can cost recall, never precision). Precision is 0 when nothing is predicted "yes".
    """
    _check_lengths(predictions, labels)
    bad = [label for label in labels if label not in ("yes", "no")]
    if bad:
        raise ValueError(f"POPE labels must be 'yes' or 'no'; got {bad[:5]}")
    parsed = [parse_yes_no(p) for p in predictions]
    tp = sum(p == "yes" and t == "yes" for p, t in zip(parsed, labels))
    fp = sum(p == "yes" and t == "no" for p, t in zip(parsed, labels))
    positives = sum(t == "yes" for t in labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / positives if positives else 0.0
    return {
        "accuracy": sum(p == t for p, t in zip(parsed, labels)) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(labels),
        "unparsed": sum(p is None for p in parsed) / len(labels),
    }


# ------------------------------------------------------------------------------------------------ multiple choice


def parse_choice(prediction: str, options: Sequence[str]) -> str | None:
    """The option letter ("A", "B", ...) a free-text answer picks among `options`, else None.

    Tried in order: a leading letter ("B", "(B)", "B.", "B) a cat" - uppercase only, so the article "a" is not
    read as option A), "answer is B", then the normalised text equal to exactly one option's text.
    """
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: len(options)]
    text = prediction.strip()
    for pattern in (rf"^\(?([{letters}])(?:[).:]|$)", rf"answer(?: is)?:?\s*\(?([{letters}])\b"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    norm = normalize_vqa_answer(text)
    hits = [letter for letter, option in zip(letters, options) if normalize_vqa_answer(option) == norm]
    return hits[0] if len(hits) == 1 else None


def multiple_choice_accuracy(
    predictions: Sequence[str], answers: Sequence[str], options: Sequence[Sequence[str]]
) -> float:
    """Share of predictions whose `parse_choice` letter equals the answer letter; unparseable counts as wrong."""
    _check_lengths(predictions, answers)
    _check_lengths(predictions, options)
    return sum(parse_choice(p, o) == a for p, a, o in zip(predictions, answers, options)) / len(answers)


def majority_baseline(answers: Sequence[str], *, normalize: bool = True) -> tuple[str, float]:
    """The most common answer and its share: the score of always giving it (e.g. "yes" on a yes/no split).

    Answers are compared after `normalize_vqa_answer` unless normalize=False; ties go to the first seen.
    """
    if not answers:
        raise ValueError("majority_baseline needs at least one answer")
    keys = [normalize_vqa_answer(a) if normalize else a for a in answers]
    answer, count = Counter(keys).most_common(1)[0]
    return answer, count / len(keys)
