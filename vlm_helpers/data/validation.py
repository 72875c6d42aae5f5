"""Check every row before training, and say exactly which row is broken.

Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents",
and reused by the chat-VLM notebooks with other column names (``notebooks/04_phi3_aircraft_captioning.ipynb``,
section "The data: FGVC-Aircraft photos and their tags").

A corrupt image or an empty answer list usually surfaces hours into a run, deep
inside a collate function, with a message that names neither the split nor the
row. Validating up front costs seconds and turns that into::

    DataValidationError: [split='test', row 0, questionId=57349] answers is an empty list ...

Column names are keyword arguments, so the same checks cover other datasets:

* DocVQA: ``answers`` is a list of acceptable strings (the defaults).
* Captioning / chat data (e.g. the aircraft notebooks): the target is one string.
  Pass ``answer_key="caption", answers_may_be_str=True``; a plain string is then
  accepted (and still must not be empty), and a list is still checked as a list.
* Inference-only data without targets: pass ``answer_key=None``.

Text the model reserves. Pass the model's ``processor`` (or tokenizer) and questions and
answers are also checked for strings the processor would not read as plain text: its special
and added control tokens (``<image>``, ``<end_of_utterance>``, ``<|end|>``, ``<s>``, Florence-2's
``<loc_12>``) and processor-level markers such as Florence-2's task tokens (``<OCR>``). A question
containing ``<image>`` otherwise makes the processor raise mid-training (naming no row), and an
answer containing the end-of-turn token is learned only up to it. :func:`reserved_text` lists
them; the collators use the same check at batch time (:func:`find_reserved`).

Answers too long for the collator. Pass the training ``collator`` and every answer is priced as that
collator will price it (its own tokenization and limit, through its ``length_problem(row)`` method):
Florence-2's ``<s>`` + answer + ``</s>`` against ``max_answer_tokens``, the chat collator's whole
conversation against ``max_length``. A row with several acceptable answers is bad only when none fits
(the collators draw among those that fit). Otherwise such a row stops the run hours in, at its batch::

    DataValidationError: [split='train', row 7, questionId=57349] the answer takes 80 tokens with <s> and
    </s>, more than max_answer_tokens=64; raise max_answer_tokens or drop the row ...

Pass it for every split: the prompt (Florence-2: the question with the page's image tokens, against the
encoder's 1,024 positions) is priced everywhere, since generation fails on it too; the answers only where
``price_answers=True`` (the default; ``False`` for splits that are only answered by generation, where a long
reference answer is fine).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from datasets import Image as ImageFeature

from vlm_helpers.data.errors import DataValidationError
from vlm_helpers.supervision import ImageDecodeError, ReservedText, find_reserved, reserved_text, to_rgb

__all__ = ["DataValidationError", "ReservedText", "SkippedRow", "ValidationReport", "clean_dataset", "find_reserved",
           "reserved_text", "validate_dataset", "validate_row"]

_TEST_SPLIT_HINT = (
    "DocVQA's test split ships without answers; train and evaluate on "
    "'train'/'validation', or pass answer_key=None for inference-only data"
)


class SkippedRow(NamedTuple):
    """One row :func:`validate_dataset` dropped: position, id (or None) and why.

    Listed with ``ON_BAD_ROWS = "skip"`` in ``notebooks/02_florence2_docvqa.ipynb``, section "The data:
    questions about scanned documents".
    """

    index: int
    id: Any
    reason: str
    origin: str | None = None  # "data.jsonl:12": the file and line (or split and row) it was read from


@dataclass
class ValidationReport:
    """What :func:`validate_dataset` saw: counts plus the reason for every skipped row.

    Printed in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
    """

    split: str
    checked: int = 0
    kept: int = 0
    skipped_rows: list[SkippedRow] = field(default_factory=list)
    kept_indices: list[int] = field(default_factory=list)
    id_key: str | None = "questionId"

    @property
    def skipped(self) -> int:
        """Number of rows that were dropped."""
        return len(self.skipped_rows)

    def __str__(self) -> str:
        lines = [f"{self.split}: checked {self.checked}, kept {self.kept}, skipped {self.skipped}"]
        for row in self.skipped_rows:
            name = f" ({self.id_key}={row.id})" if row.id is not None else ""
            origin = f" from {row.origin}" if row.origin is not None and row.origin != row.id else ""
            lines.append(f"  row {row.index}{name}{origin}: {row.reason}")
        return "\n".join(lines)


def validate_row(
    row: dict,
    *,
    split: str,
    index: int,
    answer_key: str | None = "answers",
    question_key: str = "question",
    image_key: str = "image",
    id_key: str | None = "questionId",
    answers_may_be_str: bool = False,
    reserved: ReservedText | None = None,
) -> dict:
    """Return a cleaned copy of ``row`` or raise :class:`DataValidationError`.

    Checks that the image decodes and is not empty, that the question is a
    non-empty string and that the answers are a non-empty list of non-empty
    strings (or, with ``answers_may_be_str=True``, a non-empty string).

    The cleaned row has the image as an RGB ``PIL.Image`` and the question
    stripped of surrounding whitespace; all other fields are copied unchanged.

    Args:
        row: one example, e.g. an item of a ``datasets.Dataset``.
        split: split name, used in error messages.
        index: row position, used in error messages.
        answer_key: column with the target(s); ``None`` skips the answer check.
        question_key: column with the question / prompt.
        image_key: column with the image (PIL image, bytes, path or datasets dict).
        id_key: column with an id to quote in error messages, if present.
        answers_may_be_str: accept a single string as the target.
        reserved: the model's reserved strings (:func:`reserved_text`); a question or answer
            containing one is refused.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
    """
    error = functools.partial(DataValidationError, split=split, index=index, id_key=id_key, **_whose(row, id_key))

    raw_image = row.get(image_key)
    if raw_image is None:
        raise error(f"image is missing (no value under {image_key!r})")
    try:
        image = to_rgb(raw_image)
    except ImageDecodeError as err:
        raise error(f"image could not be decoded: {err}") from err
    width, height = image.size
    if width == 0 or height == 0:
        raise error(f"image has zero size ({width}x{height})")

    question = row.get(question_key)
    if not isinstance(question, str):
        raise error(f"question {question_key!r} must be a string, got {type(question).__name__}")
    if not question.strip():
        raise error(f"question {question_key!r} is empty")

    found = find_reserved(question, reserved)
    if found:
        raise error(f"question {question_key!r} contains {found}, which the model's processor does not read as "
                    "text: remove or replace it")

    cleaned = dict(row)
    cleaned[image_key] = image
    cleaned[question_key] = question.strip()
    if answer_key is not None:
        problem = _answer_problem(row.get(answer_key), answer_key, answers_may_be_str)
        if problem:
            raise error(problem)
        answers = row[answer_key]
        for position, answer in enumerate([answers] if isinstance(answers, str) else answers):
            found = find_reserved(answer, reserved)
            if found:
                where = answer_key if isinstance(answers, str) else f"{answer_key}[{position}]"
                raise error(f"{where} contains {found}, which the model's processor does not read as text "
                            "(an end-of-turn token would end the answer there): remove or replace it")
        if isinstance(row[answer_key], tuple):
            cleaned[answer_key] = list(row[answer_key])
    return cleaned


def _whose(row: dict, id_key: str | None) -> dict:
    """The row's id and origin (notebook 06's ``"file:line"``), as :class:`DataValidationError` quotes them."""
    origin = row.get("origin")
    return {"question_id": row.get(id_key) if id_key else None,
            "origin": origin if isinstance(origin, str) else None}


def _answer_problem(answers: Any, key: str, may_be_str: bool) -> str | None:
    """Describe what is wrong with an answers value, or return None if it is fine."""
    if answers is None:
        return f"{key!r} is missing ({_TEST_SPLIT_HINT})"
    if isinstance(answers, str):
        if not may_be_str:
            return (
                f"{key!r} must be a list of strings, got the string {answers!r} "
                "(pass answers_may_be_str=True for single-string targets)"
            )
        return None if answers.strip() else f"{key!r} is an empty string"
    if not isinstance(answers, (list, tuple)):
        return f"{key!r} must be a list of strings, got {type(answers).__name__}"
    if len(answers) == 0:
        return f"{key!r} is an empty list ({_TEST_SPLIT_HINT})"
    for position, answer in enumerate(answers):
        if not isinstance(answer, str):
            return f"{key}[{position}] must be a string, got {type(answer).__name__}"
        if not answer.strip():
            return f"{key}[{position}] is an empty string"
    return None


def validate_dataset(
    rows: Iterable[dict],
    *,
    split: str,
    on_bad: Literal["raise", "skip"] = "raise",
    answer_key: str | None = "answers",
    question_key: str = "question",
    image_key: str = "image",
    id_key: str | None = "questionId",
    answers_may_be_str: bool = False,
    return_rows: bool = True,
    processor: Any = None,
    collator: Any = None,
    price_answers: bool = True,
) -> tuple[list[dict], ValidationReport]:
    """Validate every row with :func:`validate_row`; return cleaned rows and a report.

    Args:
        rows: any iterable of dicts, including ``datasets.Dataset`` and
            ``IterableDataset``. For those, images are read undecoded and decoded
            here, so a corrupt file becomes a :class:`DataValidationError` naming the
            row instead of a crash inside ``datasets``.
        split: split name, used in messages and in the report.
        on_bad: ``"raise"`` stops at the first bad row (before any training
            starts); ``"skip"`` drops bad rows and records why in the report.
        answer_key, question_key, image_key, id_key, answers_may_be_str:
            passed to :func:`validate_row`.
        processor: the model's processor or tokenizer: questions and answers containing its
            special tokens or task markers (:func:`reserved_text`) are refused.
        collator: the collator that will batch these rows for training
            (:class:`~vlm_helpers.florence2.Florence2Collator`,
            :class:`~vlm_helpers.chat_collator.ChatVLMCollator`, or any object with a
            ``length_problem(row) -> str | None`` method): a row whose answers are all too long for it
            is refused (or skipped, with the lengths and the limit in the report). Its ``processor``
            is used for the reserved-text check when ``processor`` is not given.
        price_answers: with ``collator``, also price the answers (a split the collator trains on); ``False``
            for a split that is only answered by generation (validation, test): its prompts are still
            priced (a question too long for the model fails generation too), its reference answers are not.
        return_rows: with ``False`` the returned list stays empty, so decoded
            images are not held in memory; use ``dataset.select(report.kept_indices)``
            on large real datasets.

    Returns:
        ``(cleaned_rows, report)``.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents"
    (through :func:`clean_dataset`).
    """
    if on_bad not in ("raise", "skip"):
        raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")

    report = ValidationReport(split=split, id_key=id_key)
    if collator is not None and not callable(getattr(collator, "length_problem", None)):
        raise TypeError(f"collator={type(collator).__name__} has no length_problem(row) method: pass the "
                        "training collator (Florence2Collator, ChatVLMCollator)")
    if processor is None and collator is not None:
        processor = getattr(collator, "processor", None)
    reserved = reserved_text(processor) if processor is not None else None
    cleaned_rows: list[dict] = []
    for index, row in enumerate(_with_undecoded_images(rows, image_key)):
        report.checked += 1
        try:
            cleaned = validate_row(
                row,
                split=split,
                index=index,
                answer_key=answer_key,
                question_key=question_key,
                image_key=image_key,
                id_key=id_key,
                answers_may_be_str=answers_may_be_str,
                reserved=reserved,
            )
            if collator is not None and answer_key is not None:
                # priced as the collator will see the row: as returned here, or as clean_dataset hands it on
                seen = cleaned if return_rows else {**row, image_key: cleaned[image_key]}
                try:
                    problem = collator.length_problem(seen, answers=price_answers)
                except ValueError as failure:  # e.g. a chat template that renders this answer oddly
                    problem = f"the collator cannot batch this row: {failure}"
                if problem:
                    raise DataValidationError(problem, split=split, index=index, id_key=id_key, **_whose(row, id_key))
        except DataValidationError as err:
            if on_bad == "raise":
                raise
            report.skipped_rows.append(SkippedRow(index, err.question_id, err.problem, err.origin))
            continue
        report.kept += 1
        report.kept_indices.append(index)
        if return_rows:
            cleaned_rows.append(cleaned)
    return cleaned_rows, report


def _with_undecoded_images(rows: Iterable[dict], image_key: str) -> Iterable[dict]:
    """For a datasets (Iterable)Dataset, switch the image column to undecoded dicts."""
    features = getattr(rows, "features", None)
    feature = features.get(image_key) if features else None
    if isinstance(feature, ImageFeature) and feature.decode:
        return rows.cast_column(image_key, ImageFeature(decode=False))
    return rows


def clean_dataset(dataset, *, split: str, on_bad: Literal["raise", "skip"] = "raise", **keys: Any):
    """Validate a ``datasets.Dataset`` without keeping decoded images; return ``(clean, report)``.

    ``clean`` is ``dataset.select(report.kept_indices)``: same rows minus the bad ones, still
    lazily decoded, so this works on real DocVQA without holding thousands of pages in memory.
    ``keys`` are passed to :func:`validate_dataset` (e.g. ``answer_key="caption"``,
    ``processor=processor`` to refuse text containing the model's special tokens, or, for the
    training split, ``collator=collator`` to refuse answers too long for it before the first step).

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents";
    with a caption column in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft
    photos and their tags".
    """
    _, report = validate_dataset(dataset, split=split, on_bad=on_bad, return_rows=False, **keys)
    if report.checked and not report.kept:  # skip mode dropped everything: stop here, not mid-training
        raise ValueError(f"[split={split!r}] no usable rows: all {report.checked} were skipped\n{report}")
    clean = dataset if report.skipped == 0 else dataset.select(report.kept_indices)
    return clean, report
