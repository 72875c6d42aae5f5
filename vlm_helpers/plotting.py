"""Figures for the notebooks: sample images, loss curves, before/after bars and galleries.

Loss curves and image grids are taught in ``notebooks/02_florence2_docvqa.ipynb``; the
comparison figures in ``notebooks/05_before_after_comparison.ipynb``. Every function
returns the matplotlib ``Figure`` and, given ``save_to``, writes it as PNG, so the same
figure lands in the notebook and in ``results/``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
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

    First used in ``notebooks/01_baseline_inference.ipynb``, section "Data: a few documents and a few
    airplanes", and for training pages in ``notebooks/02_florence2_docvqa.ipynb``, section "The data: questions
    about scanned documents".
    """
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title("\n".join(textwrap.wrap(caption, width)[:6]), fontsize=8, loc="left")
    if title:
        fig.suptitle(title, fontsize=10)
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


def font_can_draw(family: str = "monospace"):
    """A test ``char -> bool``: does the font matplotlib picks for ``family`` have a glyph for it?

    For :func:`vlm_helpers.comparison.display_text`'s ``drawable``: a character without a glyph
    would be drawn as an empty box, with a "Glyph ... missing from font" warning. Used by
    :func:`gallery`, in ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved,
    unchanged, regressed".
    """
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    codes = set(FT2Font(font_manager.findfont(font_manager.FontProperties(family=family))).get_charmap())
    return lambda char: ord(char) in codes


def gallery(examples: dict[str, list[dict]], results_dir: str | Path, *, title: str = "",
            save_to: str | Path | None = None):
    """One row per example: the input image, then question/prompt, reference, before and after.

    ``examples`` maps a kind ("improved", "unchanged", "regressed") to paired records
    (see :func:`vlm_helpers.comparison.pick_examples`); image paths are relative to ``results_dir``.
    Texts go through :func:`vlm_helpers.comparison.format_pair`: shortened, control characters
    escaped, and characters the monospace font cannot draw escaped too (:func:`font_can_draw`).
    Taught in ``notebooks/05_before_after_comparison.ipynb``, section "Gallery: improved, unchanged, regressed".
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    from vlm_helpers.comparison import format_pair

    drawable = font_can_draw("monospace")
    items = [(kind, ex) for kind, group in examples.items() for ex in group]
    fig, axes = plt.subplots(max(1, len(items)), 2, figsize=(10, 2.9 * max(1, len(items))),
                             gridspec_kw={"width_ratios": [1, 2.2]}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not items:
        axes[0, 1].text(0, 0.5, "no paired examples to show", fontsize=10)
    for (kind, ex), (ax_image, ax_text) in zip(items, axes):
        if ex.get("image"):
            ax_image.imshow(Image.open(Path(results_dir) / ex["image"]))
        text = (f"{kind.upper()}  (score {ex['score_before']:.2f} -> {ex['score_after']:.2f})\n\n"
                + format_pair(ex, drawable=drawable))
        wrapped = "\n".join(textwrap.fill(line, 96, subsequent_indent=" " * 13) for line in text.splitlines())
        ax_text.text(0, 0.95, wrapped, va="top", fontsize=8, family="monospace")
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save_to)
