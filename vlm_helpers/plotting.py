"""Figures for the notebooks: sample images, loss curves, before/after bars and galleries.

Loss curves and image grids are taught in ``notebooks/02_florence2_docvqa.ipynb``; the
comparison figures in ``notebooks/05_before_after_comparison.ipynb``. Every function
returns the matplotlib ``Figure`` and, given ``save_to``, writes it as PNG, so the same
figure lands in the notebook and in ``results/``.
"""

from __future__ import annotations

import functools
import re
import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


def _finish(fig, save_to: str | Path | None):
    fig.tight_layout()
    if save_to is not None:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_to, dpi=110, bbox_inches="tight")
    return fig


def show_images(images: Sequence, captions: Sequence[str], *, columns: int = 3, width: int = 36,
                title: str | None = None, save_to: str | Path | None = None):
    """A grid of images, each with a wrapped caption underneath.

    A caption keeps its own line breaks (each line wrapped at ``width``, six lines at most). Its
    characters are drawn with a font that has them (:func:`text_fonts`): your data's Chinese, Arabic or
    Cyrillic text shows as itself where an installed font can draw it, and as an escape (``\\u5c4b``) where
    none can, with one note under the figure saying so, never as empty boxes.
    First used in ``notebooks/01_baseline_inference.ipynb``, section "Data: a few documents and a few
    airplanes", and for training pages in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions
    about scanned documents".
    """
    import matplotlib.pyplot as plt

    fonts = text_fonts([*captions, title or ""], family="sans-serif")
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        lines = [wrapped for line in str(caption).split("\n")
                 for wrapped in textwrap.wrap(fonts.shown(line), width) or [""]]
        ax.set_title("\n".join(lines[:6]), fontsize=8, loc="left", family=list(fonts.families))
    if title:
        fig.suptitle(fonts.shown(title), fontsize=10, family=list(fonts.families))
    _add_missing_glyphs_note(fig, fonts)
    return _finish(fig, save_to)


def smooth_by_steps(steps: Sequence[float], values: Sequence[float], window: float) -> tuple[list, list[float]]:
    """A centred moving mean over ``window`` optimizer steps, not over a number of records.

    Returns ``(steps, means)`` sorted by step: at each step, the mean of the values whose step
    lies within ``window / 2`` of it. A window of records would reach back over many more steps
    where a history is logged sparsely, and a trailing window lags behind a falling loss, so the
    curve would sit above the raw one; this one stays within the raw values of its window.
    Used by :func:`plot_loss`, in ``notebooks/05_before_after_comparison.ipynb``, section "Loss curves of
    notebooks 02-04".
    """
    from bisect import bisect_left, bisect_right

    pairs = sorted(zip(steps, values))
    xs = [x for x, _ in pairs]
    prefix = [0.0]
    for _, y in pairs:
        prefix.append(prefix[-1] + y)
    means = []
    for x in xs:
        lo, hi = bisect_left(xs, x - window / 2), bisect_right(xs, x + window / 2)
        means.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return xs, means


def plot_loss(histories: dict[str, Sequence[dict]], *, title: str = "Training loss", smooth: int = 1,
              save_to: str | Path | None = None):
    """Loss per optimizer step for one or more runs (``{label: history}``), optionally smoothed.

    ``smooth``: a window in optimizer steps (:func:`smooth_by_steps`), whatever the logging
    interval; the raw curve is drawn faintly beneath the smoothed one.
    Records without a loss (e.g. evaluation-only entries) are not part of the curve. Steps
    without a finite loss (skipped NaN/inf steps, recorded with ``"loss": null``) are left
    out of the curve; every skipped step is marked by a red dotted line, so it is seen, not hidden.
    Taught in ``notebooks/02_florence2_docvqa.ipynb``, section "Training"; all runs together in
    ``notebooks/05_before_after_comparison.ipynb``, section "Loss curves of notebooks 02-04".
    """
    import math

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, history in histories.items():
        finite = [h for h in history if isinstance(h.get("loss"), (int, float)) and math.isfinite(h["loss"])]
        skipped = [h["step"] for h in history if "skipped" in h]
        steps = [h["step"] for h in finite]
        losses = [h["loss"] for h in finite]
        for n, step in enumerate(skipped):
            ax.axvline(step, color="red", linestyle=":", linewidth=1,
                       label=f"{label}: {len(skipped)} skipped step(s)" if n == 0 else None)
        if smooth > 1 and losses:
            (raw,) = ax.plot(steps, losses, alpha=0.25, gid=f"{label} raw")
            ax.plot(*smooth_by_steps(steps, losses, smooth), label=f"{label} (mean over {smooth} steps)",
                    color=raw.get_color(), gid=f"{label} smoothed")
        else:
            ax.plot(steps, losses, label=label, gid=f"{label} raw")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over supervised tokens)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if histories:
        ax.legend(fontsize=8)
    return _finish(fig, save_to)


