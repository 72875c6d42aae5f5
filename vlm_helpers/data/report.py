"""What the user's rows cost: image sizes, answer lengths in characters and tokens, image tokens per row.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". Run on canonical rows
(:data:`vlm_helpers.data.canonical.CANONICAL_FEATURES`) after :func:`vlm_helpers.data.validation.clean_dataset`.
Images are not decoded: each distinct file is opened once and only its header is read for the size
(turned by the EXIF orientation, as :func:`vlm_helpers.supervision.to_rgb` will turn it). Only the image of
the first row is decoded, to count the image tokens the processor puts into the prompt.

* :func:`data_report`: one split's counts and costs (:class:`DataReport`).
* :func:`your_data_report`: the one-screen report before training (:class:`YourDataReport`), for notebook 06
  and ``vlm-train --recipe custom``: rows per split, rows kept and skipped with the reasons and ``file:line``,
  answer lengths in tokens, the largest image priced in image tokens by the model's processor under the
  preset's image budget (and what the budget does to a large photo, :data:`LARGE_PHOTO`), and the metric that
  will choose the best checkpoint and why (:func:`headline_metric`).
"""

from __future__ import annotations

import io
import math
import re
import statistics
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from PIL import ExifTags, Image

__all__ = ["DataReport", "LARGE_PHOTO", "METRIC_REASONS", "SkippedLine", "Stats", "YourDataReport", "data_report",
           "headline_metric", "reason_kind", "source_label", "summarise", "your_data_report"]

_SIDEWAYS = (5, 6, 7, 8)  # EXIF orientations whose transpose swaps width and height


class Stats(NamedTuple):
    """``min`` / ``median`` / ``p95`` / ``max`` of some values; ``p95`` is the nearest-rank percentile (a value
    that occurs). Printed by the data report of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    min: float
    median: float
    p95: float
    max: float

    def __str__(self) -> str:
        return " / ".join(f"{name} {_number(value)}" for name, value in zip(self._fields, self))


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def summarise(values: Sequence[float]) -> Stats | None:
    """:class:`Stats` of ``values``, or None when there are none. The p95 is ``sorted(values)[ceil(0.95 n) - 1]``.
    Used by the data report of ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    if not values:
        return None
    ordered = sorted(values)
    return Stats(ordered[0], statistics.median(ordered), ordered[math.ceil(0.95 * len(ordered)) - 1], ordered[-1])


@dataclass(frozen=True)
class DataReport:
    """Counts and costs of a split; ``str()`` is the printed report.

    ``width`` / ``height`` are over rows (a page asked about three times counts three times: each row shows
    it to the model); ``small_rows`` counts rows whose image is narrower or lower than ``small_side`` pixels.
    ``answer_chars`` / ``answer_tokens`` are over every acceptable answer of every row. ``prompt_tokens`` and
    ``image_tokens`` are those of the first readable row's prompt (``None`` without a chat processor).
    ``largest`` is the size of the image with the most pixels (the first of equals), ``largest_row`` its row
    (``"a7 (data.csv:9)"``). Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    rows: int
    images: int
    unreadable: tuple[str, ...]
    width: Stats | None
    height: Stats | None
    small_side: int
    small_rows: int
    answers: int
    answer_chars: Stats | None
    answer_tokens: Stats | None = None
    prompt_tokens: int | None = None
    image_tokens: int | None = None
    first_row: str | None = None
    largest: tuple[int, int] | None = None  # (width, height) of the image with the most pixels
    largest_row: str | None = None  # its row: the id, and where it was read when that differs

    def __str__(self) -> str:
        lines = [f"{self.rows} rows, {self.images} distinct images"
                 + (f", {len(self.unreadable)} unreadable (ids {list(self.unreadable)[:5]})" if self.unreadable
                    else "")]
        if self.width is not None:
            lines.append(f"image width px: {self.width}; height px: {self.height}")
            if self.largest is not None:
                lines.append(f"the largest image is {self.largest[0]}x{self.largest[1]} px (row {self.largest_row})")
            lines.append(f"{self.small_rows} rows have an image smaller than {self.small_side} px on a side")
        lines.append(f"answers ({self.answers} over {self.rows} rows), characters: {self.answer_chars}")
        if self.answer_tokens is not None:
            lines.append(f"answers, tokens: {self.answer_tokens}")
        if self.image_tokens is not None:
            lines.append(f"row {self.first_row}: the prompt is {self.prompt_tokens} tokens, {self.image_tokens} "
                         "of them for the image (its image tokens and the markers around them; + the answer's "
                         "tokens when training)")
        return "\n".join(lines)


def _image_size(value: dict, cache: dict) -> tuple[int, int] | None:
    """``(width, height)`` of an undecoded image (``{"bytes", "path"}``), upright; None if unreadable."""
    data = value.get("bytes")
    key = ("bytes", len(data), zlib.crc32(data)) if data is not None else ("path", value.get("path"))
    if key not in cache:
        try:
            with Image.open(io.BytesIO(data) if data is not None else value["path"]) as image:
                width, height = image.size
                if image.getexif().get(ExifTags.Base.Orientation) in _SIDEWAYS:
                    width, height = height, width
                cache[key] = (width, height)
        except (OSError, ValueError, TypeError, SyntaxError):
            cache[key] = None
    return cache[key]


def _prompt_tokens(processor: Any, row: dict) -> tuple[int, int] | None:
    """``(prompt tokens, image tokens)`` of one row's generation prompt, or None if the processor cannot say."""
    if not getattr(processor, "chat_template", None) or getattr(processor, "image_processor", None) is None:
        return None
    from vlm_helpers.chat_collator import special_tokens_flag, vision_token_ids
    from vlm_helpers.supervision import to_rgb

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    flag = special_tokens_flag(processor.tokenizer, [text])
    ids = processor(text=[text], images=[[to_rgb(row["image"])]], add_special_tokens=flag)["input_ids"][0]
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    vision = vision_token_ids(processor)
    return len(ids), sum(token in vision for token in ids)


