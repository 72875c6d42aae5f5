"""What the user's rows cost: image sizes, answer lengths in characters and tokens, image tokens per row.

Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Your data". Run on canonical rows
(:data:`vlm_helpers.data.canonical.CANONICAL_FEATURES`) after :func:`vlm_helpers.data.validation.clean_dataset`.
Images are not decoded: each distinct file is opened once and only its header is read for the size
(turned by the EXIF orientation, as :func:`vlm_helpers.data.images.to_rgb` will turn it). Only the image of
the first row is decoded, to count the image tokens the processor puts into the prompt.
"""

from __future__ import annotations

import io
import math
import statistics
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import datasets
from PIL import ExifTags, Image

__all__ = ["DataReport", "Stats", "data_report", "summarise"]

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
    ``image_tokens`` are those of the first readable row's prompt (``None`` without a chat processor). Taught in
    ``notebooks/06_your_data_your_model.ipynb``, section "Your data".
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

    def __str__(self) -> str:
        lines = [f"{self.rows} rows, {self.images} distinct images"
                 + (f", {len(self.unreadable)} unreadable (ids {list(self.unreadable)[:5]})" if self.unreadable
                    else "")]
        if self.width is not None:
            lines.append(f"image width px: {self.width}; height px: {self.height}")
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
    from vlm_helpers.data.images import to_rgb

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
    sizes, unreadable, first_readable = [], [], None
    for index, (row_id, value) in enumerate(zip(dataset["id"], raw["image"])):
        size = _image_size(value, cache)
        if size is None:
            unreadable.append(row_id)
        else:
            sizes.append(size)
            first_readable = index if first_readable is None else first_readable
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
        first_row=str(dataset[first_readable]["id"]) if prompt else None)
