"""Evaluation metrics used across the notebook series.

* DocVQA answers -- :func:`anls` (the official DocVQA metric) and
  :func:`levenshtein_similarity` (the un-thresholded score the Florence-2
  fine-tuning blog reported) are taught in
  ``notebooks/02_florence2_docvqa.ipynb``.
* Aircraft captions -- :func:`rouge` and the comma-separated tag metrics
  (:func:`parse_tags`, :func:`tag_scores`, :func:`tag_f1_per_sample`) are taught
  in ``notebooks/04_phi3_aircraft_captioning.ipynb``.

Bad inputs fail early with a ``ValueError`` that names the side and the
position, e.g. ``predictions[3] is None (expected a string)`` or
``references[2][1] is 42 of type int (expected a string)``, instead of a bare
``TypeError`` from deep inside the string code. Every check goes through
:func:`_require_str` and :func:`_checked_pairs`.

This module is deliberately light: it imports only ``rapidfuzz`` at module
level (no torch, no transformers); ``rouge_score`` is imported lazily inside
:func:`rouge`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from rapidfuzz.distance import Levenshtein

__all__ = [
    "normalize_answer",
    "normalized_levenshtein_distance",
    "anls",
    "anls_per_sample",
    "levenshtein_similarity",
    "levenshtein_similarity_per_sample",
    "rouge",
    "rouge_tokens",
    "parse_tags",
    "tag_scores",
    "tag_f1_per_sample",
]


# ---------------------------------------------------------------------------
# Input checks: one definition of "a prediction / reference must be a string"
# ---------------------------------------------------------------------------


def _describe(value: object) -> str:
    """``None``, or a short ``repr`` with the type, for error messages."""
    if value is None:
        return "None"
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} of type {type(value).__name__}"


def _require_str(value: object, name: str) -> str:
    """Return ``value`` if it is a string, else raise a ``ValueError`` naming it.

    The one place that defines what a prediction or reference must be. ``name``
    says which side and where, e.g. ``"predictions[3]"`` or ``"references[3][1]"``.
    """
    if not isinstance(value, str):
        raise ValueError(f"{name} is {_describe(value)} (expected a string)")
    return value


def _as_reference_list(refs: str | Sequence[str], index: int) -> list[str]:
    """Return one question's references as a list; a bare string is one answer.

    Raises a ``ValueError`` naming ``references[index]`` (and the position inside
    the list) when the entry is None, not a string or list, empty, or holds a
    non-string.
    """
    if isinstance(refs, str):
        return [refs]
    if refs is None or isinstance(refs, (bytes, bytearray)) or not isinstance(refs, Iterable):
        raise ValueError(
            f"references[{index}] is {_describe(refs)} "
            "(expected a string or a list of strings)"
        )
    refs = list(refs)
    if not refs:
        raise ValueError(
            f"references[{index}] is empty: every question needs at least one "
            "reference answer"
        )
    return [_require_str(ref, f"references[{index}][{j}]") for j, ref in enumerate(refs)]


def _check_pair_lengths(predictions: Sequence, references: Sequence) -> None:
    """Both sides must be lists (not None, not one string) of the same length."""
    for name, value in (("predictions", predictions), ("references", references)):
        if value is None:
            raise ValueError(f"{name} is None (expected a list with one entry per example)")
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(
            "predictions and references must be lists (one entry per example), "
            "not a single string"
        )
    if len(predictions) != len(references):
        raise ValueError(
            "predictions and references must have the same length: got "
            f"{len(predictions)} predictions and {len(references)} references"
        )


def _checked_pairs(
    predictions: Sequence[str],
    references: Sequence,
    *,
    reference_lists: bool,
) -> list[tuple[str, list[str]]]:
    """Validate every input up front; return ``(prediction, [references...])`` pairs.

    ``reference_lists=True``: each reference entry is a string or a list of
    strings (DocVQA answers, ROUGE). ``False``: each entry must be exactly one
    string (tags). A bad entry raises a ``ValueError`` naming its index and side.
    """
    _check_pair_lengths(predictions, references)
    pairs = []
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        pred = _require_str(pred, f"predictions[{i}]")
        if reference_lists:
            ref_list = _as_reference_list(refs, i)
        else:
            ref_list = [_require_str(refs, f"references[{i}]")]
        pairs.append((pred, ref_list))
    return pairs


# ---------------------------------------------------------------------------
# Normalisation and the normalised Levenshtein distance
# ---------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """Lowercase, strip, and collapse every whitespace run to a single space.

    This is the DocVQA normalisation (taught in
    ``notebooks/02_florence2_docvqa.ipynb``, section "The metric: ANLS, not
    "Levenshtein similarity""). "Whitespace" is whatever
    :meth:`str.split` treats as whitespace, so tabs, newlines and Unicode
    spaces such as U+00A0 count too. Punctuation and articles are kept:
    DocVQA does not remove them. ``text`` must be a string (``ValueError``
    otherwise, e.g. for None).
    """
    return " ".join(_require_str(text, "text").lower().split())


def normalized_levenshtein_distance(prediction: str, reference: str) -> float:
    """Levenshtein distance divided by the longer length, after normalisation.

    Returns a value in ``[0, 1]``; ``0.0`` when both normalised strings are
    empty. Lengths are counted in Unicode code points. Taught in
    ``notebooks/02_florence2_docvqa.ipynb``, section "The metric: ANLS, not
    "Levenshtein similarity"" (e.g. "kitten" vs "sitting":
    distance 3, longer length 7, so 3/7). Both arguments must be strings
    (``ValueError`` naming the side otherwise).
    """
    pred = normalize_answer(_require_str(prediction, "prediction"))
    ref = normalize_answer(_require_str(reference, "reference"))
    longest = max(len(pred), len(ref))
    if longest == 0:
        return 0.0
    # True Levenshtein (insert/delete/substitute all cost 1). Not fuzz.ratio,
    # which is based on the Indel distance (no substitutions).
    return Levenshtein.distance(pred, ref) / longest


# ---------------------------------------------------------------------------
# ANLS and the un-thresholded Levenshtein similarity (notebook 02)
# ---------------------------------------------------------------------------


def _similarity_per_sample(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    threshold: float | None,
) -> list[float]:
    """Shared core of ANLS and Levenshtein similarity.

    For each question: max over its references of ``1 - NL``, where a
    reference with ``NL >= threshold`` contributes 0. ``threshold=None``
    means no threshold at all.
    """
    scores: list[float] = []
    for pred, refs in _checked_pairs(predictions, references, reference_lists=True):
        best = 0.0
        for ref in refs:
            nl = normalized_levenshtein_distance(pred, ref)
            if threshold is not None and nl >= threshold:
                continue
            best = max(best, 1.0 - nl)
        scores.append(best)
    return scores


def _mean(values: list[float], what: str) -> float:
    if not values:
        raise ValueError(f"cannot compute {what} of zero examples: inputs are empty")
    return math.fsum(values) / len(values)


def _check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")


def anls_per_sample(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    threshold: float = 0.5,
) -> list[float]:
    """Per-question ANLS scores (taught in ``notebooks/02_florence2_docvqa.ipynb``, section
    "The metric: ANLS, not "Levenshtein similarity"").

    Each score is the max over that question's reference answers of
    ``1 - NL`` when ``NL < threshold`` (strictly), else 0, where NL is
    :func:`normalized_levenshtein_distance`. Useful for finding the most
    improved / regressed examples between two models. A reference entry may
    be a bare string (treated as a single answer). Returns ``[]`` for empty
    inputs. Raises ``ValueError`` as :func:`anls` does.
    """
    _check_threshold(threshold)
    return _similarity_per_sample(predictions, references, threshold)


def anls(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    threshold: float = 0.5,
) -> float:
    """DocVQA's Average Normalized Levenshtein Similarity, in ``[0, 1]``.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The metric:
    ANLS, not "Levenshtein similarity"". ANLS is the mean over
    questions of :func:`anls_per_sample`: for every question take the best
    reference answer's ``1 - NL``, but score 0 when ``NL >= threshold``
    (default 0.5; "NL < 0.5" is strict, so NL exactly 0.5 scores 0). Strings
    are compared after :func:`normalize_answer`; two empty strings match
    perfectly.

    Raises:
        ValueError: inputs are empty, lengths differ, a question has no
            reference answers (the message names its index), a prediction or
            reference is None or not a string (the message names the side, the
            index and, inside a reference list, the position), or the threshold
            is outside ``[0, 1]``.
    """
    return _mean(anls_per_sample(predictions, references, threshold), "ANLS")


def exact_match_per_sample(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """1.0 where the prediction equals one of its references after :func:`normalize_answer`, else 0.0.

    The strict companion of ANLS for short answers: ANLS gives "$12.5" 0.83 against "$12.50", exact
    match gives it 0. Used in ``notebooks/06_your_data_your_model.ipynb``, section "Before fine-tuning".
    """
    return [float(any(normalize_answer(pred) == normalize_answer(ref) for ref in refs))
            for pred, refs in _checked_pairs(predictions, references, reference_lists=True)]


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The share of predictions equal to one of their references (after :func:`normalize_answer`).

    Used in ``notebooks/06_your_data_your_model.ipynb``, section "Before fine-tuning".
    """
    return _mean(exact_match_per_sample(predictions, references), "exact match")


