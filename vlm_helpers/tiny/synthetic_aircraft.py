"""Synthetic FGVC-Aircraft: rendered side views of airliners with the real column schema (tiny mode).

Used by ``notebooks/04_phi3_aircraft_captioning.ipynb`` in tiny mode, through
:func:`vlm_helpers.data.sources.aircraft_dataset`. The visible traits of each kind (fuselage and
tail colour, engine count and size, wingtips) determine its tags, so a tiny model that looks at
the photo can learn the captions. Columns and feature types are
:func:`vlm_helpers.data.aircraft.fgvc_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from vlm_helpers.data.aircraft import FGVC_VARIANTS, IMAGE_COLUMN, TAGS_COLUMN, fgvc_features

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    from datasets import Dataset
    from PIL import Image


RGB = tuple[int, int, int]


@dataclass(frozen=True)
class AircraftLook:
    """What one synthetic aircraft kind looks like, and how it is labelled.

    The tiny-mode photos of ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft
    photos and their tags" (colours, engines and wingtips follow the type).
    """

    label: str  # an FGVC variant name (class of the ``label`` column)
    tags: tuple[str, ...]  # its clip_tags_ViT_L_14, in CLIP's lowercase style
    fuselage: RGB  # the big, type-specific colour region
    tail: RGB
    code: str  # painted on the tail fin
    length: float  # fuselage length, fraction of the usable width
    radius: float  # fuselage half-height, fraction of the image height
    engines_per_wing: int  # jet pods under each wing (0 for the propeller plane)
    pod_radius: float  # pod half-height, fraction of the fuselage half-height
    wingtip: str = "plain"  # "plain", "winglet" (737) or "raked" (787)
    hump: bool = False  # 747 upper deck
    propeller: bool = False  # high-wing light aircraft (Cessna 172)
    colour_name: str = ""  # for the blip_caption column


#: Synthetic kinds: the four targets plus three the filter must drop. Only the type tag
#: (``"boeing 7x7"``) decides whether a row survives; ``"boeing 747"`` and
#: ``"boeing 2707"`` on the 747 are near misses that exact matching rejects.
AIRCRAFT_LOOKS: dict[str, AircraftLook] = {
    "707": AircraftLook(
        label="707-320",
        tags=("boeing 707", "707", "douglas dc-8", "four-engine jet", "airliner"),
        fuselage=(205, 40, 40), tail=(245, 200, 40), code="707",
        length=0.95, radius=0.065, engines_per_wing=2, pod_radius=0.40, colour_name="red",
    ),
    "737": AircraftLook(
        label="737-800",
        tags=("boeing 737", "737", "737-800", "narrow-body jet", "airliner"),
        fuselage=(35, 75, 210), tail=(250, 140, 30), code="737",
        length=0.74, radius=0.072, engines_per_wing=1, pod_radius=0.50, wingtip="winglet",
        colour_name="blue",
    ),
    "777": AircraftLook(
        label="777-300",
        tags=("boeing 777", "777", "777-300", "wide-body jet", "airliner"),
        fuselage=(40, 165, 70), tail=(245, 245, 245), code="777",
        length=1.0, radius=0.095, engines_per_wing=1, pod_radius=0.95, colour_name="green",
    ),
    "787": AircraftLook(
        label="767-300",  # FGVC has no 787 variant (see FGVC_VARIANTS)
        tags=("boeing 787", "787", "dreamliner", "wide-body jet", "airliner"),
        fuselage=(135, 55, 185), tail=(25, 25, 90), code="787",
        length=0.92, radius=0.085, engines_per_wing=1, pod_radius=0.70, wingtip="raked",
        colour_name="purple",
    ),
    "a320": AircraftLook(
        label="A320",
        tags=("airbus a320", "a320", "airbus a321", "narrow-body jet", "airliner"),
        fuselage=(195, 195, 200), tail=(30, 185, 205), code="A320",
        length=0.78, radius=0.072, engines_per_wing=1, pod_radius=0.55, colour_name="grey",
    ),
    "cessna172": AircraftLook(
        label="Cessna 172",
        tags=("cessna 172", "cessna", "light aircraft", "propeller plane", "monoplane"),
        fuselage=(240, 240, 235), tail=(200, 30, 30), code="172",
        length=0.55, radius=0.06, engines_per_wing=0, pod_radius=0.0, propeller=True,
        colour_name="white",
    ),
    "747": AircraftLook(
        label="747-400",
        tags=("boeing 747", "747", "jumbo jet", "boeing 2707", "airliner"),
        fuselage=(150, 150, 160), tail=(180, 30, 60), code="747",
        length=1.0, radius=0.09, engines_per_wing=2, pod_radius=0.55, hump=True,
        colour_name="silver",
    ),
}

#: Row ``i`` of :func:`make_synthetic_fgvc` is of kind ``ROW_CYCLE[i % 20]``: every 20
#: rows hold 16 target Boeings (4 per type), 2 A320s, 1 Cessna 172 and 1 Boeing 747.
ROW_CYCLE: tuple[str, ...] = (
    "707", "737", "777", "787", "a320",
    "707", "737", "777", "787", "cessna172",
    "707", "737", "777", "787", "a320",
    "707", "737", "777", "787", "747",
)


def synthetic_kinds(num_rows: int) -> list[str]:
    """The kind of every row of ``make_synthetic_fgvc(num_rows)`` (independent of the seed).

    Tiny mode of ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and
    their tags".
    """
    return [ROW_CYCLE[i % len(ROW_CYCLE)] for i in range(num_rows)]


def _jitter(rng: np.random.Generator, colour: RGB, amount: int = 12) -> RGB:
    return tuple(int(min(255, max(0, c + rng.integers(-amount, amount + 1)))) for c in colour)


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(int(min(255, max(0, c * factor))) for c in colour)


@lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


class _Pen:
    """Draws in plane coordinates (nose towards +x), mirrored when the plane faces left."""

    def __init__(self, draw, width: int, mirror: bool) -> None:
        self.draw, self.width, self.mirror = draw, width, mirror

    def x(self, x: float) -> float:
        return self.width - x if self.mirror else x

    def polygon(self, pts: Sequence[tuple[float, float]], fill: RGB) -> None:
        self.draw.polygon([(self.x(x), y) for x, y in pts], fill=fill)

    def ellipse(self, x0: float, y0: float, x1: float, y1: float, fill: RGB) -> None:
        xa, xb = sorted((self.x(x0), self.x(x1)))
        self.draw.ellipse((xa, y0, xb, y1), fill=fill)

    def line(self, pts: Sequence[tuple[float, float]], fill: RGB, width: int) -> None:
        self.draw.line([(self.x(x), y) for x, y in pts], fill=fill, width=width)

    def text(self, x: float, y: float, text: str, fill: RGB, size: int) -> None:
        self.draw.text((self.x(x), y), text, fill=fill, font=_font(size), anchor="mm")


def _sky(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    import numpy as np
    from PIL import Image, ImageDraw

    top = np.array([rng.integers(70, 120), rng.integers(140, 185), rng.integers(215, 250)])
    bottom = np.minimum(top + rng.integers(40, 80), 250)
    t = np.linspace(0.0, 1.0, height)[:, None]
    column = (top[None, :] * (1 - t) + bottom[None, :] * t).astype(np.uint8)
    sky = Image.fromarray(np.repeat(column[:, None, :], width, axis=1), "RGB")
    draw = ImageDraw.Draw(sky)
    for _ in range(int(rng.integers(0, 4))):  # a few puffy clouds
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.12, 0.25) * width, rng.uniform(0.05, 0.10) * height
        white = int(rng.integers(235, 256))
        for dx, dy, s in ((-0.35, 0.1, 0.7), (0.0, -0.15, 1.0), (0.35, 0.1, 0.75)):
            x, y = cx + dx * w, cy + dy * h
            draw.ellipse((x - s * w / 2, y - s * h, x + s * w / 2, y + s * h), fill=(white,) * 3)
    return sky


def _draw_wing(
    pen: _Pen, root_le, root_te, tip_te, tip_le, colour: RGB, look: AircraftLook, up: float
) -> None:
    """One swept wing (plane coordinates) with its tip device; ``up`` = -1 far, +1 near wing."""
    pen.polygon([root_le, root_te, tip_te, tip_le], colour)
    if look.wingtip == "winglet":  # 737: a small fin standing at the tip
        h = abs(tip_te[1] - root_te[1]) * 0.35
        pen.polygon([tip_le, tip_te, (tip_te[0] - 2, tip_te[1] - up * h)], colour)
    elif look.wingtip == "raked":  # 787: long, curved tip swept back and up
        chord = tip_le[0] - tip_te[0]
        span = abs(tip_te[1] - root_te[1])
        pen.polygon(
            [
                tip_le,
                (tip_le[0] - 0.6 * chord, tip_le[1] + up * 0.22 * span),
                (tip_te[0] - 1.6 * chord, tip_te[1] + up * 0.30 * span),
                tip_te,
            ],
            _shade(look.tail, 1.0),
        )


def _draw_pod(pen: _Pen, x: float, y: float, r: float, look: AircraftLook, colour: RGB) -> None:
    """A jet pod hanging at leading-edge point (x, y); the intake faces the nose."""
    length = r * (4.2 if look.code == "707" else 3.2)
    cx, cy = x + 0.25 * length, y + 0.9 * r
    pen.ellipse(cx - length / 2, cy - r, cx + length / 2, cy + r, colour)
    pen.ellipse(cx + length / 2 - 0.5 * r, cy - 0.75 * r, cx + length / 2, cy + 0.75 * r, (40, 40, 45))
    if look.wingtip == "raked":  # 787 chevrons: a saw-tooth exhaust edge
        x0 = cx - length / 2
        teeth = [(x0 + 0.25 * r, cy - r * 0.9)]
        for k in range(5):
            yy = cy - 0.9 * r + (k + 0.5) * 0.36 * r
            teeth += [(x0 - 0.35 * r, yy), (x0 + 0.25 * r, yy + 0.18 * r)]
        pen.polygon(teeth, _shade(colour, 0.6))


def render_aircraft(
    kind: str, rng: np.random.Generator, *, image_size: tuple[int, int] = (128, 96)
) -> Image.Image:
    """Render one synthetic side view of ``kind`` (a key of :data:`AIRCRAFT_LOOKS`).

    Drawn at twice the size and downsampled (anti-aliasing). Random per image: sky and
    clouds, position, size, a small climb angle, facing left or right, colour jitter. The tiny-mode
    photos shown in ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos
    and their tags".
    """
    from PIL import Image, ImageDraw

    look = AIRCRAFT_LOOKS[kind]
    out_w, out_h = image_size
    W, H = 2 * out_w, 2 * out_h
    image = _sky(rng, W, H)

    layer = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    pen = _Pen(ImageDraw.Draw(layer), W, mirror=bool(rng.integers(0, 2)))
    scale = rng.uniform(0.9, 1.05)
    L = 0.88 * W * look.length * scale
    r = H * look.radius * scale
    cx = W / 2 + rng.uniform(-0.04, 0.04) * W
    cy = H * 0.45 + rng.uniform(-0.06, 0.06) * H
    x0, x1 = cx - L / 2, cx + L / 2  # tail end, nose tip
    body = _jitter(rng, look.fuselage)
    tail = _jitter(rng, look.tail)
    grey_near, grey_far = (205, 205, 212), (120, 120, 132)
    nacelle = (170, 170, 178)
    span = 0.30 * H * scale

    if look.propeller:  # Cessna 172: straight high wing, strut, propeller, no jets
        pen.polygon([(x0 + 0.02 * L, cy - 0.2 * r), (x0 + 0.18 * L, cy - 0.2 * r),
                     (x0 + 0.20 * L, cy + 0.35 * r), (x0 + 0.03 * L, cy + 0.35 * r)], grey_far)
    else:
        # far wing and its pods: behind the fuselage, rising up and back
        f_root_le, f_root_te = (x0 + 0.60 * L, cy - 0.2 * r), (x0 + 0.43 * L, cy - 0.2 * r)
        f_tip_te, f_tip_le = (x0 + 0.32 * L, cy - r - 0.45 * span), (x0 + 0.38 * L, cy - r - 0.45 * span)
        _draw_wing(pen, f_root_le, f_root_te, f_tip_te, f_tip_le, grey_far, look, up=-1.0)
        for k in range(look.engines_per_wing):
            t = 0.45 + 0.35 * k
            px = f_root_le[0] + t * (f_tip_le[0] - f_root_le[0])
            py = f_root_le[1] + t * (f_tip_le[1] - f_root_le[1])
            _draw_pod(pen, px, py, look.pod_radius * r * 0.85, look, _shade(nacelle, 0.7))
        # far horizontal stabiliser
        pen.polygon([(x0 + 0.14 * L, cy - 0.3 * r), (x0 + 0.06 * L, cy - 0.3 * r),
                     (x0 + 0.01 * L, cy - 1.3 * r), (x0 + 0.04 * L, cy - 1.3 * r)], grey_far)

    # fuselage: tail cone, barrel, rounded nose (+ 747 upper deck)
    pen.polygon([(x0 + 0.26 * L, cy - r), (x0 + 0.26 * L, cy + r), (x0 + 0.03 * L, cy - 0.35 * r),
                 (x0, cy - 0.75 * r), (x0 + 0.01 * L, cy - r)], body)
    pen.polygon([(x0 + 0.25 * L, cy - r), (x1 - 1.6 * r, cy - r),
                 (x1 - 1.6 * r, cy + r), (x0 + 0.25 * L, cy + r)], body)
    pen.ellipse(x1 - 3.2 * r, cy - r, x1, cy + r, body)
    if look.hump:
        pen.ellipse(x1 - 0.48 * L, cy - 1.9 * r, x1 - 0.04 * L, cy + 0.4 * r, body)
    # cabin windows and cockpit
    step = max(3.0, 0.035 * L)
    x = x0 + 0.22 * L
    wr = max(1.2, 0.16 * r)
    while x < x1 - 3.2 * r and not look.propeller:
        pen.ellipse(x - wr, cy - 0.45 * r - wr, x + wr, cy - 0.45 * r + wr, (35, 40, 55))
        x += step
    pen.polygon([(x1 - 1.9 * r, cy - 0.55 * r), (x1 - 0.9 * r, cy - 0.55 * r),
                 (x1 - 0.55 * r, cy - 0.2 * r), (x1 - 1.9 * r, cy - 0.2 * r)], (30, 35, 50))

    # tail fin with the type code
    fh = r * (3.1 if look.code == "707" else 2.5)
    pen.polygon([(x0 + 0.25 * L, cy - 0.9 * r), (x0 + 0.11 * L, cy - 0.9 * r - fh),
                 (x0 + 0.01 * L, cy - 0.9 * r - fh), (x0 + 0.02 * L, cy - 0.9 * r)], tail)
    luminance = 0.3 * tail[0] + 0.59 * tail[1] + 0.11 * tail[2]
    pen.text(x0 + 0.10 * L, cy - 0.9 * r - 0.45 * fh, look.code,
             (20, 20, 20) if luminance > 140 else (240, 240, 240), max(8, int(0.3 * fh)))

    if look.propeller:  # cabin windows, high wing with strut, spinner and propeller disc
        for wx in (x1 - 0.36 * L, x1 - 0.24 * L):
            pen.polygon([(wx - 0.05 * L, cy - 0.7 * r), (wx + 0.05 * L, cy - 0.7 * r),
                         (wx + 0.05 * L, cy - 0.05 * r), (wx - 0.05 * L, cy - 0.05 * r)], (35, 40, 55))
        pen.polygon([(x0 + 0.02 * L, cy - 0.3 * r), (x0 + 0.20 * L, cy - 0.1 * r),
                     (x0 + 0.20 * L, cy + 0.15 * r), (x0 + 0.02 * L, cy + 0.05 * r)], tail)
        pen.line([(x1 - 0.30 * L, cy + 0.9 * r), (x1 - 0.47 * L, cy + r + 0.5 * span)], (90, 90, 95), 2)
        pen.polygon([(x1 - 0.22 * L, cy - 1.1 * r), (x1 - 0.45 * L, cy - 1.1 * r),
                     (x1 - 0.58 * L, cy + r + 0.75 * span), (x1 - 0.42 * L, cy + r + 0.75 * span)],
                    grey_near)
        pen.ellipse(x1 - 0.06 * L, cy - 0.25 * r, x1 + 0.02 * L, cy + 0.25 * r, (60, 60, 60))
        pen.ellipse(x1 - 0.005 * L, cy - 1.6 * r, x1 + 0.015 * L, cy + 1.6 * r, (70, 70, 75))
    else:
        # near wing (towards the viewer, down and back) and its pods
        n_root_le, n_root_te = (x0 + 0.64 * L, cy + 0.45 * r), (x0 + 0.43 * L, cy + 0.45 * r)
        n_tip_te, n_tip_le = (x0 + 0.25 * L, cy + r + span), (x0 + 0.33 * L, cy + r + span)
        _draw_wing(pen, n_root_le, n_root_te, n_tip_te, n_tip_le, grey_near, look, up=1.0)
        for k in range(look.engines_per_wing):
            t = 0.35 + 0.35 * k
            px = n_root_le[0] + t * (n_tip_le[0] - n_root_le[0])
            py = n_root_le[1] + t * (n_tip_le[1] - n_root_le[1])
            _draw_pod(pen, px, py, look.pod_radius * r, look, nacelle)
        # near horizontal stabiliser
        pen.polygon([(x0 + 0.15 * L, cy + 0.1 * r), (x0 + 0.07 * L, cy + 0.1 * r),
                     (x0 + 0.0 * L, cy + 1.4 * r), (x0 + 0.04 * L, cy + 1.4 * r)], grey_near)

    angle = rng.uniform(-6.0, 6.0)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    image.paste(layer, (0, 0), layer)
    return image.resize(image_size, Image.Resampling.LANCZOS)


def make_synthetic_fgvc(
    num_rows: int, *, seed: int = 0, image_size: tuple[int, int] = (128, 96)
) -> Dataset:
    """A stand-in for one FGVC-Aircraft repo: ``num_rows`` rendered rows, real schema.

    Columns and feature types are :func:`fgvc_features`. Row ``i`` is of kind
    ``ROW_CYCLE[i % 20]`` (80 % target Boeings, see :data:`ROW_CYCLE`) and is drawn with
    its own generator seeded by ``(seed, i)``, so the output is deterministic and the
    first ``k`` rows do not depend on ``num_rows``. Tiny mode of
    ``notebooks/04_phi3_aircraft_captioning.ipynb``, section "The data: FGVC-Aircraft photos and their tags".
    """
    import numpy as np
    from datasets import Dataset

    columns: dict[str, list] = {IMAGE_COLUMN: [], "label": [], "id": [], TAGS_COLUMN: [], "blip_caption": []}
    for i, kind in enumerate(synthetic_kinds(num_rows)):
        look = AIRCRAFT_LOOKS[kind]
        rng = np.random.default_rng([seed, i])
        columns[IMAGE_COLUMN].append(render_aircraft(kind, rng, image_size=image_size))
        columns["label"].append(FGVC_VARIANTS.index(look.label))
        columns["id"].append(i)
        columns[TAGS_COLUMN].append(list(look.tags))
        plane = "small propeller plane" if look.propeller else "airplane"
        columns["blip_caption"].append(f"a {look.colour_name} {plane} flying in the blue sky")
    return Dataset.from_dict(columns, features=fgvc_features())