def plot_before_after(labels: Sequence[str], before: Sequence[float], after: Sequence[float], *,
                      title: str = "Before vs after fine-tuning", save_to: str | Path | None = None):
    """Grouped bars: one pair (before, after) per metric label, with values printed on top.

    Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Bar chart".
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.8))
    positions = range(len(labels))
    width = 0.38
    bars_before = ax.bar([p - width / 2 for p in positions], before, width, label="before (zero-shot)")
    bars_after = ax.bar([p + width / 2 for p in positions], after, width, label="after fine-tuning")
    for bars in (bars_before, bars_after):
        for bar in bars:
            ax.annotate(f"{bar.get_height():.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(positions), labels, fontsize=8)
    ax.set_ylim(0, max([1.0, *before, *after]) * 1.12)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _finish(fig, save_to)


def _is_math_or_last_resort(name: str) -> bool:
    """Fonts never used as a fallback: matplotlib's "Last Resort" font has a box for every character (the
    boxes a fallback must avoid), and its TeX math fonts put symbols at ordinary code points."""
    return (name.startswith(("Last Resort", "STIXNonUnicode", "STIXSize"))
            or re.fullmatch(r"cm\w+10", name) is not None)


@functools.lru_cache(maxsize=None)
def _charmap(path: str, index: int = 0) -> frozenset[int]:
    """The code points a font file (face ``index`` of a ``.ttc`` collection) has glyphs for; empty for a
    file matplotlib cannot draw with (e.g. a colour-emoji bitmap font, which FreeType cannot scale)."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(path, face_index=index) if index else FT2Font(path)
        font.set_size(10, 72)
        return frozenset(font.get_charmap())
    except (OSError, RuntimeError, TypeError, ValueError):
        return frozenset()


def _font_codes(family: str) -> frozenset[int] | None:
    """The code points of the font matplotlib draws ``family`` (a name, or a generic family such as
    "monospace") with; None when it has no such font."""
    from matplotlib import font_manager

    try:
        # a list: a bare string would be read as a fontconfig pattern ("sans-serif" does not parse)
        path = font_manager.findfont(font_manager.FontProperties(family=[family]), fallback_to_default=False)
    except ValueError:
        return None
    return _charmap(str(path), getattr(path, "face_index", 0))  # matplotlib >= 3.11 names a .ttc face


def installed_fonts() -> dict[str, object]:
    """Every font family matplotlib knows (its font list: its own fonts and the system's), by name, with the
    font-list entry of its regular face (``.fname``: the file); the candidates :func:`text_fonts` falls back
    on. Math fonts and matplotlib's "Last Resort" font (boxes for everything) are left out.

    A font installed after matplotlib built its font list appears here once added with
    ``matplotlib.font_manager.fontManager.addfont(path)``; on Colab, for Chinese, Japanese and Korean:
    ``!apt-get install -y fonts-noto-cjk``, then
    ``addfont("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")``. Used by
    :func:`gallery`, in ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved,
    unchanged, regressed".
    """
    from matplotlib import font_manager

    def regularity(entry):
        weight = entry.weight if isinstance(entry.weight, int) else font_manager.weight_dict.get(entry.weight, 400)
        return (entry.style != "normal", abs(weight - 400), entry.stretch != "normal", entry.fname)

    best: dict[str, object] = {}
    for entry in font_manager.fontManager.ttflist:
        if not _is_math_or_last_resort(entry.name) and (entry.name not in best
                                                        or regularity(entry) < regularity(best[entry.name])):
            best[entry.name] = entry
    return {name: best[name] for name in sorted(best)}