def levenshtein_similarity_per_sample(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
) -> list[float]:
    """Per-question un-thresholded ``max(1 - NL)``. NOT ANLS; always >= ANLS.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The metric:
    ANLS, not "Levenshtein similarity"". Returns ``[]`` for
    empty inputs. Raises ``ValueError`` as :func:`anls` does.
    """
    return _similarity_per_sample(predictions, references, None)


def levenshtein_similarity(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
) -> float:
    """Mean over questions of max over references of ``1 - NL``, no threshold.

    This is NOT ANLS. It is the score the Florence-2 DocVQA fine-tuning blog
    reported (57.0) under the name "Levenshtein similarity". It is identical
    to ANLS except that predictions with ``NL >= 0.5`` keep their partial
    credit instead of scoring 0, so it is always >= :func:`anls` on the same
    inputs, and strictly greater whenever some question's best answer has
    ``0.5 <= NL < 1``. Do not compare it with published ANLS numbers. Taught
    in ``notebooks/02_florence2_docvqa.ipynb``, section "The metric: ANLS, not
    "Levenshtein similarity"".

    Raises:
        ValueError: same conditions as :func:`anls`.
    """
    return _mean(
        levenshtein_similarity_per_sample(predictions, references),
        "Levenshtein similarity",
    )


# ---------------------------------------------------------------------------
# Caption metrics (notebook 04)
# ---------------------------------------------------------------------------


