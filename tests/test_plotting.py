"""The figures' honesty: loss curves smoothed over optimizer steps, and galleries that draw
every character they show (no empty boxes, no "Glyph missing from font" warnings)."""

from __future__ import annotations

import math
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")

from PIL import Image  # noqa: E402

from vlm_helpers import plotting  # noqa: E402


def _irregular_history() -> list[dict]:
    """A falling loss logged every step for 30 steps, then every 10 steps up to 300 (as a run that
    changes its logging interval, or an old Trainer history logged every ``logging_steps``), with
    an evaluation-only record and a skipped step mixed in."""
    steps = list(range(1, 31)) + list(range(40, 301, 10))
    history = [{"step": s, "loss": 1 + 10 * math.exp(-s / 40) + (0.3 if s % 2 else -0.3)} for s in steps]
    history.insert(33, {"step": 55, "val_anls": 0.4})  # no loss: not part of the curve
    history.insert(35, {"step": 65, "loss": None, "skipped": "non-finite loss (nan)"})
    return history


def _lines(fig, label):
    return {line.get_gid(): line for line in fig.axes[0].lines if line.get_gid() and line.get_gid().startswith(label)}


def test_smoothing_is_a_window_in_steps_that_stays_within_the_raw_curve():
    history = _irregular_history()
    window = 25
    fig = plotting.plot_loss({"run": history}, smooth=window)
    lines = _lines(fig, "run")
    raw_x, raw_y = (list(values) for values in lines["run raw"].get_data())
    smooth_x, smooth_y = (list(values) for values in lines["run smoothed"].get_data())
    finite = [h for h in history if isinstance(h.get("loss"), float)]
    assert raw_x == [h["step"] for h in finite] and raw_y == [h["loss"] for h in finite]
    assert smooth_x == raw_x
    for x, y in zip(smooth_x, smooth_y):
        inside = [ry for rx, ry in zip(raw_x, raw_y) if abs(rx - x) <= window / 2]
        assert min(inside) - 1e-9 <= y <= max(inside) + 1e-9, (x, y, inside)
    # late, sparse steps are not pulled up by records from a hundred steps earlier
    assert smooth_y[-1] == pytest.approx(sum(raw_y[-2:]) / 2)  # steps 290 and 300 only
    assert "run (mean over 25 steps)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(line.get_xdata()[0] == 65 for line in fig.axes[0].lines if line.get_color() == "red")


def test_smooth_by_steps_is_a_centred_mean_over_steps():
    steps, means = plotting.smooth_by_steps([3, 1, 2, 10], [3.0, 1.0, 2.0, 10.0], 2)
    assert steps == [1, 2, 3, 10]
    assert means == [1.5, 2.0, 2.5, 10.0]  # step 10 has no neighbour within one step
    assert plotting.smooth_by_steps([1, 2, 3], [5.0, 6.0, 7.0], 1)[1] == [5.0, 6.0, 7.0]


def _drawn(fig) -> str:
    return "\n".join(text.get_text() for ax in fig.axes for text in ax.texts + [ax.title]) + "\n" + "\n".join(
        text.get_text() for text in fig.texts)


def _glyph_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def _notes(fig) -> list[str]:
    return [text.get_text() for text in fig.texts if text.get_gid() == "missing-glyphs-note"]