@dataclass(frozen=True)
class TextFonts:
    """The fonts to draw some texts with: ``families`` (the first font, then fallbacks, in order, for
    matplotlib's ``family=``), which characters they can draw, and the ``missing`` ones no installed font
    has. Made by :func:`text_fonts`; used by :func:`gallery`, in
    ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """

    families: tuple[str, ...]
    codes: frozenset[int]
    missing: tuple[str, ...]

    def drawable(self, char: str) -> bool:
        """Whether one of the fonts has a glyph for ``char`` (for :func:`vlm_helpers.comparison.display_text`)."""
        return ord(char) in self.codes

    def shown(self, text: str, *, max_chars: int = 10_000) -> str:
        """``text`` as drawn: control characters and characters no font has written as escapes
        (:func:`vlm_helpers.comparison.display_text`, unquoted)."""
        from vlm_helpers.comparison import display_text

        return display_text(text, max_chars=max_chars, quote=False, drawable=self.drawable)

    def note(self) -> str | None:
        """One line saying which characters are drawn as escapes and how to get a font for them; None when
        every character has a glyph."""
        return _missing_glyphs_note(self.missing)


_CJK_NAMES = ("CJK", "HANGUL", "HIRAGANA", "KATAKANA", "FULLWIDTH", "IDEOGRAPHIC", "BOPOMOFO")


def _missing_glyphs_note(missing: Sequence[str]) -> str | None:
    """The one line that says which characters are escapes, and how to draw them; None if there are none."""
    if not missing:
        return None
    from vlm_helpers.comparison import display_text

    shown = " ".join(display_text(char, quote=False, drawable=lambda _: False) for char in missing[:6])
    more = ", ..." if len(missing) > 6 else ""
    cjk = any(unicodedata.name(char, "").startswith(_CJK_NAMES) for char in missing)
    font = "Noto Sans CJK for Chinese, Japanese and Korean" if cjk else "the Noto font for the script"
    return (f"{len(missing)} character(s) shown as escapes ({shown}{more}): no installed font has them. "
            f"To draw them, add a font that does (e.g. {font}) with "
            "matplotlib.font_manager.fontManager.addfont(path).")


def _add_missing_glyphs_note(fig, *fonts: TextFonts) -> None:
    """Write, once, under the figure which characters of its texts no installed font has (nothing if none)."""
    note = _missing_glyphs_note(sorted({char for each in fonts for char in each.missing}))
    if note:
        fig.text(0.01, 0.0, "\n".join(textwrap.wrap(note, 140)), fontsize=7, va="top", color="dimgray",
                 gid="missing-glyphs-note")


