"""Turn whatever a dataset hands you into an RGB ``PIL.Image``.

Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".

Real document datasets mix image modes: grey scans (``L``), palette PNGs (``P``),
transparent screenshots (``RGBA``), print-ready ``CMYK`` and 16-bit scans
(``I;16``). Vision processors expect 8-bit RGB, and a naive ``image.convert("RGB")``
gets some of these wrong: transparent pixels turn black and 16-bit values are
clipped to white. :func:`to_rgb` handles each case explicitly.

Phone photos of documents are usually stored sideways, with an EXIF
``Orientation`` tag saying how to turn them upright; a viewer obeys the tag, but
``Image.open`` does not, so the model would see the page rotated. :func:`to_rgb`
first applies the tag (``PIL.ImageOps.exif_transpose``) for every input kind, then
converts the mode.
"""

from __future__ import annotations

import io
import os
import struct
from typing import Any, Union

import numpy as np
from PIL import ExifTags, Image, ImageOps

__all__ = ["ImageDecodeError", "ImageLike", "to_rgb"]

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
