"""Draw simple business documents with Pillow, for the synthetic DocVQA stand-in.

Used in tiny mode of ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about
scanned documents"; what survives of a page shrunk to 64 px is discussed in
``notebooks/03_idefics2_qlora_docvqa.ipynb``, section "Does it read the page?".
:mod:`vlm_helpers.tiny.synthetic_docvqa` decides *what* a document says;
this module only decides *how it looks*.

Three layouts, each recognisable even when the page is shrunk to 64 px:

* ``invoice``: a full-width blue band across the top, a priced table and a total.
* ``form``: a green stripe down the left edge and boxed fields.
* ``letter``: a centred red-brown letterhead, a salutation and a signature.

Every string a :class:`DocumentSpec` carries is drawn on the page, so an answer
taken from the spec is readable in the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from PIL import Image, ImageDraw, ImageFont

__all__ = ["LAYOUTS", "LAYOUT_COLOURS", "DocumentSpec", "Fonts", "load_fonts", "render_document"]

LAYOUTS = ("form", "invoice", "letter")
#: Accent colour per layout: band, rules and title all use it.
LAYOUT_COLOURS = {"invoice": (31, 78, 160), "form": (34, 130, 76), "letter": (150, 52, 40)}

_INK = (25, 25, 25)
_GREY = (105, 105, 105)
_RULE = (150, 150, 150)
_PEN = (20, 40, 165)
_PAPER = (255, 255, 255)
# Sizes below are in pixels for a 384 x 480 page and scale with the page.
_REFERENCE_SIZE = (384, 480)

Font = Union[ImageFont.FreeTypeFont, ImageFont.ImageFont]


@dataclass(frozen=True)
class DocumentSpec:
    """Everything printed on one synthetic page.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        title: big header text, e.g. ``"INVOICE"``.
        organisation: company name printed next to its logo.
        logo_colour: fill colour of the company logo.
        fields: ``(label, value)`` pairs printed as "Label: value".
        table_header: column names of the small table.
        table_rows: table cells, one tuple per row.
        table_total: ``(label, value)`` printed under the table, or ``None``.
        body: paragraphs of running text (wrapped to the page width).
        handwritten: short text written in blue "pen" (a status stamp).
        signature: name signed in pen and typed underneath, or ``None``.
        footer: page line, e.g. ``"Page 1 of 2"``.
        source: small print at the bottom, like the UCSF archive line on real DocVQA pages.

    The pages of tiny mode in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about
    scanned documents".
    """

    layout: str
    title: str
    organisation: str
    logo_colour: tuple[int, int, int]
    fields: tuple[tuple[str, str], ...]
    table_header: tuple[str, ...]
    table_rows: tuple[tuple[str, ...], ...]
    table_total: tuple[str, str] | None
    body: tuple[str, ...]
    handwritten: str
    signature: str | None
    footer: str
    source: str

    def texts(self) -> list[str]:
        """All strings drawn on the page (unwrapped), for checking answers against."""
        strings = [self.title, self.organisation, self.handwritten, self.footer, self.source]
        strings += [f"{label}: {value}" for label, value in self.fields]
        strings += list(self.table_header) + [cell for row in self.table_rows for cell in row]
        if self.table_total:
            strings += list(self.table_total)
        strings += list(self.body)
        if self.signature:
            strings.append(self.signature)
        return strings


@dataclass(frozen=True)
class Fonts:
    """The fonts one page uses. Build once with :func:`load_fonts` and reuse.

    For the tiny-mode pages of ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about
    scanned documents".
    """

    title: Font
    heading: Font
    body: Font
    small: Font
    pen: Font
    scalable: bool


def load_fonts(scale: float = 1.0) -> Fonts:
    """Load Pillow's bundled font at the sizes a page needs (no files, no network).

    ``ImageFont.load_default(size=...)`` returns a scalable FreeType font on
    Pillow >= 10.1 built with FreeType. Without it, the fixed-size bitmap font is
    used for everything: less pretty, still readable. For the tiny-mode pages of
    ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about scanned documents".
    """
    sizes = {"title": 24, "heading": 13, "body": 11, "small": 9, "pen": 16}
    try:
        fonts = {name: ImageFont.load_default(size=max(6, round(px * scale))) for name, px in sizes.items()}
    except (TypeError, OSError, ImportError):  # old Pillow, or no FreeType support
        fallback = ImageFont.load_default()
        return Fonts(fallback, fallback, fallback, fallback, fallback, scalable=False)
    scalable = isinstance(fonts["body"], ImageFont.FreeTypeFont)
    return Fonts(**fonts, scalable=scalable)


def render_document(
    spec: DocumentSpec, *, size: tuple[int, int] = _REFERENCE_SIZE, fonts: Fonts | None = None
) -> Image.Image:
    """Draw ``spec`` on a white RGB page of ``size`` = (width, height) pixels.

    The tiny-mode pages shown in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions about
    scanned documents"; their layouts' coloured bands come up in ``notebooks/03_idefics2_qlora_docvqa.ipynb``,
    section "Does it read the page?".
    """
    if spec.layout not in LAYOUTS:
        raise ValueError(f"unknown layout {spec.layout!r}; expected one of {LAYOUTS}")
    scale = min(size[0] / _REFERENCE_SIZE[0], size[1] / _REFERENCE_SIZE[1])
    page = _Page(size, scale, fonts or load_fonts(scale), LAYOUT_COLOURS[spec.layout])
    draw_layout = {"invoice": _draw_invoice, "form": _draw_form, "letter": _draw_letter}[spec.layout]
    draw_layout(page, spec)
    page.footer(spec)
    return page.image


class _Page:
    """A page being drawn: the image plus helpers that work in scaled units."""

    def __init__(self, size: tuple[int, int], scale: float, fonts: Fonts, accent: tuple[int, int, int]):
        self.image = Image.new("RGB", size, _PAPER)
        self.draw = ImageDraw.Draw(self.image)
        self.width, self.height = size
        self.scale = scale
        self.fonts = fonts
        self.accent = accent
        self.margin = self.px(22)

    def px(self, value: float) -> int:
        """Scale a length given for the 384 x 480 reference page."""
        return round(value * self.scale)

    def line_height(self, font: Font) -> int:
        """Height of one line of ``font`` plus a little leading."""
        return font.getbbox("Hgjy")[3] + self.px(4)

    def text_width(self, text: str, font: Font) -> int:
        return round(self.draw.textlength(text, font=font))

    def text(self, xy: tuple[int, int], text: str, font: Font, fill=_INK, bold: bool = False) -> None:
        # Fake bold with a 1 px stroke; below ~18 px that smears the letters, so skip it.
        stroke = 1 if bold and getattr(font, "size", 0) >= 18 else 0
        self.draw.text(xy, text, font=font, fill=fill, stroke_width=stroke, stroke_fill=fill)

    def hline(self, y: int, x0: int | None = None, x1: int | None = None, fill=_RULE, width: int = 1) -> None:
        x0 = self.margin if x0 is None else x0
        x1 = self.width - self.margin if x1 is None else x1
        self.draw.line([(x0, y), (x1, y)], fill=fill, width=max(1, width))

    def logo(self, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
        """A filled disc with a white ring: the company's "logo"."""
        self.draw.ellipse(box, fill=colour, outline=_PAPER, width=max(1, self.px(2)))

    def label_value(self, x: int, y: int, label: str, value: str) -> int:
        """Print "Label: value" with a grey label; return the next line's y."""
        font = self.fonts.body
        self.text((x, y), f"{label}:", font, fill=_GREY)
        self.text((x + self.text_width(f"{label}: ", font), y), value, font)
        return y + self.line_height(font)

    def paragraphs(self, y: int, paragraphs: tuple[str, ...], x0: int | None = None) -> int:
        """Word-wrap paragraphs between the margins; return the y below them."""
        font = self.fonts.body
        x0 = self.margin if x0 is None else x0
        max_width = self.width - self.margin - x0
        for paragraph in paragraphs:
            for line in _wrap(paragraph, font, max_width, self.text_width):
                self.text((x0, y), line, font)
                y += self.line_height(font)
            y += self.px(4)
        return y

    def table(self, y: int, spec: DocumentSpec, x0: int | None = None) -> int:
        """Ruled table with a tinted header row and an optional total; return the y below."""
        font = self.fonts.body
        x0 = self.margin if x0 is None else x0
        x1 = self.width - self.margin
        row_height = self.line_height(font) + self.px(5)
        columns = len(spec.table_header)
        # The first column (item names) gets twice the width of the others.
        unit = (x1 - x0) / (columns + 1)
        edges = [x0] + [round(x0 + unit * (i + 2)) for i in range(columns - 1)] + [x1]
        rows = [spec.table_header, *spec.table_rows]
        tint = tuple(round(c + (255 - c) * 0.8) for c in self.accent)
        self.draw.rectangle([x0, y, x1, y + row_height], fill=tint)
        for r, row in enumerate(rows):
            top = y + r * row_height
            for c, cell in enumerate(row):
                text_x = edges[c] + self.px(4) if c == 0 else edges[c + 1] - self.px(4) - self.text_width(cell, font)
                self.text((text_x, top + self.px(3)), cell, font)
        bottom = y + len(rows) * row_height
        for r in range(len(rows) + 1):
            self.hline(y + r * row_height, x0, x1, fill=_INK if r in (0, 1, len(rows)) else _RULE)
        for x in edges:
            self.draw.line([(x, y), (x, bottom)], fill=_RULE, width=1)
        if spec.table_total:
            label, value = spec.table_total
            total_text = f"{label}: {value}"
            heading = self.fonts.heading
            total_x = x1 - self.px(4) - self.text_width(total_text, heading)
            self.text((total_x, bottom + self.px(4)), total_text, heading)
            bottom += row_height
        return bottom + self.px(8)

    def pen(self, xy: tuple[int, int], text: str, angle: float = 8.0, underline: bool = True) -> None:
        """Write ``text`` slanted and tilted in blue ink, like a handwritten note."""
        font = self.fonts.pen
        width = self.text_width(text, font) + self.px(16)
        height = self.line_height(font) + self.px(6)
        tile = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        tile_draw = ImageDraw.Draw(tile)
        ink = (*_PEN, 255)
        tile_draw.text((self.px(8), self.px(1)), text, font=font, fill=ink)
        if underline:
            stroke = [(self.px(4), height - self.px(3)), (width - self.px(4), height - self.px(5))]
            tile_draw.line(stroke, fill=ink, width=max(1, self.px(1.5)))
        shear = 0.25  # italic-like slant: the top of the tile moves right
        slant = (1, shear, -shear * height, 0, 1, 0)
        tile = tile.transform(tile.size, Image.Transform.AFFINE, slant, Image.Resampling.BICUBIC)
        tile = tile.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC)
        self.image.paste(tile, xy, tile)

    def footer(self, spec: DocumentSpec) -> None:
        """Rule, centred page number and the small source line."""
        small = self.fonts.small
        y = self.height - self.px(30)
        self.hline(y)
        centred_x = (self.width - self.text_width(spec.footer, small)) // 2
        self.text((centred_x, y + self.px(4)), spec.footer, small, fill=_GREY)
        self.text((self.margin, y + self.px(16)), spec.source, small, fill=_GREY)