#: Scripts written without spaces between words: each character is one ROUGE token (CJK ideographs and their
#: extensions, Japanese kana, Thai, Lao, Khmer, Myanmar).
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1000-\u109f"
                       r"\u1780-\u17ff\U00020000-\U0002fa1f]")
_WORD = re.compile(r"[^\W_]+")


def rouge_tokens(text: str) -> list[str]:
    """The tokens :func:`rouge` compares: lowercased words of letters and digits in any script, ASCII words of
    more than 3 letters Porter-stemmed (as the ``rouge_score`` package does), and one token per character in
    scripts written without spaces. Taught with :func:`rouge` in ``notebooks/04_phi3_aircraft_captioning.ipynb``,
    section "The metrics: ROUGE and tags".
    """
    from nltk.stem import porter  # rouge_score's own dependency

    stemmer = _STEMMER.setdefault("porter", porter.PorterStemmer())
    tokens: list[str] = []
    for word in _WORD.findall(text.lower()):
        if _UNSPACED.search(word):  # split into characters, keeping runs of other letters together
            tokens += [piece for piece in re.split(f"({_UNSPACED.pattern})", word) if piece]
        elif word.isascii() and len(word) > 3:
            tokens.append(stemmer.stem(word))
        else:
            tokens.append(word)
    return tokens


_STEMMER: dict = {}


class _RougeTokenizer:
    """:func:`rouge_tokens` in the shape ``rouge_scorer.RougeScorer(tokenizer=...)`` takes."""

    def tokenize(self, text: str) -> list[str]:
        return rouge_tokens(text)