def text_fonts(texts: Iterable[str], *, family: str = "monospace", max_fallbacks: int = 6) -> TextFonts:
    """The fonts that draw ``texts``: ``family`` first, then installed fonts that have the characters it lacks.

    Where ``family``'s font has no glyph for a character of the texts (Chinese in DejaVu Sans Mono), the
    installed fonts (:func:`installed_fonts`) are searched, and the one that draws most of the missing
    characters is added, then the next, up to ``max_fallbacks``: matplotlib then draws each character with
    the first font in the list that has it. Characters no installed font has are listed in ``missing``;
    drawn through :meth:`TextFonts.shown` they come out as escapes (``\\u5c4b``), a visible placeholder,
    with :meth:`TextFonts.note` saying so, instead of empty boxes and a "Glyph ... missing from font"
    warning per character. Right-to-left scripts (Arabic, Hebrew) are drawn left to right and unjoined:
    matplotlib does no text shaping. Used by :func:`gallery`, in
    ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    codes = _font_codes(family) or frozenset()
    needed = {char for text in texts for char in str(text) if char.isprintable() and ord(char) not in codes}
    families = [family]
    if needed:
        candidates = {name: _charmap(entry.fname, getattr(entry, "index", 0))
                      for name, entry in installed_fonts().items()}
        remaining = {ord(char) for char in needed}
        while remaining and len(families) <= max_fallbacks:
            name, covered = min(((name, remaining & charmap) for name, charmap in candidates.items()),
                                key=lambda item: (-len(item[1]), item[0]), default=(None, set()))
            if not covered:
                break
            candidates.pop(name)
            drawn = _font_codes(name) or frozenset()  # the face matplotlib will draw with, not just the one scanned
            if drawn & remaining:
                families.append(name)
                codes |= drawn
                remaining -= drawn
    missing = tuple(sorted(char for char in needed if ord(char) not in codes))
    return TextFonts(tuple(families), frozenset(codes), missing)


def font_can_draw(family: str = "monospace") -> Callable[[str], bool]:
    """A test ``char -> bool``: does the font matplotlib picks for ``family`` have a glyph for it?

    For :func:`vlm_helpers.comparison.display_text`'s ``drawable``: a character without a glyph
    would be drawn as an empty box, with a "Glyph ... missing from font" warning. :func:`text_fonts`
    adds installed fonts that have the characters this one lacks. Taught in
    ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    codes = _font_codes(family) or frozenset()
    return lambda char: ord(char) in codes


def gallery(examples: dict[str, list[dict]], results_dir: str | Path, *, title: str = "",
            save_to: str | Path | None = None):
    """One row per example: the input image, then its id, question/prompt, reference, before and after.

    ``examples`` maps a kind ("improved", "unchanged", "regressed") to paired records
    (see :func:`vlm_helpers.comparison.pick_examples`), each scored per example by the task's headline
    metric, which the header of every row names (``rouge1 0.12 -> 0.48``); image paths are relative
    to ``results_dir``. Texts go through :func:`vlm_helpers.comparison.format_pair`: shortened, control
    characters escaped. Characters the monospace font lacks are drawn with an installed font that has them
    (:func:`text_fonts`: e.g. Noto Sans CJK for Chinese questions), and escaped (``\\u5c4b``) where no
    installed font has them, with one note under the figure saying so.
    Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    from vlm_helpers.comparison import format_pair

    items = [(kind, ex) for kind, group in examples.items() for ex in group]
    fonts = text_fonts([str(ex.get(key, "")) for _, ex in items for key in ("id", "question", "before", "after")]
                       + [reference for _, ex in items for reference in ex.get("references", [])])
    title_fonts = text_fonts([title], family="sans-serif")
    fig, axes = plt.subplots(max(1, len(items)), 2, figsize=(10, 2.9 * max(1, len(items))),
                             gridspec_kw={"width_ratios": [1, 2.2]}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not items:
        axes[0, 1].text(0, 0.5, "no paired examples to show", fontsize=10)
    for (kind, ex), (ax_image, ax_text) in zip(items, axes):
        if ex.get("image"):
            ax_image.imshow(Image.open(Path(results_dir) / ex["image"]))
        metric = ex.get("metric", "score")
        text = (f"{kind.upper()}  id {fonts.shown(str(ex['id']), max_chars=40)}  "
                f"({metric} {ex['score_before']:.2f} -> {ex['score_after']:.2f})\n\n"
                + format_pair(ex, drawable=fonts.drawable))
        wrapped = "\n".join(textwrap.fill(line, 96, subsequent_indent=" " * 13) for line in text.splitlines())
        ax_text.text(0, 0.95, wrapped, va="top", fontsize=8, family=list(fonts.families))
    if title:
        fig.suptitle(title_fonts.shown(title), fontsize=10, family=list(title_fonts.families))
    _add_missing_glyphs_note(fig, fonts, title_fonts)
    return _finish(fig, save_to)