def data_report(dataset: datasets.Dataset, *, processor: Any = None, small_side: int = 64) -> DataReport:
    """Count a split's rows and say what they cost: image sizes, answer lengths, tokens.

    ``processor`` (a processor or a tokenizer, optional) adds the answers' lengths in tokens (without special
    tokens) and, for a chat processor, the length of the first row's prompt and how many of its tokens
    stand for the image. Reads the ``image``, ``question`` and ``answers`` columns of canonical rows. Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    cache: dict = {}
    sizes, unreadable, first_readable, largest = [], [], None, None
    ids = dataset["id"]
    origins = dataset["origin"] if "origin" in dataset.column_names else ids
    for index, (row_id, value) in enumerate(zip(ids, raw["image"])):
        size = _image_size(value, cache)
        if size is None:
            unreadable.append(row_id)
        else:
            sizes.append(size)
            first_readable = index if first_readable is None else first_readable
            if largest is None or size[0] * size[1] > sizes[largest][0] * sizes[largest][1]:
                largest = len(sizes) - 1
                largest_row = row_id if origins[index] in (None, row_id) else f"{row_id} ({origins[index]})"
    answers = [answer for row in dataset["answers"] for answer in row]
    answer_tokens = prompt = None
    if processor is not None:
        tokenizer = getattr(processor, "tokenizer", processor)
        lengths = [len(ids) for ids in tokenizer(answers, add_special_tokens=False)["input_ids"]] if answers else []
        answer_tokens = summarise(lengths)
        prompt = _prompt_tokens(processor, dataset[first_readable]) if first_readable is not None else None
    return DataReport(
        rows=len(dataset), images=sum(size is not None for size in cache.values()), unreadable=tuple(unreadable),
        width=summarise([w for w, _ in sizes]), height=summarise([h for _, h in sizes]), small_side=small_side,
        small_rows=sum(min(w, h) < small_side for w, h in sizes), answers=len(answers),
        answer_chars=summarise([len(answer) for answer in answers]), answer_tokens=answer_tokens,
        prompt_tokens=prompt[0] if prompt else None, image_tokens=prompt[1] if prompt else None,
        first_row=str(dataset[first_readable]["id"]) if prompt else None,
        largest=sizes[largest] if largest is not None else None,
        largest_row=largest_row if largest is not None else None)


# ---------------------------------------------------------------------------------------- the one-screen report

#: A large photo, priced to show what an image budget does: a 12-megapixel phone camera's 4032 x 3024 pixels
#: (Qwen2-VL's published settings make it 15,552 image tokens; under the T4 preset's budget about 1,280).
LARGE_PHOTO = (4032, 3024)

#: Why each ``TASK`` is scored by its headline metric (``comparison.HEADLINE_METRICS[task][0]``).
METRIC_REASONS = {
    "qa": ("short answers: ANLS (DocVQA's metric) gives partial credit to a near miss such as one wrong character "
           "and none to a different answer; exact match, shown next to it, gives none to either"),
    "captioning": ("free text: ROUGE-1 counts the words a generated caption shares with the reference, in any "
                   "order; exact match would score almost every caption 0"),
}


def headline_metric(task: str) -> tuple[str, str]:
    """``(metric, why)``: the score that chooses the best checkpoint for ``task`` and why it suits the task.

    The metric is ``comparison.HEADLINE_METRICS[task][0]`` (``anls`` for ``"qa"``, ``rouge1`` for
    ``"captioning"``). Printed by the data report of ``notebooks/06_your_data_your_model.ipynb``, section
    "Your data"; its model card (``notebooks/06_your_data_your_model.ipynb``, section "Share the result") says it too.
    """
    from vlm_helpers.evaluation import HEADLINE_METRICS

    if task not in METRIC_REASONS:
        raise ValueError(f"TASK must be one of {sorted(METRIC_REASONS)}, got {task!r}")
    return HEADLINE_METRICS[task][0], METRIC_REASONS[task]


def reason_kind(reason: str) -> str:
    """The kind of a skip reason, without its particulars (paths, values, parser positions): the text before
    the first ``:``, ``;``, ``(`` or `` got``, e.g. ``"image file not found"``. Used to count skipped rows by
    reason in the data report and the model card of ``notebooks/06_your_data_your_model.ipynb``, section
    "Your data"."""
    kind = re.split(r":|;| \(|, got ", reason, maxsplit=1)[0].strip()
    return kind or reason.strip()


class SkippedLine(NamedTuple):
    """One row left out before training: ``stage`` (``"read"`` by the loader, ``"checks"`` by
    ``clean_dataset``), its ``split``, ``where`` (``data.jsonl:7``, the file by its name; or ``test row 3``),
    its id (None if unknown) and the reason. Listed by :class:`YourDataReport`
    (``notebooks/06_your_data_your_model.ipynb``, section "Your data")."""

    stage: str
    split: str
    where: str
    id: str | None
    reason: str

    def __str__(self) -> str:
        own_id = self.id is not None and self.id not in self.where
        return f"{self.where}" + (f" (id={self.id})" if own_id else "") + f": {self.reason}"


@dataclass(frozen=True)
class YourDataReport:
    """The one-screen report before training; ``str()`` is the screen. Built by :func:`your_data_report`.

    ``rows``: rows per split as they will be used; ``read`` / ``kept_read``: rows the loader read and kept (None
    without a load report); ``skipped``: every row left out (:class:`SkippedLine`); ``costs``: the
    :class:`DataReport` of all splits together; ``largest_tokens`` / ``largest_tokens_without``: the largest
    image's image tokens under the budget and without it; ``photo_tokens`` / ``photo_tokens_without``: the same
    for :data:`LARGE_PHOTO`; ``metric`` / ``metric_why``: :func:`headline_metric`. Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """

    task: str
    rows: dict[str, int]
    costs: DataReport
    metric: str
    metric_why: str
    source: str | None = None
    format: str | None = None
    read: int | None = None
    kept_read: int | None = None
    skipped: tuple[SkippedLine, ...] = ()
    notes: tuple[str, ...] = ()
    model: str | None = None
    preset: str | None = None
    budget: str | None = None
    largest_tokens: int | None = None
    largest_tokens_without: int | None = None
    photo: tuple[int, int] = LARGE_PHOTO
    photo_tokens: int | None = None
    photo_tokens_without: int | None = None
    shown: int = 6  # skipped rows listed one by one; the others are counted

    def skipped_by_reason(self) -> dict[str, int]:
        """``{reason kind: rows}`` (:func:`reason_kind`), most frequent first."""
        return dict(Counter(reason_kind(line.reason) for line in self.skipped).most_common())

    def skipped_by_split(self) -> dict[str, int]:
        """``{split: rows skipped}`` for every split of ``rows`` (and any other split rows were read for)."""
        counts = {name: 0 for name in self.rows}
        for line in self.skipped:
            counts[line.split] = counts.get(line.split, 0) + 1
        return counts

    def __str__(self) -> str:
        costs = self.costs
        lines = ["Your data, before training"]
        if self.source is not None:
            lines.append(f"  read {self.read} rows from {source_label(self.source)} ({self.format}): "
                         f"kept {self.kept_read}, skipped {self.read - self.kept_read}")
        used = sum(self.rows.values())
        checked = sum(1 for line in self.skipped if line.stage == "checks")
        lines.append("  rows per split: " + ", ".join(f"{name} {count}" for name, count in self.rows.items())
                     + f" ({used} used" + (f"; {checked} more left out by the checks" if checked else "")
                     + (f"; {self.kept_read - used - checked} more read but not used: a row limit"
                        if self.kept_read is not None and self.kept_read > used + checked else "") + ")")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)}: "
                         + ", ".join(f"{count} {kind}" for kind, count in self.skipped_by_reason().items()))
            lines += [f"    {line}" for line in self.skipped[:self.shown]]
            if len(self.skipped) > self.shown:
                lines.append(f"    ... and {len(self.skipped) - self.shown} more (every one is in the load report "
                             "and the checks' reports)")
        lines += [f"  note: {note}" for note in self.notes]
        answers = f"  answers: {costs.answers} over {costs.rows} rows; characters {costs.answer_chars}"
        lines.append(answers + (f"; tokens {costs.answer_tokens}" if costs.answer_tokens is not None else ""))
        if costs.width is not None:
            lines.append(f"  images: {costs.images} distinct; width px {costs.width}; height px {costs.height}"
                         + (f"; {costs.small_rows} row{'s' if costs.small_rows != 1 else ''} under "
                            f"{costs.small_side} px on a side" if costs.small_rows else ""))
        if costs.unreadable:
            lines.append(f"  {len(costs.unreadable)} images cannot be read: ids {list(costs.unreadable)[:5]}")
        model = f" for {self.model}" if self.model else ""
        preset = f" on preset {self.preset}" if self.preset else ""
        if costs.largest is not None:
            width, height = costs.largest
            priced = (f": {self.largest_tokens:,} image tokens{model}{preset}" if self.largest_tokens is not None
                      else "")
            without = (f" (without the budget: {self.largest_tokens_without:,})"
                       if self.largest_tokens_without is not None else "")
            lines.append(f"  largest image: {width}x{height} px, row {costs.largest_row}{priced}{without}")
        if self.budget is not None and self.photo_tokens is not None:
            photo = f"a {self.photo[0]}x{self.photo[1]} phone photo"
            if self.photo_tokens_without is not None and self.photo_tokens_without != self.photo_tokens:
                lines.append(f"  image budget: {self.budget}; {photo} would cost {self.photo_tokens_without:,} image "
                             f"tokens without it, {self.photo_tokens:,} with it")
            elif self.photo_tokens_without is not None:
                lines.append(f"  image budget: {self.budget}; {photo} would cost {self.photo_tokens:,} image tokens, "
                             "with or without it")
            else:
                lines.append(f"  image budget: {self.budget}; {photo} would cost {self.photo_tokens:,} image tokens")
        if costs.image_tokens is not None:
            lines.append(f"  a prompt: {costs.prompt_tokens} tokens for row {costs.first_row}, {costs.image_tokens} of "
                         "them for its image (its image tokens and the markers around them; + the answer's tokens "
                         "when training)")
        lines.append(f"  metric: {self.metric} on the validation split chooses the best checkpoint; the test split "
                     "gives the before/after scores")
        lines.append(f"    why {self.metric}: {self.metric_why}")
        return "\n".join(lines)


def _source_parts(source: str) -> dict[str, str]:
    """``{split: path}`` of a loader's source naming one file per split (``"train=a.jsonl, test=b.jsonl"``, as
    ``load_your_data`` writes a mapping), else ``{}``."""
    if Path(source).exists() or "=" not in source:
        return {}
    return dict(re.findall(r"(\w+)=(.+?)(?=, \w+=|$)", source))


def source_label(source: str) -> str:
    """A data source as a reader (and a model card) should see it: a local file or folder by its name only, one
    file per split as ``train=a.jsonl, test=b.jsonl``, a Hub id as it is. An absolute path is never shown whole:
    it tells a reader nothing but your folder layout. Used by the data report of
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data", and by its model card."""
    parts = _source_parts(source)
    if parts:
        return ", ".join(f"{split}={source_label(path)}" for split, path in parts.items())
    path = Path(source)
    return path.name if path.is_absolute() or path.exists() else source