def _wrap(text: str, font: Font, max_width: int, measure) -> list[str]:
    """Greedy word wrap: as many words per line as fit in ``max_width``."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and measure(candidate, font) > max_width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def _draw_invoice(page: _Page, spec: DocumentSpec) -> None:
    """Full-width accent band with the title, fields in two columns, priced table."""
    band = page.px(60)
    page.draw.rectangle([0, 0, page.width, band], fill=page.accent)
    page.text((page.margin, page.px(10)), spec.title, page.fonts.title, fill=_PAPER, bold=True)
    logo = page.px(30)
    logo_x = page.width - page.margin - logo
    page.logo((logo_x, page.px(8), logo_x + logo, page.px(8) + logo), spec.logo_colour)
    org_width = page.text_width(spec.organisation, page.fonts.heading)
    page.text((page.width - page.margin - org_width, page.px(41)), spec.organisation, page.fonts.heading, fill=_PAPER)

    y = band + page.px(12)
    half = (len(spec.fields) + 1) // 2
    left_y = right_y = y
    for label, value in spec.fields[:half]:
        left_y = page.label_value(page.margin, left_y, label, value)
    for label, value in spec.fields[half:]:
        right_y = page.label_value(page.width // 2 + page.px(6), right_y, label, value)
    y = max(left_y, right_y) + page.px(10)

    y = page.table(y, spec)
    y = page.paragraphs(y, spec.body)
    page.pen((page.margin, y), spec.handwritten, angle=8)


def _draw_form(page: _Page, spec: DocumentSpec) -> None:
    """Accent stripe down the left edge, boxed fields, table, pen-filled status."""
    stripe = page.px(16)
    page.draw.rectangle([0, 0, stripe, page.height], fill=page.accent)
    left = stripe + page.margin - page.px(6)
    page.text((left, page.px(14)), spec.title, page.fonts.title, fill=page.accent, bold=True)
    logo = page.px(22)
    logo_x = page.width - page.margin - logo
    page.draw.rectangle([logo_x, page.px(14), logo_x + logo, page.px(14) + logo], fill=spec.logo_colour)
    org_width = page.text_width(spec.organisation, page.fonts.heading)
    page.text((logo_x - page.px(6) - org_width, page.px(18)), spec.organisation, page.fonts.heading)
    y = page.px(48)
    page.hline(y, left, fill=page.accent, width=page.px(2))

    y += page.px(10)
    font = page.fonts.body
    label_width = max(page.text_width(f"{label}:", font) for label, _ in spec.fields) + page.px(8)
    box_height = page.line_height(font) + page.px(4)
    for label, value in spec.fields:
        page.text((left, y + page.px(3)), f"{label}:", font, fill=_GREY)
        page.draw.rectangle([left + label_width, y, page.width - page.margin, y + box_height], outline=_RULE)
        page.text((left + label_width + page.px(5), y + page.px(3)), value, font)
        y += box_height + page.px(4)
    y += page.px(8)

    y = page.table(y, spec, x0=left)
    y = page.paragraphs(y, spec.body, x0=left)
    page.text((left, y + page.px(6)), "Status:", font, fill=_GREY)
    page.pen((left + page.text_width("Status: ", font), y - page.px(2)), spec.handwritten, angle=4)


def _draw_letter(page: _Page, spec: DocumentSpec) -> None:
    """Centred letterhead, date and addressee, body, small table, signature."""
    logo = page.px(24)
    page.logo(((page.width - logo) // 2, page.px(8), (page.width + logo) // 2, page.px(8) + logo), spec.logo_colour)
    title_width = page.text_width(spec.title, page.fonts.title)
    page.text(((page.width - title_width) // 2, page.px(34)), spec.title, page.fonts.title, fill=page.accent, bold=True)
    org_width = page.text_width(spec.organisation, page.fonts.heading)
    page.text(((page.width - org_width) // 2, page.px(62)), spec.organisation, page.fonts.heading, fill=_GREY)
    y = page.px(82)
    page.hline(y, fill=page.accent, width=page.px(3))
    page.hline(y + page.px(5), fill=page.accent)

    y += page.px(14)
    for label, value in spec.fields:
        y = page.label_value(page.margin, y, label, value)
    y += page.px(6)
    y = page.paragraphs(y, spec.body)
    y = page.table(y, spec, x0=page.margin + page.px(40))

    if spec.signature:
        page.text((page.margin, y), "Sincerely,", page.fonts.body)
        page.pen((page.margin, y + page.px(12)), spec.signature, angle=3, underline=False)
        page.text((page.margin, y + page.px(40)), spec.signature, page.fonts.body)
    page.pen((page.width - page.margin - page.px(110), y + page.px(8)), spec.handwritten, angle=10)
