"""What every collator of the series shares: the row's image as upright RGB, its text checked, the answer
chosen, and the labels the loss may see.

Labels and the loss mask are taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the
loss may see", and used again by the chat collator of ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section
"Batches, and what the loss may see". A label of ``IGNORE_INDEX`` (-100) is a position the loss does not see:
PyTorch's cross-entropy skips it. The chat collator (:mod:`vlm_helpers.chat_collator`) imports this module and
no other of the package, so the two files can be copied together.

Images (:func:`to_rgb`), taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about
scanned documents": real document datasets mix image modes: grey scans (``L``), palette PNGs (``P``),
transparent screenshots (``RGBA``), print-ready ``CMYK`` and 16-bit scans (``I;16``). Vision processors expect
8-bit RGB, and a naive ``image.convert("RGB")`` gets some of these wrong: transparent pixels turn black and
16-bit values are clipped to white. :func:`to_rgb` handles each case explicitly. Phone photos of documents are
usually stored sideways, with an EXIF ``Orientation`` tag saying how to turn them upright; a viewer obeys the
tag, but ``Image.open`` does not, so the model would see the page rotated. :func:`to_rgb` first applies the tag
(``PIL.ImageOps.exif_transpose``) for every input kind, then converts the mode.

Reserved text (:func:`reserved_text`, :func:`find_reserved`): strings a processor does not read as plain text
(special tokens, image tokens, task prompts); a question or answer holding one is refused, before training
(:mod:`vlm_helpers.data.validation`) and at batch time.
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

__all__ = ["IGNORE_INDEX", "ImageDecodeError", "ImageLike", "ReservedText", "check_plain_text", "find_reserved",
           "describe_sample", "format_supervision", "pad_labels", "pick_answer", "reserved_text", "supervised_text", "to_rgb"]

IGNORE_INDEX = -100


def pick_answer(answers: Sequence[str], *, choice: str, seed: int, key: object) -> str:
    """Pick the training target among several valid answers.

    ``choice="first"`` takes ``answers[0]`` (the blog's choice); ``"random"`` draws one
    with an RNG seeded by ``(seed, key)``, so the pick is reproducible in any worker process.
    The collator's ``answer_choice`` in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what
    the loss may see".
    """
    if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"Row {key!r} has no usable answer: answers={list(answers)!r}")
    if choice == "first":
        return answers[0]
    if choice == "random":
        rng = random.Random(zlib.crc32(f"{seed}/{key}".encode()))
        return answers[rng.randrange(len(answers))]
    raise ValueError(f"answer choice must be 'first' or 'random', got {choice!r}")


def check_plain_text(text: str, reserved, *, where: str, what: str) -> None:
    """Raise ``ValueError`` naming the row when ``text`` holds one of the model's reserved strings.

    ``reserved`` comes from :func:`vlm_helpers.data.validation.reserved_text`. The processor would
    otherwise raise without naming the row (``<image>``, Florence-2's ``<OCR>``), or the answer
    would silently end at an end-of-turn token. The collators' check described in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    found = find_reserved(text, reserved)
    if found:
        raise ValueError(f"{where}: the {what} contains {found}, which the model's processor does not read as "
                         "text; validate the data with clean_dataset(..., processor=processor) before training")


def pad_labels(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """Right-pad token-id lists into a ``(batch, max_len)`` tensor filled with -100.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    width = max(len(seq) for seq in sequences)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    for row, seq in enumerate(sequences):
        labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return labels


def supervised_text(labels: torch.Tensor, tokenizer) -> str:
    """Decode only the supervised positions (label != -100) of one row, special tokens kept.

    What the loss sees, as in ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss
    may see".
    """
    kept = [int(t) for t in labels.tolist() if t != IGNORE_INDEX]
    return tokenizer.decode(kept, skip_special_tokens=False)


def format_supervision(token_ids: torch.Tensor, labels: torch.Tensor | None, tokenizer, *, width: int = 100) -> str:
    """Show a learner which tokens the loss sees: ``[token]`` is supervised, ``·token·`` is not.

    For a decoder-only model pass ``input_ids`` and ``labels`` of the same row (aligned);
    for Florence-2 pass the ``labels`` row as both arguments. Repeated image tokens are
    folded into one ``<image>xN`` entry so the line stays readable. Used in
    ``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss may see".
    """
    ids = [int(t) for t in token_ids.tolist()]
    # -100 is not a token: show it as what it is (padding the loss skips), not as token id 0
    tokens = [str(IGNORE_INDEX) if t == IGNORE_INDEX else tokenizer.convert_ids_to_tokens(t) for t in ids]
    flags = [True] * len(tokens) if labels is None else [int(x) != IGNORE_INDEX for x in labels.tolist()]
    parts: list[str] = []
    previous, run = None, 0
    for token, supervised in list(zip(tokens, flags)) + [(None, None)]:
        if (token, supervised) == previous:
            run += 1
            continue
        if previous is not None:
            text, was_supervised = previous
            text = text.replace("Ġ", "␣").replace("▁", "␣").replace("\n", "\\n")
            if run > 1:
                text = f"{text}x{run}"
            parts.append(f"[{text}]" if was_supervised else f"·{text}·")
        previous, run = (token, supervised), 1
    lines, line = [], ""
    for part in parts:
        if len(line) + len(part) > width and line:
            lines.append(line)
            line = ""
        line += part + " "
    lines.append(line)
    return "\n".join(l.rstrip() for l in lines)


def describe_sample(batch: dict[str, torch.Tensor], tokenizer, row: int = 0, *, width: int = 100) -> str:
    """One row of a training batch, ``[supervised]`` vs ``·masked·`` tokens (padding left out).

    Used in ``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Batches, and what the loss may see", and
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "Batches, and what the loss may see".
    """
    length = int(batch["attention_mask"][row].sum())
    return format_supervision(batch["input_ids"][row, :length], batch["labels"][row, :length], tokenizer, width=width)


class ReservedText(NamedTuple):
    """Strings a model's processor does not read as plain text, and what each one is.

    Why they are refused: ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned
    documents".
    """

    kinds: dict[str, str]  # string -> e.g. "special token of the tokenizer"
    pattern: re.Pattern | None  # matches any of them (longest first); None when there are none


def is_prefix_lm_processor(processor) -> bool:
    """True for a processor that builds labels from ``suffix=`` (PaliGemma's), not from a chat template.

    Such a processor is batched by :class:`vlm_helpers.prefix_collator.PrefixLMCollator` and refused by the chat
    collator. Taught in ``notebooks/06_your_data_your_model.ipynb``, section "Before fine-tuning".
    """
    import inspect

    call = getattr(processor, "__call__", None)
    if call is not None and "suffix" in inspect.signature(call).parameters:
        return True
    kwargs_class = getattr(processor, "valid_processor_kwargs", None)
    text_kwargs = getattr(kwargs_class, "__annotations__", {}).get("text_kwargs")
    return "suffix" in getattr(text_kwargs, "__annotations__", {})


def reserved_text(processor) -> ReservedText:
    """The strings that must not appear in a question or answer for this ``processor`` (or tokenizer).

    Collected from the tokenizer (every special token, and every added token that is special or
    looks like markup, ``<...>`` / ``[...]``) and from the processor (string attributes ending in
    ``_token``, such as ``image_token``, and the keys of dictionaries named ``task_prompts*``, such
    as Florence-2's ``<OCR>``). Works for any Hugging Face processor or tokenizer. Why the processor is
    passed to the check: ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned
    documents".
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    kinds: dict[str, str] = {}
    for token in getattr(tokenizer, "all_special_tokens", []):
        kinds.setdefault(str(token), "a special token of the tokenizer")
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        content = str(getattr(added, "content", added))
        markup = (content.startswith("<") and content.endswith(">")) or (
            content.startswith("[") and content.endswith("]"))
        if len(content.strip()) > 1 and (getattr(added, "special", False) or markup):
            kinds.setdefault(content, "a special token of the tokenizer")
    if processor is not tokenizer:
        for name, value in vars(processor).items():
            if name.endswith("_token") and isinstance(value, str) and len(value.strip()) > 1:
                kinds.setdefault(value, f"the processor's {name}")
            elif name.startswith("task_prompts") and isinstance(value, dict):
                for key in value:
                    kinds.setdefault(str(key), "a task token of the processor")
    kinds = {text: kind for text, kind in kinds.items() if text.strip()}
    ordered = sorted(kinds, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
    return ReservedText(kinds, pattern)


def find_reserved(text: str, reserved: ReservedText | None) -> str | None:
    """A description of the first reserved string in ``text`` (e.g. ``"'<image>' (the processor's
    image_token)"``), or None when the text is plain. Used before training
    (``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents") and by
    the collators at batch time (``notebooks/02_florence2_docvqa.ipynb``, section "Batches, and what the loss
    may see")."""
    if reserved is None or reserved.pattern is None or not isinstance(text, str):
        return None
    match = reserved.pattern.search(text)
    if match is None:
        return None
    return f"{match.group(0)!r} ({reserved.kinds[match.group(0)]})"


#: Everything :func:`to_rgb` accepts: a PIL image, a datasets-style undecoded dict
#: ``{"bytes": ..., "path": ...}``, raw encoded bytes, or a file path.
ImageLike = Union[Image.Image, dict, bytes, bytearray, str, os.PathLike]

# Pillow's decoders raise many unrelated exception types on corrupt input.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# EXIF Orientation values that need a transpose (1 means "already upright").
_TURNING_ORIENTATIONS = (2, 3, 4, 5, 6, 7, 8)


class ImageDecodeError(ValueError):
    """Raised when an input cannot be decoded into an image.

    The corrupt rows of ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned
    documents"; :func:`vlm_helpers.data.validation.validate_row` turns it into an error naming the row.
    """


def to_rgb(image: ImageLike, *, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return ``image`` as an 8-bit, upright RGB ``PIL.Image``.

    Upright: an EXIF ``Orientation`` tag (phone photos) is applied first with
    ``PIL.ImageOps.exif_transpose``, whatever the input kind, so the pixels come back
    the way a photo viewer shows them and the tag is removed. Images without the tag
    (or with value 1) are not touched; an unreadable EXIF block is ignored.

    Args:
        image: a PIL image, a dict ``{"bytes": ..., "path": ...}`` (what a
            ``datasets`` ``Image(decode=False)`` column holds), encoded bytes, or a path.
        background: colour that transparent pixels are composited onto. White by
            default, because documents are printed on white paper.

    Raises:
        ImageDecodeError: the input is not an image or cannot be decoded.

    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
    """
    pil = image if isinstance(image, Image.Image) else _decode(image)
    pil = _upright(pil)
    mode = pil.mode

    if mode == "RGB":
        return pil
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _wide_to_rgb(pil)
    if _has_transparency(pil):
        return _composite(pil.convert("RGBA"), background)
    try:
        # Covers 1, L, P (opaque), CMYK, YCbCr, HSV, RGBX, ...
        return pil.convert("RGB")
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"cannot convert image mode {mode!r} to RGB: {err}") from err


def _decode(source: Any) -> Image.Image:
    """Open a dict / bytes / path as a fully loaded PIL image."""
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path"):
            source = source["path"]
        else:
            raise ImageDecodeError("image dict has neither 'bytes' nor 'path'")

    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                source = handle.read()
        except OSError as err:
            raise ImageDecodeError(f"cannot read image file {os.fspath(source)!r}: {err}") from err

    if not isinstance(source, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected an image, bytes, dict or path, got {type(source).__name__}")
    if len(source) == 0:
        raise ImageDecodeError("image bytes are empty")

    try:
        pil = Image.open(io.BytesIO(source))
        pil.load()  # decode now, so corrupt data fails here and not later in a worker
    except Image.UnidentifiedImageError as err:
        raise ImageDecodeError(f"{len(source)} bytes are not in any image format Pillow knows") from err
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"cannot decode image ({len(source)} bytes): {err}") from err
    return pil


def _upright(pil: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag; return ``pil`` itself when there is nothing to turn."""
    try:
        orientation = pil.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:
        return pil  # a broken EXIF block: keep the pixels as stored rather than fail
    if orientation not in _TURNING_ORIENTATIONS:
        return pil
    try:
        return ImageOps.exif_transpose(pil)
    except _DECODE_ERRORS as err:
        raise ImageDecodeError(f"cannot apply EXIF orientation {orientation}: {err}") from err


def _has_transparency(pil: Image.Image) -> bool:
    """True for modes with an alpha band and for images with a transparency key."""
    return pil.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in pil.info


def _composite(rgba: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Paint an RGBA image onto a solid background and drop the alpha band."""
    canvas = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def _wide_to_rgb(pil: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer and float images to 8 bits, then to RGB.

    Pillow's own conversion clips these to 0..255, which turns a normal 16-bit
    scan almost entirely white. Instead the value range is rescaled:

    * ``I;16*`` modes: the full 16-bit range, 0..65535 -> 0..255.
    * ``I`` and ``F``: values already in 0..255 are kept; float values in 0..1
      are multiplied by 255; values in 0..65535 are treated as 16-bit; anything
      else (negative values, huge ranges) is stretched from its min..max.
    """
    values = np.asarray(pil).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0

    if pil.mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    elif pil.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    elif high > low:
        scaled = (values - low) * (255.0 / (high - low))
    else:  # a constant image outside 0..65535 carries no contrast
        scaled = np.zeros_like(values)

    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