def _gallery(tmp_path, example, **kwargs):
    """Draw and save a one-example gallery, recording warnings (matplotlib warns when it draws, i.e. saves)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (40, 50), (200, 200, 255)).save(tmp_path / "images" / "page.jpg")
    example = {"id": "1", "question": "What is the date?", "references": ["01/02/1990"], "image": "images/page.jpg",
               "before": "", "after": "01/02/1990", "metric": "anls", "score_before": 0.0, "score_after": 1.0,
               **example}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plotting.gallery({"improved": [example], "unchanged": [], "regressed": []}, tmp_path,
                               save_to=tmp_path / "gallery.png", **kwargs)
    assert (tmp_path / "gallery.png").stat().st_size > 1000
    return fig, caught


def test_gallery_draws_garbage_predictions_without_missing_glyphs(tmp_path, monkeypatch):
    """On a machine whose only font is matplotlib's own (no fallback installed), CJK is escaped, once noted."""
    monkeypatch.setattr(plotting, "installed_fonts", dict)
    garbage = "cub usual刚 confessady넣刚 cub\x82 cub\x13\x13 钥 ガ\n" * 5
    fig, caught = _gallery(tmp_path, {"before": garbage}, title="tiny")
    assert not _glyph_warnings(caught), _glyph_warnings(caught)
    drawn = _drawn(fig)
    assert "\\u5c4b" not in drawn  # 屋 is not in the garbage; 刚 is, and is escaped
    assert "\\u521a" in drawn and "\\x13" in drawn and "刚" not in drawn
    assert "What is the date?" in drawn and "'01/02/1990'" in drawn
    assert fig.axes[0].images, "the page is drawn beside the text"
    (note,) = _notes(fig)  # said once, naming what it escaped and how to get a font
    assert "shown as escapes" in note and "\\u521a" in note and "addfont" in note


def test_a_script_no_installed_font_has_is_escaped_and_said_once(tmp_path):
    """Tangut and Linear B: scripts this machine (and CI, and Colab) has no font for."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    text = "\U00017000\U00017001 \U00010000"
    for entry in font_manager.fontManager.ttflist:  # independent of plotting's search: skip where one exists
        if entry.name.startswith("Last Resort"):  # a box for every character: no glyphs
            continue
        try:
            if any(ord(char) in FT2Font(entry.fname).get_charmap() for char in text.split()[0]):
                pytest.skip(f"{entry.name} has Tangut glyphs")
        except (OSError, RuntimeError):
            continue
    fig, caught = _gallery(tmp_path, {"question": f"What does {text} say?", "after": text[:2]})
    assert not _glyph_warnings(caught), _glyph_warnings(caught)
    drawn = _drawn(fig)
    assert "\\U00017000\\U00017001" in drawn and "\U00017000" not in drawn
    (note,) = _notes(fig)
    assert note.startswith("3 character(s) shown as escapes (\\U00010000 \\U00017000 \\U00017001)")


def _build_font(path, chars: str, family: str):
    """A TrueType font whose only glyphs (plain boxes) are ``chars``, made with fontTools (matplotlib's own
    dependency): a font this machine *has* for a script, whatever else is installed."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    def box():
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 700))
        pen.lineTo((900, 700))
        pen.lineTo((900, 0))
        pen.closePath()
        return pen.glyph()

    names = {ord(char): f"u{ord(char):04X}" for char in chars}
    order = [".notdef", "space", *names.values()]
    builder = FontBuilder(1000, isTTF=True)
    builder.setupGlyphOrder(order)
    builder.setupCharacterMap({32: "space", **names})
    builder.setupGlyf({".notdef": box(), "space": TTGlyphPen(None).glyph(), **{name: box() for name in names.values()}})
    builder.setupHorizontalMetrics({name: (1000, 0) for name in order})
    builder.setupHorizontalHeader(ascent=800, descent=-200)
    builder.setupNameTable({"familyName": family, "styleName": "Regular"})
    builder.setupOS2(sTypoAscender=800, sTypoDescender=-200, usWinAscent=800, usWinDescent=200)
    builder.setupPost()
    builder.save(str(path))
    return path


def _added_font(path):
    """Add a font file to matplotlib's font list (as a user would after installing one); return a remover."""
    from matplotlib import font_manager

    before = list(font_manager.fontManager.ttflist)
    font_manager.fontManager.addfont(str(path))
    added = [entry for entry in font_manager.fontManager.ttflist if entry not in before]

    def remove():  # matplotlib has no public way back: take the entries out and forget the lookups made with them
        for entry in added:
            font_manager.fontManager.ttflist.remove(entry)
        cached = getattr(font_manager.fontManager, "_findfont_cached", None)
        if cached is not None:
            cached.cache_clear()

    return [entry.name for entry in added], remove