def rouge(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    rouge_types: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
) -> dict[str, float]:
    """Mean ROUGE F-measure per type, using the ``rouge_score`` package.

    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The
    metrics: ROUGE and tags". Uses ``rouge_scorer.RougeScorer(rouge_types)``
    with :func:`rouge_tokens` as its tokenizer: for ASCII text exactly the
    package's own (lowercased, letters and digits, Porter stemming of words
    over 3 letters), but words of every script are kept (the package's
    tokenizer drops all non-ASCII letters, so a Chinese, Arabic or accented
    caption scored 0 against itself), and in scripts written without spaces
    (Chinese, Japanese, Thai) each character is a token, as Chinese ROUGE
    is usually computed. Each entry of ``references`` is
    either one reference string or a list of them; with several references a
    prediction gets, for each ROUGE type separately, the best F-measure over
    its references. Returns ``{rouge_type: mean F-measure in [0, 1]}``.

    Raises:
        ValueError: inputs are empty, lengths differ, a reference list is
            empty, or a prediction or reference is None or not a string (the
            message names the side and index).
    """
    from rouge_score import rouge_scorer  # lazy: pulls in nltk

    pairs = _checked_pairs(predictions, references, reference_lists=True)
    if not pairs:
        raise ValueError("cannot compute ROUGE of zero examples: inputs are empty")
    rouge_types = list(rouge_types)
    if not rouge_types:
        raise ValueError("rouge_types must name at least one ROUGE type")
    scorer = rouge_scorer.RougeScorer(rouge_types, tokenizer=_RougeTokenizer())
    per_type: dict[str, list[float]] = {t: [] for t in rouge_types}
    for pred, refs in pairs:
        best = dict.fromkeys(rouge_types, 0.0)
        for ref in refs:
            # rouge_score's argument order is (target, prediction).
            scores = scorer.score(ref, pred)
            for t in rouge_types:
                best[t] = max(best[t], scores[t].fmeasure)
        for t in rouge_types:
            per_type[t].append(best[t])
    return {t: math.fsum(v) / len(v) for t, v in per_type.items()}


def parse_tags(text: str) -> set[str]:
    """Split a comma-separated tag string into a set of normalised tags.

    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The
    metrics: ROUGE and tags". Each piece is
    passed through :func:`normalize_answer` (so case and extra spaces do not
    matter) and empty pieces are dropped; duplicates collapse because the
    result is a set. ``"Boeing 737, boeing  737-800,, airliner"`` gives
    ``{"boeing 737", "boeing 737-800", "airliner"}``. ``text`` must be a string
    (``ValueError`` otherwise, e.g. for None).
    """
    return {tag for tag in (normalize_answer(part) for part in _require_str(text, "text").split(",")) if tag}


def _f1_from_counts(true_pos: int, n_pred: int, n_ref: int) -> float:
    """F1 = 2 TP / (|pred| + |ref|); defined as 1.0 when both are empty."""
    if n_pred + n_ref == 0:
        return 1.0
    return 2.0 * true_pos / (n_pred + n_ref)


def tag_f1_per_sample(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per-example F1 between predicted and reference tag sets.

    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The
    metrics: ROUGE and tags". Choices: an
    example whose prediction and reference both parse to no tags scores 1.0
    (nothing to find, nothing wrongly claimed); if exactly one side is empty
    it scores 0.0. Returns ``[]`` for empty inputs.

    Raises:
        ValueError: lengths differ, or a prediction or reference is None or not
            a string (the message names the side and index).
    """
    out: list[float] = []
    for pred, (ref,) in _checked_pairs(predictions, references, reference_lists=False):
        p, r = parse_tags(pred), parse_tags(ref)
        out.append(_f1_from_counts(len(p & r), len(p), len(r)))
    return out


def tag_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over comma-separated tag sets.

    Taught in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The
    metrics: ROUGE and tags". Tags are
    counted over the whole dataset: precision = matched tags / predicted
    tags, recall = matched tags / reference tags, and F1 is their harmonic
    mean (equivalently 2 * matched / (predicted + reference)). Choices for
    zero denominators: if there are no predicted tags at all, precision is
    1.0 when there are also no reference tags and 0.0 otherwise; recall is
    treated symmetrically; F1 is 1.0 when both totals are zero.

    Returns ``{"tag_precision": ..., "tag_recall": ..., "tag_f1": ...}``.

    Raises:
        ValueError: inputs are empty, lengths differ, or a prediction or
            reference is None or not a string (the message names the side and
            index).
    """
    pairs = _checked_pairs(predictions, references, reference_lists=False)
    if not pairs:
        raise ValueError("cannot compute tag scores of zero examples: inputs are empty")
    true_pos = n_pred = n_ref = 0
    for pred, (ref,) in pairs:
        p, r = parse_tags(pred), parse_tags(ref)
        true_pos += len(p & r)
        n_pred += len(p)
        n_ref += len(r)
    precision = true_pos / n_pred if n_pred else (1.0 if n_ref == 0 else 0.0)
    recall = true_pos / n_ref if n_ref else (1.0 if n_pred == 0 else 0.0)
    return {
        "tag_precision": precision,
        "tag_recall": recall,
        "tag_f1": _f1_from_counts(true_pos, n_pred, n_ref),
    }