def _skipped_lines(load_report: Any, checks: Sequence[Any]) -> list[SkippedLine]:
    """Every row the loader and the checks left out, in that order."""
    lines = []
    if load_report is not None:
        by_file = {str(Path(path)): split for split, path in _source_parts(str(load_report.source)).items()}
        default = next(iter(load_report.splits), "train")
        for row in load_report.skipped_rows:
            split = by_file.get(str(Path(row.file)), default)
            element = getattr(row, "element", None)  # a file holding one JSON array: the element's index
            where = f"{Path(row.file).name}:{row.line}" + (f" (element {element})" if element is not None else "")
            lines.append(SkippedLine("read", split, where, row.id, row.reason))
    for check in checks:
        for row in check.skipped_rows:
            where = row.origin if row.origin is not None else f"{check.split} row {row.index}"
            lines.append(SkippedLine("checks", check.split, where, None if row.id is None else str(row.id),
                                     row.reason))
    return lines


def your_data_report(splits: Mapping[str, datasets.Dataset], *, task: str, load_report: Any = None,
                     checks: Sequence[Any] = (), processor: Any = None, processor_without_budget: Any = None,
                     budget: Mapping[str, Any] | None = None, model: str | None = None, preset: str | None = None,
                     small_side: int = 64) -> YourDataReport:
    """The one-screen data report before training: what was read, what will be used, what it costs, how it is
    scored.

    Args:
        splits: the rows as they will be used, ``{"train": ..., "validation": ..., "test": ...}`` (canonical rows,
            after ``clean_dataset``).
        task: ``"qa"`` or ``"captioning"``: the metric (:func:`headline_metric`).
        load_report: ``load_your_data``'s :class:`~vlm_helpers.data.canonical.LoadReport` (rows read, kept,
            skipped by ``file:line``).
        checks: ``clean_dataset``'s :class:`~vlm_helpers.data.validation.ValidationReport` of each split.
        processor: the model's processor as loaded (with the image budget): answer lengths in tokens, a prompt's
            tokens, and the largest image and :data:`LARGE_PHOTO` in image tokens
            (:func:`vlm_helpers.processors.image_tokens`, the real processor on an image of that size).
        processor_without_budget: the same checkpoint's processor with its own settings, to say what the budget
            saves (omit it when there is no budget).
        budget: the image budget applied (``ModelChoice.image_budget(preset)``); its text is shown.
        model, preset: names shown with the prices.

    ``str()`` of the result is the screen; ``vlm-train --recipe custom`` prints the same. Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
    """
    metric, why = headline_metric(task)
    parts = [rows for rows in splits.values() if len(rows)]
    everything = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else None
    if everything is None:
        raise ValueError(f"no rows to report on: the splits are {dict((name, 0) for name in splits)}")
    costs = data_report(everything, processor=processor, small_side=small_side)
    prices: dict[str, int | None] = {"largest": None, "largest_without": None, "photo": None, "photo_without": None}
    if processor is not None and getattr(processor, "image_processor", None) is not None:
        from vlm_helpers.processors import image_tokens

        for name, priced_by in (("", processor), ("_without", processor_without_budget)):
            if priced_by is None:
                continue
            if costs.largest is not None:
                prices["largest" + name] = image_tokens(priced_by, costs.largest)
            prices["photo" + name] = image_tokens(priced_by, LARGE_PHOTO)
    budget_shown = None
    if budget is not None:
        from vlm_helpers.processors import budget_text

        budget_shown = budget_text(dict(budget))
    return YourDataReport(
        task=task, rows={name: len(rows) for name, rows in splits.items()}, costs=costs, metric=metric,
        metric_why=why, source=None if load_report is None else str(load_report.source),
        format=None if load_report is None else load_report.format,
        read=None if load_report is None else load_report.read,
        kept_read=None if load_report is None else load_report.kept,
        skipped=tuple(_skipped_lines(load_report, checks)),
        notes=tuple(load_report.notes) if load_report is not None else (), model=model, preset=preset,
        budget=budget_shown, largest_tokens=prices["largest"], largest_tokens_without=prices["largest_without"],
        photo_tokens=prices["photo"], photo_tokens_without=prices["photo_without"])