def test_an_installed_font_with_the_glyphs_draws_them(tmp_path):
    names, remove = _added_font(_build_font(tmp_path / "receipts.ttf", "收据合计刚", "VLM Test Receipts"))
    try:
        fig, caught = _gallery(tmp_path, {"question": "收据合计？", "before": "刚 \U00017000",
                                          "after": "合计 12.50"}, title="收据")
    finally:
        remove()
    assert names == ["VLM Test Receipts"]
    assert not _glyph_warnings(caught), _glyph_warnings(caught)
    drawn = _drawn(fig)
    assert "Q: 收据合计\\uff1f" in drawn and "'刚 " in drawn and "'合计 12.50'" in drawn  # drawn as themselves
    assert "\\uff1f" in drawn and "\\U00017000" in drawn  # the full-width "？" and Tangut: in no font here
    (body,) = [text for text in fig.axes[1].texts]
    assert "VLM Test Receipts" in body.get_fontfamily()
    (note,) = _notes(fig)
    assert note.startswith("2 character(s) shown as escapes")


def _cjk_font_here():
    """A real CJK font: ``$VLM_TEST_CJK_FONT`` (a font file, e.g. Debian's fonts-wqy-microhei, 1.6 MB), else one
    matplotlib already knows; None when there is neither."""
    import os

    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    if os.environ.get("VLM_TEST_CJK_FONT"):
        return os.environ["VLM_TEST_CJK_FONT"]
    for entry in font_manager.fontManager.ttflist:
        try:
            if all(ord(char) in FT2Font(entry.fname).get_charmap() for char in "收据合计"):
                return None if entry.name.startswith("Last Resort") else entry.fname
        except (OSError, RuntimeError):
            continue
    return None


def test_a_real_cjk_font_draws_chinese_questions_and_answers(tmp_path):
    path = _cjk_font_here()
    if path is None:
        pytest.skip("no CJK font here (set VLM_TEST_CJK_FONT to one, e.g. Debian's wqy-microhei.ttc)")
    _, remove = _added_font(path)
    try:
        fig, caught = _gallery(tmp_path, {"question": "这张收据的合计是多少？", "references": ["¥ 1,637.50"],
                                          "before": "不知道", "after": "¥ 1,637.50"})
    finally:
        remove()
    assert not _glyph_warnings(caught), _glyph_warnings(caught)
    assert "这张收据的合计是多少？" in _drawn(fig) and "'不知道'" in _drawn(fig)
    assert not _notes(fig)


def test_show_images_keeps_caption_lines_and_escapes_what_no_font_has(tmp_path, monkeypatch):
    monkeypatch.setattr(plotting, "installed_fonts", dict)
    image = Image.new("RGB", (30, 20))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = plotting.show_images([image, image], ["data.jsonl:4\nQ: 合计？\nA: ['12.50']", "плохо\x13"],
                                   title="rows", save_to=tmp_path / "rows.png")
    assert not _glyph_warnings(caught), _glyph_warnings(caught)
    first, second = (ax.get_title(loc="left") for ax in fig.axes[:2])
    assert first == "data.jsonl:4\nQ: \\u5408\\u8ba1\\uff1f\nA: ['12.50']"  # its own three lines, escaped
    assert second == "плохо\\x13"  # Cyrillic is in DejaVu: drawn as itself; the control character escaped
    (note,) = _notes(fig)
    assert "3 character(s)" in note


def test_font_can_draw_knows_the_fonts_glyphs():
    can_draw = plotting.font_can_draw("monospace")
    assert can_draw("a") and can_draw("…")
    assert not can_draw("\U0010fffd")  # a private-use character no font bundled with matplotlib has


def test_the_fallback_search_skips_the_last_resort_and_math_fonts():
    """matplotlib's "Last Resort" font maps every character to a box: picking it would draw the boxes again."""
    names = plotting.installed_fonts()
    assert "DejaVu Sans" in names
    assert not [name for name in names if name.startswith(("Last Resort", "cm", "STIXSize", "STIXNonUnicode"))]
    fonts = plotting.text_fonts(["plain ascii"])
    assert fonts.families == ("monospace",) and fonts.missing == () and fonts.note() is None
